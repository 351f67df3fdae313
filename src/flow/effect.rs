//! What a decision asks the world to do: effects (run by the worker after the decision is
//! committed) and outbound events (the outbox, published after commit).
//!
//! Effects are idempotent by construction: weights are absolute, task definitions are
//! named by ARN, registration is keyed by deployment id. Effects run in order; the first
//! failure stops the rest and comes back as an [`InputKind::EffectFailed`](super::InputKind)
//! input. `ScheduleTick` effects always come last, so a tick is only sent once the
//! effects before it succeeded.

use serde::{Deserialize, Serialize};

use super::input::TickKey;
use super::model::{Color, Phase, Timestamp, Weights};
use super::settings::{Check, DriftPolicy};

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "kebab-case")]
pub enum Effect {
    /// Register the new task definition: the live colour's, with only `container`'s image
    /// replaced by `image` (pinned by digest). At most once per deployment; the adapter
    /// finds an earlier registration of the same deployment instead of registering twice.
    RegisterRevision {
        /// Deployment the revision is for (idempotency key).
        deployment_id: String,
        /// Colour whose current task definition is the template.
        template: Color,
        /// `repository@sha256:…`.
        image: String,
    },
    /// Point `color`'s ECS service at `task_definition` with the desired count of
    /// `match_count_of`'s service.
    UpdateService {
        /// Deployment asking (lease check).
        deployment_id: String,
        /// Service to update.
        color: Color,
        /// Task definition ARN.
        task_definition: String,
        /// Colour whose desired count to copy.
        match_count_of: Color,
    },
    /// Scale `color`'s ECS service up to `match_count_of`'s desired count (at least one
    /// task), keeping the task definition it runs; never scales down (an emergency switch).
    ScaleUp {
        /// Deployment asking (lease check).
        deployment_id: String,
        /// Service to scale.
        color: Color,
        /// Colour whose desired count to reach.
        match_count_of: Color,
    },
    /// Scale `color`'s ECS service to zero tasks.
    ScaleToZero {
        /// Deployment asking (lease check).
        deployment_id: String,
        /// Service to scale down.
        color: Color,
    },
    /// Put the live colour's service back on `task_definition` with `desired` tasks
    /// (capacity drift under the reassert policy).
    RestoreCapacity {
        /// Deployment that made the colour live (lease check).
        deployment_id: String,
        /// The live colour.
        color: Color,
        /// Task definition ARN it should run.
        task_definition: String,
        /// Tasks it should want.
        desired: u32,
    },
    /// Write production listener rule weights, then read them back; a mismatch is a
    /// failure of this effect. The worker re-checks the deployment's lease right before,
    /// and reports the read-back as a `TrafficConfirmed` input.
    SetProductionWeights {
        /// Deployment asking (lease check).
        deployment_id: String,
        /// Absolute weights.
        weights: Weights,
    },
    /// Write the test listener rule weights (only for services with a test listener).
    SetTestWeights {
        /// Deployment asking (lease check).
        deployment_id: String,
        /// Absolute weights.
        weights: Weights,
    },
    /// Run the HTTP checks against the test listener and report back with
    /// `ValidationsCompleted` for `cursor`.
    RunValidations {
        /// Deployment validated.
        deployment_id: String,
        /// Cursor to report against.
        cursor: u32,
        /// Checks to run.
        checks: Vec<Check>,
    },
    /// Send a tick to the worker's own queue, due at `due` (chained past 15 minutes).
    ScheduleTick {
        /// Which tick.
        tick: TickKey,
        /// When it is due.
        due: Timestamp,
    },
}

impl Effect {
    /// Short stable name used in logs and `EffectFailed` inputs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Effect::RegisterRevision { .. } => "register-revision",
            Effect::UpdateService { .. } => "update-service",
            Effect::ScaleToZero { .. } => "scale-to-zero",
            Effect::ScaleUp { .. } => "scale-up",
            Effect::RestoreCapacity { .. } => "restore-capacity",
            Effect::SetProductionWeights { .. } => "set-production-weights",
            Effect::SetTestWeights { .. } => "set-test-weights",
            Effect::RunValidations { .. } => "run-validations",
            Effect::ScheduleTick { .. } => "schedule-tick",
        }
    }

    /// The deployment the effect acts for.
    #[must_use]
    pub fn deployment_id(&self) -> &str {
        match self {
            Effect::RegisterRevision { deployment_id, .. }
            | Effect::UpdateService { deployment_id, .. }
            | Effect::ScaleToZero { deployment_id, .. }
            | Effect::ScaleUp { deployment_id, .. }
            | Effect::RestoreCapacity { deployment_id, .. }
            | Effect::SetProductionWeights { deployment_id, .. }
            | Effect::SetTestWeights { deployment_id, .. }
            | Effect::RunValidations { deployment_id, .. } => deployment_id,
            Effect::ScheduleTick { tick, .. } => &tick.deployment_id,
        }
    }
}

