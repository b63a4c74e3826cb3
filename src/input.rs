//! Rules for untrusted text, applied once where input enters (the HTTP extractors and the callback
//! parser) so nothing downstream has to repeat them:
//! - text is valid UTF-8 and holds no U+0000 (PostgreSQL's `text` cannot store it, and a request
//!   that reached the database with one would answer 500);
//! - a JSON object names each key once (serde_json would silently keep the last one, so two readers
//!   of the same body could disagree about what it said);
//! - URL-encoded pairs (query strings, form bodies) decode to valid UTF-8; `form_urlencoded` would
//!   replace bad bytes with U+FFFD and the caller's value would be silently changed.
//!
//! Nesting depth is bounded by serde_json's recursion limit (128), which the strict parser keeps.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Longest part of a caller's field name echoed back in an error.
const MAX_ECHOED_NAME: usize = 64;

/// Where in the request a bad value was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A named parameter: query string, form field, top-level JSON key or path segment.
    Parameter(String),
    /// A JSON pointer into the body (nested values), e.g. `/stages/0/percentage`.
    Pointer(String),
    /// A request header.
    Header(&'static str),
}

impl Location {
    /// A parameter named by the caller, shortened so an error never echoes a huge name.
    pub fn parameter(name: &str) -> Self {
        Self::Parameter(name.chars().take(MAX_ECHOED_NAME).collect())
    }

    /// A JSON pointer: top-level keys read as parameters (that is what handlers call them).
    fn pointer(path: &[String]) -> Self {
        match path {
            [] => Self::Pointer("/".into()),
            [key] => Self::parameter(key),
            _ => {
                let mut pointer = String::new();
                for part in path {
                    pointer.push('/');
                    pointer.extend(part.chars().take(MAX_ECHOED_NAME).flat_map(|c| match c {
                        '~' => vec!['~', '0'],
                        '/' => vec!['~', '1'],
                        c => vec![c],
                    }));
                }
                Self::Pointer(pointer)
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parameter(name) => write!(f, "{name:?}"),
            Self::Pointer(pointer) => write!(f, "the value at {pointer:?}"),
            Self::Header(name) => write!(f, "the {name} header"),
        }
    }
}

/// Why a piece of input was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Text holding U+0000.
    #[error("{0} contains a NUL character (U+0000), which is not accepted")]
    Nul(Location),
    /// Bytes that are not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(Location),
    /// A JSON object naming one key twice.
    #[error("the JSON body names {0} more than once")]
    DuplicateKey(Location),
    /// Not JSON at all (syntax, truncation, nesting deeper than 128); the label is a fixed phrase,
    /// since serde's own messages may quote the input.
    #[error("the body is not valid JSON ({0})")]
    Json(&'static str),
    /// A value that does not fit its field (a number out of range, a word where a number goes).
    #[error("{detail}")]
    Invalid { location: Location, detail: String },
}

impl InputError {
    /// The part of the request at fault.
    pub fn location(&self) -> Location {
        match self {
            Self::Nul(l) | Self::InvalidUtf8(l) | Self::DuplicateKey(l) | Self::Invalid { location: l, .. } => {
                l.clone()
            }
            Self::Json(_) => Location::Pointer("/".into()),
        }
    }
}

/// Refuses text that holds U+0000.
pub fn check_text(text: &str, location: impl FnOnce() -> Location) -> Result<(), InputError> {
    if text.contains('\0') { Err(InputError::Nul(location())) } else { Ok(()) }
}

/// The longest reason (for a toggle change, a rollout override, a release) kept in the audit log: enough for
/// a sentence and a ticket link, not a place to paste a log file.
pub const MAX_REASON_CHARS: usize = 1000;

/// A reason as given: trimmed, blank is none, refused when it holds NUL or is longer than
/// [`MAX_REASON_CHARS`].
pub fn reason(text: &str, location: impl Fn() -> Location) -> Result<Option<String>, InputError> {
    check_text(text, &location)?;
    let text = text.trim();
    if text.chars().count() > MAX_REASON_CHARS {
        return Err(InputError::Invalid {
            location: location(),
            detail: format!("a reason is at most {MAX_REASON_CHARS} characters"),
        });
    }
    Ok(Some(text).filter(|t| !t.is_empty()).map(str::to_owned))
}

/// Parses a JSON document, refusing duplicate keys and NUL in any key or string, at any depth.
pub fn parse_json(bytes: &[u8]) -> Result<Value, InputError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut path = Vec::new();
    let mut found: Option<InputError> = None;
    let value = StrictSeed { path: &mut path, found: &mut found }.deserialize(&mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match (value, found) {
        (_, Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(InputError::Json(json_label(&e))),
    }
}

/// A short, fixed description of a JSON error.
fn json_label(e: &serde_json::Error) -> &'static str {
    if e.to_string().starts_with("recursion limit exceeded") {
        return "nested too deeply";
    }
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end of input",
    }
}

/// Deserialises any JSON value, keeping the path to it so a refusal can say where it happened.
/// The refusal itself is parked in `found` (serde's error type carries only a message).
struct StrictSeed<'a> {
    path: &'a mut Vec<String>,
    found: &'a mut Option<InputError>,
}

