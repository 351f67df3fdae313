//! The transition table: `decide(state, settings, input, now) -> Decision`.
//!
//! Read it top to bottom:
//! * this file — [`decide`] dispatches on the input kind, [`needs`] says what the worker
//!   reads before deciding, and the decision context (`Cx`) holds the helpers every
//!   transition uses (enter a phase, emit an event, schedule a tick);
//! * [`phases`] — [`desired_effects`]: the world each phase establishes, used both when a
//!   phase is entered and when the reconciler re-drives it;
//! * `start` — deploy requests, the concurrency policy and the start checks (the live
//!   colour is read from the production rule, SPEC §4 invariant 9);
//! * `tick` — what a due tick does in each phase, and weight drift (invariant 10);
//! * `forward` — provisioning → … → succeeded, and traffic read-backs;
//! * `rollback` — alarms, failed effects, the rollback path;
//! * `operator` — operator actions;
//! * `reconcile` — the reconciler: overdue ticks and an idle service's drift.
//!
//! Discipline that keeps the function total and the outcomes honest:
//! * every `Ignore` is returned before anything is mutated, so an ignored input leaves
//!   the state exactly as it was (the property tests check this);
//! * every `Reject` is returned before anything but the dedup key and the
//!   `Event Rejected` event is produced;
//! * at most one tick is pending per deployment; only a tick naming the current cursor
//!   and attempt advances the flow.

mod forward;
mod operator;
pub mod phases;
mod reconcile;
mod rollback;
mod start;
mod tick;

pub use phases::desired_effects;

use super::effect::{
    Decision, Drift, Effect, EventDetail, EventKind, IgnoreCode, OutboundEvent, Outcome,
    RejectCode, StepPosition,
};
use super::input::{AlarmState, Input, InputKind, RuleWeights, TickKey};
use super::model::{
    Color, Deployment, Hold, PendingTick, Phase, RECENT_KEYS, RECENT_REJECTIONS, RejectedInput,
    ServiceState, Timestamp, Weights, duration_ms,
};
use super::settings::ServiceSettings;

/// What the handler concluded.
enum Verdict {
    Applied,
    Reject(RejectCode, String),
    Ignore(IgnoreCode, String),
}

use Verdict::{Applied, Ignore, Reject};

/// Decides what `input` does to `state` at time `now`.
///
/// Pure and total: no IO, no clock, no randomness, no panics. The caller commits
/// `Decision::state` (when [`Decision::changed`]) with a conditional write, then runs
/// `effects` in order and publishes `events`.
#[must_use]
pub fn decide(
    state: ServiceState,
    settings: &ServiceSettings,
    input: &Input,
    now: Timestamp,
) -> Decision {
    let mut cx = Cx {
        state,
        settings,
        now,
        effects: Vec::new(),
        events: Vec::new(),
        actor: None,
        request: input.key.clone(),
    };
    let keyed = input.is_keyed();
    if keyed && cx.state.recent_keys.iter().any(|k| *k == input.key) {
        return cx.finish(
            input,
            Ignore(
                IgnoreCode::Duplicate,
                format!("input {} was already applied", input.key),
            ),
            keyed,
        );
    }
    let verdict = match &input.kind {
        InputKind::Deploy {
            image,
            requested_by,
            reason,
            unresolved,
        } => start::on_deploy(
            &mut cx,
            image,
            requested_by,
            reason.as_deref(),
            unresolved.as_deref(),
        ),
        InputKind::Operator {
            action,
            deployment_id,
            requested_by,
            reason,
        } => {
            cx.actor = Some((requested_by.clone(), action.as_str().to_string()));
            operator::on_operator(
                &mut cx,
                *action,
                deployment_id.as_deref(),
                reason.as_deref(),
            )
        }
        InputKind::Alarm {
            alarm,
            state,
            reason,
            changed_at,
            observed,
        } => rollback::on_alarm(
            &mut cx,
            alarm,
            *state,
            reason.as_deref(),
            *changed_at,
            observed,
        ),
        InputKind::Tick { tick, observed } => tick::on_tick(&mut cx, tick, observed),
        InputKind::RevisionRegistered {
            deployment_id,
            task_definition_arn,
        } => with_active(&mut cx, deployment_id, |cx, d| {
            forward::on_revision(cx, d, task_definition_arn)
        }),
        InputKind::ValidationsCompleted {
            deployment_id,
            cursor,
            outcomes,
        } => with_active(&mut cx, deployment_id, |cx, d| {
            forward::on_validations(cx, d, *cursor, outcomes)
        }),
        InputKind::HookReported {
            deployment_id,
            hook,
            passed,
            detail,
        } => with_active(&mut cx, deployment_id, |cx, d| {
            forward::on_hook(cx, d, hook, *passed, detail.as_deref())
        }),
        InputKind::TrafficConfirmed {
            deployment_id,
            cursor,
            weights,
        } => forward::on_confirmed(&mut cx, deployment_id, *cursor, *weights),
        InputKind::EffectFailed {
            deployment_id,
            cursor,
            effect,
            reason,
        } => rollback::on_effect_failed(&mut cx, deployment_id, *cursor, effect, reason),
        InputKind::Reconcile { observed } => reconcile::on_reconcile(&mut cx, observed),
    };
    cx.finish(input, verdict, keyed)
}

