//! The worker runtime, written once against the ports (SPEC §2).
//!
//! For each message: parse → route → for each service: observe what the core needs,
//! `decide`, commit the decision with its outbox and dedup key (compare-and-swap on the
//! version, under the service lease), run the effects in order with a fencing check
//! before each one (feeding effect results back as inputs), then publish the outbox. The
//! message is deleted only after all of that succeeded.
//!
//! Message dispositions (documented in the README):
//! * applied, or deliberately ignored (a failed push, an alarm back to OK, a duplicate, an
//!   event for a finished deployment answered with `Event Rejected`) → deleted;
//! * malformed, unknown kind, unknown service, wrong account or region → `Event Rejected`
//!   on first receipt, then made visible again at once so that the queue's redrive policy
//!   moves it to the dead-letter queue after `maxReceiveCount` receipts;
//! * a retryable failure (throttling, a lost conditional write race) → made visible again
//!   after a short back-off; after `maxReceiveCount` receipts it is dead-lettered too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, ServiceConfig};
use crate::contract::{self, Entry, Routed, Sources};
use crate::flow::{
    self, CheckOutcome, Effect, IgnoreCode, Input, InputKind, Observations, Outcome,
    ServiceSettings, TickKey, Timestamp,
};
use crate::ports::{
    Alarms, Bus, Checks, Commit, Inbox, Lease, Platform, PortError, PortResult, Received, Store,
    Traffic,
};

/// Everything the worker talks to, in one object (the AWS or the embedded adapters).
pub trait World: Inbox + Store + Traffic + Platform + Bus + Alarms + Checks + 'static {}
impl<T: Inbox + Store + Traffic + Platform + Bus + Alarms + Checks + 'static> World for T {}

/// Where time comes from (tests may supply their own).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    #[allow(clippy::disallowed_methods)] // the runtime is where the clock is read
    Arc::new(|| {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_millis(flow::model::duration_ms(since))
    })
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (applied or deliberately ignored): delete it.
    Done(String),
    /// Bad input: rejected; let the redrive policy dead-letter it.
    DeadLetter(String),
    /// Try again later.
    Retry(String),
}

/// Tunables of the runtime.
#[derive(Debug, Clone)]
pub struct Options {
    /// Messages worked on at once.
    pub concurrency: usize,
    /// Long-poll wait.
    pub wait: Duration,
    /// Visibility extension while a message is worked on (the heartbeat renews it at a
    /// third of this).
    pub visibility: Duration,
    /// How long a service lease lasts without renewal.
    pub lease: Duration,
    /// This worker's identity (lease owner).
    pub worker_id: String,
    /// Run the reconciler every so often (0 = never; production uses a schedule).
    pub reconcile_every: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            concurrency: 4,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(60),
            lease: Duration::from_secs(30),
            worker_id: "worker".into(),
            reconcile_every: Duration::ZERO,
        }
    }
}

/// The worker.
pub struct Worker<W> {
    world: Arc<W>,
    config: Arc<Config>,
    settings: HashMap<String, ServiceSettings>,
    sources: Sources,
    clock: Clock,
    options: Options,
}

impl<W> Clone for Worker<W> {
    fn clone(&self) -> Self {
        Worker {
            world: self.world.clone(),
            config: self.config.clone(),
            settings: self.settings.clone(),
            sources: self.sources.clone(),
            clock: self.clock.clone(),
            options: self.options.clone(),
        }
    }
}

/// How long a decision keeps retrying a lost compare-and-swap (another task holds the
/// service lease while it runs effects) before the message is put back.
const CONFLICT_PATIENCE: Duration = Duration::from_secs(5);

