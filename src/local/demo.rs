//! `bluegreen demo`: the whole product on one machine in under a minute.
//!
//! Blue runs v1 behind the embedded proxy under steady HTTP load. v2 is deployed with a
//! short linear strategy while the console shows the split and the requests and errors
//! per colour; then a faulty v3 is deployed and the error-rate alarm rolls it back. The
//! report gives requests, failures and p50/p99 latency per phase and the time from the
//! alarm to the weights restored. Success means v2 succeeded with zero failed requests
//! and v3 was rolled back.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

use super::config::{AlarmRule, LocalConfig, LocalService, LocalSettings};
use super::proxy::Route;
use super::runtime::Runtime;
use crate::config::TimeoutsConfig;
use crate::flow::{Color, Concurrency, Phase, ServiceState, Strategy};
use crate::ports::Clock;
use crate::ports::Store;

/// The service the demo deploys.
pub const SERVICE: &str = "shop";

/// Which part of the demo to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// v1 → v2, a clean deployment.
    Good,
    /// v1 → v3, a faulty version rolled back by the alarm.
    Bad,
    /// Both, one after the other.
    Both,
}

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// What to run.
    pub scenario: Scenario,
    /// Where the proxy listens (default: a free loopback port).
    pub listen: Option<SocketAddr>,
    /// Keep the embedded database here (default: a temporary directory, removed however
    /// the run ends).
    pub state_dir: Option<PathBuf>,
    /// Serve `/metrics` here.
    pub metrics: Option<SocketAddr>,
    /// The command that starts one demo app instance (`{port}` is replaced); default:
    /// this binary's `demo-app`.
    pub app_command: Option<String>,
    /// Concurrent load clients.
    pub clients: usize,
    /// Pause between one client's requests.
    pub pace: Duration,
    /// Keep the proxy serving this long after the scenario (for an external load tool).
    pub linger: Duration,
}

impl Default for DemoOptions {
    fn default() -> DemoOptions {
        DemoOptions {
            scenario: Scenario::Both,
            listen: None,
            state_dir: None,
            metrics: None,
            app_command: None,
            clients: 8,
            pace: Duration::from_millis(20),
            linger: Duration::ZERO,
        }
    }
}

/// Requests, failures and latencies of one phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseStats {
    /// Phase label.
    pub name: String,
    /// Requests sent.
    pub sent: u64,
    /// Non-2xx answers and transport errors.
    pub failed: u64,
    latencies_us: Vec<u32>,
}

impl PhaseStats {
    /// The `q` quantile of latency.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.latencies_us.clone();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let at = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted
            .get(at)
            .map(|us| Duration::from_micros(u64::from(*us)))
    }
}

/// What the demo found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per phase, in order.
    pub phases: Vec<PhaseStats>,
    /// Final phase of the v2 deployment, when run.
    pub good: Option<Phase>,
    /// Final phase of the v3 deployment, when run.
    pub bad: Option<Phase>,
    /// From the alarm going to ALARM to the router serving 100 % on the live colour.
    pub alarm_to_restored: Option<Duration>,
    /// Whole run.
    pub elapsed: Duration,
}

impl Report {
    /// Failures during the v2 deployment.
    #[must_use]
    pub fn good_failures(&self) -> Option<u64> {
        self.phases
            .iter()
            .find(|p| p.name.starts_with("deploy v2"))
            .map(|p| p.failed)
    }

    /// Whether the run met its goals.
    #[must_use]
    pub fn passed(&self, scenario: Scenario) -> bool {
        let good = self.good == Some(Phase::Succeeded) && self.good_failures() == Some(0);
        let bad = self.bad == Some(Phase::RolledBack);
        match scenario {
            Scenario::Good => good,
            Scenario::Bad => bad,
            Scenario::Both => good && bad,
        }
    }

    /// The report as text.
    #[must_use]
    pub fn render(&self, scenario: Scenario) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n== report ==");
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>7} {:>10} {:>10}",
            "phase", "requests", "failed", "p50", "p99"
        );
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".into(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3))
        };
        for p in &self.phases {
            let _ = writeln!(
                out,
                "{:<28} {:>9} {:>7} {:>10} {:>10}",
                p.name,
                p.sent,
                p.failed,
                ms(p.quantile(0.5)),
                ms(p.quantile(0.99))
            );
        }
        let total: u64 = self.phases.iter().map(|p| p.sent).sum();
        let failed: u64 = self.phases.iter().map(|p| p.failed).sum();
        let _ = writeln!(out, "{:<28} {total:>9} {failed:>7}", "total");
        if let Some(phase) = self.good {
            let _ = writeln!(
                out,
                "v2: {} with {} failed requests",
                phase.as_str(),
                self.good_failures().unwrap_or(0)
            );
        }
        if let Some(phase) = self.bad {
            let _ = writeln!(out, "v3: {}", phase.as_str());
        }
        if let Some(d) = self.alarm_to_restored {
            let _ = writeln!(
                out,
                "alarm to weights restored: {:.0}ms",
                d.as_secs_f64() * 1e3
            );
        }
        let _ = writeln!(
            out,
            "elapsed: {:.1}s — {}",
            self.elapsed.as_secs_f64(),
            if self.passed(scenario) {
                "PASSED"
            } else {
                "FAILED"
            }
        );
        out
    }
}