/// What the worker must read before handing an input to [`decide`] (SPEC §3: alarms
/// before the start and before every step; §4 invariants 9 and 10: the production rule
/// before a deployment's first effect, before every step, and for an idle service when
/// the reconciler runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Read the service's rollback alarms.
    pub alarms: bool,
    /// Read rollout and target health of this colour.
    pub target_health: Option<Color>,
    /// Read the production rule's weights.
    pub production: bool,
    /// Resolve the image's tag to a digest.
    pub resolve_tag: bool,
}

/// What the worker must observe before handing `input` to [`decide`].
#[must_use]
pub fn needs(state: &ServiceState, input: &Input) -> Needs {
    match &input.kind {
        InputKind::Tick { tick, .. } => {
            let Some(d) = state.active.as_ref().filter(|d| d.id == tick.deployment_id) else {
                // The old colour's release reads the rule first (it must carry nothing),
                // and the alarms (one in ALARM rolls back while the colour is warm).
                let releasing = state
                    .last
                    .as_ref()
                    .is_some_and(|d| d.id == tick.deployment_id && d.phase == Phase::Succeeded);
                return Needs {
                    production: releasing,
                    alarms: releasing,
                    ..Needs::default()
                };
            };
            let untimed = matches!(d.current_step().map(|s| s.hold), Some(Hold::UntilPromote));
            Needs {
                alarms: rollback::alarm_gated(d) && !(d.phase == Phase::Shifting && untimed),
                target_health: (d.phase == Phase::WaitingForGreen).then_some(d.target),
                production: d.phase != Phase::RollingBack && !d.phase.is_terminal(),
                resolve_tag: false,
            }
        }
        // An idle service's live colour is read too: capacity drift is judged once a
        // deployment made it live (events belong to a deployment).
        InputKind::Reconcile { .. } => Needs {
            production: state.live_observed,
            target_health: (state.live_observed && state.active.is_none() && state.last.is_some())
                .then_some(state.live),
            ..Needs::default()
        },
        // An alarm that entered ALARM before the deployment it would roll back started is
        // judged by what it reads now.
        InputKind::Alarm {
            state: AlarmState::Alarm,
            changed_at: Some(at),
            ..
        } => {
            let started = state
                .active
                .as_ref()
                .or(state.last.as_ref().filter(|d| d.phase == Phase::Succeeded))
                .map(|d| d.started_at);
            Needs {
                alarms: started.is_some_and(|s| *at < s),
                ..Needs::default()
            }
        }
        InputKind::Deploy {
            image, unresolved, ..
        } => Needs {
            resolve_tag: image.digest.is_none() && unresolved.is_none(),
            ..Needs::default()
        },
        _ => Needs::default(),
    }
}

/// The decision being built.
struct Cx<'a> {
    state: ServiceState,
    settings: &'a ServiceSettings,
    now: Timestamp,
    effects: Vec<Effect>,
    events: Vec<OutboundEvent>,
    /// `(requested_by, action)` of the operator input being decided.
    actor: Option<(String, String)>,
    /// The key of the input being decided: recorded on a deployment it starts.
    request: String,
}

