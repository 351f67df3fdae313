//! The transition table: `decide(state, settings, input, now) -> Decision`.
//!
//! Read it top to bottom: [`decide`] dispatches on the input kind; each `on_*` function
//! handles one input family and matches on the phase; the `begin_*` / `enter_*`
//! helpers perform one phase entry each, pushing the effects and events it implies.
//!
//! Discipline that keeps the function total and the outcomes honest:
//! * every `Ignore` is returned before anything is mutated, so an ignored input leaves
//!   the state exactly as it was (the property tests check this);
//! * every `Reject` is returned before anything but the dedup key and the
//!   `Event Rejected` event is produced;
//! * at most one tick is pending per deployment; only a tick naming the current cursor
//!   and attempt advances the flow.

use super::effect::{
    Decision, Effect, EventDetail, EventKind, IgnoreCode, OutboundEvent, Outcome, RejectCode,
    StepPosition,
};
use super::input::{Action, AlarmState, CheckOutcome, Input, InputKind, Observations, TickKey};
use super::model::{
    Color, Deployment, Hold, ImageRef, PendingTick, Phase, QueuedImage, RECENT_KEYS, Rollback,
    ServiceState, Timestamp, Weights, duration_ms,
};
use super::settings::{Check, Concurrency, ServiceSettings};

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
/// `Decision::state` (when [`Decision::changed`]) with a conditional write, then publishes
/// `events` and runs `effects` in order.
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
    };
    let keyed = !matches!(input.kind, InputKind::Tick { .. } | InputKind::Reconcile);
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
        } => on_deploy(&mut cx, image, requested_by, reason.as_deref()),
        InputKind::Operator {
            action,
            deployment_id,
            requested_by,
            reason,
        } => {
            cx.actor = Some((requested_by.clone(), action.as_str().to_string()));
            on_operator(
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
        } => on_alarm(&mut cx, alarm, *state, reason.as_deref()),
        InputKind::Tick { tick, observed } => on_tick(&mut cx, tick, observed),
        InputKind::RevisionRegistered {
            deployment_id,
            task_definition_arn,
        } => with_active(&mut cx, deployment_id, |cx, d| {
            on_revision(cx, d, task_definition_arn)
        }),
        InputKind::ValidationsCompleted {
            deployment_id,
            cursor,
            outcomes,
        } => with_active(&mut cx, deployment_id, |cx, d| {
            on_validations(cx, d, *cursor, outcomes)
        }),
        InputKind::HookReported {
            deployment_id,
            hook,
            passed,
            detail,
        } => with_active(&mut cx, deployment_id, |cx, d| {
            on_hook(cx, d, hook, *passed, detail.as_deref())
        }),
        InputKind::EffectFailed {
            deployment_id,
            cursor,
            effect,
            reason,
        } => on_effect_failed(&mut cx, deployment_id, *cursor, effect, reason),
        InputKind::Reconcile => on_reconcile(&mut cx),
    };
    cx.finish(input, verdict, keyed)
}

/// What the worker must read before deciding a tick for `tick` (SPEC §3: alarms are
/// checked before every step and before the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Read the service's rollback alarms.
    pub alarms: bool,
    /// Read rollout and target health of this colour.
    pub target_health: Option<Color>,
}

/// What the worker must observe before handing a tick to [`decide`].
#[must_use]
pub fn needs(state: &ServiceState, tick: &TickKey) -> Needs {
    let Some(d) = state.active.as_ref().filter(|d| d.id == tick.deployment_id) else {
        return Needs::default();
    };
    let untimed = matches!(d.current_step().map(|s| s.hold), Some(Hold::UntilPromote));
    Needs {
        alarms: alarm_gated(d) && !(d.phase == Phase::Shifting && untimed),
        target_health: (d.phase == Phase::WaitingForGreen).then_some(d.target),
    }
}

struct Cx<'a> {
    state: ServiceState,
    settings: &'a ServiceSettings,
    now: Timestamp,
    effects: Vec<Effect>,
    events: Vec<OutboundEvent>,
    /// `(requested_by, action)` of the operator input being decided.
    actor: Option<(String, String)>,
}

