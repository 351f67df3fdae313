//! The worker acts only on observed facts (SPEC §4 invariants 9–11, §5), through the
//! production runner (see `common`): the live colour is read from the production rule,
//! `Traffic Shifted` is announced only for weights read back, weight drift is detected
//! and handled by policy, tags are resolved to digests, effect results never fence the
//! runner out, and one worker of many runs the reconciler.

use std::time::Duration;

use bluegreen::flow::{
    Action, Check, Color, DriftPolicy, EventKind, Input, InputKind, Observations, OutboundEvent,
    Outcome, Phase, ProductionRules, RejectCode, RuleWeights, ServiceSettings, TargetHealth,
    Weights,
};

use crate::common::*;

fn wt(blue: u8, green: u8) -> Weights {
    Weights { blue, green }
}

fn events_of(w: &World, kind: EventKind) -> Vec<OutboundEvent> {
    w.log
        .events
        .iter()
        .filter(|e| e.kind == kind)
        .cloned()
        .collect()
}

fn rollback_reason(w: &World) -> String {
    w.state
        .last
        .as_ref()
        .or(w.state.active.as_ref())
        .and_then(|d| d.rollback.as_ref())
        .map(|r| r.reason.clone())
        .unwrap_or_default()
}

#[test]
fn a_pending_hook_with_the_reconciler_off_still_times_out_testing() {
    // Defect 1: an effect's result (the HTTP checks passed) used to be applied in a
    // nested run that bumped the version, so the runner fenced itself out and dropped
    // the rest of the decision: the testing deadline tick was never sent.
    let mut s = settings();
    s.has_test_listener = true;
    s.checks = vec![
        Check::Http {
            name: "healthz".into(),
            url: "http://test/healthz".into(),
            expect_status: 200,
        },
        Check::Hook {
            name: "smoke".into(),
        },
    ];
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Testing));
    assert_eq!(w.active().checks_passed, ["healthz"]);
    assert_eq!(
        w.ticks().len(),
        1,
        "the testing deadline tick is sent after the HTTP checks' result"
    );
    // Only messages are delivered: no reconciler runs.
    while w.tick().is_some() {}
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    assert!(
        rollback_reason(&w).contains("validations did not pass within 10m"),
        "{}",
        rollback_reason(&w)
    );
}

#[test]
fn a_service_whose_green_is_live_is_deployed_to_blue() {
    let mut w = World::new(settings());
    w.cloud().rule = Weights::all(Color::Green);
    w.apply(push(1));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    let d = w.state.last.clone().expect("deployment");
    assert_eq!((d.stable, d.target), (Color::Green, Color::Blue));
    assert!(
        w.log.updates.iter().all(|(color, _)| *color == Color::Blue),
        "green, which carried the traffic, was never pointed at the new revision: {:?}",
        w.log.updates
    );
    assert_eq!(w.log.production.first(), Some(&wt(25, 75)));
    assert_eq!(w.cloud().rule, Weights::all(Color::Blue));
    assert_eq!(w.state.live, Color::Blue);
    assert_eq!(
        w.log.scaled_to_zero,
        [Color::Green],
        "green is released only after the termination wait"
    );
}

#[test]
fn a_split_rule_refuses_the_deployment_naming_the_weights() {
    let mut w = World::new(settings());
    w.cloud().rule = wt(70, 30);
    w.apply(push(1));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Failed));
    let failed = events_of(&w, EventKind::Failed);
    let reason = failed[0].detail.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("is split (blue 70% / green 30%)"),
        "{reason}"
    );
    assert!(
        w.log.calls.is_empty(),
        "nothing was touched: {:?}",
        w.log.calls
    );
}

