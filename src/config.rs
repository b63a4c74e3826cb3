//! Typed configuration: embedded defaults, a profile file, an optional file and `EBG_` environment
//! variables, validated once at startup (see `config/default.toml` for every key).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const LOCAL_TOML: &str = include_str!("../config/local.toml");
const PRODUCTION_TOML: &str = include_str!("../config/production.toml");
/// Time left between the end of the accept bound and the request timeout (handler work around the accept).
const ACCEPT_TIMEOUT_MARGIN_MS: u64 = 1000;

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
    pub admin: AdminConfig,
    pub callbacks: CallbacksConfig,
    pub clicks: ClicksConfig,
    pub report: ReportConfig,
    pub rollout: RolloutConfig,
    pub retention: RetentionConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HttpConfig {
    pub addr: String,
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
}

impl AdminConfig {
    /// Every configured admin token with its name; `token` is named `ops`.
    pub fn named_tokens(&self) -> Vec<NamedToken> {
        let ops = (!self.token.is_empty()).then(|| NamedToken { name: "ops".to_owned(), token: self.token.clone() });
        ops.into_iter().chain(self.tokens.iter().filter(|t| !t.token.is_empty()).cloned()).collect()
    }
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

/// Configuration could not be loaded or is invalid; the message has one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("configuration is invalid:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads the configuration from the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::vars())
    }

    /// Loads the configuration from the given environment variables (tests pass their own).
    pub fn load_from(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let profile_toml = match lookup("EBG_PROFILE").as_deref() {
            None | Some("") | Some("local") => LOCAL_TOML,
            Some("production") => PRODUCTION_TOML,
            Some(other) => {
                return Err(ConfigError::Invalid(vec![format!(
                    "EBG_PROFILE: unknown profile `{other}` (expected `local` or `production`)"
                )]));
            }
        };
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(profile_toml));
        if let Some(path) = lookup("EBG_CONFIG_FILE").filter(|p| !p.is_empty()) {
            if !std::path::Path::new(&path).exists() {
                return Err(ConfigError::Load(format!("EBG_CONFIG_FILE `{path}` does not exist")));
            }
            figment = figment.merge(Toml::file(path));
        }
        let ebg_vars: Vec<(String, String)> =
            env.iter().filter(|(k, _)| k.starts_with("EBG_") && k != "EBG_CONFIG_FILE").cloned().collect();
        figment = figment.merge(env_provider(ebg_vars));
        if let Some(url) = lookup("DATABASE_URL").filter(|u| !u.is_empty()) {
            figment = figment.merge(("database.url", url));
        }
        let config: Config = figment.extract().map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the loaded values; returns every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        check(self.http.addr.parse::<SocketAddr>().is_ok(), "http.addr: must be host:port, e.g. 0.0.0.0:3000");
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
        check(self.accept.deadline_ms >= 1, "accept.deadline_ms: must be at least 1");
        check(self.accept.transaction_timeout_ms >= 1, "accept.transaction_timeout_ms: must be at least 1");
        // A request taken into a transaction is never given up by its handler, so the deadline and the
        // transaction bound together must end before the request timeout answers 503 over a commit.
        check(
            self.accept.deadline_ms + self.accept.transaction_timeout_ms + ACCEPT_TIMEOUT_MARGIN_MS
                <= self.http.request_timeout_seconds * 1000,
            "accept.deadline_ms + accept.transaction_timeout_ms: must end at least 1 s before http.request_timeout_seconds",
        );
        check(
            self.auth.token_cache_capacity == 0 || self.auth.token_cache_max_bytes >= 1024,
            "auth.token_cache_max_bytes: must be at least 1024 when the token cache is on",
        );
        check(self.contacts.cache_max_bytes >= 1024, "contacts.cache_max_bytes: must be at least 1024");
        check(self.worker.concurrency >= 1, "worker.concurrency: must be at least 1");
        check(self.worker.max_attempts >= 1, "worker.max_attempts: must be at least 1");
        check(self.worker.lease_seconds >= 5, "worker.lease_seconds: must be at least 5");
        check(
            self.worker.retry_base_seconds <= self.worker.retry_max_seconds,
            "worker.retry_base_seconds: must not exceed worker.retry_max_seconds",
        );
        check(self.notify.rate_per_minute >= 1, "notify.rate_per_minute: must be at least 1");
        check(self.callbacks.max_sends >= 1, "callbacks.max_sends: must be at least 1");
        check(
            (0.0..=1.0).contains(&self.report.max_error_rate),
            "report.max_error_rate: must be a fraction between 0 and 1 (0.05 = 5%)",
        );
        check(
            (1..=86_400).contains(&self.rollout.interval_seconds),
            "rollout.interval_seconds: must be from 1 to 86400",
        );
        check(self.retention.days >= 1, "retention.days: must be at least 1");
        check(self.retention.interval_seconds >= 1, "retention.interval_seconds: must be at least 1");
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
            check(
                !self.auth.public_key_path.contains("config/dev/"),
                "auth.public_key_path: production refuses the development key",
            );
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
        for t in self.admin.named_tokens() {
            check(
                t.token.expose().len() >= 16 || self.profile == Profile::Local,
                "admin.tokens: each token must be at least 16 characters",
            );
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The socket address to bind.
    pub fn http_addr(&self) -> SocketAddr {
        // Validated in `validate`, so this parse cannot fail on a loaded config.
        self.http.addr.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 3000)))
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

/// Maps `EBG_SECTION__KEY=value` pairs to nested keys. Like figment's `Env` provider, but it reads a
/// given list, so tests can load a configuration without touching the process environment.
fn env_provider(vars: Vec<(String, String)>) -> Figment {
    let mut figment = Figment::new();
    for (key, value) in vars {
        let path = key["EBG_".len()..].to_lowercase().replace("__", ".");
        // Parse like figment's Env does, so numbers and booleans keep their types.
        let value: figment::value::Value = value.parse().unwrap_or_else(|_| figment::value::Value::from(value));
        figment = figment.merge((path, value));
    }
    figment
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
        assert_eq!(c.http.addr, "0.0.0.0:8080");
        assert_eq!(c.worker.concurrency, 3);
        assert_eq!(c.notify.rate_per_minute, 60);
        assert_eq!(c.database.url.expose(), "postgres://x@h/db");
    }

    #[test]
    fn production_lists_every_problem() {
        let err =
            Config::load_from(env(&[("EBG_PROFILE", "production"), ("EBG_NOTIFY__MODE", "sandbox")])).unwrap_err();
        let text = err.to_string();
        for needle in
            ["notify.mode", "auth.public_key_path", "notify.callback_token", "admin.token", "telemetry.pii_hash_key"]
        {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::load_from(env(&[("EBG_NOTIFY__API_KEY", "super-secret-value")])).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("super-secret-value"));
        assert!(!dump.contains("local-admin-token"));
    }
}
