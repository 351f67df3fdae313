//! One test per transition of the flow (SPEC §3), driven through the decision core.

use std::time::Duration;

use bluegreen::flow::{
    Action, Check, CheckOutcome, Color, ColorAlarms, Concurrency, ExplicitStep, IgnoreCode, Input,
    InputKind, Observations, Outcome, Phase, RejectCode, ServiceSettings, Strategy, TargetHealth,
    Weights,
};

use crate::common::*;

fn wt(blue: u8, green: u8) -> Weights {
    Weights { blue, green }
}

fn rejected(outcome: &Outcome) -> RejectCode {
    match outcome {
        Outcome::Rejected { code, .. } => *code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The settings with a test listener and one HTTP validation, `healthz`.
fn with_healthz() -> ServiceSettings {
    let mut s = settings();
    s.has_test_listener = true;
    s.checks = vec![Check::Http {
        name: "healthz".into(),
        url: "http://test/healthz".into(),
        expect_status: 200,
    }];
    s
}

fn ignored(outcome: &Outcome) -> IgnoreCode {
    match outcome {
        Outcome::Ignored { code, .. } => *code,
        other => panic!("expected an ignore, got {other:?}"),
    }
}

#[test]
fn push_on_an_idle_service_starts_a_deployment_in_requested() {
    let mut w = World::new(settings());
    let outcome = w.apply(push(1));
    assert_eq!(outcome, Outcome::Applied);
    let d = w.active();
    assert_eq!((d.id.as_str(), d.phase), ("web-1", Phase::Requested));
    assert_eq!((d.stable, d.target), (Color::Blue, Color::Green));
    assert_eq!(w.event_kinds(), ["Deployment Started"]);
    assert_eq!(
        w.ticks().len(),
        1,
        "the start checks run on an immediate tick"
    );
    assert_eq!(w.ticks()[0].1, w.now);
}

#[test]
fn start_with_alarms_ok_registers_the_revision_once() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.tick();
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
    assert_eq!(w.log.registrations.len(), 1);
    assert_eq!(
        w.log.updates,
        [(Color::Green, w.log.registrations[0].clone())],
        "the idle colour is pointed at the new revision"
    );
    assert_eq!(
        w.event_kinds(),
        [
            "Deployment Started",
            "Deployment Phase Changed",
            "Deployment Phase Changed"
        ]
    );
}

#[test]
fn an_alarm_already_in_alarm_blocks_the_start() {
    let mut w = World::new(settings());
    w.alarms_firing = Some(vec!["web-p99".into()]);
    w.apply(push(1));
    w.tick();
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    let reason = w
        .active()
        .rollback
        .as_ref()
        .map(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("blocked") && reason.contains("web-p99"),
        "{reason}"
    );
    assert!(w.log.registrations.is_empty(), "nothing was provisioned");
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    assert!(
        w.log.calls.is_empty(),
        "nothing was touched, so nothing is undone: {:?}",
        w.log.calls
    );
    assert_eq!(w.cloud().rule, wt(100, 0), "production stays on blue");
}

/// Settings whose rollback alarms are one composite per colour.
fn per_colour_alarms() -> ServiceSettings {
    let mut s = settings();
    s.rollback_alarms = Vec::new();
    s.color_alarms = ColorAlarms {
        blue: vec!["web-blue-rollback".into()],
        green: vec!["web-green-rollback".into()],
    };
    s
}

#[test]
fn a_hotfix_deploys_while_the_live_colours_alarm_is_in_alarm() {
    let mut w = World::new(per_colour_alarms());
    // Blue is live and failing: its own composite is in ALARM.
    w.alarms_firing = Some(vec!["web-blue-rollback".into()]);
    w.apply(push(1));
    w.tick();
    assert_eq!(
        w.phase(),
        Some(Phase::WaitingForGreen),
        "the live colour's alarm does not block the fix deployed to green"
    );
    let outcome = w.apply(alarm("web-blue-rollback", "2023-11-14T22:14:00.000+0000"));
    assert_eq!(ignored(&outcome), IgnoreCode::NotApplicable);
    assert!(
        reason_of(&outcome).contains("watches blue, not green"),
        "{}",
        reason_of(&outcome)
    );
    w.run_until(|w| w.phase() == Some(Phase::Shifting));
    assert_eq!(
        w.phase(),
        Some(Phase::Shifting),
        "still shifting to the fix"
    );
    // The target colour's own alarm still rolls back.
    let outcome = w.apply(alarm("web-green-rollback", "2023-11-14T22:15:00.000+0000"));
    assert_eq!(outcome, Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert!(
        w.active()
            .rollback
            .as_ref()
            .is_some_and(|r| r.reason.contains("web-green-rollback")),
        "{:?}",
        w.active().rollback
    );
}

#[test]
fn the_target_colours_alarm_in_alarm_at_the_start_still_blocks_it() {
    let mut w = World::new(per_colour_alarms());
    w.alarms_firing = Some(vec!["web-green-rollback".into()]);
    w.apply(push(1));
    w.tick();
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert!(
        w.active().rollback.as_ref().is_some_and(
            |r| r.reason.contains("blocked") && r.reason.contains("web-green-rollback")
        ),
        "{:?}",
        w.active().rollback
    );
}

#[test]
fn a_start_that_cannot_read_alarms_waits_instead_of_starting() {
    let mut w = World::new(settings());
    w.alarms_firing = None;
    w.apply(push(1));
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Requested));
    assert_eq!(w.ticks().len(), 1);
    assert_eq!(w.ticks()[0].0.attempt, 2, "polls again as a new attempt");
    assert!(w.log.registrations.is_empty());
}

