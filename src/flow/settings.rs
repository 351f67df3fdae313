//! Per-service settings the core decides with, and the strategy → plan expansion.
//!
//! These are the domain view of a `[[services]]` entry; [`crate::config`] parses and
//! validates the file and builds them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{Color, Hold, Plan, Step, duration_ms};

/// How traffic moves from the old colour to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Strategy {
    /// 0 → 100 % in one step.
    AllAtOnce,
    /// `percent` for `bake`, then 100 %.
    Canary {
        /// Canary share, 1..=99.
        percent: u8,
        /// How long the canary runs.
        #[serde(with = "humantime_serde")]
        bake: Duration,
    },
    /// `step_percent` more every `interval` until 100 %.
    Linear {
        /// Increment, 1..=100.
        step_percent: u8,
        /// Time between increments.
        #[serde(with = "humantime_serde")]
        interval: Duration,
    },
    /// An explicit list; a step without `pause` waits for `promote`.
    Steps {
        /// Strictly increasing weights ending at 100.
        steps: Vec<ExplicitStep>,
    },
}

/// One step of an explicit `steps` strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitStep {
    /// Percent on the new colour.
    pub weight: u8,
    /// How long to hold; absent = wait for `promote` (ignored on the final 100 % step).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub pause: Option<Duration>,
}

impl Strategy {
    /// Expands the strategy into shifting steps. The last step is always 100 % with no
    /// hold (the bake follows it). Assumes a validated strategy; an invalid one still
    /// yields a plan that ends at 100 %.
    #[must_use]
    pub fn steps(&self) -> Vec<Step> {
        let full = Step {
            percent: 100,
            hold: Hold::Timed(0),
        };
        let mut steps = match self {
            Strategy::AllAtOnce => Vec::new(),
            Strategy::Canary { percent, bake } => vec![Step {
                percent: (*percent).clamp(1, 99),
                hold: Hold::Timed(duration_ms(*bake)),
            }],
            Strategy::Linear {
                step_percent,
                interval,
            } => {
                let inc = u16::from((*step_percent).max(1));
                (1..)
                    .map(|i: u16| i.saturating_mul(inc))
                    .take_while(|p| *p < 100)
                    .map(|p| Step {
                        percent: u8::try_from(p).unwrap_or(100),
                        hold: Hold::Timed(duration_ms(*interval)),
                    })
                    .collect()
            }
            Strategy::Steps { steps } => steps
                .iter()
                .filter(|s| s.weight < 100)
                .map(|s| Step {
                    percent: s.weight.max(1),
                    hold: s
                        .pause
                        .map_or(Hold::UntilPromote, |p| Hold::Timed(duration_ms(p))),
                })
                .collect(),
        };
        steps.push(full);
        steps
    }

    /// Short description, e.g. `linear 10% every 1m`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Strategy::AllAtOnce => "all-at-once".into(),
            Strategy::Canary { percent, bake } => {
                format!(
                    "canary {percent}% for {}",
                    humantime::format_duration(*bake)
                )
            }
            Strategy::Linear {
                step_percent,
                interval,
            } => format!(
                "linear {step_percent}% every {}",
                humantime::format_duration(*interval)
            ),
            Strategy::Steps { steps } => format!("{} explicit steps", steps.len()),
        }
    }
}

/// What to do with a new image while a deployment is active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Concurrency {
    /// Keep the latest image and start it when the active deployment ends.
    #[default]
    Queue,
    /// Roll the active deployment back, then start the new image.
    Supersede,
    /// Refuse the new image with an `Event Rejected`.
    Reject,
}

/// What the worker does when production's weights differ from the ones it wrote (a
/// stack update, a change in the console): SPEC §4 invariant 10.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftPolicy {
    /// Write the stored weights back and read them back.
    #[default]
    Reassert,
    /// Pause the active deployment for an operator (idle: report only).
    Pause,
    /// Report it and carry on; the next step writes its own weights anyway.
    Report,
}

impl DriftPolicy {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Reassert => "reassert",
            DriftPolicy::Pause => "pause",
            DriftPolicy::Report => "report",
        }
    }
}

/// What a deployment does once it has been unable to read what it needs to go on (its
/// rollback alarm states, the production rule) for `timeouts.unreadable`: SPEC §4
/// invariant 14.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnreadablePolicy {
    /// Roll back to the known-good colour: what cannot be watched is not kept.
    #[default]
    Rollback,
    /// Pause for an operator, who resumes or aborts.
    Pause,
}

impl UnreadablePolicy {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UnreadablePolicy::Rollback => "rollback",
            UnreadablePolicy::Pause => "pause",
        }
    }
}

/// A validation run in the testing stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Check {
    /// An HTTP GET against the test listener.
    Http {
        /// Name used in events (defaults to the URL).
        name: String,
        /// URL to request.
        url: String,
        /// Expected status code.
        expect_status: u16,
    },
    /// An external system answers with a `Validation Reported` event.
    Hook {
        /// Hook name.
        name: String,
    },
}

impl Check {
    /// The check's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Check::Http { name, .. } | Check::Hook { name } => name,
        }
    }
}

