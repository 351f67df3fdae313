//! What `status` and `history` show: the stored state and what was read now, as data
//! (schemas/cli/) and as text.

use serde::Serialize;

use crate::flow::{
    Color, Deployment, Phase, ProductionRules, RuleWeights, ServiceState, Timestamp, Weights,
};

/// An alarm and whether it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmStatus {
    /// The alarm's name.
    pub name: String,
    /// The colour it watches, when it is one colour's alarm (`rollback_alarms = { blue,
    /// green }`); `None` for an alarm on whichever colour is deployed.
    pub color: Option<Color>,
    /// Whether it gates and rolls back the deployment in progress (or the next one): the
    /// live colour's own alarms never do.
    pub gates: bool,
    /// `ALARM`, `OK` (not in alarm), `INSUFFICIENT_DATA` (the embedded mode: too few
    /// requests to judge), or `UNKNOWN` (not read, or not judged yet).
    pub state: &'static str,
}

impl AlarmStatus {
    /// An alarm in `state`, of either colour, gating until told otherwise.
    #[must_use]
    pub fn new(name: &str, state: &'static str) -> AlarmStatus {
        AlarmStatus {
            name: name.to_string(),
            color: None,
            gates: true,
            state,
        }
    }
}

/// A step position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepAt {
    /// 1-based step number (0 before the first shift).
    pub index: usize,
    /// Steps in the plan.
    pub count: usize,
}

/// How late a due step may be before `status` calls it overdue: a tick is due when its
/// delay ends and the worker takes it within seconds; a minute past that, something is
/// wrong (the worker down or stuck, its queue unreachable).
pub const OVERDUE_AFTER_SECONDS: u64 = 60;

/// A request the worker refused, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedView {
    /// When.
    pub at: String,
    /// The request (`event:<EventBridge id>`, `push:<image>`).
    pub request: String,
    /// The reject code.
    pub code: String,
    /// Why.
    pub reason: String,
}

/// A deployment as `status` and `history` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// `<service>-<number>`.
    pub id: String,
    /// Phase.
    pub phase: Phase,
    /// Whether the clock is stopped.
    pub paused: bool,
    /// The colour being deployed to.
    pub target: Color,
    /// Weights it last wrote.
    pub weights: Weights,
    /// Step position.
    pub step: StepAt,
    /// Image before.
    pub from_image: Option<String>,
    /// Image deployed.
    pub to_image: String,
    /// The tag it was pushed or asked for as, when known.
    pub to_tag: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// Why it rolled back or failed, or the operator's reason.
    pub reason: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Seconds from start to end (or to now).
    pub duration_seconds: u64,
    /// When its next step is due.
    pub next_tick_due: Option<String>,
    /// Seconds past that, when the worker has not acted on it for more than a minute
    /// (a stuck or down worker; paused deployments are never overdue).
    pub overdue_seconds: Option<u64>,
    /// When the current step's (or the bake's) weights were confirmed by a read-back:
    /// the hold counts from then.
    pub served_since: Option<String>,
    /// The dedup key of the request that started it (`event:<EventBridge id>`).
    pub request: Option<String>,
}

impl DeploymentView {
    /// The view of `d` at `now`.
    #[must_use]
    pub fn of(d: &Deployment, now: Timestamp) -> DeploymentView {
        let end = d.finished_at.unwrap_or(now);
        DeploymentView {
            id: d.id.clone(),
            phase: d.phase,
            paused: d.is_paused(),
            target: d.target,
            weights: d.weights,
            step: StepAt {
                index: if matches!(d.phase, Phase::Shifting) {
                    d.step + 1
                } else if d.weights.of(d.target) == 100 {
                    d.plan.steps.len()
                } else {
                    d.step
                },
                count: d.plan.steps.len(),
            },
            from_image: d.from_image.clone(),
            to_image: d.to_image.pinned(),
            to_tag: d.to_image.tag.clone(),
            requested_by: d.requested_by.clone(),
            reason: d
                .rollback
                .as_ref()
                .map(|r| r.reason.clone())
                .or_else(|| d.reason.clone()),
            started_at: d.started_at.rfc3339(),
            finished_at: d.finished_at.map(Timestamp::rfc3339),
            duration_seconds: end.since(d.started_at) / 1000,
            next_tick_due: d.next_tick.map(|t| t.due.rfc3339()),
            overdue_seconds: d
                .next_tick
                .filter(|_| !d.is_paused() && !d.phase.is_terminal())
                .map(|t| now.since(t.due) / 1000)
                .filter(|late| *late > OVERDUE_AFTER_SECONDS),
            served_since: d.served_at.map(Timestamp::rfc3339),
            request: d.request.clone(),
        }
    }
}

