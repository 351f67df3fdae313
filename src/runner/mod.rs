//! The effect runner: one loop that carries an input through to the world (SPEC §4
//! invariants 2, 3, 11 and 12). Production and every test run this code.
//!
//! For one input and one service:
//! 1. whatever an earlier decision committed the world to and nobody has carried out yet
//!    (the service's *obligation*, stored with its state: a worker died, or was fenced,
//!    between a commit and its effects) is carried out first, under the service lease —
//!    unless the input may roll the deployment back, which is decided first and
//!    supersedes what it makes obsolete (`lease.rs`);
//! 2. observe what the core [`needs`](flow::needs), [`decide`](flow::decide()), and
//!    commit the decision with its outbox, its dedup key and what it owes: a
//!    compare-and-swap on the version, under the service lease (`commit.rs`);
//! 3. run the owed effects in order, each right after a fencing check (the stored
//!    version must still be the one committed, the lease still ours, no rollback waiting
//!    for it); an effect's result is decided on the committed state and committed with
//!    the next version, and what is still owed with it (`effects.rs`);
//! 4. record the obligation as discharged and give the lease up in one write; then
//!    publish the outbox (entries are claimed first, so two workers never publish one
//!    entry; `outbox.rs`).
//!
//! A duplicate input is never decided twice, but it re-drives what its first delivery
//! committed; a redelivered message therefore restores a rollback whose worker died.

mod commit;
mod effects;
mod lease;
mod observe;
mod outbox;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::fleet::{Fleet, Service};
use crate::flow::{self, Decision, EventKind, IgnoreCode, Input, InputKind, Outcome, Timestamp};
use crate::ports::{Clock, Owed, PortError, PortResult, Stored, World, patiently};

pub use crate::flow::Decided;
pub use lease::{LEASE_MARGIN, owner_token};

use effects::Drove;
use lease::{Session, Waiting};

