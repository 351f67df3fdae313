//! Operator actions (SPEC §3): promote, approve, pause / resume, abort, rollback (also
//! after success while the old colour is warm), retry, and the emergency switch.

use super::{Applied, Cx, Reject, Verdict, forward, rollback, start, with_active};
use crate::flow::effect::{EventKind, RejectCode};
use crate::flow::input::Action;
use crate::flow::model::{Color, Deployment, Hold, Phase, Weights};

pub(super) fn on_operator(
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
        Action::Switch { to, force } => return switch(cx, to, force, &who, &because),
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
                start::start(
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
            rollback::begin_rollback(
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

/// The emergency switch to `to`, with rollback priority. A deployment in progress whose
/// known-good colour is `to`, or a success whose old colour `to` is still warm, is rolled
/// back (production moves at once, in one call). Otherwise `to` is scaled to the live
/// count, awaited healthy (unless `force`) and given every production rule, then recorded
/// as live (a switch deployment).
fn switch(cx: &mut Cx<'_>, to: Color, force: bool, who: &str, because: &str) -> Verdict {
    let why = format!("switched to {to} by {who}{because}");
    if let Some(d) = cx.state.active.as_ref() {
        let (id, phase, stable, target) = (d.id.clone(), d.phase, d.stable, d.target);
        if phase == Phase::RollingBack {
            return Reject(
                RejectCode::InvalidTransition,
                format!(
                    "{id} is already rolling back to {stable}{}",
                    if stable == to {
                        ""
                    } else {
                        "; switch once it has ended"
                    }
                ),
            );
        }
        if to == target {
            return Reject(
                RejectCode::InvalidTransition,
                format!(
                    "{to} is the colour {id} deploys to ({phase}); `promote --skip-bake` finishes it there, or `abort` then `switch`"
                ),
            );
        }
        return with_active(cx, &id, |cx, d| {
            rollback::begin_rollback(cx, d, why);
            Applied
        });
    }
    if to == cx.state.live && !cx.state.live_observed {
        // Never read: `live` is only a default, and the switch would take the colour it
        // moves to for the one to release.
        return Reject(
            RejectCode::InvalidTransition,
            format!(
                "{} has never had its production rule read (no deployment yet), so its live colour is not known; deploy first, or move the rule by hand",
                cx.state.service
            ),
        );
    }
    if to == cx.state.live {
        let all = cx.state.confirmed == Some(Weights::all(to));
        return Reject(
            RejectCode::AlreadyDeployed,
            format!(
                "{to} is already the live colour{}",
                if all {
                    " and every production rule serves it"
                } else {
                    "; the reconciler puts every production rule back on it (drift policy)"
                }
            ),
        );
    }
    let warm = cx
        .state
        .last
        .as_ref()
        .is_some_and(|l| l.stable == to && rollback::is_warm(l, cx.now));
    if warm && let Some(mut d) = cx.state.last.take() {
        rollback::begin_rollback(cx, &mut d, why);
        cx.settle(d);
        return Applied;
    }
    start::start_switch(cx, to, force, who.to_string(), why);
    Applied
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
                        forward::next_step(cx, d);
                    } else {
                        forward::enter_step(cx, d, last);
                    }
                }
                Phase::Baking if skip_bake => {
                    d.skip_bake = true;
                    forward::begin_finalizing(cx, d);
                }
                _ => return not_now(d),
            }
        }
        Action::Approve => {
            if d.phase != Phase::AwaitingApproval || d.is_paused() {
                return not_now(d);
            }
            forward::enter_step(cx, d, 0);
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
            if d.phase == Phase::Testing && forward::checks_passed(d) {
                forward::after_testing(cx, d);
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
            rollback::begin_rollback(cx, d, format!("{verb} by {who}{because}"));
        }
        Action::Retry | Action::Switch { .. } => return not_now(d),
    }
    Applied
}