/// Shared state of the load clients.
struct Load {
    phase: AtomicUsize,
    stats: Mutex<Vec<PhaseStats>>,
    stop: AtomicBool,
}

impl Load {
    fn record(&self, ok: bool, elapsed: Duration) {
        let at = self.phase.load(Ordering::Relaxed);
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = stats.get_mut(at) {
            p.sent += 1;
            if !ok {
                p.failed += 1;
            }
            p.latencies_us
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
        }
    }

    fn enter(&self, name: &str) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.push(PhaseStats {
            name: name.to_string(),
            ..PhaseStats::default()
        });
        self.phase.store(stats.len() - 1, Ordering::Relaxed);
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The demo's configuration.
///
/// # Errors
/// When this binary's path is unknown and no app command is given.
pub fn demo_config(options: &DemoOptions, state_dir: PathBuf) -> anyhow::Result<LocalConfig> {
    let command = match &options.app_command {
        Some(c) => c.clone(),
        None => {
            let exe = std::env::current_exe()?;
            format!(
                "{} demo-app --port {{port}} --faulty-versions v3 --error-rate 0.3",
                quote(&exe.display().to_string())
            )
        }
    };
    Ok(LocalConfig {
        local: LocalSettings {
            state_dir,
            metrics: options.metrics,
            evaluate_every: Duration::from_millis(200),
        },
        services: vec![LocalService {
            name: SERVICE.into(),
            listen: options
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            command,
            instances: 2,
            health_path: "/healthz".into(),
            initial_version: "v1".into(),
            strategy: Strategy::Linear {
                step_percent: 25,
                interval: Duration::from_secs(2),
            },
            bake: Duration::from_secs(3),
            termination_wait: Duration::from_secs(2),
            approval: false,
            concurrency: Concurrency::Queue,
            sticky: false,
            drain_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            alarms: vec![
                AlarmRule {
                    name: "shop-5xx".into(),
                    error_rate_above: Some(0.05),
                    p99_above: None,
                    window: Duration::from_secs(3),
                    min_requests: 20,
                },
                AlarmRule {
                    name: "shop-p99".into(),
                    error_rate_above: None,
                    p99_above: Some(Duration::from_millis(500)),
                    window: Duration::from_secs(3),
                    min_requests: 20,
                },
            ],
            timeouts: TimeoutsConfig {
                green: Some(Duration::from_secs(30)),
                poll: Some(Duration::from_millis(200)),
                ..TimeoutsConfig::default()
            },
        }],
    })
}

async fn drive(load: Arc<Load>, target: SocketAddr, pace: Duration) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let Ok(uri) = format!("http://{target}/").parse::<hyper::Uri>() else {
        return;
    };
    while !load.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = match tokio::time::timeout(Duration::from_secs(10), client.get(uri.clone())).await
        {
            Ok(Ok(response)) => {
                let status = response.status();
                // Read the body so the connection is reused.
                response.into_body().collect().await.is_ok() && status.is_success()
            }
            _ => false,
        };
        load.record(ok, started.elapsed());
        tokio::time::sleep(pace).await;
    }
}

/// The demo service's stored state.
async fn stored_state(runtime: &Runtime) -> anyhow::Result<ServiceState> {
    Ok(runtime
        .local
        .db
        .load(SERVICE, Color::Blue)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state)
}

/// The demo service's router.
fn demo_route(runtime: &Runtime) -> anyhow::Result<Arc<Route>> {
    runtime
        .local
        .routes
        .get(SERVICE)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no router for {SERVICE}"))
}