#[test]
fn a_rule_that_disagrees_with_the_stored_live_colour_refuses_the_deployment() {
    let mut s = settings();
    s.drift = DriftPolicy::Report;
    let mut w = World::new(s);
    w.apply(push(1));
    w.settle();
    assert_eq!(w.state.live, Color::Green);
    // Someone points production back at blue by hand while the service is idle.
    w.cloud().rule = Weights::all(Color::Blue);
    let calls = w.log.calls.len();
    w.apply(push(2));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Failed));
    let reason = events_of(&w, EventKind::Failed)[0]
        .detail
        .reason
        .clone()
        .unwrap_or_default();
    assert!(
        reason.contains("serves blue 100% / green 0%")
            && reason.contains("green is the live colour"),
        "{reason}"
    );
    assert_eq!(w.log.calls.len(), calls, "nothing was touched");
}

#[test]
fn traffic_shifted_is_announced_only_for_weights_read_back() {
    let mut w = world_in(settings(), Phase::Shifting);
    let shifted = events_of(&w, EventKind::TrafficShifted);
    assert_eq!(shifted.len(), 1);
    assert_eq!(
        shifted[0].detail.weights,
        wt(75, 25),
        "the read-back weights"
    );
    // The next step's write fails: no Traffic Shifted for 50/50.
    w.failing_effect = Some("set-production-weights");
    w.tick();
    w.failing_effect = None;
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    let shifted: Vec<(Phase, Weights)> = events_of(&w, EventKind::TrafficShifted)
        .iter()
        .map(|e| (e.detail.phase.expect("phase"), e.detail.weights))
        .collect();
    assert_eq!(
        shifted,
        [
            (Phase::Shifting, wt(75, 25)),
            (Phase::RollingBack, wt(100, 0))
        ],
        "the failed write is never announced; the rollback's restore is"
    );
    let rolled_back = events_of(&w, EventKind::RollingBack);
    assert_eq!(
        rolled_back[0].detail.weights,
        wt(75, 25),
        "Rolling Back says what production served when it began"
    );
}

#[test]
fn a_read_back_lost_in_a_crash_is_confirmed_by_the_next_read_of_the_rule() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.cloud().crash_after_write = true;
    w.tick(); // 50/50 is written, then the worker dies before recording it
    assert_eq!(w.cloud().rule, wt(50, 50));
    assert_eq!(events_of(&w, EventKind::TrafficShifted).len(), 1);
    w.settle();
    let shifted: Vec<Weights> = events_of(&w, EventKind::TrafficShifted)
        .iter()
        .map(|e| e.detail.weights)
        .collect();
    assert_eq!(
        &shifted[..2],
        [wt(75, 25), wt(50, 50)],
        "the lost read-back is announced once the rule is read again"
    );
    assert!(
        events_of(&w, EventKind::WeightDriftDetected).is_empty(),
        "the worker's own write is not drift"
    );
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
}

#[test]
fn drift_mid_shift_is_reported_written_back_and_the_step_served_again_before_the_next() {
    let mut w = world_in(settings(), Phase::Shifting);
    let served = w.active().served_at.expect("step 1 served");
    w.advance(30);
    // A stack update writes back the template's weights, half-way through the step.
    w.cloud().rule = Weights::all(Color::Blue);
    let key = w.active().pending_key().expect("tick");
    w.advance_to(w.active().next_tick.expect("tick").due);
    w.apply(Input::tick(key, Observations::default()));
    let drift = events_of(&w, EventKind::WeightDriftDetected);
    assert_eq!(drift.len(), 1);
    let d = drift[0].detail.drift.clone().expect("drift detail");
    assert_eq!((d.expected, d.found), (wt(75, 25), wt(100, 0)));
    assert!(d.rule.contains("listener-rule/app/alb"), "{}", d.rule);
    assert_eq!(d.policy, DriftPolicy::Reassert);
    assert_eq!(
        w.active().step,
        0,
        "no step past weights production did not serve"
    );
    assert_eq!(w.cloud().rule, wt(75, 25), "written back");
    let again = w.active().served_at.expect("served again");
    assert!(again > served, "the hold starts over from the write-back");
    assert_eq!(
        w.active().next_tick.expect("tick").due,
        again.plus(Duration::from_secs(60))
    );
    w.run_until(|w| w.active().step == 1);
    assert_eq!(w.active().step, 1);
    assert!(
        w.now >= again.plus(Duration::from_secs(60)),
        "the next step after a whole hold"
    );
    assert_eq!(w.cloud().rule, wt(50, 50));
}

