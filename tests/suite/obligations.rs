//! Bounded rollback, on the production worker over the embedded ports (see `common`): a
//! committed decision is an obligation any lease holder carries out (SPEC §4 invariant
//! 12), a step counts only once served (13), nothing waits without a bound (14), a
//! rollback is never starved by a busy lease, and the store's failures are told apart
//! from the effects'.

use std::time::Duration;

use bluegreen::flow::{
    Action, Effect, EventKind, IgnoreCode, Input, Observations, Outcome, Phase, ProductionRules,
    ServiceSettings, Strategy, UnreadablePolicy, decide,
};
use bluegreen::ports::Inbox;
use bluegreen::worker::Disposition;

use crate::common::*;

fn events_of(w: &World, kind: EventKind) -> Vec<bluegreen::flow::EventDetail> {
    w.log
        .events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.detail.clone())
        .collect()
}

/// When the production rule first took `weights`, if it did.
fn first_write(w: &World, weights: bluegreen::flow::Weights) -> Option<bluegreen::flow::Timestamp> {
    w.log
        .timeline
        .iter()
        .find(|(_, x)| *x == weights)
        .map(|(at, _)| *at)
}

/// The alarm's event as CloudWatch sends it when the alarm enters ALARM at `w.now`.
fn fresh_alarm(w: &World, name: &str) -> serde_json::Value {
    envelope::alarm(name, &cloudwatch_time(w.now))
}

#[test]
fn a_rollback_whose_worker_dies_after_its_commit_is_restored_by_the_redelivered_alarm() {
    let mut w = world_in(settings(), Phase::Shifting);
    assert_eq!(w.cloud().rule, wt(75, 25));
    let alarm_at = w.now;
    let body = fresh_alarm(&w, "web-5xx");
    w.send(&body, Duration::ZERO);
    w.crash_next = true;
    w.tick(); // the rollback is committed; the worker dies before its write
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert_eq!(
        w.cloud().rule,
        wt(75, 25),
        "the restore was lost with the worker"
    );
    // No reconciler runs here: the queue hands the alarm out again after its visibility,
    // and that duplicate carries out what the rollback owes.
    w.run_until(|w| w.cloud().rule == wt(100, 0));
    let restored = first_write(&w, wt(100, 0)).expect("restored");
    assert!(
        restored.since(alarm_at) <= 30_000,
        "restored {} ms after the alarm, beyond the queue's 30 s visibility",
        restored.since(alarm_at)
    );
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    let rolled_back = events_of(&w, EventKind::RollingBack);
    assert_eq!(rolled_back.len(), 1, "decided once");
}

#[test]
fn a_rollback_whose_worker_dies_after_its_commit_is_restored_by_the_reconciler_within_a_lease() {
    let mut w = world_in(settings(), Phase::Shifting);
    let alarm_at = w.now;
    w.crash_next = true;
    w.apply(alarm("web-p99", "t1"));
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert_eq!(w.cloud().rule, wt(75, 25));
    // Before the dead worker's lease lapses, the reconciler leaves the service alone.
    assert!(matches!(w.reconcile(), Outcome::Ignored { .. }));
    assert_eq!(w.cloud().rule, wt(75, 25));
    // Once it has, the reconciler's next visit restores production, long before the
    // grace it gives an overdue tick (60 s).
    w.advance_ms(LEASE.as_millis() as u64 + 1);
    assert_eq!(w.reconcile(), Outcome::Applied);
    assert_eq!(w.cloud().rule, wt(100, 0));
    let restored = first_write(&w, wt(100, 0)).expect("restored");
    assert!(restored.since(alarm_at) <= LEASE.as_millis() as u64 + 1);
}

#[test]
fn a_canary_step_whose_write_is_lost_is_served_for_its_whole_bake() {
    let mut s = ServiceSettings::with_strategy(Strategy::Canary {
        percent: 25,
        bake: Duration::from_secs(20),
    });
    s.rollback_alarms = settings().rollback_alarms;
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::WaitingForGreen));
    w.crash_next = true;
    // Green is healthy: the canary step is committed, and its write lost with the worker.
    w.run_until(|w| w.phase() == Some(Phase::Shifting));
    assert_eq!(w.cloud().rule, wt(100, 0), "the canary's write was lost");
    assert!(w.active().served_at.is_none());
    // The step's tick, if it came, would find production not serving the canary: it
    // writes the step again instead of moving on. Here the reconciler gets there first.
    w.advance(2);
    w.reconcile();
    let canary = first_write(&w, wt(75, 25)).expect("the canary is served");
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    let full = first_write(&w, wt(0, 100)).expect("then everything");
    assert!(
        full.since(canary) >= 20_000,
        "green carried 25 % for {} ms of a 20 s canary",
        full.since(canary)
    );
}

