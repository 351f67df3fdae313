//! The embedded mode's configuration: the user's own app as a command template, a health
//! path, a strategy and alarm rules over the proxy's metrics.
//!
//! The worker sees it as a [`Fleet`] (names, alarms, the core's settings), like a
//! production configuration; nothing AWS-shaped is made up for it. Strategies and
//! timeouts are checked by the same rules as in production, so a strategy that is wrong
//! locally is wrong with the same message there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, TimeoutsConfig, check_strategy, check_timeouts};
use crate::fleet::{Fleet, Service};
use crate::flow::{Concurrency, DriftPolicy, ServiceSettings, Strategy};
use crate::schema::FieldError;

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// `[local]`: where state lives and what is exposed.
    #[serde(default)]
    pub local: LocalSettings,
    /// The services.
    pub services: Vec<LocalService>,
}

/// `[local]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Directory of the embedded database, the event log and the apps' logs.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Address of the Prometheus `/metrics` endpoint; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// How often alarm rules are evaluated.
    #[serde(default = "default_evaluate_every", with = "humantime_serde")]
    pub evaluate_every: Duration,
}

impl Default for LocalSettings {
    fn default() -> LocalSettings {
        LocalSettings {
            state_dir: default_state_dir(),
            metrics: None,
            evaluate_every: default_evaluate_every(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".bluegreen")
}

fn default_evaluate_every() -> Duration {
    Duration::from_millis(250)
}

/// One `[[services]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalService {
    /// Unique name.
    pub name: String,
    /// Where the proxy listens for this service's production traffic.
    pub listen: SocketAddr,
    /// Command run by `sh -c` for each instance; `{port}`, `{version}` and `{color}` are
    /// replaced, and `PORT`, `BLUEGREEN_COLOR`, `BLUEGREEN_VERSION` are set.
    pub command: String,
    /// Instances per colour.
    #[serde(default = "one")]
    pub instances: u32,
    /// Health check path; 200 means healthy.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Version the live colour runs when nothing was deployed yet.
    #[serde(default = "default_initial_version")]
    pub initial_version: String,
    /// Shifting strategy (as in the production configuration).
    pub strategy: Strategy,
    /// Bake at 100 % before finalizing.
    #[serde(default = "default_bake", with = "humantime_serde")]
    pub bake: Duration,
    /// How long the old colour stays warm after success.
    #[serde(default = "default_termination_wait", with = "humantime_serde")]
    pub termination_wait: Duration,
    /// Require an operator's approve before shifting.
    #[serde(default)]
    pub approval: bool,
    /// What a new version does while a deployment is active.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Pin each client to its colour with a cookie while that colour has weight.
    #[serde(default)]
    pub sticky: bool,
    /// How long a colour taken out of service may finish open requests.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long an instance may take to exit after SIGTERM before it is killed.
    #[serde(default = "default_stop", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// Rollback alarms over the new colour's traffic.
    #[serde(default)]
    pub alarms: Vec<AlarmRule>,
    /// Stage timeouts and polling (as in the production configuration).
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
}

fn one() -> u32 {
    1
}
fn default_health_path() -> String {
    "/healthz".into()
}
fn default_initial_version() -> String {
    "v1".into()
}
fn default_bake() -> Duration {
    Duration::from_secs(60)
}
fn default_termination_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_stop() -> Duration {
    Duration::from_secs(10)
}

/// An alarm over one colour's proxy metrics: the deploying colour while a deployment is
/// active, else the live one. Exactly one of `error_rate_above` and `p99_above`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    /// Alarm name (what `rollback_alarms` lists in production).
    pub name: String,
    /// ALARM when the share of 5xx over the window is above this (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_above: Option<f64>,
    /// ALARM when the p99 latency over the window is above this.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_above: Option<Duration>,
    /// The evaluation window.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Fewer requests than this in the window is INSUFFICIENT_DATA, never ALARM.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_min_requests() -> u64 {
    20
}