#[test]
fn drift_while_waiting_is_written_back_with_the_reassert_policy() {
    let mut w = world_in(settings(), Phase::WaitingForGreen);
    w.cloud().rule = wt(60, 40);
    w.health = Some(bluegreen::flow::TargetHealth {
        healthy_targets: 0,
        ..healthy()
    });
    w.tick();
    assert_eq!(events_of(&w, EventKind::WeightDriftDetected).len(), 1);
    assert_eq!(w.cloud().rule, wt(100, 0), "written back");
    let restored = events_of(&w, EventKind::TrafficShifted);
    assert_eq!(restored.last().map(|e| e.detail.weights), Some(wt(100, 0)));
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
}

#[test]
fn drift_with_the_pause_policy_pauses_the_deployment_until_an_operator_resumes() {
    let mut s = settings();
    s.drift = DriftPolicy::Pause;
    let mut w = world_in(s, Phase::Shifting);
    w.cloud().rule = wt(100, 0);
    w.tick();
    assert!(w.active().is_paused());
    assert_eq!(w.active().step, 0, "no step taken over drifted weights");
    let drift = events_of(&w, EventKind::WeightDriftDetected);
    assert!(drift[0].detail.paused);
    let reason = drift[0].detail.reason.clone().unwrap_or_default();
    assert!(
        reason.ends_with("; the deployment is paused for an operator (drift policy pause)"),
        "{reason}"
    );
    assert_eq!(w.cloud().rule, wt(100, 0), "nothing written");
    w.apply(op("resume", Action::Resume));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
}

#[test]
fn drift_while_idle_is_found_by_the_reconciler_and_written_back() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    assert_eq!(w.state.live, Color::Green);
    // The first look learns the count the live colour runs with.
    assert_eq!(w.reconcile(), Outcome::Applied);
    assert_eq!(
        ignored_code(&w.reconcile()),
        Some(bluegreen::flow::IgnoreCode::NothingOverdue)
    );
    w.cloud().rule = wt(50, 50);
    assert_eq!(w.reconcile(), Outcome::Applied);
    let drift = events_of(&w, EventKind::WeightDriftDetected);
    assert_eq!(drift.len(), 1);
    let d = drift[0].detail.drift.clone().expect("drift");
    assert_eq!((d.expected, d.found), (wt(0, 100), wt(50, 50)));
    assert_eq!(drift[0].detail.deployment_id.as_deref(), Some("web-1"));
    assert_eq!(w.cloud().rule, wt(0, 100), "written back");
    assert_eq!(
        events_of(&w, EventKind::TrafficShifted)
            .last()
            .map(|e| e.detail.weights),
        Some(wt(0, 100))
    );
    assert_eq!(
        ignored_code(&w.reconcile()),
        Some(bluegreen::flow::IgnoreCode::NothingOverdue),
        "nothing to do once production serves the live colour again"
    );
}

#[test]
fn drift_while_idle_with_the_report_policy_is_reported_once() {
    let mut s = settings();
    s.drift = DriftPolicy::Report;
    let mut w = World::new(s);
    w.apply(push(1));
    w.settle();
    w.cloud().rule = wt(50, 50);
    w.reconcile();
    w.advance(30);
    w.reconcile();
    assert_eq!(events_of(&w, EventKind::WeightDriftDetected).len(), 1);
    assert_eq!(w.cloud().rule, wt(50, 50), "reported, not written");
}

