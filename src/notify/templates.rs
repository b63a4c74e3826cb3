//! The universal-link template swap (CHANNELS.md §6): while [`UNIVERSAL_LINK_FEATURE`] is on for the
//! participant, an email asked for with `default_template` is sent with `mobile_link_template`, and one with
//! `pension_claims_template` with `pension_mobile_link_template`. The ids come from a per-environment TOML
//! file (`templates.file`), read at startup:
//!
//! ```toml
//! [email]
//! default_template = "<uuid>"
//! mobile_link_template = "<uuid>"
//! pension_claims_template = "<uuid>"
//! pension_mobile_link_template = "<uuid>"
//! ```
//!
//! A pair with an empty value is off (vets-api turns the whole swap off when any of the four is missing;
//! each pair here stands on its own) and [`TemplateSwap::load`] says so in a note that startup logs once.
//! A file that cannot be read or parsed, a value that is not a UUID or an unknown key is an error: a typo
//! must not silently turn the swap off.

use std::borrow::Cow;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use uuid::Uuid;

/// The Flipper feature that turns the swap on per participant. Its actor is the participant id (as in
/// vets-api's `Flipper::Actor.new(participant_id)`); the integration registers it with the other features.
pub const UNIVERSAL_LINK_FEATURE: &str = "event_bus_gateway_letter_ready_email_universal_link";

/// Prefix of the template files compiled into the binary.
const BUILTIN_PREFIX: &str = "builtin:";
const BUILTIN_LOCAL: &str = include_str!("../../config/templates/local.toml");
const BUILTIN_PRODUCTION: &str = include_str!("../../config/templates/production.toml");

/// The swappable pairs that are complete: requested template -> template sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateSwap {
    pairs: Vec<(Uuid, Uuid)>,
}

/// Why a template file was refused; the caller prefixes the key (`templates.file`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateFileError {
    #[error("cannot read `{path}` ({reason})")]
    Read { path: String, reason: String },
    #[error("`{path}` is not a template file: {reason}")]
    Malformed { path: String, reason: String },
    #[error("`{path}`: email.{key} must be a template UUID or empty")]
    NotUuid { path: String, key: &'static str },
    #[error("`{path}`: email.default_template and email.pension_claims_template must differ")]
    SameSource { path: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    #[serde(default)]
    email: EmailTemplates,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailTemplates {
    #[serde(default)]
    default_template: String,
    #[serde(default)]
    mobile_link_template: String,
    #[serde(default)]
    pension_claims_template: String,
    #[serde(default)]
    pension_mobile_link_template: String,
}

impl TemplateSwap {
    /// No swap: every template is sent as requested.
    pub fn off() -> Self {
        Self::default()
    }

    /// Reads `path` (empty: no swap; `builtin:templates/local.toml` or `builtin:templates/production.toml`:
    /// the files compiled in). Returns the swap and the notes to log once at startup (pairs that are off).
    pub fn load(path: &str) -> Result<(Self, Vec<String>), TemplateFileError> {
        let path = path.trim();
        if path.is_empty() {
            return Ok((Self::off(), vec!["templates.file is empty: the universal-link template swap is off".into()]));
        }
        let text = read(path)?;
        Self::parse(path, &text)
    }

    /// Parses a template file's text; `path` only names it in errors and notes.
    pub fn parse(path: &str, text: &str) -> Result<(Self, Vec<String>), TemplateFileError> {
        let file: TemplateFile = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| TemplateFileError::Malformed { path: path.to_owned(), reason: e.to_string() })?;
        let e = &file.email;
        let id = |key: &'static str, value: &str| -> Result<Option<Uuid>, TemplateFileError> {
            let value = value.trim();
            if value.is_empty() {
                return Ok(None);
            }
            Uuid::try_parse(value).map(Some).map_err(|_| TemplateFileError::NotUuid { path: path.to_owned(), key })
        };
        let default = id("default_template", &e.default_template)?;
        let mobile = id("mobile_link_template", &e.mobile_link_template)?;
        let pension = id("pension_claims_template", &e.pension_claims_template)?;
        let pension_mobile = id("pension_mobile_link_template", &e.pension_mobile_link_template)?;
        if default.is_some() && default == pension {
            return Err(TemplateFileError::SameSource { path: path.to_owned() });
        }
        let mut swap = Self::off();
        let mut notes = Vec::new();
        for (from_key, to_key, from, to) in [
            ("default_template", "mobile_link_template", default, mobile),
            ("pension_claims_template", "pension_mobile_link_template", pension, pension_mobile),
        ] {
            match (from, to) {
                (Some(from), Some(to)) => swap.pairs.push((from, to)),
                _ => notes.push(format!(
                    "templates.file `{path}`: email.{from_key} or email.{to_key} is empty, so {from_key} is \
                     sent as requested even with {UNIVERSAL_LINK_FEATURE} on"
                )),
            }
        }
        Ok((swap, notes))
    }

    /// The template to send for `requested`: the swapped one when `flag_on` (the feature is on for the
    /// participant) and `requested` is the source of a complete pair; otherwise `requested`.
    pub fn swap(&self, requested: Uuid, flag_on: bool) -> Uuid {
        if !flag_on {
            return requested;
        }
        self.pairs.iter().find(|(from, _)| *from == requested).map_or(requested, |(_, to)| *to)
    }

    /// Whether `requested` could be swapped, so the flag need only be evaluated for these templates.
    pub fn is_swappable(&self, requested: Uuid) -> bool {
        self.pairs.iter().any(|(from, _)| *from == requested)
    }

    /// The complete pairs, requested -> sent.
    pub fn pairs(&self) -> &[(Uuid, Uuid)] {
        &self.pairs
    }
}

