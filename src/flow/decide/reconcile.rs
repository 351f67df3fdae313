//! The reconciler (SPEC §4 invariants 8 and 10): re-drives a deployment whose tick is
//! overdue (a crash between commit and effects, a lost message) with the effects of its
//! current phase once the production rule has been judged, and compares an idle
//! service's production rule and live colour's service with what they should be.

use super::{Applied, Cx, Ignore, Verdict, tick, with_active, with_deployment};
use crate::flow::effect::{CapacityDrift, CapacityFound, Effect, EventKind, IgnoreCode};
use crate::flow::input::{Observations, TargetHealth};
use crate::flow::model::{Deployment, LiveRevision, Phase, Weights, duration_ms};
use crate::flow::settings::DriftPolicy;

pub(super) fn on_reconcile(cx: &mut Cx<'_>, observed: &Observations) -> Verdict {
    let grace = duration_ms(cx.settings.timeouts.reconcile_grace);
    let now = cx.now;
    let overdue = |d: &&Deployment| {
        d.next_tick
            .is_some_and(|t| !d.is_paused() && now.since(t.due) > grace)
    };
    let redrive = cx
        .state
        .active
        .as_ref()
        .filter(overdue)
        .map(|d| d.id.clone());
    let last_tick = cx
        .state
        .last
        .as_ref()
        .filter(overdue)
        .and_then(Deployment::pending_key);

    // An idle service whose live colour is known: the rule must serve it alone.
    let expected = Weights::all(cx.state.live);
    let idle = cx.state.active.is_none() && cx.state.live_observed;
    let found = match &observed.production {
        Some(Ok(rules)) if idle => Some(rules.judge(expected, cx.state.confirmed).clone()),
        _ => None,
    };
    let news = found.filter(|f| cx.state.confirmed != Some(f.weights));
    let restored = news
        .as_ref()
        .filter(|f| f.weights == expected)
        .map(|f| f.weights);
    let drift = news
        .filter(|f| f.weights != expected)
        .zip(cx.state.last.as_ref().map(|d| d.id.clone()));

    let capacity = match &observed.target_health {
        Some(found) if idle => capacity(cx, found),
        _ => Capacity::Unchanged,
    };

    if redrive.is_none()
        && last_tick.is_none()
        && drift.is_none()
        && restored.is_none()
        && capacity == Capacity::Unchanged
    {
        return Ignore(
            IgnoreCode::NothingOverdue,
            "no tick is overdue and production serves the live colour".into(),
        );
    }
    if let Some(id) = redrive {
        // As before a step: the rule is judged first (a colour that drifted into
        // carrying traffic is not updated in place), then the phase is established
        // again and its tick sent once more.
        // The phase's effects are established only on a rule read as the service's pair
        // (a rollback writes the known-good weights whatever the rule says); otherwise
        // the tick alone goes out, and judges what it can read.
        with_active(cx, &id, |cx, d| {
            let readable =
                matches!(observed.production, Some(Ok(_))) || d.phase == Phase::RollingBack;
            if tick::judge_rule(cx, d, observed) {
                if readable {
                    cx.establish(d);
                }
                if let Some(tick) = d.pending_key() {
                    cx.effects.push(Effect::ScheduleTick { tick, due: now });
                }
            }
            Applied
        });
    }
    if let Some(tick) = last_tick {
        cx.effects.push(Effect::ScheduleTick { tick, due: now });
    }
    if let Some(weights) = restored {
        // Production serves the live colour again (a person put it back, or a read-back
        // was lost): nothing to announce, but it is what drift is judged against now.
        cx.state.confirmed = Some(weights);
    }
    if let Capacity::Drifted(drift) = capacity
        && let Some(id) = cx.state.last.as_ref().map(|d| d.id.clone())
    {
        with_deployment(cx, &id, |cx, d| {
            capacity_drifted(cx, d, *drift);
            Applied
        });
    }
    if let Some((found, id)) = drift {
        return with_deployment(cx, &id, |cx, d| {
            tick::drifted(cx, d, expected, &found, false);
            Applied
        });
    }
    Applied
}