/// Distinguishes the lease tokens of one worker's concurrent tasks.
static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<W: World> Worker<W> {
    /// A worker over `world` for `config`.
    pub fn new(world: Arc<W>, config: Config, clock: Clock, options: Options) -> Worker<W> {
        let settings = config
            .services
            .iter()
            .map(|s| (s.name.clone(), s.settings()))
            .collect();
        let sources = Sources {
            own: config.worker.source.clone(),
            manual: config.worker.manual_source.clone(),
        };
        Worker {
            world,
            config: Arc::new(config),
            settings,
            sources,
            clock,
            options,
        }
    }

    /// The adapters.
    pub fn world(&self) -> &W {
        &self.world
    }

    /// Handles one message body; see the module docs for the dispositions.
    pub async fn handle(&self, message_id: &str, body: &str, receive_count: u32) -> Disposition {
        let msg = match contract::parse_str(body, &self.sources) {
            Ok(msg) => msg,
            Err(e) => {
                warn!(message_id, code = e.code(), error = %e, "message rejected");
                self.reject(message_id, receive_count, e.code(), &e.to_string())
                    .await;
                return Disposition::DeadLetter(e.to_string());
            }
        };
        let routed = match contract::route(&msg, &self.config) {
            Ok(r) => r,
            Err(e) => {
                warn!(message_id, code = e.code, error = %e, "message rejected");
                self.reject(message_id, receive_count, e.code, &e.reason)
                    .await;
                return Disposition::DeadLetter(e.reason);
            }
        };
        let inputs = match routed {
            Routed::Ignored(why) => {
                info!(message_id, reason = %why, "message ignored");
                return Disposition::Done(why);
            }
            Routed::Inputs(inputs) => inputs,
        };
        let mut summary = Vec::new();
        for (service, input) in inputs {
            let Some(svc) = self.config.service(&service).cloned() else {
                continue;
            };
            let span = info_span!("input", service = %service, key = %input.key);
            match self.apply(&svc, input).instrument(span).await {
                Ok(outcome) => summary.push(format!("{service}: {}", describe(&outcome))),
                Err(e) => return Disposition::Retry(format!("{service}: {e}")),
            }
        }
        Disposition::Done(summary.join("; "))
    }

    /// Publishes `Event Rejected` for a message the worker cannot use (first receipt only;
    /// the event id is the message id, so a repeat is deduplicated by consumers anyway).
    async fn reject(&self, message_id: &str, receive_count: u32, code: &str, reason: &str) {
        if receive_count > 1 {
            return;
        }
        let now = (self.clock)();
        let detail = json!({
            "eventId": format!("rejected:message:{message_id}"),
            "deploymentId": null,
            // A message the worker cannot read names no service and says nothing of
            // any rule's weights: those fields are null rather than invented.
            "service": null,
            "phase": null,
            "previousPhase": null,
            "liveColor": null,
            "weights": null,
            "fromImage": null,
            "toImage": null,
            "sequence": 0,
            "reason": reason,
            "at": now.rfc3339(),
            "paused": false,
            "code": code,
            "input": format!("message:{message_id}"),
        });
        let entry = Entry {
            source: self.config.worker.source.clone(),
            detail_type: flow::EventKind::Rejected.detail_type(),
            detail: detail.to_string(),
            resources: Vec::new(),
            event_id: format!("rejected:message:{message_id}"),
            time: now.rfc3339(),
        };
        if let Err(e) = self.world.publish(std::slice::from_ref(&entry)).await {
            warn!(error = %e, "could not publish Event Rejected");
        }
    }

    /// Decides `input` for `svc` and carries the decision out; returns the outcome of
    /// `input` itself. Effect results are applied recursively under the same lease.
    ///
    /// # Errors
    /// A retryable port failure; the caller puts the message back.
    pub async fn apply(&self, svc: &ServiceConfig, input: Input) -> PortResult<Outcome> {
        let token = NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owner = format!("{}#{token}", self.options.worker_id);
        let outcome = self.apply_as(svc, input, &owner).await;
        if let Err(e) = self.world.release(&svc.name, &owner).await {
            warn!(error = %e, "could not release the lease; it expires by itself");
        }
        outcome
    }

    async fn apply_as(
        &self,
        svc: &ServiceConfig,
        input: Input,
        owner: &str,
    ) -> PortResult<Outcome> {
        let settings = self
            .settings
            .get(&svc.name)
            .ok_or_else(|| PortError::Permanent(format!("unknown service {}", svc.name)))?;
        let keyed = !matches!(input.kind, InputKind::Tick { .. } | InputKind::Reconcile);
        let started = tokio::time::Instant::now();
        let (decision, version) = loop {
            let (stored, seen) =
                tokio::join!(self.world.load(&svc.name, flow::Color::Blue), async {
                    if keyed {
                        self.world.seen(&svc.name, &input.key).await
                    } else {
                        Ok(false)
                    }
                });
            let stored = stored?;
            if seen? {
                return Ok(Outcome::Ignored {
                    code: IgnoreCode::Duplicate,
                    reason: format!("input {} was already applied", input.key),
                });
            }
            let input = self.observe(svc, &stored.state, &input).await;
            let now = (self.clock)();
            let decision = flow::decide(stored.state.clone(), settings, &input, now);
            if !decision.changed() {
                if let Outcome::Ignored {
                    code: IgnoreCode::Early,
                    ..
                } = &decision.outcome
                {
                    self.resend_early_tick(svc, &stored.state, &input, now)
                        .await?;
                }
                return Ok(decision.outcome);
            }
            let entries: Vec<Entry> = decision
                .events
                .iter()
                .map(|e| Entry::new(e, &self.config.worker.source))
                .collect();
            let deployments: Vec<&flow::Deployment> = decision
                .state
                .active
                .iter()
                .chain(decision.state.last.iter())
                .collect();
            let commit = Commit {
                state: &decision.state,
                expected_version: stored.version,
                outbox: &entries,
                dedup_key: keyed.then_some(input.key.as_str()),
                deployments: &deployments,
                lease: Lease {
                    owner,
                    until: now.plus(self.options.lease),
                    now,
                },
            };
            match self.world.commit(&svc.name, commit).await {
                Ok(version) => break (decision, version),
                Err(PortError::Conflict) if started.elapsed() < CONFLICT_PATIENCE => {
                    // Another task holds the lease for the duration of a few API calls.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        info!(
            outcome = describe(&decision.outcome),
            effects = decision.effects.len(),
            events = decision.events.len(),
            "decided"
        );
        // Effects first: a rollback's production write must not wait behind publishing.
        // The events are committed in the outbox already, so publishing after is safe.
        let ran = self
            .run_effects(svc, &decision.state, &decision.effects, version, owner)
            .await;
        self.flush_outbox(&svc.name).await;
        ran?;
        Ok(decision.outcome)
    }

    /// Reads what the core needs before a tick (alarm states, target health).
    async fn observe(
        &self,
        svc: &ServiceConfig,
        state: &flow::ServiceState,
        input: &Input,
    ) -> Input {
        let InputKind::Tick { tick, .. } = &input.kind else {
            return input.clone();
        };
        let needs = flow::needs(state, tick);
        let mut observed = Observations::default();
        if needs.alarms {
            observed.alarms_firing = match self.world.firing(&svc.rollback_alarms).await {
                Ok(firing) => Some(firing),
                Err(e) => {
                    warn!(error = %e, "cannot read rollback alarms; the step holds");
                    None
                }
            };
        }
        if let Some(color) = needs.target_health {
            observed.target_health = match self.world.health(svc, color).await {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(error = %e, "cannot read target health");
                    None
                }
            };
        }
        Input::tick(tick.clone(), observed)
    }

    async fn resend_early_tick(
        &self,
        svc: &ServiceConfig,
        state: &flow::ServiceState,
        input: &Input,
        now: Timestamp,
    ) -> PortResult<()> {
        let InputKind::Tick { tick, .. } = &input.kind else {
            return Ok(());
        };
        let due = state
            .deployment(&tick.deployment_id)
            .and_then(|d| d.next_tick)
            .map_or(now, |t| t.due);
        self.send_tick(svc, tick, due, now).await
    }

    async fn send_tick(
        &self,
        svc: &ServiceConfig,
        tick: &TickKey,
        due: Timestamp,
        now: Timestamp,
    ) -> PortResult<()> {
        let body = json!({
            "version": "0",
            "id": format!("{}-{}", tick.key(), now.millis()),
            "detail-type": "Deployment Tick",
            "source": self.config.worker.source,
            "time": now.rfc3339(),
            "resources": [],
            "detail": {
                "service": svc.name,
                "deploymentId": tick.deployment_id,
                "cursor": tick.cursor,
                "attempt": tick.attempt,
                "due": due.rfc3339(),
            }
        });
        let delay = Duration::from_millis(due.since(now));
        self.world.send(body.to_string(), delay).await
    }

    /// Publishes whatever the service's outbox holds; failures stay for the next time.
    async fn flush_outbox(&self, service: &str) {
        let pending = match self.world.outbox(service).await {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, "cannot read the outbox");
                return;
            }
        };
        match self.world.publish(&pending).await {
            Ok(failed) => {
                let done: Vec<String> = pending
                    .iter()
                    .map(|e| e.event_id.clone())
                    .filter(|id| !failed.contains(id))
                    .collect();
                if let Err(e) = self.world.outbox_done(service, &done).await {
                    warn!(error = %e, "published events stay in the outbox");
                }
            }
            Err(e) => warn!(error = %e, "publishing failed; events stay in the outbox"),
        }
    }

    /// Runs effects in order under the fencing check; feeds results back.
    async fn run_effects(
        &self,
        svc: &ServiceConfig,
        decided: &flow::ServiceState,
        effects: &[Effect],
        version: u64,
        owner: &str,
    ) -> PortResult<()> {
        for effect in effects {
            let now = (self.clock)();
            let fence = self.world.fence(&svc.name).await?;
            if fence.version != version
                || fence.owner.as_deref() != Some(owner)
                || fence.until <= now
            {
                info!(
                    effect = effect.name(),
                    "fenced: a newer decision or another lease holder; stopping"
                );
                return Ok(());
            }
            let result = self.execute(svc, effect, now).await;
            let followup = match result {
                Ok(Some(followup)) => followup,
                Ok(None) => continue,
                Err(PortError::Fenced) => return Ok(()),
                Err(e) => {
                    warn!(effect = effect.name(), error = %e, "effect failed");
                    // The failure belongs to the step that decided the effect.
                    let cursor = decided
                        .deployment(effect.deployment_id())
                        .map_or(0, |d| d.cursor);
                    let failure = Input::effect_failed(
                        effect.deployment_id(),
                        cursor,
                        effect.name(),
                        e.to_string(),
                        now.millis(),
                    );
                    Box::pin(self.apply_as(svc, failure, owner)).await?;
                    return Ok(());
                }
            };
            Box::pin(self.apply_as(svc, followup, owner)).await?;
        }
        Ok(())
    }

    /// Carries out one effect; some produce an input to apply next.
    async fn execute(
        &self,
        svc: &ServiceConfig,
        effect: &Effect,
        now: Timestamp,
    ) -> PortResult<Option<Input>> {
        match effect {
            Effect::RegisterRevision {
                deployment_id,
                template,
                image,
            } => {
                let arn = self
                    .world
                    .register_revision(svc, deployment_id, *template, image)
                    .await?;
                Ok(Some(Input::revision_registered(deployment_id, arn)))
            }
            Effect::UpdateService {
                color,
                task_definition,
                match_count_of,
                ..
            } => {
                self.world
                    .update_service(svc, *color, task_definition, *match_count_of)
                    .await?;
                Ok(None)
            }
            Effect::ScaleToZero { color, .. } => {
                self.world.scale_to_zero(svc, *color).await?;
                Ok(None)
            }
            Effect::SetProductionWeights { weights, .. } => {
                self.world.set_production(svc, *weights).await?;
                Ok(None)
            }
            Effect::SetTestWeights { weights, .. } => {
                self.world.set_test(svc, *weights).await?;
                Ok(None)
            }
            Effect::RunValidations {
                deployment_id,
                cursor,
                checks,
            } => {
                let mut outcomes = Vec::new();
                for check in checks {
                    if let flow::Check::Http {
                        name,
                        url,
                        expect_status,
                    } = check
                    {
                        let (passed, detail) = match self.world.get(url).await {
                            Ok(status) => (status == *expect_status, format!("HTTP {status}")),
                            Err(e) => (false, e),
                        };
                        outcomes.push(CheckOutcome {
                            name: name.clone(),
                            passed,
                            detail,
                        });
                    }
                }
                Ok(Some(Input::validations_completed(
                    deployment_id,
                    *cursor,
                    outcomes,
                )))
            }
            Effect::ScheduleTick { tick, due } => {
                self.send_tick(svc, tick, *due, now).await?;
                Ok(None)
            }
        }
    }

    /// Feeds a reconciler input to every service.
    pub async fn reconcile_all(&self) {
        let now = (self.clock)();
        for svc in self.config.services.clone() {
            let input = Input::new(format!("reconcile:{}", now.millis()), InputKind::Reconcile);
            if let Err(e) = self.apply(&svc, input).await {
                warn!(service = %svc.name, error = %e, "reconcile failed");
            }
        }
    }

    /// Receives and handles messages until `shutdown` turns true; then stops polling,
    /// lets in-flight messages finish, and returns.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.options.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_reconcile = (self.clock)();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let every = self.options.reconcile_every;
            if !every.is_zero()
                && (self.clock)().since(last_reconcile) >= flow::model::duration_ms(every)
            {
                last_reconcile = (self.clock)();
                self.reconcile_all().await;
            }
            let free = limit.available_permits().clamp(1, 10) as u32;
            let received = tokio::select! {
                r = self.world.receive(free, self.options.wait) => r,
                _ = shutdown.changed() => break,
            };
            let messages = match received {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "receive failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for m in messages {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let worker = self.clone();
                tasks.spawn(async move {
                    worker.process(m).await;
                    drop(permit);
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        info!(
            in_flight = tasks.len(),
            "shutting down: finishing in-flight messages"
        );
        while tasks.join_next().await.is_some() {}
    }

    /// Handles one received message with a visibility heartbeat, then deletes it,
    /// releases it to the redrive policy, or puts it back after a back-off.
    pub async fn process(&self, m: Received) {
        let span = info_span!("message", id = %m.message_id, receives = m.receive_count);
        async {
            let heartbeat = {
                let world = self.world.clone();
                let receipt = m.receipt.clone();
                let visibility = self.options.visibility;
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(visibility / 3).await;
                        if let Err(e) = world.set_visibility(&receipt, visibility).await {
                            warn!(error = %e, "visibility heartbeat failed");
                        }
                    }
                })
            };
            let disposition = self.handle(&m.message_id, &m.body, m.receive_count).await;
            heartbeat.abort();
            let result = match &disposition {
                Disposition::Done(why) => {
                    info!(result = %why, "done");
                    self.world.delete(&m.receipt).await
                }
                Disposition::DeadLetter(why) => {
                    warn!(reason = %why, "rejected; released to the dead-letter redrive");
                    self.world.set_visibility(&m.receipt, Duration::ZERO).await
                }
                Disposition::Retry(why) => {
                    warn!(reason = %why, "will retry");
                    let backoff = Duration::from_secs(u64::from(m.receive_count.min(30)));
                    self.world.set_visibility(&m.receipt, backoff).await
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "could not settle the message; it reappears after its visibility timeout");
            }
        }
        .instrument(span)
        .await;
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Applied => "applied".into(),
        Outcome::Rejected { code, reason } => format!("rejected ({}): {reason}", code.as_str()),
        Outcome::Ignored { code, reason } => format!("ignored ({code:?}): {reason}"),
    }
}