impl Cx<'_> {
    fn finish(mut self, input: &Input, verdict: Verdict, keyed: bool) -> Decision {
        let outcome = match verdict {
            Applied => Outcome::Applied,
            Reject(code, reason) => {
                self.reject_event(input, code, &reason);
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
            Effect::ScheduleTick { tick, .. } => {
                state.active.iter().chain(state.last.iter()).any(|d| {
                    d.id == tick.deployment_id
                        && d.next_tick
                            .is_some_and(|t| t.cursor == tick.cursor && t.attempt == tick.attempt)
                })
            }
            _ => true,
        });
        self.effects
            .sort_by_key(|e| matches!(e, Effect::ScheduleTick { .. }));
        Decision {
            state: self.state,
            effects: self.effects,
            events: self.events,
            outcome,
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
            weights: self.state.production_weights(),
            from_image: d.and_then(|d| d.from_image.clone()),
            to_image: d.map(|d| d.to_image.pinned()),
            sequence: d.map_or(0, |d| d.sequence),
            reason: Some(reason.to_string()),
            at: self.now.rfc3339(),
            step: None,
            paused: d.is_some_and(Deployment::is_paused),
            requested_by: self.actor.as_ref().map(|a| a.0.clone()),
            action: self.actor.as_ref().map(|a| a.1.clone()),
            code: Some(code.as_str().to_string()),
            input: Some(input.key.clone()),
        };
        self.events.push(OutboundEvent {
            kind: EventKind::Rejected,
            detail,
        });
    }

    /// Appends an outbound event about `d`, advancing its sequence.
    fn emit(
        &mut self,
        d: &mut Deployment,
        kind: EventKind,
        previous: Phase,
        reason: Option<String>,
    ) {
        d.sequence += 1;
        let detail = EventDetail {
            event_id: format!("{}:{}", d.id, d.sequence),
            deployment_id: Some(d.id.clone()),
            service: d.service.clone(),
            phase: Some(d.phase),
            previous_phase: Some(previous),
            live_color: self.state.live,
            weights: d.weights,
            from_image: d.from_image.clone(),
            to_image: Some(d.to_image.pinned()),
            sequence: d.sequence,
            reason,
            at: self.now.rfc3339(),
            step: (d.phase == Phase::Shifting).then(|| StepPosition {
                index: d.step + 1,
                of: d.plan.steps.len(),
            }),
            paused: d.is_paused(),
            requested_by: self.actor.as_ref().map(|a| a.0.clone()),
            action: self.actor.as_ref().map(|a| a.1.clone()),
            code: None,
            input: None,
        };
        self.events.push(OutboundEvent { kind, detail });
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

    fn set_production(&mut self, d: &mut Deployment, weights: Weights) {
        d.weights = weights;
        self.effects.push(Effect::SetProductionWeights {
            deployment_id: d.id.clone(),
            weights,
        });
    }

    fn set_test(&mut self, d: &Deployment, color: Color) {
        if self.settings.has_test_listener {
            self.effects.push(Effect::SetTestWeights {
                deployment_id: d.id.clone(),
                weights: Weights::all(color),
            });
        }
    }

    fn poll_ms(&self) -> u64 {
        duration_ms(self.settings.timeouts.poll)
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
            start(self, q.image, q.requested_by, q.reason, None);
        }
    }
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

fn firing(observed: &Observations, settings: &ServiceSettings) -> Option<Vec<String>> {
    let firing: Vec<String> = observed
        .alarms_firing
        .as_ref()?
        .iter()
        .filter(|a| settings.rollback_alarms.contains(a))
        .cloned()
        .collect();
    Some(firing)
}

// ---------------------------------------------------------------------------------------
// Deploy

fn on_deploy(
    cx: &mut Cx<'_>,
    image: &ImageRef,
    requested_by: &str,
    reason: Option<&str>,
) -> Verdict {
    if image.digest.is_none() {
        return Reject(
            RejectCode::UnpinnedImage,
            format!(
                "image {} is not pinned by digest; resolve the tag first",
                image.pinned()
            ),
        );
    }
    let pinned = image.pinned();
    let reason = reason.map(str::to_string);
    let Some(active) = cx.state.active.as_ref() else {
        if cx.state.live_image.as_deref() == Some(pinned.as_str()) {
            return Reject(
                RejectCode::AlreadyDeployed,
                format!("image {pinned} is already live"),
            );
        }
        start(cx, image.clone(), requested_by.to_string(), reason, None);
        return Applied;
    };
    if active.to_image.pinned() == pinned {
        return Reject(
            RejectCode::AlreadyDeployed,
            format!("image {pinned} is already being deployed by {}", active.id),
        );
    }
    let queued = QueuedImage {
        image: image.clone(),
        requested_by: requested_by.to_string(),
        reason,
    };
    match cx.settings.concurrency {
        Concurrency::Reject => Reject(
            RejectCode::DeploymentInProgress,
            format!(
                "deployment {} is in progress and the service's concurrency policy is reject",
                active.id
            ),
        ),
        Concurrency::Queue => {
            let Some(mut d) = cx.state.active.take() else {
                return Applied;
            };
            cx.state.queued = Some(queued);
            let (phase, why) = (d.phase, format!("{pinned} queued behind {}", d.id));
            cx.emit(&mut d, EventKind::Queued, phase, Some(why));
            cx.settle(d);
            Applied
        }
        Concurrency::Supersede => {
            let Some(mut d) = cx.state.active.take() else {
                return Applied;
            };
            cx.state.queued = Some(queued);
            if d.phase == Phase::RollingBack {
                let (phase, why) = (
                    d.phase,
                    format!("{pinned} queued behind the rollback of {}", d.id),
                );
                cx.emit(&mut d, EventKind::Queued, phase, Some(why));
            } else {
                begin_rollback(cx, &mut d, format!("superseded by {pinned}"));
            }
            cx.settle(d);
            Applied
        }
    }
}

