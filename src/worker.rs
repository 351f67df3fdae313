//! The worker runtime, written once against the ports (SPEC §2): receive a message,
//! parse and route it, hand each service's input to the [`Runner`] (decide → commit →
//! fenced effects → outbox), then delete the message, release it to the dead-letter
//! redrive, or put it back. The reconciler runs here too, under a lease so that one
//! worker of many runs it at a time.
//!
//! Message dispositions (documented in docs/worker.md):
//! * applied, or deliberately ignored (a failed push, an alarm back to OK, a duplicate, an
//!   event for a finished deployment answered with `Event Rejected`) → deleted;
//! * malformed, unknown kind, unknown service, wrong account or region → `Event Rejected`
//!   on first receipt, then made visible again at once so that the queue's redrive policy
//!   moves it to the dead-letter queue after `maxReceiveCount` receipts;
//! * a retryable failure (throttling, a lost conditional write race) → made visible again
//!   after a short back-off; after `maxReceiveCount` receipts it is dead-lettered too.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::contract::{self, Entry, Routed, Sources};
use crate::fleet::Fleet;
use crate::flow::{self, Input, Outcome};
use crate::ports::{Clock, Lease, PortResult, Received, World, patiently};
use crate::runner::{Runner, describe};
use crate::telemetry;

/// The lease that lets one worker of many run the reconciler.
pub const RECONCILER_LEASE: &str = "reconciler";

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
    /// Run the reconciler this often, under a lease so one worker runs it at a time
    /// (0 = never).
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
            reconcile_every: Duration::from_secs(30),
        }
    }
}

/// The worker.
pub struct Worker<W> {
    runner: Runner<W>,
    fleet: Arc<Fleet>,
    sources: Sources,
    options: Options,
}

impl<W> Clone for Worker<W> {
    fn clone(&self) -> Self {
        Worker {
            runner: self.runner.clone(),
            fleet: self.fleet.clone(),
            sources: self.sources.clone(),
            options: self.options.clone(),
        }
    }
}

impl<W: World> Worker<W> {
    /// A worker over `world` for `fleet`'s services.
    pub fn new(world: Arc<W>, fleet: Fleet, clock: Clock, options: Options) -> Worker<W> {
        let runner = Runner::new(world, &fleet, clock, options.lease, &options.worker_id);
        let sources = Sources {
            own: fleet.source.clone(),
            manual: fleet.manual_source.clone(),
        };
        Worker {
            runner,
            fleet: Arc::new(fleet),
            sources,
            options,
        }
    }

    /// The adapters.
    pub fn world(&self) -> &W {
        self.runner.world()
    }