/// Deploys `version` and waits until that deployment ends, printing progress; returns
/// its final phase.
async fn deploy_and_watch(
    runtime: &Runtime,
    version: &str,
    started: Instant,
    out: &mut dyn Write,
) -> anyhow::Result<Phase> {
    let before = stored_state(runtime).await?.deployments_started;
    let mut events = runtime.local.bus.subscribe();
    runtime
        .deploy(SERVICE, version)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = writeln!(
        out,
        "[{:>5.1}s] deploying {version}",
        started.elapsed().as_secs_f64()
    );
    let route = demo_route(runtime)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut next_line = Instant::now();
    loop {
        while let Ok(entry) = events.try_recv() {
            let detail: Value = serde_json::from_str(&entry.detail).unwrap_or(Value::Null);
            let _ = writeln!(
                out,
                "[{:>5.1}s]   event: {:<26} {} {:<16} {}",
                started.elapsed().as_secs_f64(),
                entry.detail_type,
                detail["deploymentId"].as_str().unwrap_or("-"),
                detail["phase"].as_str().unwrap_or("-"),
                detail["reason"].as_str().unwrap_or("")
            );
        }
        let state = stored_state(runtime).await?;
        let finished = state
            .last
            .as_ref()
            .filter(|_| state.deployments_started > before && state.active.is_none())
            .map(|d| d.phase);
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            let w = route.weights();
            let b = route.metrics(Color::Blue).snapshot();
            let g = route.metrics(Color::Green).snapshot();
            let phase = state.active.as_ref().map_or("idle", |d| d.phase.as_str());
            let _ = writeln!(
                out,
                "[{:>5.1}s] {version} {phase:<16} weights blue {:>3}% green {:>3}%  | blue {} req {} err | green {} req {} err",
                started.elapsed().as_secs_f64(),
                w.blue,
                w.green,
                b.requests,
                b.errors,
                g.requests,
                g.errors
            );
        }
        if let Some(phase) = finished {
            // Let the last events print.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(entry) = events.try_recv() {
                let _ = writeln!(
                    out,
                    "[{:>5.1}s]   event: {}",
                    started.elapsed().as_secs_f64(),
                    entry.detail_type
                );
            }
            return Ok(phase);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("deployment of {version} did not finish within 90s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the old colour of the last deployment is released (its termination wait).
async fn wait_released(runtime: &Runtime, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let idle = stored_state(runtime).await.ok().map(|s| s.live.other());
        if let Some(idle) = idle
            && runtime
                .local
                .platform
                .health(SERVICE, idle)
                .is_ok_and(|h| h.desired == 0)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the demo, printing progress and then the report to `out`. When `stop` turns
/// true the run is cut short (an error) or, during `linger`, the lingering ends; either
/// way everything is stopped in order.
///
/// # Errors
/// When the runtime cannot start, a deployment never ends, or the run is interrupted.
pub async fn run(
    options: DemoOptions,
    clock: Clock,
    out: &mut dyn Write,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let state_dir = match &options.state_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "bluegreen-demo-{}-{}",
            std::process::id(),
            clock().millis()
        )),
    };
    let config = demo_config(&options, state_dir.clone())?;
    let runtime = match Runtime::start(&config, clock).await {
        Ok(runtime) => runtime,
        Err(e) => {
            if options.state_dir.is_none() {
                let _ = std::fs::remove_dir_all(&state_dir);
            }
            return Err(e);
        }
    };
    let result = tokio::select! {
        r = run_scenarios(&runtime, &options, started, out) => r,
        _ = stop.wait_for(|s| *s) => Err(anyhow::anyhow!("interrupted")),
    };
    let result = result.map(|mut report| {
        report.elapsed = started.elapsed();
        let _ = write!(out, "{}", report.render(options.scenario));
        let _ = out.flush();
        report
    });
    if result.is_ok() && !options.linger.is_zero() {
        let _ = writeln!(out, "serving on for {:?} (Ctrl-C ends it)", options.linger);
        let _ = out.flush();
        tokio::select! {
            () = tokio::time::sleep(options.linger) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    runtime.shutdown().await;
    if options.state_dir.is_none() {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    result
}

async fn run_scenarios(
    runtime: &Runtime,
    options: &DemoOptions,
    started: Instant,
    out: &mut dyn Write,
) -> anyhow::Result<Report> {
    let target = runtime
        .proxy_addr(SERVICE)
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;
    let _ = writeln!(out, "proxy for {SERVICE} on http://{target}/");
    if let Some(m) = runtime.metrics_addr() {
        let _ = writeln!(out, "metrics on http://{m}/metrics");
    }
    let route = demo_route(runtime)?;
    let live = stored_state(runtime).await?.live;
    let ready = Instant::now() + Duration::from_secs(20);
    while route.upstreams(live).is_empty() {
        anyhow::ensure!(
            Instant::now() < ready,
            "the live colour did not become healthy within 20s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = runtime
        .local
        .platform
        .version(SERVICE, live)
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "[{:>5.1}s] {live} runs {running}; starting load: {} clients",
        started.elapsed().as_secs_f64(),
        options.clients
    );
    let load = Arc::new(Load {
        phase: AtomicUsize::new(0),
        stats: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    load.enter(&format!("baseline ({running})"));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..options.clients.max(1) {
        clients.spawn(drive(load.clone(), target, options.pace));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut report = Report::default();
    let outcome: anyhow::Result<()> = async {
        if matches!(options.scenario, Scenario::Good | Scenario::Both) {
            load.enter("deploy v2");
            report.good = Some(deploy_and_watch(runtime, "v2", started, out).await?);
            wait_released(runtime, Duration::from_secs(20)).await;
        }
        if matches!(options.scenario, Scenario::Bad | Scenario::Both) {
            load.enter("deploy v3 (faulty)");
            let phase = deploy_and_watch(runtime, "v3", started, out).await?;
            report.bad = Some(phase);
            if let (Some((_, alarmed)), Some(restored)) =
                (runtime.local.alarms.last_alarm(), route.changed_at())
            {
                report.alarm_to_restored = restored.checked_duration_since(alarmed);
            }
            load.enter("after rollback");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(())
    }
    .await;
    load.stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    report.phases = load
        .stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    outcome?;
    Ok(report)
}
