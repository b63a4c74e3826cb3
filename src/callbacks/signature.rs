//! The `x-enp-signature` VA Notify puts on callbacks (SPEC §7, §15): lowercase hex HMAC-SHA256, keyed with
//! the API key's secret, over Python's `urllib.parse.urlencode(body)` of the JSON body's top-level fields.
//!
//! To reproduce Python byte for byte the body is parsed into [`PyValue`], which keeps object fields in
//! document order (as `json.loads` builds a dict) and renders values the way `str()` does:
//! - strings as they are; `null`/`true`/`false` as `None`/`True`/`False`;
//! - integers in decimal; floats as Python's `repr` (`1.0`, `1e+20`, `1.5e-07`);
//! - arrays and objects as Python's `str()` of a list or dict: `[1, 'a']`, `{'k': None}`, with strings
//!   quoted by `repr` (single quotes unless the text holds a `'` and no `"`). Non-ASCII characters are
//!   kept as they are (Python only escapes non-printable ones; we escape control characters, which covers
//!   every character VA Notify's ASCII payloads can carry).
//!
//! A key repeated in the body keeps its first position and its last value, as in a Python dict.
//! Every rendered key and value is then escaped with `quote_plus` (safe characters `A-Za-z0-9_.-~`,
//! space as `+`, everything else `%XX` of its UTF-8 bytes) and joined as `k=v&k=v`.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A JSON value as Python's `json.loads` would hold it: objects keep their field order.
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Dict(Vec<(String, PyValue)>),
}

impl<'de> Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PyValueVisitor)
    }
}

struct PyValueVisitor;

