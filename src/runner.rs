//! The effect runner: one loop that carries an input through to the world (SPEC §4
//! invariants 2, 3 and 11). Production and every test run this code.
//!
//! For one input and one service:
//! 1. observe what the core [`needs`](flow::needs) (alarms, target health, the production
//!    rule, a tag's digest), [`decide`](flow::decide()), and commit the decision with its
//!    outbox and dedup key: a compare-and-swap on the version, under the service lease;
//! 2. run the decision's effects in order, each right after a fencing check (the stored
//!    version must still be the one committed, the lease still ours); effects are
//!    idempotent, so one that fails transiently (throttling, a reset, a lost answer) is
//!    tried again a few times before it counts as failed;
//! 3. an effect's result — a registered revision, the weights read back after a write,
//!    validation outcomes, a failure — is decided on the committed state and committed
//!    with the next version; its effects run next, then whatever the earlier decisions
//!    still had queued (a failure drops those: the failure's decision says what to do);
//! 4. when nothing is queued, publish the outbox (entries are claimed first, so two
//!    workers never publish one entry).
//!
//! A tick queued by an earlier decision that a later one superseded is not sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use crate::contract::Entry;
use crate::fleet::{Fleet, Service};
use crate::flow::{
    self, CheckOutcome, Decision, Effect, IgnoreCode, Input, InputKind, Observations, Outcome,
    TickKey, Timestamp,
};
use crate::ports::{Clock, Commit, Lease, PortError, PortResult, World, patiently, sending_before};

/// How long a decision keeps retrying a lost compare-and-swap (another task holds the
/// service lease while it runs effects) before the message is put back.
const CONFLICT_PATIENCE: Duration = Duration::from_secs(5);

/// Attempts of an effect whose failure is retryable, before it counts as failed.
const EFFECT_ATTEMPTS: u32 = 3;

/// Pause before the n-th retry of an effect: n times this.
const EFFECT_BACKOFF: Duration = Duration::from_millis(250);

/// Time kept in hand between an effect's last possible AWS call and the end of the lease
/// it runs under: an effect still running then is cut off and tried again under a fresh
/// extension, so that no write is sent under a lease that lapsed.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// How long an outbox claim keeps other publishers off an entry.
const OUTBOX_CLAIM: Duration = Duration::from_secs(30);

/// Distinguishes the lease tokens of one worker's concurrent tasks.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// One decision as the runner made it: what listeners (metrics, tests) are told.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// The service.
    pub service: &'a str,
    /// The state the decision was made on.
    pub before: &'a flow::ServiceState,
    /// The input, with what was observed for it.
    pub input: &'a Input,
    /// The decision's `now`.
    pub now: Timestamp,
    /// The decision; committed unless its outcome is `Ignored`.
    pub decision: &'a Decision,
}

