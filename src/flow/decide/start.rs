//! Deploy requests, the concurrency policy, and the start checks a deployment passes in
//! `Requested` before anything is touched: the live colour read from the production rule
//! (SPEC §4 invariant 9) and the rollback alarms.

use super::{Applied, Cx, Reject, Verdict, forward, rollback};
use crate::flow::effect::{Effect, EventKind, RejectCode};
use crate::flow::input::Observations;
use crate::flow::model::{
    Color, Deployment, Hold, ImageRef, Phase, Plan, QueuedImage, Step, SwitchOrder, Weights,
};
use crate::flow::settings::Concurrency;

pub(super) fn on_deploy(
    cx: &mut Cx<'_>,
    image: &ImageRef,
    requested_by: &str,
    reason: Option<&str>,
    unresolved: Option<&str>,
) -> Verdict {
    if image.digest.is_none() {
        return match unresolved {
            Some(why) => Reject(
                RejectCode::ImageNotFound,
                format!(
                    "image {} cannot be resolved to a digest: {why}",
                    image.pinned()
                ),
            ),
            None => Reject(
                RejectCode::UnpinnedImage,
                format!(
                    "image {} is not pinned by digest; resolve the tag first",
                    image.pinned()
                ),
            ),
        };
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
        request: Some(cx.request.clone()),
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
                rollback::begin_rollback(cx, &mut d, format!("superseded by {pinned}"));
            }
            cx.settle(d);
            Applied
        }
    }
}

/// Creates a deployment in `Requested` and schedules its first tick now. Its colours are
/// provisional until the start checks read the production rule.
pub(super) fn start(
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
        served_at: None,
        unreadable_since: None,
        request: Some(cx.request.clone()).filter(|k| !k.is_empty()),
        switch: None,
    };
    cx.emit(&mut d, EventKind::Started, Phase::Requested, reason);
    let now = cx.now;
    cx.schedule(&mut d, now);
    cx.state.active = Some(d);
}

/// Creates an emergency switch to `to`: a deployment that registers nothing and keeps
/// what `to` runs. Its first tick scales `to` to the live count (see [`begin_switch`]).
pub(super) fn start_switch(
    cx: &mut Cx<'_>,
    to: Color,
    force: bool,
    requested_by: String,
    reason: String,
) {
    // The image `to` runs, as far as the state knows: the last deployment's new image if
    // it went there, its old one if it came from there.
    let known = cx.state.last.as_ref().and_then(|l| {
        if l.target == to {
            Some(l.to_image.pinned())
        } else {
            l.from_image.clone()
        }
    });
    let image = match known.as_deref().and_then(|p| p.split_once('@')) {
        Some((repository, digest)) => ImageRef {
            repository: repository.to_string(),
            digest: Some(digest.to_string()),
            tag: None,
        },
        None => ImageRef {
            repository: format!("(what {to} runs)"),
            digest: None,
            tag: None,
        },
    };
    start(cx, image, requested_by, Some(reason), None);
    if let Some(d) = cx.state.active.as_mut() {
        d.switch = Some(SwitchOrder { force });
        d.target = to;
        d.skip_bake = true;
        d.plan = Plan {
            steps: vec![Step {
                percent: 100,
                hold: Hold::Timed(0),
            }],
            bake_ms: 0,
            termination_wait_ms: d.plan.termination_wait_ms,
            approval: false,
            checks: Vec::new(),
        };
    }
}

/// A switch's first tick (the target colour's rollback alarms were judged before):
/// scales the target colour to the live count and waits until it is healthy, or, forced,
/// moves every production rule at once.
pub(super) fn begin_switch(cx: &mut Cx<'_>, d: &mut Deployment) {
    let force = d.switch.is_some_and(|s| s.force);
    if force {
        cx.effects.push(Effect::ScaleUp {
            deployment_id: d.id.clone(),
            color: d.target,
            match_count_of: d.stable,
        });
        forward::enter_step(cx, d, 0);
        return;
    }
    cx.enter(
        d,
        Phase::WaitingForGreen,
        EventKind::PhaseChanged,
        Some(format!(
            "scaling {} to the live count; it takes production once its targets are healthy",
            d.target
        )),
    );
    cx.establish(d);
    d.deadline = Some(cx.now.plus(cx.settings.timeouts.green));
    cx.poll(d);
}

/// The start checks, on `Requested`'s tick (rollback alarms were judged before): every
/// production rule must serve the same single colour, and the one the stored state says
/// is live; a service seen for the first time adopts what the rules serve.
pub(super) fn start_checks(cx: &mut Cx<'_>, d: &mut Deployment, observed: &Observations) {
    let rules = match &observed.production {
        Some(Ok(rules)) => rules,
        Some(Err(why)) => {
            return refuse(
                cx,
                d,
                format!("refused: the production rule cannot be read as blue/green: {why}"),
            );
        }
        None => return hold(cx, d, "the production rule could not be read"),
    };
    let rule = rules.describe();
    let Some(found) = rules.agreed() else {
        return refuse(
            cx,
            d,
            format!(
                "refused: the production rules disagree: {rule}; a deployment starts only when they all serve one colour"
            ),
        );
    };
    let rule = rules
        .rules()
        .iter()
        .map(|r| r.rule.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(serving) = found.sole_color() else {
        return refuse(
            cx,
            d,
            format!(
                "refused: the production rule {rule} is split ({found}); a deployment starts only from a rule that serves one colour"
            ),
        );
    };
    if cx.state.live_observed && serving != cx.state.live {
        return refuse(
            cx,
            d,
            format!(
                "refused: the production rule {rule} serves {found}, but {} is the live colour as last written; fix the rule or roll it back before deploying",
                cx.state.live
            ),
        );
    }
    adopt(cx, d, serving, found);
    if observed.alarms_firing.is_some() {
        forward::begin_provisioning(cx, d);
    } else {
        hold(cx, d, "rollback alarm states could not be read");
    }
}

/// Takes `serving` as the live colour: the deployment goes to the other one.
fn adopt(cx: &mut Cx<'_>, d: &mut Deployment, serving: Color, found: Weights) {
    if serving != d.stable {
        // The stored live colour was only a default; what ran there is unknown.
        cx.state.live_image = None;
        d.from_image = None;
        d.stable = serving;
        d.target = serving.other();
    }
    cx.state.live = serving;
    cx.state.live_observed = true;
    cx.state.confirmed = Some(found);
    d.weights = found;
}

/// Waits a poll interval for what could not be read, up to the start timeout.
fn hold(cx: &mut Cx<'_>, d: &mut Deployment, what: &str) {
    if d.deadline.is_some_and(|t| cx.now >= t) {
        rollback::begin_rollback(cx, d, format!("{what} before the start timeout"));
    } else {
        cx.poll(d);
    }
}

/// Ends a deployment that must not start; nothing was touched.
fn refuse(cx: &mut Cx<'_>, d: &mut Deployment, reason: String) {
    cx.enter(d, Phase::Failed, EventKind::Failed, Some(reason));
}