impl StrictSeed<'_> {
    fn refuse<E: de::Error>(&mut self, error: InputError) -> E {
        *self.found = Some(error);
        E::custom("refused")
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json refuses numbers that overflow f64 (1e309) before this point; NaN cannot be written.
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Value, E> {
        if v.contains('\0') {
            let location = Location::pointer(self.path);
            return Err(self.refuse(InputError::Nul(location)));
        }
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.visit_str(&v)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.push(items.len().to_string());
            let next = seq.next_element_seed(StrictSeed { path: self.path, found: self.found });
            self.path.pop();
            match next? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            self.path.push(key.clone());
            if key.contains('\0') || map.contains_key(&key) {
                let location = Location::pointer(self.path);
                let error =
                    if key.contains('\0') { InputError::Nul(location) } else { InputError::DuplicateKey(location) };
                return Err(self.refuse(error));
            }
            let value = access.next_value_seed(StrictSeed { path: self.path, found: self.found });
            self.path.pop();
            map.insert(key, value?);
        }
        Ok(Value::Object(map))
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (a query string or a form body) like
/// `form_urlencoded`, but refuses bytes that do not decode to UTF-8 and names and values holding NUL.
/// Repeated names are all kept, in order.
pub fn form_pairs(input: &[u8]) -> Result<Vec<(String, String)>, InputError> {
    let mut pairs = Vec::new();
    for part in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        let name = decode_component(name, || Location::Parameter(String::new()))?;
        let value = decode_component(value, || Location::parameter(&name))?;
        check_text(&name, || Location::parameter(&name))?;
        check_text(&value, || Location::parameter(&name))?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// `+` is a space, `%XX` a byte; a `%` not followed by two hex digits stays as it is (as browsers do).
fn decode_component(raw: &[u8], location: impl FnOnce() -> Location) -> Result<String, InputError> {
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8(bytes).map_err(|_| {
        let mut location = location();
        if location == Location::Parameter(String::new()) {
            location = Location::Pointer("/".into());
        }
        InputError::InvalidUtf8(location)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn no_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => items.iter().all(no_nul),
            Value::Object(map) => map.iter().all(|(k, v)| !k.contains('\0') && no_nul(v)),
            _ => true,
        }
    }

    /// JSON-ish text: mostly the characters JSON is made of, so the parser gets past the first byte.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"{".to_vec()),
            Just(b"}".to_vec()),
            Just(b"[".to_vec()),
            Just(b"]".to_vec()),
            Just(b",".to_vec()),
            Just(b":".to_vec()),
            Just(b"\"a\"".to_vec()),
            Just(b"\"\\u0000\"".to_vec()),
            Just(b"1e309".to_vec()),
            Just(b"-0".to_vec()),
            Just(b"null".to_vec()),
            Just(b"\xff".to_vec()),
            any::<Vec<u8>>(),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn parse_json_never_panics_and_lets_no_nul_through(bytes in jsonish()) {
            if let Ok(value) = parse_json(&bytes) {
                prop_assert!(no_nul(&value));
                // What it accepts, serde_json accepts too, with the same meaning.
                prop_assert_eq!(serde_json::from_slice::<Value>(&bytes).ok(), Some(value));
            }
        }

        #[test]
        fn form_pairs_never_panic_and_keep_bytes_exact(bytes in any::<Vec<u8>>(), text in "[a-z=&%+0-9A-F\\x00]{0,40}") {
            for input in [bytes.as_slice(), text.as_bytes()] {
                if let Ok(pairs) = form_pairs(input) {
                    prop_assert!(pairs.iter().all(|(k, v)| !k.contains('\0') && !v.contains('\0')));
                    // No lossy decoding: the lenient decoder agrees exactly when the strict one accepts.
                    let lenient: Vec<(String, String)> =
                        form_urlencoded::parse(input).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                    prop_assert_eq!(pairs, lenient);
                }
            }
        }
    }

    #[test]
    fn strict_json_refuses_duplicates_and_nul_and_says_where() {
        assert_eq!(parse_json(br#"{"a":1,"b":[true,null,"x"]}"#).unwrap(), json!({"a":1,"b":[true,null,"x"]}));
        assert_eq!(parse_json(br#"{"a":1,"a":2}"#), Err(InputError::DuplicateKey(Location::Parameter("a".into()))));
        assert_eq!(
            parse_json(br#"{"s":[{"p":1,"p":1}]}"#),
            Err(InputError::DuplicateKey(Location::Pointer("/s/0/p".into())))
        );
        assert_eq!(parse_json(br#"{"reason":"a\u0000b"}"#), Err(InputError::Nul(Location::Parameter("reason".into()))));
        assert_eq!(parse_json(br#"{"a\u0000":1}"#), Err(InputError::Nul(Location::Parameter("a\0".into()))));
        assert_eq!(parse_json(br#"{"x/y":{"z":"\u0000"}}"#), Err(InputError::Nul(Location::Pointer("/x~1y/z".into()))));
        assert_eq!(parse_json(b"{\"a\":\"\xff\"}"), Err(InputError::Json("syntax error")));
        assert_eq!(parse_json(&[b'['; 10_000]), Err(InputError::Json("nested too deeply")));
        assert_eq!(parse_json(b"1e309"), Err(InputError::Json("syntax error")));
        assert_eq!(parse_json(b"{} {}"), Err(InputError::Json("syntax error")));
    }

    #[test]
    fn form_pairs_decode_strictly() {
        let pairs = form_pairs(b"a=1&b=x+y%21&&c&a=2").unwrap();
        let expected = [("a", "1"), ("b", "x y!"), ("c", ""), ("a", "2")];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert_eq!(form_pairs(b"p=100%").unwrap()[0].1, "100%");
        assert_eq!(form_pairs(b"reason=%FF"), Err(InputError::InvalidUtf8(Location::Parameter("reason".into()))));
        assert_eq!(form_pairs(b"%FF=1"), Err(InputError::InvalidUtf8(Location::Pointer("/".into()))));
        assert_eq!(form_pairs(b"reason=a%00"), Err(InputError::Nul(Location::Parameter("reason".into()))));
        assert_eq!(form_pairs(b"a%00=1"), Err(InputError::Nul(Location::Parameter("a\0".into()))));
    }
}
