//! The embedded platform: what ECS does for a colour, with local processes.
//!
//! A colour has a revision (`<version>#<deployment>`), a desired count and instances.
//! Pointing a colour at a revision starts a rollout, like an ECS deployment: new
//! instances are started and health-checked over HTTP; once all are healthy they become
//! the colour's targets in the router and the previous ones are drained and stopped.
//! Scaling to zero takes the colour's targets out, waits for its open requests (up to
//! the drain timeout) and stops its instances. Revisions and counts are kept in the
//! embedded database, so a restarted `bluegreen local` brings the same colours back.
//!
//! Versions come from the local image registry: `bluegreen local deploy` records the
//! version under a content-addressed image name (`<service>@sha256:…` of the label), and
//! the deployment carries that pinned name like any ECR image.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::config::LocalService;
use super::db::LocalDb;
use super::process::{Instance, Launch, free_port};
use super::proxy::{Route, index};
use crate::flow::{Color, TargetHealth};
use crate::ports::{PortError, PortResult};

/// The pinned image name the local registry gives `version` of `service`.
#[must_use]
pub fn image_name(service: &str, version: &str) -> String {
    let digest = Sha256::digest(format!("{service}:{version}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}@sha256:{hex}", service.to_ascii_lowercase())
}

/// Records `version` of `service` in the local registry; returns its pinned image name.
///
/// # Errors
/// On a database error.
pub fn register_image(db: &LocalDb, service: &str, version: &str) -> PortResult<String> {
    let image = image_name(service, version);
    db.put(&format!("image:{image}"), version)?;
    Ok(image)
}

/// The version part of a revision `<version>#<deployment>`.
#[must_use]
pub fn version_of(revision: &str) -> &str {
    revision.split_once('#').map_or(revision, |(v, _)| v)
}

#[derive(Debug, Default)]
struct ColorState {
    revision: Option<String>,
    desired: u32,
    instances: Vec<Arc<Instance>>,
    rollout_done: bool,
    generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    revision: Option<String>,
    desired: u32,
}

/// One service's colours.
#[derive(Debug)]
struct ServiceRuntime {
    spec: LocalService,
    route: Arc<Route>,
    colors: [Mutex<ColorState>; 2],
    logs: PathBuf,
    db: LocalDb,
    health: Client<HttpConnector, Empty<Bytes>>,
}

/// The embedded platform of every configured service.
#[derive(Debug, Clone)]
pub struct LocalPlatform {
    services: HashMap<String, Arc<ServiceRuntime>>,
    db: LocalDb,
}

impl LocalPlatform {
    /// A platform for `services`, routing through `routes`, logging apps to `logs`.
    #[must_use]
    pub fn new(
        db: LocalDb,
        logs: PathBuf,
        services: &[LocalService],
        routes: &HashMap<String, Arc<Route>>,
    ) -> LocalPlatform {
        let health = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build_http();
        let services = services
            .iter()
            .filter_map(|spec| {
                let route = routes.get(&spec.name)?.clone();
                Some((
                    spec.name.clone(),
                    Arc::new(ServiceRuntime {
                        spec: spec.clone(),
                        route,
                        colors: [Mutex::default(), Mutex::default()],
                        logs: logs.clone(),
                        db: db.clone(),
                        health: health.clone(),
                    }),
                ))
            })
            .collect();
        LocalPlatform { services, db }
    }

    fn runtime(&self, service: &str) -> PortResult<&Arc<ServiceRuntime>> {
        self.services
            .get(service)
            .ok_or_else(|| PortError::Permanent(format!("service {service} is not configured")))
    }

    /// Brings back the colours recorded in the database; on a first start, the live
    /// colour (`live`) runs the service's initial version.
    ///
    /// # Errors
    /// On a database error.
    pub fn boot(&self, live: &HashMap<String, Color>) -> PortResult<()> {
        for (name, rt) in &self.services {
            for color in [Color::Blue, Color::Green] {
                let stored = self.db.get(&key(name, color))?;
                let persisted = match stored.and_then(|s| serde_json::from_str(&s).ok()) {
                    Some(p) => p,
                    None if live.get(name).copied().unwrap_or(Color::Blue) == color => Persisted {
                        revision: Some(format!("{}#initial", rt.spec.initial_version)),
                        desired: rt.spec.instances,
                    },
                    None => Persisted {
                        revision: None,
                        desired: 0,
                    },
                };
                if let (Some(revision), desired) = (persisted.revision, persisted.desired)
                    && desired > 0
                {
                    rt.point(color, &revision, desired)?;
                }
            }
        }
        Ok(())
    }

    /// The registered revision for `deployment_id` of `image`.
    ///
    /// # Errors
    /// `Permanent` when the image is not in the local registry.
    pub fn register(&self, service: &str, deployment_id: &str, image: &str) -> PortResult<String> {
        self.runtime(service)?;
        let version = self.db.get(&format!("image:{image}"))?.ok_or_else(|| {
            PortError::Permanent(format!(
                "image {image} is not in the local registry (deploy it with `bluegreen local deploy`)"
            ))
        })?;
        Ok(format!("{version}#{deployment_id}"))
    }

    /// The digest the local registry holds for `tag` (a version label) of the service
    /// whose repository is `repository`.
    ///
    /// # Errors
    /// `Permanent` when no service has that repository or the version was never
    /// registered.
    pub fn resolve(&self, repository: &str, tag: &str) -> PortResult<String> {
        let Some(service) = self
            .services
            .keys()
            .find(|name| name.eq_ignore_ascii_case(repository))
        else {
            return Err(PortError::Permanent(format!(
                "no local service has repository {repository}"
            )));
        };
        let image = image_name(service, tag);
        if self.db.get(&format!("image:{image}"))?.is_none() {
            return Err(PortError::Permanent(format!(
                "tag {tag} does not exist in the local registry of {service} (`bluegreen local deploy --service {service} --version {tag}` registers it)"
            )));
        }
        image
            .split_once('@')
            .map(|(_, digest)| digest.to_string())
            .ok_or_else(|| PortError::Permanent(format!("malformed local image name {image}")))
    }

    /// Points `color` at `revision` with `match_count_of`'s desired count (at least one).
    ///
    /// # Errors
    /// Unknown service or a database error.
    pub fn update(
        &self,
        service: &str,
        color: Color,
        revision: &str,
        match_count_of: Color,
    ) -> PortResult<()> {
        let rt = self.runtime(service)?;
        let count = rt.state(match_count_of).desired;
        let count = if count == 0 { rt.spec.instances } else { count };
        rt.point(color, revision, count)
    }

    /// Points `color` at `revision` with `count` instances (capacity drift put back).
    ///
    /// # Errors
    /// Unknown service or a database error.
    pub fn restore(
        &self,
        service: &str,
        color: Color,
        revision: &str,
        count: u32,
    ) -> PortResult<()> {
        self.runtime(service)?.point(color, revision, count.max(1))
    }

    /// Brings `color` up to `match_count_of`'s instance count (at least the configured
    /// count when that colour runs none), on the version it last ran; never scales down.
    ///
    /// # Errors
    /// Unknown service, a colour that never ran a version, or a database error.
    pub fn scale_up(&self, service: &str, color: Color, match_count_of: Color) -> PortResult<()> {
        let rt = self.runtime(service)?;
        let want = match rt.state(match_count_of).desired {
            0 => rt.spec.instances,
            n => n,
        };
        let (revision, desired) = {
            let st = rt.state(color);
            (st.revision.clone(), st.desired)
        };
        let Some(revision) = revision else {
            return Err(PortError::Permanent(format!(
                "{service}'s {color} colour has never run a version: nothing to switch to"
            )));
        };
        if desired >= want {
            return Ok(());
        }
        rt.point(color, &revision, want)
    }

    /// Takes `color` out of the router, drains it and stops its instances.
    ///
    /// # Errors
    /// Unknown service or a database error.
    pub fn scale_to_zero(&self, service: &str, color: Color) -> PortResult<()> {
        let rt = self.runtime(service)?;
        let retired = {
            let mut st = rt.state(color);
            if st.desired == 0 && st.instances.is_empty() {
                return Ok(());
            }
            st.generation += 1;
            st.desired = 0;
            st.rollout_done = true;
            std::mem::take(&mut st.instances)
        };
        rt.persist(color)?;
        rt.route.set_upstreams(color, Vec::new());
        info!(service, %color, "scaling to zero");
        let rt = rt.clone();
        tokio::spawn(async move { rt.retire(color, retired).await });
        Ok(())
    }

    /// Rollout state and target health of `color`.
    ///
    /// # Errors
    /// Unknown service.
    pub fn health(&self, service: &str, color: Color) -> PortResult<TargetHealth> {
        let rt = self.runtime(service)?;
        let st = rt.state(color);
        let alive = st.instances.iter().filter(|i| i.alive()).count();
        let alive = u32::try_from(alive).unwrap_or(u32::MAX);
        let registered = u32::try_from(st.instances.len()).unwrap_or(u32::MAX);
        Ok(TargetHealth {
            task_definition: st.revision.clone(),
            rollout_completed: st.rollout_done,
            running: if st.rollout_done { alive } else { 0 },
            desired: st.desired,
            healthy_targets: alive,
            registered_targets: registered,
        })
    }

    /// The version `color` runs (or is rolling out).
    #[must_use]
    pub fn version(&self, service: &str, color: Color) -> Option<String> {
        let rt = self.services.get(service)?;
        let st = rt.state(color);
        st.revision.as_deref().map(|r| version_of(r).to_string())
    }

    /// Stops every instance (SIGTERM, then SIGKILL after the stop timeout).
    pub async fn shutdown(&self) {
        let mut stops = tokio::task::JoinSet::new();
        for rt in self.services.values() {
            for color in [Color::Blue, Color::Green] {
                let instances = {
                    let mut st = rt.state(color);
                    st.generation += 1;
                    std::mem::take(&mut st.instances)
                };
                let timeout = rt.spec.stop_timeout;
                for instance in instances {
                    stops.spawn(async move { instance.stop(timeout).await });
                }
            }
        }
        while stops.join_next().await.is_some() {}
    }
}

fn key(service: &str, color: Color) -> String {
    format!("platform:{service}:{color}")
}

impl ServiceRuntime {
    fn state(&self, color: Color) -> std::sync::MutexGuard<'_, ColorState> {
        self.colors[index(color)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn persist(&self, color: Color) -> PortResult<()> {
        let persisted = {
            let st = self.state(color);
            Persisted {
                revision: st.revision.clone(),
                desired: st.desired,
            }
        };
        let text = serde_json::to_string(&persisted)
            .map_err(|e| PortError::Permanent(format!("cannot encode platform state: {e}")))?;
        self.db.put(&key(&self.spec.name, color), &text)
    }

    /// Starts a rollout of `revision` with `count` instances, unless that is already
    /// what the colour runs or rolls out (the reconciler re-asserts effects).
    fn point(self: &Arc<Self>, color: Color, revision: &str, count: u32) -> PortResult<()> {
        let generation = {
            let mut st = self.state(color);
            if st.revision.as_deref() == Some(revision) && st.desired == count {
                return Ok(());
            }
            st.revision = Some(revision.to_string());
            st.desired = count;
            st.rollout_done = false;
            st.generation += 1;
            st.generation
        };
        self.persist(color)?;
        info!(service = %self.spec.name, %color, revision, count, "rolling out");
        let rt = self.clone();
        let version = version_of(revision).to_string();
        tokio::spawn(async move { rt.rollout(color, version, count, generation).await });
        Ok(())
    }

    fn current(&self, color: Color, generation: u64) -> bool {
        self.state(color).generation == generation
    }

    async fn rollout(self: Arc<Self>, color: Color, version: String, count: u32, generation: u64) {
        let mut ready: Vec<Arc<Instance>> = Vec::new();
        let mut failures = 0u32;
        while ready.len() < count as usize {
            if !self.current(color, generation) {
                self.stop_all(ready).await;
                return;
            }
            match self.start_one(color, &version) {
                Ok(instance) => {
                    if self.healthy(&instance, color, generation).await {
                        ready.push(Arc::new(instance));
                        continue;
                    }
                    instance.stop(self.spec.stop_timeout).await;
                }
                Err(e) => {
                    warn!(service = %self.spec.name, %color, error = %e, "cannot start an instance")
                }
            }
            // Like ECS: keep trying with a back-off; the deployment's own timeout decides
            // when to give up (and scaling to zero ends this rollout).
            failures += 1;
            tokio::time::sleep(Duration::from_millis(250) * failures.min(8)).await;
        }
        let addrs = ready.iter().map(|i| i.addr).collect();
        let retired = {
            let mut st = self.state(color);
            if st.generation == generation {
                st.rollout_done = true;
                Ok(std::mem::replace(&mut st.instances, ready))
            } else {
                Err(ready)
            }
        };
        let retired = match retired {
            Ok(retired) => retired,
            Err(superseded) => {
                self.stop_all(superseded).await;
                return;
            }
        };
        self.route.set_upstreams(color, addrs);
        info!(service = %self.spec.name, %color, version, "rollout complete");
        self.retire(color, retired).await;
    }

    fn start_one(&self, color: Color, version: &str) -> std::io::Result<Instance> {
        std::fs::create_dir_all(&self.logs)?;
        let port = free_port()?;
        let log = self
            .logs
            .join(format!("{}-{color}-{version}-{port}.log", self.spec.name));
        Instance::start(&Launch {
            template: &self.spec.command,
            port,
            version,
            color: color.as_str(),
            log: &log,
        })
    }

    /// Polls the health path until 200; false when the instance exits or the rollout is
    /// superseded.
    async fn healthy(&self, instance: &Instance, color: Color, generation: u64) -> bool {
        let url = format!("http://{}{}", instance.addr, self.spec.health_path);
        let Ok(uri) = url.parse::<hyper::Uri>() else {
            return false;
        };
        loop {
            if !instance.alive() || !self.current(color, generation) {
                return false;
            }
            let answer =
                tokio::time::timeout(Duration::from_secs(1), self.health.get(uri.clone())).await;
            if let Ok(Ok(response)) = answer
                && response.status() == hyper::StatusCode::OK
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for `color`'s open requests (up to the drain timeout), then stops `instances`.
    async fn retire(&self, color: Color, instances: Vec<Arc<Instance>>) {
        if instances.is_empty() {
            return;
        }
        if !self.route.drained(color, self.spec.drain_timeout).await {
            warn!(service = %self.spec.name, %color, "drain timeout: stopping with requests open");
        }
        self.stop_all(instances).await;
    }

    async fn stop_all(&self, instances: Vec<Arc<Instance>>) {
        let timeout = self.spec.stop_timeout;
        let stops = instances
            .into_iter()
            .map(|i| async move { i.stop(timeout).await });
        for stop in stops {
            stop.await;
        }
    }
}
