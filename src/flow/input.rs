//! What can happen to a service: the inputs of [`decide`](super::decide()).
//!
//! Every input carries a dedup key (SPEC §4 invariant 4): the EventBridge `id` for
//! operator events, `repository@digest` for pushes, alarm name + state timestamp for
//! alarms, deployment + cursor + attempt for ticks. The worker builds inputs from
//! envelopes (see [`crate::contract`]) and from the results of effects it ran.

use serde::{Deserialize, Serialize};

use super::model::{Color, ImageRef, Timestamp, Weights};

/// One input with its dedup key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// Stable identity of the input; applying the same key twice is a no-op.
    pub key: String,
    /// What happened.
    pub kind: InputKind,
}

impl Input {
    /// An input with the given key.
    pub fn new(key: impl Into<String>, kind: InputKind) -> Input {
        Input {
            key: key.into(),
            kind,
        }
    }

    /// The result of a `RegisterRevision` effect, keyed by deployment: a deployment has
    /// one revision.
    #[must_use]
    pub fn revision_registered(deployment_id: &str, task_definition_arn: String) -> Input {
        Input {
            key: format!("registered:{deployment_id}"),
            kind: InputKind::RevisionRegistered {
                deployment_id: deployment_id.to_string(),
                task_definition_arn,
            },
        }
    }

    /// The results of a `RunValidations` effect, keyed by deployment and cursor.
    #[must_use]
    pub fn validations_completed(
        deployment_id: &str,
        cursor: u32,
        outcomes: Vec<CheckOutcome>,
    ) -> Input {
        Input {
            key: format!("validated:{deployment_id}:{cursor}"),
            kind: InputKind::ValidationsCompleted {
                deployment_id: deployment_id.to_string(),
                cursor,
                outcomes,
            },
        }
    }

    /// A failed effect; `attempt` tells repeated failures of the same effect apart.
    #[must_use]
    pub fn effect_failed(
        deployment_id: &str,
        cursor: u32,
        effect: &str,
        reason: String,
        attempt: u64,
    ) -> Input {
        Input {
            key: format!("failed:{deployment_id}:{cursor}:{effect}:{attempt}"),
            kind: InputKind::EffectFailed {
                deployment_id: deployment_id.to_string(),
                cursor,
                effect: effect.to_string(),
                reason,
            },
        }
    }

    /// The result of a `SetProductionWeights` effect: the weights read back from the rule
    /// after the write. Not deduplicated by key: applying it twice changes nothing.
    #[must_use]
    pub fn traffic_confirmed(deployment_id: &str, cursor: u32, weights: Weights) -> Input {
        Input {
            key: format!(
                "confirmed:{deployment_id}:{cursor}:{}-{}",
                weights.blue, weights.green
            ),
            kind: InputKind::TrafficConfirmed {
                deployment_id: deployment_id.to_string(),
                cursor,
                weights,
            },
        }
    }

    /// Whether the input may roll a deployment back (an alarm entering ALARM, an operator's
    /// abort, rollback or switch): such an input preempts a lease holder's forward effects
    /// and waits for the lease instead of giving up (SPEC §4 invariant 5).
    #[must_use]
    pub fn is_rollback_class(&self) -> bool {
        match &self.kind {
            InputKind::Alarm { state, .. } => *state == AlarmState::Alarm,
            InputKind::Operator { action, .. } => {
                matches!(
                    action,
                    Action::Abort | Action::Rollback | Action::Switch { .. }
                )
            }
            _ => false,
        }
    }

    /// Whether the input's key is remembered so that a replay is ignored. Ticks are
    /// judged by their cursor instead, and the reconciler and traffic confirmations are
    /// idempotent by nature.
    #[must_use]
    pub fn is_keyed(&self) -> bool {
        !matches!(
            self.kind,
            InputKind::Tick { .. }
                | InputKind::Reconcile { .. }
                | InputKind::TrafficConfirmed { .. }
        )
    }

    /// A reconciler run named `key`, with nothing observed yet.
    #[must_use]
    pub fn reconcile(key: impl Into<String>) -> Input {
        Input {
            key: key.into(),
            kind: InputKind::Reconcile {
                observed: Observations::default(),
            },
        }
    }

    /// A tick for `tick`, keyed by deployment, cursor and attempt.
    #[must_use]
    pub fn tick(tick: TickKey, observed: Observations) -> Input {
        Input {
            key: tick.key(),
            kind: InputKind::Tick { tick, observed },
        }
    }
}

