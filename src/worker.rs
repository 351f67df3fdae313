//! The worker runtime, written once against the ports (SPEC §2): receive a message,
//! parse and route it, hand each service's input to the [`Runner`] (obligation → decide →
//! commit → fenced effects → outbox; one message's services concurrently), then delete
//! the message, release it to the dead-letter redrive, put it back, or send it again. The
//! reconciler runs here too, under a lease so that one worker of many runs it at a time.
//!
//! Message dispositions (documented in docs/worker.md):
//! * applied, or deliberately ignored (a failed push, an alarm back to OK, a duplicate, an
//!   event for a finished deployment answered with `Event Rejected`) → deleted;
//! * malformed, unknown kind, unknown service, wrong account or region → `Event Rejected`
//!   (once per message: published on every receipt until it was), then made visible again
//!   at once so that the queue's redrive policy moves it to the dead-letter queue after
//!   `maxReceiveCount` receipts;
//! * a retryable failure (throttling, a lease another task held longer than the input
//!   waits) → made visible again after a short back-off (at least half a lease when the
//!   service was busy, so that no slot is held waiting); on its last receipt it is
//!   announced with `Event Rejected` (`retries-exhausted`) before the redrive policy
//!   dead-letters it;
//! * a rollback-class input (alarm, abort, rollback) that waited several leases for a
//!   busy service → sent again as a new message and the old one deleted: never
//!   dead-lettered for contention.
//!
//! Messages are received with a short visibility of their own ([`Options::receive_visibility`]):
//! a receive whose answer is lost hides its messages for seconds, not for the queue's
//! visibility timeout. The heartbeat extends it to [`Options::visibility`] while work goes on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::contract::{self, Entry, Routed, Sources};
use crate::fleet::Fleet;
use crate::flow::{self, Input, Outcome};
use crate::health::Pulse;
use crate::ports::{Clock, Lease, PortError, PortResult, Received, World, patiently};
use crate::runner::{Runner, describe};
use crate::telemetry;

/// The lease that lets one worker of many run the reconciler.
pub const RECONCILER_LEASE: &str = "reconciler";

/// The dedup scope of message-level `Event Rejected` events (no service concerned).
const MESSAGES: &str = "*";

/// What happened to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (applied or deliberately ignored): delete it.
    Done(String),
    /// Bad input: rejected; let the redrive policy dead-letter it.
    DeadLetter(String),
    /// Try again later.
    Retry(String),
    /// The service was busy (another task held its lease for longer than the input
    /// waits): try again after half a lease, without holding a slot of this worker.
    Busy(String),
    /// A rollback-class input that waited long for a busy service: send it again as a
    /// new message (a fresh receive count) and delete this one.
    Requeue(String),
}

/// The shortest time between two receives that found the queue empty.
const EMPTY_POLL: Duration = Duration::from_secs(1);

/// How long a message that failed retryably stays hidden before its `receive_count + 1`-th
/// receipt: doubling from 1 s, capped at a minute — with the stack's 15 receipts a message
/// outlasts about ten minutes of throttling or a failing store before it is given up.
#[must_use]
pub fn retry_backoff(receive_count: u32) -> Duration {
    Duration::from_secs(1u64 << receive_count.saturating_sub(1).min(6)).min(Duration::from_secs(60))
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
    /// How long a received message stays hidden before work on it starts extending it
    /// (the heartbeat's first renewal comes at a third of this).
    pub receive_visibility: Duration,
    /// The queue's `maxReceiveCount`, when known; `None`: [`Worker::run`] asks the inbox.
    pub max_receives: Option<u32>,
    /// Services the reconciler works on at once.
    pub reconcile_concurrency: usize,
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
            receive_visibility: Duration::from_secs(10),
            max_receives: None,
            reconcile_concurrency: 4,
        }
    }
}

/// The worker.
pub struct Worker<W> {
    runner: Runner<W>,
    fleet: Arc<Fleet>,
    sources: Sources,
    options: Options,
    pulse: Arc<Pulse>,
}

