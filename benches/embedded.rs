//! Embedded worker throughput: inputs decided and committed per second.
//!
//! Eight services run the embedded runtime on a file database (WAL) in a temporary
//! directory. Each first gets a deployment that stays in `WaitingForGreen` (its
//! instances run `sleep`, never healthy, and the poll interval is an hour). Then, with
//! the worker stopped, 4 000 `Deploy Requested` events with distinct versions are
//! enqueued, and the worker is started again; with
//! `concurrency = "queue"` each is parsed, routed, deduplicated, decided and committed
//! (state, outbox event, dedup key, deployment records in one transaction) and its
//! `Deployment Queued` event appended to the JSONL bus, through the same worker loop
//! `bluegreen local` runs. The figure is inputs / time for the worker to drain the inbox.

use std::time::Duration;

use bluegreen::flow::{Color, Concurrency, Strategy};
use bluegreen::local::Runtime;
use bluegreen::local::config::{LocalConfig, LocalService, LocalSettings};
use bluegreen::local::runtime::enqueue_deploy;
use bluegreen::ports::Store;
use bluegreen::ports::system_clock;

const SERVICES: usize = 8;
const INPUTS: usize = 4_000;

fn config(dir: std::path::PathBuf) -> LocalConfig {
    let services = (0..SERVICES)
        .map(|i| LocalService {
            name: format!("svc{i}"),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            command: "sleep 3600 # {port}".into(),
            instances: 1,
            health_path: "/healthz".into(),
            initial_version: "v1".into(),
            strategy: Strategy::AllAtOnce,
            bake: Duration::from_secs(60),
            termination_wait: Duration::from_secs(60),
            approval: false,
            concurrency: Concurrency::Queue,
            sticky: false,
            drain_timeout: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(1),
            alarms: Vec::new(),
            timeouts: bluegreen::config::TimeoutsConfig {
                green: Some(Duration::from_secs(3600)),
                poll: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        })
        .collect();
    LocalConfig {
        local: LocalSettings {
            state_dir: dir,
            metrics: None,
            evaluate_every: Duration::from_secs(1),
        },
        services,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        println!("cannot start a runtime");
        return;
    };
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("bluegreen-bench-embedded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = system_clock();
        let mut rt = match Runtime::start(&config(dir.clone()), clock.clone()).await {
            Ok(rt) => rt,
            Err(e) => {
                println!("cannot start: {e:#}");
                return;
            }
        };
        let db = rt.local.db.clone();
        for i in 0..SERVICES {
            let _ = enqueue_deploy(&db, &clock, &format!("svc{i}"), "v2", "bench").await;
        }
        // Wait until every service has its active deployment.
        for _ in 0..600 {
            let mut active = 0;
            for i in 0..SERVICES {
                if let Ok(s) = db.load(&format!("svc{i}"), Color::Blue).await
                    && s.state.active.is_some()
                {
                    active += 1;
                }
            }
            if active == SERVICES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Fill the inbox with the worker stopped, then time the worker draining it.
        rt.kill_worker().await;
        for n in 0..INPUTS {
            let service = format!("svc{}", n % SERVICES);
            let _ = enqueue_deploy(&db, &clock, &service, &format!("v{}", n + 3), "bench").await;
        }
        let before = rt.local.processed();
        let target = before + INPUTS as u64;
        let started = tokio::time::Instant::now();
        rt.start_worker();
        while rt.local.processed() < target && started.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        let done = rt.local.processed() - before;
        #[allow(clippy::cast_precision_loss)]
        let rate = done as f64 / elapsed.as_secs_f64();
        let queued = rt.local.bus.published().get("Deployment Queued").copied().unwrap_or(0);
        println!(
            "== embedded worker throughput ({SERVICES} services, worker concurrency 4, SQLite WAL file)"
        );
        println!(
            "{done} inputs decided and committed in {:.2}s from a full inbox: {rate:.0} inputs/s (goal >= 2000/s); {queued} Deployment Queued events",
            elapsed.as_secs_f64()
        );
        rt.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