#[test]
fn a_tick_never_advances_past_a_step_production_does_not_serve() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.crash_next = true;
    w.tick(); // step 2 (50/50) is committed; its write is lost with the worker
    let d = w.active().clone();
    assert_eq!((d.step, d.weights), (1, wt(50, 50)));
    assert_eq!(w.state.confirmed, Some(wt(75, 25)));
    let due = d.next_tick.expect("tick").due;
    // The step's tick at the end of its hold, with the rule still on step 1's weights.
    let observed = Observations {
        production: Some(Ok(ProductionRules::one(RULE, wt(75, 25)))),
        ..Observations::alarms_ok()
    };
    let tick = Input::tick(d.pending_key().expect("tick"), observed);
    let decided = decide(w.state.clone(), &w.settings, &tick, due);
    let after = decided.state.active.clone().expect("active");
    assert_eq!(
        after.step, 1,
        "no step past weights production does not serve"
    );
    assert_eq!(
        decided.effects.first(),
        Some(&Effect::SetProductionWeights {
            deployment_id: d.id.clone(),
            weights: wt(50, 50)
        }),
        "the step's weights are written again"
    );
    assert_eq!(
        after.next_tick.map(|t| t.due),
        Some(due.plus(w.settings.timeouts.poll)),
        "and looked at again after a poll"
    );
    assert!(after.served_at.is_none());
}

#[test]
fn the_bake_counts_from_the_read_back_of_its_full_traffic() {
    let mut s = settings();
    s.strategy = linear(50, 60);
    let mut w = world_in(s, Phase::Shifting);
    w.crash_next = true;
    w.tick(); // 100 % is decided; its write and the bake's start are lost
    assert_eq!(w.phase(), Some(Phase::Shifting));
    w.advance(600); // long past when the bake would have ended
    w.reconcile();
    w.run_until(|w| w.phase() == Some(Phase::Baking));
    let full = first_write(&w, wt(0, 100)).expect("written");
    let served = w.active().served_at.expect("served");
    assert!(served >= full, "the bake counts from the read-back");
    w.settle();
    let finalized = events_of(&w, EventKind::Succeeded);
    assert_eq!(finalized.len(), 1);
    let baked = bluegreen::flow::Timestamp::parse_rfc3339(&finalized[0].at).expect("at");
    assert!(
        baked.since(served) >= 120_000,
        "baked {} ms of 120 s",
        baked.since(served)
    );
}

#[test]
fn a_rollback_waits_for_a_slow_holder_and_preempts_its_forward_effects() {
    let mut w = World::with_lease(settings(), Duration::from_secs(30));
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Shifting));
    assert_eq!(w.cloud().rule, wt(75, 25));
    // The next step's write hangs for 45 s (a throttled ALB), holding the lease.
    w.cloud().slow = Some(("set-production-weights", Duration::from_secs(45)));
    w.advance_to(w.active().next_tick.expect("tick").due);
    let step = w.receive(1).pop().expect("the step's tick");
    let holder = w.other_worker("holder");
    let rollback = w.other_worker("rollback");
    let db = w.sim.db.clone();
    let body = envelope::alarm(
        "web-5xx",
        &cloudwatch_time(w.now.plus(Duration::from_secs(5))),
    );
    let alarm_at = w.now.plus(Duration::from_secs(5));
    let (held, rolled) = w.block_on(async move {
        tokio::join!(holder.process(step), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            db.send(body.to_string(), Duration::ZERO)
                .await
                .expect("send");
            let m = db
                .receive(1, Duration::ZERO, Duration::ZERO)
                .await
                .expect("receive")
                .pop()
                .expect("the alarm");
            rollback.process(m).await
        })
    });
    assert!(matches!(held, Disposition::Done(_)), "{held:?}");
    assert!(
        matches!(&rolled, Disposition::Done(why) if why.contains("applied")),
        "{rolled:?}"
    );
    let restored = first_write(&w, wt(100, 0)).expect("restored");
    assert!(
        restored.since(alarm_at) <= 30_000,
        "restored {} ms after the alarm, more than a lease",
        restored.since(alarm_at)
    );
    assert_eq!(
        first_write(&w, wt(50, 50)),
        None,
        "the holder's forward step never went out"
    );
    assert!(w.sim.db.dead_letters().expect("dlq").is_empty());
}

