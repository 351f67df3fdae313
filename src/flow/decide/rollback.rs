//! The way back: rollback alarms, stage timeouts, failed effects, and the rollback path
//! itself (production to 100 % on the known-good colour first, in one call).

use super::{Applied, Cx, Ignore, Verdict, at_cursor, with_active};
use crate::flow::effect::{EventKind, IgnoreCode};
use crate::flow::input::{AlarmState, Observations};
use crate::flow::model::{Deployment, Phase, Rollback, Timestamp, Weights};

/// Starts a rollback: production to 100 % known-good first, then the test rule, then the
/// failed colour to zero. Jumps any timer: the pending tick is replaced by one due now.
pub(super) fn begin_rollback(cx: &mut Cx<'_>, d: &mut Deployment, reason: String) {
    d.rollback = Some(Rollback {
        reason: reason.clone(),
        from_phase: d.phase,
        failures: 0,
        rerun: false,
        at: Some(cx.now),
        by_alarm: false,
    });
    d.paused_at = None;
    d.warm_until = None;
    d.finished_at = None;
    d.served_at = None;
    d.unreadable_since = None;
    if cx.state.live != d.stable {
        cx.state.live = d.stable;
        cx.state.live_image = d.from_image.clone();
        // What the old colour runs is taken as what it should at the next look.
        cx.state.live_revision = None;
        cx.state.capacity_drift.clear();
    }
    d.weights = Weights::all(d.stable);
    cx.enter(d, Phase::RollingBack, EventKind::RollingBack, Some(reason));
    cx.establish(d);
    let now = cx.now;
    cx.schedule(d, now);
}

/// Marks `d`'s rollback as begun by a rollback alarm.
pub(super) fn by_alarm(d: &mut Deployment) {
    if let Some(r) = d.rollback.as_mut() {
        r.by_alarm = true;
    }
}

/// Rolls back because a stage's deadline passed.
pub(super) fn timed_out(
    cx: &mut Cx<'_>,
    d: &mut Deployment,
    what: &str,
    limit: std::time::Duration,
) {
    let reason = format!("{what} within {}", humantime::format_duration(limit));
    begin_rollback(cx, d, reason);
}

/// Whether a firing rollback alarm observed on a tick rolls `d` back now.
pub(super) fn alarm_gated(d: &Deployment) -> bool {
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

pub(super) fn on_alarm(
    cx: &mut Cx<'_>,
    alarm: &str,
    state: AlarmState,
    reason: Option<&str>,
    changed_at: Option<Timestamp>,
    observed: &Observations,
) -> Verdict {
    if state != AlarmState::Alarm {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("alarm {alarm} changed to {state:?}; only ALARM rolls back"),
        );
    }
    if !cx.settings.all_rollback_alarms().iter().any(|a| a == alarm) {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!("{alarm} is not a rollback alarm of {}", cx.state.service),
        );
    }
    let now = cx.now;
    // The deployment the alarm rolls back: the active one, or (policy) the last one while
    // its old colour is still warm.
    let (id, started_at, active) = match (&cx.state.active, &cx.state.last) {
        (Some(a), _) if matches!(a.phase, Phase::RollingBack) || a.phase.is_terminal() => {
            return Ignore(
                IgnoreCode::NotApplicable,
                format!("{} is already {}", a.id, a.phase),
            );
        }
        (Some(a), _) => (a.id.clone(), a.started_at, true),
        (None, Some(l)) if cx.settings.rollback_while_warm && is_warm(l, now) => {
            (l.id.clone(), l.started_at, false)
        }
        _ => {
            return Ignore(
                IgnoreCode::NotApplicable,
                format!(
                    "{} has no active deployment, nor one whose old colour is warm",
                    cx.state.service
                ),
            );
        }
    };
    // One colour's own alarm rolls back only a deployment to that colour: the live
    // colour in ALARM never blocks the fix deployed to the other one.
    let target = cx.state.deployment(&id).map_or(cx.state.live, |d| d.target);
    if !cx.settings.rolls_back(alarm, target) {
        return Ignore(
            IgnoreCode::NotApplicable,
            format!(
                "{alarm} watches {}, not {target}, which {id} deploys to: it never blocks a deployment to the other colour",
                cx.settings
                    .color_alarms
                    .color_of(alarm)
                    .unwrap_or(target.other())
            ),
        );
    }
    // An alarm that entered ALARM before the deployment started concerns an earlier one
    // (a delivery delayed past that deployment's end): it rolls this one back only if it
    // still reads ALARM now.
    if let Some(at) = changed_at.filter(|at| *at < started_at) {
        let firing = observed.alarms_firing.as_ref();
        if !firing.is_some_and(|f| f.iter().any(|a| a == alarm)) {
            let now_reads = if firing.is_some() {
                "it is not in ALARM now"
            } else {
                "its state could not be read now"
            };
            return Ignore(
                IgnoreCode::NotApplicable,
                format!(
                    "alarm {alarm} entered ALARM at {at}, before {id} started at {started_at}, and {now_reads}: it concerns an earlier deployment"
                ),
            );
        }
    }
    let why = match reason {
        Some(r) => format!("rollback alarm {alarm} in ALARM: {r}"),
        None => format!("rollback alarm {alarm} in ALARM"),
    };
    if !active {
        let Some(mut d) = cx.state.last.take() else {
            return Ignore(IgnoreCode::Stale, format!("unknown deployment {id}"));
        };
        let reason = format!("{why}, while {} was still warm", d.stable);
        begin_rollback(cx, &mut d, reason);
        by_alarm(&mut d);
        cx.settle(d);
        return Applied;
    }
    with_active(cx, &id, |cx, d| {
        begin_rollback(cx, d, why);
        by_alarm(d);
        Applied
    })
}

/// Whether `d` succeeded and its old colour is still warm: it can still be rolled back.
pub(super) fn is_warm(d: &Deployment, now: Timestamp) -> bool {
    d.phase == Phase::Succeeded && d.warm_until.is_some_and(|t| now < t)
}

pub(super) fn on_effect_failed(
    cx: &mut Cx<'_>,
    id: &str,
    cursor: u32,
    effect: &str,
    reason: &str,
) -> Verdict {
    if effect == "schedule-tick" {
        return Ignore(
            IgnoreCode::NotApplicable,
            "a tick that could not be sent is re-sent by the reconciler".into(),
        );
    }
    let d = match at_cursor(&cx.state, id, cursor, &format!("the {effect} failure")) {
        Ok(d) => d,
        Err(stale) => return stale,
    };
    let releasing = effect == "scale-to-zero" && d.warm_until.is_none() && d.next_tick.is_none();
    if d.phase == Phase::Succeeded && releasing {
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
        // A write-back of drifted weights while idle fails here too: the reconciler
        // finds the drift again on its next run.
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