#[test]
fn a_registration_lost_in_a_crash_is_made_on_the_next_poll() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.crash_next = true; // the RegisterRevision effect and the poll tick are lost
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Provisioning));
    assert!(w.log.registrations.is_empty());
    let poll = w.active().next_tick.expect("poll");
    assert_eq!(
        poll.due,
        w.now.plus(w.settings.timeouts.poll),
        "provisioning polls; it does not sleep until its deadline"
    );
    w.advance_to(poll.due);
    let key = w.active().pending_key().expect("poll");
    w.apply(Input::tick(key, Observations::alarms_ok()));
    assert_eq!(w.log.registrations.len(), 1);
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
}

#[test]
fn provisioning_that_never_registers_rolls_back_at_its_timeout() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.crash_next = true; // Provisioning is committed; its RegisterRevision is lost
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Provisioning));
    // Whatever kept the registration from landing (it is owed, and carried out by the
    // next run that takes the lease), the stage's tick at its deadline rolls back.
    let d = w.active().clone();
    let deadline = d.deadline.expect("deadline");
    let key = d.pending_key().expect("poll");
    let decided = bluegreen::flow::decide(
        w.state.clone(),
        &w.settings,
        &Input::tick(key, Observations::alarms_ok()),
        deadline,
    );
    let after = decided.state.active.clone().expect("active");
    assert_eq!(after.phase, Phase::RollingBack);
    assert!(
        after
            .rollback
            .as_ref()
            .is_some_and(|r| r.reason.contains("task definition not registered")),
        "{:?}",
        after.rollback
    );
    // A registration answering after that is too late.
    let late = bluegreen::flow::decide(
        decided.state,
        &w.settings,
        &Input::new(
            "registered-late",
            InputKind::RevisionRegistered {
                deployment_id: "web-1".into(),
                task_definition_arn: "arn:late".into(),
            },
        ),
        deadline,
    );
    assert_eq!(ignored(&late.outcome), IgnoreCode::Stale);
    assert!(
        !late
            .effects
            .iter()
            .any(|e| matches!(e, bluegreen::flow::Effect::UpdateService { .. })),
        "no colour pointed at it"
    );
}

#[test]
fn a_registration_lost_with_its_worker_is_carried_out_by_the_next_input() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.crash_next = true; // Provisioning is committed; its RegisterRevision is lost
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Provisioning));
    assert!(w.log.registrations.is_empty());
    let cursor = w.active().cursor;
    assert!(
        w.ticks().iter().all(|(k, _)| k.cursor != cursor),
        "the poll tick was lost too"
    );
    // Any input that takes the lease first carries out what the decision owes: here an
    // operator's pause, long before the provisioning deadline.
    w.advance(2);
    w.apply(op("pause", Action::Pause));
    assert_eq!(
        w.log.registrations.len(),
        1,
        "registered once, by the re-drive"
    );
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
    assert!(w.active().is_paused(), "then the pause was decided");
}

#[test]
fn a_second_revision_result_is_ignored_and_registers_nothing() {
    let mut w = world_in(settings(), Phase::WaitingForGreen);
    let outcome = w.apply(Input::new(
        "registered-again",
        InputKind::RevisionRegistered {
            deployment_id: "web-1".into(),
            task_definition_arn: "arn:other".into(),
        },
    ));
    assert_eq!(ignored(&outcome), IgnoreCode::Stale);
    assert_eq!(w.log.registrations.len(), 1);
}

#[test]
fn waiting_for_green_polls_until_steady_and_healthy() {
    let mut w = World::new(settings());
    w.health = Some(TargetHealth {
        healthy_targets: 1,
        ..healthy()
    });
    // (the world reports the revision the colour really runs)
    w.apply(push(1));
    w.tick();
    w.tick();
    w.tick();
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
    w.health = Some(healthy());
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Shifting));
    assert_eq!(w.log.production, [wt(75, 25)]);
}

#[test]
fn green_not_healthy_within_its_timeout_rolls_back_naming_what_was_seen() {
    let mut w = World::new(settings());
    w.health = Some(TargetHealth {
        running: 1,
        ..healthy()
    });
    w.apply(push(1));
    w.run_until(|w| {
        w.phase() != Some(Phase::WaitingForGreen) && w.phase() != Some(Phase::Requested)
    });
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    let reason = w
        .active()
        .rollback
        .as_ref()
        .map(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("1/2 tasks running"), "{reason}");
}

#[test]
fn healthy_tasks_of_another_revision_do_not_count_as_green() {
    let mut w = World::new(settings());
    w.health = Some(TargetHealth {
        task_definition: Some("arn:aws:ecs:us-east-1:123456789012:task-definition/web:41".into()),
        ..healthy()
    });
    w.apply(push(1));
    w.tick();
    w.tick();
    w.tick();
    assert_eq!(
        w.phase(),
        Some(Phase::WaitingForGreen),
        "the old revision is warm and healthy"
    );
    assert!(w.log.production.is_empty());
    w.health = Some(healthy());
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Shifting));
}

#[test]
fn a_lost_final_weight_write_is_reasserted_when_promote_moves_on() {
    let mut s = settings();
    s.strategy = linear(50, 60);
    let mut w = world_in(s, Phase::Shifting);
    w.crash_next = true;
    w.tick(); // decides 100 %, but the write and the tick are lost
    assert_eq!(w.log.production.last(), Some(&wt(50, 50)));
    w.apply(op("promote", Action::Promote { skip_bake: false }));
    assert_eq!(w.phase(), Some(Phase::Baking));
    assert_eq!(
        w.log.production.last(),
        Some(&wt(0, 100)),
        "baking re-asserts 100 %"
    );
}