impl LocalConfig {
    /// Parses a TOML document and checks it.
    ///
    /// # Errors
    /// Malformed TOML, unknown or mistyped fields, or what [`LocalConfig::validate`]
    /// refuses.
    pub fn from_toml_str(text: &str) -> Result<LocalConfig, ConfigError> {
        let config: LocalConfig = crate::config::parse_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and checks `path`.
    ///
    /// # Errors
    /// As [`LocalConfig::from_toml_str`], or the file cannot be read.
    pub fn load(path: &Path) -> Result<LocalConfig, ConfigError> {
        LocalConfig::from_toml_str(&crate::config::read(path)?)
    }

    /// The service named `name`.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&LocalService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Checks what serde cannot: commands, instances, paths, alarm rules, listen
    /// addresses, names, and the strategy and timeouts by the production rules.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming each wrong field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |field: &str| format!("services[{i}].{field}");
            let mut err = |field: String, message: String| {
                errors.push(FieldError { field, message });
            };
            if !is_name(&s.name) {
                err(
                    at("name"),
                    "must be 1 to 64 lower-case letters, digits, '-' or '_', starting and ending with a letter or digit (it names the service's local image repository)".into(),
                );
            }
            if !s.command.contains("{port}") {
                err(
                    at("command"),
                    "must contain {port}, the port the instance listens on".into(),
                );
            }
            if s.instances == 0 {
                err(at("instances"), "must be at least 1".into());
            }
            if !s.health_path.starts_with('/') {
                err(at("health_path"), "must start with /".into());
            }
            for (j, a) in s.alarms.iter().enumerate() {
                let field = at(&format!("alarms[{j}]"));
                match (a.error_rate_above, a.p99_above) {
                    (Some(r), None) if !(0.0..1.0).contains(&r) => {
                        err(field.clone(), "error_rate_above must be in [0, 1)".into());
                    }
                    (Some(_), None) | (None, Some(_)) => {}
                    _ => err(
                        field.clone(),
                        "needs exactly one of error_rate_above, p99_above".into(),
                    ),
                }
                if a.window.is_zero() {
                    err(field.clone(), "window must be positive".into());
                }
                if s.alarms[..j].iter().any(|b| b.name == a.name) {
                    err(field, format!("duplicate alarm name {:?}", a.name));
                }
            }
            check_strategy(&s.strategy, &at("strategy"), &mut err);
            check_timeouts(&s.timeouts, &at("timeouts"), &mut err);
            for (j, other) in self.services.iter().enumerate().skip(i + 1) {
                // Port 0 asks for any free port, so it never collides.
                if other.listen == s.listen && s.listen.port() != 0 {
                    err(at("listen"), format!("is also services[{j}].listen"));
                }
                if other.name == s.name {
                    err(
                        format!("services[{j}].name"),
                        format!("duplicate service name {:?} (also services[{i}])", s.name),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// The worker's view of these services: the embedded mode has no account, region or
    /// registry host, and its repository names are the service names.
    #[must_use]
    pub fn fleet(&self) -> Fleet {
        Fleet {
            source: "bluegreen".into(),
            manual_source: "bluegreen.manual".into(),
            account_id: None,
            region: None,
            services: self.services.iter().map(LocalService::service).collect(),
        }
    }
}

/// A local service name: it is also the repository name of its local image registry.
fn is_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let word = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=64).contains(&bytes.len())
        && bytes.first().is_some_and(word)
        && bytes.last().is_some_and(word)
        && bytes.iter().all(|b| word(b) || *b == b'-' || *b == b'_')
}

impl LocalService {
    /// The worker's view of this service.
    fn service(&self) -> Service {
        let mut settings = ServiceSettings::with_strategy(self.strategy.clone());
        settings.bake = self.bake;
        settings.termination_wait = self.termination_wait;
        settings.rollback_alarms = self.alarms.iter().map(|a| a.name.clone()).collect();
        settings.approval = self.approval;
        settings.concurrency = self.concurrency;
        settings.timeouts = self.timeouts.resolve();
        // Only bluegreen writes the embedded router's weights.
        settings.drift = DriftPolicy::default();
        Service {
            name: self.name.clone(),
            ecr_repository: self.name.clone(),
            tag_pattern: None,
            rollback_alarms: settings.rollback_alarms.clone(),
            settings,
            resources: Vec::new(),
        }
    }
}
