//! One typed configuration, loaded once: defaults, then the TOML file, then `RENKEI_*`
//! environment variables, then command-line flags (each later source wins).

use serde::Deserialize;
use std::path::Path;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE: &str = "sqlite:./renkei-data/renkei.db";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub database: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub default_page_size: Option<usize>,
    pub max_page_size: Option<usize>,
    /// Entries one batch or transaction Bundle may hold.
    pub max_bundle_entries: Option<usize>,
    /// Bytes of resources one batch or transaction response may carry.
    pub max_bundle_response_bytes: Option<usize>,
    pub workers: Option<usize>,
    pub max_connections: Option<u32>,
    /// Seconds a request waits for a database connection (a free one of the pool, or a new
    /// one) before it answers 503.
    pub database_wait_seconds: Option<u64>,
    pub demo: Option<bool>,
    pub implicit_policy: Option<String>,
    pub patient_deny_holds_on_break_glass: Option<bool>,
    pub token_ttl_seconds: Option<u64>,
    /// The base URL clients reach the server at, when it is not the listen address (behind a
    /// proxy, under a host name).
    pub base_url: Option<String>,
    /// The zone dates and times without one are read in, for indexing and search alike
    /// (`Z`/`UTC` or `+hh:mm`/`-hh:mm`).
    pub time_zone: Option<String>,
    /// Identifier systems whose value alone makes Patient records one person.
    pub link_identifier_systems: Option<Vec<String>>,
    /// Identifier systems that make records one person together with the birth date.
    pub link_with_birth_date_systems: Option<Vec<String>>,
    /// Origins whose browser pages may read answers (`*`: any); none by default.
    pub cors_allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub database: String,
    pub max_body_bytes: usize,
    pub default_page_size: usize,
    pub max_page_size: usize,
    pub max_bundle_entries: usize,
    pub max_bundle_response_bytes: usize,
    pub workers: usize,
    pub max_connections: u32,
    pub database_wait_seconds: u64,
    pub demo: bool,
    /// `opt-in` (default: no consent, no sharing) or `opt-out`.
    pub implicit_policy: String,
    pub patient_deny_holds_on_break_glass: bool,
    pub token_ttl_seconds: u64,
    /// See [`FileConfig::base_url`].
    pub base_url: Option<String>,
    /// See [`FileConfig::time_zone`]; `Z` by default.
    pub time_zone: renkei_repository::LocalZone,
    pub linking: renkei_identity::LinkingRules,
    /// See [`FileConfig::cors_allowed_origins`].
    pub cors: renkei_http::cors::CorsPolicy,
}