/// Creates a deployment in `Requested` and schedules its first tick now.
fn start(
    cx: &mut Cx<'_>,
    image: ImageRef,
    requested_by: String,
    reason: Option<String>,
    retry_of: Option<String>,
) {
    cx.state.deployments_started += 1;
    let number = cx.state.deployments_started;
    // A new deployment reuses the idle colour, so the previous success's warm window ends.
    if let Some(last) = cx.state.last.as_mut() {
        last.warm_until = None;
        last.next_tick = None;
    }
    let stable = cx.state.live;
    let mut d = Deployment {
        id: format!("{}-{number}", cx.state.service),
        service: cx.state.service.clone(),
        number,
        phase: Phase::Requested,
        step: 0,
        stable,
        target: stable.other(),
        weights: Weights::all(stable),
        from_image: cx.state.live_image.clone(),
        to_image: image,
        plan: cx.settings.plan(),
        skip_bake: false,
        revision: None,
        sequence: 0,
        cursor: 0,
        next_tick: None,
        deadline: Some(cx.now.plus(cx.settings.timeouts.provision)),
        paused_at: None,
        checks_passed: Vec::new(),
        rollback: None,
        requested_by,
        reason: reason.clone(),
        retry_of,
        started_at: cx.now,
        finished_at: None,
        warm_until: None,
    };
    cx.emit(&mut d, EventKind::Started, Phase::Requested, reason);
    let now = cx.now;
    cx.schedule(&mut d, now);
    cx.state.active = Some(d);
}

// ---------------------------------------------------------------------------------------
// Ticks

fn on_tick(cx: &mut Cx<'_>, tick: &TickKey, observed: &Observations) -> Verdict {
    let target = cx
        .state
        .deployment(&tick.deployment_id)
        .map(|d| (d.phase, d.next_tick, d.is_paused()));
    let Some((phase, pending, paused)) = target else {
        return Ignore(
            IgnoreCode::Stale,
            format!("tick for unknown deployment {}", tick.deployment_id),
        );
    };
    let Some(pending) = pending.filter(|p| p.cursor == tick.cursor && p.attempt == tick.attempt)
    else {
        return Ignore(
            if phase.is_terminal() {
                IgnoreCode::Finished
            } else {
                IgnoreCode::Stale
            },
            format!(
                "tick {} is not the one deployment {} waits for",
                tick.key(),
                tick.deployment_id
            ),
        );
    };
    if paused {
        return Ignore(
            IgnoreCode::Paused,
            format!("deployment {} is paused", tick.deployment_id),
        );
    }
    if cx.now < pending.due {
        // A delay chain that delivered too soon must not cut a step or a bake short.
        return Ignore(
            IgnoreCode::Early,
            format!(
                "tick {} is due at {}; deliver it again then",
                tick.key(),
                pending.due
            ),
        );
    }
    if phase == Phase::Succeeded {
        return release_old_color(cx, &tick.deployment_id);
    }
    with_active(cx, &tick.deployment_id, |cx, d| {
        if let Some(alarms) = firing(observed, cx.settings).filter(|a| !a.is_empty())
            && alarm_gated(d)
        {
            let reason = if d.phase == Phase::Requested {
                format!(
                    "blocked: rollback alarm(s) {} in ALARM when the deployment started",
                    alarms.join(", ")
                )
            } else {
                format!("rollback alarm(s) {} in ALARM", alarms.join(", "))
            };
            begin_rollback(cx, d, reason);
            return Applied;
        }
        let alarms_known = observed.alarms_firing.is_some();
        let now = cx.now;
        match d.phase {
            Phase::Requested => {
                if alarms_known {
                    begin_provisioning(cx, d);
                } else if d.deadline.is_some_and(|t| now >= t) {
                    begin_rollback(
                        cx,
                        d,
                        "rollback alarm states could not be read before the start timeout".into(),
                    );
                } else {
                    let due = now.plus_ms(cx.poll_ms());
                    cx.schedule(d, due);
                }
            }
            Phase::Provisioning => {
                let limit = cx.settings.timeouts.provision;
                timed_out(cx, d, "task definition not registered", limit);
            }
            Phase::WaitingForGreen => match &observed.target_health {
                Some(h) if h.is_ready(d.revision.as_deref()) && alarms_known => after_green(cx, d),
                seen if d.deadline.is_some_and(|t| now >= t) => {
                    let detail = seen.as_ref().map_or_else(
                        || "no health reading".to_string(),
                        |h| {
                            format!(
                                "{}/{} tasks running, {}/{} targets healthy, running {}",
                                h.running,
                                h.desired,
                                h.healthy_targets,
                                h.registered_targets,
                                h.task_definition
                                    .as_deref()
                                    .unwrap_or("an unknown revision")
                            )
                        },
                    );
                    begin_rollback(
                        cx,
                        d,
                        format!(
                            "{} colour not healthy within {} ({detail})",
                            d.target,
                            humantime::format_duration(cx.settings.timeouts.green)
                        ),
                    );
                }
                _ => {
                    let due = now.plus_ms(cx.poll_ms());
                    cx.schedule(d, due);
                }
            },
            Phase::Testing => {
                if checks_passed(d) {
                    after_testing(cx, d);
                } else if d.deadline.is_some_and(|t| now >= t) {
                    let limit = cx.settings.timeouts.testing;
                    timed_out(cx, d, "validations did not pass", limit);
                } else if let Some(t) = d.deadline {
                    cx.schedule(d, t);
                }
            }
            Phase::AwaitingApproval => {
                let limit = cx.settings.timeouts.approval;
                timed_out(cx, d, "not approved", limit);
            }
            Phase::Shifting => match d.current_step().map(|s| s.hold) {
                Some(Hold::UntilPromote) => {
                    let limit = cx.settings.timeouts.promote;
                    timed_out(cx, d, "not promoted", limit);
                }
                _ if !alarms_known => {
                    let due = now.plus_ms(cx.poll_ms());
                    cx.schedule(d, due);
                }
                _ => next_step(cx, d),
            },
            Phase::Baking => {
                if alarms_known {
                    begin_finalizing(cx, d);
                } else {
                    let due = now.plus_ms(cx.poll_ms());
                    cx.schedule(d, due);
                }
            }
            Phase::Finalizing => {
                let warm_until = now.plus_ms(d.plan.termination_wait_ms);
                d.warm_until = Some(warm_until);
                cx.enter(
                    d,
                    Phase::Succeeded,
                    EventKind::Succeeded,
                    Some(format!(
                        "{} is live; {} stays warm until {warm_until}",
                        d.target, d.stable
                    )),
                );
                cx.schedule(d, warm_until);
            }
            Phase::RollingBack => {
                let rerun = d.rollback.as_ref().is_some_and(|r| r.rerun);
                if rerun {
                    if let Some(r) = d.rollback.as_mut() {
                        r.rerun = false;
                    }
                    rollback_effects(cx, d);
                    cx.schedule(d, now);
                } else {
                    let reason = d.rollback.as_ref().map(|r| r.reason.clone());
                    cx.enter(d, Phase::RolledBack, EventKind::RolledBack, reason);
                }
            }
            Phase::Succeeded | Phase::RolledBack | Phase::Failed => {}
        }
        Applied
    })
}