/// The kinds of input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum InputKind {
    /// Deploy an image (ECR push or manual `Deploy Requested`).
    Deploy {
        /// The image; the worker resolves a tag to its digest before deciding.
        image: ImageRef,
        /// Who asked (`ecr-push` for pushes).
        requested_by: String,
        /// Free text.
        reason: Option<String>,
        /// Why the worker could not resolve the image's tag, when it could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unresolved: Option<String>,
    },
    /// An operator action.
    Operator {
        /// The action.
        action: Action,
        /// Which deployment; default: the active one, else the last one.
        deployment_id: Option<String>,
        /// Who asked.
        requested_by: String,
        /// Free text.
        reason: Option<String>,
    },
    /// A CloudWatch alarm changed state.
    Alarm {
        /// Alarm name.
        alarm: String,
        /// The new state.
        state: AlarmState,
        /// Why, as CloudWatch put it.
        reason: Option<String>,
        /// When the alarm entered the state (the event's `state.timestamp`), when readable:
        /// an alarm that entered ALARM before a deployment started is judged against what
        /// it reads now (see [`needs`](super::needs)).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        changed_at: Option<Timestamp>,
        /// The rollback alarms as read just before deciding, when the transition is older
        /// than the deployment it would roll back.
        #[serde(default)]
        observed: Observations,
    },
    /// A scheduled "next step" tick, with what the worker observed just before deciding
    /// (see [`needs`](super::needs)).
    Tick {
        /// Which tick.
        tick: TickKey,
        /// Observations the tick is decided on.
        observed: Observations,
    },
    /// Result of a `RegisterRevision` effect.
    RevisionRegistered {
        /// Deployment the revision belongs to.
        deployment_id: String,
        /// The task definition ARN registered (or found already registered).
        task_definition_arn: String,
    },
    /// Results of a `RunValidations` effect.
    ValidationsCompleted {
        /// Deployment validated.
        deployment_id: String,
        /// Cursor of the testing stage that asked.
        cursor: u32,
        /// One outcome per check.
        outcomes: Vec<CheckOutcome>,
    },
    /// An external hook's answer for a `hook` validation.
    HookReported {
        /// Deployment validated.
        deployment_id: String,
        /// Hook name from the configuration.
        hook: String,
        /// Whether it passed.
        passed: bool,
        /// Why, in the hook's words.
        detail: Option<String>,
    },
    /// A production weight write succeeded and was read back.
    TrafficConfirmed {
        /// Deployment that asked for the write.
        deployment_id: String,
        /// Its cursor when the write was decided.
        cursor: u32,
        /// The weights read back from the rule.
        weights: Weights,
    },
    /// An effect of the decision at `cursor` failed after the worker's own retries.
    EffectFailed {
        /// Deployment concerned.
        deployment_id: String,
        /// The deployment's cursor when the failing effect was decided.
        cursor: u32,
        /// Which effect (its [`Effect::name`](super::Effect::name)).
        effect: String,
        /// What went wrong.
        reason: String,
    },
    /// The reconciler's periodic check: re-drive a deployment whose tick is overdue, and
    /// compare an idle service's production rule with its live colour.
    Reconcile {
        /// The production rule as read just before deciding.
        observed: Observations,
    },
}

/// Operator actions (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// In an untimed pause: continue to the next step; otherwise jump to 100 %.
    Promote {
        /// Also skip the bake.
        skip_bake: bool,
    },
    /// Pass the approval gate.
    Approve,
    /// Stop the clock; alarms still roll back.
    Pause,
    /// Start the clock again.
    Resume,
    /// Roll the active deployment back.
    Abort,
    /// Roll back the active deployment, or the last one while its old colour is warm.
    Rollback,
    /// Deploy the image of a rolled-back or failed deployment again.
    Retry,
    /// The emergency switch: make `to` the live colour. An active deployment whose
    /// known-good colour is `to` is rolled back; otherwise `to` is scaled to the live
    /// count, awaited healthy (unless `force`) and given every production rule.
    Switch {
        /// The colour to make live.
        to: Color,
        /// Move without waiting for healthy targets.
        force: bool,
    },
}

impl Action {
    /// The action's name as operators type it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote { .. } => "promote",
            Action::Approve => "approve",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
            Action::Retry => "retry",
            Action::Switch { .. } => "switch",
        }
    }
}

/// CloudWatch alarm states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    /// Healthy.
    Ok,
    /// Firing.
    Alarm,
    /// Not enough data.
    InsufficientData,
}

/// Identity of a tick: deployment, cursor and attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TickKey {
    /// Deployment the tick belongs to.
    pub deployment_id: String,
    /// The deployment's cursor when the tick was scheduled.
    pub cursor: u32,
    /// Attempt within the cursor.
    pub attempt: u32,
}

impl TickKey {
    /// The dedup key: `tick:<deployment>:<cursor>:<attempt>`.
    #[must_use]
    pub fn key(&self) -> String {
        format!(
            "tick:{}:{}:{}",
            self.deployment_id, self.cursor, self.attempt
        )
    }
}

