//! The worker's health check: the verdict over its pulse (no progress, a queue out of
//! reach, stopping), and the report served on loopback as the container's check reads it.

use std::sync::Arc;
use std::time::Duration;

use bluegreen::health::{Limits, Pulse, Status, judge, probe, serve};
use bluegreen::ports::Inbox;

const S: fn(u64) -> Duration = Duration::from_secs;

fn defaults() -> Limits {
    // --wait 20s, --aws-timeout 30s, --aws-attempts 4, --visibility 60s.
    Limits::for_worker(S(20), S(30), 4, S(60))
}

#[test]
fn the_shipped_limits_allow_a_full_receive_and_a_minute() {
    assert_eq!(defaults().stuck_after, S(200));
    assert_eq!(defaults().unreachable_after, S(300));
    // A long visibility wins over a short receive.
    assert_eq!(
        Limits::for_worker(S(1), S(5), 1, S(600)).stuck_after,
        S(660)
    );
}

#[test]
fn a_loop_without_progress_is_stuck_and_a_queue_failing_for_long_is_unreachable() {
    let l = defaults();
    let cases = [
        (S(0), None, false, Status::Ok),
        (S(200), None, false, Status::Ok),
        (S(201), None, false, Status::Stuck),
        (S(10), Some(S(300)), false, Status::Ok),
        (S(10), Some(S(301)), false, Status::QueueUnreachable),
        (S(201), Some(S(301)), false, Status::Stuck),
        (S(10_000), Some(S(10_000)), true, Status::Stopping),
    ];
    for (since, failing, stopping, want) in cases {
        assert_eq!(
            judge(since, failing, stopping, &l),
            want,
            "{since:?} {failing:?} {stopping}"
        );
    }
    assert!(Status::Ok.healthy() && Status::Stopping.healthy());
    assert!(!Status::Stuck.healthy() && !Status::QueueUnreachable.healthy());
}

#[test]
fn the_pulse_counts_failures_in_a_row_from_the_first_and_an_answer_clears_them() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let l = defaults();
        let pulse = Pulse::default();
        tokio::time::advance(S(30)).await;
        assert_eq!(pulse.report(&l).since_progress_ms, 30_000);
        pulse.receive_failed();
        tokio::time::advance(S(200)).await;
        pulse.receive_failed();
        tokio::time::advance(S(101)).await;
        let r = pulse.report(&l);
        assert_eq!(r.failing_for_ms, Some(301_000), "from the first failure");
        assert_eq!(r.status, Status::QueueUnreachable);
        pulse.received();
        let r = pulse.report(&l);
        assert_eq!((r.status, r.failing_for_ms), (Status::Ok, None));
        tokio::time::advance(S(201)).await;
        assert_eq!(pulse.report(&l).status, Status::Stuck);
        pulse.stopping();
        assert_eq!(pulse.report(&l).status, Status::Stopping);
    });
}

#[tokio::test]
async fn the_report_is_one_json_line_on_loopback_and_silence_is_a_failure() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let pulse = Arc::new(Pulse::default());
    pulse.set_in_flight(3);
    tokio::spawn(serve(listener, pulse, defaults()));
    let report = probe(&addr, S(5)).await.expect("a report");
    assert_eq!((report.status, report.in_flight), (Status::Ok, 3));
    // A listener that accepts but never answers (a stopped process): the deadline holds.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = mute.local_addr().expect("addr").to_string();
    let e = probe(&addr, Duration::from_millis(300))
        .await
        .expect_err("no answer");
    assert!(e.contains("did not answer within"), "{e}");
    drop(mute);
    let e = probe(&addr, S(5)).await.expect_err("nobody listens");
    assert!(e.contains("no worker answers"), "{e}");
}

/// The production loop feeds the pulse: receives failing for five minutes make the worker
/// unhealthy, one answered receive makes it healthy again, a message worked on counts as
/// progress, and shutdown reports `stopping`.
#[test]
fn the_worker_loop_reports_a_queue_out_of_reach_and_its_recovery() {
    use crate::common::{World, envelope, settings};
    let mut w = World::new(settings());
    let worker = w.other_worker("pulsing");
    let pulse = worker.pulse();
    let limits = defaults();
    w.cloud().receive_fails = true;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sim = w.sim.clone();
    let statuses = w.block_on(async move {
        let run = tokio::spawn(worker.run(stopped));
        let mut seen = Vec::new();
        tokio::time::sleep(S(150)).await;
        seen.push(pulse.report(&limits).status);
        tokio::time::sleep(S(160)).await;
        seen.push(pulse.report(&limits).status);
        sim.cloud.lock().expect("cloud").receive_fails = false;
        sim.db
            .send(envelope::push(1).to_string(), Duration::ZERO)
            .await
            .expect("send");
        tokio::time::sleep(S(5)).await;
        let r = pulse.report(&limits);
        seen.push(r.status);
        stop.send(true).expect("the worker listens");
        run.await.expect("the worker stops");
        seen.push(pulse.report(&limits).status);
        seen
    });
    assert_eq!(
        statuses,
        [
            Status::Ok,
            Status::QueueUnreachable,
            Status::Ok,
            Status::Stopping
        ]
    );
    assert!(
        !w.records.is_empty(),
        "the push was worked on once the queue answered"
    );
}