#[test]
fn healthy_green_with_validations_routes_the_test_listener_and_runs_them() {
    let s = with_healthz();
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Shifting));
    assert!(
        w.log.test.iter().all(|t| *t == wt(0, 100)),
        "the test rule follows green: {:?}",
        w.log.test
    );
    let validated: Vec<usize> = (0..w.log.calls.len())
        .filter(|i| matches!(w.log.calls[*i], Call::Validate(_)))
        .collect();
    assert_eq!(validated.len(), 1);
    assert_eq!(
        w.log
            .calls
            .iter()
            .position(|c| *c == Call::Test(wt(0, 100))),
        Some(validated[0] - 1),
        "test rule to green right before validations"
    );
    assert!(w.event_kinds().contains(&"Deployment Phase Changed"));
}

#[test]
fn a_failed_validation_rolls_back_before_production_moves() {
    let s = with_healthz();
    let mut w = World::new(s);
    w.validations_pass = false;
    w.apply(push(1));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    assert_eq!(w.log.production, [wt(100, 0)]);
    assert_eq!(
        w.log.test,
        [wt(0, 100), wt(100, 0)],
        "test rule back to blue"
    );
    assert_eq!(w.log.scaled_to_zero, [Color::Green]);
}

#[test]
fn a_hook_validation_waits_for_its_report() {
    let mut s = settings();
    s.checks = vec![Check::Hook {
        name: "smoke".into(),
    }];
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Testing));
    let deadline = w.active().deadline;
    assert!(deadline.is_some());
    let report = |passed| {
        Input::new(
            "event:hook-1",
            InputKind::HookReported {
                deployment_id: "web-1".into(),
                hook: "smoke".into(),
                passed,
                detail: None,
            },
        )
    };
    assert_eq!(w.apply(report(true)), Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::Shifting));
}

#[test]
fn hooks_reported_one_at_a_time_each_count_once() {
    let mut s = settings();
    s.checks = ["smoke", "load"]
        .map(|name| Check::Hook { name: name.into() })
        .to_vec();
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Testing));
    let report = |n: u32, hook: &str| {
        Input::new(
            format!("event:hook-{n}"),
            InputKind::HookReported {
                deployment_id: "web-1".into(),
                hook: hook.into(),
                passed: true,
                detail: None,
            },
        )
    };
    assert_eq!(w.apply(report(1, "smoke")), Outcome::Applied);
    assert_eq!(w.apply(report(2, "smoke")), Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::Testing), "load has not reported");
    assert_eq!(w.active().checks_passed, ["smoke"]);
    assert_eq!(w.apply(report(3, "load")), Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::Shifting));
}

#[test]
fn testing_runs_again_only_the_http_checks_that_have_not_passed() {
    use bluegreen::flow::Effect;
    use bluegreen::flow::decide::desired_effects;

    let http = |name: &str| Check::Http {
        name: name.into(),
        url: format!("http://test/{name}"),
        expect_status: 200,
    };
    let mut s = settings();
    s.checks = vec![http("a"), Check::Hook { name: "h".into() }, http("b")];
    let w = world_in(settings(), Phase::Shifting);
    let mut d = w.active().clone();
    d.phase = Phase::Testing;
    d.plan.checks = s.checks.clone();
    d.checks_passed = vec!["a".into()];
    let run: Vec<Vec<Check>> = desired_effects(&s, &d)
        .into_iter()
        .filter_map(|e| match e {
            Effect::RunValidations { checks, .. } => Some(checks),
            _ => None,
        })
        .collect();
    assert_eq!(run, [vec![http("b")]], "not a (passed), not h (a hook)");
    d.checks_passed = vec!["a".into(), "b".into()];
    assert!(
        desired_effects(&s, &d)
            .iter()
            .all(|e| !matches!(e, Effect::RunValidations { .. })),
        "only the hook is left: nothing to run"
    );
}

#[test]
fn a_validation_result_for_a_deployment_that_is_not_testing_is_ignored() {
    let s = with_healthz();
    let mut w = world_in(s, Phase::WaitingForGreen);
    // Even one naming the current cursor (no effect of this phase asks for it).
    let cursor = w.active().cursor;
    let outcome = w.apply(Input::new(
        "validated",
        InputKind::ValidationsCompleted {
            deployment_id: "web-1".into(),
            cursor,
            outcomes: vec![CheckOutcome {
                name: "healthz".into(),
                passed: false,
                detail: "500".into(),
            }],
        },
    ));
    assert_eq!(ignored(&outcome), IgnoreCode::Stale);
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
}

#[test]
fn the_approval_gate_waits_for_approve() {
    let mut s = settings();
    s.approval = true;
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::AwaitingApproval));
    assert!(w.event_kinds().contains(&"Deployment Awaiting Approval"));
    assert!(w.log.production.is_empty());
    assert_eq!(w.apply(op("a1", Action::Approve)), Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::Shifting));
    assert_eq!(w.log.production, [wt(75, 25)]);
    let approved = w
        .log
        .events
        .iter()
        .find(|e| e.detail.previous_phase == Some(Phase::AwaitingApproval))
        .expect("the approval's event");
    assert_eq!(
        approved.detail.requested_by.as_deref(),
        Some("alice"),
        "the event names who approved"
    );
}

#[test]
fn approve_outside_the_gate_is_rejected_with_a_reason() {
    let mut w = world_in(settings(), Phase::Shifting);
    let outcome = w.apply(op("a1", Action::Approve));
    assert_eq!(rejected(&outcome), RejectCode::InvalidTransition);
    assert!(reason_of(&outcome).contains("Shifting"));
    assert_eq!(w.event_kinds().last(), Some(&"Event Rejected"));
}

#[test]
fn an_approval_never_given_rolls_back_at_its_timeout() {
    let mut s = settings();
    s.approval = true;
    s.timeouts.approval = Duration::from_secs(3600);
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::RollingBack));
    let d = w.active();
    assert_eq!(
        d.rollback.as_ref().map(|r| r.from_phase),
        Some(Phase::AwaitingApproval)
    );
}

