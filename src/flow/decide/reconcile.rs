//! The reconciler (SPEC §4 invariants 8 and 10): re-drives a deployment whose tick is
//! overdue (a crash between commit and effects, a lost message) with the effects of its
//! current phase once the production rule has been judged, and compares an idle
//! service's production rule with its live colour.

use super::{Applied, Cx, Ignore, Verdict, tick, with_active, with_deployment};
use crate::flow::effect::{Effect, IgnoreCode};
use crate::flow::input::Observations;
use crate::flow::model::{Deployment, Phase, Weights, duration_ms};

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

    if redrive.is_none() && last_tick.is_none() && drift.is_none() && restored.is_none() {
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
    if let Some((found, id)) = drift {
        return with_deployment(cx, &id, |cx, d| {
            tick::drifted(cx, d, expected, &found, false);
            Applied
        });
    }
    Applied
}
