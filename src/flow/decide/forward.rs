//! The forward path: provisioning → waiting for green → testing → approval → shifting →
//! baking → finalizing → succeeded, the old colour's release, and traffic read-backs
//! (`Traffic Shifted` is announced only for weights read back from the rule).

use super::{Applied, Cx, Ignore, Verdict, at_cursor, rollback, tick, with_deployment};
use crate::flow::effect::{Effect, EventKind, IgnoreCode};
use crate::flow::input::{CheckOutcome, Observations};
use crate::flow::model::{Deployment, Hold, LiveRevision, Phase, Weights};
use crate::flow::settings::{Check, DriftPolicy};

pub(super) fn begin_provisioning(cx: &mut Cx<'_>, d: &mut Deployment) {
    cx.enter(d, Phase::Provisioning, EventKind::PhaseChanged, None);
    d.deadline = Some(cx.now.plus(cx.settings.timeouts.provision));
    cx.establish(d);
    cx.poll(d);
}

pub(super) fn on_revision(cx: &mut Cx<'_>, d: &mut Deployment, arn: &str) -> Verdict {
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
    cx.establish(d);
    d.deadline = Some(cx.now.plus(cx.settings.timeouts.green));
    cx.poll(d);
    Applied
}

pub(super) fn after_green(cx: &mut Cx<'_>, d: &mut Deployment) {
    if d.plan.checks.is_empty() {
        after_testing(cx, d);
        return;
    }
    d.checks_passed.clear();
    cx.enter(d, Phase::Testing, EventKind::PhaseChanged, None);
    cx.establish(d);
    d.deadline = Some(cx.now.plus(cx.settings.timeouts.testing));
    cx.poll(d);
}

pub(super) fn checks_passed(d: &Deployment) -> bool {
    d.plan
        .checks
        .iter()
        .all(|c| d.checks_passed.iter().any(|p| p == c.name()))
}