/// What a look at the live colour changed.
#[derive(Debug, PartialEq, Eq)]
enum Capacity {
    /// Nothing: it runs as it should, or runs as already reported.
    Unchanged,
    /// The state learnt something (the revision to judge against, or that a drift is
    /// over); nothing to announce.
    Learnt,
    /// Drift not reported yet.
    Drifted(Box<CapacityDrift>),
}

/// Compares the live colour's service with what it should run (SPEC §4 invariant 10):
/// the task definition the worker put there, at least `min_tasks` tasks wanted, and a
/// healthy target. A stack update that re-applies a colour service's template, or a
/// change in the console, shows up here.
fn capacity(cx: &mut Cx<'_>, found: &TargetHealth) -> Capacity {
    let live = cx.state.live;
    let mut learnt = false;
    let (expected, known_good) = match &cx.state.live_revision {
        Some(r) if r.color == live => (r.task_definition.clone(), r.desired),
        _ => {
            // Never changed by a deployment the worker remembers: what runs there is
            // what should.
            let Some(task_definition) = found.task_definition.clone() else {
                return Capacity::Unchanged;
            };
            cx.state.live_revision = Some(LiveRevision {
                color: live,
                task_definition: task_definition.clone(),
                desired: 0,
            });
            learnt = true;
            (task_definition, 0)
        }
    };
    let min_tasks = cx.settings.min_tasks;
    let mut findings = Vec::new();
    if let Some(runs) = found.task_definition.as_ref().filter(|t| **t != expected) {
        findings.push(format!("runs {runs}, not {expected}"));
    }
    if found.desired < min_tasks {
        findings.push(format!(
            "wants {} task(s), fewer than min_tasks {min_tasks}",
            found.desired
        ));
    }
    if found.healthy_targets == 0 {
        findings.push("has no healthy target".to_string());
    }
    if findings.is_empty()
        && found.desired != known_good
        && let Some(r) = cx.state.live_revision.as_mut()
    {
        // A count it runs well with (scaled by a person or, later, by autoscaling).
        r.desired = found.desired;
        learnt = true;
    }
    let news = findings
        .iter()
        .any(|f| !cx.state.capacity_drift.contains(f));
    if !news {
        // Part of an incident already reported, or over.
        if findings.len() != cx.state.capacity_drift.len() {
            cx.state.capacity_drift = findings;
            learnt = true;
        }
        return if learnt {
            Capacity::Learnt
        } else {
            Capacity::Unchanged
        };
    }
    cx.state.capacity_drift.clone_from(&findings);
    Capacity::Drifted(Box::new(CapacityDrift {
        color: live,
        expected_task_definition: expected,
        expected_desired: known_good.max(min_tasks).max(found.desired),
        min_tasks,
        found: CapacityFound {
            task_definition: found.task_definition.clone(),
            desired: found.desired,
            running: found.running,
            healthy_targets: found.healthy_targets,
        },
        findings,
        policy: cx.settings.drift,
    }))
}

/// Announces capacity drift on `d`'s live colour and, under the reassert policy, puts
/// the colour's task definition and count back. No healthy target with the right
/// revision and count is reported only: there is nothing to write back.
fn capacity_drifted(cx: &mut Cx<'_>, d: &mut Deployment, drift: CapacityDrift) {
    let writable = drift.found.desired < drift.expected_desired
        || drift
            .found
            .task_definition
            .as_ref()
            .is_some_and(|t| *t != drift.expected_task_definition);
    let reassert = drift.policy == DriftPolicy::Reassert && writable;
    let what = if reassert {
        format!(
            "putting {} back on {} with {} task(s)",
            drift.color, drift.expected_task_definition, drift.expected_desired
        )
    } else if writable {
        "reported only".to_string()
    } else {
        "reported only: nothing to write back".to_string()
    };
    let reason = format!(
        "the live colour {} {}; {what} (drift policy {})",
        drift.color,
        drift.findings.join(", "),
        drift.policy.as_str()
    );
    if reassert {
        cx.effects.push(Effect::RestoreCapacity {
            deployment_id: d.id.clone(),
            color: drift.color,
            task_definition: drift.expected_task_definition.clone(),
            desired: drift.expected_desired,
        });
    }
    let phase = d.phase;
    let detail = cx.emit(d, EventKind::CapacityDriftDetected, phase, Some(reason));
    detail.capacity = Some(drift);
}