/// Outbound event kinds, one EventBridge `detail-type` each (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A deployment was created.
    #[serde(rename = "Deployment Started")]
    Started,
    /// A phase change without a more specific kind, and pause / resume.
    #[serde(rename = "Deployment Phase Changed")]
    PhaseChanged,
    /// Production serves new weights: written and read back (rollback restores too).
    #[serde(rename = "Traffic Shifted")]
    TrafficShifted,
    /// The approval gate was reached.
    #[serde(rename = "Deployment Awaiting Approval")]
    AwaitingApproval,
    /// The deployment succeeded.
    #[serde(rename = "Deployment Succeeded")]
    Succeeded,
    /// A rollback started.
    #[serde(rename = "Deployment Rolling Back")]
    RollingBack,
    /// A rollback finished.
    #[serde(rename = "Deployment Rolled Back")]
    RolledBack,
    /// Even rollback failed.
    #[serde(rename = "Deployment Failed")]
    Failed,
    /// An image was queued behind the active deployment.
    #[serde(rename = "Deployment Queued")]
    Queued,
    /// The old colour was scaled to zero after the termination wait.
    #[serde(rename = "Old Color Released")]
    OldColorReleased,
    /// The production rule's weights differ from the ones the worker wrote.
    #[serde(rename = "Weight Drift Detected")]
    WeightDriftDetected,
    /// The live colour runs another task definition, wants fewer tasks than it should,
    /// or has no healthy target.
    #[serde(rename = "Capacity Drift Detected")]
    CapacityDriftDetected,
    /// An input was refused.
    #[serde(rename = "Event Rejected")]
    Rejected,
}

impl EventKind {
    /// Every kind, for schema coverage tests.
    pub const ALL: [EventKind; 13] = [
        EventKind::Started,
        EventKind::PhaseChanged,
        EventKind::TrafficShifted,
        EventKind::AwaitingApproval,
        EventKind::Succeeded,
        EventKind::RollingBack,
        EventKind::RolledBack,
        EventKind::Failed,
        EventKind::Queued,
        EventKind::OldColorReleased,
        EventKind::WeightDriftDetected,
        EventKind::CapacityDriftDetected,
        EventKind::Rejected,
    ];

    /// The EventBridge `detail-type`.
    #[must_use]
    pub fn detail_type(self) -> &'static str {
        match self {
            EventKind::Started => "Deployment Started",
            EventKind::PhaseChanged => "Deployment Phase Changed",
            EventKind::TrafficShifted => "Traffic Shifted",
            EventKind::AwaitingApproval => "Deployment Awaiting Approval",
            EventKind::Succeeded => "Deployment Succeeded",
            EventKind::RollingBack => "Deployment Rolling Back",
            EventKind::RolledBack => "Deployment Rolled Back",
            EventKind::Failed => "Deployment Failed",
            EventKind::Queued => "Deployment Queued",
            EventKind::OldColorReleased => "Old Color Released",
            EventKind::WeightDriftDetected => "Weight Drift Detected",
            EventKind::CapacityDriftDetected => "Capacity Drift Detected",
            EventKind::Rejected => "Event Rejected",
        }
    }
}

/// Position in the shifting plan, for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPosition {
    /// 1-based step number.
    pub index: usize,
    /// Number of steps.
    pub of: usize,
}

/// What `Weight Drift Detected` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The weights the worker wrote last (or, when idle, 100 % on the live colour).
    pub expected: Weights,
    /// The weights read from the rule.
    pub found: Weights,
    /// The production listener rule (or listener).
    pub rule: String,
    /// What the worker does about it.
    pub policy: DriftPolicy,
}

/// What `Capacity Drift Detected` found on the live colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityDrift {
    /// The live colour.
    pub color: Color,
    /// The task definition it should run.
    pub expected_task_definition: String,
    /// The tasks it should want: the count of the last look that found nothing wrong,
    /// at least `min_tasks` (what reassert writes back).
    pub expected_desired: u32,
    /// The fewest tasks it may want (`min_tasks`).
    pub min_tasks: u32,
    /// What it runs.
    pub found: CapacityFound,
    /// Each difference, in words.
    pub findings: Vec<String>,
    /// What the worker does about it.
    pub policy: DriftPolicy,
}

/// The live colour's service and target group as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityFound {
    /// Task definition of its primary ECS deployment.
    pub task_definition: Option<String>,
    /// Tasks desired.
    pub desired: u32,
    /// Tasks running.
    pub running: u32,
    /// Healthy registered targets.
    pub healthy_targets: u32,
}

