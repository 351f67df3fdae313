//! A due tick: the per-phase table of what happens next, decided on what the worker
//! read just before (alarms, target health, the production rule), and weight drift
//! (SPEC §4 invariant 10).

use super::{Applied, Cx, Ignore, Verdict, forward, rollback, start, with_active};
use crate::flow::effect::{Effect, EventKind, IgnoreCode};
use crate::flow::input::{Observations, ProductionRules, RuleWeights, TickKey};
use crate::flow::model::{Color, Deployment, Hold, Phase, Weights};
use crate::flow::settings::{DriftPolicy, ServiceSettings, UnreadablePolicy};

pub(super) fn on_tick(cx: &mut Cx<'_>, tick: &TickKey, observed: &Observations) -> Verdict {
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
        return forward::release_old_color(cx, &tick.deployment_id, observed);
    }
    with_active(cx, &tick.deployment_id, |cx, d| {
        if let Some(alarms) = firing(observed, cx.settings, d.target).filter(|a| !a.is_empty())
            && rollback::alarm_gated(d)
        {
            let reason = if d.phase == Phase::Requested {
                format!(
                    "blocked: rollback alarm(s) {} in ALARM when the deployment started",
                    alarms.join(", ")
                )
            } else {
                format!("rollback alarm(s) {} in ALARM", alarms.join(", "))
            };
            rollback::begin_rollback(cx, d, reason);
            rollback::by_alarm(d);
            return Applied;
        }
        if d.phase == Phase::Requested && d.is_switch() {
            // A switch moves every rule wherever they stand: no start checks.
            start::begin_switch(cx, d);
            return Applied;
        }
        if d.phase == Phase::Requested {
            start::start_checks(cx, d, observed);
            return Applied;
        }
        if let Some(why) = unreadable(d, observed) {
            blind(cx, d, &why);
            return Applied;
        }
        d.unreadable_since = None;
        if judge_rule(cx, d, observed) {
            step(cx, d, observed);
        }
        Applied
    })
}

/// What this tick needed to read and could not, in the phases whose next move may shift
/// traffic: the production rule (no step is written on a failed read) and the rollback
/// alarms (checked before every step). `None` when everything needed was read.
fn unreadable(d: &Deployment, observed: &Observations) -> Option<String> {
    let untimed = matches!(d.current_step().map(|s| s.hold), Some(Hold::UntilPromote));
    let gated = matches!(
        d.phase,
        Phase::WaitingForGreen | Phase::Testing | Phase::Baking
    ) || (d.phase == Phase::Shifting && !untimed);
    if !gated {
        return None;
    }
    let errors = if observed.read_errors.is_empty() {
        String::new()
    } else {
        format!(" ({})", observed.read_errors.join("; "))
    };
    let mut missing = Vec::new();
    if observed.alarms_firing.is_none() {
        missing.push("the rollback alarm states could not be read".to_string());
    }
    match &observed.production {
        Some(Ok(_)) => {}
        Some(Err(why)) => missing.push(format!(
            "the production rule cannot be read as blue/green: {why}"
        )),
        None => missing.push("the production rule could not be read".to_string()),
    }
    (!missing.is_empty()).then(|| format!("{}{errors}", missing.join(" and ")))
}

/// Waits (a poll interval at a time) for what could not be read, at most
/// `timeouts.unreadable` from the first failed read, and never past the stage's own
/// deadline; then rolls back or pauses as `on_unreadable` says, with an event naming what
/// could not be read and why (SPEC §4 invariant 14).
fn blind(cx: &mut Cx<'_>, d: &mut Deployment, why: &str) {
    let now = cx.now;
    let since = *d.unreadable_since.get_or_insert(now);
    let limit = since.plus(cx.settings.timeouts.unreadable);
    let end = d.deadline.map_or(limit, |t| t.min(limit));
    if now < end {
        cx.poll(d);
        return;
    }
    d.unreadable_since = None;
    let waited =
        humantime::format_duration(std::time::Duration::from_secs(now.since(since) / 1000));
    let policy = cx.settings.on_unreadable;
    let reason = format!("{why}, for {waited} (on_unreadable = {})", policy.as_str());
    match policy {
        UnreadablePolicy::Rollback => rollback::begin_rollback(cx, d, reason),
        UnreadablePolicy::Pause => {
            d.paused_at = Some(now);
            let phase = d.phase;
            cx.emit(
                d,
                EventKind::PhaseChanged,
                phase,
                Some(format!("paused: {reason}")),
            );
        }
    }
}