/// Rolls back because a stage's deadline passed.
fn timed_out(cx: &mut Cx<'_>, d: &mut Deployment, what: &str, limit: std::time::Duration) {
    let reason = format!("{what} within {}", humantime::format_duration(limit));
    begin_rollback(cx, d, reason);
}

/// Whether a firing rollback alarm observed on a tick rolls `d` back now.
fn alarm_gated(d: &Deployment) -> bool {
    matches!(
        d.phase,
        Phase::Requested
            | Phase::WaitingForGreen
            | Phase::Testing
            | Phase::AwaitingApproval
            | Phase::Shifting
            | Phase::Baking
    )
}

fn release_old_color(cx: &mut Cx<'_>, id: &str) -> Verdict {
    let Some(mut d) = cx.state.last.take_if(|d| d.id == id) else {
        return Ignore(
            IgnoreCode::Stale,
            format!("deployment {id} is not the last one"),
        );
    };
    d.warm_until = None;
    d.next_tick = None;
    cx.effects.push(Effect::ScaleToZero {
        deployment_id: d.id.clone(),
        color: d.stable,
    });
    let reason = format!(
        "termination wait over; {} scaled to zero, rollback no longer possible",
        d.stable
    );
    cx.emit(
        &mut d,
        EventKind::OldColorReleased,
        Phase::Succeeded,
        Some(reason),
    );
    cx.state.last = Some(d);
    Applied
}

// ---------------------------------------------------------------------------------------
// Forward path

fn begin_provisioning(cx: &mut Cx<'_>, d: &mut Deployment) {
    cx.enter(d, Phase::Provisioning, EventKind::PhaseChanged, None);
    let deadline = cx.now.plus(cx.settings.timeouts.provision);
    d.deadline = Some(deadline);
    cx.effects.push(Effect::RegisterRevision {
        deployment_id: d.id.clone(),
        template: d.stable,
        image: d.to_image.pinned(),
    });
    cx.schedule(d, deadline);
}

fn on_revision(cx: &mut Cx<'_>, d: &mut Deployment, arn: &str) -> Verdict {
    if d.phase != Phase::Provisioning || d.revision.is_some() {
        return Ignore(
            IgnoreCode::Stale,
            format!("deployment {} already has its revision", d.id),
        );
    }
    d.revision = Some(arn.to_string());
    cx.enter(
        d,
        Phase::WaitingForGreen,
        EventKind::PhaseChanged,
        Some(format!("registered {arn}")),
    );
    cx.effects.push(Effect::UpdateService {
        deployment_id: d.id.clone(),
        color: d.target,
        task_definition: arn.to_string(),
        match_count_of: d.stable,
    });
    d.deadline = Some(cx.now.plus(cx.settings.timeouts.green));
    let due = cx.now.plus_ms(cx.poll_ms());
    cx.schedule(d, due);
    Applied
}