    /// The same worker telling `listener` of every decision it makes (see
    /// [`Decided`](crate::runner::Decided)).
    #[must_use]
    pub fn with_listener(mut self, listener: crate::runner::Listener) -> Worker<W> {
        self.runner = self.runner.with_listener(listener);
        self
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
        let routed = match contract::route(&msg, &self.fleet) {
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
                telemetry::message(telemetry::Message::Ignored);
                return Disposition::Done(why);
            }
            Routed::Inputs(inputs) => inputs,
        };
        let mut summary = Vec::new();
        let mut outcomes = Vec::new();
        for (service, input) in inputs {
            let span = info_span!("input", service = %service, key = %input.key);
            match self.apply(&service, input).instrument(span).await {
                Ok(outcome) => {
                    summary.push(format!("{service}: {}", describe(&outcome)));
                    outcomes.push(outcome);
                }
                Err(e) => return Disposition::Retry(format!("{service}: {e}")),
            }
        }
        telemetry::message(if outcomes.iter().any(|o| matches!(o, Outcome::Applied)) {
            telemetry::Message::Processed
        } else if outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Rejected { .. }))
        {
            telemetry::Message::Rejected
        } else {
            telemetry::Message::Ignored
        });
        Disposition::Done(summary.join("; "))
    }

    /// Publishes `Event Rejected` for a message the worker cannot use (first receipt only;
    /// the event id is the message id, so a repeat is deduplicated by consumers anyway).
    async fn reject(&self, message_id: &str, receive_count: u32, code: &str, reason: &str) {
        if receive_count > 1 {
            return;
        }
        let now = self.runner.now();
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
            source: self.fleet.source.clone(),
            detail_type: flow::EventKind::Rejected.detail_type(),
            detail: detail.to_string(),
            resources: Vec::new(),
            event_id: format!("rejected:message:{message_id}"),
            time: now.rfc3339(),
        };
        if let Err(e) = patiently(|| self.world().publish(std::slice::from_ref(&entry))).await {
            warn!(error = %e, "could not publish Event Rejected");
        }
    }

    /// Decides `input` for `svc` and carries the decision out (see [`Runner::apply`]).
    ///
    /// # Errors
    /// A retryable port failure; the caller puts the message back.
    pub async fn apply(&self, service: &str, input: Input) -> PortResult<Outcome> {
        self.runner.apply(service, input).await
    }

    /// Feeds a reconciler input to every service.
    pub async fn reconcile_all(&self) {
        let now = self.runner.now();
        for svc in &self.fleet.services {
            let input = Input::reconcile(format!("reconcile:{}", now.millis()));
            if let Err(e) = self.apply(&svc.name, input).await {
                warn!(service = %svc.name, error = %e, "reconcile failed");
            }
        }
    }

    /// Runs the reconciler if this worker holds (or takes) the reconciler lease; returns
    /// whether it ran. The lease outlives two periods, so its holder keeps it by running
    /// on time and another worker takes over when the holder stops.
    pub async fn reconcile_if_leader(&self) -> bool {
        let now = self.runner.now();
        let lease = Lease {
            owner: &self.options.worker_id,
            until: now.plus(self.options.reconcile_every * 2),
            now,
        };
        match patiently(|| self.world().try_lease(RECONCILER_LEASE, lease)).await {
            Ok(true) => {
                self.reconcile_all().await;
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(error = %e, "cannot take the reconciler lease");
                false
            }
        }
    }

    /// Receives and handles messages until `shutdown` turns true; then stops polling,
    /// lets in-flight messages finish, and returns.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.options.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let reconciler = (!self.options.reconcile_every.is_zero()).then(|| {
            let worker = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(
                async move {
                    let every = worker.options.reconcile_every;
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep(every) => {}
                            _ = stop.changed() => return,
                        }
                        worker.reconcile_if_leader().await;
                    }
                }
                .instrument(info_span!("reconciler")),
            )
        });
        loop {
            if *shutdown.borrow() {
                break;
            }
            let free = limit.available_permits().clamp(1, 10) as u32;
            let received = tokio::select! {
                r = self.world().receive(free, self.options.wait) => r,
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
        if let Some(reconciler) = reconciler {
            // It stops between runs; one in progress finishes its service first.
            let _ = reconciler.await;
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Handles one received message with a visibility heartbeat, then deletes it,
    /// releases it to the redrive policy, or puts it back after a back-off; returns what
    /// was done with it.
    pub async fn process(&self, m: Received) -> Disposition {
        let span = info_span!("message", id = %m.message_id, receives = m.receive_count);
        async {
            let heartbeat = {
                let world = self.runner.world().clone();
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
                    patiently(|| self.world().delete(&m.receipt)).await
                }
                Disposition::DeadLetter(why) => {
                    telemetry::message(telemetry::Message::Rejected);
                    warn!(reason = %why, "rejected; released to the dead-letter redrive");
                    patiently(|| self.world().set_visibility(&m.receipt, Duration::ZERO)).await
                }
                Disposition::Retry(why) => {
                    telemetry::message(telemetry::Message::Retried);
                    warn!(reason = %why, "will retry");
                    let backoff = Duration::from_secs(u64::from(m.receive_count.min(30)));
                    patiently(|| self.world().set_visibility(&m.receipt, backoff)).await
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "could not settle the message; it reappears after its visibility timeout");
            }
            disposition
        }
        .instrument(span)
        .await
    }
}