fn read(path: &str) -> Result<Cow<'static, str>, TemplateFileError> {
    match path.strip_prefix(BUILTIN_PREFIX) {
        Some("templates/local.toml") => Ok(Cow::Borrowed(BUILTIN_LOCAL)),
        Some("templates/production.toml") => Ok(Cow::Borrowed(BUILTIN_PRODUCTION)),
        Some(other) => Err(TemplateFileError::Read {
            path: path.to_owned(),
            reason: format!(
                "no built-in template file `{other}` (there are templates/local.toml and templates/production.toml)"
            ),
        }),
        None => std::fs::read_to_string(path)
            .map(Cow::Owned)
            .map_err(|e| TemplateFileError::Read { path: path.to_owned(), reason: e.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DEFAULT: Uuid = Uuid::from_u128(0xd1);
    const MOBILE: Uuid = Uuid::from_u128(0xd2);
    const PENSION: Uuid = Uuid::from_u128(0xe1);
    const PENSION_MOBILE: Uuid = Uuid::from_u128(0xe2);

    fn file(values: [Option<Uuid>; 4]) -> String {
        let keys =
            ["default_template", "mobile_link_template", "pension_claims_template", "pension_mobile_link_template"];
        let lines: Vec<String> = keys
            .iter()
            .zip(values)
            .map(|(k, v)| format!("{k} = \"{}\"", v.map(|v| v.to_string()).unwrap_or_default()))
            .collect();
        format!("[email]\n{}\n", lines.join("\n"))
    }

    fn parse(text: &str) -> Result<(TemplateSwap, Vec<String>), TemplateFileError> {
        TemplateSwap::parse("t.toml", text)
    }

    #[test]
    fn the_two_pairs_swap_only_with_the_flag_on() {
        let (swap, notes) = parse(&file([Some(DEFAULT), Some(MOBILE), Some(PENSION), Some(PENSION_MOBILE)])).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(swap.swap(DEFAULT, true), MOBILE);
        assert_eq!(swap.swap(PENSION, true), PENSION_MOBILE);
        assert_eq!(swap.swap(DEFAULT, false), DEFAULT);
        assert_eq!(swap.swap(PENSION, false), PENSION);
        let other = Uuid::new_v4();
        assert_eq!(swap.swap(other, true), other, "any other template is sent as requested");
        assert_eq!(swap.swap(MOBILE, true), MOBILE, "a target is not swapped again");
        assert!(swap.is_swappable(DEFAULT) && swap.is_swappable(PENSION) && !swap.is_swappable(MOBILE));
    }

    #[test]
    fn an_incomplete_pair_is_off_and_said_once() {
        let (swap, notes) = parse(&file([Some(DEFAULT), Some(MOBILE), Some(PENSION), None])).unwrap();
        assert_eq!(swap.pairs(), [(DEFAULT, MOBILE)]);
        assert_eq!(swap.swap(PENSION, true), PENSION);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("pension_claims_template is sent as requested"), "{notes:?}");
        let (swap, notes) = parse("").unwrap();
        assert!(swap.pairs().is_empty());
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn a_malformed_file_is_an_error() {
        assert!(matches!(parse("[email\n"), Err(TemplateFileError::Malformed { .. })));
        let typo = parse("[email]\nmobile_link_templat = \"x\"\n").unwrap_err();
        assert!(matches!(typo, TemplateFileError::Malformed { .. }), "{typo}");
        assert!(typo.to_string().contains("mobile_link_templat"), "{typo}");
        assert!(matches!(parse("[sms]\nx = 1\n"), Err(TemplateFileError::Malformed { .. })));
        assert!(matches!(parse("[email]\ndefault_template = 5\n"), Err(TemplateFileError::Malformed { .. })));
        assert_eq!(
            parse("[email]\npension_mobile_link_template = \"not-a-uuid\"\n").unwrap_err().to_string(),
            "`t.toml`: email.pension_mobile_link_template must be a template UUID or empty"
        );
        assert_eq!(
            parse(&file([Some(DEFAULT), Some(MOBILE), Some(DEFAULT), Some(PENSION_MOBILE)])).unwrap_err(),
            TemplateFileError::SameSource { path: "t.toml".into() }
        );
        assert!(matches!(TemplateSwap::load("/nonexistent/templates.toml"), Err(TemplateFileError::Read { .. })));
        assert!(matches!(TemplateSwap::load("builtin:templates/staging.toml"), Err(TemplateFileError::Read { .. })));
    }

    #[test]
    fn the_built_in_files_load() {
        let (local, notes) = TemplateSwap::load("builtin:templates/local.toml").unwrap();
        assert_eq!(local.pairs().len(), 2);
        assert!(notes.is_empty(), "{notes:?}");
        let (production, notes) = TemplateSwap::load("builtin:templates/production.toml").unwrap();
        assert!(production.pairs().is_empty(), "production ids are filled in by the deployment");
        assert_eq!(notes.len(), 2, "{notes:?}");
        let (off, notes) = TemplateSwap::load("").unwrap();
        assert_eq!(off, TemplateSwap::off());
        assert_eq!(notes, ["templates.file is empty: the universal-link template swap is off"]);
    }

    #[test]
    fn startup_refuses_a_malformed_file_and_notes_an_incomplete_one() {
        use crate::config::Config;
        let dir = std::env::temp_dir().join(format!("ebg-templates-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[email]\ndefault_template = \"nope\"\n").unwrap();
        let half = dir.join("half.toml");
        std::fs::write(&half, file([Some(DEFAULT), Some(MOBILE), None, None])).unwrap();
        let env = |path: &std::path::Path| [("EBG_TEMPLATES__FILE".to_owned(), path.display().to_string())];
        let err = Config::load_from(env(&bad)).unwrap_err().to_string();
        let (config, warnings) = Config::load_with_warnings(env(&half)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("templates.file: `") && err.contains("email.default_template must be a template UUID"));
        assert_eq!(config.templates.file, half.display().to_string());
        assert_eq!(warnings.iter().filter(|w| w.contains("pension_claims_template is sent as requested")).count(), 1);
    }

    fn maybe_id() -> impl Strategy<Value = Option<Uuid>> {
        prop_oneof![
            Just(None),
            (0u128..6).prop_map(|n| Some(Uuid::from_u128(n))),
            any::<u128>().prop_map(|n| Some(Uuid::from_u128(n)))
        ]
    }

    proptest! {
        #[test]
        fn the_swap_never_leaves_the_two_pairs(
            values in prop::array::uniform4(maybe_id()),
            requested in prop_oneof![(0u128..6).prop_map(Uuid::from_u128), any::<u128>().prop_map(Uuid::from_u128)],
            flag_on in any::<bool>(),
        ) {
            let Ok((swap, _)) = parse(&file(values)) else {
                // Only the two sources being equal is refused.
                prop_assert!(values[0].is_some() && values[0] == values[2]);
                return Ok(());
            };
            let sent = swap.swap(requested, flag_on);
            let pairs = [(values[0], values[1]), (values[2], values[3])];
            prop_assert!(
                sent == requested || pairs.contains(&(Some(requested), Some(sent))),
                "{} -> {} outside {:?}", requested, sent, pairs
            );
            if !flag_on {
                prop_assert_eq!(sent, requested);
            }
        }
    }
}