fn ignored_code(outcome: &Outcome) -> Option<bluegreen::flow::IgnoreCode> {
    match outcome {
        Outcome::Ignored { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn a_tag_is_resolved_to_its_digest_and_both_are_recorded() {
    let mut w = World::new(settings());
    w.cloud().tags.insert("v7".into(), digest(7));
    let mut by_tag = push(7);
    by_tag.key = "event:by-tag".into();
    if let InputKind::Deploy { image, .. } = &mut by_tag.kind {
        image.digest = None;
        image.tag = Some("v7".into());
    }
    assert_eq!(w.apply(by_tag), Outcome::Applied);
    let d = w.active().clone();
    assert_eq!(d.to_image.digest, Some(digest(7)));
    assert_eq!(d.to_image.tag.as_deref(), Some("v7"));
    let started = &events_of(&w, EventKind::Started)[0];
    assert_eq!(
        started.detail.to_image.as_deref(),
        Some(format!("{REPO}@{}", digest(7)).as_str()),
        "deployed by digest"
    );
    assert_eq!(started.detail.to_tag.as_deref(), Some("v7"));
    let mut unknown = push(8);
    unknown.key = "event:unknown-tag".into();
    if let InputKind::Deploy { image, .. } = &mut unknown.kind {
        image.digest = None;
        image.tag = Some("nope".into());
    }
    let outcome = w.apply(unknown);
    assert!(
        matches!(&outcome, Outcome::Rejected { code: RejectCode::ImageNotFound, reason } if reason.contains("tag nope does not exist")),
        "{outcome:?}"
    );
}

#[test]
fn one_worker_of_many_runs_the_reconciler_until_its_lease_lapses() {
    let mut w = World::new(settings());
    let a = w.other_worker("a");
    let b = w.other_worker("b");
    assert!(w.block_on(a.reconcile_if_leader()));
    assert!(!w.block_on(b.reconcile_if_leader()), "a holds the lease");
    assert!(w.block_on(a.reconcile_if_leader()), "a renews it");
    w.advance(61);
    assert!(
        w.block_on(b.reconcile_if_leader()),
        "b takes over once a stopped renewing"
    );
    assert!(!w.block_on(a.reconcile_if_leader()));
}

#[test]
fn the_reconciler_runs_by_default() {
    assert_eq!(
        bluegreen::worker::Options::default().reconcile_every,
        Duration::from_secs(30)
    );
}

#[test]
fn traffic_moved_onto_the_new_colour_before_it_is_updated_pauses_even_the_report_policy() {
    let mut s = settings();
    s.drift = DriftPolicy::Report;
    let mut w = world_in(s, Phase::WaitingForGreen);
    let updates = w.log.updates.len();
    // Someone sends a share of production to green by hand, and the tick that would
    // re-point green is lost: the reconciler re-drives WaitingForGreen.
    w.cloud().rule = wt(90, 10);
    let due = w.active().next_tick.expect("poll").due;
    let grace = w.settings.timeouts.reconcile_grace;
    while w.tick().is_some() {}
    w.advance_to(due.plus(grace + Duration::from_secs(1)));
    w.reconcile();
    assert!(w.active().is_paused(), "{:?}", w.active());
    assert_eq!(
        w.log.updates.len(),
        updates,
        "green is not updated while it serves traffic"
    );
    let drift = events_of(&w, EventKind::WeightDriftDetected);
    assert!(
        drift[0]
            .detail
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("green is about to be updated")),
        "{:?}",
        drift[0].detail.reason
    );
}

#[test]
fn the_old_colour_is_not_released_while_the_rule_sends_it_traffic() {
    let mut s = settings();
    s.drift = DriftPolicy::Report;
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    // Before the termination wait ends, someone moves production back to blue by hand.
    w.cloud().rule = Weights::all(Color::Blue);
    w.tick();
    assert!(
        w.log.scaled_to_zero.is_empty(),
        "blue still serves: kept warm"
    );
    assert_eq!(events_of(&w, EventKind::WeightDriftDetected).len(), 1);
    assert!(events_of(&w, EventKind::OldColorReleased).is_empty());
    // Once production is back on green, the release goes ahead.
    w.cloud().rule = Weights::all(Color::Green);
    w.settle();
    assert_eq!(w.log.scaled_to_zero, [Color::Blue]);
    assert_eq!(events_of(&w, EventKind::OldColorReleased).len(), 1);
}

// Several production rules (two listeners, a host and a path rule) move together: the
// core judges them as one production, and a disagreement never hides drift on a rule.

/// A world whose service has a second production rule, serving blue like the first.
fn two_rules(s: ServiceSettings) -> World {
    let w = World::new(s);
    w.cloud().rule2 = Some(Weights::all(Color::Blue));
    w
}

/// Both rules' weights (the second is always set in these tests).
fn both(w: &World) -> (Weights, Weights) {
    let c = w.cloud();
    (c.rule, c.rule2.expect("a second rule"))
}

#[test]
fn two_production_rules_hold_the_same_weights_at_every_step() {
    let mut w = two_rules(settings());
    w.apply(push(1));
    let mut seen = Vec::new();
    for _ in 0..500 {
        if w.tick().is_none() {
            break;
        }
        let (first, second) = both(&w);
        assert_eq!(first, second, "the rules moved apart");
        if seen.last() != Some(&first) {
            seen.push(first);
        }
    }
    assert_eq!(
        seen,
        [wt(100, 0), wt(75, 25), wt(50, 50), wt(25, 75), wt(0, 100)]
    );
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
}

#[test]
fn a_deployment_does_not_start_while_the_production_rules_disagree() {
    let mut w = two_rules(settings());
    w.cloud().rule2 = Some(Weights::all(Color::Green));
    w.apply(push(1));
    w.settle();
    let d = w
        .state
        .last
        .clone()
        .or(w.state.active.clone())
        .expect("deployment");
    assert!(d.phase.is_terminal(), "{:?}", d.phase);
    let reason = events_of(&w, EventKind::Failed)
        .into_iter()
        .chain(events_of(&w, EventKind::RolledBack))
        .filter_map(|e| e.detail.reason)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(reason.contains("rules disagree"), "{reason}");
    assert!(reason.contains(RULE) && reason.contains(RULE2), "{reason}");
    assert!(w.log.production.is_empty(), "nothing written");
    assert!(w.log.updates.is_empty(), "no colour touched");
}

#[test]
fn drift_on_one_of_two_rules_is_reported_naming_it_and_both_are_written_back() {
    let mut w = two_rules(settings());
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Shifting) && w.cloud().rule == wt(75, 25));
    // Someone sets the second rule back to blue by hand; the first still holds 75/25.
    w.cloud().rule2 = Some(wt(100, 0));
    w.tick();
    let drift = events_of(&w, EventKind::WeightDriftDetected);
    assert_eq!(drift.len(), 1);
    let d = drift[0].detail.drift.clone().expect("drift");
    assert_eq!(d.rule, RULE2, "the rule that drifted is named");
    assert_eq!((d.expected, d.found), (wt(75, 25), wt(100, 0)));
    let reason = drift[0].detail.reason.clone().unwrap_or_default();
    assert!(reason.contains(RULE2), "{reason}");
    // Written back to both rules together; the step is served again before the next.
    assert_eq!(both(&w), (wt(75, 25), wt(75, 25)), "written together");
    assert_eq!(w.active().step, 0);
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(both(&w), (wt(0, 100), wt(0, 100)));
}

