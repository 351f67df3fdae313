//! Property tests of SPEC §4, run against the production worker (invariant 11): the
//! real runner and message handling over the embedded store and inbox, on tokio's
//! paused clock (see `common`). Random settings (strategies, gates, concurrency and
//! drift policies, green live at first sight), then random operations: pushes, operator
//! actions, alarms and hook reports sent as EventBridge envelopes and delivered 1–3
//! times in shuffled order with the worker's own ticks, replays, the worker dying right
//! after a commit or right before a random effect call (and restarting), failing
//! effects, reconciler runs, time passing, and the production rule changed behind the
//! worker's back.
//!
//! Each test is named after its invariant and runs 1 000 cases (`PROPTEST_CASES` sets
//! another number).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bluegreen::flow::{
    Action, Check, Color, Concurrency, DriftPolicy, Effect, EventKind, ExplicitStep, Hold, Outcome,
    Phase, ServiceSettings, Strategy as Rollout, TargetHealth, Timestamp, Weights,
};
use proptest::prelude::*;

use crate::common::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Deliver the message that is due first (a tick or an envelope) with these
    /// observations.
    Deliver {
        alarms: u8,
        health: u8,
    },
    Push {
        image: u32,
        copies: Copies,
    },
    Operator {
        action: u8,
        name_last: bool,
        copies: Copies,
    },
    Alarm {
        which: u8,
        ts: u16,
        copies: Copies,
    },
    Hook {
        passed: bool,
        copies: Copies,
    },
    /// Send a message sent before once more, late.
    Replay(usize),
    /// The worker dies right after its next commit.
    Crash,
    /// The worker dies right before its k-th next effect call.
    CrashAt(u8),
    /// Effects of this kind fail until the next `Heal`.
    Fail(u8),
    Heal,
    Reconcile {
        after_secs: u16,
    },
    Advance {
        secs: u16,
    },
    /// Someone else writes the production rule (a stack update, the console).
    Drift(u8),
    /// Up to this many visible messages, each handled by its own worker at once, their
    /// store calls interleaved.
    Concurrent(u8),
    /// The store or the cloud fails once: the next lease checks fail, the next commit's
    /// answer is lost, or the next production write's answer is lost.
    Hiccup(u8),
}

/// A message is delivered 1–3 times, each copy visible after its own short delay, so
/// deliveries interleave with each other and with ticks.
#[derive(Debug, Clone)]
struct Copies(Vec<u16>);

fn copies() -> impl Strategy<Value = Copies> {
    proptest::collection::vec(0u16..3000, 1..=3).prop_map(Copies)
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..6, 0u8..4).prop_map(|(alarms, health)| Op::Deliver { alarms, health }),
        2 => (1u32..4, copies()).prop_map(|(image, copies)| Op::Push { image, copies }),
        3 => (0u8..8, any::<bool>(), copies())
            .prop_map(|(action, name_last, copies)| Op::Operator { action, name_last, copies }),
        1 => (0u8..3, 0u16..5, copies()).prop_map(|(which, ts, copies)| Op::Alarm { which, ts, copies }),
        1 => (any::<bool>(), copies()).prop_map(|(passed, copies)| Op::Hook { passed, copies }),
        2 => any::<usize>().prop_map(Op::Replay),
        1 => Just(Op::Crash),
        1 => (0u8..6).prop_map(Op::CrashAt),
        1 => (0u8..4).prop_map(Op::Fail),
        1 => Just(Op::Heal),
        1 => (0u16..400).prop_map(|after_secs| Op::Reconcile { after_secs }),
        1 => (0u16..900).prop_map(|secs| Op::Advance { secs }),
        1 => (0u8..=100).prop_map(Op::Drift),
        2 => (2u8..=3).prop_map(Op::Concurrent),
        1 => (0u8..3).prop_map(Op::Hiccup),
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

/// Settings, and whether green is live when the service is first seen.
fn service_settings() -> impl Strategy<Value = (ServiceSettings, bool)> {
    (
        strategy(),
        any::<bool>(),
        0u8..4,
        0u8..3,
        0u64..400,
        0u64..400,
        0u8..3,
        any::<bool>(),
    )
        .prop_map(
            |(strategy, approval, checks, concurrency, bake, wait, drift, green_live)| {
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
                s.drift = [
                    DriftPolicy::Reassert,
                    DriftPolicy::Pause,
                    DriftPolicy::Report,
                ][usize::from(drift)];
                s.rollback_attempts = 3;
                (s, green_live)
            },
        )
}