fn after_green(cx: &mut Cx<'_>, d: &mut Deployment) {
    cx.set_test(d, d.target);
    if d.plan.checks.is_empty() {
        after_testing(cx, d);
        return;
    }
    cx.enter(d, Phase::Testing, EventKind::PhaseChanged, None);
    d.checks_passed.clear();
    let http: Vec<Check> = d
        .plan
        .checks
        .iter()
        .filter(|c| matches!(c, Check::Http { .. }))
        .cloned()
        .collect();
    if !http.is_empty() {
        cx.effects.push(Effect::RunValidations {
            deployment_id: d.id.clone(),
            cursor: d.cursor,
            checks: http,
        });
    }
    let deadline = cx.now.plus(cx.settings.timeouts.testing);
    d.deadline = Some(deadline);
    cx.schedule(d, deadline);
}

fn checks_passed(d: &Deployment) -> bool {
    d.plan
        .checks
        .iter()
        .all(|c| d.checks_passed.iter().any(|p| p == c.name()))
}

fn on_validations(
    cx: &mut Cx<'_>,
    d: &mut Deployment,
    cursor: u32,
    outcomes: &[CheckOutcome],
) -> Verdict {
    if d.phase != Phase::Testing || d.cursor != cursor {
        return Ignore(
            IgnoreCode::Stale,
            format!(
                "deployment {} is no longer testing at cursor {cursor}",
                d.id
            ),
        );
    }
    record_checks(
        cx,
        d,
        outcomes
            .iter()
            .map(|o| (o.name.as_str(), o.passed, o.detail.as_str())),
    );
    Applied
}

fn on_hook(
    cx: &mut Cx<'_>,
    d: &mut Deployment,
    hook: &str,
    passed: bool,
    detail: Option<&str>,
) -> Verdict {
    let known = d
        .plan
        .checks
        .iter()
        .any(|c| matches!(c, Check::Hook { name } if name == hook));
    if d.phase != Phase::Testing || !known {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("deployment {} is not waiting for hook {hook}", d.id),
        );
    }
    record_checks(cx, d, std::iter::once((hook, passed, detail.unwrap_or(""))));
    Applied
}

fn record_checks<'a>(
    cx: &mut Cx<'_>,
    d: &mut Deployment,
    outcomes: impl Iterator<Item = (&'a str, bool, &'a str)>,
) {
    for (name, passed, detail) in outcomes {
        if !passed {
            begin_rollback(cx, d, format!("validation {name} failed: {detail}"));
            return;
        }
        if !d.checks_passed.iter().any(|p| p == name) {
            d.checks_passed.push(name.to_string());
        }
    }
    if checks_passed(d) && !d.is_paused() {
        after_testing(cx, d);
    }
}

fn after_testing(cx: &mut Cx<'_>, d: &mut Deployment) {
    if d.plan.approval {
        cx.enter(
            d,
            Phase::AwaitingApproval,
            EventKind::AwaitingApproval,
            Some("waiting for approve".into()),
        );
        let deadline = cx.now.plus(cx.settings.timeouts.approval);
        d.deadline = Some(deadline);
        cx.schedule(d, deadline);
    } else {
        enter_step(cx, d, 0);
    }
}

fn enter_step(cx: &mut Cx<'_>, d: &mut Deployment, index: usize) {
    let Some(step) = d.plan.steps.get(index).copied() else {
        begin_baking(cx, d);
        return;
    };
    let previous = d.phase;
    d.phase = Phase::Shifting;
    d.step = index;
    d.cursor += 1;
    d.deadline = None;
    cx.set_production(d, Weights::split(d.target, step.percent));
    let reason = format!(
        "step {}/{}: {}% to {}",
        index + 1,
        d.plan.steps.len(),
        step.percent,
        d.target
    );
    cx.emit(d, EventKind::TrafficShifted, previous, Some(reason));
    match step.hold {
        Hold::Timed(ms) => {
            let due = cx.now.plus_ms(ms);
            cx.schedule(d, due);
        }
        Hold::UntilPromote => {
            let deadline = cx.now.plus(cx.settings.timeouts.promote);
            d.deadline = Some(deadline);
            cx.schedule(d, deadline);
        }
    }
}

fn next_step(cx: &mut Cx<'_>, d: &mut Deployment) {
    if d.step + 1 < d.plan.steps.len() {
        enter_step(cx, d, d.step + 1);
    } else {
        begin_baking(cx, d);
    }
}