impl Cx<'_> {
    fn finish(mut self, input: &Input, verdict: Verdict, keyed: bool) -> Decision {
        let outcome = match verdict {
            Applied => Outcome::Applied,
            Reject(code, reason) => {
                self.reject_event(input, code, &reason);
                self.remember_rejection(input, code, &reason);
                Outcome::Rejected { code, reason }
            }
            Ignore(code, reason) => {
                debug_assert!(self.effects.is_empty() && self.events.is_empty());
                return Decision {
                    state: self.state,
                    effects: Vec::new(),
                    events: Vec::new(),
                    outcome: Outcome::Ignored { code, reason },
                };
            }
        };
        if keyed {
            self.state.recent_keys.push_back(input.key.clone());
            while self.state.recent_keys.len() > RECENT_KEYS {
                self.state.recent_keys.pop_front();
            }
        }
        // Only the tick a deployment is actually waiting for is worth sending, and ticks go
        // after every other effect so that one is sent only once the others succeeded.
        let state = &self.state;
        self.effects.retain(|e| match e {
            Effect::ScheduleTick { tick, .. } => waits_for(state, tick),
            _ => true,
        });
        self.effects
            .sort_by_key(|e| matches!(e, Effect::ScheduleTick { .. }));
        // Two production writes in one decision (drift written back, then the next step):
        // only the later one matters.
        let is_write = |e: &Effect| matches!(e, Effect::SetProductionWeights { .. });
        if let Some(last_write) = self.effects.iter().rposition(is_write) {
            let mut index = 0;
            self.effects.retain(|e| {
                index += 1;
                !is_write(e) || index - 1 == last_write
            });
        }
        Decision {
            state: self.state,
            effects: self.effects,
            events: self.events,
            outcome,
        }
    }

    /// Keeps a refused operator request or push in the state, so the command that sent
    /// it can tell its sender why (`deploy --wait`, `watch --image`).
    fn remember_rejection(&mut self, input: &Input, code: RejectCode, reason: &str) {
        let image = match &input.kind {
            InputKind::Deploy { image, .. } => Some(image.pinned()),
            InputKind::Operator { .. } => None,
            _ => return,
        };
        self.state.rejected.push_back(RejectedInput {
            key: input.key.clone(),
            image,
            code: code.as_str().to_string(),
            reason: reason.to_string(),
            at: self.now,
        });
        while self.state.rejected.len() > RECENT_REJECTIONS {
            self.state.rejected.pop_front();
        }
    }

    fn reject_event(&mut self, input: &Input, code: RejectCode, reason: &str) {
        let d = match &input.kind {
            InputKind::Operator {
                deployment_id: Some(id),
                ..
            } => self.state.deployment(id),
            _ => None,
        }
        .or(self.state.active.as_ref())
        .or(self.state.last.as_ref());
        let detail = EventDetail {
            event_id: format!("rejected:{}", input.key),
            deployment_id: d.map(|d| d.id.clone()),
            service: self.state.service.clone(),
            phase: d.map(|d| d.phase),
            previous_phase: d.map(|d| d.phase),
            live_color: self.state.live,
            weights: self.state.serving(),
            from_image: d.and_then(|d| d.from_image.clone()),
            to_image: d.map(|d| d.to_image.pinned()),
            sequence: d.map_or(0, |d| d.sequence),
            reason: Some(reason.to_string()),
            at: self.now.rfc3339(),
            step: d.and_then(step_position),
            paused: d.is_some_and(Deployment::is_paused),
            requested_by: self.actor.as_ref().map(|a| a.0.clone()),
            action: self.actor.as_ref().map(|a| a.1.clone()),
            code: Some(code.as_str().to_string()),
            input: Some(input.key.clone()),
            to_tag: None,
            drift: None,
            capacity: None,
        };
        self.events.push(OutboundEvent {
            kind: EventKind::Rejected,
            detail,
        });
    }

    /// Appends an outbound event about `d`, advancing its sequence; returns its detail
    /// for the caller to add to.
    fn emit(
        &mut self,
        d: &mut Deployment,
        kind: EventKind,
        previous: Phase,
        reason: Option<String>,
    ) -> &mut EventDetail {
        d.sequence += 1;
        let detail = EventDetail {
            event_id: format!("{}:{}", d.id, d.sequence),
            deployment_id: Some(d.id.clone()),
            service: d.service.clone(),
            phase: Some(d.phase),
            previous_phase: Some(previous),
            live_color: self.state.live,
            weights: self.state.confirmed.unwrap_or(d.weights),
            from_image: d.from_image.clone(),
            to_image: Some(d.to_image.pinned()),
            sequence: d.sequence,
            reason,
            at: self.now.rfc3339(),
            step: step_position(d),
            paused: d.is_paused(),
            requested_by: self.actor.as_ref().map(|a| a.0.clone()),
            action: self.actor.as_ref().map(|a| a.1.clone()),
            code: None,
            input: None,
            to_tag: d.to_image.tag.clone(),
            drift: None,
            capacity: None,
        };
        let at = self.events.len();
        self.events.push(OutboundEvent { kind, detail });
        &mut self.events[at].detail
    }

    /// Announces that the rule serves `found` where the worker expected `expected`.
    fn emit_drift(&mut self, d: &mut Deployment, expected: Weights, found: &RuleWeights) {
        let policy = self.settings.drift;
        let RuleWeights {
            rule,
            weights: found,
        } = found.clone();
        let what = match policy {
            super::DriftPolicy::Reassert => format!("writing {expected} back"),
            _ if d.is_paused() && policy == super::DriftPolicy::Report => format!(
                "the deployment is paused for an operator: {} is about to be updated and the rule sends it traffic",
                d.target
            ),
            _ if d.is_paused() => "the deployment is paused for an operator".to_string(),
            super::DriftPolicy::Pause | super::DriftPolicy::Report => "reported only".to_string(),
        };
        let reason = format!(
            "the production rule {rule} serves {found}, not the {expected} the worker wrote; {what} (drift policy {})",
            policy.as_str()
        );
        let phase = d.phase;
        let detail = self.emit(d, EventKind::WeightDriftDetected, phase, Some(reason));
        detail.drift = Some(Drift {
            expected,
            found,
            rule,
            policy,
        });
    }

    /// Moves `d` to `phase` (a new cursor) and announces it.
    fn enter(&mut self, d: &mut Deployment, phase: Phase, kind: EventKind, reason: Option<String>) {
        let previous = d.phase;
        d.phase = phase;
        d.cursor += 1;
        d.deadline = None;
        if phase.is_terminal() {
            d.finished_at = Some(self.now);
            d.next_tick = None;
        }
        self.emit(d, kind, previous, reason);
    }

    /// Asks for the effects that establish `d`'s phase ([`desired_effects`]).
    fn establish(&mut self, d: &Deployment) {
        self.effects.extend(desired_effects(self.settings, d));
    }

    /// Makes `d` wait for a tick due at `due`.
    fn schedule(&mut self, d: &mut Deployment, due: Timestamp) {
        let attempt = match d.next_tick {
            Some(t) if t.cursor == d.cursor => t.attempt + 1,
            _ => 1,
        };
        d.next_tick = Some(PendingTick {
            cursor: d.cursor,
            attempt,
            due,
        });
        self.effects.push(Effect::ScheduleTick {
            tick: TickKey {
                deployment_id: d.id.clone(),
                cursor: d.cursor,
                attempt,
            },
            due,
        });
    }

    fn poll_ms(&self) -> u64 {
        duration_ms(self.settings.timeouts.poll)
    }

    /// Polls again after the poll interval.
    fn poll(&mut self, d: &mut Deployment) {
        let due = self.now.plus_ms(self.poll_ms());
        self.schedule(d, due);
    }

    /// Puts a deployment back after a handler: into `active` while it runs, into `last`
    /// once terminal, starting the queued image if there is one.
    fn settle(&mut self, d: Deployment) {
        if !d.phase.is_terminal() {
            self.state.active = Some(d);
            return;
        }
        self.state.last = Some(d);
        if let Some(q) = self.state.queued.take() {
            self.request = q.request.unwrap_or_default();
            start::start(self, q.image, q.requested_by, q.reason, None);
        }
    }
}