const ACTIONS: [(&str, &str); 8] = [
    ("Promote Requested", "promote"),
    ("Promote Requested", "promote-skip"),
    ("Approve Requested", "approve"),
    ("Pause Requested", "pause"),
    ("Resume Requested", "resume"),
    ("Abort Requested", "abort"),
    ("Rollback Requested", "rollback"),
    ("Retry Requested", "retry"),
];

const FAILABLE: [&str; 4] = [
    "set-production-weights",
    "register-revision",
    "update-service",
    "scale-to-zero",
];

/// The world under test with what the run sent, for replays.
struct Run {
    w: World,
    sent: Vec<serde_json::Value>,
    n: u32,
    drifted: bool,
    /// Other workers on the same queue and store.
    workers: Vec<bluegreen::worker::Worker<Sim>>,
}

impl Run {
    fn send(&mut self, body: serde_json::Value, copies: &Copies) {
        for delay in &copies.0 {
            self.w.send(&body, Duration::from_millis(u64::from(*delay)));
        }
        self.sent.push(body);
    }
}

/// Applies one op to the world.
fn play(r: &mut Run, op: &Op) {
    r.n += 1;
    let n = r.n;
    match op {
        Op::Deliver { alarms, health } => {
            r.w.alarms_firing = match alarms {
                0 => None,
                1 => Some(vec!["web-5xx".into()]),
                _ => Some(vec![]),
            };
            r.w.health = match health {
                0 => None,
                1 => Some(TargetHealth {
                    healthy_targets: 0,
                    ..healthy()
                }),
                _ => Some(healthy()),
            };
            r.w.tick();
        }
        Op::Push { image, copies } => r.send(envelope::push(*image), copies),
        Op::Operator {
            action,
            name_last,
            copies,
        } => {
            let (detail_type, name) = ACTIONS[usize::from(*action)];
            let mut detail = serde_json::json!({});
            if name == "promote-skip" {
                detail["skipBake"] = true.into();
            }
            if *name_last && let Some(d) = r.w.state.last.as_ref() {
                detail["deploymentId"] = d.id.clone().into();
            }
            let body = envelope::operator(&format!("op-{n}"), detail_type, detail);
            r.send(body, copies);
        }
        Op::Alarm { which, ts, copies } => {
            let name = ["web-5xx", "web-p99", "unrelated"][usize::from(*which)];
            let at = format!("2023-11-14T22:{:02}:00.000+0000", ts);
            r.send(envelope::alarm(name, &at), copies);
        }
        Op::Hook { passed, copies } => {
            if let Some(id) = r.w.state.active.as_ref().map(|d| d.id.clone()) {
                let detail = serde_json::json!({
                    "deploymentId": id, "hook": "smoke", "passed": passed
                });
                let body = envelope::operator(&format!("hook-{n}"), "Validation Reported", detail);
                r.send(body, copies);
            }
        }
        Op::Replay(i) => {
            if !r.sent.is_empty() {
                let body = r.sent[i % r.sent.len()].clone();
                r.w.send(&body, Duration::from_secs(5));
            }
        }
        Op::Crash => r.w.crash_next = true,
        Op::CrashAt(k) => r.w.cloud().crash_before_call = Some(u32::from(*k)),
        Op::Fail(k) => r.w.failing_effect = Some(FAILABLE[usize::from(*k)]),
        Op::Heal => r.w.failing_effect = None,
        Op::Reconcile { after_secs } => {
            r.w.advance(u64::from(*after_secs));
            r.w.reconcile();
        }
        Op::Advance { secs } => r.w.advance(u64::from(*secs)),
        Op::Drift(green) => {
            r.w.cloud().rule = Weights::split(Color::Green, *green);
            r.drifted = true;
        }
        Op::Concurrent(n) => {
            let messages = r.w.receive(u32::from(*n));
            let runs = r.workers.iter().cloned().zip(messages).collect();
            r.w.cloud().interleave = true;
            r.w.concurrently(runs);
            r.w.cloud().interleave = false;
        }
        Op::Hiccup(k) => {
            let mut c = r.w.cloud();
            match k {
                0 => c.fence_failures = 3,
                1 => c.commit_answer_lost = true,
                _ => c.write_answer_lost = true,
            }
        }
    }
}