#[test]
fn a_failing_lease_check_neither_fences_nor_fails_the_effect() {
    let mut w = world_in(settings(), Phase::Shifting);
    // The store fails every lease check for a while: the step is committed, its effects
    // cannot be checked, so they do not run; the message is tried again.
    w.cloud().fence_failures = 1_000;
    w.tick();
    assert_eq!(w.cloud().rule, wt(75, 25), "nothing written unchecked");
    assert!(
        events_of(&w, EventKind::RollingBack).is_empty(),
        "a store failure is not the effect's"
    );
    assert!(
        !w.records.iter().any(|r| matches!(
            r.input.kind,
            bluegreen::flow::InputKind::EffectFailed { .. }
        )),
        "no effect failure decided"
    );
    let redelivered = w.inbox().len();
    assert!(redelivered >= 1, "the message is still on the queue");
    // The store recovers; the retried message carries out what the step owes.
    w.cloud().fence_failures = 0;
    w.run_until(|w| w.cloud().rule == wt(50, 50));
    assert_eq!(w.active().step, 1);
    assert!(events_of(&w, EventKind::RollingBack).is_empty());
}

#[test]
fn a_lease_check_that_fails_briefly_is_retried_within_the_lease() {
    let mut w = World::with_lease(settings(), Duration::from_secs(30));
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Shifting));
    w.cloud().fence_failures = 6; // beyond one patient read, within the lease
    let outcome = w.tick();
    assert_eq!(outcome, Some(Outcome::Applied));
    assert_eq!(w.cloud().rule, wt(50, 50), "the step went out once checked");
    assert!(
        w.inbox()
            .iter()
            .all(|(m, _)| m["detail-type"] == "Deployment Tick")
    );
}

#[test]
fn a_commit_whose_answer_is_lost_mid_run_is_recognised_and_its_effects_carried_out() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.cloud().write_answer_lost = true; // the step's write lands, its answer is lost
    w.tick();
    assert_eq!(w.cloud().rule, wt(50, 50));
    assert_eq!(w.active().step, 1);
    assert!(events_of(&w, EventKind::RollingBack).is_empty());
    assert!(w.active().served_at.is_some(), "the read-back confirmed it");
}

#[test]
fn unreadable_alarms_mid_shift_roll_back_after_the_bounded_wait_naming_the_error() {
    let mut s = settings();
    s.timeouts.unreadable = Duration::from_secs(300);
    let mut w = world_in(s, Phase::Shifting);
    w.alarms_firing = None; // DescribeAlarms fails from now on
    let first_blind = w.active().next_tick.expect("tick").due;
    w.run_until(|w| w.phase() == Some(Phase::RollingBack));
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    let rb = events_of(&w, EventKind::RollingBack);
    let reason = rb[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("rollback alarm states could not be read")
            && reason.contains("DescribeAlarms: throttled")
            && reason.contains("on_unreadable = rollback"),
        "{reason}"
    );
    let waited = w.now.since(first_blind);
    assert!(
        (300_000..300_000 + 15_000).contains(&waited),
        "rolled back after {waited} ms blind"
    );
    assert_eq!(w.active().step, 0, "no step while blind");
}

#[test]
fn unreadable_alarms_pause_instead_when_the_policy_says_so() {
    let mut s = settings();
    s.timeouts.unreadable = Duration::from_secs(120);
    s.on_unreadable = UnreadablePolicy::Pause;
    let mut w = world_in(s, Phase::Baking);
    w.alarms_firing = None;
    w.run_until(|w| w.state.active.as_ref().is_some_and(|d| d.is_paused()));
    let paused = events_of(&w, EventKind::PhaseChanged);
    let reason = paused
        .last()
        .and_then(|e| e.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.starts_with("paused: the rollback alarm states could not be read"),
        "{reason}"
    );
    assert_eq!(w.phase(), Some(Phase::Baking));
    // Readable again: an operator resumes and the bake goes on.
    w.alarms_firing = Some(vec![]);
    w.apply(op("resume", Action::Resume));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
}