/// The `detail` of an outbound event (SPEC §5). Field names are the wire names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    /// Stable id for consumers to dedupe on: `<deploymentId>:<sequence>` for
    /// transitions, `rejected:<input key>` for rejections.
    pub event_id: String,
    /// Deployment concerned (`None` for a rejection that concerns none).
    pub deployment_id: Option<String>,
    /// Service name.
    pub service: String,
    /// Phase after the transition.
    pub phase: Option<Phase>,
    /// Phase before the transition.
    pub previous_phase: Option<Phase>,
    /// Live colour after the transition.
    pub live_color: Color,
    /// What production serves after the transition: the weights last read back from the
    /// rule (the intended ones until a first read-back).
    pub weights: Weights,
    /// Image live when the deployment started.
    pub from_image: Option<String>,
    /// Image being deployed.
    pub to_image: Option<String>,
    /// Monotonic per deployment.
    pub sequence: u64,
    /// Why.
    pub reason: Option<String>,
    /// When (RFC 3339, the decision's `now`).
    pub at: String,
    /// Shifting position, while shifting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepPosition>,
    /// Whether the deployment is paused.
    pub paused: bool,
    /// Who asked, for operator-driven transitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Operator action concerned, for operator-driven transitions and rejections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Machine-readable rejection code (only on `Event Rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Dedup key of the input that was rejected (only on `Event Rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The tag the image was requested or pushed by, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_tag: Option<String>,
    /// Expected and found weights (only on `Weight Drift Detected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// What differs on the live colour (only on `Capacity Drift Detected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityDrift>,
}

/// One outbound event of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundEvent {
    /// The kind (`detail-type`).
    pub kind: EventKind,
    /// The detail.
    pub detail: EventDetail,
}

/// What happened to an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The input changed the state.
    Applied,
    /// The input was refused; an `Event Rejected` is in the outbox and its key recorded.
    Rejected {
        /// Stable machine-readable code.
        code: RejectCode,
        /// One sentence for humans.
        reason: String,
    },
    /// Nothing to do (duplicate, stale tick, informational alarm…); the state is
    /// unchanged and nothing is published.
    Ignored {
        /// Stable machine-readable code.
        code: IgnoreCode,
        /// One sentence for humans.
        reason: String,
    },
}

/// Why an input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectCode {
    /// The image is not pinned by digest.
    UnpinnedImage,
    /// The image is already live or already being deployed.
    AlreadyDeployed,
    /// The service's concurrency policy is `reject` and a deployment is active.
    DeploymentInProgress,
    /// The action does not apply in the deployment's phase.
    InvalidTransition,
    /// The named deployment is unknown or finished.
    UnknownDeployment,
    /// The image's tag does not resolve to a digest in its registry.
    ImageNotFound,
}

impl RejectCode {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnpinnedImage => "unpinned-image",
            RejectCode::AlreadyDeployed => "already-deployed",
            RejectCode::DeploymentInProgress => "deployment-in-progress",
            RejectCode::InvalidTransition => "invalid-transition",
            RejectCode::UnknownDeployment => "unknown-deployment",
            RejectCode::ImageNotFound => "image-not-found",
        }
    }
}

/// Why an input was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IgnoreCode {
    /// Its dedup key was applied before.
    Duplicate,
    /// A tick or effect result for a step the deployment has left.
    Stale,
    /// The deployment it names has finished.
    Finished,
    /// The deployment is paused; the tick is re-sent on resume.
    Paused,
    /// The tick arrived before it was due; the worker delays it again.
    Early,
    /// An alarm state or alarm that does not trigger a rollback here.
    NotApplicable,
    /// The reconciler found nothing overdue.
    NothingOverdue,
}

/// The result of [`decide`](super::decide()): the next state, effects to run after commit,
/// and the outbox to publish after commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Next state (unchanged when ignored).
    pub state: super::model::ServiceState,
    /// Effects, in order.
    pub effects: Vec<Effect>,
    /// Outbound events, in order.
    pub events: Vec<OutboundEvent>,
    /// What happened to the input.
    pub outcome: Outcome,
}

impl Decision {
    /// Whether the state must be committed (applied or rejected).
    #[must_use]
    pub fn changed(&self) -> bool {
        !matches!(self.outcome, Outcome::Ignored { .. })
    }
}

/// One decision as the worker's runner made it: what listeners (metrics, tests) are told
/// of every decision that was committed or left the state unchanged.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// The service.
    pub service: &'a str,
    /// The state the decision was made on.
    pub before: &'a super::ServiceState,
    /// The input, with what was observed for it.
    pub input: &'a super::Input,
    /// The decision's `now`.
    pub now: super::Timestamp,
    /// The decision; committed unless its outcome is `Ignored`.
    pub decision: &'a Decision,
}