/// Whether `body` is an operator event put more than the worker's age bound before `now`.
fn stale_operator_event(body: &str, now: Timestamp) -> bool {
    let Ok(event) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let put = event["time"]
        .as_str()
        .and_then(|t| Timestamp::parse_rfc3339(t).ok());
    event["source"] == "bluegreen.manual"
        && put.is_some_and(|at| {
            u128::from(now.since(at)) > bluegreen::contract::OPERATOR_EVENT_MAX_AGE.as_millis()
        })
}

fn run(settings: (ServiceSettings, bool), ops: &[Op]) -> Run {
    let (settings, green_live) = settings;
    let w = World::new(settings);
    if green_live {
        w.cloud().rule = Weights::all(Color::Green);
    }
    let workers = ["w1", "w2", "w3"]
        .iter()
        .map(|id| w.other_worker(id))
        .collect();
    let mut r = Run {
        w,
        sent: Vec::new(),
        n: 0,
        drifted: false,
        workers,
    };
    for op in ops {
        play(&mut r, op);
    }
    r
}

/// No more crashes or store hiccups from now on.
fn calm(w: &World) {
    let mut c = w.cloud();
    c.crash_before_call = None;
    c.fence_failures = 0;
    c.commit_answer_lost = false;
    c.write_answer_lost = false;
    c.interleave = false;
}

/// Lets the world finish: inputs stop, the world turns healthy, every message is
/// delivered, and the reconciler re-drives lost ticks and looks at the rule once more.
fn finish(r: &mut Run) {
    let w = &mut r.w;
    w.failing_effect = None;
    w.crash_next = false;
    calm(w);
    w.alarms_firing = Some(vec![]);
    w.health = Some(healthy());
    w.validations_pass = true;
    // A start refused over a split rule waits for a person to fix the rule.
    if w.cloud().rule.sole_color().is_none() {
        w.cloud().rule = Weights::all(w.state.live);
    }
    w.settle();
    // A pause is a human hold: it ends only when someone resumes. Drift found after a
    // resume pauses once more (with the pause policy); the next resume goes on. A rule
    // that sends traffic to the colour about to be updated keeps the deployment paused
    // until a person points it away (the worker never updates a colour with traffic).
    for attempt in 0..3 {
        let Some((id, exposed)) = w.state.active.as_ref().filter(|d| d.is_paused()).map(|d| {
            let before_update = matches!(d.phase, Phase::Provisioning | Phase::WaitingForGreen);
            let exposed = before_update && w.cloud().rule.of(d.target) > 0;
            (d.id.clone(), exposed.then_some(d.stable))
        }) else {
            break;
        };
        if let Some(stable) = exposed {
            w.cloud().rule = Weights::all(stable);
        }
        w.apply(op_on(
            &format!("final-resume-{attempt}"),
            Action::Resume,
            Some(&id),
        ));
        w.settle();
    }
    w.advance(60);
    w.reconcile();
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
    out.extend(w.log.production.iter().chain(w.log.test.iter()));
    out
}

