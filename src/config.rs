//! The configuration document (SPEC §6), parsed once at start-up.
//!
//! Loading goes: text (TOML file, or the same document as JSON) → JSON value → checked
//! against `schemas/config.schema.json` → typed [`Config`] → [`Config::validate`] for
//! what a schema cannot say (uniqueness across services, steps that reach 100, ARNs of
//! one service in one account and region…). Every error names its field.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::{
    Check, ColorAlarms, Concurrency, DriftPolicy, ServiceSettings, Strategy, Timeouts,
    UnreadablePolicy,
};
use crate::schema::{self, FieldError, SchemaId};

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML / JSON.
    #[error("configuration is not valid {format}: {message}")]
    Syntax {
        /// `TOML` or `JSON`.
        format: &'static str,
        /// Parser message, with the location.
        message: String,
    },
    /// The document is well-formed but wrong; one entry per problem.
    #[error("invalid configuration: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker settings.
    pub worker: WorkerConfig,
    /// Services deployed by this worker.
    pub services: Vec<ServiceConfig>,
}

/// `[worker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// SQS queue the worker consumes.
    pub queue_url: String,
    /// DynamoDB table.
    pub table: String,
    /// EventBridge bus for outbound and operator events.
    pub event_bus: String,
    /// `source` of outbound events.
    #[serde(default = "default_source")]
    pub source: String,
    /// `source` accepted for operator events.
    #[serde(default = "default_manual_source")]
    pub manual_source: String,
    /// When set, events from another region are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// When set, events from another account are rejected; also the registry account of
    /// pushed images when the event lacks `account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

fn default_source() -> String {
    "bluegreen".into()
}

fn default_manual_source() -> String {
    "bluegreen.manual".into()
}

/// One `[[services]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name; deployment ids start with it.
    pub name: String,
    /// ECS cluster name or ARN.
    pub cluster: String,
    /// ECS service of the blue colour.
    pub blue_service: String,
    /// ECS service of the green colour.
    pub green_service: String,
    /// Target group of the blue colour.
    pub blue_target_group_arn: String,
    /// Target group of the green colour.
    pub green_target_group_arn: String,
    /// Production listener rule whose weights are shifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_listener_rule_arn: Option<String>,
    /// Or: several production listener rules, moved together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub production_listener_rule_arns: Vec<String>,
    /// Or: production listener whose default action is shifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_listener_arn: Option<String>,
    /// Optional test listener rule routed to the new colour during testing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_listener_rule_arn: Option<String>,
    /// Or: a test listener's default action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_listener_arn: Option<String>,
    /// Container whose image is replaced.
    pub container_name: String,
    /// ECR repository name that triggers deployments.
    pub ecr_repository: String,
    /// Glob over pushed tags; default: any tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_pattern: Option<String>,
    /// Shifting strategy.
    pub strategy: Strategy,
    /// Bake at 100 % before finalizing.
    #[serde(default = "default_bake", with = "humantime_serde")]
    pub bake: Duration,
    /// How long the old colour stays warm after success (rollback still instant).
    #[serde(default = "default_termination_wait", with = "humantime_serde")]
    pub termination_wait: Duration,
    /// Alarms whose ALARM state rolls back: a list (alarms on "the colour being
    /// deployed", whichever it is), or one list per colour (`{ blue = [...], green =
    /// [...] }`: only the target colour's alarms gate and roll back a deployment).
    #[serde(default)]
    pub rollback_alarms: RollbackAlarms,
    /// Require an operator's approve before shifting.
    #[serde(default)]
    pub approval: bool,
    /// What a new image does while a deployment is active.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Testing-stage checks.
    #[serde(default)]
    pub validations: Vec<ValidationConfig>,
    /// Failed rollback attempts before the deployment is `Failed`.
    #[serde(default = "default_rollback_attempts")]
    pub rollback_attempts: u32,
    /// Stage timeouts and polling.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// What to do when the production rule's weights drift from the ones written.
    #[serde(default)]
    pub drift: DriftPolicy,
    /// Fewest tasks the live colour may want (default 1): fewer, for example after a
    /// stack update or a console change, is capacity drift; a new colour starts with at
    /// least this many.
    #[serde(default = "default_min_tasks")]
    pub min_tasks: u32,
    /// What a deployment does once its rollback alarms or production rule have been
    /// unreadable for `timeouts.unreadable`: roll back (default) or pause.
    #[serde(default)]
    pub on_unreadable: UnreadablePolicy,
    /// Whether a rollback alarm rolls back a deployment that succeeded while its old
    /// colour is still warm (default true).
    #[serde(default = "default_true")]
    pub rollback_while_warm: bool,
}