#[test]
fn no_step_is_written_on_a_failed_read_of_the_rule() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.cloud().rule_unreadable = true;
    let writes = w.log.production.len();
    w.tick();
    w.tick();
    assert_eq!(w.log.production.len(), writes, "nothing written blind");
    assert_eq!(w.active().step, 0);
    assert!(w.active().unreadable_since.is_some());
    w.cloud().rule_unreadable = false;
    w.run_until(|w| w.active().step == 1);
    assert_eq!(w.cloud().rule, wt(50, 50));
    assert!(w.active().unreadable_since.is_none());
}

#[test]
fn the_old_colour_is_released_only_on_a_read_showing_it_carries_nothing() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    w.cloud().rule_unreadable = true;
    let warm = w
        .state
        .last
        .clone()
        .expect("last")
        .warm_until
        .expect("warm");
    w.advance_to(warm);
    w.tick();
    assert!(w.log.scaled_to_zero.is_empty(), "not released blind");
    assert!(w.state.last.as_ref().and_then(|d| d.warm_until).is_some());
    w.cloud().rule_unreadable = false;
    w.settle();
    assert_eq!(w.log.scaled_to_zero, [bluegreen::flow::Color::Blue]);
}

#[test]
fn an_alarm_during_the_termination_wait_rolls_back() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    assert_eq!(w.cloud().rule, wt(0, 100));
    let body = fresh_alarm(&w, "web-5xx");
    w.send(&body, Duration::ZERO);
    assert_eq!(w.tick(), Some(Outcome::Applied));
    assert_eq!(w.phase(), Some(Phase::RollingBack));
    assert_eq!(w.cloud().rule, wt(100, 0), "back on blue, still warm");
    let reason = events_of(&w, EventKind::RollingBack)[0]
        .reason
        .clone()
        .unwrap_or_default();
    assert!(reason.contains("while blue was still warm"), "{reason}");
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
}

#[test]
fn an_alarm_during_the_termination_wait_is_ignored_when_the_policy_is_off() {
    let mut s = settings();
    s.rollback_while_warm = false;
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    let body = fresh_alarm(&w, "web-5xx");
    w.send(&body, Duration::ZERO);
    assert!(matches!(
        w.tick(),
        Some(Outcome::Ignored {
            code: IgnoreCode::NotApplicable,
            ..
        })
    ));
    assert_eq!(w.cloud().rule, wt(0, 100));
}

#[test]
fn an_alarm_that_entered_alarm_before_the_deployment_started_concerns_an_earlier_one() {
    let mut w = world_in(settings(), Phase::Shifting);
    let started = w.active().started_at;
    // Delivered late (a lost receive): it entered ALARM before this deployment began, and
    // reads OK now.
    let before = |ms: u64| bluegreen::flow::Timestamp::from_millis(started.millis() - ms);
    w.send(
        &envelope::alarm("web-5xx", &cloudwatch_time(before(18_000))),
        Duration::ZERO,
    );
    let outcome = w.tick().expect("delivered");
    let Outcome::Ignored { code, reason } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(code, IgnoreCode::NotApplicable);
    assert!(
        reason.contains("before web-1 started") && reason.contains("not in ALARM now"),
        "{reason}"
    );
    assert_eq!(w.phase(), Some(Phase::Shifting));
    // The same old transition while the alarm still reads ALARM: it concerns this one too.
    w.alarms_firing = Some(vec!["web-5xx".into()]);
    w.send(
        &envelope::alarm("web-5xx", &cloudwatch_time(before(17_000))),
        Duration::ZERO,
    );
    assert_eq!(w.tick(), Some(Outcome::Applied));
    assert_eq!(w.phase(), Some(Phase::RollingBack));
}

#[test]
fn events_are_published_after_the_lease_is_given_up() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    assert!(!w.log.published_under.is_empty());
    assert!(
        w.log.published_under.iter().all(Option::is_none),
        "published while a run held the lease: {:?}",
        w.log.published_under
    );
}

#[test]
fn a_forward_input_that_keeps_finding_the_lease_held_is_announced_before_the_dead_letter_queue() {
    let mut w = world_in(settings(), Phase::Shifting);
    // Another owner holds the lease and keeps it (a stuck holder extending it).
    hold_lease_forever(&mut w);
    w.send(&envelope::push(2), Duration::ZERO);
    for _ in 0..12 {
        if w.sim.db.dead_letters().expect("dlq").len() == 1 {
            break;
        }
        w.tick();
    }
    assert_eq!(w.sim.db.dead_letters().expect("dlq").len(), 1);
    let rejected: Vec<_> = w
        .log
        .unreadable
        .iter()
        .filter(|d| d["code"] == "retries-exhausted")
        .collect();
    assert_eq!(rejected.len(), 1, "announced once: {:?}", w.log.unreadable);
}