/// What `status` shows for one service (schemas/cli/status.schema.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The service.
    pub service: String,
    /// The live colour.
    pub live_color: Color,
    /// The image on the live colour, when known.
    pub live_image: Option<String>,
    /// The deployment in progress.
    pub active: Option<DeploymentView>,
    /// Weights last written and read back.
    pub written_weights: Option<Weights>,
    /// Weights read from the production rules now, when they all hold the same.
    pub rule_weights: Option<Weights>,
    /// Why the rules could not be read, or that they disagree.
    pub rule_error: Option<String>,
    /// Each production rule and its weights as read now.
    pub rules: Vec<RuleWeights>,
    /// Rollback alarms and their states.
    pub alarms: Vec<AlarmStatus>,
    /// Why the alarms could not be read (their states then show `UNKNOWN`).
    pub alarm_error: Option<String>,
    /// The worker holding the service's lease now, if one does: it is carrying out
    /// effects.
    pub lease_owner: Option<String>,
    /// Until when it holds it.
    pub lease_until: Option<String>,
    /// Effects a committed decision owes and no worker has carried out yet (the next
    /// worker to take the lease does so first).
    pub owed_effects: usize,
    /// The most recent requests the worker refused, newest first (at most 3).
    pub refused: Vec<RefusedView>,
    /// The image waiting for the active deployment to end.
    pub queued_image: Option<String>,
    /// The last finished deployment.
    pub last: Option<DeploymentView>,
}