fn default_min_tasks() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

fn default_bake() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_termination_wait() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_rollback_attempts() -> u32 {
    5
}

/// A service's rollback alarms as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RollbackAlarms {
    /// Alarms on the colour being deployed, whichever it is.
    Any(Vec<String>),
    /// One list per colour: a deployment is gated and rolled back by its target
    /// colour's alarms only.
    ByColor(ColorAlarms),
}

impl Default for RollbackAlarms {
    fn default() -> RollbackAlarms {
        RollbackAlarms::Any(Vec::new())
    }
}

impl RollbackAlarms {
    /// Every alarm named, each once.
    #[must_use]
    pub fn all(&self) -> Vec<String> {
        match self {
            RollbackAlarms::Any(all) => all.clone(),
            RollbackAlarms::ByColor(by) => {
                let mut all = by.blue.clone();
                all.extend(by.green.iter().filter(|a| !by.blue.contains(a)).cloned());
                all
            }
        }
    }
}

/// One validation: an HTTP check (`url`) or an external hook (`hook`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Name of a URL check in events (default: the URL); hooks are named by `hook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URL requested through the test listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Expected HTTP status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// Hook name answered by a `Validation Reported` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
}

/// `timeouts = { … }`; every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Start checks and registration.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub provision: Option<Duration>,
    /// New colour steady and healthy.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub green: Option<Duration>,
    /// Validations.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub testing: Option<Duration>,
    /// Approval gate.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub approval: Option<Duration>,
    /// Untimed pause.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub promote: Option<Duration>,
    /// Poll interval.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub poll: Option<Duration>,
    /// Reconciler grace.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub reconcile_grace: Option<Duration>,
    /// How long a deployment waits on unreadable alarms or an unreadable rule.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub unreadable: Option<Duration>,
}

/// A listener rule or a listener (whose default action is used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficTarget {
    /// A listener rule ARN.
    Rule(String),
    /// A listener ARN.
    Listener(String),
}

impl TrafficTarget {
    /// The rule's or listener's ARN.
    #[must_use]
    pub fn arn(&self) -> &str {
        match self {
            TrafficTarget::Rule(arn) | TrafficTarget::Listener(arn) => arn,
        }
    }
}

/// Reads a configuration file (the AWS and the embedded configuration alike).
///
/// # Errors
/// [`ConfigError::Io`] naming the file.
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Parses a TOML document into `T` (the AWS and the embedded configuration alike), its
/// syntax error on one line.
///
/// # Errors
/// [`ConfigError::Syntax`].
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax {
        format: "TOML",
        message: e.to_string().trim().replace('\n', " "),
    })
}

/// Environment variable naming the configuration file.
pub const CONFIG_FILE_ENV: &str = "BLUEGREEN_CONFIG";
/// Environment variable holding the configuration document as JSON (what infrastructure
/// code injects into the task definition).
pub const CONFIG_JSON_ENV: &str = "BLUEGREEN_CONFIG_JSON";

impl Config {
    /// Loads the configuration from `path`, else from the JSON in [`CONFIG_JSON_ENV`].
    /// This is the one place the environment is read for configuration.
    ///
    /// # Errors
    /// The loading error, or a message saying neither source is set.
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Config, String> {
        match path {
            Some(path) => Config::load(path).map_err(|e| e.to_string()),
            None => match std::env::var(CONFIG_JSON_ENV) {
                Ok(json) => {
                    Config::from_json_str(&json).map_err(|e| format!("{CONFIG_JSON_ENV}: {e}"))
                }
                Err(_) => Err(format!(
                    "no configuration: pass --config FILE, or set {CONFIG_FILE_ENV} or {CONFIG_JSON_ENV}"
                )),
            },
        }
    }