/// Told of every decision that was committed or left the state unchanged, in order.
pub type Listener = Arc<dyn Fn(&Decided<'_>) + Send + Sync>;

/// Carries inputs through obligation → decide → commit → effects → outbox.
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

/// What carrying out an obligation before deciding came to.
enum Redrive {
    /// Done, or taken over by a newer decision: decide on what is stored now.
    Done,
    /// Another owner holds the lease (or a rollback preempted this run): wait for it.
    Busy,
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

    /// How long a service lease lasts without renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Decides `input` for the service named `service` and carries the decision out,
    /// with every effect result after it; returns the outcome of `input` itself. What an
    /// earlier decision left owed is carried out first (see the module docs).
    ///
    /// # Errors
    /// * [`PortError::Conflict`]: another owner held the service lease for longer than
    ///   this input waits (a rollback-class input waits several leases, preempting the
    ///   holder's forward effects; others a few seconds; the reconciler not at all);
    /// * [`PortError::Retryable`]: a store or AWS failure before the decision was
    ///   committed, or a lease check that kept failing after it (what is owed stays owed,
    ///   so a retry of the message carries it out);
    /// * [`PortError::Permanent`] for a service the fleet does not have.
    pub async fn apply(&self, service: &str, input: Input) -> PortResult<Outcome> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| PortError::Permanent(format!("unknown service {service}")))?;
        let reconciling = matches!(input.kind, InputKind::Reconcile { .. });
        let mut session = Session::new(owner_token(&self.worker_id));
        // Boxed: the run's state machine is large, and a stack is not the place for it.
        let outcome = Box::pin(self.run(svc, input, &mut session)).await;
        if session.holds
            && let Err(e) = patiently(|| self.world.release(&svc.name, &session.owner)).await
        {
            warn!(error = %e, "could not release the lease; it expires by itself");
        }
        // Published once the lease is given up: a slow bus holds no service up. The
        // reconciler publishes what a dead worker left, even when nothing else happens.
        if session.wrote || reconciling {
            self.flush_outbox(&svc.name, &session.owner).await;
        }
        outcome
    }

    async fn run(&self, svc: &Service, input: Input, session: &mut Session) -> PortResult<Outcome> {
        let settings = &svc.settings;
        let preempting = input.is_rollback_class();
        let reconciling = matches!(input.kind, InputKind::Reconcile { .. });
        let keyed = input.is_keyed();
        let mut waiting = Waiting::new(self.patience(&input), preempting);
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
                // Never decided twice; but what its first delivery committed (and a dead
                // worker left undone) is carried out now. A redelivered rollback waits for
                // a lease a dead worker still holds: it is the restore's fastest way back.
                self.unmark(svc, &mut waiting).await;
                if !stored.owed.is_empty()
                    && let Redrive::Busy = self.redrive(svc, stored, session).await?
                    && preempting
                {
                    self.await_lease(svc, session, &mut waiting).await?;
                    continue;
                }
                return Ok(Outcome::Ignored {
                    code: IgnoreCode::Duplicate,
                    reason: format!("input {} was already applied", input.key),
                });
            }
            if !stored.owed.is_empty() && !preempting {
                match self.redrive(svc, stored, session).await? {
                    // Carrying out what a dead or fenced worker left is this pass's work
                    // for the service: the tick it re-sent judges the rest.
                    Redrive::Done if reconciling => return Ok(Outcome::Applied),
                    Redrive::Done => continue,
                    Redrive::Busy if reconciling => return Ok(busy(&svc.name)),
                    Redrive::Busy => {
                        self.await_lease(svc, session, &mut waiting).await?;
                        continue;
                    }
                }
            }
            let input = self.observe(svc, &stored.state, &input).await?;
            let now = self.now();
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
                self.unmark(svc, &mut waiting).await;
                if preempting && !stored.owed.is_empty() {
                    // Nothing to roll back after all: what was owed is carried out.
                    self.redrive(svc, stored, session).await?;
                }
                return Ok(decision.outcome);
            }
            // A rollback-class input decided first: what its decision makes obsolete (a
            // step of the deployment it rolls back) lapses; the rest is still owed.
            let owed = carry_over(&decision, &stored.owed);
            match self
                .commit(
                    svc,
                    &decision,
                    &input,
                    stored.version,
                    &owed,
                    preempting,
                    session,
                    now,
                )
                .await
            {
                Ok(version) => {
                    log_decision(&input, &decision);
                    self.tell(&svc.name, &stored.state, &input, now, &decision);
                    let outcome = decision.outcome.clone();
                    self.carry_out(svc, decision.state, version, owed, session, true)
                        .await?;
                    return Ok(outcome);
                }
                Err(PortError::Conflict) if reconciling => return Ok(busy(&svc.name)),
                // Another task committed first, or holds the lease while it carries out
                // effects: wait for the lease (reading only the lease, not observing
                // again) before deciding again on the new state.
                Err(PortError::Conflict) => self.await_lease(svc, session, &mut waiting).await?,
                // Applied by another worker in between: the reload finds its key.
                Err(PortError::Duplicate) => {}
                Err(e @ PortError::Permanent(_)) => {
                    // Not the throttling or the network of a lossy store: the table, its
                    // permissions or the item itself refuse the write.
                    error!(input = %input.key, error = %e, "the decision could not be committed");
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Carries out what `stored` owes, under the lease taken for it, and records it
    /// discharged (keeping the lease for the decision that follows).
    async fn redrive(
        &self,
        svc: &Service,
        stored: Stored,
        session: &mut Session,
    ) -> PortResult<Redrive> {
        if !self.take_lease(svc, stored.version, session).await? {
            return Ok(Redrive::Busy);
        }
        info!(
            version = stored.version,
            effects = stored.owed.len(),
            "carrying out what an earlier decision committed"
        );
        crate::telemetry::redriven(&svc.name);
        let drove = self
            .carry_out(
                svc,
                stored.state,
                stored.version,
                stored.owed,
                session,
                false,
            )
            .await?;
        Ok(match drove {
            Drove::Completed | Drove::Fenced => Redrive::Done,
            Drove::Preempted => {
                self.give_up_lease(svc, session).await;
                Redrive::Busy
            }
        })
    }

    /// Runs `owed` from `version` on, then records the obligation discharged (with
    /// `release`, giving the lease up in the same write).
    async fn carry_out(
        &self,
        svc: &Service,
        state: flow::ServiceState,
        version: u64,
        owed: Vec<Owed>,
        session: &mut Session,
        release: bool,
    ) -> PortResult<Drove> {
        let (drove, version) = Box::pin(self.drive(svc, state, version, owed, session)).await?;
        if drove == Drove::Completed {
            let owner = session.owner.clone();
            // Not recorded (an error): still owed, and the message is tried again, which
            // carries it out once more (idempotent effects). Fenced out (false): a newer
            // decision owns the service and what it owes.
            let discharged =
                patiently(|| self.world.discharge(&svc.name, version, &owner, release)).await?;
            if discharged && release {
                session.holds = false;
            }
        }
        Ok(drove)
    }

    /// How long `input` waits for a lease another owner holds: a rollback-class input
    /// several leases (preempting the holder's forward effects meanwhile, so it rarely
    /// waits more than one effect), the reconciler not at all (it comes back), others a
    /// few seconds (a slot of the worker is not held waiting: the message comes back
    /// after half a lease, see `Disposition::Busy`).
    fn patience(&self, input: &Input) -> Duration {
        match &input.kind {
            InputKind::Reconcile { .. } => Duration::ZERO,
            _ if input.is_rollback_class() => {
                (self.lease * ROLLBACK_PATIENCE_LEASES).max(Duration::from_secs(10))
            }
            _ => FORWARD_PATIENCE,
        }
    }
}

/// How many leases a rollback-class input waits for a busy service before its message
/// is put back on the queue as a new one (never dead-lettered for contention).
pub const ROLLBACK_PATIENCE_LEASES: u32 = 4;

/// How long any other input waits in-process for a busy service before its message is
/// put back (to come back after half a lease).
pub const FORWARD_PATIENCE: Duration = Duration::from_secs(5);

/// The reconciler's outcome for a service another owner is working on.
fn busy(service: &str) -> Outcome {
    Outcome::Ignored {
        code: IgnoreCode::NothingOverdue,
        reason: format!("{service} is being worked on by another lease holder"),
    }
}

/// What `decision` asks for, each with its deployment's cursor after the decision.
fn owed_by(decision: &Decision) -> Vec<Owed> {
    decision
        .effects
        .iter()
        .map(|effect| Owed {
            cursor: decision
                .state
                .deployment(effect.deployment_id())
                .map_or(0, |d| d.cursor),
            effect: effect.clone(),
        })
        .collect()
}

/// What is owed after `decision`: its own effects first, then those of `owed` that are
/// still [due](effects::is_due) on its state.
fn carry_over(decision: &Decision, owed: &[Owed]) -> Vec<Owed> {
    let mut next = owed_by(decision);
    next.extend(
        owed.iter()
            .filter(|o| effects::is_due(&decision.state, o))
            .cloned(),
    );
    next
}

fn log_decision(input: &Input, decision: &Decision) {
    info!(
        input = %input.key,
        outcome = describe(&decision.outcome),
        effects = decision.effects.len(),
        events = decision.events.len(),
        "decided"
    );
    for event in &decision.events {
        if event.kind == EventKind::Failed {
            // Even the rollback could not complete, or the start was refused: the
            // deployment stops here and production may need a person.
            error!(
                deployment = event.detail.deployment_id.as_deref().unwrap_or(""),
                reason = event.detail.reason.as_deref().unwrap_or(""),
                "deployment failed"
            );
        }
    }
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