impl<W> Clone for Worker<W> {
    fn clone(&self) -> Self {
        Worker {
            runner: self.runner.clone(),
            fleet: self.fleet.clone(),
            sources: self.sources.clone(),
            options: self.options.clone(),
            pulse: self.pulse.clone(),
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
            pulse: Arc::default(),
        }
    }

    /// The adapters.
    pub fn world(&self) -> &W {
        self.runner.world()
    }

    /// What [`run`](Self::run) records of its progress, for the health check.
    pub fn pulse(&self) -> Arc<Pulse> {
        self.pulse.clone()
    }

    /// The same worker telling `listener` of every decision it makes (see
    /// [`Decided`](crate::runner::Decided)).
    #[must_use]
    pub fn with_listener(mut self, listener: crate::runner::Listener) -> Worker<W> {
        self.runner = self.runner.with_listener(listener);
        self
    }

    /// Handles one message body; see the module docs for the dispositions. One message's
    /// services (an alarm several services list) are applied concurrently: one busy
    /// service delays none of the others.
    pub async fn handle(&self, m: &Received) -> Disposition {
        let (message_id, body) = (m.message_id.as_str(), m.body.as_str());
        let msg = match contract::parse_str(body, &self.sources) {
            Ok(msg) => msg,
            Err(e) => {
                warn!(message_id, code = e.code(), error = %e, "message rejected");
                self.reject(m, e.code(), &e.to_string()).await;
                return Disposition::DeadLetter(e.to_string());
            }
        };
        let routed = match contract::check_age(&msg, self.runner.now())
            .and_then(|()| contract::route(&msg, &self.fleet))
        {
            Ok(r) => r,
            Err(e) => {
                warn!(message_id, code = e.code, error = %e, "message rejected");
                self.reject(m, e.code, &e.reason).await;
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
        let applied = join_all(inputs.into_iter().map(|(service, input)| {
            let span = info_span!("input", service = %service, key = %input.key);
            let rollback = input.is_rollback_class();
            async move {
                let result = self.apply(&service, input).await;
                (service, rollback, result)
            }
            .instrument(span)
        }))
        .await;
        let mut summary = Vec::new();
        let mut outcomes = Vec::new();
        let mut retry = Vec::new();
        let (mut requeue, mut busy, mut failed) = (false, false, false);
        for (service, rollback, result) in applied {
            match result {
                Ok(outcome) => {
                    summary.push(format!("{service}: {}", describe(&outcome)));
                    outcomes.push(outcome);
                }
                Err(e) => {
                    // Contention never dead-letters a rollback: it goes round again.
                    requeue |= rollback && e == PortError::Conflict;
                    busy |= e == PortError::Conflict;
                    failed |= e != PortError::Conflict;
                    retry.push(format!("{service}: {e}"));
                }
            }
        }
        if !retry.is_empty() {
            let why = retry.join("; ");
            return if requeue {
                Disposition::Requeue(why)
            } else if busy && !failed {
                Disposition::Busy(why)
            } else {
                Disposition::Retry(why)
            };
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

    /// Publishes `Event Rejected` for a message the worker cannot use, once: on every
    /// receipt until the publish succeeded and was recorded (the event id is the message
    /// id, so a crash between the two yields a duplicate consumers drop).
    async fn reject(&self, m: &Received, code: &str, reason: &str) {
        let message_id = m.message_id.as_str();
        let key = format!("rejected:message:{message_id}");
        match patiently(|| self.world().seen(MESSAGES, &key)).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot tell whether Event Rejected was published; publishing")
            }
        }
        let now = self.runner.now();
        // Dated by the message, not the receipt: a later receipt (this one's record was
        // lost) publishes the very same event again, as at-least-once delivery promises.
        let at = m.sent_at.unwrap_or(now);
        let detail = json!({
            "eventId": key,
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
            "at": at.rfc3339(),
            "paused": false,
            "code": code,
            "input": format!("message:{message_id}"),
        });
        let entry = Entry {
            source: self.fleet.source.clone(),
            detail_type: flow::EventKind::Rejected.detail_type(),
            detail: detail.to_string(),
            resources: Vec::new(),
            event_id: key.clone(),
            time: at.rfc3339(),
        };
        match patiently(|| self.world().publish(std::slice::from_ref(&entry))).await {
            Ok(failed) if failed.is_empty() => {
                if let Err(e) = patiently(|| self.world().remember(MESSAGES, &key, now)).await {
                    warn!(error = %e, "Event Rejected published but not recorded; a later receipt publishes it again");
                }
            }
            Ok(_) => warn!("Event Rejected was refused by the bus; a later receipt tries again"),
            Err(e) => {
                warn!(error = %e, "could not publish Event Rejected; a later receipt tries again")
            }
        }
    }

    /// Decides `input` for `svc` and carries the decision out (see [`Runner::apply`]).
    ///
    /// # Errors
    /// A retryable port failure; the caller puts the message back.
    pub async fn apply(&self, service: &str, input: Input) -> PortResult<Outcome> {
        self.runner.apply(service, input).await
    }

    /// One reconciler pass over every service (see [`reconcile`](Self::reconcile)).
    pub async fn reconcile_all(&self) {
        self.reconcile(0, Duration::MAX).await;
    }

    /// One reconciler pass: services that owe effects or are rolling back first, then
    /// the others from `from` on (where the last pass stopped), up to
    /// [`Options::reconcile_concurrency`] at once, each bounded by the lease length; the
    /// pass takes no service up after `budget`. Returns where the next pass goes on
    /// from (0 after a whole pass).
    pub async fn reconcile(&self, from: usize, budget: Duration) -> usize {
        let started = tokio::time::Instant::now();
        let services = &self.fleet.services;
        let n = services.len();
        if n == 0 {
            return 0;
        }
        // What each service owes, read at once (bounded): a rollback whose worker died
        // is restored before anything else.
        let concurrency = self.options.reconcile_concurrency.max(1);
        let mut urgent = Vec::with_capacity(n);
        {
            use futures_util::stream::{FuturesOrdered, StreamExt};
            let mut loads = FuturesOrdered::new();
            for svc in services {
                if loads.len() >= concurrency
                    && let Some(u) = loads.next().await
                {
                    urgent.push(u);
                }
                loads.push_back(self.urgent(&svc.name));
            }
            while let Some(u) = loads.next().await {
                urgent.push(u);
            }
        }
        let rotated = (0..n).map(|k| (from + k) % n);
        let first: Vec<usize> = rotated.clone().filter(|i| urgent[*i]).collect();
        let rest: Vec<usize> = rotated.filter(|i| !urgent[*i]).collect();
        let key = format!("reconcile:{}", self.runner.now().millis());
        // A service is taken up only while the pass is within its budget (one already
        // taken up finishes): those visited are a prefix of the order.
        let mut visited = 0;
        {
            use futures_util::stream::{FuturesUnordered, StreamExt};
            let mut order = first.iter().chain(rest.iter()).copied();
            let mut running = FuturesUnordered::new();
            loop {
                while running.len() < concurrency && started.elapsed() < budget {
                    let Some(i) = order.next() else { break };
                    running.push(self.reconcile_one(&services[i].name, &key));
                }
                if running.next().await.is_none() {
                    break;
                }
                visited += 1;
            }
        }
        let skipped = n - visited;
        telemetry::reconcile_pass(started.elapsed(), skipped);
        // The services are taken up in order, so those visited are a prefix: the next
        // pass goes on from the first one this one did not reach.
        let reached = visited.saturating_sub(first.len());
        if skipped == 0 {
            0
        } else {
            rest.get(reached).copied().unwrap_or(0)
        }
    }

    /// Whether `service` owes effects or is rolling back: the reconciler visits it first.
    /// The stored state read here is also what the dashboard's weights and phase show.
    async fn urgent(&self, service: &str) -> bool {
        patiently(|| self.world().load(service, flow::Color::Blue))
            .await
            .is_ok_and(|s| {
                telemetry::stored_state(service, &s.state);
                !s.owed.is_empty()
                    || s.state
                        .active
                        .as_ref()
                        .is_some_and(|d| d.phase == flow::Phase::RollingBack)
            })
    }

    /// One service's reconciliation: the pass waits for it at most the lease length. A run
    /// still going then is left to finish on its own (never cancelled half-way, say
    /// between publishing an event and marking it published) while the pass goes on.
    async fn reconcile_one(&self, service: &str, key: &str) {
        let per_service = self.options.lease.max(Duration::from_secs(1));
        let worker = self.clone();
        let (name, input) = (service.to_string(), Input::reconcile(key));
        let run = tokio::spawn(
            async move { worker.apply(&name, input).await }.instrument(tracing::Span::current()),
        );
        match tokio::time::timeout(per_service, run).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => warn!(service, error = %e, "reconcile failed"),
            Ok(Err(e)) => warn!(service, error = %e, "reconcile stopped"),
            Err(_) => warn!(
                service,
                "reconcile still running after the lease; the pass goes on without it"
            ),
        }
    }

    /// Runs the reconciler if this worker holds (or takes) the reconciler lease; returns
    /// whether it ran. The lease outlives two periods, so its holder keeps it by running
    /// on time and another worker takes over when the holder stops; a pass lasts at most
    /// one period, and the next one (by whichever worker) goes on where it stopped.
    pub async fn reconcile_if_leader(&self) -> bool {
        let now = self.runner.now();
        let owner = &self.options.worker_id;
        let lease = Lease {
            owner,
            until: now.plus(self.options.reconcile_every * 2),
            now,
        };
        match patiently(|| self.world().try_lease(RECONCILER_LEASE, lease)).await {
            Ok(Some(from)) => {
                let budget = self.options.reconcile_every.max(Duration::from_secs(1));
                let from = usize::try_from(from).unwrap_or(0);
                let next = self.reconcile(from, budget).await;
                let mark = u64::try_from(next).unwrap_or(0);
                if let Err(e) =
                    patiently(|| self.world().mark_lease(RECONCILER_LEASE, owner, mark)).await
                {
                    warn!(error = %e, "cannot record where the reconciler stopped");
                }
                true
            }
            Ok(None) => false,
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
        let mut max_receives = self.options.max_receives;
        if max_receives.is_none() {
            match patiently(|| self.world().receive_limit()).await {
                Ok(limit) => max_receives = limit,
                Err(e) => warn!(error = %e, "cannot read the queue's redrive policy"),
            }
        }
        let worker = Worker {
            options: Options {
                max_receives,
                ..self.options.clone()
            },
            ..self.clone()
        };
        worker.pulse.received();
        loop {
            if *shutdown.borrow() {
                break;
            }
            // A message is received only once a permit is free for it: none waits unseen
            // behind busy ones, without a heartbeat, while other workers are idle.
            let first = tokio::select! {
                p = limit.clone().acquire_owned() => p,
                _ = shutdown.changed() => break,
            };
            let Ok(first) = first else { break };
            let mut permits = vec![first];
            while permits.len() < 10
                && let Ok(p) = limit.clone().try_acquire_owned()
            {
                permits.push(p);
            }
            let free = u32::try_from(permits.len()).unwrap_or(1);
            let asked = tokio::time::Instant::now();
            let receive = worker.world().receive(
                free,
                worker.options.wait,
                worker.options.receive_visibility,
            );
            tokio::pin!(receive);
            let received = tokio::select! {
                r = &mut receive => r,
                _ = shutdown.changed() => {
                    // The queue may have handed messages to this request already: cutting
                    // it short would leave them hidden for the receive's visibility. Its
                    // answer comes within the long poll; what it holds goes back at once.
                    worker.hand_back(receive.await).await;
                    break;
                }
            };
            let messages = match received {
                Ok(m) => {
                    worker.pulse.received();
                    if m.is_empty() {
                        // An empty queue answered at once (a short poll, `--wait 0s`):
                        // at most one receive a second, not a hot loop of paid requests.
                        tokio::time::sleep(EMPTY_POLL.saturating_sub(asked.elapsed())).await;
                    }
                    m
                }
                Err(e) => {
                    worker.pulse.receive_failed();
                    warn!(error = %e, "receive failed");
                    drop(permits);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for m in messages {
                let Some(permit) = permits.pop() else { break };
                let worker = worker.clone();
                tasks.spawn(async move {
                    worker.process(m).await;
                    worker.pulse.progressed();
                    drop(permit);
                });
            }
            drop(permits);
            while tasks.try_join_next().is_some() {}
            worker.pulse.set_in_flight(tasks.len());
        }
        worker.pulse.stopping();
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

    /// Makes the messages of a receive answered after shutdown visible again, for another
    /// worker to take now.
    async fn hand_back(&self, received: PortResult<Vec<Received>>) {
        let Ok(messages) = received else { return };
        for m in messages {
            info!(id = %m.message_id, "shutting down: message handed back unread");
            if let Err(e) =
                patiently(|| self.world().set_visibility(&m.receipt, Duration::ZERO)).await
            {
                warn!(id = %m.message_id, error = %e, "cannot hand a message back; it reappears after the receive's visibility");
            }
        }
    }

    /// Handles one received message with a visibility heartbeat (first at a third of the
    /// receive's own visibility, then every third of [`Options::visibility`]), then
    /// deletes it, releases it to the redrive policy, puts it back after a back-off, or
    /// sends it again; returns what was done with it.
    pub async fn process(&self, m: Received) -> Disposition {
        let span = info_span!("message", id = %m.message_id, receives = m.receive_count);
        async {
            // A set aborts its tasks when dropped: a handler cancelled mid-way (its
            // future dropped) leaves no heartbeat hiding the message for ever.
            let mut heartbeat = tokio::task::JoinSet::new();
            {
                let world = self.runner.world().clone();
                let receipt = m.receipt.clone();
                let visibility = self.options.visibility;
                let first = (self.options.receive_visibility / 3).min(visibility / 3);
                heartbeat.spawn(async move {
                    let mut pause = first;
                    loop {
                        tokio::time::sleep(pause).await;
                        if let Err(e) = world.set_visibility(&receipt, visibility).await {
                            warn!(error = %e, "visibility heartbeat failed");
                        }
                        pause = visibility / 3;
                    }
                });
            }
            let disposition = self.handle(&m).await;
            heartbeat.abort_all();
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
                Disposition::Retry(why) | Disposition::Busy(why) => {
                    telemetry::message(telemetry::Message::Retried);
                    if self
                        .options
                        .max_receives
                        .is_some_and(|max| m.receive_count >= max)
                    {
                        // The last receipt: the redrive policy dead-letters it next.
                        self.reject(
                            &m,
                            "retries-exhausted",
                            &format!("given up after {} receipts: {why}", m.receive_count),
                        )
                        .await;
                    }
                    warn!(reason = %why, "will retry");
                    let mut backoff = retry_backoff(m.receive_count);
                    if matches!(disposition, Disposition::Busy(_)) {
                        // A busy service: every receipt covers half a lease of it.
                        backoff = backoff.max(self.options.lease / 2);
                    }
                    patiently(|| self.world().set_visibility(&m.receipt, backoff)).await
                }
                Disposition::Requeue(why) => {
                    telemetry::message(telemetry::Message::Retried);
                    warn!(reason = %why, "a rollback waited long for a busy service; sent again");
                    match patiently(|| self.world().send(m.body.clone(), Duration::ZERO)).await {
                        Ok(()) => patiently(|| self.world().delete(&m.receipt)).await,
                        Err(e) => Err(e),
                    }
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
