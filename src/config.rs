//! Typed configuration: embedded defaults, a profile file, an optional file and `EBG_` environment
//! variables, validated once at startup (see `config/default.toml` for every key).

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Provider, Source};
use serde::Deserialize;

const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const LOCAL_TOML: &str = include_str!("../config/local.toml");
const PRODUCTION_TOML: &str = include_str!("../config/production.toml");
/// Time left between the end of the accept bound and the request timeout (handler work around the accept).
const ACCEPT_TIMEOUT_MARGIN: Duration = Duration::from_millis(1000);

/// A string that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_empty() { "[empty]" } else { "[redacted]" })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Deployment profile: decides the embedded profile file and how strict validation is.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Developer machine: sandbox upstreams allowed, database created on demand.
    Local,
    /// Real traffic: no sandboxes, no development keys, every secret set.
    Production,
}

impl Profile {
    /// The profile's name as `EBG_PROFILE` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Production => "production",
        }
    }
}

/// The whole configuration. Field docs live in `config/default.toml`.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub profile: Profile,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub accept: AcceptConfig,
    pub toggles: TogglesConfig,
    pub worker: WorkerConfig,
    pub notify: NotifyConfig,
    pub contacts: ContactsConfig,
    pub mpi: MpiConfig,
    pub admin: AdminConfig,
    pub console: ConsoleConfig,
    pub callbacks: CallbacksConfig,
    pub clicks: ClicksConfig,
    pub report: ReportConfig,
    pub rollout: RolloutConfig,
    pub retention: RetentionConfig,
    pub telemetry: TelemetryConfig,
    pub sms: SmsConfig,
    pub dry_run: DryRunConfig,
    pub templates: TemplatesConfig,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HttpConfig {
    /// Parsed when the configuration is loaded: a bad value is a problem naming `http.addr` (or
    /// `EBG_HTTP__ADDR`), never a silent fallback to another address.
    #[serde(deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub create_if_missing: bool,
    pub migrate_on_start: bool,
    pub private_server: bool,
    pub private_dir: String,
    pub postgres_bin_path: String,
}