impl Config {
    /// The server's own base URLs: absolute references under them name resources here
    /// (`renkei_search::set_local_bases`). The configured `base_url`, and the listen address
    /// (`address`, the bound one when serving) with `localhost` for a loopback address, over
    /// http and https alike: `import` and `reindex` do not know whether `serve` runs TLS, and
    /// must index as it does.
    pub fn local_bases(&self, address: &str) -> Vec<String> {
        let mut bases: Vec<String> = self.base_url.iter().cloned().collect();
        for scheme in ["http", "https"] {
            bases.push(format!("{scheme}://{address}/fhir"));
            if let Some(port) = address.strip_prefix("127.0.0.1:") {
                bases.push(format!("{scheme}://localhost:{port}/fhir"));
            }
        }
        bases
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}, named by {variable}: {source}")]
    ReadSecret {
        variable: String,
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {name}='{value}' is not a valid {expected}")]
    Env {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Settings given on the command line (already merged with their `RENKEI_*` variables by clap).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<String>,
    pub listen: Option<String>,
    pub database: Option<String>,
    /// `--demo` / `RENKEI_DEMO` when given (`None`: the file decides).
    pub demo: Option<bool>,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, ConfigError> {
    match std::env::var(name) {
        Ok(value) => value.parse().map(Some).map_err(|_| ConfigError::Env {
            name: name.into(),
            value,
            expected: "number",
        }),
        Err(_) => Ok(None),
    }
}

impl Config {
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match &overrides.config {
            Some(path) => read_file(Path::new(path))?,
            None => FileConfig::default(),
        };
        let workers_default = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let config = Config {
            listen: overrides
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            // The file is read only when the URL is not given otherwise (CONFIGURATION.md).
            database: match overrides.database.clone() {
                Some(database) => Some(database),
                None => secret_from_file("RENKEI_DATABASE_URL_FILE")?,
            }
            .or(file.database)
            .unwrap_or_else(|| DEFAULT_DATABASE.into()),
            max_body_bytes: env_number("RENKEI_MAX_BODY_BYTES")?
                .or(file.max_body_bytes)
                .unwrap_or(16 * 1024 * 1024),
            default_page_size: env_number("RENKEI_DEFAULT_PAGE_SIZE")?
                .or(file.default_page_size)
                .unwrap_or(50),
            max_page_size: env_number("RENKEI_MAX_PAGE_SIZE")?
                .or(file.max_page_size)
                .unwrap_or(1000),
            max_bundle_entries: env_number("RENKEI_MAX_BUNDLE_ENTRIES")?
                .or(file.max_bundle_entries)
                .unwrap_or(1000),
            max_bundle_response_bytes: env_number("RENKEI_MAX_BUNDLE_RESPONSE_BYTES")?
                .or(file.max_bundle_response_bytes)
                .unwrap_or(renkei_repository::DEFAULT_MAX_BUNDLE_RESPONSE_BYTES),
            workers: env_number("RENKEI_WORKERS")?
                .or(file.workers)
                .unwrap_or(workers_default),
            max_connections: env_number("RENKEI_MAX_CONNECTIONS")?
                .or(file.max_connections)
                .unwrap_or(16),
            database_wait_seconds: env_number("RENKEI_DATABASE_WAIT_SECONDS")?
                .or(file.database_wait_seconds)
                .unwrap_or(10),
            demo: overrides.demo.or(file.demo).unwrap_or(false),
            implicit_policy: std::env::var("RENKEI_IMPLICIT_POLICY")
                .ok()
                .or(file.implicit_policy)
                .unwrap_or_else(|| "opt-in".into()),
            patient_deny_holds_on_break_glass: env_bool(
                "RENKEI_PATIENT_DENY_HOLDS_ON_BREAK_GLASS",
            )?
            .or(file.patient_deny_holds_on_break_glass)
            .unwrap_or(false),
            token_ttl_seconds: env_number("RENKEI_TOKEN_TTL_SECONDS")?
                .or(file.token_ttl_seconds)
                .unwrap_or(3600),
            base_url: std::env::var("RENKEI_BASE_URL").ok().or(file.base_url),
            time_zone: match std::env::var("RENKEI_TIME_ZONE").ok().or(file.time_zone) {
                Some(text) => text
                    .parse()
                    .map_err(|e| ConfigError::Invalid(format!("time_zone: {e}")))?,
                None => renkei_repository::LocalZone::UTC,
            },
            linking: {
                let defaults = renkei_identity::LinkingRules::default();
                renkei_identity::LinkingRules {
                    person_identifier_systems: env_list("RENKEI_LINK_IDENTIFIER_SYSTEMS")
                        .or(file.link_identifier_systems)
                        .unwrap_or(defaults.person_identifier_systems),
                    with_birth_date_systems: env_list("RENKEI_LINK_WITH_BIRTH_DATE_SYSTEMS")
                        .or(file.link_with_birth_date_systems)
                        .unwrap_or(defaults.with_birth_date_systems),
                }
            },
            cors: renkei_http::cors::CorsPolicy::from_origins(
                &env_list("RENKEI_CORS_ALLOWED_ORIGINS")
                    .or(file.cors_allowed_origins)
                    .unwrap_or_default(),
            )
            .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        };
        if !matches!(config.implicit_policy.as_str(), "opt-in" | "opt-out") {
            return Err(ConfigError::Invalid(format!(
                "implicit_policy must be opt-in or opt-out, not '{}'",
                config.implicit_policy
            )));
        }
        if config.token_ttl_seconds == 0
            || config.token_ttl_seconds > renkei_auth::MAX_TOKEN_TTL_SECONDS
        {
            // Refused here rather than at every token request, which would all answer 400.
            return Err(ConfigError::Invalid(format!(
                "token_ttl_seconds (RENKEI_TOKEN_TTL_SECONDS) must be between 1 and {} (one day), not {}",
                renkei_auth::MAX_TOKEN_TTL_SECONDS,
                config.token_ttl_seconds
            )));
        }
        if let Some(base) = &config.base_url {
            // The token endpoint clients address their assertions to is derived from it: it
            // must be an absolute http(s) URL.
            let ok = ["http://", "https://"].iter().any(|scheme| {
                base.strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
            });
            if !ok || base.contains(['?', '#', ' ']) {
                return Err(ConfigError::Invalid(format!(
                    "base_url (RENKEI_BASE_URL) must be an absolute http(s) URL such as https://gateway.example/fhir, not '{base}'"
                )));
            }
            // Every link and the public smart-configuration and CapabilityStatement show it:
            // user information there would publish a password.
            let authority = base
                .split_once("://")
                .map_or("", |(_, rest)| rest.split('/').next().unwrap_or_default());
            if authority.contains('@') {
                return Err(ConfigError::Invalid(
                    "base_url (RENKEI_BASE_URL) must not hold a user name or password \
                     (user:password@host): it is shown in every link and in the public \
                     /metadata and smart-configuration"
                        .into(),
                ));
            }
        }
        if !(1..=300).contains(&config.database_wait_seconds) {
            return Err(ConfigError::Invalid(format!(
                "database_wait_seconds (RENKEI_DATABASE_WAIT_SECONDS) must be between 1 and 300, not {}",
                config.database_wait_seconds
            )));
        }
        if config.workers == 0 {
            // Nothing can be served at zero (actix would panic).
            return Err(ConfigError::Invalid(
                "workers (RENKEI_WORKERS) must be at least 1, not 0".into(),
            ));
        }
        if config.max_connections < MIN_CONNECTIONS {
            // The audit writer keeps a connection of its own: with one, requests find none
            // (start-up times out on SQLite; searches and writes answer 503 on PostgreSQL).
            return Err(ConfigError::Invalid(format!(
                "max_connections (RENKEI_MAX_CONNECTIONS) must be at least {MIN_CONNECTIONS} (the audit writer keeps one connection, requests need another), not {}",
                config.max_connections
            )));
        }
        if config.max_body_bytes < MIN_BODY_BYTES {
            return Err(ConfigError::Invalid(format!(
                "max_body_bytes (RENKEI_MAX_BODY_BYTES) must be at least {MIN_BODY_BYTES}: a smaller limit refuses every write, not {}",
                config.max_body_bytes
            )));
        }
        if config.max_bundle_entries == 0 || config.max_bundle_response_bytes == 0 {
            // Zero would refuse every Bundle, which no one configures on purpose.
            return Err(ConfigError::Invalid(
                "max_bundle_entries and max_bundle_response_bytes must be at least 1".into(),
            ));
        }
        if config.default_page_size == 0 || config.default_page_size > config.max_page_size {
            return Err(ConfigError::Invalid(format!(
                "default_page_size ({}) must be between 1 and max_page_size ({}): set both \
                     (RENKEI_DEFAULT_PAGE_SIZE, RENKEI_MAX_PAGE_SIZE or the file's keys) when \
                     lowering max_page_size below the default of 50",
                config.default_page_size, config.max_page_size
            )));
        }
        Ok(config)
    }
}

/// The smallest database pool that serves requests beside the audit writer's connection.
const MIN_CONNECTIONS: u32 = 2;
/// The smallest request body limit that still admits a small resource.
const MIN_BODY_BYTES: usize = 256;

/// A boolean from the environment: `true` or `false`, nothing else. Safety settings read
/// anything else as an error rather than as `false`: `TRUE`, `1` or `yes` must not quietly
/// switch a protection off.
fn env_bool(name: &str) -> Result<Option<bool>, ConfigError> {
    match std::env::var(name) {
        Ok(value) => match value.as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(ConfigError::Env {
                name: name.into(),
                value,
                expected: "boolean (true or false)",
            }),
        },
        Err(_) => Ok(None),
    }
}

/// A comma-separated list from the environment (an empty value is an empty list).
fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|value| {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// Reads a secret (such as a database URL with a password) from the file a `*_FILE` variable
/// names, so it never has to sit in the environment or the config file.
fn secret_from_file(variable: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(variable) {
        Ok(path) => std::fs::read_to_string(&path)
            .map(|text| Some(text.trim().to_string()))
            .map_err(|source| ConfigError::ReadSecret {
                variable: variable.to_string(),
                path,
                source,
            }),
        Err(_) => Ok(None),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("renkei-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("renkei.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ndatabase = \"sqlite:/tmp/x.db\"\nmax_page_size = 77\n",
        )
        .unwrap();
        let config = Config::load(&Overrides {
            config: Some(path.display().to_string()),
            listen: Some("127.0.0.1:1".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:1");
        assert_eq!(config.database, "sqlite:/tmp/x.db");
        assert_eq!(config.max_page_size, 77);
    }

    /// Loads `text` as the configuration file (in a directory of its own per `name`).
    fn load_file(name: &str, text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("renkei-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("renkei.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&Overrides {
            config: Some(path.display().to_string()),
            ..Overrides::default()
        })
    }

    #[test]
    fn bundle_limits_default_and_are_checked() {
        let load = |text: &str| load_file("bundle", text);
        let defaults = load("").unwrap();
        assert_eq!(defaults.max_bundle_entries, 1000);
        assert_eq!(defaults.max_bundle_response_bytes, 64 * 1024 * 1024);
        let set = load("max_bundle_entries = 5\nmax_bundle_response_bytes = 1000\n").unwrap();
        assert_eq!(
            (set.max_bundle_entries, set.max_bundle_response_bytes),
            (5, 1000)
        );
        assert!(matches!(
            load("max_bundle_entries = 0\n"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn time_zone_is_read_and_checked() {
        let load = |text: &str| load_file("tz", text);
        assert_eq!(load("").unwrap().time_zone.to_string(), "Z");
        let jst = load("time_zone = \"+09:00\"\n").unwrap();
        assert_eq!(jst.time_zone.offset_secs(), 9 * 3600);
        let err = load("time_zone = \"Asia/Tokyo\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("time_zone") && err.contains("Asia/Tokyo"),
            "{err}"
        );
    }

    #[test]
    fn token_lifetime_and_base_url_are_checked() {
        let load = |text: &str| load_file("ttl", text);
        assert_eq!(
            load("token_ttl_seconds = 86400\n")
                .unwrap()
                .token_ttl_seconds,
            86_400
        );
        for ttl in ["0", "86401"] {
            let err = load(&format!("token_ttl_seconds = {ttl}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("token_ttl_seconds") && err.contains("86400"),
                "{err}"
            );
        }
        load("base_url = \"https://gw.example/fhir\"\n").unwrap();
        let err = load("base_url = \"gw.example/fhir\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("base_url"), "{err}");
        let err = load("base_url = \"https://user:pw@gw.example/fhir\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("password") && !err.contains("pw@"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("renkei-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("renkei.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Config::load(&Overrides {
            config: Some(path.display().to_string()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("lisen"));
    }
}