fn begin_baking(cx: &mut Cx<'_>, d: &mut Deployment) {
    if d.skip_bake {
        begin_finalizing(cx, d);
        return;
    }
    let bake = d.plan.bake_ms;
    cx.enter(d, Phase::Baking, EventKind::PhaseChanged, None);
    // Re-assert 100 %: the last step's write may have been lost in a crash, and an
    // operator's promote can move on before the reconciler re-drives it.
    cx.set_production(d, Weights::all(d.target));
    let due = cx.now.plus_ms(bake);
    cx.schedule(d, due);
}

fn begin_finalizing(cx: &mut Cx<'_>, d: &mut Deployment) {
    cx.state.live = d.target;
    cx.state.live_image = Some(d.to_image.pinned());
    cx.enter(d, Phase::Finalizing, EventKind::PhaseChanged, None);
    cx.set_production(d, Weights::all(d.target));
    cx.set_test(d, d.target);
    let now = cx.now;
    cx.schedule(d, now);
}

// ---------------------------------------------------------------------------------------
// Rollback

/// Starts a rollback: production to 100 % known-good first, then the test rule, then the
/// failed colour to zero. Jumps any timer: the pending tick is replaced by one due now.
fn begin_rollback(cx: &mut Cx<'_>, d: &mut Deployment, reason: String) {
    d.rollback = Some(Rollback {
        reason: reason.clone(),
        from_phase: d.phase,
        failures: 0,
        rerun: false,
    });
    d.paused_at = None;
    d.warm_until = None;
    d.finished_at = None;
    if cx.state.live != d.stable {
        cx.state.live = d.stable;
        cx.state.live_image = d.from_image.clone();
    }
    d.weights = Weights::all(d.stable);
    cx.enter(d, Phase::RollingBack, EventKind::RollingBack, Some(reason));
    rollback_effects(cx, d);
    let now = cx.now;
    cx.schedule(d, now);
}

fn rollback_effects(cx: &mut Cx<'_>, d: &mut Deployment) {
    cx.set_production(d, Weights::all(d.stable));
    cx.set_test(d, d.stable);
    cx.effects.push(Effect::ScaleToZero {
        deployment_id: d.id.clone(),
        color: d.target,
    });
}

fn on_alarm(cx: &mut Cx<'_>, alarm: &str, state: AlarmState, reason: Option<&str>) -> Verdict {
    if state != AlarmState::Alarm {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("alarm {alarm} changed to {state:?}; only ALARM rolls back"),
        );
    }
    if !cx.settings.rollback_alarms.iter().any(|a| a == alarm) {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("{alarm} is not a rollback alarm of {}", cx.state.service),
        );
    }
    let Some(active) = cx.state.active.as_ref() else {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("{} has no active deployment", cx.state.service),
        );
    };
    if matches!(active.phase, Phase::RollingBack) || active.phase.is_terminal() {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("{} is already {}", active.id, active.phase),
        );
    }
    let id = active.id.clone();
    let why = match reason {
        Some(r) => format!("rollback alarm {alarm} in ALARM: {r}"),
        None => format!("rollback alarm {alarm} in ALARM"),
    };
    with_active(cx, &id, |cx, d| {
        begin_rollback(cx, d, why);
        Applied
    })
}

fn on_effect_failed(cx: &mut Cx<'_>, id: &str, cursor: u32, effect: &str, reason: &str) -> Verdict {
    if effect == "schedule-tick" {
        return Ignore(
            IgnoreCode::NotApplicable,
            "a tick that could not be sent is re-sent by the reconciler".into(),
        );
    }
    let Some(d) = cx.state.deployment(id) else {
        return Ignore(IgnoreCode::Stale, format!("unknown deployment {id}"));
    };
    if d.cursor != cursor {
        return Ignore(
            IgnoreCode::Stale,
            format!(
                "{effect} failure is for cursor {cursor}; {id} is at {}",
                d.cursor
            ),
        );
    }
    if d.phase == Phase::Succeeded && d.warm_until.is_none() && d.next_tick.is_none() {
        // The release of the old colour failed: try again after a poll interval.
        let Some(mut d) = cx.state.last.take_if(|d| d.id == id) else {
            return Ignore(IgnoreCode::Stale, format!("unknown deployment {id}"));
        };
        let due = cx.now.plus_ms(cx.poll_ms());
        d.warm_until = Some(due);
        cx.schedule(&mut d, due);
        cx.state.last = Some(d);
        return Applied;
    }
    if d.phase.is_terminal() {
        return Ignore(IgnoreCode::Finished, format!("{id} is {}", d.phase));
    }
    let attempts = cx.settings.rollback_attempts.max(1);
    let poll = cx.poll_ms();
    with_active(cx, id, |cx, d| {
        if d.phase == Phase::RollingBack {
            let failures = d.rollback.as_ref().map_or(0, |r| r.failures) + 1;
            if failures >= attempts {
                cx.enter(
                    d,
                    Phase::Failed,
                    EventKind::Failed,
                    Some(format!(
                        "rollback could not complete: {effect} failed {failures} times, last: {reason}"
                    )),
                );
            } else {
                if let Some(r) = d.rollback.as_mut() {
                    r.failures = failures;
                    r.rerun = true;
                }
                let due = cx.now.plus_ms(poll.saturating_mul(u64::from(failures)));
                cx.schedule(d, due);
            }
        } else {
            begin_rollback(cx, d, format!("{effect} failed: {reason}"));
        }
        Applied
    })
}