    /// Parses and validates a TOML document.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for malformed TOML, [`ConfigError::Invalid`] naming every
    /// wrong field.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_value(parse_toml(text)?)
    }

    /// Parses and validates the same document given as JSON (e.g. from
    /// `BLUEGREEN_CONFIG_JSON`).
    ///
    /// # Errors
    /// As [`Config::from_toml_str`].
    pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        Config::from_value(value)
    }

    /// Reads `path` (JSON when it ends in `.json`, TOML otherwise).
    ///
    /// # Errors
    /// [`ConfigError::Io`] when unreadable, otherwise as [`Config::from_toml_str`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        if path.extension().is_some_and(|e| e == "json") {
            Config::from_json_str(&text)
        } else {
            Config::from_toml_str(&text)
        }
    }

    fn from_value(value: Value) -> Result<Config, ConfigError> {
        schema::validate(SchemaId::Config, &value).map_err(ConfigError::Invalid)?;
        let config: Config = serde_json::from_value(value).map_err(|e| {
            ConfigError::Invalid(vec![FieldError {
                field: String::new(),
                message: e.to_string(),
            }])
        })?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Semantic checks beyond the schema.
    ///
    /// # Errors
    /// Every problem found, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut owners: HashMap<String, (usize, String)> = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |field: &str| format!("services[{i}].{field}");
            if let Some(j) = names.insert(s.name.as_str(), i) {
                err(
                    at("name"),
                    format!("duplicate service name {:?} (also services[{j}])", s.name),
                );
            }
            let given = [
                s.production_listener_rule_arn.is_some(),
                !s.production_listener_rule_arns.is_empty(),
                s.production_listener_arn.is_some(),
            ];
            match given.iter().filter(|g| **g).count() {
                0 => err(
                    at("production_listener_rule_arn"),
                    "one of production_listener_rule_arn, production_listener_rule_arns or production_listener_arn is required"
                        .into(),
                ),
                1 => {}
                _ => err(
                    at(if given[2] {
                        "production_listener_arn"
                    } else {
                        "production_listener_rule_arns"
                    }),
                    "give only one of production_listener_rule_arn, production_listener_rule_arns and production_listener_arn".into(),
                ),
            }
            if s.test_listener_rule_arn.is_some() && s.test_listener_arn.is_some() {
                err(
                    at("test_listener_arn"),
                    "give test_listener_rule_arn or test_listener_arn, not both".into(),
                );
            }
            if s.blue_service == s.green_service {
                err(at("green_service"), "must differ from blue_service".into());
            }
            if s.blue_target_group_arn == s.green_target_group_arn {
                err(
                    at("green_target_group_arn"),
                    "must differ from blue_target_group_arn".into(),
                );
            }
            // One ECS service, target group or listener rule must belong to one bluegreen
            // service only, or two deployments would write the same traffic.
            let mut resources = vec![
                (
                    "blue_service".to_string(),
                    format!("{}/{}", s.cluster, s.blue_service),
                ),
                (
                    "green_service".to_string(),
                    format!("{}/{}", s.cluster, s.green_service),
                ),
                (
                    "blue_target_group_arn".to_string(),
                    s.blue_target_group_arn.clone(),
                ),
                (
                    "green_target_group_arn".to_string(),
                    s.green_target_group_arn.clone(),
                ),
            ];
            resources.extend(production_fields(s));
            for (field, id) in resources {
                match owners.get(&id) {
                    Some((j, other)) if *j != i => err(
                        at(&field),
                        format!("{id} is already used by services[{j}].{other}"),
                    ),
                    _ => {
                        owners.insert(id, (i, field));
                    }
                }
            }
            check_arn_scope(s, &mut err, i);
            check_strategy(&s.strategy, &at("strategy"), &mut err);
            if let Some(p) = &s.tag_pattern
                && let Err(e) = glob::Pattern::new(p)
            {
                err(at("tag_pattern"), format!("not a valid glob: {e}"));
            }
            let mut check_names: HashMap<String, usize> = HashMap::new();
            for (k, v) in s.validations.iter().enumerate() {
                let field = format!("services[{i}].validations[{k}]");
                let check = v.to_check();
                if let Some(j) = check_names.insert(check.name().to_string(), k) {
                    err(
                        format!("{field}.name"),
                        format!(
                            "duplicate check name {:?} (also validations[{j}])",
                            check.name()
                        ),
                    );
                }
                if matches!(check, Check::Http { .. }) && !s.has_test_listener() {
                    err(
                        format!("{field}.url"),
                        "HTTP validations need test_listener_rule_arn or test_listener_arn so that they reach the new colour".into(),
                    );
                }
                if v.hook.is_some() && v.expect_status.is_some() {
                    err(
                        format!("{field}.expect_status"),
                        "only applies to url validations".into(),
                    );
                }
            }
            check_timeouts(&s.timeouts, &at("timeouts"), &mut err);
            check_duration(s.bake, at("bake"), &mut err);
            check_duration(s.termination_wait, at("termination_wait"), &mut err);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The service named `name`.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The longest duration the configuration accepts anywhere: a deployment's times are
/// written as RFC 3339 timestamps, which end at the year 9999, and no stage of a
/// deployment is meant to last longer than a year.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Refuses a duration longer than [`MAX_DURATION`].
pub(crate) fn check_duration(value: Duration, field: String, err: &mut impl FnMut(String, String)) {
    if value > MAX_DURATION {
        err(
            field,
            format!(
                "{} is longer than the longest duration accepted, {}",
                humantime::format_duration(value),
                humantime::format_duration(MAX_DURATION)
            ),
        );
    }
}

/// Timeouts a schema cannot judge: the poll interval must be positive, none may exceed
/// [`MAX_DURATION`].
pub(crate) fn check_timeouts(
    timeouts: &TimeoutsConfig,
    at: &str,
    err: &mut impl FnMut(String, String),
) {
    if timeouts.poll.is_some_and(|d| d.is_zero()) {
        err(format!("{at}.poll"), "must be greater than zero".into());
    }
    let all = [
        ("provision", timeouts.provision),
        ("green", timeouts.green),
        ("testing", timeouts.testing),
        ("approval", timeouts.approval),
        ("promote", timeouts.promote),
        ("poll", timeouts.poll),
        ("reconcile_grace", timeouts.reconcile_grace),
        ("unreadable", timeouts.unreadable),
    ];
    for (name, value) in all {
        if let Some(value) = value {
            check_duration(value, format!("{at}.{name}"), err);
        }
    }
}

/// A strategy's numbers: canary and linear percentages, steps increasing to 100.
pub(crate) fn check_strategy(strategy: &Strategy, at: &str, err: &mut impl FnMut(String, String)) {
    match strategy {
        Strategy::AllAtOnce => {}
        Strategy::Canary { percent, bake } => {
            if !(1..=99).contains(percent) {
                err(
                    format!("{at}.percent"),
                    format!("must be between 1 and 99, got {percent}"),
                );
            }
            if bake.is_zero() {
                err(format!("{at}.bake"), "must be greater than zero".into());
            }
            check_duration(*bake, format!("{at}.bake"), err);
        }
        Strategy::Linear {
            step_percent,
            interval,
        } => {
            if !(1..=100).contains(step_percent) {
                err(
                    format!("{at}.step_percent"),
                    format!("must be between 1 and 100, got {step_percent}"),
                );
            }
            if interval.is_zero() {
                err(format!("{at}.interval"), "must be greater than zero".into());
            }
            check_duration(*interval, format!("{at}.interval"), err);
        }
        Strategy::Steps { steps } => {
            let mut previous = 0u8;
            for (k, s) in steps.iter().enumerate() {
                if s.weight <= previous {
                    err(
                        format!("{at}.steps[{k}].weight"),
                        format!(
                            "weights must strictly increase: {} after {previous}",
                            s.weight
                        ),
                    );
                }
                if s.weight > 100 {
                    err(
                        format!("{at}.steps[{k}].weight"),
                        format!("must be at most 100, got {}", s.weight),
                    );
                }
                if let Some(pause) = s.pause {
                    check_duration(pause, format!("{at}.steps[{k}].pause"), err);
                }
                previous = s.weight;
            }
            if steps.last().is_none_or(|s| s.weight != 100) {
                err(
                    format!("{at}.steps"),
                    "the last step must have weight 100".into(),
                );
            }
        }
    }
}

/// The optional ARN fields that are set, as `(field, arn)`.
fn set_fields<'a, const N: usize>(
    fields: [(&'a str, &'a Option<String>); N],
) -> impl Iterator<Item = (String, String)> + 'a {
    fields
        .into_iter()
        .filter_map(|(field, arn)| arn.clone().map(|a| (field.to_string(), a)))
}