impl Status {
    /// Builds the status from the stored state and what was read now.
    #[must_use]
    pub fn of(
        state: &ServiceState,
        rules: Result<ProductionRules, String>,
        alarms: Vec<AlarmStatus>,
        now: Timestamp,
    ) -> Status {
        let (rule_weights, rule_error, rules) = match rules {
            Ok(read) => match read.agreed() {
                Some(w) => (Some(w), None, read.rules().to_vec()),
                None => (
                    None,
                    Some(format!(
                        "the production rules disagree: {}",
                        read.describe()
                    )),
                    read.rules().to_vec(),
                ),
            },
            Err(e) => (None, Some(e), Vec::new()),
        };
        Status {
            service: state.service.clone(),
            live_color: state.live,
            live_image: state.live_image.clone(),
            active: state.active.as_ref().map(|d| DeploymentView::of(d, now)),
            written_weights: state.active.as_ref().map(|d| d.weights).or(state.confirmed),
            rule_weights,
            rule_error,
            rules,
            alarms,
            alarm_error: None,
            lease_owner: None,
            lease_until: None,
            owed_effects: 0,
            refused: state
                .rejected
                .iter()
                .rev()
                .take(3)
                .map(|r| RefusedView {
                    at: r.at.rfc3339(),
                    request: r.key.clone(),
                    code: r.code.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
            queued_image: state.queued.as_ref().map(|q| q.image.pinned()),
            last: state.last.as_ref().map(|d| DeploymentView::of(d, now)),
        }
    }

    /// The deployment `id` names, or the active one, or the last one.
    #[must_use]
    pub fn deployment(&self, id: Option<&str>) -> Option<&DeploymentView> {
        let all = [self.active.as_ref(), self.last.as_ref()];
        match id {
            Some(id) => all.into_iter().flatten().find(|d| d.id == id),
            None => all.into_iter().flatten().next(),
        }
    }
}

/// A bar of the traffic split: `blue ████████░░ green`, `width` cells.
#[must_use]
pub fn split_bar(w: Weights, width: usize) -> String {
    let green = (usize::from(w.green) * width + 50) / 100;
    format!(
        "blue {:>3}% {}{} {:>3}% green",
        w.blue,
        "█".repeat(width - green.min(width)),
        "░".repeat(green.min(width)),
        w.green
    )
}

/// `status` as text.
#[must_use]
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: live {}{}",
        s.service,
        s.live_color,
        s.live_image
            .as_deref()
            .map(|i| format!(" ({i})"))
            .unwrap_or_default()
    );
    match &s.active {
        Some(d) => {
            let _ = writeln!(
                out,
                "  deployment {}: {}{} step {}/{}, to {} ({})",
                d.id,
                d.phase,
                if d.paused { " (paused)" } else { "" },
                d.step.index,
                d.step.count,
                d.target,
                d.to_image
            );
            if let Some(since) = &d.served_since {
                let _ = writeln!(out, "  step served since {since}");
            }
            match (&d.next_tick_due, d.overdue_seconds) {
                (Some(due), Some(late)) => {
                    let _ = writeln!(
                        out,
                        "  next step due {due}: OVERDUE by {} — the worker has not acted (runbook bluegreen-deployment-stuck)",
                        humantime::format_duration(std::time::Duration::from_secs(late))
                    );
                }
                (Some(due), None) => {
                    let _ = writeln!(out, "  next step due {due}");
                }
                (None, _) => {}
            }
        }
        None => {
            let _ = writeln!(out, "  no deployment in progress");
        }
    }
    if let Some(w) = s.written_weights {
        let _ = writeln!(out, "  written: {}", split_bar(w, 20));
    }
    match (&s.rule_weights, &s.rule_error) {
        (Some(w), _) if s.rules.len() < 2 => {
            let _ = writeln!(out, "  rule:    {}", split_bar(*w, 20));
        }
        (None, Some(e)) if s.rules.is_empty() => {
            let _ = writeln!(out, "  rule:    unreadable: {e}");
        }
        _ => {
            for r in &s.rules {
                let _ = writeln!(out, "  rule:    {} {}", split_bar(r.weights, 20), r.rule);
            }
            if let Some(e) = &s.rule_error {
                let _ = writeln!(out, "  rules:   {e}");
            }
        }
    }
    for a in &s.alarms {
        let colour = match (a.color, a.gates) {
            (Some(c), true) => format!(" ({c})"),
            (Some(c), false) => format!(" ({c}: does not gate a deployment to {})", c.other()),
            (None, _) => String::new(),
        };
        let _ = writeln!(out, "  alarm {}{colour}: {}", a.name, a.state);
    }
    if let Some(e) = &s.alarm_error {
        let _ = writeln!(out, "  alarms:  {e}");
    }
    if let (Some(owner), Some(until)) = (&s.lease_owner, &s.lease_until) {
        let _ = writeln!(
            out,
            "  worker {owner} is acting on it (lease until {until})"
        );
    }
    if s.owed_effects > 0 {
        let _ = writeln!(
            out,
            "  owed: {} effect(s) committed and not carried out yet (the next worker to take the service does them first)",
            s.owed_effects
        );
    }
    for r in &s.refused {
        let _ = writeln!(
            out,
            "  refused {} {} ({}): {}",
            r.at, r.request, r.code, r.reason
        );
    }
    if let Some(q) = &s.queued_image {
        let _ = writeln!(out, "  queued: {q}");
    }
    if let Some(d) = &s.last {
        let _ = writeln!(
            out,
            "  last: {} {} {}{}",
            d.id,
            d.phase,
            d.to_image,
            d.reason
                .as_deref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        );
    }
    out
}

/// `history` as text, newest first.
#[must_use]
pub fn render_history(entries: &[DeploymentView]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for d in entries {
        let _ = writeln!(
            out,
            "{:<12} {:<16} {} {:>8}  by {}  {} → {}{}",
            d.id,
            d.phase.to_string(),
            d.started_at,
            humantime::format_duration(std::time::Duration::from_secs(d.duration_seconds))
                .to_string(),
            d.requested_by,
            d.from_image.as_deref().unwrap_or("-"),
            d.to_image,
            d.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
    }
    if entries.is_empty() {
        out.push_str("no deployments yet\n");
    }
    out
}
