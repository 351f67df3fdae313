//! The data the decision core reasons about: colours, weights, time, images, the
//! per-service aggregate and the deployment inside it.
//!
//! Everything here is plain data with `serde` derives so the store adapters can persist
//! it verbatim. Durations are kept as milliseconds (`*_ms`) so the persisted shape is
//! stable and obvious.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::settings::Check;

/// One of the two ECS services / target groups of a blue-green pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The blue service and target group.
    Blue,
    /// The green service and target group.
    Green,
}

impl Color {
    /// The other colour of the pair.
    #[must_use]
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// Lower-case name, as used in events and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Forward weights of a listener rule over the service's two target groups.
///
/// The constructors are the only way to build one, and every constructor yields weights
/// that sum to exactly 100 (SPEC §4 invariant 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Weights {
    /// Percent of requests forwarded to the blue target group.
    pub blue: u8,
    /// Percent of requests forwarded to the green target group.
    pub green: u8,
}

impl Weights {
    /// All traffic to `color`.
    #[must_use]
    pub fn all(color: Color) -> Weights {
        Weights::split(color, 100)
    }

    /// `percent` (clamped to 100) to `color`, the rest to the other colour.
    #[must_use]
    pub fn split(color: Color, percent: u8) -> Weights {
        let percent = percent.min(100);
        match color {
            Color::Blue => Weights {
                blue: percent,
                green: 100 - percent,
            },
            Color::Green => Weights {
                blue: 100 - percent,
                green: percent,
            },
        }
    }

    /// The share of `color`.
    #[must_use]
    pub fn of(self, color: Color) -> u8 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    /// Whether the two shares sum to 100.
    #[must_use]
    pub fn is_valid(self) -> bool {
        u16::from(self.blue) + u16::from(self.green) == 100
    }

    /// The colour that carries all traffic, or `None` for a split.
    #[must_use]
    pub fn sole_color(self) -> Option<Color> {
        match (self.blue, self.green) {
            (100, 0) => Some(Color::Blue),
            (0, 100) => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blue {}% / green {}%", self.blue, self.green)
    }
}

/// A point in time, in milliseconds since the Unix epoch.
///
/// The core never reads a clock: the caller passes `now` in, which makes every decision
/// reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub fn millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    #[must_use]
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_ms(d)))
    }

    /// `self + ms`, saturating.
    #[must_use]
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 when `earlier` is later).
    #[must_use]
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The latest moment RFC 3339 can write: 9999-12-31T23:59:59.999Z.
    pub const MAX_RFC3339: Timestamp = Timestamp(253_402_300_799_999);

    /// RFC 3339 with millisecond precision, UTC (`2026-01-02T03:04:05.678Z`). A moment
    /// past the year 9999 (which RFC 3339 cannot write) is written as
    /// [`MAX_RFC3339`](Self::MAX_RFC3339): total, never a panic.
    #[must_use]
    pub fn rfc3339(self) -> String {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(self.0.min(Self::MAX_RFC3339.0));
        humantime::format_rfc3339_millis(t).to_string()
    }

    /// Parses an RFC 3339 timestamp such as EventBridge's `time` field.
    ///
    /// # Errors
    /// Returns the parser's message when `s` is not RFC 3339 in UTC.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
        let t = humantime::parse_rfc3339_weak(s).map_err(|e| e.to_string())?;
        let d = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| "timestamp before 1970".to_string())?;
        Ok(Timestamp(duration_ms(d)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
#[must_use]
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A container image, always deployed by digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    /// Repository URI without tag or digest, e.g.
    /// `123456789012.dkr.ecr.us-east-1.amazonaws.com/web`.
    pub repository: String,
    /// `sha256:…` digest; `None` only for a manual request by tag that the worker has not
    /// resolved yet (the core refuses to deploy such an image).
    pub digest: Option<String>,
    /// The tag that was pushed or requested, for humans only.
    pub tag: Option<String>,
}

impl ImageRef {
    /// Whether `digest` names an image exactly: `sha256:` and 64 lower-case hex digits.
    #[must_use]
    pub fn is_digest(digest: &str) -> bool {
        digest.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }

    /// `repository@digest`, or `repository:tag` when unresolved.
    #[must_use]
    pub fn pinned(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{}", self.repository, d),
            (None, Some(t)) => format!("{}:{}", self.repository, t),
            (None, None) => self.repository.clone(),
        }
    }
}