/// What the worker read just before deciding a tick. `None` means "not read" (or the
/// read failed), which the core treats as unknown and never as healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// Names of the service's rollback alarms that are in ALARM.
    pub alarms_firing: Option<Vec<String>>,
    /// Rollout and target health of the new colour.
    pub target_health: Option<TargetHealth>,
    /// The production rules' weights, or why a rule cannot be read as the service's
    /// blue/green pair (another target group on it, no forward action).
    pub production: Option<Result<ProductionRules, String>>,
    /// Why a read came back empty-handed (`alarms_firing` or `production` is `None`): the
    /// error, naming the alarm or the rule, for the event that ends a wait on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_errors: Vec<String>,
}

/// One production rule as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleWeights {
    /// The rule (an ALB listener rule or listener ARN, or the embedded router's name).
    pub rule: String,
    /// Its weights.
    pub weights: Weights,
}

/// Every production rule of a service as read, in the configured order; never empty.
///
/// A service may route several rules (two listeners, a host and a path rule) to its two
/// target groups; the worker moves them together. When they disagree, what production
/// "serves" depends on what is being judged, and a disagreement must never hide drift on
/// one rule: see [`ProductionRules::judge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<RuleWeights>", into = "Vec<RuleWeights>")]
pub struct ProductionRules(Vec<RuleWeights>);

impl ProductionRules {
    /// The rules as read; `None` for an empty list.
    #[must_use]
    pub fn new(rules: Vec<RuleWeights>) -> Option<ProductionRules> {
        (!rules.is_empty()).then_some(ProductionRules(rules))
    }

    /// A single rule.
    #[must_use]
    pub fn one(rule: impl Into<String>, weights: Weights) -> ProductionRules {
        ProductionRules(vec![RuleWeights {
            rule: rule.into(),
            weights,
        }])
    }

    /// The rules, in the configured order.
    #[must_use]
    pub fn rules(&self) -> &[RuleWeights] {
        &self.0
    }

    /// The weights every rule holds, or `None` when they disagree.
    #[must_use]
    pub fn agreed(&self) -> Option<Weights> {
        let first = self.0[0].weights;
        self.0.iter().all(|r| r.weights == first).then_some(first)
    }

    /// The rule that tells most about production, judged against the weights the worker
    /// intends (`expected`) and those it last confirmed:
    ///
    /// * the first rule holding neither — drift someone else made, on that rule;
    /// * else the first not holding `expected` — a write that has not landed on every
    ///   rule yet (a crash between two rules' writes), which the next write finishes;
    /// * else the first rule: they all hold `expected`.
    #[must_use]
    pub fn judge(&self, expected: Weights, confirmed: Option<Weights>) -> &RuleWeights {
        let known = |w: Weights| w == expected || Some(w) == confirmed;
        self.0
            .iter()
            .find(|r| !known(r.weights))
            .or_else(|| self.0.iter().find(|r| r.weights != expected))
            .unwrap_or(&self.0[0])
    }

    /// The rules and what each serves, for messages: `rule-a (blue 100% / green 0%)`, or
    /// several joined by `; `.
    #[must_use]
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("{} ({})", r.rule, r.weights))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl TryFrom<Vec<RuleWeights>> for ProductionRules {
    type Error = &'static str;

    fn try_from(rules: Vec<RuleWeights>) -> Result<Self, Self::Error> {
        ProductionRules::new(rules).ok_or("at least one production rule")
    }
}

impl From<ProductionRules> for Vec<RuleWeights> {
    fn from(rules: ProductionRules) -> Self {
        rules.0
    }
}

impl Observations {
    /// Observations saying every rollback alarm is OK and nothing else.
    #[must_use]
    pub fn alarms_ok() -> Observations {
        Observations {
            alarms_firing: Some(Vec::new()),
            ..Observations::default()
        }
    }
}

/// Rollout state of the colour being deployed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHealth {
    /// Task definition of the service's primary ECS deployment: healthy tasks of another
    /// revision (say, the previous version still warm on that colour) do not count.
    pub task_definition: Option<String>,
    /// The ECS deployment finished rolling out.
    pub rollout_completed: bool,
    /// Tasks running.
    pub running: u32,
    /// Tasks desired.
    pub desired: u32,
    /// Registered targets in the colour's target group that are healthy.
    pub healthy_targets: u32,
    /// Registered targets in the colour's target group.
    pub registered_targets: u32,
}

impl TargetHealth {
    /// Running `revision`, steady, and every registered target healthy (and there is at
    /// least one).
    #[must_use]
    pub fn is_ready(&self, revision: Option<&str>) -> bool {
        revision.is_some() && self.task_definition.as_deref() == revision && self.is_steady()
    }

    /// Whether the colour's rollout is complete and every registered target healthy,
    /// whatever revision it runs.
    #[must_use]
    pub fn is_steady(&self) -> bool {
        self.rollout_completed
            && self.desired > 0
            && self.running == self.desired
            && self.registered_targets > 0
            && self.healthy_targets == self.registered_targets
    }
}

/// Result of one validation check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Check name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}