impl DatabaseConfig {
    /// `host:port/name` of the configured database, for logs and messages: never the user or password.
    pub fn target(&self) -> String {
        match url::Url::parse(self.url.expose()) {
            Ok(url) => format!(
                "{}:{}{}",
                url.host_str().unwrap_or("localhost"),
                url.port().unwrap_or(5432),
                if url.path().len() > 1 { url.path() } else { "/" }
            ),
            Err(_) => "(unparsable database.url)".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuthConfig {
    pub public_key_path: String,
    pub extra_public_key_paths: Vec<String>,
    pub audience: String,
    pub issuer: String,
    pub scope_base_url: String,
    pub service_account_ids: Vec<String>,
    pub leeway_seconds: u64,
    pub token_cache_capacity: u64,
    pub token_cache_max_bytes: u64,
    pub dev_private_key_path: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AcceptConfig {
    pub duplicate_window_seconds: u64,
    pub batch_max: usize,
    pub writers: usize,
    /// How long a request may wait to be taken into a transaction before it is answered 503.
    pub deadline_ms: u64,
    /// Bound on one accept transaction once its requests are taken (server- and client-side).
    pub transaction_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TogglesConfig {
    pub refresh_interval_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkerConfig {
    pub enabled: bool,
    pub concurrency: usize,
    pub lease_seconds: u64,
    pub poll_interval_ms: u64,
    pub retry_base_seconds: u64,
    pub retry_max_seconds: u64,
    pub max_attempts: u32,
}

/// How an upstream is reached: really, or by an in-process sandbox for local runs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyMode {
    Live,
    Sandbox,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NotifyConfig {
    pub mode: NotifyMode,
    pub base_url: String,
    pub api_key: Secret,
    pub rate_per_minute: u32,
    pub push_api_key: Secret,
    pub push_rate_per_minute: u32,
    pub sms_sender_id: String,
    pub hostname: String,
    pub callback_url: String,
    pub callback_token: Secret,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub lookup_timeout_ms: u64,
    pub breaker_failure_threshold: u32,
    pub breaker_open_seconds: u64,
    pub sandbox_delivery_delay_ms: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContactsMode {
    Bgs,
    Sandbox,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ContactsConfig {
    pub mode: ContactsMode,
    pub bgs_url: String,
    pub bgs_host_header: String,
    pub client_username: String,
    pub station_id: String,
    pub application_name: String,
    pub client_machine: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub cache_ttl_seconds: u64,
    pub negative_cache_ttl_seconds: u64,
    pub cache_capacity: u64,
    pub cache_max_bytes: u64,
    pub sandbox_first_name: String,
}

/// Where ICNs come from (CHANNELS.md §2).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MpiMode {
    /// MPI FHIR `Patient` reads over mutual TLS.
    Fhir,
    /// A deterministic ICN derived from the participant id, without any I/O.
    Sandbox,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MpiConfig {
    pub mode: MpiMode,
    pub url: String,
    pub sender_id: String,
    pub client_cert_path: String,
    pub client_key_path: String,
    pub ca_path: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub cache_ttl_seconds: u64,
    pub negative_cache_ttl_seconds: u64,
    pub cache_capacity: u64,
    pub cache_max_bytes: u64,
}

impl MpiConfig {
    /// The problems with the `fhir` settings (empty when `mode` is `sandbox` or all is well). File contents are
    /// checked for readability only; [`crate::contacts::Mpi::from_config`] parses them.
    pub fn problems(&self) -> Vec<String> {
        if self.mode != MpiMode::Fhir {
            return Vec::new();
        }
        let mut problems = Vec::new();
        match url::Url::parse(self.url.trim()) {
            Ok(url) if url.scheme() == "https" && url.host().is_some() => {}
            _ => problems.push("mpi.url: must be an https URL in fhir mode (MPI requires mutual TLS)".to_owned()),
        }
        if self.sender_id.trim().is_empty() {
            problems.push("mpi.sender_id: required in fhir mode".to_owned());
        }
        for (key, path, required) in [
            ("client_cert_path", &self.client_cert_path, true),
            ("client_key_path", &self.client_key_path, true),
            ("ca_path", &self.ca_path, false),
        ] {
            if path.trim().is_empty() {
                if required {
                    problems.push(format!("mpi.{key}: required in fhir mode (a PEM file)"));
                }
            } else if let Err(e) = std::fs::File::open(path.trim()) {
                problems.push(format!("mpi.{key}: cannot read `{}` ({e})", path.trim()));
            }
        }
        if self.timeout_ms == 0 || self.connect_timeout_ms == 0 {
            problems.push("mpi.timeout_ms and mpi.connect_timeout_ms: must be positive".to_owned());
        }
        if self.cache_capacity == 0 {
            problems.push("mpi.cache_capacity: must be at least 1".to_owned());
        }
        if self.cache_max_bytes < 1024 {
            problems.push("mpi.cache_max_bytes: must be at least 1024".to_owned());
        }
        problems
    }
}

/// An admin bearer token and the name the audit log records for it.
#[derive(Clone, Debug, Deserialize)]
pub struct NamedToken {
    pub name: String,
    pub token: Secret,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AdminConfig {
    pub token: Secret,
    pub tokens: Vec<NamedToken>,
    pub protect_reads: bool,
    pub read_tokens: Vec<NamedToken>,
    pub pii_token_names: Vec<String>,
}

impl AdminConfig {
    /// Whether the admin token named `name` may read raw participant ids (`pii_token_names`).
    pub fn may_see_pii(&self, name: &str) -> bool {
        self.pii_token_names.iter().any(|n| n == name)
    }

    /// Every configured admin token with its name; `token` is named `ops`.
    pub fn named_tokens(&self) -> Vec<NamedToken> {
        let ops = (!self.token.is_empty()).then(|| NamedToken { name: "ops".to_owned(), token: self.token.clone() });
        ops.into_iter().chain(self.tokens.iter().filter(|t| !t.token.is_empty()).cloned()).collect()
    }

    /// Every configured read-only token with its name; blanks dropped.
    pub fn named_read_tokens(&self) -> Vec<NamedToken> {
        self.read_tokens.iter().filter(|t| !t.token.is_empty()).cloned().collect()
    }
}

/// The operators' web console.
#[derive(Clone, Debug, Deserialize)]
pub struct ConsoleConfig {
    pub enabled: bool,
    pub session_secret: Secret,
    pub session_minutes: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CallbacksConfig {
    pub resend_delay_seconds: u64,
    pub max_sends: u32,
    pub extra_tokens: Vec<Secret>,
}

impl CallbacksConfig {
    /// Every bearer token a callback may present: `notify.callback_token` plus `extra_tokens`, blanks dropped.
    pub fn bearer_tokens(&self, notify: &NotifyConfig) -> Vec<Secret> {
        std::iter::once(&notify.callback_token).chain(&self.extra_tokens).filter(|t| !t.is_empty()).cloned().collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct ClicksConfig {
    pub enabled: bool,
    pub base_url: String,
    pub web_host: String,
    pub secret: Secret,
    pub scanner_user_agents: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReportConfig {
    pub max_error_rate: f64,
    pub min_sample: u64,
}

/// The guarded-rollout evaluator (SPEC §9).
#[derive(Clone, Debug, Deserialize)]
pub struct RolloutConfig {
    pub enabled: bool,
    pub interval_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RetentionConfig {
    pub days: u32,
    pub interval_seconds: u64,
    pub batch_size: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub pii_hash_key: Secret,
}

/// Typed views of the duration settings. The keys keep their units (`*_ms`, `*_seconds`, `*_minutes`)
/// as the contract says; code asks for a [`Duration`] here instead of converting integers itself.
/// [`Config::validate`] has checked each range, so none of these can overflow downstream.
macro_rules! durations {
    ($($section:ty { $($name:ident: $field:ident as $unit:ident),+ $(,)? })+) => {$(
        impl $section {$(
            #[doc = concat!("`", stringify!($field), "` as a duration.")]
            pub fn $name(&self) -> Duration {
                durations!(@unit $unit, self.$field)
            }
        )+}
    )+};
    (@unit ms, $value:expr) => { Duration::from_millis($value) };
    (@unit seconds, $value:expr) => { Duration::from_secs($value) };
    (@unit minutes, $value:expr) => { Duration::from_secs($value.saturating_mul(60)) };
}

durations! {
    HttpConfig { request_timeout: request_timeout_seconds as seconds, shutdown_grace: shutdown_grace_seconds as seconds }
    DatabaseConfig { acquire_timeout: acquire_timeout_ms as ms }
    AuthConfig { leeway: leeway_seconds as seconds }
    AcceptConfig {
        duplicate_window: duplicate_window_seconds as seconds,
        deadline: deadline_ms as ms,
        transaction_timeout: transaction_timeout_ms as ms,
    }
    TogglesConfig { refresh_interval: refresh_interval_ms as ms }
    WorkerConfig {
        lease: lease_seconds as seconds,
        poll_interval: poll_interval_ms as ms,
        retry_base: retry_base_seconds as seconds,
        retry_max: retry_max_seconds as seconds,
    }
    NotifyConfig {
        timeout: timeout_ms as ms,
        connect_timeout: connect_timeout_ms as ms,
        lookup_timeout: lookup_timeout_ms as ms,
        breaker_open: breaker_open_seconds as seconds,
        sandbox_delivery_delay: sandbox_delivery_delay_ms as ms,
    }
    ContactsConfig {
        timeout: timeout_ms as ms,
        connect_timeout: connect_timeout_ms as ms,
        cache_ttl: cache_ttl_seconds as seconds,
        negative_cache_ttl: negative_cache_ttl_seconds as seconds,
    }
    MpiConfig {
        timeout: timeout_ms as ms,
        connect_timeout: connect_timeout_ms as ms,
        cache_ttl: cache_ttl_seconds as seconds,
        negative_cache_ttl: negative_cache_ttl_seconds as seconds,
    }
    ConsoleConfig { session: session_minutes as minutes }
    CallbacksConfig { resend_delay: resend_delay_seconds as seconds }
    SmsConfig { resend_delay: resend_delay_seconds as seconds }
    RolloutConfig { interval: interval_seconds as seconds }
    RetentionConfig { interval: interval_seconds as seconds }
}

/// `http.addr` as a socket address. The message is what the problem list prints after the key; the
/// value itself is never echoed.
fn socket_addr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::invalid_value(serde::de::Unexpected::Str(&text), &"host:port, e.g. 0.0.0.0:3000")
    })
}

/// Configuration could not be loaded or is invalid; the message has one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("configuration is invalid:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Name of the layer built from `EBG_` variables; its metadata turns a key back into the variable's name.
const ENV_LAYER: &str = "environment";
/// Keys holding file paths: a relative path is resolved against the directory of the file that set it.
const PATH_KEYS: [&str; 8] = [
    "auth.public_key_path",
    "auth.extra_public_key_paths",
    "auth.dev_private_key_path",
    "database.private_dir",
    "mpi.client_cert_path",
    "mpi.client_key_path",
    "mpi.ca_path",
    "templates.file",
];

impl Config {
    /// Loads the configuration from the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::vars())
    }

    /// Loads the configuration from the given environment variables (tests pass their own).
    pub fn load_from(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::load_with_warnings(env).map(|(config, _)| config)
    }

    /// Like [`Config::load_from`], and also returns warnings: keys that no setting has (a misspelled
    /// `EBG_` variable or file key), each with the nearest real key.
    pub fn load_with_warnings(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let (profile_name, profile_toml) = match lookup("EBG_PROFILE").as_deref() {
            None | Some("") | Some("local") => ("local", LOCAL_TOML),
            Some("production") => ("production", PRODUCTION_TOML),
            Some(other) => {
                return Err(ConfigError::Invalid(vec![format!(
                    "EBG_PROFILE: unknown profile `{other}` (expected `local` or `production`)"
                )]));
            }
        };
        let base = Figment::from(named(Toml::string(DEFAULT_TOML), "built-in default"))
            .merge(named(Toml::string(profile_toml), format!("built-in `{profile_name}` profile")));
        let mut warnings = Vec::new();
        let mut figment = base.clone();
        if let Some(path) = lookup("EBG_CONFIG_FILE").filter(|p| !p.is_empty()) {
            if !Path::new(&path).exists() {
                return Err(ConfigError::Load(format!("EBG_CONFIG_FILE `{path}` does not exist")));
            }
            let file = Figment::from(Toml::file(&path));
            let dict = file.data().map_err(|e| ConfigError::Load(format!("{path}: {e}")))?;
            for (_, dict) in dict {
                unknown_file_keys(&base, &dict, "", &path, &mut warnings);
            }
            figment = figment.merge(Toml::file(&path));
        }
        let ebg_vars: Vec<(String, String)> =
            env.iter().filter(|(k, _)| k.starts_with("EBG_") && k != "EBG_CONFIG_FILE").cloned().collect();
        for (name, _) in &ebg_vars {
            if let Some(warning) = unknown_env_key(&base, name) {
                warnings.push(warning);
            }
        }
        figment = figment.merge(EnvLayer::new(&base, ebg_vars));
        if let Some(url) = lookup("DATABASE_URL").filter(|u| !u.is_empty()) {
            figment = figment.merge(named(Serialized::global("database.url", url), "DATABASE_URL"));
        }
        let (mut config, mut problems) = match extract_all(&base, figment.clone()) {
            Ok(extracted) => extracted,
            Err(ConfigError::Invalid(mut problems)) => {
                problems.extend(warnings);
                return Err(ConfigError::Invalid(problems));
            }
            Err(e) => return Err(e),
        };
        resolve_relative_paths(&mut config, &figment);
        if let Err(ConfigError::Invalid(more)) = config.validate() {
            problems.extend(more);
        }
        if problems.is_empty() {
            warnings.extend(config.startup_notes());
            Ok((config, warnings))
        } else {
            // A misspelled key is often why a required value looks missing.
            problems.extend(warnings);
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks the loaded values; returns every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        check(self.http.body_limit_bytes >= 1024, "http.body_limit_bytes: must be at least 1024");
        check(self.database.max_connections >= 2, "database.max_connections: must be at least 2");
        check(!self.database.url.is_empty(), "database.url: required (or DATABASE_URL)");
        check(!self.auth.public_key_path.is_empty(), "auth.public_key_path: required (PEM file of the token signer)");
        check(!self.auth.audience.is_empty(), "auth.audience: required");
        check(
            self.auth.scope_base_url.starts_with("http://") || self.auth.scope_base_url.starts_with("https://"),
            "auth.scope_base_url: must be an http(s) URL such as https://api.va.gov",
        );
        check(self.accept.batch_max >= 1, "accept.batch_max: must be at least 1");
        check(self.accept.writers >= 1, "accept.writers: must be at least 1");
        check(
            (self.accept.writers as u32) < self.database.max_connections,
            "accept.writers: must be below database.max_connections (workers and reads need connections too)",
        );
        // A request taken into a transaction is never given up by its handler, so the deadline and the
        // transaction bound together must end before the request timeout answers 503 over a commit.
        // Checked arithmetic: out-of-range values are reported above, they must not overflow here.
        let accept_bound = self.accept.deadline().checked_add(self.accept.transaction_timeout());
        check(
            accept_bound
                .and_then(|bound| bound.checked_add(ACCEPT_TIMEOUT_MARGIN))
                .is_some_and(|bound| bound <= self.http.request_timeout()),
            "accept.deadline_ms + accept.transaction_timeout_ms: must end at least 1 s before http.request_timeout_seconds",
        );
        check(
            self.auth.token_cache_capacity == 0 || self.auth.token_cache_max_bytes >= 1024,
            "auth.token_cache_max_bytes: must be at least 1024 when the token cache is on",
        );
        check(self.contacts.cache_max_bytes >= 1024, "contacts.cache_max_bytes: must be at least 1024");
        check(self.worker.concurrency >= 1, "worker.concurrency: must be at least 1");
        check(self.worker.max_attempts >= 1, "worker.max_attempts: must be at least 1");
        check(
            self.worker.retry_base_seconds <= self.worker.retry_max_seconds,
            "worker.retry_base_seconds: must not exceed worker.retry_max_seconds",
        );
        check(self.notify.rate_per_minute >= 1, "notify.rate_per_minute: must be at least 1");
        check(self.notify.push_rate_per_minute >= 1, "notify.push_rate_per_minute: must be at least 1");
        check(
            self.notify.sms_sender_id.trim().is_empty()
                || uuid::Uuid::try_parse(self.notify.sms_sender_id.trim()).is_ok(),
            "notify.sms_sender_id: must be a UUID (or empty for the service's default sender)",
        );
        check(self.callbacks.max_sends >= 1, "callbacks.max_sends: must be at least 1");
        check(
            (0.0..=1.0).contains(&self.report.max_error_rate),
            "report.max_error_rate: must be a fraction between 0 and 1 (0.05 = 5%)",
        );
        check(
            self.report.min_sample >= 1,
            "report.min_sample: must be at least 1 (a stage without attempts never passes)",
        );
        check(self.retention.days >= 1, "retention.days: must be at least 1");
        check((1..=100_000).contains(&self.retention.batch_size), "retention.batch_size: must be 1..=100000");
        if self.clicks.enabled {
            let base = url::Url::parse(&self.clicks.base_url);
            check(
                base.as_ref().is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()),
                "clicks.base_url: must be an http(s) URL such as https://notify-links.va.gov",
            );
            check(
                !self.clicks.web_host.is_empty()
                    && url::Url::parse(&format!("https://{}/", self.clicks.web_host))
                        .is_ok_and(|u| u.host_str().is_some() && u.path() == "/" && u.username().is_empty()),
                "clicks.web_host: must be a bare host name such as www.va.gov",
            );
        }
        if self.notify.mode == NotifyMode::Live {
            check(!self.notify.api_key.is_empty(), "notify.api_key: required in live mode (EBG_NOTIFY__API_KEY)");
            check(url::Url::parse(&self.notify.base_url).is_ok(), "notify.base_url: must be a URL");
        }
        if self.contacts.mode == ContactsMode::Bgs {
            check(url::Url::parse(&self.contacts.bgs_url).is_ok(), "contacts.bgs_url: must be a URL");
        }
        if self.profile == Profile::Production {
            check(self.notify.mode == NotifyMode::Live, "notify.mode: production refuses `sandbox`");
            check(self.contacts.mode == ContactsMode::Bgs, "contacts.mode: production refuses `sandbox`");
            // SMS and push are switched on by toggles, at run time: production must be able to serve them
            // whenever a toggle opens, so MPI and the push key are required up front.
            check(
                self.mpi.mode == MpiMode::Fhir,
                "mpi.mode: production refuses `sandbox` (SMS and push need real ICNs)",
            );
            check(
                !self.notify.push_api_key.is_empty(),
                "notify.push_api_key: required in production (EBG_NOTIFY__PUSH_API_KEY)",
            );
            check(
                !self.auth.public_key_path.contains("config/dev/")
                    && !self.auth.public_key_path.starts_with(BUILTIN_KEY_PREFIX),
                "auth.public_key_path: production refuses the development key",
            );
            check(!self.database.private_server, "database.private_server: production never starts its own database");
            check(self.auth.dev_private_key_path.is_empty(), "auth.dev_private_key_path: must be empty in production");
            check(
                !self.notify.callback_token.is_empty(),
                "notify.callback_token: required in production (EBG_NOTIFY__CALLBACK_TOKEN)",
            );
            check(!self.admin.named_tokens().is_empty(), "admin.token: required in production (EBG_ADMIN__TOKEN)");
            check(
                !self.telemetry.pii_hash_key.is_empty()
                    && self.telemetry.pii_hash_key.expose() != "local-development-only",
                "telemetry.pii_hash_key: required in production (EBG_TELEMETRY__PII_HASH_KEY)",
            );
            check(!self.database.create_if_missing, "database.create_if_missing: production never creates databases");
            check(
                !self.clicks.enabled || self.clicks.secret.expose().len() >= 32,
                "clicks.secret: required in production when clicks are enabled, at least 32 characters (EBG_CLICKS__SECRET)",
            );
        }
        let token_names: Vec<String> = self.admin.named_tokens().into_iter().map(|t| t.name).collect();
        for name in &self.admin.pii_token_names {
            check(
                token_names.contains(name),
                &format!(
                    "admin.pii_token_names: `{name}` names no configured admin token (`ops` is admin.token; others are admin.tokens)"
                ),
            );
        }
        for t in self.admin.named_tokens() {
            check(
                t.token.expose().len() >= 16 || self.profile == Profile::Local,
                "admin.tokens: each token must be at least 16 characters",
            );
        }
        let admin_tokens = self.admin.named_tokens();
        for t in self.admin.named_read_tokens() {
            check(
                t.token.expose().len() >= 16 || self.profile == Profile::Local,
                "admin.read_tokens: each token must be at least 16 characters",
            );
            check(
                !admin_tokens.iter().any(|a| a.token == t.token),
                "admin.read_tokens: a read-only token must differ from every admin token",
            );
        }
        if self.profile == Profile::Production && self.console.enabled {
            check(
                self.console.session_secret.expose().len() >= 32,
                "console.session_secret: required in production while the console is enabled, at least 32 characters (EBG_CONSOLE__SESSION_SECRET)",
            );
        }
        problems.extend(self.duration_problems());
        problems.extend(self.mpi.problems());
        problems.extend(self.sms.problems());
        problems.extend(self.templates.problems());
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// Every duration setting outside the range in which it means something: zero where a zero would
    /// stop a loop or time every call out at once, and an upper bound where a larger value can only be a
    /// typo (and would overflow the conversions downstream: a duplicate window too large for a
    /// PostgreSQL interval used to become no window at all).
    fn duration_problems(&self) -> Vec<String> {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 3600;
        const DAY: u64 = 86_400;
        const TEN_MINUTES_MS: u64 = 600_000;
        let ranges: [(&str, u64, RangeInclusive<u64>, &str); 28] = [
            ("http.request_timeout_seconds", self.http.request_timeout_seconds, 1..=10 * MINUTE, ""),
            ("http.shutdown_grace_seconds", self.http.shutdown_grace_seconds, 0..=HOUR, ""),
            ("database.acquire_timeout_ms", self.database.acquire_timeout_ms, 1..=TEN_MINUTES_MS, ""),
            ("auth.leeway_seconds", self.auth.leeway_seconds, 0..=5 * MINUTE, ""),
            (
                "accept.duplicate_window_seconds",
                self.accept.duplicate_window_seconds,
                0..=7 * DAY,
                " (0 turns the window off)",
            ),
            ("accept.deadline_ms", self.accept.deadline_ms, 1..=TEN_MINUTES_MS, ""),
            ("accept.transaction_timeout_ms", self.accept.transaction_timeout_ms, 1..=TEN_MINUTES_MS, ""),
            ("toggles.refresh_interval_ms", self.toggles.refresh_interval_ms, 1..=HOUR * 1000, ""),
            ("worker.lease_seconds", self.worker.lease_seconds, 5..=DAY, ""),
            ("worker.poll_interval_ms", self.worker.poll_interval_ms, 1..=HOUR * 1000, ""),
            ("worker.retry_base_seconds", self.worker.retry_base_seconds, 0..=DAY, ""),
            ("worker.retry_max_seconds", self.worker.retry_max_seconds, 0..=7 * DAY, ""),
            ("notify.timeout_ms", self.notify.timeout_ms, 1..=TEN_MINUTES_MS, ""),
            ("notify.connect_timeout_ms", self.notify.connect_timeout_ms, 1..=TEN_MINUTES_MS, ""),
            ("notify.lookup_timeout_ms", self.notify.lookup_timeout_ms, 1..=TEN_MINUTES_MS, ""),
            ("notify.breaker_open_seconds", self.notify.breaker_open_seconds, 1..=DAY, ""),
            ("notify.sandbox_delivery_delay_ms", self.notify.sandbox_delivery_delay_ms, 0..=TEN_MINUTES_MS, ""),
            ("contacts.timeout_ms", self.contacts.timeout_ms, 1..=TEN_MINUTES_MS, ""),
            ("contacts.connect_timeout_ms", self.contacts.connect_timeout_ms, 1..=TEN_MINUTES_MS, ""),
            ("contacts.cache_ttl_seconds", self.contacts.cache_ttl_seconds, 0..=30 * DAY, ""),
            ("contacts.negative_cache_ttl_seconds", self.contacts.negative_cache_ttl_seconds, 0..=30 * DAY, ""),
            ("callbacks.resend_delay_seconds", self.callbacks.resend_delay_seconds, 0..=7 * DAY, ""),
            ("sms.resend_delay_seconds", self.sms.resend_delay_seconds, 0..=7 * DAY, ""),
            ("console.session_minutes", self.console.session_minutes, 5..=7 * DAY / MINUTE, " (a week)"),
            ("rollout.interval_seconds", self.rollout.interval_seconds, 1..=DAY, ""),
            ("retention.interval_seconds", self.retention.interval_seconds, 1..=7 * DAY, ""),
            ("mpi.cache_ttl_seconds", self.mpi.cache_ttl_seconds, 0..=30 * DAY, ""),
            ("mpi.negative_cache_ttl_seconds", self.mpi.negative_cache_ttl_seconds, 0..=30 * DAY, ""),
        ];
        ranges
            .into_iter()
            .filter(|(_, value, range, _)| !range.contains(value))
            .map(|(key, _, range, note)| format!("{key}: must be from {} to {}{note}", range.start(), range.end()))
            .collect()
    }

    /// The socket address to bind (`http.addr`, parsed at load).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr
    }

    /// Every public key file that may sign service-account tokens.
    pub fn public_key_paths(&self) -> Vec<PathBuf> {
        std::iter::once(&self.auth.public_key_path)
            .chain(self.auth.extra_public_key_paths.iter())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// A provider under a name of our choosing, so an error can say which layer a value came from.
struct Named<P> {
    inner: P,
    name: String,
}

fn named<P: Provider>(inner: P, name: impl Into<String>) -> Named<P> {
    Named { inner, name: name.into() }
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<figment::Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// `EBG_SECTION__KEY=value` pairs as nested keys. Like figment's `Env` provider, but it reads a given list
/// (tests load a configuration without touching the process environment), and a value whose default is a
/// string stays a string (`EBG_ADMIN__TOKEN=1234…` is a token, not a number).
struct EnvLayer {
    dict: Dict,
}

impl EnvLayer {
    fn new(base: &Figment, vars: Vec<(String, String)>) -> Self {
        let mut dict = Dict::new();
        for (name, raw) in vars {
            let path = env_key(&name);
            let value = match base.find_value(&path) {
                Ok(Value::String(..)) => Value::from(raw),
                _ => raw.parse().unwrap_or_else(|_| Value::from(raw)),
            };
            if let Value::Dict(_, nested) = figment::util::nest(&path, value) {
                merge_dict(&mut dict, nested);
            }
        }
        Self { dict }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_LAYER).interpolater(|_, keys| format!("EBG_{}", keys.join("__").to_uppercase()))
    }
    fn data(&self) -> Result<Map<figment::Profile, Dict>, figment::Error> {
        Ok(figment::Profile::Global.collect(self.dict.clone()))
    }
}

fn merge_dict(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, nested)) => merge_dict(existing, nested),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// `EBG_WORKER__CONCURRENCY` -> `worker.concurrency`.
fn env_key(name: &str) -> String {
    name["EBG_".len()..].to_lowercase().replace("__", ".")
}

/// Every key the embedded defaults define (they document every setting).
fn known_keys(base: &Figment) -> Vec<String> {
    fn walk(dict: &Dict, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in dict {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                Value::Dict(_, nested) => walk(nested, &path, out),
                _ => out.push(path),
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(Value::Dict(_, dict)) = base.find_value("") {
        walk(&dict, "", &mut out);
    } else if let Ok(data) = base.data() {
        for dict in data.values() {
            walk(dict, "", &mut out);
        }
    }
    out
}

/// The known key nearest to `key`, for "did you mean".
fn nearest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(distance, _)| *distance <= 3)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k.as_str())
}

fn unknown_env_key(base: &Figment, name: &str) -> Option<String> {
    let key = env_key(name);
    let known = known_keys(base);
    if known.contains(&key) {
        return None;
    }
    let hint = nearest(&key, &known)
        .map(|k| format!(" (did you mean EBG_{}?)", k.replace('.', "__").to_uppercase()))
        .unwrap_or_default();
    Some(format!("{name} is not a configuration setting and is ignored{hint}"))
}

fn unknown_file_keys(base: &Figment, dict: &Dict, prefix: &str, file: &str, warnings: &mut Vec<String>) {
    let known = known_keys(base);
    for (key, value) in dict {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if known.contains(&path) {
            continue;
        }
        match value {
            Value::Dict(_, nested) if known.iter().any(|k| k.starts_with(&format!("{path}."))) => {
                unknown_file_keys(base, nested, &path, file, warnings);
            }
            _ => {
                let hint = nearest(&path, &known).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
                warnings.push(format!("{file}: `{path}` is not a configuration setting and is ignored{hint}"));
            }
        }
    }
}

/// Extracts the configuration, collecting every type error: serde stops at the first, so each bad value
/// is reported and replaced by its default, and extraction is tried again.
fn extract_all(base: &Figment, mut figment: Figment) -> Result<(Config, Vec<String>), ConfigError> {
    let mut problems = Vec::new();
    // Each round removes at least one bad value; the bound only guards against a value that cannot be repaired.
    for _ in 0..100 {
        let errors = match figment.extract::<Config>() {
            Ok(config) => return Ok((config, problems)),
            Err(errors) => errors,
        };
        for error in errors {
            problems.push(describe(&error));
            let Some((key, default)) = default_for(base, &error.path) else {
                return Err(ConfigError::Invalid(problems));
            };
            figment = figment.merge(named(Serialized::global(&key, default), "built-in default"));
        }
    }
    Err(ConfigError::Invalid(problems))
}

/// The default of the nearest key at or above `path` (a bad list element is replaced by the default list).
fn default_for(base: &Figment, path: &[String]) -> Option<(String, Value)> {
    (1..=path.len()).rev().find_map(|n| {
        let key = path[..n].join(".");
        base.find_value(&key).ok().map(|v| (key, v))
    })
}

/// One line naming where the value came from (the environment variable, or the file and key) and what is
/// expected. Values are never echoed: they may be secrets.
fn describe(error: &figment::Error) -> String {
    let mut path = error.path.clone();
    if let figment::error::Kind::MissingField(field) = &error.kind {
        path.push(field.to_string());
    }
    let key = path.join(".");
    let source = match &error.metadata {
        Some(m) if m.name == ENV_LAYER => m.interpolate(&figment::Profile::Global, &path),
        Some(Metadata { source: Some(Source::File(file)), .. }) => format!("`{key}` in {}", file.display()),
        Some(m) => format!("`{key}` ({})", m.name),
        None => format!("`{key}`"),
    };
    use figment::error::Kind;
    let what = match &error.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("expected {}, found {}", expected_text(expected), actual_text(actual))
        }
        Kind::UnknownVariant(_, options) => {
            format!("expected one of {}", options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", "))
        }
        Kind::MissingField(_) => "required".to_owned(),
        other => other.to_string(),
    };
    format!("{source}: {what}")
}

fn expected_text(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" => format!("a whole number from 0 to {}", max_of(expected)),
        "u64" | "usize" => "a whole number (0 or more)".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        other => other.to_owned(),
    }
}

fn max_of(unsigned: &str) -> u64 {
    match unsigned {
        "u8" => u8::MAX.into(),
        "u16" => u16::MAX.into(),
        _ => u32::MAX.into(),
    }
}

fn actual_text(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "true/false",
        Actual::Signed(v) if *v < 0 => "a negative number",
        Actual::Unsigned(_) | Actual::Signed(_) => "a whole number",
        Actual::Float(_) => "a fractional number",
        Actual::Str(_) | Actual::Char(_) => "text",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "something else",
    }
}

/// A relative path set in a configuration file names a file beside it, wherever the process runs.
fn resolve_relative_paths(config: &mut Config, figment: &Figment) {
    let dir_of = |key: &str| match figment.find_metadata(key).and_then(|m| m.source.as_ref()) {
        Some(Source::File(file)) => file.parent().map(Path::to_path_buf),
        _ => None,
    };
    let resolve = |dir: Option<PathBuf>, value: &mut String| {
        if let Some(dir) = dir {
            if !value.is_empty() && !value.starts_with(BUILTIN_KEY_PREFIX) && Path::new(value.as_str()).is_relative() {
                *value = dir.join(value.as_str()).display().to_string();
            }
        }
    };
    for key in PATH_KEYS {
        let dir = dir_of(key);
        match key {
            "auth.public_key_path" => resolve(dir, &mut config.auth.public_key_path),
            "auth.dev_private_key_path" => resolve(dir, &mut config.auth.dev_private_key_path),
            "database.private_dir" => resolve(dir, &mut config.database.private_dir),
            "mpi.client_cert_path" => resolve(dir, &mut config.mpi.client_cert_path),
            "mpi.client_key_path" => resolve(dir, &mut config.mpi.client_key_path),
            "mpi.ca_path" => resolve(dir, &mut config.mpi.ca_path),
            "templates.file" => resolve(dir, &mut config.templates.file),
            _ => config.auth.extra_public_key_paths.iter_mut().for_each(|p| resolve(dir.clone(), p)),
        }
    }
}

/// Key paths starting with this name a development key compiled into the binary (`builtin:dev_public_key.pem`).
pub const BUILTIN_KEY_PREFIX: &str = "builtin:";

/// The contents of a key file; `builtin:` names one of the development keys embedded in the binary.
pub fn read_key_file(path: &str) -> std::io::Result<std::borrow::Cow<'static, [u8]>> {
    match path.strip_prefix(BUILTIN_KEY_PREFIX) {
        Some("dev_public_key.pem") => Ok(std::borrow::Cow::Borrowed(DEV_PUBLIC_KEY)),
        Some("dev_private_key.pem") => Ok(std::borrow::Cow::Borrowed(DEV_PRIVATE_KEY)),
        Some(other) => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no built-in key `{other}` (there are dev_public_key.pem and dev_private_key.pem)"),
        )),
        None => std::fs::read(path).map(std::borrow::Cow::Owned),
    }
}

const DEV_PUBLIC_KEY: &[u8] = include_bytes!("../config/dev/dev_public_key.pem");
const DEV_PRIVATE_KEY: &[u8] = include_bytes!("../config/dev/dev_private_key.pem");

/// What the worker does with an SMS that falls in the quiet hours (CHANNELS.md §5).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QuietHoursMode {
    /// Reschedule it to the end of the window plus a per-row slot (the default, vets-api's `_defer`).
    Defer,
    /// End it `suppressed`, reason `sms_quiet_hours` (counted; a release may send it later).
    Block,
    /// No quiet hours: SMS are sent at any hour.
    Off,
}

/// SMS-only policy: quiet hours (CHANNELS.md §5) and the SMS resend policy (§7). Parsed and checked by
/// [`crate::outbox::quiet_hours::QuietHours::from_config`] and [`crate::outbox::channel_policy`].
#[derive(Clone, Debug, Deserialize)]
pub struct SmsConfig {
    pub quiet_hours_mode: QuietHoursMode,
    /// Local wall-clock time the window opens, `HH:MM` (24-hour).
    pub quiet_hours_start: String,
    /// Local wall-clock time the window closes, `HH:MM`; exclusive.
    pub quiet_hours_end: String,
    /// IANA time zone the two times are read in.
    pub quiet_hours_zone: String,
    /// A deferred SMS is sent `crc32(id) % this` minutes after the window closes.
    pub quiet_hours_spread_minutes: u32,
    /// Most sends (first send plus resends) of one SMS; `callbacks.max_sends` is email's.
    pub max_sends: u32,
    /// Delay before resending a Retryable SMS temporary failure, in seconds.
    pub resend_delay_seconds: u64,
}

impl SmsConfig {
    /// Every problem with the section, each naming its key (empty when all is well).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = crate::outbox::quiet_hours::QuietHours::from_config(self).err().unwrap_or_default();
        if self.max_sends < 1 {
            problems.push("sms.max_sends: must be at least 1".to_owned());
        }
        problems
    }
}