/// The production rule or listener fields of a service with their ARNs:
/// `("production_listener_rule_arns[1]", arn)`.
fn production_fields(s: &ServiceConfig) -> Vec<(String, String)> {
    set_fields([
        (
            "production_listener_rule_arn",
            &s.production_listener_rule_arn,
        ),
        ("production_listener_arn", &s.production_listener_arn),
    ])
    .chain(
        s.production_listener_rule_arns
            .iter()
            .enumerate()
            .map(|(k, a)| (format!("production_listener_rule_arns[{k}]"), a.clone())),
    )
    .collect()
}

/// Every ELBv2 ARN of a service must be in one partition, region and account.
fn check_arn_scope(s: &ServiceConfig, err: &mut impl FnMut(String, String), i: usize) {
    let mut arns = vec![
        (
            "blue_target_group_arn".to_string(),
            s.blue_target_group_arn.clone(),
        ),
        (
            "green_target_group_arn".to_string(),
            s.green_target_group_arn.clone(),
        ),
    ];
    arns.extend(production_fields(s));
    arns.extend(set_fields([
        ("test_listener_rule_arn", &s.test_listener_rule_arn),
        ("test_listener_arn", &s.test_listener_arn),
    ]));
    let mut first: Option<(String, String)> = None;
    for (field, arn) in arns {
        let scope: String = arn.split(':').skip(1).take(4).collect::<Vec<_>>().join(":");
        match &first {
            None => first = Some((field, scope)),
            Some((f, expected)) if *expected != scope => err(
                format!("services[{i}].{field}"),
                format!(
                    "is in {scope} but {f} is in {expected}; a service's load balancer resources must share one account and region"
                ),
            ),
            Some(_) => {}
        }
    }
}

