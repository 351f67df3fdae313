//! The embedded runtime: opens the state directory, brings the colours and routers back,
//! starts the proxies, the alarm evaluator, the metrics endpoint and the worker, and
//! stops them in order.
//!
//! Stop order: the worker first (it finishes the message in hand), then the proxies
//! (they stop accepting and let open requests finish), the alarm evaluator and the
//! metrics endpoint, and last the apps (SIGTERM, then SIGKILL after the stop timeout).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::alarms::{self, AlarmBoard, Evaluator};
use super::bus::JsonlBus;
use super::config::LocalConfig;
use super::db::{LocalDb, QueueOptions};
use super::metrics::serve_metrics;
use super::platform::{LocalPlatform, register_image};
use super::proxy::{Route, serve_on_threads};
use super::world::{Local, weights_key};
use crate::fleet::Fleet;
use crate::flow::{Color, Weights};
use crate::ports::Clock;
use crate::ports::{Inbox, PortResult, Store};
use crate::worker::{Options, Worker};

/// How long the proxies wait for open requests when stopping.
const PROXY_GRACE: Duration = Duration::from_secs(30);

/// The database file inside the state directory.
#[must_use]
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("bluegreen.db")
}

/// Queue behaviour of the embedded inbox.
#[must_use]
pub fn queue_options() -> QueueOptions {
    QueueOptions {
        visibility: Duration::from_secs(10),
        max_receives: 3,
        poll_every: Duration::from_millis(20),
    }
}

/// Worker tunables of the embedded mode: short leases and visibility so that a worker
/// that died is taken over within seconds.
#[must_use]
pub fn worker_options() -> Options {
    Options {
        concurrency: 4,
        wait: Duration::from_secs(1),
        visibility: Duration::from_secs(10),
        lease: Duration::from_secs(5),
        worker_id: format!("local-{}", std::process::id()),
        reconcile_every: Duration::from_secs(5),
        receive_visibility: Duration::from_secs(5),
        ..Options::default()
    }
}

/// Records `version` in the local registry and enqueues a `Deploy Requested` for it;
/// returns the pinned image name and the event's id.
///
/// # Errors
/// On a database error.
pub async fn enqueue_deploy(
    db: &LocalDb,
    clock: &Clock,
    service: &str,
    version: &str,
    requested_by: &str,
) -> PortResult<(String, String)> {
    let image = register_image(db, service, version)?;
    let now = clock();
    let id = format!("local-deploy-{service}-{version}-{}", now.millis());
    let body = json!({
        "version": "0",
        "id": id,
        "detail-type": "Deploy Requested",
        "source": "bluegreen.manual",
        "time": now.rfc3339(),
        "resources": [],
        "detail": {
            "service": service,
            "requestedBy": requested_by,
            "image": image,
            "reason": format!("deploy {version}"),
        }
    });
    db.send(body.to_string(), Duration::ZERO).await?;
    Ok((image, id))
}

/// Everything the embedded mode runs.
pub struct Runtime {
    /// The adapters (router, platform, store, alarms, bus).
    pub local: Arc<Local>,
    fleet: Fleet,
    clock: Clock,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    proxy_threads: Vec<std::thread::JoinHandle<()>>,
    worker: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    proxies: HashMap<String, SocketAddr>,
    metrics: Option<SocketAddr>,
    _lock: std::fs::File,
}

/// Takes the state directory's lock file, so that two runtimes never run the same apps
/// and router on one database (`local deploy` and `local send` only enqueue and do not
/// take it). The lock goes with the process.
fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another bluegreen runtime uses {}; stop it first (or choose another state_dir)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