#[test]
fn each_step_tick_moves_to_the_next_weight_and_ends_in_success() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    assert_eq!(
        w.log.production,
        [
            wt(75, 25),
            wt(50, 50),
            wt(25, 75),
            wt(0, 100),
            wt(0, 100),
            wt(0, 100)
        ],
        "baking and finalizing re-assert 100 % (idempotent)"
    );
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.state.live, Color::Green);
    assert_eq!(
        w.log.scaled_to_zero,
        [Color::Blue],
        "blue released after the termination wait"
    );
    let kinds = w.event_kinds();
    assert_eq!(kinds.iter().filter(|k| **k == "Traffic Shifted").count(), 4);
    let shifted: Vec<String> = w
        .log
        .events
        .iter()
        .filter(|e| e.kind.detail_type() == "Traffic Shifted")
        .map(|e| e.detail.reason.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        shifted[..2],
        ["step 1/4: 25% to green", "step 2/4: 50% to green"],
        "each step names itself"
    );
    assert_eq!(
        &kinds[kinds.len() - 4..],
        [
            "Deployment Phase Changed",
            "Deployment Phase Changed",
            "Deployment Succeeded",
            "Old Color Released"
        ]
    );
}

#[test]
fn an_alarm_mid_shift_restores_production_first() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.tick(); // 50/50
    let before = w.log.calls.len();
    let outcome = w.apply(alarm("web-5xx", "2023-11-14T22:20:00.000+0000"));
    assert_eq!(outcome, Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert_eq!(
        w.log.calls.get(before),
        Some(&Call::Production(wt(100, 0))),
        "the first call of a rollback restores production"
    );
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    assert_eq!(w.log.production.last(), Some(&wt(100, 0)));
    assert_eq!(w.state.live, Color::Blue);
}

#[test]
fn a_firing_alarm_seen_before_a_step_rolls_back() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.alarms_firing = Some(vec!["web-p99".into()]);
    w.tick();
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert_eq!(w.log.production, [wt(75, 25), wt(100, 0)]);
}

#[test]
fn a_step_holds_while_alarm_state_is_unknown() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.alarms_firing = None;
    w.tick();
    assert_eq!(w.active().step, 0, "no step taken blind");
    assert_eq!(w.log.production, [wt(75, 25)]);
    w.alarms_firing = Some(vec![]);
    w.tick();
    assert_eq!(w.active().step, 1);
}

fn explicit() -> Strategy {
    Strategy::Steps {
        steps: vec![
            ExplicitStep {
                weight: 10,
                pause: Some(Duration::from_secs(60)),
            },
            ExplicitStep {
                weight: 50,
                pause: None,
            },
            ExplicitStep {
                weight: 100,
                pause: None,
            },
        ],
    }
}

#[test]
fn an_untimed_pause_waits_for_promote_then_continues() {
    let mut w = World::new(ServiceSettings::with_strategy(explicit()));
    w.apply(push(1));
    w.run_until(|w| w.active().step == 1);
    let due = w.active().next_tick.map(|t| t.due);
    assert_eq!(
        due,
        Some(w.now.plus(w.settings.timeouts.promote)),
        "only a watchdog is pending"
    );
    assert_eq!(
        w.apply(op("p1", Action::Promote { skip_bake: false })),
        Outcome::Applied
    );
    assert_eq!(w.log.production, [wt(90, 10), wt(50, 50), wt(0, 100)]);
}

#[test]
fn an_untimed_pause_without_promote_rolls_back_at_its_timeout() {
    let mut w = World::new(ServiceSettings::with_strategy(explicit()));
    w.apply(push(1));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    let reason = w
        .state
        .last
        .as_ref()
        .and_then(|d| d.rollback.clone())
        .map(|r| r.reason);
    assert!(reason.unwrap_or_default().contains("not promoted"));
}

#[test]
fn promote_jumps_to_full_traffic_and_skip_bake_ends_the_bake() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.apply(op("p1", Action::Promote { skip_bake: true }));
    assert_eq!(w.log.production, [wt(75, 25), wt(0, 100)]);
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Finalizing), "bake skipped");
    let mut w2 = world_in(settings(), Phase::Baking);
    let outcome = w2.apply(op("p2", Action::Promote { skip_bake: false }));
    assert_eq!(rejected(&outcome), RejectCode::InvalidTransition);
    w2.apply(op("p3", Action::Promote { skip_bake: true }));
    assert_eq!(w2.phase(), Some(Phase::Finalizing));
}

#[test]
fn rollback_after_success_while_warm_restores_the_old_colour() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    assert_eq!(w.state.live, Color::Green);
    w.advance(60);
    let other = w.apply(op_on("r0", Action::Rollback, Some("web-9")));
    assert_eq!(rejected(&other), RejectCode::UnknownDeployment);
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    let named = op_on("r1", Action::Rollback, Some("web-1"));
    assert_eq!(w.apply(named), Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert_eq!(w.log.production.last(), Some(&wt(100, 0)));
    assert_eq!(w.state.live, Color::Blue);
    w.settle();
    let back = w
        .log
        .events
        .iter()
        .rfind(|e| e.kind.detail_type() == "Traffic Shifted");
    assert_eq!(
        back.and_then(|e| e.detail.reason.as_deref()),
        Some("100% back on blue")
    );
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    assert_eq!(
        w.log.scaled_to_zero,
        [Color::Green],
        "blue was never released"
    );
}

#[test]
fn rollback_after_success_at_the_end_of_the_termination_wait_is_rejected() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    let warm_until = w.state.last.as_ref().and_then(|d| d.warm_until);
    // The release is due at this very millisecond: the old colour is no longer warm.
    w.advance_to(warm_until.expect("warm"));
    let outcome = w.apply(op("r1", Action::Rollback));
    assert_eq!(rejected(&outcome), RejectCode::InvalidTransition);
    assert_eq!(w.state.live, Color::Green);
}