/// Stage timeouts and polling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Start checks and task definition registration.
    pub provision: Duration,
    /// New colour steady and healthy.
    pub green: Duration,
    /// Validations.
    pub testing: Duration,
    /// Approval gate.
    pub approval: Duration,
    /// Untimed pause waiting for `promote`.
    pub promote: Duration,
    /// Poll interval while waiting (green health, unknown alarm state).
    pub poll: Duration,
    /// A tick this much past due is re-driven by the reconciler.
    pub reconcile_grace: Duration,
    /// How long a deployment goes on polling while its rollback alarms or production rule
    /// cannot be read, before [`UnreadablePolicy`] applies (a stage's own deadline ends
    /// the wait sooner).
    pub unreadable: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            provision: Duration::from_secs(5 * 60),
            green: Duration::from_secs(15 * 60),
            testing: Duration::from_secs(10 * 60),
            approval: Duration::from_secs(24 * 3600),
            promote: Duration::from_secs(24 * 3600),
            poll: Duration::from_secs(15),
            reconcile_grace: Duration::from_secs(60),
            unreadable: Duration::from_secs(10 * 60),
        }
    }
}

/// Rollback alarms that watch one colour each.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ColorAlarms {
    /// Alarms on the blue colour.
    #[serde(default)]
    pub blue: Vec<String>,
    /// Alarms on the green colour.
    #[serde(default)]
    pub green: Vec<String>,
}

impl ColorAlarms {
    /// The alarms of `color`.
    #[must_use]
    pub fn of(&self, color: Color) -> &[String] {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    /// The colour `alarm` watches, if it is one colour's.
    #[must_use]
    pub fn color_of(&self, alarm: &str) -> Option<Color> {
        [Color::Blue, Color::Green]
            .into_iter()
            .find(|c| self.of(*c).iter().any(|a| a == alarm))
    }
}

/// Everything the core needs to know about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSettings {
    /// Shifting strategy.
    pub strategy: Strategy,
    /// Bake at 100 %.
    pub bake: Duration,
    /// Old colour kept warm after success.
    pub termination_wait: Duration,
    /// Alarms whose ALARM state rolls back a deployment to either colour: they watch
    /// "the colour being deployed" (a service-level alarm, or one that follows the new
    /// colour).
    pub rollback_alarms: Vec<String>,
    /// Alarms that watch one colour: they gate and roll back only a deployment **to**
    /// that colour. The live colour's alarms never block a fix deployed to the other one.
    #[serde(default)]
    pub color_alarms: ColorAlarms,
    /// Whether an operator must approve before shifting.
    pub approval: bool,
    /// Whether a test listener (rule) is configured.
    pub has_test_listener: bool,
    /// Testing-stage checks.
    pub checks: Vec<Check>,
    /// Concurrency policy.
    pub concurrency: Concurrency,
    /// Stage timeouts and polling.
    pub timeouts: Timeouts,
    /// How many times rollback effects may fail before the deployment is `Failed`.
    pub rollback_attempts: u32,
    /// What to do about weight drift (and capacity drift of the live colour).
    pub drift: DriftPolicy,
    /// Fewest tasks the live colour may want: fewer is capacity drift, and a new colour
    /// starts with at least this many.
    pub min_tasks: u32,
    /// What to do when alarms or the production rule stay unreadable.
    pub on_unreadable: UnreadablePolicy,
    /// Whether a rollback alarm rolls back a deployment that succeeded while its old
    /// colour is still warm (the termination wait), like an alarm during the bake.
    pub rollback_while_warm: bool,
}

impl ServiceSettings {
    /// Settings with the given strategy and conservative defaults elsewhere.
    #[must_use]
    pub fn with_strategy(strategy: Strategy) -> ServiceSettings {
        ServiceSettings {
            strategy,
            bake: Duration::from_secs(5 * 60),
            termination_wait: Duration::from_secs(10 * 60),
            rollback_alarms: Vec::new(),
            color_alarms: ColorAlarms::default(),
            approval: false,
            has_test_listener: false,
            checks: Vec::new(),
            concurrency: Concurrency::Queue,
            timeouts: Timeouts::default(),
            rollback_attempts: 5,
            drift: DriftPolicy::Reassert,
            min_tasks: 1,
            on_unreadable: UnreadablePolicy::Rollback,
            rollback_while_warm: true,
        }
    }

    /// Whether `alarm` in ALARM gates and rolls back a deployment to `target`: a plain
    /// rollback alarm always, one colour's alarm only when that colour is the target.
    #[must_use]
    pub fn rolls_back(&self, alarm: &str, target: Color) -> bool {
        self.rollback_alarms.iter().any(|a| a == alarm)
            || self.color_alarms.of(target).iter().any(|a| a == alarm)
    }

    /// Every rollback alarm, plain and per colour, each once: what the worker reads and
    /// routes.
    #[must_use]
    pub fn all_rollback_alarms(&self) -> Vec<String> {
        let mut all = self.rollback_alarms.clone();
        for a in self
            .color_alarms
            .blue
            .iter()
            .chain(&self.color_alarms.green)
        {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// The plan a deployment started now would follow.
    #[must_use]
    pub fn plan(&self) -> Plan {
        Plan {
            steps: self.strategy.steps(),
            bake_ms: duration_ms(self.bake),
            termination_wait_ms: duration_ms(self.termination_wait),
            approval: self.approval,
            checks: self.checks.clone(),
        }
    }
}