// ---------------------------------------------------------------------------------------
// Operator actions

fn on_operator(
    cx: &mut Cx<'_>,
    action: Action,
    deployment_id: Option<&str>,
    reason: Option<&str>,
) -> Verdict {
    let who = cx.actor.as_ref().map_or_else(String::new, |a| a.0.clone());
    let because = reason.map_or_else(String::new, |r| format!(": {r}"));
    let active_id = cx.state.active.as_ref().map(|d| d.id.clone());
    let last = cx
        .state
        .last
        .as_ref()
        .map(|d| (d.id.clone(), d.phase, d.warm_until));
    let names_last = |id: &str| last.as_ref().is_some_and(|(l, _, _)| l == id);

    match action {
        Action::Retry => {
            if let Some(a) = active_id {
                return Reject(
                    RejectCode::DeploymentInProgress,
                    format!("deployment {a} is in progress; retry when it ends"),
                );
            }
            let Some((id, phase, _)) =
                last.filter(|(l, _, _)| deployment_id.is_none_or(|d| d == l))
            else {
                return unknown(deployment_id);
            };
            if !matches!(phase, Phase::RolledBack | Phase::Failed) {
                return Reject(
                    RejectCode::InvalidTransition,
                    format!(
                        "{id} is {phase}; only rolled-back or failed deployments can be retried"
                    ),
                );
            }
            let image = cx.state.last.as_ref().map(|d| d.to_image.clone());
            if let Some(image) = image {
                start(
                    cx,
                    image,
                    who.clone(),
                    Some(format!("retry of {id} by {who}{because}")),
                    Some(id),
                );
            }
            return Applied;
        }
        Action::Rollback if active_id.is_none() || deployment_id.is_some_and(names_last) => {
            let Some((id, phase, warm)) =
                last.filter(|(l, _, _)| deployment_id.is_none_or(|d| d == l))
            else {
                return unknown(deployment_id);
            };
            if active_id.is_some() {
                return Reject(
                    RejectCode::DeploymentInProgress,
                    format!("{id} can only be rolled back while no other deployment runs"),
                );
            }
            let warm = warm.is_some_and(|t| cx.now < t);
            if phase != Phase::Succeeded || !warm {
                return Reject(
                    RejectCode::InvalidTransition,
                    format!(
                        "{id} is {phase} and its old colour is no longer warm; deploy the previous image instead"
                    ),
                );
            }
            let Some(mut d) = cx.state.last.take() else {
                return unknown(deployment_id);
            };
            begin_rollback(
                cx,
                &mut d,
                format!("rollback after success requested by {who}{because}"),
            );
            cx.settle(d);
            return Applied;
        }
        _ => {}
    }

    let Some(active) = active_id else {
        return Reject(
            RejectCode::UnknownDeployment,
            format!(
                "{} has no active deployment to {}",
                cx.state.service,
                action.as_str()
            ),
        );
    };
    if let Some(id) = deployment_id.filter(|id| *id != active) {
        return if names_last(id) {
            Reject(
                RejectCode::UnknownDeployment,
                format!("deployment {id} has already finished"),
            )
        } else {
            unknown(Some(id))
        };
    }
    with_active(cx, &active, |cx, d| operate(cx, d, action, &who, &because))
}

fn unknown(id: Option<&str>) -> Verdict {
    Reject(
        RejectCode::UnknownDeployment,
        match id {
            Some(id) => format!("deployment {id} is unknown or finished"),
            None => "there is no deployment to act on".into(),
        },
    )
}