/// Told of every decision that was committed or left the state unchanged, in order.
pub type Listener = Arc<dyn Fn(&Decided<'_>) + Send + Sync>;

/// Carries inputs through decide → commit → effects → outbox.
pub struct Runner<W> {
    world: Arc<W>,
    services: Arc<HashMap<String, Service>>,
    source: String,
    clock: Clock,
    lease: Duration,
    worker_id: String,
    listener: Option<Listener>,
}

impl<W> Clone for Runner<W> {
    fn clone(&self) -> Self {
        Runner {
            world: self.world.clone(),
            services: self.services.clone(),
            source: self.source.clone(),
            clock: self.clock.clone(),
            lease: self.lease,
            worker_id: self.worker_id.clone(),
            listener: self.listener.clone(),
        }
    }
}

/// An effect waiting to run, with the cursor of its deployment in the decision that
/// asked for it (a failure or a result belongs to that step).
struct Queued {
    effect: Effect,
    cursor: u32,
}

/// How the first decision of a run ended.
enum First {
    /// Committed at this version; its effects are to run.
    Committed(Box<Decision>, u64),
    /// Nothing to commit (a duplicate, a stale or early tick…).
    Unchanged(Outcome),
}

fn queued(decision: &Decision) -> Vec<Queued> {
    decision
        .effects
        .iter()
        .map(|effect| Queued {
            cursor: decision
                .state
                .deployment(effect.deployment_id())
                .map_or(0, |d| d.cursor),
            effect: effect.clone(),
        })
        .collect()
}

impl<W: World> Runner<W> {
    /// A runner over `world` for `fleet`'s services; `lease` is how long a service lease
    /// lasts without renewal, `worker_id` names the lease owner.
    pub fn new(
        world: Arc<W>,
        fleet: &Fleet,
        clock: Clock,
        lease: Duration,
        worker_id: &str,
    ) -> Runner<W> {
        Runner {
            world,
            services: Arc::new(
                fleet
                    .services
                    .iter()
                    .map(|s| (s.name.clone(), s.clone()))
                    .collect(),
            ),
            source: fleet.source.clone(),
            clock,
            lease,
            worker_id: worker_id.to_string(),
            listener: None,
        }
    }

    /// The same runner telling `listener` of every decision.
    #[must_use]
    pub fn with_listener(mut self, listener: Listener) -> Runner<W> {
        self.listener = Some(listener);
        self
    }

    fn tell(
        &self,
        service: &str,
        before: &flow::ServiceState,
        input: &Input,
        now: Timestamp,
        decision: &Decision,
    ) {
        let decided = Decided {
            service,
            before,
            input,
            now,
            decision,
        };
        crate::telemetry::decided(&decided);
        if let Some(listener) = &self.listener {
            listener(&decided);
        }
    }

    /// The adapters.
    pub fn world(&self) -> &Arc<W> {
        &self.world
    }

    /// The clock decisions are made with.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Decides `input` for the service named `service` and carries the decision out,
    /// with every effect result after it; returns the outcome of `input` itself.
    ///
    /// # Errors
    /// A retryable port failure before the first commit (the caller puts the message
    /// back), or one while running effects (the reconciler re-drives what was left);
    /// a permanent one for a service the fleet does not have.
    pub async fn apply(&self, service: &str, input: Input) -> PortResult<Outcome> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| PortError::Permanent(format!("unknown service {service}")))?;
        // Unique across this worker's restarts too: a restarted task with the same id
        // never mistakes the lease its predecessor held for its own.
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}#{}.{token}", self.worker_id, std::process::id());
        let outcome = self.run(svc, input, &owner).await;
        if let Err(e) = patiently(|| self.world.release(&svc.name, &owner)).await {
            warn!(error = %e, "could not release the lease; it expires by itself");
        }
        outcome
    }

    async fn run(&self, svc: &Service, input: Input, owner: &str) -> PortResult<Outcome> {
        let settings = &svc.settings;
        let reconciling = matches!(input.kind, InputKind::Reconcile { .. });
        let (decision, mut version) = match self.decide_first(svc, settings, input, owner).await? {
            First::Committed(decision, version) => (*decision, version),
            First::Unchanged(outcome) => {
                // Entries a dead worker committed but never published go out at the
                // latest on the reconciler's next run, even when nothing else happens.
                if reconciling {
                    self.flush_outbox(&svc.name, owner).await;
                }
                return Ok(outcome);
            }
        };
        let outcome = decision.outcome.clone();
        let mut queue: VecDeque<Queued> = queued(&decision).into();
        let mut state = decision.state;
        let result = loop {
            let Some(Queued { effect, cursor }) = queue.pop_front() else {
                break Ok(());
            };
            if let Effect::ScheduleTick { tick, .. } = &effect
                && !flow::decide::waits_for(&state, tick)
            {
                continue;
            }
            let mut now = (self.clock)();
            let mut attempt = 1;
            let outcome = loop {
                let until = match self.hold(svc, version, owner, now).await {
                    Ok(Some(until)) => until,
                    Ok(None) => {
                        info!(
                            effect = effect.name(),
                            "fenced: a newer decision or another lease holder; stopping"
                        );
                        break Err(PortError::Fenced);
                    }
                    Err(e) => break Err(e),
                };
                // From the clock now: the check itself may have taken seconds (a slow
                // store), and that time is gone from the lease.
                let left = until.since((self.clock)());
                let budget = Duration::from_millis(left).saturating_sub(LEASE_MARGIN);
                let send_before = tokio::time::Instant::now() + budget;
                let executed = tokio::time::timeout(
                    budget,
                    sending_before(send_before, self.execute(svc, &effect, cursor, now)),
                )
                .await;
                let executed = executed.unwrap_or_else(|_| {
                    Err(PortError::Retryable(format!(
                        "still running {} before the lease ends",
                        humantime::format_duration(LEASE_MARGIN)
                    )))
                });
                match executed {
                    // Effects are idempotent: a transient failure (throttling, a lost
                    // answer) is tried again before it counts as the step's failure.
                    Err(PortError::Retryable(why)) if attempt < EFFECT_ATTEMPTS => {
                        warn!(effect = effect.name(), attempt, error = %why, "effect failed; trying again");
                        tokio::time::sleep(EFFECT_BACKOFF * attempt).await;
                        attempt += 1;
                        now = (self.clock)();
                    }
                    other => break other,
                }
            };
            let next = match outcome {
                Ok(None) => continue,
                Ok(Some(result)) => result,
                Err(PortError::Fenced) => break Ok(()),
                Err(e)
                    if self
                        .hold(svc, version, owner, now)
                        .await
                        .ok()
                        .flatten()
                        .is_none() =>
                {
                    // Whatever failed, a newer decision or another lease holder owns
                    // the service now: not this run's failure to report.
                    warn!(effect = effect.name(), error = %e, "effect failed after being fenced out");
                    break Ok(());
                }
                Err(e) => {
                    warn!(effect = effect.name(), error = %e, "effect failed");
                    // What was decided after it waits for the failure's own decision.
                    queue.clear();
                    Input::effect_failed(
                        effect.deployment_id(),
                        cursor,
                        effect.name(),
                        e.to_string(),
                        now.millis(),
                    )
                }
            };
            let decided = flow::decide(state.clone(), settings, &next, now);
            if !decided.changed() {
                self.tell(&svc.name, &state, &next, now, &decided);
                continue;
            }
            match self.commit(svc, &decided, &next, version, owner, now).await {
                Ok(v) => {
                    log_decision(&next, &decided);
                    self.tell(&svc.name, &state, &next, now, &decided);
                    version = v;
                    for q in queued(&decided).into_iter().rev() {
                        queue.push_front(q);
                    }
                    state = decided.state;
                }
                Err(PortError::Conflict) => {
                    info!("fenced: the state moved on while effects ran; stopping");
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        self.flush_outbox(&svc.name, owner).await;
        result.map(|()| outcome)
    }

    /// Observes, decides and commits the input a message brought; retries a lost
    /// compare-and-swap for a while.
    async fn decide_first(
        &self,
        svc: &Service,
        settings: &flow::ServiceSettings,
        input: Input,
        owner: &str,
    ) -> PortResult<First> {
        let keyed = input.is_keyed();
        let started = tokio::time::Instant::now();
        loop {
            let (stored, seen) = tokio::join!(
                patiently(|| self.world.load(&svc.name, flow::Color::Blue)),
                async {
                    if keyed {
                        patiently(|| self.world.seen(&svc.name, &input.key)).await
                    } else {
                        Ok(false)
                    }
                }
            );
            let stored = stored?;
            if seen? {
                return Ok(First::Unchanged(Outcome::Ignored {
                    code: IgnoreCode::Duplicate,
                    reason: format!("input {} was already applied", input.key),
                }));
            }
            let input = self.observe(svc, &stored.state, &input).await?;
            let now = (self.clock)();
            let decision = flow::decide(stored.state.clone(), settings, &input, now);
            if !decision.changed() {
                self.tell(&svc.name, &stored.state, &input, now, &decision);
                if let Outcome::Ignored {
                    code: IgnoreCode::Early,
                    ..
                } = &decision.outcome
                {
                    self.resend_early_tick(svc, &stored.state, &input, now)
                        .await?;
                }
                return Ok(First::Unchanged(decision.outcome));
            }
            match self
                .commit(svc, &decision, &input, stored.version, owner, now)
                .await
            {
                Ok(version) => {
                    log_decision(&input, &decision);
                    self.tell(&svc.name, &stored.state, &input, now, &decision);
                    return Ok(First::Committed(Box::new(decision), version));
                }
                Err(PortError::Conflict) => {
                    // Another task committed first, or holds the lease while it carries
                    // out effects: wait for the lease (reading only the lease, not
                    // observing again) before deciding again on the new state.
                    self.await_lease(svc, owner, started).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits, with a growing pause, until no other owner holds `svc`'s lease; gives up
    /// with [`PortError::Conflict`] once [`CONFLICT_PATIENCE`] since `started` is spent.
    async fn await_lease(
        &self,
        svc: &Service,
        owner: &str,
        started: tokio::time::Instant,
    ) -> PortResult<()> {
        let mut pause = Duration::from_millis(10);
        loop {
            if started.elapsed() >= CONFLICT_PATIENCE {
                return Err(PortError::Conflict);
            }
            let fence = patiently(|| self.world.fence(&svc.name)).await?;
            // The stores count a lease as held up to and including its last millisecond.
            let held =
                fence.owner.as_deref().is_some_and(|o| o != owner) && fence.until >= (self.clock)();
            if !held {
                // A lost race on the version: decide again at once, but never spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Commits `decision` (made on `version`) with its outbox, dedup key and records.
    ///
    /// A commit whose answer is lost may have landed: after a retryable failure the
    /// store is read, and a stored state that is exactly this decision's, at the next
    /// version and under this run's lease, counts as committed; otherwise the commit is
    /// tried again (it is conditional on the version, so it never applies twice).
    async fn commit(
        &self,
        svc: &Service,
        decision: &Decision,
        input: &Input,
        version: u64,
        owner: &str,
        now: Timestamp,
    ) -> PortResult<u64> {
        let entries: Vec<Entry> = decision
            .events
            .iter()
            .map(|e| Entry::new(e, &self.source))
            .collect();
        let deployments: Vec<&flow::Deployment> = decision
            .state
            .active
            .iter()
            .chain(decision.state.last.iter())
            .collect();
        let commit = Commit {
            state: &decision.state,
            expected_version: version,
            outbox: &entries,
            dedup_key: input.is_keyed().then_some(input.key.as_str()),
            deployments: &deployments,
            lease: Lease {
                owner,
                until: now.plus(self.lease),
                now,
            },
        };
        let mut attempt = 1;
        loop {
            match self.world.commit(&svc.name, commit).await {
                Err(PortError::Retryable(why)) => {
                    let landed = patiently(|| self.world.load(&svc.name, flow::Color::Blue))
                        .await
                        .is_ok_and(|s| s.version == version + 1 && s.state == decision.state);
                    let ours = patiently(|| self.world.fence(&svc.name))
                        .await
                        .is_ok_and(|f| {
                            f.version == version + 1 && f.owner.as_deref() == Some(owner)
                        });
                    if landed && ours {
                        return Ok(version + 1);
                    }
                    if attempt >= EFFECT_ATTEMPTS {
                        return Err(PortError::Retryable(why));
                    }
                    tokio::time::sleep(EFFECT_BACKOFF * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The check made right before every effect: `None` when a newer decision or another
    /// lease holder fences this run out, otherwise until when its lease holds.
    async fn hold(
        &self,
        svc: &Service,
        version: u64,
        owner: &str,
        now: Timestamp,
    ) -> PortResult<Option<Timestamp>> {
        let fence = patiently(|| self.world.fence(&svc.name)).await?;
        if fence.version != version || fence.owner.as_deref() != Some(owner) {
            return Ok(None);
        }
        // Effects that took long (retries, slow calls) have eaten into the lease: extend
        // it while at least half remains short of running out, so that no write is sent
        // under a lease that lapsed. The extension is conditional on the version and the
        // owner, so it fails (fenced) if anyone came in between.
        if fence.until.since(now) < self.lease.as_millis() as u64 / 2 {
            let lease = Lease {
                owner,
                until: now.plus(self.lease),
                now,
            };
            let extended = patiently(|| self.world.extend(&svc.name, version, lease)).await?;
            return Ok(extended.then_some(lease.until));
        }
        Ok(Some(fence.until))
    }

    /// Reads what the core needs before deciding `input`.
    ///
    /// # Errors
    /// A retryable failure resolving a tag (the message is retried); every other failed
    /// read is passed on as unknown, which the core never takes as healthy.
    async fn observe(
        &self,
        svc: &Service,
        state: &flow::ServiceState,
        input: &Input,
    ) -> PortResult<Input> {
        let needs = flow::needs(state, input);
        let mut input = input.clone();
        match &mut input.kind {
            InputKind::Deploy {
                image, unresolved, ..
            } if needs.resolve_tag => {
                let tag = image.tag.clone().unwrap_or_else(|| "latest".into());
                match patiently(|| self.world.resolve(&image.repository, &tag)).await {
                    Ok(digest) => {
                        info!(repository = %image.repository, %tag, %digest, "tag resolved");
                        image.digest = Some(digest);
                        image.tag = Some(tag);
                    }
                    Err(PortError::Permanent(why)) => *unresolved = Some(why),
                    Err(e) => return Err(e),
                }
            }
            InputKind::Tick { observed, .. } | InputKind::Reconcile { observed } => {
                *observed = self.read(svc, needs).await;
            }
            _ => {}
        }
        Ok(input)
    }

    async fn read(&self, svc: &Service, needs: flow::Needs) -> Observations {
        let mut observed = Observations::default();
        if needs.alarms {
            observed.alarms_firing =
                match patiently(|| self.world.firing(&svc.rollback_alarms)).await {
                    Ok(firing) => Some(firing),
                    Err(e) => {
                        warn!(error = %e, "cannot read rollback alarms; the step holds");
                        None
                    }
                };
        }
        if let Some(color) = needs.target_health {
            observed.target_health = match patiently(|| self.world.health(&svc.name, color)).await {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(error = %e, "cannot read target health");
                    None
                }
            };
        }
        if needs.production {
            observed.production = match patiently(|| self.world.production(&svc.name)).await {
                Ok(w) => Some(Ok(w)),
                Err(PortError::Permanent(why)) => Some(Err(why)),
                Err(e) => {
                    warn!(error = %e, "cannot read the production rule");
                    None
                }
            };
        }
        observed
    }

    async fn resend_early_tick(
        &self,
        svc: &Service,
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

    /// Sends `tick` to the worker's own queue, due at `due`.
    async fn send_tick(
        &self,
        svc: &Service,
        tick: &TickKey,
        due: Timestamp,
        now: Timestamp,
    ) -> PortResult<()> {
        let body = json!({
            "version": "0",
            "id": format!("{}-{}", tick.key(), now.millis()),
            "detail-type": "Deployment Tick",
            "source": self.source,
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

    /// Publishes the outbox entries this call can claim; what fails stays for the next
    /// flush (a claim expires after [`OUTBOX_CLAIM`]).
    async fn flush_outbox(&self, service: &str, owner: &str) {
        let now = (self.clock)();
        let claim = Lease {
            owner,
            until: now.plus(OUTBOX_CLAIM),
            now,
        };
        let claimed = match patiently(|| self.world.claim_outbox(service, claim)).await {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                crate::telemetry::outbox_pending(0);
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot claim the outbox");
                return;
            }
        };
        let pending: Vec<Entry> = claimed.iter().map(|c| c.entry.clone()).collect();
        match patiently(|| self.world.publish(&pending)).await {
            Ok(failed) => {
                crate::telemetry::outbox_pending(failed.len());
                let done: Vec<String> = claimed
                    .iter()
                    .filter(|c| !failed.contains(&c.entry.event_id))
                    .map(|c| c.key.clone())
                    .collect();
                if let Err(e) = patiently(|| self.world.outbox_done(service, &done)).await {
                    warn!(error = %e, "published events stay in the outbox");
                }
            }
            Err(e) => {
                crate::telemetry::outbox_pending(pending.len());
                warn!(error = %e, "publishing failed; events stay in the outbox");
            }
        }
    }

    /// Carries out one effect; some produce an input to decide next.
    async fn execute(
        &self,
        svc: &Service,
        effect: &Effect,
        cursor: u32,
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
                    .register_revision(&svc.name, deployment_id, *template, image)
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
                    .update_service(&svc.name, *color, task_definition, *match_count_of)
                    .await?;
                Ok(None)
            }
            Effect::ScaleToZero { color, .. } => {
                self.world.scale_to_zero(&svc.name, *color).await?;
                Ok(None)
            }
            Effect::SetProductionWeights {
                deployment_id,
                weights,
            } => {
                let read = self.world.set_production(&svc.name, *weights).await?;
                Ok(Some(Input::traffic_confirmed(deployment_id, cursor, read)))
            }
            Effect::SetTestWeights { weights, .. } => {
                self.world.set_test(&svc.name, *weights).await?;
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
}

fn log_decision(input: &Input, decision: &Decision) {
    info!(
        input = %input.key,
        outcome = describe(&decision.outcome),
        effects = decision.effects.len(),
        events = decision.events.len(),
        "decided"
    );
}

/// One line for logs and message dispositions.
#[must_use]
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Applied => "applied".into(),
        Outcome::Rejected { code, reason } => format!("rejected ({}): {reason}", code.as_str()),
        Outcome::Ignored { code, reason } => format!("ignored ({code:?}): {reason}"),
    }
}