#[test]
fn drift_on_one_of_two_rules_with_the_report_policy_is_still_reported() {
    let mut s = settings();
    s.drift = DriftPolicy::Report;
    let mut w = two_rules(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Baking));
    w.cloud().rule2 = Some(wt(50, 50));
    w.tick();
    let drift = events_of(&w, EventKind::WeightDriftDetected);
    assert_eq!(drift.len(), 1, "a rule the worker did not write is news");
    let d = drift[0].detail.drift.clone().expect("drift");
    assert_eq!(
        (d.rule.as_str(), d.expected, d.found),
        (RULE2, wt(0, 100), wt(50, 50))
    );
}

#[test]
fn a_crash_between_two_rules_writes_is_finished_by_the_next_write_without_drift() {
    let mut w = two_rules(settings());
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Shifting) && w.cloud().rule == wt(75, 25));
    w.cloud().crash_between_rules = true;
    w.tick(); // the first rule gets 50/50, then the worker dies
    assert_eq!(w.cloud().crashes, 1);
    assert_eq!(both(&w), (wt(50, 50), wt(75, 25)));
    w.settle();
    assert!(
        events_of(&w, EventKind::WeightDriftDetected).is_empty(),
        "a write that has not landed on every rule is not drift"
    );
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(both(&w), (wt(0, 100), wt(0, 100)));
}