#[test]
fn rollback_after_the_old_colour_was_released_is_rejected() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    let outcome = w.apply(op("r1", Action::Rollback));
    assert_eq!(rejected(&outcome), RejectCode::InvalidTransition);
    assert!(reason_of(&outcome).contains("no longer warm"));
}

#[test]
fn pause_holds_ticks_and_resume_keeps_the_remaining_time() {
    let mut w = world_in(settings(), Phase::Shifting);
    let due = w.active().next_tick.map(|t| t.due).expect("pending");
    w.advance(20);
    w.apply(op("p1", Action::Pause));
    assert!(w.active().is_paused());
    assert_eq!(ignored(&w.tick().expect("tick")), IgnoreCode::Paused);
    w.advance(600);
    let resumed_at = w.now;
    w.apply(op("p2", Action::Resume));
    let new_due = w.active().next_tick.map(|t| t.due).expect("pending");
    let entered = due.millis() - 60_000;
    assert_eq!(entered + 60_000, due.millis());
    assert_eq!(
        new_due.since(resumed_at),
        40_000,
        "60 s step, paused after 20 s: 40 s remain"
    );
    let kinds = w.event_kinds();
    assert_eq!(
        &kinds[kinds.len() - 2..],
        ["Deployment Phase Changed", "Deployment Phase Changed"]
    );
}

#[test]
fn an_alarm_while_paused_still_rolls_back() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.apply(op("p1", Action::Pause));
    w.apply(alarm("web-5xx", "t1"));
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert!(!w.active().is_paused());
}

#[test]
fn abort_rolls_back_and_a_second_abort_is_rejected() {
    let mut w = world_in(settings(), Phase::Baking);
    assert_eq!(w.apply(op("a1", Action::Abort)), Outcome::Applied);
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    let reason = w
        .active()
        .rollback
        .as_ref()
        .map(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("aborted by alice"), "{reason}");
    let outcome = w.apply(op("a2", Action::Abort));
    assert_eq!(rejected(&outcome), RejectCode::InvalidTransition);
    assert_eq!(
        rejected(&w.apply(op("p", Action::Pause))),
        RejectCode::InvalidTransition
    );
}

#[test]
fn rollback_effects_that_keep_failing_end_in_failed() {
    let mut s = settings();
    s.rollback_attempts = 3;
    let mut w = world_in(s, Phase::Shifting);
    w.failing_effect = Some("set-production-weights");
    w.apply(alarm("web-5xx", "t1"));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Failed));
    assert_eq!(w.event_kinds().last(), Some(&"Deployment Failed"));
    assert_eq!(
        w.cloud().rule,
        wt(75, 25),
        "the failing writes never reached the rule"
    );
    let failures = w
        .records
        .iter()
        .filter(|r| {
            matches!(&r.input.kind, InputKind::EffectFailed { effect, .. } if effect == "set-production-weights")
        })
        .count();
    assert_eq!(failures, 3, "one attempt per rollback attempt");
}

#[test]
fn a_weight_write_that_fails_mid_shift_rolls_back() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.failing_effect = Some("set-production-weights");
    w.tick();
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    w.failing_effect = None;
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
}

#[test]
fn an_effect_failure_for_an_old_cursor_is_ignored() {
    let mut w = world_in(settings(), Phase::Shifting);
    let outcome = w.apply(Input::new(
        "old-failure",
        InputKind::EffectFailed {
            deployment_id: "web-1".into(),
            cursor: 1,
            effect: "set-production-weights".into(),
            reason: "late".into(),
        },
    ));
    assert_eq!(ignored(&outcome), IgnoreCode::Stale);
    assert_eq!(w.phase(), Some(Phase::Shifting));
}

#[test]
fn retry_after_a_rollback_starts_a_new_deployment_of_the_same_image() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.apply(op("a1", Action::Abort));
    w.settle();
    let other = w.apply(op_on("r0", Action::Retry, Some("web-9")));
    assert_eq!(rejected(&other), RejectCode::UnknownDeployment);
    assert!(w.state.active.is_none());
    let named = op_on("r1", Action::Retry, Some("web-1"));
    assert_eq!(w.apply(named), Outcome::Applied);
    let d = w.active();
    assert_eq!(d.id, "web-2");
    assert_eq!(d.retry_of.as_deref(), Some("web-1"));
    assert_eq!(d.to_image, image(1));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(
        w.log.registrations.len(),
        2,
        "one registration per deployment"
    );
}

#[test]
fn retry_while_a_deployment_runs_is_rejected() {
    let mut w = world_in(settings(), Phase::Shifting);
    assert_eq!(
        rejected(&w.apply(op("r1", Action::Retry))),
        RejectCode::DeploymentInProgress
    );
}

#[test]
fn queue_keeps_the_latest_digest_and_starts_it_when_the_active_one_ends() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.apply(push(2));
    w.apply(push(3));
    assert_eq!(
        w.state.queued.as_ref().map(|q| q.image.clone()),
        Some(image(3))
    );
    assert_eq!(
        w.event_kinds()
            .iter()
            .filter(|k| **k == "Deployment Queued")
            .count(),
        2
    );
    w.run_until(|w| w.state.active.as_ref().is_some_and(|d| d.id == "web-2"));
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.active().to_image, image(3), "latest digest wins");
    assert_eq!(
        w.active().stable,
        Color::Green,
        "the new deployment starts from the new live colour"
    );
    w.settle();
    assert_eq!(w.state.live_image, Some(image(3).pinned()));
}

#[test]
fn supersede_rolls_back_the_active_deployment_then_starts_the_new_image() {
    let mut s = settings();
    s.concurrency = Concurrency::Supersede;
    let mut w = world_in(s, Phase::Shifting);
    w.apply(push(2));
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    w.run_until(|w| w.state.active.as_ref().is_some_and(|d| d.id == "web-2"));
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.state.live_image, Some(image(2).pinned()));
}

