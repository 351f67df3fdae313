//! [`Local`]: the embedded adapters behind the worker's ports, one object like
//! [`Aws`](crate::aws::Aws).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::alarms::AlarmBoard;
use super::bus::JsonlBus;
use super::db::LocalDb;
use super::platform::LocalPlatform;
use super::proxy::Route;
use crate::aws::http::HttpChecks;
use crate::contract::Entry;
use crate::flow::{Color, ProductionRules, TargetHealth, Timestamp, Weights};
use crate::ports::{
    Alarms, Bus, Checks, Claimed, Commit, Fence, Inbox, Lease, Platform, PortError, PortResult,
    Received, Registry, Store, Stored, Traffic,
};

/// The embedded world.
#[derive(Debug)]
pub struct Local {
    /// Store and inbox.
    pub db: LocalDb,
    /// Routers by service.
    pub routes: HashMap<String, Arc<Route>>,
    /// Colours as processes.
    pub platform: LocalPlatform,
    /// Alarm states.
    pub alarms: Arc<AlarmBoard>,
    /// The event log.
    pub bus: Arc<JsonlBus>,
    checks: HttpChecks,
    processed: AtomicU64,
}

impl Local {
    /// Wires the adapters together.
    #[must_use]
    pub fn new(
        db: LocalDb,
        routes: HashMap<String, Arc<Route>>,
        platform: LocalPlatform,
        alarms: Arc<AlarmBoard>,
        bus: Arc<JsonlBus>,
    ) -> Local {
        Local {
            db,
            routes,
            platform,
            alarms,
            bus,
            checks: HttpChecks::new(),
            processed: AtomicU64::new(0),
        }
    }

    /// Messages handled and deleted so far.
    #[must_use]
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    fn route(&self, service: &str) -> PortResult<&Arc<Route>> {
        self.routes
            .get(service)
            .ok_or_else(|| PortError::Permanent(format!("no router for service {service}")))
    }
}

/// The embedded router of `service`, as events and `status` name its production rule.
#[must_use]
pub fn router_name(service: &str) -> String {
    format!("embedded router of {service}")
}

/// The router's weights are also written to the database, so that a restart serves
/// the split the store's state expects.
pub fn weights_key(service: &str) -> String {
    format!("weights:{service}")
}

impl Inbox for Local {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<Received>> {
        self.db.receive(max, wait, visibility).await
    }
    async fn receive_limit(&self) -> PortResult<Option<u32>> {
        self.db.receive_limit().await
    }
    async fn delete(&self, receipt: &str) -> PortResult<()> {
        self.db.delete(receipt).await?;
        self.processed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()> {
        self.db.set_visibility(receipt, timeout).await
    }
    async fn send(&self, body: String, delay: Duration) -> PortResult<()> {
        self.db.send(body, delay).await
    }
}

impl Store for Local {
    async fn load(&self, service: &str, initial: Color) -> PortResult<Stored> {
        self.db.load(service, initial).await
    }
    async fn commit(&self, service: &str, commit: Commit<'_>) -> PortResult<u64> {
        self.db.commit(service, commit).await
    }
    async fn seen(&self, service: &str, key: &str) -> PortResult<bool> {
        self.db.seen(service, key).await
    }
    async fn fence(&self, service: &str) -> PortResult<Fence> {
        self.db.fence(service).await
    }
    async fn extend(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        self.db.extend(service, version, lease).await
    }
    async fn release(&self, service: &str, owner: &str) -> PortResult<()> {
        self.db.release(service, owner).await
    }
    async fn take(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        self.db.take(service, version, lease).await
    }
    async fn discharge(
        &self,
        service: &str,
        version: u64,
        owner: &str,
        release: bool,
    ) -> PortResult<bool> {
        self.db.discharge(service, version, owner, release).await
    }
    async fn preempt(&self, service: &str, until: Option<Timestamp>) -> PortResult<()> {
        self.db.preempt(service, until).await
    }
    async fn remember(&self, service: &str, key: &str, now: Timestamp) -> PortResult<()> {
        self.db.remember(service, key, now).await
    }
    async fn claim_outbox(&self, service: &str, claim: Lease<'_>) -> PortResult<Vec<Claimed>> {
        self.db.claim_outbox(service, claim).await
    }
    async fn outbox_done(&self, service: &str, keys: &[String]) -> PortResult<()> {
        self.db.outbox_done(service, keys).await
    }
    async fn try_lease(&self, name: &str, lease: Lease<'_>) -> PortResult<Option<u64>> {
        self.db.try_lease(name, lease).await
    }
    async fn mark_lease(&self, name: &str, owner: &str, mark: u64) -> PortResult<()> {
        self.db.mark_lease(name, owner, mark).await
    }
}

impl Traffic for Local {
    async fn production(&self, service: &str) -> PortResult<ProductionRules> {
        Ok(ProductionRules::one(
            router_name(service),
            self.route(service)?.weights(),
        ))
    }

    async fn set_production(&self, service: &str, weights: Weights) -> PortResult<Weights> {
        let route = self.route(service)?;
        // Persist first: a crash after switching but before persisting would otherwise
        // come back on the old split.
        let text = serde_json::to_string(&weights)
            .map_err(|e| PortError::Permanent(format!("cannot encode weights: {e}")))?;
        self.db.put(&weights_key(service), &text)?;
        route.set_weights(weights);
        let read = route.weights();
        if read == weights {
            Ok(read)
        } else {
            Err(PortError::Retryable(format!(
                "router reads {}/{} after writing {}/{}",
                read.blue, read.green, weights.blue, weights.green
            )))
        }
    }

    async fn set_test(&self, _service: &str, _weights: Weights) -> PortResult<()> {
        // The embedded router has no test listener; validations are not configurable
        // locally, so nothing routes test traffic.
        Ok(())
    }
}

impl Platform for Local {
    async fn register_revision(
        &self,
        service: &str,
        deployment_id: &str,
        _template: Color,
        image: &str,
    ) -> PortResult<String> {
        self.platform.register(service, deployment_id, image)
    }

    async fn update_service(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        match_count_of: Color,
    ) -> PortResult<()> {
        self.platform
            .update(service, color, task_definition, match_count_of)
    }

    async fn restore_capacity(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        desired: u32,
    ) -> PortResult<()> {
        self.platform
            .restore(service, color, task_definition, desired)
    }

    async fn scale_up(&self, service: &str, color: Color, match_count_of: Color) -> PortResult<()> {
        self.platform.scale_up(service, color, match_count_of)
    }

    async fn scale_to_zero(&self, service: &str, color: Color) -> PortResult<()> {
        self.platform.scale_to_zero(service, color)
    }

    async fn health(&self, service: &str, color: Color) -> PortResult<TargetHealth> {
        self.platform.health(service, color)
    }
}

impl Bus for Local {
    async fn publish(&self, entries: &[Entry]) -> PortResult<Vec<String>> {
        self.bus.append(entries)?;
        Ok(Vec::new())
    }
}

impl Alarms for Local {
    async fn firing(&self, names: &[String]) -> PortResult<Vec<String>> {
        Ok(self.alarms.firing(names))
    }
}

impl Registry for Local {
    async fn resolve(&self, repository: &str, tag: &str) -> PortResult<String> {
        self.platform.resolve(repository, tag)
    }
}

impl Checks for Local {
    async fn get(&self, url: &str) -> Result<u16, String> {
        self.checks.get(url).await
    }
}
