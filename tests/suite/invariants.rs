//! Property tests of SPEC §4 over random input sequences: random settings, pushes,
//! operator actions, alarms, ticks with random observations, replayed inputs, crashes
//! between commit and effects, failing effects, reconciler runs and time passing.
//! Each test is named after its invariant and runs at least 1 000 cases.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bluegreen::flow::{
    Action, Check, Color, Concurrency, Effect, EventKind, ExplicitStep, Input, InputKind, Outcome,
    Phase, ServiceSettings, Strategy as Rollout, TargetHealth, Weights,
};
use proptest::prelude::*;

use crate::common::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1000,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Deliver the earliest tick with these observations.
    Tick {
        alarms: u8,
        health: u8,
    },
    Push(u32),
    Operator {
        action: u8,
        name_last: bool,
    },
    Alarm {
        which: u8,
        ts: u16,
    },
    /// Replay an input applied before (index modulo the history length).
    Replay(usize),
    /// The next decision's effects are lost.
    Crash,
    /// Effects of this kind fail until the next `Heal`.
    Fail(u8),
    Heal,
    Reconcile {
        after_secs: u16,
    },
    Advance {
        secs: u16,
    },
    Hook(bool),
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..6, 0u8..4).prop_map(|(alarms, health)| Op::Tick { alarms, health }),
        2 => (1u32..4).prop_map(Op::Push),
        3 => (0u8..8, any::<bool>()).prop_map(|(action, name_last)| Op::Operator { action, name_last }),
        1 => (0u8..3, 0u16..5).prop_map(|(which, ts)| Op::Alarm { which, ts }),
        2 => any::<usize>().prop_map(Op::Replay),
        1 => Just(Op::Crash),
        1 => (0u8..4).prop_map(Op::Fail),
        1 => Just(Op::Heal),
        1 => (0u16..400).prop_map(|after_secs| Op::Reconcile { after_secs }),
        1 => (0u16..900).prop_map(|secs| Op::Advance { secs }),
        1 => any::<bool>().prop_map(Op::Hook),
    ]
}

fn strategy() -> impl Strategy<Value = Rollout> {
    prop_oneof![
        Just(Rollout::AllAtOnce),
        (1u8..100, 1u64..600).prop_map(|(percent, s)| Rollout::Canary {
            percent,
            bake: Duration::from_secs(s)
        }),
        (1u8..=100, 1u64..600).prop_map(|(p, s)| Rollout::Linear {
            step_percent: p,
            interval: Duration::from_secs(s)
        }),
        proptest::collection::btree_set(1u8..100, 0..4).prop_flat_map(|weights| {
            let n = weights.len();
            proptest::collection::vec(proptest::option::of(1u64..300), n + 1).prop_map(
                move |pauses| {
                    let steps = weights
                        .iter()
                        .copied()
                        .chain(std::iter::once(100))
                        .zip(pauses)
                        .map(|(weight, p)| ExplicitStep {
                            weight,
                            pause: p.map(Duration::from_secs),
                        })
                        .collect();
                    Rollout::Steps { steps }
                },
            )
        }),
    ]
}

fn service_settings() -> impl Strategy<Value = ServiceSettings> {
    (
        strategy(),
        any::<bool>(),
        0u8..4,
        0u8..3,
        0u64..400,
        0u64..400,
    )
        .prop_map(|(strategy, approval, checks, concurrency, bake, wait)| {
            let mut s = ServiceSettings::with_strategy(strategy);
            s.approval = approval;
            s.bake = Duration::from_secs(bake);
            s.termination_wait = Duration::from_secs(wait);
            s.rollback_alarms = vec!["web-5xx".into(), "web-p99".into()];
            s.has_test_listener = checks & 1 == 1;
            if checks & 1 == 1 {
                s.checks.push(Check::Http {
                    name: "healthz".into(),
                    url: "http://test/healthz".into(),
                    expect_status: 200,
                });
            }
            if checks & 2 == 2 {
                s.checks.push(Check::Hook {
                    name: "smoke".into(),
                });
            }
            s.concurrency = [
                Concurrency::Queue,
                Concurrency::Supersede,
                Concurrency::Reject,
            ][usize::from(concurrency)];
            s.rollback_attempts = 3;
            s
        })
}

fn action(n: u8) -> Action {
    match n {
        0 => Action::Promote { skip_bake: false },
        1 => Action::Promote { skip_bake: true },
        2 => Action::Approve,
        3 => Action::Pause,
        4 => Action::Resume,
        5 => Action::Abort,
        6 => Action::Rollback,
        _ => Action::Retry,
    }
}

const FAILABLE: [&str; 4] = [
    "set-production-weights",
    "register-revision",
    "update-service",
    "scale-to-zero",
];