#[test]
fn judging_rules_that_disagree_never_hides_the_one_that_drifted() {
    let rules = |a: Weights, b: Weights| {
        ProductionRules::new(vec![
            RuleWeights {
                rule: "a".into(),
                weights: a,
            },
            RuleWeights {
                rule: "b".into(),
                weights: b,
            },
        ])
        .expect("rules")
    };
    let (old, new, hand) = (wt(75, 25), wt(50, 50), wt(100, 0));
    // Rule a still holds the last confirmed weights (its write has not landed), rule b
    // was changed by hand: b is the news.
    let judged = rules(old, hand).judge(new, Some(old)).clone();
    assert_eq!((judged.rule.as_str(), judged.weights), ("b", hand));
    let judged = rules(hand, new).judge(new, Some(old)).clone();
    assert_eq!((judged.rule.as_str(), judged.weights), ("a", hand));
    // Only a write in progress: the rule it has not reached yet.
    let judged = rules(new, old).judge(new, Some(old)).clone();
    assert_eq!((judged.rule.as_str(), judged.weights), ("b", old));
    // Agreement.
    let judged = rules(new, new).judge(new, Some(old)).clone();
    assert_eq!(judged.weights, new);
    assert_eq!(rules(new, new).agreed(), Some(new));
    assert_eq!(rules(new, old).agreed(), None);
    assert!(ProductionRules::new(Vec::new()).is_none(), "never empty");
}

#[test]
fn only_an_image_without_a_digest_or_a_resolution_is_resolved_first() {
    let state = bluegreen::flow::ServiceState::new(SERVICE, Color::Blue);
    let deploy = |digest: bool, unresolved: Option<&str>| {
        let mut input = push(1);
        if let InputKind::Deploy {
            image,
            unresolved: u,
            ..
        } = &mut input.kind
        {
            if !digest {
                image.digest = None;
                image.tag = Some("release-1".into());
            }
            *u = unresolved.map(str::to_string);
        }
        bluegreen::flow::needs(&state, &input).resolve_tag
    };
    assert!(deploy(false, None), "a tag alone is resolved");
    assert!(!deploy(true, None), "a digest needs no resolution");
    assert!(
        !deploy(false, Some("no such tag")),
        "a failed resolution is not tried again"
    );
}

#[test]
fn a_refusal_names_the_deployment_the_operator_named() {
    let mut s = settings();
    s.approval = true;
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::AwaitingApproval));
    w.apply(op("approve-2", Action::Approve));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    w.apply(push(2));
    w.run_until(|w| w.phase() == Some(Phase::AwaitingApproval));
    // Promote the finished web-1 while web-2 waits for approval: refused, about web-1.
    let outcome = w.apply(op_on(
        "promote-1",
        Action::Promote { skip_bake: false },
        Some("web-1"),
    ));
    assert!(matches!(outcome, Outcome::Rejected { .. }), "{outcome:?}");
    let rejected = events_of(&w, EventKind::Rejected);
    assert_eq!(
        rejected
            .last()
            .and_then(|e| e.detail.deployment_id.as_deref()),
        Some("web-1"),
        "{rejected:#?}"
    );
}

