//! The embedded mode end to end: the real proxy, real child processes (this crate's own
//! `bluegreen demo-app`), the SQLite store and inbox, and the same worker as production.
//!
//! Load runs through the proxy while deployments happen; failures are counted per
//! request, so "zero failed requests" is measured, not assumed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluegreen::flow::{Color, Concurrency, Phase, Strategy, Weights};
use bluegreen::local::Runtime;
use bluegreen::local::config::{AlarmRule, LocalConfig, LocalService, LocalSettings};
use bluegreen::ports::system_clock;
use bluegreen::ports::{Inbox, Store};
use bluegreen::schema::{SchemaId, validate};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

const SERVICE: &str = "shop";

/// A fresh state directory under the system's temporary directory.
fn state_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bluegreen-e2e-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One service running this crate's demo app; version `bad` fails half its requests.
fn config(dir: PathBuf, tweak: impl FnOnce(&mut LocalService)) -> LocalConfig {
    let mut service = LocalService {
        name: SERVICE.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        command: format!(
            "'{}' demo-app --port {{port}} --faulty-versions bad --error-rate 0.5",
            env!("CARGO_BIN_EXE_bluegreen")
        ),
        instances: 1,
        health_path: "/healthz".into(),
        initial_version: "v1".into(),
        strategy: Strategy::Linear {
            step_percent: 50,
            interval: Duration::from_secs(1),
        },
        bake: Duration::from_millis(500),
        termination_wait: Duration::from_millis(500),
        approval: false,
        concurrency: Concurrency::Queue,
        sticky: false,
        drain_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_secs(5),
        alarms: vec![AlarmRule {
            name: "shop-5xx".into(),
            error_rate_above: Some(0.05),
            p99_above: None,
            window: Duration::from_secs(3),
            min_requests: 10,
        }],
        timeouts: bluegreen::config::TimeoutsConfig {
            green: Some(Duration::from_secs(30)),
            poll: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    };
    tweak(&mut service);
    LocalConfig {
        local: LocalSettings {
            state_dir: dir,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            evaluate_every: Duration::from_millis(100),
        },
        services: vec![service],
    }
}

async fn start(config: &LocalConfig) -> Runtime {
    let runtime = Runtime::start(config, system_clock())
        .await
        .expect("start the embedded runtime");
    wait_for(
        "the live colour to be healthy",
        Duration::from_secs(20),
        || {
            !runtime.local.routes[SERVICE]
                .upstreams(Color::Blue)
                .is_empty()
        },
    )
    .await;
    runtime
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The service's stored state.
async fn stored(runtime: &Runtime) -> bluegreen::flow::ServiceState {
    runtime
        .local
        .db
        .load(SERVICE, Color::Blue)
        .await
        .expect("load")
        .state
}

/// Waits until the service has no active deployment and the last one is terminal.
async fn wait_finished(runtime: &Runtime, deployments: u64) -> Phase {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = stored(runtime).await;
        if state.deployments_started >= deployments
            && state.active.is_none()
            && let Some(last) = &state.last
        {
            return last.phase;
        }
        assert!(
            Instant::now() < deadline,
            "deployment did not finish: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Closed-loop HTTP load through the proxy, counting every failure.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(target: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (stop, sent, failed, bodies) =
                (stop.clone(), sent.clone(), failed.clone(), bodies.clone());
            tasks.spawn(async move {
                let client: Client<HttpConnector, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let uri: hyper::Uri = format!("http://{target}/").parse().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match client.get(uri.clone()).await {
                        Ok(response) => {
                            let status = response.status();
                            let body = response.into_body().collect().await;
                            match body {
                                Ok(b) if status.is_success() => bodies
                                    .lock()
                                    .unwrap()
                                    .push(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
                                Ok(b) => failed.lock().unwrap().push(format!(
                                    "{status}: {}",
                                    String::from_utf8_lossy(&b.to_bytes())
                                )),
                                Err(e) => failed.lock().unwrap().push(format!("body: {e}")),
                            }
                        }
                        Err(e) => failed.lock().unwrap().push(format!("request: {e:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        Load {
            stop,
            sent,
            failed,
            bodies,
            tasks,
        }
    }

    /// How many successful answers had exactly this body so far.
    fn served(&self, body: &str) -> usize {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| *b == body)
            .count()
    }

    /// Waits until `n` more answers with `body` arrived (the load reaches that colour).
    async fn wait_served(&self, body: &str, n: usize) {
        let target = self.served(body) + n;
        wait_for(
            &format!("{n} answers {body:?}"),
            Duration::from_secs(20),
            || self.served(body) >= target,
        )
        .await;
    }

    /// Stops the clients; returns (requests sent, failures, bodies of the successes).
    async fn stop(mut self) -> (u64, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let failed = self.failed.lock().unwrap().clone();
        let bodies = self.bodies.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failed, bodies)
    }
}

/// Samples the router's weights every few milliseconds.
fn watch_weights(runtime: &Runtime) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<Weights>>) {
    let route = runtime.local.routes[SERVICE].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut seen: Vec<Weights> = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let w = route.weights();
            if seen.last() != Some(&w) {
                seen.push(w);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    });
    (stop, task)
}

fn events(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line of events.jsonl is JSON"))
        .collect()
}

async fn scrape(addr: SocketAddr) -> String {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: it no longer runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_deployment_under_continuous_load_fails_no_request() {
    let dir = state_dir("good");
    let runtime = start(&config(dir.clone(), |_| {})).await;
    let proxy = runtime.proxy_addr(SERVICE).unwrap();
    let load = Load::start(proxy, 4);
    let (stop_watch, weights) = watch_weights(&runtime);
    load.wait_served("v1 blue\n", 50).await;

    runtime.deploy(SERVICE, "v2").await.unwrap();
    assert_eq!(wait_finished(&runtime, 1).await, Phase::Succeeded);
    wait_for(
        "the old colour to be released",
        Duration::from_secs(20),
        || {
            runtime
                .local
                .platform
                .health(SERVICE, Color::Blue)
                .is_ok_and(|h| h.desired == 0)
        },
    )
    .await;
    load.wait_served("v2 green\n", 50).await;
    let (sent, failed, bodies) = load.stop().await;
    stop_watch.store(true, Ordering::Relaxed);
    let weights = weights.await.unwrap();

    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(sent > 200, "too little load to prove anything: {sent}");
    assert!(bodies.iter().any(|b| b == "v1 blue\n"), "v1 served before");
    assert_eq!(bodies.last().map(String::as_str), Some("v2 green\n"));
    let green: Vec<u8> = weights.iter().map(|w| w.green).collect();
    assert_eq!(green, vec![0, 50, 100], "the router followed the plan");
    assert_eq!(
        runtime
            .local
            .platform
            .version(SERVICE, Color::Green)
            .as_deref(),
        Some("v2")
    );

    // The Prometheus endpoint tells the same story.
    let metrics = scrape(runtime.metrics_addr().unwrap()).await;
    assert!(
        metrics.contains("bluegreen_weight_percent{service=\"shop\",color=\"green\"} 100\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bluegreen_deployments{service=\"shop\",phase=\"Succeeded\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bluegreen_request_errors_total{service=\"shop\",color=\"green\"} 0\n"),
        "{metrics}"
    );
    let value = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
    };
    // The worker's instrumentation (EMF on AWS) through the Prometheus recorder. The
    // recorder is the test process's, shared with other tests: at least this deployment.
    assert!(
        metrics.contains("# TYPE DeploymentsSucceeded counter\n"),
        "{metrics}"
    );
    assert!(
        value("DeploymentsSucceeded{Service=\"shop\"}") >= 1,
        "{metrics}"
    );
    assert!(value("MessagesProcessed") >= 1, "{metrics}");
    let green_requests = value("bluegreen_requests_total{service=\"shop\",color=\"green\"}");
    assert!(green_requests > 0);
    assert_eq!(
        value(
            "bluegreen_request_duration_seconds_bucket{service=\"shop\",color=\"green\",le=\"+Inf\"}"
        ),
        green_requests
    );
    assert!(value("bluegreen_messages_processed_total") >= 1);

    // Every published event is a schema-valid deployment event.
    let published = events(&dir);
    assert!(
        published
            .iter()
            .any(|e| e["detail-type"] == "Deployment Succeeded")
    );
    for e in &published {
        validate(SchemaId::OutboundEvent, e).unwrap_or_else(|errs| panic!("{e}: {errs:?}"));
    }
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_faulty_version_is_rolled_back_by_the_alarm_within_its_window() {
    let dir = state_dir("bad");
    let runtime = start(&config(dir.clone(), |s| {
        s.strategy = Strategy::Linear {
            step_percent: 25,
            interval: Duration::from_secs(5),
        };
    }))
    .await;
    let route = runtime.local.routes[SERVICE].clone();
    let load = Load::start(runtime.proxy_addr(SERVICE).unwrap(), 4);
    load.wait_served("v1 blue\n", 50).await;

    runtime.deploy(SERVICE, "bad").await.unwrap();
    assert_eq!(wait_finished(&runtime, 1).await, Phase::RolledBack);
    let (alarm, alarmed_at) = runtime.local.alarms.last_alarm().expect("the alarm fired");
    assert_eq!(alarm, "shop-5xx");
    let restored = route.changed_at().expect("weights changed");
    let took = restored.duration_since(alarmed_at);
    assert!(
        took < Duration::from_secs(3),
        "weights restored {took:?} after the alarm"
    );
    assert_eq!(route.weights(), Weights::all(Color::Blue));
    load.wait_served("v1 blue\n", 50).await;
    let (_, failed, bodies) = load.stop().await;
    // The faulty colour answered some 500s before the alarm; then blue serves again.
    assert!(!failed.is_empty(), "the faulty version was exercised");
    assert!(
        failed.iter().all(|f| f.contains("bad green failed")),
        "{failed:?}"
    );
    assert_eq!(bodies.last().map(String::as_str), Some("v1 blue\n"));
    let kinds: Vec<String> = events(&dir)
        .iter()
        .map(|e| e["detail-type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        kinds.contains(&"Deployment Rolled Back".to_string()),
        "{kinds:?}"
    );
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_shift_resumes_from_the_database_without_regression() {
    let dir = state_dir("kill");
    let mut runtime = start(&config(dir.clone(), |s| {
        s.strategy = Strategy::Linear {
            step_percent: 25,
            interval: Duration::from_secs(1),
        };
    }))
    .await;
    let route = runtime.local.routes[SERVICE].clone();
    let load = Load::start(runtime.proxy_addr(SERVICE).unwrap(), 4);
    let (stop_watch, weights) = watch_weights(&runtime);

    runtime.deploy(SERVICE, "v2").await.unwrap();
    wait_for("the first shift", Duration::from_secs(30), || {
        route.weights().green >= 25
    })
    .await;
    runtime.kill_worker().await;
    let at_kill = route.weights();
    // Wait until the next step was due, and some more.
    let due = stored(&runtime)
        .await
        .active
        .and_then(|d| d.next_tick)
        .expect("a step pending")
        .due;
    let clock = system_clock();
    wait_for(
        "the next step to be overdue",
        Duration::from_secs(10),
        || clock().since(due) > 500,
    )
    .await;
    assert_eq!(
        route.weights(),
        at_kill,
        "nothing moves while no worker runs"
    );
    runtime.start_worker();
    assert_eq!(wait_finished(&runtime, 1).await, Phase::Succeeded);

    let (sent, failed, _) = load.stop().await;
    stop_watch.store(true, Ordering::Relaxed);
    let green: Vec<u8> = weights.await.unwrap().iter().map(|w| w.green).collect();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    assert!(
        green.windows(2).all(|w| w[0] < w[1]),
        "green only ever grew: {green:?}"
    );
    assert_eq!(green.last(), Some(&100));
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_runtime_brings_back_the_split_and_both_colours() {
    let dir = state_dir("restart");
    let config = config(dir.clone(), |s| {
        s.strategy = Strategy::Steps {
            steps: vec![
                bluegreen::flow::ExplicitStep {
                    weight: 30,
                    pause: None,
                },
                bluegreen::flow::ExplicitStep {
                    weight: 100,
                    pause: None,
                },
            ],
        };
    });
    let runtime = start(&config).await;
    let route = runtime.local.routes[SERVICE].clone();
    runtime.deploy(SERVICE, "v2").await.unwrap();
    // The first step waits for an operator's promote: a stable mid-shift state.
    wait_for("the 30 % step", Duration::from_secs(30), || {
        route.weights().green == 30
    })
    .await;
    let first: Vec<u32> = [Color::Blue, Color::Green]
        .iter()
        .map(|c| runtime.local.platform.health(SERVICE, *c).unwrap().desired)
        .collect();
    runtime.shutdown().await;

    let runtime = start(&config).await;
    let route = runtime.local.routes[SERVICE].clone();
    assert_eq!(route.weights().green, 30, "the split is served again");
    wait_for("green to be healthy again", Duration::from_secs(20), || {
        !route.upstreams(Color::Green).is_empty()
    })
    .await;
    let again: Vec<u32> = [Color::Blue, Color::Green]
        .iter()
        .map(|c| runtime.local.platform.health(SERVICE, *c).unwrap().desired)
        .collect();
    assert_eq!(first, again);
    assert_eq!(
        runtime
            .local
            .platform
            .version(SERVICE, Color::Green)
            .as_deref(),
        Some("v2")
    );
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{}/", runtime.proxy_addr(SERVICE).unwrap())
        .parse()
        .unwrap();
    let mut versions = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let r = client.get(uri.clone()).await.unwrap();
        assert!(r.status().is_success());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        *versions
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(versions.get("v2 green\n"), Some(&30), "{versions:?}");
    assert_eq!(versions.get("v1 blue\n"), Some(&70), "{versions:?}");
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that keeps the cookie it was given.
async fn sticky_get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &hyper::Uri,
    cookie: &mut Option<String>,
) -> String {
    let mut request = hyper::Request::get(uri.clone());
    if let Some(c) = cookie.as_deref() {
        request = request.header(hyper::header::COOKIE, c);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    if let Some(set) = response.headers().get(hyper::header::SET_COOKIE) {
        let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
        *cookie = Some(pair);
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sticky_client_stays_on_its_colour_until_finalization() {
    let dir = state_dir("sticky");
    let runtime = start(&config(dir.clone(), |s| {
        s.sticky = true;
        s.strategy = Strategy::Steps {
            steps: vec![
                bluegreen::flow::ExplicitStep {
                    weight: 50,
                    pause: None,
                },
                bluegreen::flow::ExplicitStep {
                    weight: 100,
                    pause: None,
                },
            ],
        };
    }))
    .await;
    let route = runtime.local.routes[SERVICE].clone();
    let uri: hyper::Uri = format!("http://{}/", runtime.proxy_addr(SERVICE).unwrap())
        .parse()
        .unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    runtime.deploy(SERVICE, "v2").await.unwrap();
    wait_for("the 50 % step", Duration::from_secs(30), || {
        route.weights().green == 50
    })
    .await;

    // Two clients, one pinned to each colour.
    let mut pinned: Vec<(Option<String>, String)> = Vec::new();
    for _ in 0..10 {
        let mut cookie = None;
        let first = sticky_get(&client, &uri, &mut cookie).await;
        if !pinned.iter().any(|(_, b)| *b == first) {
            pinned.push((cookie, first));
        }
    }
    assert_eq!(pinned.len(), 2, "both colours served at 50 %: {pinned:?}");
    for (cookie, first) in &mut pinned {
        for _ in 0..20 {
            assert_eq!(
                &sticky_get(&client, &uri, cookie).await,
                first,
                "stays on its colour"
            );
        }
    }

    // Promote to 100 %: the blue client is moved to green and stays there.
    let deployment = stored(&runtime).await.active.unwrap().id;
    let promote = serde_json::json!({
        "version": "0", "id": "promote-1", "detail-type": "Promote Requested",
        "source": "bluegreen.manual", "time": crate::common::wall_now(), "resources": [],
        "detail": { "service": SERVICE, "deploymentId": deployment, "requestedBy": "test" }
    });
    runtime
        .local
        .db
        .send(promote.to_string(), Duration::ZERO)
        .await
        .unwrap();
    wait_for("100 % green", Duration::from_secs(30), || {
        route.weights().green == 100
    })
    .await;
    for (cookie, _) in &mut pinned {
        for _ in 0..5 {
            assert_eq!(sticky_get(&client, &uri, cookie).await, "v2 green\n");
        }
        assert!(
            cookie.as_deref().is_some_and(|c| c.ends_with("=green")),
            "{cookie:?}"
        );
    }
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_message_is_dead_lettered_with_a_reason() {
    let dir = state_dir("dlq");
    let runtime = start(&config(dir.clone(), |_| {})).await;
    runtime
        .local
        .db
        .send("{\"not\": \"an event\"".into(), Duration::ZERO)
        .await
        .unwrap();
    wait_for("the dead letter", Duration::from_secs(20), || {
        runtime.local.db.dead_letters().unwrap().len() == 1
    })
    .await;
    let dead = runtime.local.db.dead_letters().unwrap();
    assert_eq!(dead[0].body, "{\"not\": \"an event\"");
    assert_eq!(dead[0].receive_count, 3);
    let rejected: Vec<serde_json::Value> = events(&dir)
        .into_iter()
        .filter(|e| e["detail-type"] == "Event Rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "one Event Rejected, on the first receipt"
    );
    assert!(
        rejected[0]["detail"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(rejected[0]["detail"]["code"].is_string());
    // Traffic was never touched.
    assert_eq!(
        runtime.local.routes[SERVICE].weights(),
        Weights::all(Color::Blue)
    );
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_requested_by_tag_resolves_through_the_local_registry() {
    let dir = state_dir("tag");
    let runtime = start(&config(dir.clone(), |_| {})).await;
    let pinned =
        bluegreen::local::platform::register_image(&runtime.local.db, SERVICE, "v2").unwrap();
    let request = |id: &str, image: &str| {
        serde_json::json!({
            "version": "0", "id": id, "detail-type": "Deploy Requested",
            "source": "bluegreen.manual", "time": crate::common::wall_now(), "resources": [],
            "detail": { "service": SERVICE, "image": image, "requestedBy": "alice" }
        })
        .to_string()
    };
    let db = &runtime.local.db;
    db.send(request("by-tag", "shop:v2"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(wait_finished(&runtime, 1).await, Phase::Succeeded);
    let state = stored(&runtime).await;
    assert_eq!(
        state.live_image.as_deref(),
        Some(pinned.as_str()),
        "deployed by digest"
    );
    assert_eq!(
        runtime
            .local
            .platform
            .version(SERVICE, Color::Green)
            .as_deref(),
        Some("v2")
    );
    db.send(request("unknown-tag", "shop:v9"), Duration::ZERO)
        .await
        .unwrap();
    wait_for("the rejection", Duration::from_secs(20), || {
        events(&dir)
            .iter()
            .any(|e| e["detail"]["code"] == "image-not-found")
    })
    .await;
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_every_app_process() {
    let dir = state_dir("stop");
    let config = config(dir.clone(), |s| s.instances = 2);
    let runtime = start(&config).await;
    // A second runtime on the same state directory is refused, not run twice.
    let Err(second) = Runtime::start(&config, system_clock()).await else {
        panic!("two runtimes on one state directory");
    };
    assert!(
        format!("{second:#}").contains("another bluegreen runtime uses"),
        "{second:#}"
    );
    let addrs = runtime.local.routes[SERVICE].upstreams(Color::Blue);
    assert_eq!(addrs.len(), 2);
    let pids = app_pids(&dir);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));
    runtime.shutdown().await;
    for pid in pids {
        assert!(!pid_alive(pid), "instance {pid} outlived the runtime");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pids of demo-app processes started for `dir` (their command line names the port, and
/// the log file names it too).
fn app_pids(dir: &std::path::Path) -> Vec<u32> {
    let ports: Vec<String> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(
                name.trim_end_matches(".log")
                    .rsplit('-')
                    .next()?
                    .to_string(),
            )
        })
        .collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "demo-app")
            && args
                .windows(2)
                .any(|w| w[0] == "--port" && ports.contains(&w[1]))
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_local_process_leaves_no_app_behind() {
    let dir = state_dir("orphans");
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("local.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[local]
state_dir = "{}"

[[services]]
name = "shop"
listen = "127.0.0.1:{port}"
command = "'{}' demo-app --port {{port}}"
instances = 2
strategy = {{ kind = "all-at-once" }}
"#,
            dir.display(),
            env!("CARGO_BIN_EXE_bluegreen")
        ),
    )
    .unwrap();
    let mut local = std::process::Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["local", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Polls every 50 ms: 400 polls is 20 s.
    let mut polls = 0;
    let pids = loop {
        let pids = if dir.join("logs").exists() {
            app_pids(&dir)
        } else {
            Vec::new()
        };
        if pids.len() == 2 {
            break pids;
        }
        polls += 1;
        assert!(polls < 400, "apps did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    local.kill().unwrap(); // SIGKILL: no chance to clean up
    local.wait().unwrap();
    polls = 0;
    while pids.iter().any(|p| pid_alive(*p)) {
        polls += 1;
        assert!(
            polls < 200,
            "apps outlived a killed `bluegreen local`: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
