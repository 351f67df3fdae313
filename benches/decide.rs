//! `decide` on a realistic mid-shift state: linear 10 % per minute at step 5 of 10, a
//! full dedup window, an HTTP validation and an approval in the plan, two rollback
//! alarms. Target (SPEC, issue 2): median ≤ 2 µs per input. The state clone is set-up,
//! not measured, because the worker decides on the state it just loaded.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bluegreen::flow::{
    Action, AlarmState, Check, Color, ImageRef, Input, InputKind, Observations, Phase,
    ProductionRules, ServiceSettings, ServiceState, Strategy, Timestamp, decide,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn settings() -> ServiceSettings {
    let mut s = ServiceSettings::with_strategy(Strategy::Linear {
        step_percent: 10,
        interval: Duration::from_secs(60),
    });
    s.rollback_alarms = vec!["web-5xx".into(), "web-p99".into()];
    s.has_test_listener = true;
    s.approval = true;
    s.checks = vec![Check::Http {
        name: "healthz".into(),
        url: "http://internal-test:8443/healthz".into(),
        expect_status: 200,
    }];
    s
}

/// Drives a deployment to step 5 of 10 through `decide` itself.
fn mid_shift(settings: &ServiceSettings) -> (ServiceState, Timestamp) {
    let mut state = ServiceState::new("web", Color::Blue);
    let mut now = Timestamp::from_millis(1_700_000_000_000);
    // Fill the dedup window with realistic keys first.
    for i in 0..80u32 {
        state
            .recent_keys
            .push_back(format!("event:{i:08x}-0000-4000-8000-000000000000"));
    }
    let image = ImageRef {
        repository: "123456789012.dkr.ecr.us-east-1.amazonaws.com/web".into(),
        digest: Some(format!("sha256:{}", "ab".repeat(32))),
        tag: Some("release-42".into()),
    };
    let deploy = Input::new(
        format!("push:{}", image.pinned()),
        InputKind::Deploy {
            image,
            requested_by: "ecr-push".into(),
            reason: None,
            unresolved: None,
        },
    );
    state = decide(state, settings, &deploy, now).state;
    let healthy = Observations {
        alarms_firing: Some(vec![]),
        target_health: Some(bluegreen::flow::TargetHealth {
            task_definition: Some(
                "arn:aws:ecs:us-east-1:123456789012:task-definition/web:43".into(),
            ),
            rollout_completed: true,
            running: 4,
            desired: 4,
            healthy_targets: 4,
            registered_targets: 4,
        }),
        production: None,
        read_errors: Vec::new(),
    };
    let mut n = 0;
    loop {
        let d = state.active.clone().expect("active");
        if d.phase == Phase::Shifting && d.step == 4 {
            return (state, now);
        }
        n += 1;
        let input = match d.phase {
            Phase::Provisioning => Input::new(
                "registered",
                InputKind::RevisionRegistered {
                    deployment_id: d.id.clone(),
                    task_definition_arn:
                        "arn:aws:ecs:us-east-1:123456789012:task-definition/web:43".into(),
                },
            ),
            Phase::Testing => Input::new(
                "validated",
                InputKind::ValidationsCompleted {
                    deployment_id: d.id.clone(),
                    cursor: d.cursor,
                    outcomes: vec![bluegreen::flow::CheckOutcome {
                        name: "healthz".into(),
                        passed: true,
                        detail: "200".into(),
                    }],
                },
            ),
            Phase::AwaitingApproval => Input::new(
                format!("event:approve-{n}"),
                InputKind::Operator {
                    action: Action::Approve,
                    deployment_id: None,
                    requested_by: "alice".into(),
                    reason: None,
                },
            ),
            _ => {
                now = now.max(d.next_tick.expect("pending tick").due);
                // The rule as the worker would read it: the step's write landed (the
                // read confirms it, and the step's hold counts from then).
                let observed = Observations {
                    production: Some(Ok(ProductionRules::one("rule", d.weights))),
                    ..healthy.clone()
                };
                Input::tick(d.pending_key().expect("pending tick"), observed)
            }
        };
        state = decide(state, settings, &input, now).state;
        assert!(n < 100, "did not reach step 5");
    }
}

fn bench(c: &mut Criterion) {
    let settings = settings();
    let (mut state, now) = mid_shift(&settings);
    let d = state.active.clone().expect("active");
    // As the runner leaves it: the step's write read back and confirmed.
    state.confirmed = Some(d.weights);
    let t = d.next_tick.expect("pending");
    let observed = Observations {
        production: Some(Ok(ProductionRules::one("rule", d.weights))),
        ..Observations::alarms_ok()
    };
    let tick = Input::tick(d.pending_key().expect("pending"), observed);
    let alarm = Input::new(
        "alarm:web-5xx:2026-11-26T10:00:00.000+0000",
        InputKind::Alarm {
            alarm: "web-5xx".into(),
            state: AlarmState::Alarm,
            reason: None,
            changed_at: None,
            observed: Observations::default(),
        },
    );
    let duplicate = Input::new(
        state.recent_keys[10].clone(),
        InputKind::Operator {
            action: Action::Pause,
            deployment_id: None,
            requested_by: "alice".into(),
            reason: None,
        },
    );
    let mut group = c.benchmark_group("decide");
    group.bench_function("step tick (mid-shift → next step)", |b| {
        b.iter_batched(
            || state.clone(),
            |s| decide(black_box(s), &settings, black_box(&tick), t.due),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("rollback alarm (mid-shift → rolling back)", |b| {
        b.iter_batched(
            || state.clone(),
            |s| decide(black_box(s), &settings, black_box(&alarm), now),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("replayed operator event (ignored as duplicate)", |b| {
        b.iter_batched(
            || state.clone(),
            |s| decide(black_box(s), &settings, black_box(&duplicate), now),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