/// What a due tick does in each phase once alarms and the rule have been judged.
fn step(cx: &mut Cx<'_>, d: &mut Deployment, observed: &Observations) {
    let now = cx.now;
    let timeouts = cx.settings.timeouts.clone();
    match d.phase {
        // Waiting for an effect's result (the registered revision): register again (it
        // finds an earlier registration) until the deadline, in case the result was lost.
        Phase::Provisioning => {
            if d.deadline.is_some_and(|t| now >= t) {
                rollback::timed_out(cx, d, "task definition not registered", timeouts.provision);
            } else {
                cx.establish(d);
                cx.poll(d);
            }
        }
        Phase::WaitingForGreen => match &observed.target_health {
            // The alarms were read (an unread alarm state holds the tick before this).
            Some(h) if h.is_ready(d.revision.as_deref()) => {
                forward::after_green(cx, d);
            }
            // A switch keeps what the colour runs: steady and healthy is enough.
            Some(h) if d.is_switch() && h.is_steady() => forward::after_green(cx, d),
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
                let reason = if d.is_switch() {
                    format!(
                        "switch refused: {} not healthy within {} ({detail}); production stays on {}; `switch --force` moves anyway",
                        d.target,
                        humantime::format_duration(timeouts.green),
                        d.stable
                    )
                } else {
                    format!(
                        "{} colour not healthy within {} ({detail})",
                        d.target,
                        humantime::format_duration(timeouts.green)
                    )
                };
                rollback::begin_rollback(cx, d, reason);
            }
            _ => cx.poll(d),
        },
        Phase::Testing => {
            if forward::checks_passed(d) {
                forward::after_testing(cx, d);
            } else if d.deadline.is_some_and(|t| now >= t) {
                rollback::timed_out(cx, d, "validations did not pass", timeouts.testing);
            } else {
                // Run the checks whose results are missing again (a lost result, a
                // worker that died), until they pass or the deadline.
                cx.establish(d);
                cx.poll(d);
            }
        }
        Phase::AwaitingApproval => {
            rollback::timed_out(cx, d, "not approved", timeouts.approval);
        }
        Phase::Shifting => match d.current_step().map(|s| s.hold) {
            Some(Hold::UntilPromote) => {
                rollback::timed_out(cx, d, "not promoted", timeouts.promote);
            }
            Some(Hold::Timed(ms)) => served_then(cx, d, ms, forward::next_step),
            None => forward::next_step(cx, d),
        },
        Phase::Baking => {
            let bake = d.plan.bake_ms;
            served_then(cx, d, bake, forward::begin_finalizing);
        }
        Phase::Finalizing => forward::succeed(cx, d),
        Phase::RollingBack => {
            let rerun = d.rollback.as_ref().is_some_and(|r| r.rerun);
            if rerun {
                if let Some(r) = d.rollback.as_mut() {
                    r.rerun = false;
                }
                cx.establish(d);
                cx.schedule(d, now);
            } else {
                let reason = d.rollback.as_ref().map(|r| r.reason.clone());
                cx.enter(d, Phase::RolledBack, EventKind::RolledBack, reason);
            }
        }
        // Requested is judged by the start checks; terminal phases have no active tick.
        Phase::Requested | Phase::Succeeded | Phase::RolledBack | Phase::Failed => {}
    }
}