#[test]
fn reject_policy_refuses_a_second_image() {
    let mut s = settings();
    s.concurrency = Concurrency::Reject;
    let mut w = world_in(s, Phase::Shifting);
    let outcome = w.apply(push(2));
    assert_eq!(rejected(&outcome), RejectCode::DeploymentInProgress);
    assert!(w.state.queued.is_none());
    let e = w.log.events.last().expect("event");
    assert_eq!(e.detail.code.as_deref(), Some("deployment-in-progress"));
    assert_eq!(e.detail.input.as_deref(), Some(push(2).key.as_str()));
}

#[test]
fn an_image_without_digest_or_already_live_is_rejected() {
    let mut w = World::new(settings());
    let mut unpinned = push(1);
    if let InputKind::Deploy { image, .. } = &mut unpinned.kind {
        image.digest = None;
    }
    unpinned.key = "event:unpinned".into();
    let outcome = w.apply(unpinned);
    assert_eq!(rejected(&outcome), RejectCode::ImageNotFound);
    assert!(
        reason_of(&outcome).contains("tag release-1 does not exist"),
        "{}",
        reason_of(&outcome)
    );
    assert!(w.state.active.is_none(), "nothing deployed by tag alone");
    w.apply(push(1));
    w.settle();
    let mut again = push(1);
    again.key = "event:again".into();
    assert_eq!(rejected(&w.apply(again)), RejectCode::AlreadyDeployed);
}

#[test]
fn alarms_that_are_ok_or_not_listed_are_ignored() {
    let mut w = world_in(settings(), Phase::Shifting);
    let ok = Input::new(
        "alarm:web-5xx:t2",
        InputKind::Alarm {
            alarm: "web-5xx".into(),
            state: bluegreen::flow::AlarmState::Ok,
            reason: None,
            changed_at: None,
            observed: Default::default(),
        },
    );
    assert_eq!(ignored(&w.apply(ok)), IgnoreCode::NotApplicable);
    assert_eq!(
        ignored(&w.apply(alarm("other", "t3"))),
        IgnoreCode::NotApplicable
    );
    assert_eq!(w.phase(), Some(Phase::Shifting));
}

#[test]
fn actions_on_a_finished_deployment_are_rejected_naming_it() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    w.apply(push(2));
    let outcome = w.apply(op_on("x", Action::Abort, Some("web-1")));
    assert_eq!(rejected(&outcome), RejectCode::UnknownDeployment);
    assert!(
        reason_of(&outcome).contains("web-1 has already finished"),
        "{}",
        reason_of(&outcome)
    );
}

#[test]
fn a_tick_for_an_old_step_does_nothing() {
    let mut w = world_in(settings(), Phase::Shifting);
    let old = bluegreen::flow::TickKey {
        deployment_id: "web-1".into(),
        cursor: 1,
        attempt: 1,
    };
    let outcome = w.apply(Input::tick(old, Observations::alarms_ok()));
    assert_eq!(ignored(&outcome), IgnoreCode::Stale);
}

#[test]
fn a_replayed_input_is_ignored() {
    let mut w = world_in(settings(), Phase::Shifting);
    let a = alarm("web-5xx", "t1");
    w.apply(a.clone());
    let events = w.log.events.len();
    assert_eq!(ignored(&w.apply(a)), IgnoreCode::Duplicate);
    assert_eq!(w.log.events.len(), events);
}

#[test]
fn the_reconciler_redrives_a_lost_tick_with_the_current_step_effects() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.tick(); // step 2: written, confirmed, its tick sent
    let d = w.active().clone();
    assert_eq!(d.step, 1);
    assert_eq!(w.log.production.last(), Some(&wt(50, 50)));
    // The queue loses the step's tick (nothing owed: the decision was carried out).
    let lost = w.sim.db.pending().expect("inbox").len();
    w.sim.db.purge().expect("purge");
    assert_eq!(lost, 1, "the one tick");
    let early = w.apply(Input::reconcile("reconcile:early"));
    assert_eq!(ignored(&early), IgnoreCode::NothingOverdue);
    w.advance_to(
        d.next_tick
            .map(|t| t.due)
            .expect("pending")
            .plus(Duration::from_secs(61)),
    );
    let writes = w.log.production.len();
    assert_eq!(
        w.apply(Input::reconcile("reconcile:late")),
        Outcome::Applied
    );
    assert_eq!(
        &w.log.production[writes..],
        [wt(50, 50)],
        "step 2 weights re-asserted on re-drive"
    );
    let current = w
        .ticks()
        .iter()
        .filter(|(k, _)| k.cursor == d.cursor)
        .count();
    assert_eq!(current, 1, "the same tick is sent again");
}

#[test]
fn the_reconciler_carries_out_a_dead_workers_step_at_once_not_after_the_grace() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.crash_next = true;
    w.tick(); // decides step 2; its write and tick are lost with the worker
    let d = w.active().clone();
    assert_eq!(d.step, 1);
    assert_eq!(w.log.production.last(), Some(&wt(75, 25)));
    assert!(
        w.ticks().iter().all(|(k, _)| k.cursor != d.cursor),
        "the step's tick was lost with the crash"
    );
    // The dead worker's lease has lapsed; the grace has not.
    w.advance(2);
    assert_eq!(w.apply(Input::reconcile("reconcile:1")), Outcome::Applied);
    assert_eq!(
        w.log.production.last(),
        Some(&wt(50, 50)),
        "written at once"
    );
    let served = w.active().served_at.expect("the step is served");
    assert_eq!(
        served, w.now,
        "the step's hold counts from its confirmation"
    );
    let due = w.active().next_tick.expect("tick").due;
    assert_eq!(due, served.plus(Duration::from_secs(60)));
    assert_eq!(
        w.ticks()
            .iter()
            .filter(|(k, _)| k.cursor == d.cursor)
            .map(|(_, at)| *at)
            .collect::<Vec<_>>(),
        [due],
        "one tick, for the whole hold from now"
    );
}