/// Where `d` is in its plan, while shifting.
fn step_position(d: &Deployment) -> Option<StepPosition> {
    (d.phase == Phase::Shifting).then(|| StepPosition {
        index: d.step + 1,
        of: d.plan.steps.len(),
    })
}

/// Whether `state` waits for exactly this tick.
#[must_use]
pub fn waits_for(state: &ServiceState, tick: &TickKey) -> bool {
    state.active.iter().chain(state.last.iter()).any(|d| {
        d.id == tick.deployment_id
            && d.next_tick
                .is_some_and(|t| t.cursor == tick.cursor && t.attempt == tick.attempt)
    })
}

/// The deployment named `id` if it is still at `cursor` (the step that asked for an
/// effect whose result or failure this is); otherwise why the input is stale.
fn at_cursor<'s>(
    state: &'s ServiceState,
    id: &str,
    cursor: u32,
    what: &str,
) -> Result<&'s Deployment, Verdict> {
    let d = state
        .deployment(id)
        .ok_or_else(|| Ignore(IgnoreCode::Stale, format!("unknown deployment {id}")))?;
    if d.cursor != cursor {
        return Err(Ignore(
            IgnoreCode::Stale,
            format!(
                "{what} is for cursor {cursor} of {id}, which is at {}",
                d.cursor
            ),
        ));
    }
    Ok(d)
}

/// Runs `f` on the active deployment named `id`, or ignores the input as stale.
fn with_active(
    cx: &mut Cx<'_>,
    id: &str,
    f: impl FnOnce(&mut Cx<'_>, &mut Deployment) -> Verdict,
) -> Verdict {
    let Some(mut d) = cx.state.active.take_if(|d| d.id == id) else {
        return Ignore(
            IgnoreCode::Stale,
            format!("deployment {id} is not the active deployment"),
        );
    };
    let verdict = f(cx, &mut d);
    cx.settle(d);
    verdict
}

/// Runs `f` on the deployment named `id`, active or last; a finished one stays last.
fn with_deployment(
    cx: &mut Cx<'_>,
    id: &str,
    f: impl FnOnce(&mut Cx<'_>, &mut Deployment) -> Verdict,
) -> Verdict {
    if cx.state.active.as_ref().is_some_and(|d| d.id == id) {
        return with_active(cx, id, f);
    }
    let Some(mut d) = cx.state.last.take_if(|d| d.id == id) else {
        return Ignore(IgnoreCode::Stale, format!("unknown deployment {id}"));
    };
    let verdict = f(cx, &mut d);
    cx.state.last = Some(d);
    verdict
}