proptest! {
    #![proptest_config(config())]

    /// SPEC §4.1: weights always sum to 100 and reference only the two groups, and a
    /// weight write always writes what the service's state says production should serve
    /// (the step the deployment is in; idle, the live colour).
    #[test]
    fn weights_always_sum_to_100_and_name_only_the_two_groups(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut r = run(settings, &ops);
        finish(&mut r);
        let w = &r.w;
        for weights in all_weights(w) {
            prop_assert!(weights.is_valid(), "weights {weights:?} do not sum to 100");
        }
        for rec in &w.records {
            for e in &rec.decision.effects {
                if let Effect::SetProductionWeights { weights, .. } = e {
                    prop_assert_eq!(rec.decision.state.production_weights(), *weights,
                        "a weight write that is not what the state says production serves");
                }
            }
        }
    }

    /// SPEC §4.5: rollback is reachable from every non-terminal phase, jumps the queue
    /// (its first effect restores production; a deployment still in `Requested` has
    /// touched nothing and undoes nothing) and ends at 100 % on the known-good colour.
    #[test]
    fn rollback_is_reachable_from_every_non_terminal_phase_and_restores_the_known_good_colour(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 0..40),
        how in 0u8..3,
    ) {
        let mut r = run(settings, &ops);
        let policy = r.w.settings.drift;
        let w = &mut r.w;
        w.failing_effect = None;
        w.crash_next = false;
        calm(w);
        let Some(d) = w.state.active.clone() else { return Ok(()); };
        if d.phase != Phase::RollingBack {
            let input = match how {
                0 => op("final-abort", Action::Abort),
                1 => op("final-rollback", Action::Rollback),
                _ => alarm("web-p99", "final"),
            };
            let outcome = w.apply(input);
            prop_assert_eq!(outcome, Outcome::Applied, "rollback refused in {:?}", d.phase);
            let rec = w.records.iter().rev().find(|r| r.before.active.as_ref().is_some_and(|a| a.id == d.id && a.phase != Phase::RollingBack)
                && r.decision.state.active.as_ref().is_some_and(|a| a.phase == Phase::RollingBack));
            let first = rec.and_then(|r| r.decision.effects.first().cloned());
            if d.phase == Phase::Requested {
                prop_assert!(matches!(first, Some(Effect::ScheduleTick { .. })), "a rollback from Requested touches nothing: {first:?}");
            } else {
                prop_assert_eq!(first, Some(Effect::SetProductionWeights {
                    deployment_id: d.id.clone(),
                    weights: Weights::all(d.stable),
                }), "the first effect of a rollback restores production");
            }
        }
        finish(&mut r);
        let w = &r.w;
        let end = w.log.events.iter().rev().find(|e| e.detail.deployment_id.as_deref() == Some(d.id.as_str())
            && matches!(e.kind, EventKind::RolledBack | EventKind::Failed));
        let end = end.expect("the deployment ended in RolledBack or Failed");
        prop_assert_eq!(end.kind, EventKind::RolledBack);
        prop_assert_eq!(end.detail.live_color, d.stable);
        if d.phase != Phase::Requested && !r.drifted {
            prop_assert_eq!(end.detail.weights, Weights::all(d.stable));
        }
        if w.state.live_observed && (!r.drifted || policy == DriftPolicy::Reassert) {
            prop_assert_eq!(w.cloud().rule, Weights::all(w.state.live), "production ends on the live colour");
        }
    }

    /// SPEC §4.4 and §5: duplicated, replayed and reordered messages and crashes never
    /// cause a duplicate event (decided or published), a second registration, or a
    /// change from a replayed input; every message ends applied or ignored, none in the
    /// dead-letter queue.
    #[test]
    fn no_duplicate_event_registration_or_replayed_change(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut r = run(settings, &ops);
        finish(&mut r);
        let w = &r.w;
        let mut ids = HashSet::new();
        for e in &w.log.events {
            prop_assert!(ids.insert(e.detail.event_id.clone()), "event id {} decided twice", e.detail.event_id);
        }
        let mut published = HashSet::new();
        for e in &w.log.published {
            prop_assert!(published.insert(e.detail.event_id.clone()), "event id {} published twice", e.detail.event_id);
        }
        prop_assert_eq!(&published, &ids, "every decided event is published");
        for rec in &w.records {
            for e in &rec.decision.effects {
                if let Effect::RegisterRevision { deployment_id, .. } = e {
                    let known = rec.before.deployment(deployment_id).and_then(|d| d.revision.clone());
                    prop_assert!(known.is_none(), "{deployment_id} registered again after {known:?}");
                }
            }
            if rec.input.is_keyed() && rec.before.recent_keys.contains(&rec.input.key) {
                prop_assert!(matches!(rec.decision.outcome, Outcome::Ignored { .. }), "replayed {} was applied", rec.input.key);
            }
        }
        // Only an operator event read more than an hour after it was put is refused
        // (`stale-event`, then dead-lettered): the sequence may hold one back that long.
        let now = w.now;
        let left: Vec<_> = w
            .inbox()
            .into_iter()
            .filter(|(body, _)| !stale_operator_event(&body.to_string(), now))
            .collect();
        prop_assert!(left.is_empty(), "messages left: {left:?}");
        let dead: Vec<_> = w
            .sim
            .db
            .dead_letters()
            .expect("dead letters")
            .into_iter()
            .filter(|d| !stale_operator_event(&d.body, now))
            .collect();
        prop_assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    }

    /// SPEC §5: per deployment, events carry sequences 1, 2, 3, … with no gap, as
    /// decided and as published; rejections never advance them.
    #[test]
    fn sequences_have_no_gap_per_deployment(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut r = run(settings, &ops);
        finish(&mut r);
        for (what, events) in [("decided", &r.w.log.events), ("published", &r.w.log.published)] {
            let mut last: HashMap<String, u64> = HashMap::new();
            for e in events.iter().filter(|e| e.kind != EventKind::Rejected) {
                let id = e.detail.deployment_id.clone().unwrap_or_default();
                let previous = last.insert(id.clone(), e.detail.sequence).unwrap_or(0);
                prop_assert_eq!(e.detail.sequence, previous + 1, "{} sequence of {} jumped", what, id);
            }
        }
    }

    /// SPEC §4.8: once inputs stop and messages are delivered (the reconciler re-driving
    /// lost ticks), every deployment ends in a terminal phase and nothing stays queued.
    #[test]
    fn every_run_ends_in_a_terminal_phase_once_inputs_stop_and_ticks_fire(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut r = run(settings, &ops);
        let policy = r.w.settings.drift;
        finish(&mut r);
        let w = &r.w;
        prop_assert!(w.state.active.is_none(), "still active: {:?}", w.state.active.as_ref().map(|d| (d.phase, d.next_tick)));
        prop_assert!(w.state.queued.is_none());
        if let Some(d) = &w.state.last {
            prop_assert!(d.phase.is_terminal());
            if d.phase != Phase::Failed {
                prop_assert_eq!(w.state.live, if d.phase == Phase::Succeeded { d.target } else { d.stable });
                // A service whose rule was never read (a deployment that ended before
                // its start checks) has only a default live colour.
                if w.state.live_observed && (!r.drifted || policy == DriftPolicy::Reassert) {
                    prop_assert_eq!(w.cloud().rule, Weights::all(w.state.live), "production ends on the live colour");
                }
            }
        }
    }

    /// SPEC §4.9: a colour is never updated in place nor scaled to zero while the rule,
    /// as the worker last read or wrote it, sends it traffic; nothing is touched before
    /// the rule was read.
    #[test]
    fn a_colour_that_carries_traffic_is_never_updated_or_scaled_down(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut r = run(settings, &ops);
        finish(&mut r);
        for rec in &r.w.records {
            // What the worker knows production serves, effect by effect.
            let mut known = rec.decision.state.confirmed;
            for e in &rec.decision.effects {
                match e {
                    Effect::SetProductionWeights { weights, .. } => known = Some(*weights),
                    Effect::UpdateService { color, .. } | Effect::ScaleToZero { color, .. } => {
                        let share = known.map(|w| w.of(*color));
                        prop_assert_eq!(share, Some(0), "{} touched ({:?}) while it serves {:?}% (input {})", color, e.name(), share, rec.input.key);
                    }
                    _ => {}
                }
            }
        }
    }
}