/// Channels whose notifications are resolved but never sent: they end `skipped`, reason `dry_run`.
#[derive(Clone, Debug, Deserialize)]
pub struct DryRunConfig {
    pub email: bool,
    pub sms: bool,
    pub push: bool,
}

/// The per-environment file of email templates for the universal-link swap (CHANNELS.md §6).
#[derive(Clone, Debug, Deserialize)]
pub struct TemplatesConfig {
    /// A TOML file, `builtin:templates/<profile>.toml` for the ones compiled in, or empty for no swap.
    pub file: String,
}

impl TemplatesConfig {
    /// A file that cannot be read or parsed is a startup error; an incomplete one only a note.
    pub fn problems(&self) -> Vec<String> {
        match crate::notify::templates::TemplateSwap::load(&self.file) {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!("templates.file: {e}")],
        }
    }
}

impl Config {
    /// Things an operator should know at startup that are not errors: a channel in dry run, an
    /// incomplete template file. Logged once as warnings with the unknown-key warnings.
    pub fn startup_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (channel, on) in [("email", self.dry_run.email), ("sms", self.dry_run.sms), ("push", self.dry_run.push)] {
            if on {
                notes.push(format!(
                    "dry_run.{channel} is on: {channel} notifications are resolved and end `skipped` (dry_run), none is sent"
                ));
            }
        }
        if let Ok((_, more)) = crate::notify::templates::TemplateSwap::load(&self.templates.file) {
            notes.extend(more);
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn local_defaults_load() {
        let c = Config::load_from(env(&[])).unwrap();
        assert_eq!(c.profile, Profile::Local);
        assert_eq!(c.notify.mode, NotifyMode::Sandbox);
        assert!(c.database.create_if_missing);
        assert_eq!(c.accept.duplicate_window_seconds, 600);
    }

    #[test]
    fn env_overrides_nest_with_double_underscore() {
        let c = Config::load_from(env(&[
            ("EBG_HTTP__ADDR", "0.0.0.0:8080"),
            ("EBG_WORKER__CONCURRENCY", "3"),
            ("EBG_NOTIFY__RATE_PER_MINUTE", "60"),
            ("DATABASE_URL", "postgres://x@h/db"),
        ]))
        .unwrap();
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.worker.concurrency, 3);
        assert_eq!(c.notify.rate_per_minute, 60);
        assert_eq!(c.database.url.expose(), "postgres://x@h/db");
    }