/// Phases of a deployment (SPEC §3). Terminal phases are `Succeeded`, `RolledBack` and
/// `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Accepted; waiting for the start checks (rollback alarms must not be in ALARM).
    Requested,
    /// Registering the new task definition revision.
    Provisioning,
    /// The idle colour is rolling out; waiting until it is steady and its targets healthy.
    WaitingForGreen,
    /// Test listener routed to the new colour; validations running.
    Testing,
    /// Waiting for an operator's `approve`.
    AwaitingApproval,
    /// Moving production traffic step by step.
    Shifting,
    /// 100 % on the new colour; the old colour is kept warm while alarms are watched.
    Baking,
    /// Making the new colour the live one.
    Finalizing,
    /// Done: the new colour is live. The old colour stays warm for the termination wait.
    Succeeded,
    /// Restoring 100 % to the known-good colour and scaling the failed colour down.
    RollingBack,
    /// Rollback complete; production is on the known-good colour.
    RolledBack,
    /// Even rollback could not complete; needs a human.
    Failed,
}

impl Phase {
    /// Every phase change the flow makes, `(from, to)`: the forward path with its skips
    /// (no test stage, no approval gate, no bake), a rollback from every phase that can
    /// still be undone (and from `Succeeded` while the old colour is warm), and the two
    /// ends of a rollback. A property test checks that no other change ever happens;
    /// `docs/architecture.md` draws this table.
    pub const TRANSITIONS: &'static [(Phase, Phase)] = &[
        (Phase::Requested, Phase::Provisioning),
        // An emergency switch registers nothing: it scales and awaits the target colour,
        // or (forced) moves at once.
        (Phase::Requested, Phase::WaitingForGreen),
        (Phase::Requested, Phase::Shifting),
        (Phase::Provisioning, Phase::WaitingForGreen),
        (Phase::WaitingForGreen, Phase::Testing),
        (Phase::WaitingForGreen, Phase::AwaitingApproval),
        (Phase::WaitingForGreen, Phase::Shifting),
        (Phase::Testing, Phase::AwaitingApproval),
        (Phase::Testing, Phase::Shifting),
        (Phase::AwaitingApproval, Phase::Shifting),
        (Phase::Shifting, Phase::Baking),
        (Phase::Shifting, Phase::Finalizing),
        (Phase::Baking, Phase::Finalizing),
        (Phase::Finalizing, Phase::Succeeded),
        (Phase::Requested, Phase::RollingBack),
        (Phase::Provisioning, Phase::RollingBack),
        (Phase::WaitingForGreen, Phase::RollingBack),
        (Phase::Testing, Phase::RollingBack),
        (Phase::AwaitingApproval, Phase::RollingBack),
        (Phase::Shifting, Phase::RollingBack),
        (Phase::Baking, Phase::RollingBack),
        (Phase::Finalizing, Phase::RollingBack),
        (Phase::Succeeded, Phase::RollingBack),
        (Phase::RollingBack, Phase::RolledBack),
        (Phase::RollingBack, Phase::Failed),
        (Phase::Requested, Phase::Failed),
    ];

    /// Whether nothing more happens to the deployment by itself.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Failed)
    }

    /// Name as used in events and state (`"WaitingForGreen"`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Requested => "Requested",
            Phase::Provisioning => "Provisioning",
            Phase::WaitingForGreen => "WaitingForGreen",
            Phase::Testing => "Testing",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Shifting => "Shifting",
            Phase::Baking => "Baking",
            Phase::Finalizing => "Finalizing",
            Phase::Succeeded => "Succeeded",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a shifting step holds before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "ms")]
pub enum Hold {
    /// Move on after this many milliseconds.
    Timed(u64),
    /// Wait for an operator's `promote`.
    UntilPromote,
}

/// One step of a traffic-shifting plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Percent of production traffic on the new colour during this step (1..=100).
    pub percent: u8,
    /// How long the step holds.
    pub hold: Hold,
}

/// The shifting schedule of one deployment, fixed when the deployment starts so that a
/// configuration change never alters a deployment in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Ordered steps; the last one is always 100 %.
    pub steps: Vec<Step>,
    /// Bake time at 100 % before finalizing, in milliseconds.
    pub bake_ms: u64,
    /// How long the old colour stays warm after success, in milliseconds.
    pub termination_wait_ms: u64,
    /// Whether an operator must approve before shifting.
    pub approval: bool,
    /// Testing-stage checks.
    pub checks: Vec<Check>,
}