/// Applies one op to the world.
fn play(w: &mut World, op: &Op, counter: &mut u32) {
    *counter += 1;
    let n = *counter;
    match op {
        Op::Tick { alarms, health } => {
            w.alarms_firing = match alarms {
                0 => None,
                1 => Some(vec!["web-5xx".into()]),
                _ => Some(vec![]),
            };
            w.health = match health {
                0 => None,
                1 => Some(TargetHealth {
                    healthy_targets: 0,
                    ..healthy()
                }),
                _ => Some(healthy()),
            };
            w.tick();
        }
        Op::Push(i) => {
            w.apply(push(*i));
        }
        Op::Operator {
            action: a,
            name_last,
        } => {
            let id = if *name_last {
                w.state.last.as_ref().map(|d| d.id.clone())
            } else {
                None
            };
            w.apply(op_on(&format!("op-{n}"), action(*a), id.as_deref()));
        }
        Op::Alarm { which, ts } => {
            let name = ["web-5xx", "web-p99", "unrelated"][usize::from(*which)];
            w.apply(alarm(name, &format!("t{ts}")));
        }
        Op::Replay(i) => {
            if !w.history.is_empty() {
                let (input, _) = w.history[i % w.history.len()].clone();
                w.apply(input);
            }
        }
        Op::Crash => w.crash_next = true,
        Op::Fail(k) => w.failing_effect = Some(FAILABLE[usize::from(*k)]),
        Op::Heal => w.failing_effect = None,
        Op::Reconcile { after_secs } => {
            w.advance(u64::from(*after_secs));
            w.apply(Input::new(format!("reconcile:{n}"), InputKind::Reconcile));
        }
        Op::Advance { secs } => w.advance(u64::from(*secs)),
        Op::Hook(passed) => {
            if let Some(id) = w.state.active.as_ref().map(|d| d.id.clone()) {
                w.apply(Input::new(
                    format!("event:hook-{n}"),
                    InputKind::HookReported {
                        deployment_id: id,
                        hook: "smoke".into(),
                        passed: *passed,
                        detail: None,
                    },
                ));
            }
        }
    }
}

fn run(settings: ServiceSettings, ops: &[Op]) -> World {
    let mut w = World::new(settings);
    let mut n = 0;
    for op in ops {
        play(&mut w, op, &mut n);
    }
    w
}

/// Lets the world finish: inputs stop, the world turns healthy, ticks fire and the
/// reconciler re-drives lost ones.
fn finish(w: &mut World) {
    w.failing_effect = None;
    w.crash_next = false;
    w.alarms_firing = Some(vec![]);
    w.health = Some(healthy());
    w.validations_pass = true;
    // A pause is a human hold: it ends only when someone resumes.
    if let Some(id) = w
        .state
        .active
        .as_ref()
        .filter(|d| d.is_paused())
        .map(|d| d.id.clone())
    {
        w.apply(op_on("final-resume", Action::Resume, Some(&id)));
    }
    w.settle();
}