    #[test]
    fn production_lists_every_problem() {
        let err =
            Config::load_from(env(&[("EBG_PROFILE", "production"), ("EBG_NOTIFY__MODE", "sandbox")])).unwrap_err();
        let text = err.to_string();
        for needle in [
            "notify.mode",
            "auth.public_key_path",
            "notify.callback_token",
            "admin.token",
            "telemetry.pii_hash_key",
            "notify.push_api_key",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }

    #[test]
    fn production_refuses_sandbox_mpi_and_a_missing_push_key() {
        let err = Config::load_from(env(&[("EBG_PROFILE", "production"), ("EBG_MPI__MODE", "sandbox")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mpi.mode: production refuses `sandbox`"), "{text}");
        assert!(text.contains("notify.push_api_key: required in production"), "{text}");
        // The production profile itself asks for MPI FHIR, so its settings are required.
        let err = Config::load_from(env(&[("EBG_PROFILE", "production")])).unwrap_err().to_string();
        assert!(err.contains("mpi.url") && !err.contains("mpi.mode: production refuses"), "{err}");
    }

    #[test]
    fn the_database_target_leaves_out_credentials() {
        let c = Config::load_from(env(&[(
            "EBG_DATABASE__URL",
            "postgres://app:hunter2@db.internal:6432/ebg?sslmode=require",
        )]))
        .unwrap();
        assert_eq!(c.database.target(), "db.internal:6432/ebg");
        let c = Config::load_from(env(&[])).unwrap();
        assert_eq!(c.database.target(), "127.0.0.1:5432/ebg_notify");
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::load_from(env(&[("EBG_NOTIFY__API_KEY", "super-secret-value")])).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("super-secret-value"));
        assert!(!dump.contains("local-admin-token"));
    }

    /// A TOML file in a fresh temporary directory; removed on drop.
    struct TempToml(PathBuf);

    impl TempToml {
        fn new(text: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("ebg-config-test-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("ebg.toml");
            std::fs::write(&file, text).unwrap();
            Self(file)
        }
        fn env(&self) -> (&'static str, String) {
            ("EBG_CONFIG_FILE", self.0.display().to_string())
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    fn load(pairs: Vec<(&str, String)>) -> Result<(Config, Vec<String>), ConfigError> {
        Config::load_with_warnings(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
    }

    #[test]
    fn type_errors_are_listed_together_naming_their_source() {
        let file = TempToml::new("[retention]\ndays = \"forever\"\n");
        let err = load(vec![
            ("EBG_WORKER__CONCURRENCY", "abc".into()),
            ("EBG_HTTP__BODY_LIMIT_BYTES", "-5".into()),
            ("EBG_NOTIFY__MODE", "nope".into()),
            ("EBG_ADMIN__PROTECT_READS", "maybe".into()),
            file.env(),
        ])
        .unwrap_err()
        .to_string();
        for needle in [
            "EBG_WORKER__CONCURRENCY: expected a whole number (0 or more), found text",
            "EBG_HTTP__BODY_LIMIT_BYTES: expected a whole number (0 or more), found a negative number",
            "EBG_NOTIFY__MODE: expected one of `live`, `sandbox`",
            "EBG_ADMIN__PROTECT_READS: expected true or false, found text",
            &format!(
                "`retention.days` in {}: expected a whole number from 0 to 4294967295, found text",
                file.0.display()
            ),
        ] {
            assert!(err.contains(needle), "missing {needle:?} in\n{err}");
        }
        assert!(!err.contains("figment") && !err.contains("alloc::"), "{err}");
        assert!(!err.contains("abc") && !err.contains("maybe"), "values are never echoed: {err}");
    }

    #[test]
    fn type_errors_and_invalid_values_are_reported_together() {
        let err = load(vec![("EBG_WORKER__CONCURRENCY", "x".into()), ("EBG_WORKER__MAX_ATTEMPTS", "0".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("EBG_WORKER__CONCURRENCY"), "{err}");
        assert!(err.contains("worker.max_attempts: must be at least 1"), "{err}");
    }

    #[test]
    fn a_bad_address_is_a_problem_naming_its_source_not_a_fallback() {
        let err = load(vec![("EBG_HTTP__ADDR", "localhost".into())]).unwrap_err().to_string();
        assert!(err.contains("EBG_HTTP__ADDR: expected host:port, e.g. 0.0.0.0:3000, found text"), "{err}");
        let file = TempToml::new("[http]\naddr = \"0.0.0.0:99999\"\n");
        let err = load(vec![file.env()]).unwrap_err().to_string();
        assert!(err.contains(&format!("`http.addr` in {}: expected host:port", file.0.display())), "{err}");
        let (c, _) = load(vec![("EBG_HTTP__ADDR", "[::1]:8080".into())]).unwrap();
        assert_eq!(c.http_addr(), SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8080)));
    }

    #[test]
    fn durations_are_typed_with_the_units_of_their_keys() {
        let c = Config::load_from(env(&[])).unwrap();
        assert_eq!(c.accept.duplicate_window(), Duration::from_secs(600));
        assert_eq!(c.accept.deadline(), Duration::from_millis(5000));
        assert_eq!(c.http.request_timeout(), Duration::from_secs(15));
        assert_eq!(c.worker.poll_interval(), Duration::from_millis(1000));
        assert_eq!(c.console.session(), Duration::from_secs(480 * 60));
    }

    #[test]
    fn durations_out_of_range_are_listed_together() {
        let err = load(vec![
            // Too large for a PostgreSQL interval: this used to become a zero window, i.e. no duplicate check.
            ("EBG_ACCEPT__DUPLICATE_WINDOW_SECONDS", u64::MAX.to_string()),
            ("EBG_NOTIFY__TIMEOUT_MS", "0".into()),
            ("EBG_WORKER__POLL_INTERVAL_MS", "0".into()),
            ("EBG_HTTP__REQUEST_TIMEOUT_SECONDS", "0".into()),
        ])
        .unwrap_err()
        .to_string();
        for needle in [
            "accept.duplicate_window_seconds: must be from 0 to 604800 (0 turns the window off)",
            "notify.timeout_ms: must be from 1 to 600000",
            "worker.poll_interval_ms: must be from 1 to 3600000",
            "http.request_timeout_seconds: must be from 1 to 600",
            // The accept bound no longer overflows or fits silently: it is reported against the timeout.
            "accept.deadline_ms + accept.transaction_timeout_ms: must end at least 1 s before",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in\n{err}");
        }
        // Huge values are reported, not overflowed (this used to panic in the accept-bound sum).
        let err = load(vec![("EBG_ACCEPT__DEADLINE_MS", u64::MAX.to_string())]).unwrap_err().to_string();
        assert!(err.contains("accept.deadline_ms: must be from 1 to 600000"), "{err}");
        // Zero keeps its documented meaning where it has one.
        let (c, _) = load(vec![("EBG_ACCEPT__DUPLICATE_WINDOW_SECONDS", "0".into())]).unwrap();
        assert_eq!(c.accept.duplicate_window(), Duration::ZERO);
    }

    #[test]
    fn unknown_keys_warn_with_the_nearest_setting() {
        let file = TempToml::new("[worker]\nconcurency = 3\n[nonsense]\nx = 1\n");
        let (config, warnings) =
            load(vec![("EBG_WORKER__CONCURENCY", "3".into()), ("EBG_WORKER__CONCURRENCY", "4".into()), file.env()])
                .unwrap();
        assert_eq!(config.worker.concurrency, 4);
        let text = warnings.join("\n");
        assert!(
            text.contains("EBG_WORKER__CONCURENCY is not a configuration setting and is ignored (did you mean EBG_WORKER__CONCURRENCY?)"),
            "{text}"
        );
        assert!(
            text.contains(
                "`worker.concurency` is not a configuration setting and is ignored (did you mean `worker.concurrency`?)"
            ),
            "{text}"
        );
        assert!(text.contains("`nonsense` is not a configuration setting"), "{text}");
        assert_eq!(warnings.len(), 3, "{text}");
    }

    #[test]
    fn string_settings_keep_numeric_looking_values_as_text() {
        let (c, _) = load(vec![("EBG_ADMIN__TOKEN", "12345678901234567890".into())]).unwrap();
        assert_eq!(c.admin.token.expose(), "12345678901234567890");
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_that_file() {
        let file = TempToml::new(
            "[auth]\npublic_key_path = \"keys/signer.pem\"\nextra_public_key_paths = [\"/abs.pem\", \"old.pem\"]\n",
        );
        let dir = file.0.parent().unwrap().to_path_buf();
        let (c, _) = load(vec![file.env(), ("EBG_DATABASE__PRIVATE_DIR", "pg".into())]).unwrap();
        assert_eq!(c.auth.public_key_path, dir.join("keys/signer.pem").display().to_string());
        assert_eq!(c.auth.extra_public_key_paths, ["/abs.pem".to_owned(), dir.join("old.pem").display().to_string()]);
        assert_eq!(c.auth.dev_private_key_path, "builtin:dev_private_key.pem", "defaults stay built in");
        assert_eq!(c.database.private_dir, "pg", "a path from the environment is left to the working directory");
    }

    #[test]
    fn builtin_keys_are_embedded_and_refused_by_production() {
        assert!(read_key_file("builtin:dev_public_key.pem").unwrap().starts_with(b"-----BEGIN"));
        assert!(read_key_file("builtin:nope.pem").is_err());
        let err = Config::load_from(env(&[
            ("EBG_PROFILE", "production"),
            ("EBG_AUTH__PUBLIC_KEY_PATH", "builtin:dev_public_key.pem"),
            ("EBG_DATABASE__PRIVATE_SERVER", "true"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("auth.public_key_path: production refuses the development key"), "{err}");
        assert!(err.contains("database.private_server: production never starts its own database"), "{err}");
    }
}
