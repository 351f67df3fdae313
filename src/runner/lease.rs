//! The service lease and the fencing check (SPEC §4 invariants 3 and 5).
//!
//! * A run owns the lease under a token no other run of any worker can mint
//!   ([`owner_token`]: the worker's id, a random per-process nonce, a counter).
//! * It takes the lease by committing a decision, or, to carry out what an earlier one
//!   owes, with [`Store::take`](crate::ports::Store::take).
//! * Before every effect it re-reads the fence ([`Runner::hold`]): the stored version
//!   must still be the one it committed, the lease still its own, and no rollback may be
//!   waiting for the lease (unless the effect is itself part of a rollback). The lease
//!   is extended while at least half of it remains short of running out. A failing read
//!   is retried while the lease leaves time for it, and is never read as "fenced" nor
//!   blamed on the effect.
//! * An input that finds the lease held waits for it in-process (the message's
//!   visibility heartbeat runs meanwhile); a rollback-class input marks the service
//!   preempted first, so that the holder stops its forward effects at the next effect
//!   boundary and gives the lease up ([`Runner::await_lease`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use super::Runner;
use crate::fleet::Service;
use crate::flow::Timestamp;
use crate::ports::{Fence, Lease, PortError, PortResult, World, patiently};

/// Time kept in hand between an effect's last possible AWS call and the end of the lease
/// it runs under: an effect still running then is cut off and tried again under a fresh
/// extension, so that no write is sent under a lease that lapsed.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Distinguishes the lease tokens of one process's runs.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Random per process: two tasks with the same worker id (a fixed `--id`, pid 1 in every
/// container) never mint the same token.
static NONCE: OnceLock<String> = OnceLock::new();

fn nonce() -> &'static str {
    NONCE.get_or_init(|| {
        let mut bytes = [0u8; 8];
        match getrandom::fill(&mut bytes) {
            Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            // No entropy source: std's randomly keyed hasher still differs per process.
            Err(_) => {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                format!("{:016x}", h.finish())
            }
        }
    })
}

/// A fresh lease owner token for one run of `worker_id`:
/// `<worker_id>#<nonce>.<counter>`, unique across workers, processes and restarts.
#[must_use]
pub fn owner_token(worker_id: &str) -> String {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    format!("{worker_id}#{}.{token}", nonce())
}

/// One run's hold on a service lease.
pub(super) struct Session {
    /// The run's owner token.
    pub owner: String,
    /// Whether the run may hold the lease now (it committed or took it, and has not
    /// given it up): it is released at the end.
    pub holds: bool,
    /// Until when the lease holds, as this run last wrote it.
    pub until: Timestamp,
    /// Whether the run committed anything: the outbox is flushed afterwards.
    pub wrote: bool,
}

impl Session {
    pub fn new(owner: String) -> Session {
        Session {
            owner,
            holds: false,
            until: Timestamp::from_millis(0),
            wrote: false,
        }
    }

    /// The lease is this run's until `until`.
    pub fn holding(&mut self, until: Timestamp) {
        self.holds = true;
        self.until = until;
    }
}

/// How an input waits for a lease someone else holds.
pub(super) struct Waiting {
    started: tokio::time::Instant,
    patience: Duration,
    preempting: bool,
    marked_at: Option<Timestamp>,
    /// Times the lease was found free and the caller sent back to decide again.
    free: u32,
}

impl Waiting {
    pub fn new(patience: Duration, preempting: bool) -> Waiting {
        Waiting {
            started: tokio::time::Instant::now(),
            patience,
            preempting,
            marked_at: None,
            free: 0,
        }
    }
}

/// What the fencing check before an effect found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holding {
    /// The lease is this run's until then.
    Ours(Timestamp),
    /// A newer decision or another lease holder: stop.
    Fenced,
    /// A rollback waits for the lease: stop forward effects.
    Preempted,
}

impl<W: World> Runner<W> {
    /// The check made right before every effect; `rollback` says whether the effect is
    /// part of a rollback (a preemption does not stop those). Extends the lease while at
    /// least half of it remains short of running out, conditionally on the version and
    /// the owner, so that no write is sent under a lease that lapsed.
    ///
    /// # Errors
    /// The store kept failing for as long as the lease left time to ask.
    pub(super) async fn hold(
        &self,
        svc: &Service,
        version: u64,
        session: &mut Session,
        rollback: bool,
    ) -> PortResult<Holding> {
        let fence: Fence = self
            .checked(session, || self.world.fence(&svc.name))
            .await?;
        let now = self.now();
        if fence.version != version || fence.owner.as_deref() != Some(session.owner.as_str()) {
            return Ok(Holding::Fenced);
        }
        if !rollback && fence.preempt_until.is_some_and(|t| t >= now) {
            return Ok(Holding::Preempted);
        }
        if fence.until.since(now) < self.lease.as_millis() as u64 / 2 {
            let owner = session.owner.clone();
            let until = now.plus(self.lease);
            let lease = Lease {
                owner: &owner,
                until,
                now,
            };
            let extended = self
                .checked(session, || self.world.extend(&svc.name, version, lease))
                .await?;
            if !extended {
                return Ok(Holding::Fenced);
            }
            session.holding(until);
            return Ok(Holding::Ours(until));
        }
        session.holding(fence.until);
        Ok(Holding::Ours(fence.until))
    }