proptest! {
    // A quarter of the cases: every other property already runs these sequences.
    #![proptest_config(ProptestConfig { cases: config().cases.div_ceil(4), ..config() })]

    /// The phase table (`Phase::TRANSITIONS`, which docs/architecture.md draws) holds
    /// every phase change the flow makes: no transition happens that the table lacks.
    #[test]
    fn every_phase_change_is_in_the_phase_table(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut r = run(settings, &ops);
        finish(&mut r);
        for e in &r.w.log.events {
            if let (Some(from), Some(to)) = (e.detail.previous_phase, e.detail.phase)
                && from != to
            {
                prop_assert!(
                    Phase::TRANSITIONS.contains(&(from, to)),
                    "{from} -> {to} ({:?}) is not in Phase::TRANSITIONS", e.kind
                );
            }
        }
    }
}

/// Ops that leave every step's hold to the flow (no operator promote, which moves on at
/// once by design, and no weights written behind the worker's back), weighted so that
/// deployments get far: mostly deliveries, with crashes, store hiccups and concurrent
/// workers among them.
fn op_for_holds() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (1u8..6, 2u8..4).prop_map(|(alarms, health)| Op::Deliver { alarms, health }),
        2 => (1u32..4, copies()).prop_map(|(image, copies)| Op::Push { image, copies }),
        2 => Just(Op::Crash),
        2 => (0u8..6).prop_map(Op::CrashAt),
        2 => (0u8..3).prop_map(Op::Hiccup),
        2 => (2u8..=3).prop_map(Op::Concurrent),
        1 => (0u16..400).prop_map(|after_secs| Op::Reconcile { after_secs }),
        1 => (0u16..900).prop_map(|secs| Op::Advance { secs }),
        1 => any::<usize>().prop_map(Op::Replay),
    ]
}