#[test]
fn canary_shifts_its_percent_then_everything() {
    let mut w = World::new(ServiceSettings::with_strategy(Strategy::Canary {
        percent: 10,
        bake: Duration::from_secs(300),
    }));
    w.apply(push(1));
    w.settle();
    assert_eq!(
        w.log.production,
        [wt(90, 10), wt(0, 100), wt(0, 100), wt(0, 100)]
    );
}

#[test]
fn all_at_once_shifts_in_one_step() {
    let mut w = World::new(ServiceSettings::with_strategy(Strategy::AllAtOnce));
    w.apply(push(1));
    w.settle();
    assert_eq!(w.log.production, [wt(0, 100); 3]);
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
}

#[test]
fn linear_ten_percent_per_minute_has_ten_steps_reaching_full_at_minute_nine() {
    let steps = linear(10, 60).steps();
    assert_eq!(steps.len(), 10);
    assert_eq!(
        steps.iter().map(|s| s.percent).collect::<Vec<_>>(),
        [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    );
    let plan = bluegreen::plan::schedule(
        "web",
        "linear",
        &ServiceSettings::with_strategy(linear(10, 60)).plan(),
    );
    assert_eq!(plan.steps.last().map(|s| s.offset_seconds), Some(540));
    assert_eq!(plan.total_seconds, 540 + 300);
}

#[test]
fn a_tick_that_arrives_early_does_not_cut_the_step_short() {
    let mut w = world_in(settings(), Phase::Shifting);
    let t = w.active().next_tick.expect("pending");
    assert!(w.now < t.due);
    let key = w.active().pending_key().expect("pending");
    let outcome = w.apply(Input::tick(key.clone(), Observations::alarms_ok()));
    assert_eq!(ignored(&outcome), IgnoreCode::Early);
    assert_eq!(w.active().step, 0);
    w.advance_to(t.due);
    assert_eq!(
        w.apply(Input::tick(key, Observations::alarms_ok())),
        Outcome::Applied
    );
    assert_eq!(w.active().step, 1);
}

#[test]
fn the_worker_is_told_what_to_read_before_each_tick() {
    use bluegreen::flow::{Needs, needs};
    let next = |w: &World| {
        Input::tick(
            w.active().pending_key().expect("pending"),
            Observations::default(),
        )
    };
    let mut w = World::new(settings());
    w.apply(push(1));
    assert_eq!(
        needs(&w.state, &next(&w)),
        Needs {
            alarms: true,
            production: true,
            ..Needs::default()
        },
        "the start reads the alarms and the production rule"
    );
    w.tick();
    assert_eq!(
        needs(&w.state, &next(&w)),
        Needs {
            alarms: true,
            target_health: Some(Color::Green),
            production: true,
            ..Needs::default()
        }
    );
    w.run_until(|w| w.phase() == Some(Phase::Shifting));
    assert_eq!(
        needs(&w.state, &next(&w)),
        Needs {
            alarms: true,
            production: true,
            ..Needs::default()
        }
    );
    w.apply(op("abort", Action::Abort));
    assert_eq!(
        needs(&w.state, &next(&w)),
        Needs::default(),
        "a rollback reads nothing first"
    );
    let mut untimed = World::new(ServiceSettings::with_strategy(explicit()));
    untimed.apply(push(1));
    untimed.run_until(|w| w.state.active.as_ref().is_some_and(|d| d.step == 1));
    assert_eq!(
        needs(&untimed.state, &next(&untimed)),
        Needs {
            production: true,
            ..Needs::default()
        },
        "the promote watchdog reads no alarms, only the rule"
    );
    let mut tagged = push(9);
    if let InputKind::Deploy { image, .. } = &mut tagged.kind {
        image.digest = None;
    }
    assert_eq!(
        needs(&w.state, &tagged),
        Needs {
            resolve_tag: true,
            ..Needs::default()
        },
        "an image by tag is resolved first"
    );
    let idle = World::new(settings());
    assert_eq!(
        needs(&idle.state, &Input::reconcile("r")),
        Needs::default(),
        "a service never observed has no live colour to compare with"
    );
}

#[test]
fn a_lost_finalize_is_redriven_with_full_traffic() {
    let mut w = world_in(settings(), Phase::Baking);
    w.advance_to(w.active().next_tick.expect("bake timer").due);
    let key = w.active().pending_key().expect("bake timer");
    w.crash_next = true; // Finalizing is decided, but its writes and its tick are lost
    w.apply(Input::tick(key, Observations::alarms_ok()));
    assert_eq!(w.phase(), Some(Phase::Finalizing));
    let writes = w.log.production.len();
    w.advance(2); // the dead worker's lease lapses
    assert_eq!(w.apply(Input::reconcile("reconcile")), Outcome::Applied);
    assert_eq!(
        &w.log.production[writes..],
        [wt(0, 100)],
        "the re-drive re-asserts production, once"
    );
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
}

fn switch_to(key: &str, to: Color, force: bool) -> Input {
    op(key, Action::Switch { to, force })
}

/// A world whose first deployment (green) succeeded and whose old colour (blue) was
/// released: blue runs nothing.
fn green_live_blue_released() -> World {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.log.scaled_to_zero, [Color::Blue]);
    assert_eq!(w.cloud().colors.get(&Color::Blue).map(|c| c.1), Some(0));
    w
}