/// A tick that the deployment is waiting for. Only a tick with exactly this cursor and
/// attempt advances the flow; any other is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTick {
    /// The deployment's cursor when the tick was scheduled.
    pub cursor: u32,
    /// Attempt number within that cursor (polls, retries, resumes).
    pub attempt: u32,
    /// When the tick is due.
    pub due: Timestamp,
}

/// Why and how a rollback is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// Human-readable cause.
    pub reason: String,
    /// The phase the deployment was in when the rollback started.
    pub from_phase: Phase,
    /// How many times the rollback effects have failed so far.
    pub failures: u32,
    /// Whether the rollback effects must be re-run at the next tick.
    pub rerun: bool,
    /// When the rollback began (absent in records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// Whether a rollback alarm began it (the alarm → weights restored latency).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_alarm: bool,
}

/// One deployment of one image to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// `<service>-<number>`, unique and deterministic.
    pub id: String,
    /// Service name from the configuration.
    pub service: String,
    /// The service's deployment counter value for this deployment.
    pub number: u64,
    /// Current phase.
    pub phase: Phase,
    /// Index into `plan.steps` while shifting (and the last step after).
    pub step: usize,
    /// The colour that was live when the deployment started: the known-good colour.
    pub stable: Color,
    /// The colour being deployed to.
    pub target: Color,
    /// Production weights as last written.
    pub weights: Weights,
    /// Image that was live when the deployment started, if known.
    pub from_image: Option<String>,
    /// Image being deployed.
    pub to_image: ImageRef,
    /// The schedule.
    pub plan: Plan,
    /// Skip the bake (set by `promote` with `skipBake`).
    pub skip_bake: bool,
    /// Registered task definition ARN, once known. Registration happens at most once.
    pub revision: Option<String>,
    /// Monotonic counter of outbound events of this deployment.
    pub sequence: u64,
    /// Monotonic counter of steps taken; ticks and effect results carry it.
    pub cursor: u32,
    /// The tick the deployment waits for, if any.
    pub next_tick: Option<PendingTick>,
    /// When the current stage times out, if it can.
    pub deadline: Option<Timestamp>,
    /// Set while paused: when the pause began.
    pub paused_at: Option<Timestamp>,
    /// Validation results of the testing stage, by check name.
    pub checks_passed: Vec<String>,
    /// Set while rolling back and after.
    pub rollback: Option<Rollback>,
    /// Who asked for the deployment.
    pub requested_by: String,
    /// Free text given with the request.
    pub reason: Option<String>,
    /// The deployment this one retries, if any.
    pub retry_of: Option<String>,
    /// When the deployment was created.
    pub started_at: Timestamp,
    /// When it reached a terminal phase.
    pub finished_at: Option<Timestamp>,
    /// After success: the old colour is warm (and rollback possible) until then.
    pub warm_until: Option<Timestamp>,
    /// When the weights of the current step (or of the bake) were confirmed by a read-back:
    /// the step's hold counts from then (SPEC §4 invariant 13). `None` until they are, and
    /// again after drift that the worker writes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_at: Option<Timestamp>,
    /// Since when the worker has been unable to read what the phase needs to go on (the
    /// rollback alarm states, the production rule); `None` while it can. The wait is
    /// bounded by `timeouts.unreadable` (SPEC §4 invariant 14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable_since: Option<Timestamp>,
    /// The dedup key of the input that asked for it (`event:<EventBridge id>` for an
    /// operator's `deploy` or `retry`, `push:<image>` for a push): what `deploy --wait`
    /// follows, so it never follows another pipeline's deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Set when this is an operator's emergency switch rather than a new image: the
    /// target colour keeps what it runs, is scaled to the live count and awaited healthy,
    /// then takes every production rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchOrder>,
}

/// How an emergency switch was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchOrder {
    /// Move without waiting for the target colour's healthy targets.
    pub force: bool,
}

impl Deployment {
    /// Whether this is an emergency switch.
    #[must_use]
    pub fn is_switch(&self) -> bool {
        self.switch.is_some()
    }

    /// Whether a pause is in effect.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// The identity of the tick the deployment waits for, if any.
    #[must_use]
    pub fn pending_key(&self) -> Option<super::input::TickKey> {
        self.next_tick.map(|t| super::input::TickKey {
            deployment_id: self.id.clone(),
            cursor: t.cursor,
            attempt: t.attempt,
        })
    }