#[test]
fn a_rollback_that_keeps_finding_the_lease_held_goes_round_again_and_is_never_dead_lettered() {
    let mut w = world_in(settings(), Phase::Shifting);
    hold_lease_forever(&mut w);
    let body = fresh_alarm(&w, "web-5xx");
    w.send(&body, Duration::ZERO);
    for _ in 0..12 {
        w.tick();
    }
    assert!(w.sim.db.dead_letters().expect("dlq").is_empty());
    let alarms = w
        .inbox()
        .iter()
        .filter(|(m, _)| m["detail-type"] == "CloudWatch Alarm State Change")
        .count();
    assert_eq!(alarms, 1, "sent again as a new message, once at a time");
    // The holder goes away: the alarm rolls back.
    w.sim.db.purge().ok();
    w.send(&body, Duration::ZERO);
    release_lease(&mut w);
    assert_eq!(w.tick(), Some(Outcome::Applied));
    assert_eq!(w.cloud().rule, wt(100, 0));
}

#[test]
fn an_unreadable_message_is_announced_once_even_when_the_first_publish_fails() {
    let mut w = World::new(settings());
    w.cloud().bus_down = 1;
    w.send(&serde_json::json!({"not": "an event"}), Duration::ZERO);
    for _ in 0..6 {
        w.tick();
        w.advance(1);
    }
    assert_eq!(w.sim.db.dead_letters().expect("dlq").len(), 1);
    assert_eq!(
        w.log.unreadable.len(),
        1,
        "one Event Rejected: {:?}",
        w.log.unreadable
    );
}

/// Makes the service's lease another owner's, for a very long time.
fn hold_lease_forever(w: &mut World) {
    let db = w.sim.db.clone();
    let now = w.now;
    w.block_on(async move {
        use bluegreen::ports::{Lease, Store};
        let stored = db
            .load(SERVICE, bluegreen::flow::Color::Blue)
            .await
            .expect("load");
        let far = now.plus(Duration::from_secs(24 * 3600));
        db.take(
            SERVICE,
            stored.version,
            Lease {
                owner: "stuck",
                until: far,
                now,
            },
        )
        .await
        .expect("take");
    });
}

fn release_lease(w: &mut World) {
    let db = w.sim.db.clone();
    w.block_on(async move {
        use bluegreen::ports::Store;
        db.release(SERVICE, "stuck").await.expect("release");
    });
}

#[test]
fn the_retry_back_off_doubles_to_a_minute_and_spans_minutes_over_the_stacks_receipts() {
    use bluegreen::worker::retry_backoff;
    let waits: Vec<u64> = (1..=15).map(|n| retry_backoff(n).as_secs()).collect();
    assert_eq!(waits[..8], [1, 2, 4, 8, 16, 32, 60, 60]);
    assert!(waits.iter().all(|w| *w <= 60));
    // The stack's 15 receipts: a push outlasts about nine minutes of a failing store.
    let total: u64 = waits[..14].iter().sum();
    assert!((480..=600).contains(&total), "{total} s over 15 receipts");
    assert_eq!(retry_backoff(u32::MAX).as_secs(), 60);
    assert_eq!(retry_backoff(0).as_secs(), 1);
}

/// SIGTERM while a long poll's answer is on its way: the queue already hid the message for
/// that request, so the worker waits for the answer and hands the message back unread
/// (another worker takes it now, not after the receive's visibility), deciding nothing.
#[test]
fn a_receive_answered_after_shutdown_hands_its_message_back_unread() {
    let mut w = World::new(settings());
    w.send(&envelope::push(1), Duration::ZERO);
    w.cloud().receive_answer_late = Some(Duration::from_secs(5));
    let worker = w.other_worker("stopping");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    w.block_on(async move {
        let run = tokio::spawn(worker.run(stopped));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send(true).expect("the worker listens");
        run.await.expect("the worker stops");
    });
    let back = w.receive(1);
    assert_eq!(back.len(), 1, "the push is visible again at once");
    assert_eq!(back[0].receive_count, 2, "it was received once before");
    assert!(w.records.is_empty(), "nothing was decided on it");
}