#[test]
fn a_switch_scales_the_colour_waits_until_healthy_then_moves_every_rule_and_keeps_it_live() {
    let mut w = green_live_blue_released();
    let outcome = w.apply(switch_to("s1", Color::Blue, false));
    assert_eq!(outcome, Outcome::Applied, "{}", reason_of(&outcome));
    let d = w.active();
    assert!(d.is_switch());
    assert_eq!((d.stable, d.target), (Color::Green, Color::Blue));
    w.tick(); // Requested → scale blue up, wait for it
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
    assert!(w.log.calls.contains(&Call::ScaleUp(Color::Blue)));
    let counts = {
        let c = w.cloud();
        (
            c.colors.get(&Color::Blue).map(|c| c.1),
            c.colors.get(&Color::Green).map(|c| c.1),
        )
    };
    assert_eq!(counts.0, counts.1, "blue runs the live task count");
    assert!(counts.0 > Some(0));
    assert_eq!(
        w.cloud().rule,
        wt(0, 100),
        "nothing moves before blue is healthy"
    );
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.cloud().rule, wt(100, 0), "every production rule on blue");
    assert_eq!(w.state.live, Color::Blue, "recorded as live");
    assert_eq!(w.state.confirmed, Some(wt(100, 0)));
    assert!(
        w.state.last.as_ref().is_some_and(|d| d
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("switched to blue"))),
        "{:?}",
        w.state.last
    );
    // The reconciler keeps it: nothing is written back to green.
    let writes = w.log.production.len();
    w.advance(120);
    w.reconcile();
    assert_eq!(
        w.log.production.len(),
        writes,
        "drift handling keeps the switched colour"
    );
    // And the next deployment goes to the other colour.
    w.apply(push(2));
    assert_eq!(w.active().target, Color::Green);
}

#[test]
fn a_switch_during_a_deployment_rolls_it_back_to_the_known_good_colour() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.tick(); // 50/50
    let outcome = w.apply(switch_to("s1", Color::Blue, false));
    assert_eq!(outcome, Outcome::Applied, "{}", reason_of(&outcome));
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert_eq!(
        w.log.production.last(),
        Some(&wt(100, 0)),
        "production moves first, at once"
    );
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    assert!(
        w.state
            .last
            .as_ref()
            .and_then(|d| d.rollback.as_ref())
            .is_some_and(|r| r.reason.contains("switched to blue by")),
        "ended as rolled back by the operator: {:?}",
        w.state.last
    );
    // A switch to the colour being deployed is refused with what to do instead.
    let mut w = world_in(settings(), Phase::Shifting);
    let outcome = w.apply(switch_to("s2", Color::Green, false));
    assert_eq!(rejected(&outcome), RejectCode::InvalidTransition);
    assert!(
        reason_of(&outcome).contains("promote --skip-bake"),
        "{}",
        reason_of(&outcome)
    );
}

#[test]
fn a_switch_to_a_colour_that_never_gets_healthy_is_refused_and_production_stays() {
    let mut w = green_live_blue_released();
    let unhealthy = TargetHealth {
        healthy_targets: 0,
        ..healthy()
    };
    w.health = Some(unhealthy);
    w.apply(switch_to("s1", Color::Blue, false));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    let reason = w
        .state
        .last
        .as_ref()
        .and_then(|d| d.rollback.as_ref())
        .map(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("switch refused") && reason.contains("--force"),
        "{reason}"
    );
    assert_eq!(w.cloud().rule, wt(0, 100), "production stays on green");
    assert_eq!(w.state.live, Color::Green);
    assert_eq!(
        w.log.scaled_to_zero,
        [Color::Blue],
        "the refused switch scales nothing down (only the earlier release did)"
    );
}

#[test]
fn a_forced_switch_moves_without_waiting_for_health() {
    let mut w = green_live_blue_released();
    w.health = Some(TargetHealth {
        healthy_targets: 0,
        ..healthy()
    });
    w.apply(switch_to("s1", Color::Blue, true));
    w.tick();
    assert_eq!(w.phase(), Some(Phase::Shifting));
    assert!(w.log.calls.contains(&Call::ScaleUp(Color::Blue)));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.cloud().rule, wt(100, 0));
    assert_eq!(w.state.live, Color::Blue);
}

#[test]
fn a_switch_to_the_warm_old_colour_is_a_rollback_and_to_the_live_one_is_refused() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    let outcome = w.apply(switch_to("s0", Color::Green, false));
    assert_eq!(rejected(&outcome), RejectCode::AlreadyDeployed);
    let outcome = w.apply(switch_to("s1", Color::Blue, false));
    assert_eq!(outcome, Outcome::Applied);
    assert_eq!(
        w.phase(),
        Some(Phase::RollingBack),
        "blue is warm: production moves at once"
    );
    w.settle();
    assert_eq!(w.cloud().rule, wt(100, 0));
    assert_eq!(w.state.live, Color::Blue);
}

#[test]
fn a_switch_whose_worker_dies_after_its_commit_is_carried_out_by_the_next() {
    let mut w = green_live_blue_released();
    w.apply(switch_to("s1", Color::Blue, false));
    w.crash_next = true; // the ScaleUp and the poll tick of WaitingForGreen are lost
    w.tick();
    assert_eq!(w.phase(), Some(Phase::WaitingForGreen));
    assert!(
        !w.log.calls.contains(&Call::ScaleUp(Color::Blue)),
        "lost with the worker"
    );
    w.settle();
    assert!(
        w.log.calls.contains(&Call::ScaleUp(Color::Blue)),
        "carried out by the next"
    );
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.cloud().rule, wt(100, 0));
    assert_eq!(w.state.live, Color::Blue);
}

#[test]
fn a_switch_on_a_service_whose_rule_was_never_read_does_not_guess_the_live_colour() {
    let mut w = World::new(settings());
    let outcome = w.apply(switch_to("s1", Color::Blue, false));
    assert_eq!(rejected(&outcome), RejectCode::InvalidTransition);
    assert!(
        reason_of(&outcome).contains("never had its production rule read"),
        "{}",
        reason_of(&outcome)
    );
}