#[test]
fn only_the_release_of_the_last_deployment_reads_the_rule_once_it_succeeded() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    let tick_of = |id: &str| {
        bluegreen::flow::Input::tick(
            bluegreen::flow::TickKey {
                deployment_id: id.into(),
                cursor: 9,
                attempt: 1,
            },
            bluegreen::flow::Observations::default(),
        )
    };
    let needs = |id: &str| bluegreen::flow::needs(&w.state, &tick_of(id)).production;
    assert!(
        needs("web-1"),
        "the old colour's release reads the rule first"
    );
    assert!(!needs("web-0"), "a tick of no deployment reads nothing");
}

/// The first revision, as CloudFormation created both colour services with.
const FIRST_REVISION: &str = "arn:aws:ecs:us-east-1:123456789012:task-definition/web:1";

fn capacity_of(w: &World) -> Vec<bluegreen::flow::CapacityDrift> {
    events_of(w, EventKind::CapacityDriftDetected)
        .into_iter()
        .map(|e| {
            e.detail
                .capacity
                .expect("a capacity drift names what it found")
        })
        .collect()
}

fn restores(w: &World) -> Vec<Call> {
    w.log
        .calls
        .iter()
        .filter(|c| matches!(c, Call::Restore { .. }))
        .cloned()
        .collect()
}

/// The one restore that puts green back on `revision` with the two tasks it ran.
fn green_back_on(revision: &str) -> Vec<Call> {
    vec![Call::Restore {
        color: Color::Green,
        task_definition: revision.into(),
        desired: 2,
    }]
}

/// Green live after one deployment under `policy`, its count learnt by a first look.
fn live_after_one_deployment(policy: DriftPolicy) -> World {
    let mut s = settings();
    s.drift = policy;
    let mut w = World::new(s);
    w.apply(push(1));
    w.settle();
    w.reconcile();
    w
}

/// A stack update re-applies a colour service's template after a deployment: the live
/// colour is put back on the first revision with no tasks. The reconciler announces it
/// once and, under the default policy, puts the deployed revision and the count it ran
/// with back; once it runs well again, the incident is over and a later one is news.
#[test]
fn a_live_colour_put_back_on_its_first_revision_with_no_tasks_is_restored_and_reported_once() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    assert_eq!(w.state.live, Color::Green);
    let deployed = w.state.last.as_ref().and_then(|d| d.revision.clone());
    let deployed = deployed.expect("a deployed revision");
    assert!(
        matches!(w.reconcile(), Outcome::Applied),
        "the first look learns the count the live colour runs with"
    );
    assert!(matches!(w.reconcile(), Outcome::Ignored { .. }));
    assert!(capacity_of(&w).is_empty(), "nothing drifted yet");

    w.cloud()
        .colors
        .insert(Color::Green, (Some(FIRST_REVISION.into()), 0));
    w.health = Some(TargetHealth {
        task_definition: Some(FIRST_REVISION.into()),
        desired: 0,
        running: 0,
        healthy_targets: 0,
        registered_targets: 0,
        ..healthy()
    });
    w.reconcile();
    w.reconcile();
    let drift = capacity_of(&w);
    assert_eq!(drift.len(), 1, "one incident, one event: {drift:#?}");
    let d = &drift[0];
    assert_eq!(d.color, Color::Green);
    assert_eq!(d.expected_task_definition, deployed);
    assert_eq!(d.expected_desired, 2, "the count it ran with");
    assert_eq!(d.found.task_definition.as_deref(), Some(FIRST_REVISION));
    assert_eq!(d.findings.len(), 3, "{:?}", d.findings);
    assert_eq!(restores(&w), green_back_on(&deployed), "written back once");
    assert_eq!(w.cloud().rule, wt(0, 100), "traffic never moved");

    // ECS rolls the restored service out.
    w.health = Some(healthy());
    w.reconcile();
    assert!(w.state.capacity_drift.is_empty(), "the incident is over");
    w.cloud()
        .colors
        .insert(Color::Green, (Some(FIRST_REVISION.into()), 2));
    w.reconcile();
    assert_eq!(capacity_of(&w).len(), 2, "a new incident is news again");
    assert_eq!(restores(&w).len(), 2);
}