fn operate(
    cx: &mut Cx<'_>,
    d: &mut Deployment,
    action: Action,
    who: &str,
    because: &str,
) -> Verdict {
    let not_now = |d: &Deployment| {
        Reject(
            RejectCode::InvalidTransition,
            format!(
                "{} is not possible while {} is {}{}",
                action.as_str(),
                d.id,
                d.phase,
                if d.is_paused() { " (paused)" } else { "" }
            ),
        )
    };
    match action {
        Action::Promote { skip_bake } => {
            if d.is_paused() {
                return not_now(d);
            }
            match d.phase {
                Phase::Shifting => {
                    d.skip_bake |= skip_bake;
                    let last = d.plan.steps.len().saturating_sub(1);
                    let untimed =
                        matches!(d.current_step().map(|s| s.hold), Some(Hold::UntilPromote));
                    if untimed || d.step >= last {
                        next_step(cx, d);
                    } else {
                        enter_step(cx, d, last);
                    }
                }
                Phase::Baking if skip_bake => {
                    d.skip_bake = true;
                    begin_finalizing(cx, d);
                }
                _ => return not_now(d),
            }
        }
        Action::Approve => {
            if d.phase != Phase::AwaitingApproval || d.is_paused() {
                return not_now(d);
            }
            enter_step(cx, d, 0);
        }
        Action::Pause => {
            if d.is_paused() || matches!(d.phase, Phase::RollingBack) {
                return not_now(d);
            }
            d.paused_at = Some(cx.now);
            let phase = d.phase;
            cx.emit(
                d,
                EventKind::PhaseChanged,
                phase,
                Some(format!("paused by {who}{because}")),
            );
        }
        Action::Resume => {
            let Some(paused_at) = d.paused_at else {
                return not_now(d);
            };
            let paused_ms = cx.now.since(paused_at);
            d.paused_at = None;
            d.deadline = d.deadline.map(|t| t.plus_ms(paused_ms));
            if let Some(t) = d.next_tick {
                let due = t.due.plus_ms(paused_ms).max(cx.now);
                cx.schedule(d, due);
            }
            let phase = d.phase;
            cx.emit(
                d,
                EventKind::PhaseChanged,
                phase,
                Some(format!("resumed by {who}{because}")),
            );
            if d.phase == Phase::Testing && checks_passed(d) {
                after_testing(cx, d);
            }
        }
        Action::Abort | Action::Rollback => {
            if d.phase == Phase::RollingBack {
                return not_now(d);
            }
            let verb = if action == Action::Abort {
                "aborted"
            } else {
                "rollback requested"
            };
            begin_rollback(cx, d, format!("{verb} by {who}{because}"));
        }
        Action::Retry => return not_now(d),
    }
    Applied
}

// ---------------------------------------------------------------------------------------
// Reconciler

fn on_reconcile(cx: &mut Cx<'_>) -> Verdict {
    let grace = duration_ms(cx.settings.timeouts.reconcile_grace);
    let now = cx.now;
    let overdue = |d: &Deployment| {
        d.next_tick
            .is_some_and(|t| !d.is_paused() && now.since(t.due) > grace)
    };
    let mut redriven = Vec::new();
    if let Some(d) = cx.state.active.as_ref().filter(|d| overdue(d)) {
        cx.effects.extend(ensure_effects(cx.settings, d));
        redriven.extend(d.pending_key());
    }
    if let Some(d) = cx.state.last.as_ref().filter(|d| overdue(d)) {
        redriven.extend(d.pending_key());
    }
    if redriven.is_empty() {
        return Ignore(IgnoreCode::NothingOverdue, "no tick is overdue".into());
    }
    for tick in redriven {
        cx.effects.push(Effect::ScheduleTick { tick, due: now });
    }
    Applied
}

/// The idempotent effects that establish the current step's desired world; re-run when
/// a tick went missing (for example after a crash between commit and effects).
fn ensure_effects(settings: &ServiceSettings, d: &Deployment) -> Vec<Effect> {
    let id = || d.id.clone();
    let test = |color: Color| {
        settings.has_test_listener.then(|| Effect::SetTestWeights {
            deployment_id: d.id.clone(),
            weights: Weights::all(color),
        })
    };
    match d.phase {
        Phase::Provisioning => vec![Effect::RegisterRevision {
            deployment_id: id(),
            template: d.stable,
            image: d.to_image.pinned(),
        }],
        Phase::WaitingForGreen => d
            .revision
            .iter()
            .map(|arn| Effect::UpdateService {
                deployment_id: id(),
                color: d.target,
                task_definition: arn.clone(),
                match_count_of: d.stable,
            })
            .collect(),
        Phase::Testing => {
            let http: Vec<Check> = d
                .plan
                .checks
                .iter()
                .filter(|c| {
                    matches!(c, Check::Http { .. })
                        && !d.checks_passed.iter().any(|p| p == c.name())
                })
                .cloned()
                .collect();
            let run = (!http.is_empty()).then(|| Effect::RunValidations {
                deployment_id: id(),
                cursor: d.cursor,
                checks: http,
            });
            test(d.target).into_iter().chain(run).collect()
        }
        Phase::Shifting | Phase::Baking => vec![Effect::SetProductionWeights {
            deployment_id: id(),
            weights: d.weights,
        }],
        Phase::Finalizing => std::iter::once(Effect::SetProductionWeights {
            deployment_id: id(),
            weights: d.weights,
        })
        .chain(test(d.target))
        .collect(),
        Phase::RollingBack => std::iter::once(Effect::SetProductionWeights {
            deployment_id: id(),
            weights: Weights::all(d.stable),
        })
        .chain(test(d.stable))
        .chain(std::iter::once(Effect::ScaleToZero {
            deployment_id: id(),
            color: d.target,
        }))
        .collect(),
        Phase::Requested
        | Phase::AwaitingApproval
        | Phase::Succeeded
        | Phase::RolledBack
        | Phase::Failed => Vec::new(),
    }
}