/// A step (or the bake) moves on with `next` only once its weights have been served for
/// its whole hold of `hold_ms`, counted from their confirmation by a read-back (SPEC §4
/// invariant 13). Weights not confirmed yet are written again, and their read-back starts
/// the hold; a tick scheduled before the confirmation waits for the hold's end.
fn served_then(
    cx: &mut Cx<'_>,
    d: &mut Deployment,
    hold_ms: u64,
    next: fn(&mut Cx<'_>, &mut Deployment),
) {
    match d.served_at {
        None => {
            cx.effects.push(Effect::SetProductionWeights {
                deployment_id: d.id.clone(),
                weights: d.weights,
            });
            cx.poll(d);
        }
        Some(at) if cx.now < at.plus_ms(hold_ms) => {
            let due = at.plus_ms(hold_ms);
            cx.schedule(d, due);
        }
        Some(_) => next(cx, d),
    }
}

/// The rollback alarms of a deployment to `target` among those observed in ALARM (the
/// other colour's own alarms never count); `None` when unread.
pub(super) fn firing(
    observed: &Observations,
    settings: &ServiceSettings,
    target: Color,
) -> Option<Vec<String>> {
    let firing: Vec<String> = observed
        .alarms_firing
        .as_ref()?
        .iter()
        .filter(|a| settings.rolls_back(a, target))
        .cloned()
        .collect();
    Some(firing)
}

/// Judges the production rules as read for `d` before a step (or a re-drive): returns
/// whether to go on. A deployment that has not read the rules yet (`Requested`) or is
/// rolling back (it writes the known-good weights anyway) is not judged.
pub(super) fn judge_rule(cx: &mut Cx<'_>, d: &mut Deployment, observed: &Observations) -> bool {
    match &observed.production {
        Some(Ok(rules)) if !matches!(d.phase, Phase::Requested | Phase::RollingBack) => {
            check_drift(cx, d, rules)
        }
        _ => true,
    }
}

/// Compares the production rules with what the worker wrote (through the rule
/// [`ProductionRules::judge`](crate::flow::ProductionRules::judge) picks). Returns whether
/// the caller goes on.
///
/// * every rule serves the weights `d` intends: fine (and a read-back whose confirmation
///   was lost in a crash is confirmed now);
/// * a rule serves the weights last confirmed and none anything else: the intended write
///   has not landed everywhere yet (a crash before or during it); the step's own write
///   follows, nothing drifted;
/// * anything else is drift: reported, then handled by the service's drift policy.
fn check_drift(cx: &mut Cx<'_>, d: &mut Deployment, rules: &ProductionRules) -> bool {
    let expected = d.weights;
    let judged = rules.judge(expected, cx.state.confirmed).clone();
    let found = judged.weights;
    let exposed = exposes_target(d, rules);
    if found == expected {
        if cx.state.confirmed != Some(found) {
            forward::confirm(cx, d, found);
        }
        return true;
    }
    if cx.state.confirmed == Some(found) {
        if !exposed {
            return true;
        }
        // Drift that sends the new colour traffic before it is updated was recorded,
        // but its write-back was lost (a crash) or someone resumed over it: nothing
        // touches that colour until the rule sends it nothing again.
        if cx.settings.drift == DriftPolicy::Reassert {
            cx.effects.push(Effect::SetProductionWeights {
                deployment_id: d.id.clone(),
                weights: expected,
            });
            return true;
        }
    }
    drifted(cx, d, expected, &judged, exposed)
}

/// Whether a production rule sends traffic to the colour `d` is about to update in place.
pub(super) fn exposes_target(d: &Deployment, rules: &ProductionRules) -> bool {
    matches!(d.phase, Phase::Provisioning | Phase::WaitingForGreen)
        && rules.rules().iter().any(|r| r.weights.of(d.target) > 0)
}

/// Records drift on `d` (the rule `found` holds what the worker did not write) and
/// carries out the policy; returns whether the caller goes on.
///
/// `report` never lets a deployment update the new colour in place while a rule sends
/// it traffic (someone switched to it by hand, `target_exposed`): that deployment is
/// paused instead.
pub(super) fn drifted(
    cx: &mut Cx<'_>,
    d: &mut Deployment,
    expected: Weights,
    found: &RuleWeights,
    target_exposed: bool,
) -> bool {
    // Production serves `found` now: a later read of the same weights is not news, and
    // the write-back below is confirmed as a shift like any other.
    cx.state.confirmed = Some(found.weights);
    let policy = cx.settings.drift;
    if policy == DriftPolicy::Reassert {
        // The step is served again only once the write-back is read back: its hold
        // starts over then.
        d.served_at = None;
    }
    let pause = !d.phase.is_terminal()
        && (policy == DriftPolicy::Pause || (policy == DriftPolicy::Report && target_exposed));
    if pause {
        d.paused_at = Some(cx.now);
    }
    cx.emit_drift(d, expected, found);
    if policy == DriftPolicy::Reassert {
        cx.effects.push(Effect::SetProductionWeights {
            deployment_id: d.id.clone(),
            weights: expected,
        });
    }
    !pause
}