impl ServiceConfig {
    /// Whether a test listener or rule is configured.
    #[must_use]
    pub fn has_test_listener(&self) -> bool {
        self.test_listener_rule_arn.is_some() || self.test_listener_arn.is_some()
    }

    /// The production traffic targets, moved together (empty only in a configuration
    /// that failed validation).
    #[must_use]
    pub fn production(&self) -> Vec<TrafficTarget> {
        let rules = self
            .production_listener_rule_arn
            .iter()
            .chain(&self.production_listener_rule_arns)
            .cloned()
            .map(TrafficTarget::Rule);
        let listener = self
            .production_listener_arn
            .clone()
            .map(TrafficTarget::Listener);
        rules.chain(listener).collect()
    }

    /// The test traffic target, if any.
    #[must_use]
    pub fn test(&self) -> Option<TrafficTarget> {
        self.test_listener_rule_arn
            .clone()
            .map(TrafficTarget::Rule)
            .or_else(|| self.test_listener_arn.clone().map(TrafficTarget::Listener))
    }

    /// The settings the decision core uses for this service.
    #[must_use]
    pub fn settings(&self) -> ServiceSettings {
        ServiceSettings {
            strategy: self.strategy.clone(),
            bake: self.bake,
            termination_wait: self.termination_wait,
            rollback_alarms: match &self.rollback_alarms {
                RollbackAlarms::Any(all) => all.clone(),
                RollbackAlarms::ByColor(_) => Vec::new(),
            },
            color_alarms: match &self.rollback_alarms {
                RollbackAlarms::Any(_) => ColorAlarms::default(),
                RollbackAlarms::ByColor(by) => by.clone(),
            },
            approval: self.approval,
            has_test_listener: self.has_test_listener(),
            checks: self
                .validations
                .iter()
                .map(ValidationConfig::to_check)
                .collect(),
            concurrency: self.concurrency,
            timeouts: self.timeouts.resolve(),
            rollback_attempts: self.rollback_attempts,
            drift: self.drift,
            min_tasks: self.min_tasks,
            on_unreadable: self.on_unreadable,
            rollback_while_warm: self.rollback_while_warm,
        }
    }
}

impl TimeoutsConfig {
    /// The timeouts with defaults for what is not set.
    #[must_use]
    pub fn resolve(&self) -> Timeouts {
        let d = Timeouts::default();
        Timeouts {
            provision: self.provision.unwrap_or(d.provision),
            green: self.green.unwrap_or(d.green),
            testing: self.testing.unwrap_or(d.testing),
            approval: self.approval.unwrap_or(d.approval),
            promote: self.promote.unwrap_or(d.promote),
            poll: self.poll.unwrap_or(d.poll),
            reconcile_grace: self.reconcile_grace.unwrap_or(d.reconcile_grace),
            unreadable: self.unreadable.unwrap_or(d.unreadable),
        }
    }
}

impl ValidationConfig {
    /// The core's view of this validation.
    #[must_use]
    pub fn to_check(&self) -> Check {
        match (&self.url, &self.hook) {
            (Some(url), _) => Check::Http {
                name: self.name.clone().unwrap_or_else(|| url.clone()),
                url: url.clone(),
                expect_status: self.expect_status.unwrap_or(200),
            },
            // Hooks answer by hook name, so that is the check's name.
            (None, hook) => Check::Hook {
                name: hook.clone().unwrap_or_default(),
            },
        }
    }
}