fn all_weights(w: &World) -> Vec<Weights> {
    let mut out = Vec::new();
    for r in &w.records {
        for e in &r.decision.effects {
            if let Effect::SetProductionWeights { weights, .. }
            | Effect::SetTestWeights { weights, .. } = e
            {
                out.push(*weights);
            }
        }
        out.extend(r.decision.events.iter().map(|e| e.detail.weights));
        for d in r
            .decision
            .state
            .active
            .iter()
            .chain(r.decision.state.last.iter())
        {
            out.push(d.weights);
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// SPEC §4.1: weights on a rule always sum to 100 and reference only the two groups,
    /// and a weight write always writes the weights of the step the deployment is in.
    #[test]
    fn weights_always_sum_to_100_and_name_only_the_two_groups(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut w = run(settings, &ops);
        finish(&mut w);
        for weights in all_weights(&w) {
            prop_assert!(weights.is_valid(), "weights {weights:?} do not sum to 100");
        }
        for r in &w.records {
            for e in &r.decision.effects {
                if let Effect::SetProductionWeights { deployment_id, weights } = e {
                    let d = r.decision.state.deployment(deployment_id);
                    prop_assert_eq!(d.map(|d| d.weights), Some(*weights),
                        "a weight write that is not the deployment's current step (older traffic change)");
                }
            }
        }
    }

    /// SPEC §4.5: rollback is reachable from every non-terminal phase, jumps the queue
    /// (its first effect restores production) and ends at 100 % on the known-good colour.
    #[test]
    fn rollback_is_reachable_from_every_non_terminal_phase_and_restores_the_known_good_colour(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 0..40),
        how in 0u8..3,
    ) {
        let mut w = run(settings, &ops);
        w.failing_effect = None;
        w.crash_next = false;
        let Some(d) = w.state.active.clone() else { return Ok(()); };
        let known_good = d.stable;
        if d.phase != Phase::RollingBack {
            let input = match how {
                0 => op("final-abort", Action::Abort),
                1 => op("final-rollback", Action::Rollback),
                _ => alarm("web-p99", "final"),
            };
            let outcome = w.apply(input);
            prop_assert_eq!(outcome, Outcome::Applied, "rollback refused in {:?}", d.phase);
            let r = w.records.iter().rev().find(|r| r.before.active.as_ref().is_some_and(|a| a.id == d.id) && r.decision.state.active.as_ref().is_some_and(|a| a.phase == Phase::RollingBack));
            let first = r.and_then(|r| r.decision.effects.first().cloned());
            prop_assert_eq!(first, Some(Effect::SetProductionWeights {
                deployment_id: d.id.clone(),
                weights: Weights::all(known_good),
            }), "the first effect of a rollback restores production");
        }
        finish(&mut w);
        let end = w.log.events.iter().rev().find(|e| e.detail.deployment_id.as_deref() == Some(d.id.as_str())
            && matches!(e.kind, EventKind::RolledBack | EventKind::Failed));
        let end = end.expect("the deployment ended in RolledBack or Failed");
        prop_assert_eq!(end.kind, EventKind::RolledBack);
        prop_assert_eq!(end.detail.weights, Weights::all(known_good));
        prop_assert_eq!(end.detail.live_color, known_good);
        let last_write = w.log.effects.iter().rev().find_map(|e| match e {
            Effect::SetProductionWeights { deployment_id, weights } if *deployment_id == d.id => Some(*weights),
            _ => None,
        });
        prop_assert_eq!(last_write, Some(Weights::all(known_good)));
    }

    /// SPEC §4.4: duplicated, replayed and reordered inputs and crashes between commit and
    /// effects never cause a duplicate transition event, a second registration, or a
    /// change from an ignored input.
    #[test]
    fn no_duplicate_transition_event_registration_or_replayed_change(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut w = run(settings, &ops);
        finish(&mut w);
        let mut ids = HashSet::new();
        for e in &w.log.events {
            prop_assert!(ids.insert(e.detail.event_id.clone()), "event id {} published twice", e.detail.event_id);
        }
        for r in &w.records {
            for e in &r.decision.effects {
                if let Effect::RegisterRevision { deployment_id, .. } = e {
                    let known = r.before.deployment(deployment_id).and_then(|d| d.revision.clone());
                    prop_assert!(known.is_none(), "{deployment_id} registered again after {known:?}");
                }
            }
            if matches!(r.input.kind, InputKind::Tick { .. } | InputKind::Reconcile) {
                continue;
            }
            let seen_before = r.before.recent_keys.contains(&r.input.key);
            if seen_before {
                prop_assert!(matches!(r.decision.outcome, Outcome::Ignored { .. }), "replayed {} was applied", r.input.key);
            }
        }
    }

    /// SPEC §5 contract: per deployment, transition events carry strictly increasing
    /// sequences (1, 2, 3, …) and rejections never advance them.
    #[test]
    fn sequences_strictly_increase_per_deployment(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut w = run(settings, &ops);
        finish(&mut w);
        let mut last: HashMap<String, u64> = HashMap::new();
        for e in w.log.events.iter().filter(|e| e.kind != EventKind::Rejected) {
            let id = e.detail.deployment_id.clone().unwrap_or_default();
            let previous = last.insert(id.clone(), e.detail.sequence).unwrap_or(0);
            prop_assert_eq!(e.detail.sequence, previous + 1, "sequence of {} jumped", id);
        }
    }

    /// SPEC §4.8: once inputs stop and ticks fire (the reconciler re-driving lost ones),
    /// every deployment ends in a terminal phase and nothing stays queued.
    #[test]
    fn every_run_ends_in_a_terminal_phase_once_inputs_stop_and_ticks_fire(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut w = run(settings, &ops);
        finish(&mut w);
        prop_assert!(w.state.active.is_none(), "still active: {:?}", w.state.active.as_ref().map(|d| (d.phase, d.next_tick)));
        prop_assert!(w.state.queued.is_none());
        if let Some(d) = &w.state.last {
            prop_assert!(d.phase.is_terminal());
            prop_assert_eq!(w.state.live, if d.phase == Phase::Succeeded { d.target } else { d.stable });
        }
        let live = w.state.live;
        let production = w.log.production.last().copied().unwrap_or(Weights::all(Color::Blue));
        if w.state.last.as_ref().is_some_and(|d| d.phase != Phase::Failed) {
            prop_assert_eq!(production, Weights::all(live), "production ends on the live colour");
        }
    }
}