    /// A store call of the fencing check, repeated while it fails retryably and the
    /// lease this run holds leaves time for another try.
    async fn checked<T, F, Fut>(&self, session: &Session, mut call: F) -> PortResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = PortResult<T>>,
    {
        let mut pause = Duration::from_millis(100);
        loop {
            match patiently(&mut call).await {
                Err(PortError::Retryable(why)) => {
                    let next = self.now().plus(pause + LEASE_MARGIN);
                    if next >= session.until {
                        return Err(PortError::Retryable(format!(
                            "the service lease could not be checked: {why}"
                        )));
                    }
                    warn!(error = %why, "lease check failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// Takes the lease at `version` to carry out what is owed there; false while another
    /// owner holds it (or the version moved).
    pub(super) async fn take_lease(
        &self,
        svc: &Service,
        version: u64,
        session: &mut Session,
    ) -> PortResult<bool> {
        let now = self.now();
        let until = now.plus(self.lease);
        let owner = session.owner.clone();
        let lease = Lease {
            owner: &owner,
            until,
            now,
        };
        let taken = patiently(|| self.world.take(&svc.name, version, lease)).await?;
        if taken {
            session.holding(until);
        }
        Ok(taken)
    }

    /// Gives the lease up (a preempted run, so that the rollback waiting for it goes on).
    pub(super) async fn give_up_lease(&self, svc: &Service, session: &mut Session) {
        match patiently(|| self.world.release(&svc.name, &session.owner)).await {
            Ok(()) => session.holds = false,
            Err(e) => warn!(error = %e, "could not release the lease; it expires by itself"),
        }
    }

    /// Waits, with a growing pause, until no other owner holds `svc`'s lease (and, for an
    /// input that is not itself a rollback, no rollback waits for it); gives up with
    /// [`PortError::Conflict`] once the input's patience is spent. A rollback-class input
    /// marks the service preempted meanwhile (renewed every half lease: a mark lasts
    /// one), so the holder stops its forward effects at its next effect boundary.
    pub(super) async fn await_lease(
        &self,
        svc: &Service,
        session: &Session,
        waiting: &mut Waiting,
    ) -> PortResult<()> {
        let mut pause = Duration::from_millis(10);
        loop {
            if waiting.started.elapsed() >= waiting.patience {
                return Err(PortError::Conflict);
            }
            let fence = patiently(|| self.world.fence(&svc.name)).await?;
            let now = self.now();
            // The stores count a lease as held up to and including its last millisecond.
            let held =
                fence.owner.as_deref().is_some_and(|o| o != session.owner) && fence.until >= now;
            let rollback_waits =
                !waiting.preempting && fence.preempt_until.is_some_and(|t| t >= now);
            if !held && !rollback_waits {
                // A lost race on the version: decide again at once, but never spin. A
                // caller sent back here with the lease still free (say, a stale
                // preemption mark that only its expiry clears) waits longer each time.
                let shift = waiting.free.min(8);
                waiting.free += 1;
                tokio::time::sleep(Duration::from_millis(1 << shift)).await;
                return Ok(());
            }
            let remark = waiting
                .marked_at
                .is_none_or(|at| now.since(at) >= self.lease.as_millis() as u64 / 2);
            if waiting.preempting && held && remark {
                let until = now.plus(self.lease);
                patiently(|| self.world.preempt(&svc.name, Some(until))).await?;
                if waiting.marked_at.is_none() {
                    info!(holder = ?fence.owner, "a rollback waits for the service lease: preempting the holder's forward effects");
                }
                waiting.marked_at = Some(now);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Clears the preemption mark this input left, if it left one: before it carries out
    /// forward effects itself, and when it turns out to roll nothing back.
    pub(super) async fn unmark(&self, svc: &Service, waiting: &mut Waiting) {
        if waiting.marked_at.take().is_none() {
            return;
        }
        if let Err(e) = patiently(|| self.world.preempt(&svc.name, None)).await {
            warn!(error = %e, "could not clear the preemption mark; it expires by itself");
        }
    }
}