impl<'de> Visitor<'de> for PyValueVisitor {
    type Value = PyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<PyValue, E> {
        Ok(PyValue::None)
    }
    fn visit_none<E: de::Error>(self) -> Result<PyValue, E> {
        Ok(PyValue::None)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<PyValue, E> {
        Ok(PyValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<PyValue, E> {
        Ok(PyValue::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<PyValue, E> {
        Ok(PyValue::Int(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<PyValue, E> {
        Ok(PyValue::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<PyValue, E> {
        Ok(PyValue::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<PyValue, E> {
        Ok(PyValue::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PyValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(PyValue::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PyValue, A::Error> {
        let mut fields: Vec<(String, PyValue)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, PyValue>()? {
            match fields.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => fields.push((key, value)),
            }
        }
        Ok(PyValue::Dict(fields))
    }
}

impl PyValue {
    /// Python's `str(value)`.
    pub fn py_str(&self) -> String {
        match self {
            Self::Str(s) => s.clone(),
            other => other.py_repr(),
        }
    }

    /// Python's `repr(value)` (what `str()` of a list or dict shows for its items).
    pub fn py_repr(&self) -> String {
        match self {
            Self::None => "None".to_owned(),
            Self::Bool(true) => "True".to_owned(),
            Self::Bool(false) => "False".to_owned(),
            Self::Int(n) => n.to_string(),
            Self::Float(f) => float_repr(*f),
            Self::Str(s) => str_repr(s),
            Self::List(items) => format!("[{}]", items.iter().map(Self::py_repr).collect::<Vec<_>>().join(", ")),
            Self::Dict(fields) => format!(
                "{{{}}}",
                fields.iter().map(|(k, v)| format!("{}: {}", str_repr(k), v.py_repr())).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, fixed notation for exponents -4..16,
/// scientific (`1e+16`, `1.5e-07`) otherwise.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Rust's `{:e}` gives the same shortest digits Python picks, e.g. `1.5e-7`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let text = if point <= 0 {
            format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{text}")
    } else {
        let mantissa = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    }
}

/// Python's `repr(str)`.
fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `urllib.parse.quote_plus(text)` with its default (empty) `safe` set.
pub fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Python's `urllib.parse.urlencode(fields)` for a dict of top-level fields.
pub fn urlencode(fields: &[(String, PyValue)]) -> String {
    fields.iter().map(|(k, v)| format!("{}={}", quote_plus(k), quote_plus(&v.py_str()))).collect::<Vec<_>>().join("&")
}

/// The signature VA Notify computes for `body` (a JSON object), or `None` if the body is not a JSON object.
pub fn sign(secret: &str, body: &[u8]) -> Option<String> {
    let PyValue::Dict(fields) = serde_json::from_slice::<PyValue>(body).ok()? else {
        return None;
    };
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(urlencode(&fields).as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// True when `presented` is the signature of `body` under `secret` (compared in constant time).
pub fn verify(secret: &str, body: &[u8], presented: &str) -> bool {
    match sign(secret, body) {
        Some(expected) => bool::from(expected.as_bytes().ct_eq(presented.trim().as_bytes())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §15, fields in the order VA Notify sends them.
    const VECTOR_BODY: &str = r#"{"id": "9ffb5212-e621-45df-820d-97ee65d392ab", "reference": null,
        "to": "user@example.com", "status": "delivered", "created_at": "2025-01-02T03:04:05.000006Z",
        "completed_at": "2025-01-02T03:05:06.000007Z", "sent_at": "2025-01-02T03:04:30.123456Z",
        "notification_type": "email", "status_reason": null, "provider": "ses", "provider_payload": null}"#;
    const VECTOR_SECRET: &str = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
    const VECTOR_SIGNATURE: &str = "ca0019d44c7263aeb4c9eb1853b60af0d5df19bb5fae28807d9ef854961985b2";

    #[test]
    fn spec_vector_encodes_like_python() {
        let PyValue::Dict(fields) = serde_json::from_str::<PyValue>(VECTOR_BODY).unwrap() else { panic!() };
        let encoded = urlencode(&fields);
        assert!(
            encoded.starts_with(
                "id=9ffb5212-e621-45df-820d-97ee65d392ab&reference=None&to=user%40example.com&status=delivered\
                 &created_at=2025-01-02T03%3A04%3A05.000006Z"
            ),
            "{encoded}"
        );
        assert!(encoded.ends_with("&provider=ses&provider_payload=None"), "{encoded}");
    }

    #[test]
    fn spec_vector_signature() {
        assert_eq!(sign(VECTOR_SECRET, VECTOR_BODY.as_bytes()).unwrap(), VECTOR_SIGNATURE);
        assert!(verify(VECTOR_SECRET, VECTOR_BODY.as_bytes(), VECTOR_SIGNATURE));
        assert!(!verify(VECTOR_SECRET, VECTOR_BODY.as_bytes(), &VECTOR_SIGNATURE.to_uppercase()));
        assert!(!verify("another-secret", VECTOR_BODY.as_bytes(), VECTOR_SIGNATURE));
    }

    #[test]
    fn field_order_matters() {
        let reordered = r#"{"reference": null, "id": "9ffb5212-e621-45df-820d-97ee65d392ab"}"#;
        let ordered = r#"{"id": "9ffb5212-e621-45df-820d-97ee65d392ab", "reference": null}"#;
        assert_ne!(sign(VECTOR_SECRET, reordered.as_bytes()), sign(VECTOR_SECRET, ordered.as_bytes()));
    }

    #[test]
    fn values_render_like_python_str() {
        let v: PyValue = serde_json::from_str(
            r#"{"t": true, "f": false, "i": -7, "x": 1.0, "big": 1e20, "small": 1.5e-7, "mid": 0.0001,
                "s": "a b/c+d", "l": [1, "it's", null], "d": {"z": 1, "a": "q\"'\n"}, "t": "last"}"#,
        )
        .unwrap();
        let PyValue::Dict(fields) = v else { panic!() };
        let rendered: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.clone(), v.py_str())).collect();
        let expected = [
            ("t", "last"),
            ("f", "False"),
            ("i", "-7"),
            ("x", "1.0"),
            ("big", "1e+20"),
            ("small", "1.5e-07"),
            ("mid", "0.0001"),
            ("s", "a b/c+d"),
            ("l", "[1, \"it's\", None]"),
            ("d", "{'z': 1, 'a': 'q\"\\'\\n'}"),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(rendered, expected);
    }

    #[test]
    fn float_repr_matches_python() {
        for (f, py) in [
            (0.0, "0.0"),
            (-2.5, "-2.5"),
            (123456789.0, "123456789.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (0.1, "0.1"),
            (0.00012, "0.00012"),
            (1.2e-5, "1.2e-05"),
            (1.2345e100, "1.2345e+100"),
        ] {
            assert_eq!(float_repr(f), py, "{f}");
        }
    }

    #[test]
    fn quote_plus_matches_python() {
        assert_eq!(quote_plus("a b&c=d/e?f~g_h.i-j"), "a+b%26c%3Dd%2Fe%3Ff~g_h.i-j");
        assert_eq!(quote_plus("é"), "%C3%A9");
        assert_eq!(quote_plus("Retryable: mailbox full"), "Retryable%3A+mailbox+full");
    }

    #[test]
    fn non_objects_have_no_signature() {
        assert_eq!(sign(VECTOR_SECRET, b"[1,2]"), None);
        assert_eq!(sign(VECTOR_SECRET, b"{"), None);
    }
}