/// Under the report policy nothing is written; a colour with no healthy target is only
/// reported whatever the policy (there is nothing to write back), and only once.
#[test]
fn a_live_colour_with_no_healthy_target_is_reported_once_and_nothing_is_written() {
    for policy in [DriftPolicy::Reassert, DriftPolicy::Report] {
        let mut w = live_after_one_deployment(policy);
        w.health = Some(TargetHealth {
            healthy_targets: 0,
            ..healthy()
        });
        w.reconcile();
        w.reconcile();
        let drift = capacity_of(&w);
        assert_eq!(drift.len(), 1, "{policy:?}: {drift:#?}");
        assert_eq!(drift[0].findings, ["has no healthy target"]);
        let reason = events_of(&w, EventKind::CapacityDriftDetected)[0]
            .detail
            .reason
            .clone()
            .unwrap_or_default();
        assert!(reason.contains("nothing to write back"), "{reason}");
        assert!(restores(&w).is_empty(), "{policy:?}");
    }
}

/// A live colour below `min_tasks` under the report policy is reported, not written.
#[test]
fn capacity_under_min_tasks_is_reported_only_under_the_report_policy() {
    let mut s = settings();
    s.drift = DriftPolicy::Report;
    s.min_tasks = 3;
    let mut w = World::new(s);
    w.apply(push(1));
    w.settle();
    w.reconcile();
    let drift = capacity_of(&w);
    assert_eq!(drift.len(), 1, "2 tasks are fewer than min_tasks 3");
    assert_eq!(drift[0].expected_desired, 3);
    assert!(restores(&w).is_empty());
}

/// With a trail logging, a stack update's writes reach the worker as events: a rule put
/// back on blue and the live colour put back on its first revision are found and undone
/// as each event arrives, not at the next reconciler pass (no time passes here).
#[test]
fn recorded_changes_of_the_rule_and_the_live_colour_are_reconciled_at_once() {
    let mut w = live_after_one_deployment(DriftPolicy::Reassert);
    let deployed = w.state.last.as_ref().and_then(|d| d.revision.clone());
    let before = w.now;
    w.cloud().rule = wt(100, 0);
    w.send(
        &envelope::api_call("ct-1", "ModifyRule", serde_json::json!({ "ruleArn": RULE })),
        Duration::ZERO,
    );
    w.tick();
    assert_eq!(w.cloud().rule, wt(0, 100), "written back");
    assert_eq!(events_of(&w, EventKind::WeightDriftDetected).len(), 1);

    w.cloud()
        .colors
        .insert(Color::Green, (Some(FIRST_REVISION.into()), 2));
    let update = serde_json::json!({ "cluster": "prod", "service": "web-green", "taskDefinition": FIRST_REVISION });
    w.send(
        &envelope::api_call("ct-2", "UpdateService", update),
        Duration::ZERO,
    );
    w.tick();
    assert_eq!(restores(&w), green_back_on(&deployed.expect("a revision")));
    assert_eq!(w.now, before, "no reconciler pass was waited for");
    // The same event delivered twice changes nothing more.
    w.send(
        &envelope::api_call(
            "ct-2",
            "UpdateService",
            serde_json::json!({ "service": "web-green" }),
        ),
        Duration::ZERO,
    );
    w.tick();
    assert_eq!(restores(&w).len(), 1);
}