impl Runtime {
    /// Starts everything `config` describes, its state in `config.local.state_dir`.
    ///
    /// # Errors
    /// An invalid configuration, an unusable state directory, or an address in use.
    pub async fn start(config: &LocalConfig, clock: Clock) -> anyhow::Result<Runtime> {
        config.validate()?;
        let fleet = config.fleet();
        let dir = &config.local.state_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let lock = lock_state_dir(dir)?;
        let db = LocalDb::open(&db_path(dir), clock.clone(), queue_options())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut routes = HashMap::new();
        let mut live = HashMap::new();
        for s in &config.services {
            let state = db
                .load(&s.name, Color::Blue)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .state;
            let stored: Option<Weights> = db
                .get(&weights_key(&s.name))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .and_then(|text| serde_json::from_str(&text).ok());
            let weights = stored.unwrap_or_else(|| state.production_weights());
            live.insert(s.name.clone(), state.live);
            routes.insert(
                s.name.clone(),
                Arc::new(Route::new(&s.name, weights, s.sticky)),
            );
        }
        let bus = Arc::new(
            JsonlBus::open(&dir.join("events.jsonl"))
                .with_context(|| format!("cannot open {}", dir.join("events.jsonl").display()))?,
        );
        let platform = LocalPlatform::new(db.clone(), dir.join("logs"), &config.services, &routes);
        platform.boot(&live).map_err(|e| anyhow::anyhow!("{e}"))?;
        let board = Arc::new(AlarmBoard::default());
        let local = Arc::new(Local::new(
            db.clone(),
            routes.clone(),
            platform,
            board.clone(),
            bus,
        ));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut proxies = HashMap::new();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let mut proxy_threads = Vec::new();
        for s in &config.services {
            let listener = std::net::TcpListener::bind(s.listen)
                .with_context(|| format!("cannot listen on {} for {}", s.listen, s.name))?;
            let addr = listener.local_addr()?;
            info!(service = %s.name, %addr, threads, "proxy listening");
            proxies.insert(s.name.clone(), addr);
            proxy_threads.extend(
                serve_on_threads(&listener, &routes[&s.name], threads, &stopped, PROXY_GRACE)
                    .with_context(|| format!("cannot start the proxy of {}", s.name))?,
            );
        }
        let evaluators = config
            .services
            .iter()
            .map(|s| Evaluator::new(&s.name, s.alarms.clone(), routes[&s.name].clone()))
            .collect();
        tasks.push(tokio::spawn(alarms::run(
            evaluators,
            board,
            db,
            clock.clone(),
            config.local.evaluate_every,
            stopped.clone(),
        )));
        let metrics = match config.local.metrics {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} for /metrics"))?;
                let bound = listener.local_addr()?;
                info!(addr = %bound, "metrics on /metrics");
                tasks.push(tokio::spawn(serve_metrics(
                    local.clone(),
                    listener,
                    stopped,
                )));
                Some(bound)
            }
            None => None,
        };
        let mut runtime = Runtime {
            local,
            fleet,
            clock,
            stop,
            tasks,
            proxy_threads,
            worker: None,
            proxies,
            metrics,
            _lock: lock,
        };
        runtime.start_worker();
        Ok(runtime)
    }

    /// Starts the worker (again).
    pub fn start_worker(&mut self) {
        if self.worker.is_some() {
            return;
        }
        let worker = Worker::new(
            self.local.clone(),
            self.fleet.clone(),
            self.clock.clone(),
            worker_options(),
        );
        let (stop, stopped) = watch::channel(false);
        self.worker = Some((stop, tokio::spawn(worker.run(stopped))));
    }

    /// Kills the worker the way a crash would: no message finished, no lease released.
    pub async fn kill_worker(&mut self) {
        if let Some((_, task)) = self.worker.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Where `service`'s proxy listens.
    #[must_use]
    pub fn proxy_addr(&self, service: &str) -> Option<SocketAddr> {
        self.proxies.get(service).copied()
    }

    /// Where `/metrics` is served, when configured.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Deploys `version` of `service` (records the image, enqueues the request).
    ///
    /// # Errors
    /// On a database error.
    pub async fn deploy(&self, service: &str, version: &str) -> PortResult<String> {
        enqueue_deploy(
            &self.local.db,
            &self.clock,
            service,
            version,
            "bluegreen-local",
        )
        .await
        .map(|(image, _)| image)
    }

    /// Stops everything in order (see the module docs).
    pub async fn shutdown(mut self) {
        if let Some((stop, task)) = self.worker.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .is_err()
            {
                warn!("the worker did not stop within 30s");
            }
        }
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let threads = std::mem::take(&mut self.proxy_threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        self.local.platform.shutdown().await;
        info!("embedded runtime stopped");
    }
}
