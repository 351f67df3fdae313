//! Rollback latency against moto on loopback: from `SendMessage` of a CloudWatch alarm
//! event to production weights restored to the old colour (written and read back), over
//! at least 50 deployments. Goal (issue 3): p50 ≤ 150 ms, p99 ≤ 500 ms. Prints figures
//! only. Needs `BLUEGREEN_MOTO_ENDPOINT` (`scripts/bench` starts moto).
//!
//! Two cases, each over `ROLLBACK_RUNS` deployments (default 50):
//! * idle — the alarm arrives while the worker is idle mid-shift (the common case);
//! * contended — the alarm arrives the moment the step is committed, while the step's
//!   own effects still hold the service lease.
#![allow(missing_docs, dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/suite/moto.rs"]
mod moto;

use std::time::Duration;

use bluegreen::flow::{Phase, Weights};
use moto::{Env, Shape};
use tokio::sync::watch;

fn main() {
    if std::env::var("BLUEGREEN_MOTO_ENDPOINT").is_err() {
        eprintln!(
            "rollback bench: BLUEGREEN_MOTO_ENDPOINT is not set; run scripts/bench, which starts moto"
        );
        return;
    }
    let runs: usize = std::env::var("ROLLBACK_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let env = Env::create(
            "bench",
            Shape { strategy: r#"{ kind = "linear", step_percent = 10, interval = "1h" }"#, ..Shape::default() },
        )
        .await;
        let (worker, world) = env.worker("bench");
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(worker.clone().run(stopped));
        let mut idle = Vec::new();
        let mut contended = Vec::new();
        for i in 0..runs * 2 {
            let wait_idle = i % 2 == 0;
            let digest = format!("sha256:{:064x}", i + 1);
            env.push(&digest, &format!("release-{i}")).await;
            env.wait_for(60, "the first step", |s| s.active.as_ref().is_some_and(|d| d.phase == Phase::Shifting)).await;
            if wait_idle {
                // The step's write is confirmed, then give the worker a moment to settle.
                while !world.applied_at.lock().expect("lock").iter().any(|(_, _, w)| *w == Weights { blue: 90, green: 10 }) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let sent = tokio::time::Instant::now();
            env.send_raw(&env.alarm_message(&format!("2026-11-26T10:{:02}:{:02}.000+0000", i / 60, i % 60))).await;
            let restored = loop {
                let hit = world
                    .applied_at
                    .lock()
                    .expect("lock")
                    .iter()
                    .find(|(at, _, w)| *at >= sent && *w == Weights { blue: 100, green: 0 })
                    .map(|(at, _, _)| *at);
                if let Some(at) = hit {
                    break at;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let took = restored.duration_since(sent);
            if wait_idle { idle.push(took) } else { contended.push(took) }
            env.wait_for(60, "the rollback to finish", |s| s.active.is_none()).await;
            world.applied_at.lock().expect("lock").clear();
        }
        stop.send(true).expect("stop");
        running.await.expect("worker");
        println!("rollback latency: alarm SendMessage → production 100/0 written and read back (moto on loopback)");
        for (case, mut samples) in [("idle worker", idle), ("lease contended", contended)] {
            samples.sort();
            let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
            println!(
                "  {case:<16} n={:<3} p50 {:>6.1} ms  p99 {:>6.1} ms  min {:>6.1} ms  max {:>6.1} ms   (goal p50 ≤ 150, p99 ≤ 500)",
                samples.len(),
                pct(0.5),
                pct(0.99),
                pct(0.0),
                pct(1.0)
            );
        }
    });
}