pub(super) fn on_validations(
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

pub(super) fn on_hook(
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
            rollback::begin_rollback(cx, d, format!("validation {name} failed: {detail}"));
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

pub(super) fn after_testing(cx: &mut Cx<'_>, d: &mut Deployment) {
    if d.plan.approval {
        cx.enter(
            d,
            Phase::AwaitingApproval,
            EventKind::AwaitingApproval,
            Some("waiting for approve".into()),
        );
        cx.establish(d);
        let deadline = cx.now.plus(cx.settings.timeouts.approval);
        d.deadline = Some(deadline);
        cx.schedule(d, deadline);
    } else {
        enter_step(cx, d, 0);
    }
}

/// Moves to shifting step `index` (or the bake after the last). The step's weights are
/// announced as `Traffic Shifted` once they are read back from the rule.
pub(super) fn enter_step(cx: &mut Cx<'_>, d: &mut Deployment, index: usize) {
    let Some(step) = d.plan.steps.get(index).copied() else {
        begin_baking(cx, d);
        return;
    };
    let previous = d.phase;
    d.phase = Phase::Shifting;
    d.step = index;
    d.cursor += 1;
    d.deadline = None;
    d.weights = Weights::split(d.target, step.percent);
    if previous != Phase::Shifting {
        cx.emit(d, EventKind::PhaseChanged, previous, None);
    }
    cx.establish(d);
    begin_hold(cx, d);
}

/// Starts the hold of the step (or bake) just entered: at once when production already
/// serves its weights, else once their write is read back ([`confirm`]). Until then a
/// provisional tick waits a whole hold; it moves nothing on unconfirmed weights.
fn begin_hold(cx: &mut Cx<'_>, d: &mut Deployment) {
    d.served_at = None;
    if cx.state.confirmed == Some(d.weights) {
        serve(cx, d);
    } else {
        schedule_hold(cx, d);
    }
}

/// Production serves the current step's (or the bake's) weights from now on: the hold
/// counts from here.
fn serve(cx: &mut Cx<'_>, d: &mut Deployment) {
    d.served_at = Some(cx.now);
    schedule_hold(cx, d);
}

/// Schedules the tick that ends the current hold, counted from now.
fn schedule_hold(cx: &mut Cx<'_>, d: &mut Deployment) {
    let hold = if d.phase == Phase::Baking {
        Hold::Timed(d.plan.bake_ms)
    } else {
        d.current_step().map_or(Hold::Timed(0), |s| s.hold)
    };
    match hold {
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

/// Moves to the next step, or to the bake after the last.
pub(super) fn next_step(cx: &mut Cx<'_>, d: &mut Deployment) {
    enter_step(cx, d, d.step + 1);
}

fn begin_baking(cx: &mut Cx<'_>, d: &mut Deployment) {
    if d.skip_bake {
        begin_finalizing(cx, d);
        return;
    }
    // Baking re-asserts 100 %: the last step's write may have been lost in a crash, and
    // an operator's promote can move on before the reconciler re-drives it.
    d.weights = Weights::all(d.target);
    cx.enter(d, Phase::Baking, EventKind::PhaseChanged, None);
    cx.establish(d);
    begin_hold(cx, d);
}

pub(super) fn begin_finalizing(cx: &mut Cx<'_>, d: &mut Deployment) {
    cx.state.live = d.target;
    // A switch to a colour whose image the state never knew leaves it unknown.
    cx.state.live_image = d.to_image.digest.is_some().then(|| d.to_image.pinned());
    cx.state.live_revision = d.revision.clone().map(|task_definition| LiveRevision {
        color: d.target,
        task_definition,
        desired: 0,
    });
    cx.state.capacity_drift.clear();
    d.weights = Weights::all(d.target);
    cx.enter(d, Phase::Finalizing, EventKind::PhaseChanged, None);
    cx.establish(d);
    let now = cx.now;
    cx.schedule(d, now);
}

pub(super) fn succeed(cx: &mut Cx<'_>, d: &mut Deployment) {
    let warm_until = cx.now.plus_ms(d.plan.termination_wait_ms);
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

/// The termination wait is over: the old colour is scaled to zero, unless the rule as
/// read sends it traffic (someone moved production back to it): then that drift is
/// reported and, unless the policy writes the live colour's weights back first, the old
/// colour stays warm and is looked at again after a poll interval.
pub(super) fn release_old_color(cx: &mut Cx<'_>, id: &str, observed: &Observations) -> Verdict {
    let Some(mut d) = cx.state.last.take_if(|d| d.id == id) else {
        return Ignore(
            IgnoreCode::Stale,
            format!("deployment {id} is not the last one"),
        );
    };
    // An alarm while the old colour is still warm rolls back, like one during the bake.
    let firing = tick::firing(observed, cx.settings, d.target).filter(|a| !a.is_empty());
    if let Some(alarms) = firing.filter(|_| cx.settings.rollback_while_warm) {
        let reason = format!(
            "rollback alarm(s) {} in ALARM before {} was released",
            alarms.join(", "),
            d.stable
        );
        rollback::begin_rollback(cx, &mut d, reason);
        rollback::by_alarm(&mut d);
        cx.settle(d);
        return Applied;
    }
    let expected = Weights::all(cx.state.live);
    let Some(Ok(rules)) = &observed.production else {
        // The old colour is released only on a read of the rule that shows it carries
        // nothing: keep it warm and look again after a poll interval.
        let due = cx.now.plus_ms(cx.poll_ms());
        d.warm_until = Some(due);
        cx.schedule(&mut d, due);
        cx.state.last = Some(d);
        return Applied;
    };
    let found = rules.judge(expected, cx.state.confirmed);
    if found.weights.of(d.stable) > 0 {
        if cx.state.confirmed != Some(found.weights) {
            tick::drifted(cx, &mut d, expected, found, false);
        }
        if cx.settings.drift != DriftPolicy::Reassert {
            let due = cx.now.plus_ms(cx.poll_ms());
            d.warm_until = Some(due);
            cx.schedule(&mut d, due);
            cx.state.last = Some(d);
            return Applied;
        }
    }
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

/// A production write of the decision at `cursor` was read back as `weights`.
pub(super) fn on_confirmed(cx: &mut Cx<'_>, id: &str, cursor: u32, weights: Weights) -> Verdict {
    if let Err(stale) = at_cursor(&cx.state, id, cursor, "the read-back") {
        return stale;
    }
    if cx.state.confirmed == Some(weights) {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("production already serves {weights}"),
        );
    }
    with_deployment(cx, id, |cx, d| {
        confirm(cx, d, weights);
        Applied
    })
}

/// Production serves `weights` now: remember it and announce the shift.
pub(super) fn confirm(cx: &mut Cx<'_>, d: &mut Deployment, weights: Weights) {
    cx.state.confirmed = Some(weights);
    let reason = match d.phase {
        Phase::Shifting => format!(
            "step {}/{}: {}% to {}",
            d.step + 1,
            d.plan.steps.len(),
            weights.of(d.target),
            d.target
        ),
        Phase::RollingBack | Phase::RolledBack | Phase::Failed => {
            format!("{}% back on {}", weights.of(d.stable), d.stable)
        }
        _ => format!("production serves {weights}"),
    };
    let phase = d.phase;
    cx.emit(d, EventKind::TrafficShifted, phase, Some(reason));
    if weights == d.weights && matches!(d.phase, Phase::Shifting | Phase::Baking) {
        serve(cx, d);
    }
}
