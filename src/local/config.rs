//! The embedded mode's configuration: the user's own app as a command template, a health
//! path, a strategy and alarm rules over the proxy's metrics.
//!
//! It is turned into the worker's [`Config`] with loopback stand-ins for the AWS names
//! (`local:` queue and table, synthetic ARNs in a `local` region), and that document goes
//! through the same schema and semantic checks as a production one, so a strategy that is
//! wrong locally is wrong with the same message in production.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, ServiceConfig, TimeoutsConfig, WorkerConfig};
use crate::flow::{Concurrency, DriftPolicy, Strategy};
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

/// The synthetic account and region of the embedded mode's stand-in ARNs.
const LOCAL_SCOPE: &str = "local:000000000000";

impl LocalConfig {
    /// Parses a TOML document and checks it.
    ///
    /// # Errors
    /// Malformed TOML, unknown or mistyped fields, or what [`LocalConfig::worker_config`]
    /// refuses.
    pub fn from_toml_str(text: &str) -> Result<LocalConfig, ConfigError> {
        let config: LocalConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            format: "TOML",
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.worker_config()?;
        Ok(config)
    }

    /// Reads and checks `path`.
    ///
    /// # Errors
    /// As [`LocalConfig::from_toml_str`], or the file cannot be read.
    pub fn load(path: &Path) -> Result<LocalConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        LocalConfig::from_toml_str(&text)
    }

    /// The service named `name`.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&LocalService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The worker's configuration for these services, checked like a production one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming each wrong field.
    pub fn worker_config(&self) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let mut err = |field: &str, message: &str| {
                errors.push(FieldError {
                    field: format!("services[{i}].{field}"),
                    message: message.into(),
                });
            };
            if !s.command.contains("{port}") {
                err(
                    "command",
                    "must contain {port}, the port the instance listens on",
                );
            }
            if s.instances == 0 {
                err("instances", "must be at least 1");
            }
            if !s.health_path.starts_with('/') {
                err("health_path", "must start with /");
            }
            for (j, a) in s.alarms.iter().enumerate() {
                let field = format!("alarms[{j}]");
                match (a.error_rate_above, a.p99_above) {
                    (Some(r), None) if !(0.0..1.0).contains(&r) => {
                        err(&field, "error_rate_above must be in [0, 1)");
                    }
                    (Some(_), None) | (None, Some(_)) => {}
                    _ => err(&field, "needs exactly one of error_rate_above, p99_above"),
                }
                if a.window.is_zero() {
                    err(&field, "window must be positive");
                }
            }
            // Port 0 asks for any free port, so it never collides.
            for (j, other) in self.services.iter().enumerate().skip(i + 1) {
                if other.listen == s.listen && s.listen.port() != 0 {
                    err("listen", &format!("is also services[{j}].listen"));
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        let config = Config {
            worker: WorkerConfig {
                queue_url: "http://127.0.0.1/bluegreen-local/inbox".into(),
                table: "bluegreen-local".into(),
                event_bus: "bluegreen-local".into(),
                source: "bluegreen".into(),
                manual_source: "bluegreen.manual".into(),
                region: None,
                account_id: None,
            },
            services: self
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| s.stand_in(i))
                .collect(),
        };
        let json = serde_json::to_string(&config).map_err(|e| {
            ConfigError::Invalid(vec![FieldError {
                field: String::new(),
                message: e.to_string(),
            }])
        })?;
        Config::from_json_str(&json)
    }
}

impl LocalService {
    /// The production-shaped service this one (the `index`th) stands in for.
    fn stand_in(&self, index: usize) -> ServiceConfig {
        let name = &self.name;
        let elb = |what: &str| format!("arn:aws:elasticloadbalancing:{LOCAL_SCOPE}:{what}");
        let id = |n: usize| format!("{:016x}", index * 3 + n);
        ServiceConfig {
            name: name.clone(),
            cluster: "local".into(),
            blue_service: format!("{name}-blue"),
            green_service: format!("{name}-green"),
            blue_target_group_arn: elb(&format!("targetgroup/local-blue/{}", id(1))),
            green_target_group_arn: elb(&format!("targetgroup/local-green/{}", id(2))),
            production_listener_rule_arn: None,
            production_listener_arn: Some(elb(&format!("listener/app/local/{}/{}", id(0), id(0)))),
            test_listener_rule_arn: None,
            test_listener_arn: None,
            container_name: "app".into(),
            ecr_repository: name.clone(),
            tag_pattern: None,
            strategy: self.strategy.clone(),
            bake: self.bake,
            termination_wait: self.termination_wait,
            rollback_alarms: self.alarms.iter().map(|a| a.name.clone()).collect(),
            approval: self.approval,
            concurrency: self.concurrency,
            validations: Vec::new(),
            rollback_attempts: 5,
            timeouts: self.timeouts.clone(),
            // Only bluegreen writes the embedded router's weights.
            drift: DriftPolicy::default(),
        }
    }
}