/// Settings whose deployments shift on their own: timed steps, no approval gate, no hook.
fn timed_settings() -> impl Strategy<Value = (ServiceSettings, bool)> {
    service_settings()
        .prop_filter("timed steps", |(s, _)| {
            s.strategy
                .steps()
                .iter()
                .all(|step| matches!(step.hold, Hold::Timed(_)))
        })
        .prop_map(|(mut s, green)| {
            s.approval = false;
            s.checks.retain(|c| matches!(c, Check::Http { .. }));
            (s, green)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: config().cases.div_ceil(4), ..config() })]

    /// SPEC §4 invariant 12: a rollback's weights are written within one lease and one
    /// reconciler pass of its commit, whatever crash takes the worker that decided it
    /// (right after the commit, or before any of its calls): once the dead worker's lease
    /// has lapsed, the reconciler's next visit carries out what the rollback owes — no
    /// grace.
    #[test]
    fn a_rollbacks_weights_are_written_within_a_lease_and_a_reconciler_pass_of_the_alarm(
        settings in service_settings(),
        ops in proptest::collection::vec(any_op(), 0..40),
        crash in 0u8..8,
    ) {
        let mut r = run(settings, &ops);
        let w = &mut r.w;
        w.failing_effect = None;
        w.crash_next = false;
        calm(w);
        let Some(d) = w.state.active.clone() else { return Ok(()); };
        if matches!(d.phase, Phase::Requested | Phase::RollingBack) {
            return Ok(());
        }
        match crash {
            0 => w.crash_next = true,
            1..=5 => w.cloud().crash_before_call = Some(u32::from(crash - 1)),
            _ => {}
        }
        w.apply(alarm("web-5xx", "the-alarm"));
        calm(w);
        // When the rollback was committed: its worker died then (or right after).
        let committed = w
            .records
            .iter()
            .rev()
            .find(|r| r.input.key == "alarm:web-5xx:the-alarm" && r.decision.changed())
            .map(|r| r.now);
        let by_alarm = w.state.active.as_ref().is_some_and(|a| {
            a.id == d.id && a.rollback.as_ref().is_some_and(|rb| rb.by_alarm)
        });
        // A worker that died before deciding the alarm leaves it to the queue.
        prop_assume!(by_alarm);
        let Some(committed) = committed else { return Ok(()); };
        let rec = w.other_worker("reconciler");
        w.advance_to(committed.plus(LEASE).plus_ms(1));
        w.survive(async move { rec.reconcile_all().await });
        let restored = w
            .log
            .timeline
            .iter()
            .find(|(at, weights)| *at >= committed && *weights == Weights::all(d.stable))
            .map(|(at, _)| *at);
        prop_assert!(
            restored.is_some_and(|at| at.since(committed) <= LEASE.as_millis() as u64 + 1),
            "{} not restored within a lease and a pass of the rollback's commit at {committed:?} (crash {crash}): {:?}",
            d.id,
            w.log.timeline.iter().filter(|(at, _)| *at >= committed).collect::<Vec<_>>()
        );
    }

    /// SPEC §4 invariant 13: green carries each step's weights for the step's whole hold
    /// before the flow moves on, whatever crashes, lost answers, store hiccups and
    /// concurrent workers happen: the hold counts from when production serves the
    /// weights, and no tick advances past weights production did not serve.
    #[test]
    fn green_carries_each_steps_weights_for_its_whole_hold_before_the_flow_moves_on(
        settings in timed_settings(),
        ops in proptest::collection::vec(op_for_holds(), 1..80),
    ) {
        let mut r = run(settings, &ops);
        finish(&mut r);
        let w = &r.w;
        for rec in &w.records {
            if !matches!(rec.input.kind, bluegreen::flow::InputKind::Tick { .. }) {
                continue;
            }
            let Some(before) = rec.before.active.as_ref().filter(|d| d.phase == Phase::Shifting) else {
                continue;
            };
            let Some(after) = rec.decision.state.deployment(&before.id) else { continue };
            let moved_on = (after.phase == Phase::Shifting && after.step > before.step)
                || matches!(after.phase, Phase::Baking | Phase::Finalizing | Phase::Succeeded);
            let Some(Hold::Timed(hold)) = before.current_step().map(|s| s.hold) else {
                continue;
            };
            if !moved_on {
                continue;
            }
            // How long the rule had held the step's weights, without a break, by then.
            let mut since = None;
            for (at, weights) in w.log.timeline[..rec.writes_before].iter().rev() {
                if *weights != before.weights {
                    break;
                }
                since = Some(*at);
            }
            let served = since.map_or(0, |at| rec.now.since(at));
            prop_assert!(
                since.is_some() && served >= hold,
                "{} moved on from step {} ({}) after {served} ms of its {hold} ms hold (input {})",
                before.id, before.step + 1, before.weights, rec.input.key
            );
        }
    }
}