    /// The current step, if shifting has begun.
    #[must_use]
    pub fn current_step(&self) -> Option<&Step> {
        self.plan.steps.get(self.step)
    }
}

/// An image waiting for the service's active deployment to end (`queue` and `supersede`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedImage {
    /// The image.
    pub image: ImageRef,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    pub reason: Option<String>,
    /// The dedup key of the input that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// An input the core refused, kept so that the command that sent it can say why instead
/// of waiting for a deployment that never starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedInput {
    /// The input's dedup key (`event:<EventBridge id>`, `push:<image>`).
    pub key: String,
    /// The image a refused deployment would have deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The reject code (`already-deployed`, `phase-forbids`, …).
    pub code: String,
    /// The core's reason.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

/// How many refused inputs a service remembers.
pub const RECENT_REJECTIONS: usize = 16;

/// Per-service aggregate: the unit of consistency the store compare-and-swaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Service name from the configuration.
    pub service: String,
    /// The colour production traffic belongs to when no deployment is shifting.
    pub live: Color,
    /// Whether `live` was read from the production rule (SPEC §4 invariant 9). Until
    /// then it is only a default, and the first deployment adopts what the rule serves.
    #[serde(default)]
    pub live_observed: bool,
    /// The production weights last written and read back, or read from the rule: what
    /// production is known to serve. Weight drift is judged against it.
    #[serde(default)]
    pub confirmed: Option<Weights>,
    /// The image running on the live colour, when known.
    pub live_image: Option<String>,
    /// The task definition the live colour should run: the one a deployment put there,
    /// or, when the worker never changed that colour, the one first read there.
    /// Capacity drift is judged against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_revision: Option<LiveRevision>,
    /// Capacity drift last reported (what differs on the live colour), so one incident
    /// is announced once; empty once the colour runs as it should again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacity_drift: Vec<String>,
    /// Deployments created so far (drives deployment ids).
    pub deployments_started: u64,
    /// The deployment in progress, if any.
    pub active: Option<Deployment>,
    /// The most recently finished deployment (rollback after success, retry).
    pub last: Option<Deployment>,
    /// The image to deploy when the active deployment ends.
    pub queued: Option<QueuedImage>,
    /// Dedup keys of recently applied inputs, oldest first.
    pub recent_keys: VecDeque<String>,
    /// Recently refused operator requests and pushes, oldest first (at most
    /// [`RECENT_REJECTIONS`]).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub rejected: VecDeque<RejectedInput>,
}

/// The task definition a colour should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveRevision {
    /// The colour.
    pub color: Color,
    /// Task definition ARN.
    pub task_definition: String,
    /// Tasks it wanted at the last look that found nothing wrong (0 until then): what
    /// capacity drift is put back to, at least `min_tasks`.
    #[serde(default)]
    pub desired: u32,
}

/// How many dedup keys a service remembers. Older duplicates are caught by the store's
/// dedup table and, for ticks, by the cursor check.
pub const RECENT_KEYS: usize = 64;

impl ServiceState {
    /// A service that has never been deployed by bluegreen, live on `live`.
    #[must_use]
    pub fn new(service: impl Into<String>, live: Color) -> ServiceState {
        ServiceState {
            service: service.into(),
            live,
            live_observed: false,
            confirmed: None,
            live_image: None,
            live_revision: None,
            capacity_drift: Vec::new(),
            deployments_started: 0,
            active: None,
            last: None,
            queued: None,
            recent_keys: VecDeque::new(),
            rejected: VecDeque::new(),
        }
    }

    /// Production weights right now as far as the core knows.
    #[must_use]
    pub fn production_weights(&self) -> Weights {
        match &self.active {
            Some(d) => d.weights,
            None => Weights::all(self.live),
        }
    }

    /// What production serves as far as the worker has seen: the confirmed weights,
    /// else the intended ones. Outbound events carry these.
    #[must_use]
    pub fn serving(&self) -> Weights {
        self.confirmed.unwrap_or_else(|| self.production_weights())
    }

    /// The deployment with this id, if it is the active or the last one.
    #[must_use]
    pub fn deployment(&self, id: &str) -> Option<&Deployment> {
        self.active
            .iter()
            .chain(self.last.iter())
            .find(|d| d.id == id)
    }
}
