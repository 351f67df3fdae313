//! What the worker needs from the world (SPEC §2), as traits the adapters implement:
//! inbox, store, traffic, platform, bus, alarms, checks, registry — and the clock.
//!
//! Errors are typed by what the caller should do ([`PortError`]): retry later, give up on
//! the message, reload after a conflict, or stop because a newer decision fenced us out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::contract::Entry;
use crate::flow::{
    Color, Deployment, Effect, ProductionRules, ServiceState, TargetHealth, Timestamp, Weights,
};

/// Why a port call failed, grouped by the caller's reaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Worth retrying (throttling, network, 5xx). The message goes back to the queue.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Will not succeed by retrying (missing resource, access denied, bad shape).
    #[error("permanent: {0}")]
    Permanent(String),
    /// The conditional write lost: someone committed first. Reload and decide again.
    #[error("conflict: the stored version changed")]
    Conflict,
    /// A newer decision was committed since ours: our effects must not run.
    #[error("fenced: a newer decision superseded this one")]
    Fenced,
    /// The input's dedup key was recorded in between: another worker applied it. Nothing
    /// was written; the input is a duplicate.
    #[error("duplicate: the input was applied in the meantime")]
    Duplicate,
}

/// Result of a port call.
pub type PortResult<T> = Result<T, PortError>;

/// Attempts of a call that is safe to repeat, when its failure is retryable.
const CALL_ATTEMPTS: u32 = 4;

/// Pause before the n-th repeat of a call: n times this.
const CALL_BACKOFF: Duration = Duration::from_millis(100);

/// Runs `call`, repeating it a few times with a short back-off while it fails with
/// [`PortError::Retryable`] (throttling, a reset, a lost answer). Only for calls that are
/// safe to repeat: reads, and writes that are idempotent or conditional.
///
/// Inside an effect with a send deadline ([`sending_before`]) a repeat that would start
/// after the deadline is not tried: it could not be sent.
///
/// # Errors
/// The last failure, or the first one that is not retryable.
pub async fn patiently<T, F, Fut>(mut call: F) -> PortResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = PortResult<T>>,
{
    let mut attempt = 1;
    loop {
        let pause = CALL_BACKOFF * attempt;
        let too_late = || send_deadline().is_some_and(|d| tokio::time::Instant::now() + pause >= d);
        match call().await {
            Err(PortError::Retryable(_)) if attempt < CALL_ATTEMPTS && !too_late() => {
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Everything the worker talks to, in one object (the AWS or the embedded adapters).
pub trait World:
    Inbox + Store + Traffic + Platform + Bus + Alarms + Checks + Registry + 'static
{
}
impl<T: Inbox + Store + Traffic + Platform + Bus + Alarms + Checks + Registry + 'static> World
    for T
{
}

/// Where time comes from: the system clock in production, a test's own in tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

tokio::task_local! {
    /// The moment after which no request of the effect running on this task may leave.
    static SEND_BEFORE: tokio::time::Instant;
}

/// Runs `effect` so that adapters refuse to send any request of it after `deadline`
/// ([`send_deadline`]): the check sits right before the bytes leave, where a timeout
/// around the whole effect cannot reach (a task woken late polls its call before its
/// timer).
pub async fn sending_before<F: Future>(deadline: tokio::time::Instant, effect: F) -> F::Output {
    SEND_BEFORE.scope(deadline, effect).await
}

/// The send deadline of the effect running on this task, if any.
#[must_use]
pub fn send_deadline() -> Option<tokio::time::Instant> {
    SEND_BEFORE.try_with(|d| *d).ok()
}

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    #[allow(clippy::disallowed_methods)] // the one place the wall clock is read
    Arc::new(|| {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_millis(crate::flow::model::duration_ms(since))
    })
}

/// One message taken from the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Queue message id.
    pub message_id: String,
    /// Handle for delete / visibility calls.
    pub receipt: String,
    /// Body text.
    pub body: String,
    /// How many times it has been received (1 on first delivery).
    pub receive_count: u32,
    /// When the queue accepted it (SQS `SentTimestamp`), if the queue says: an `Event
    /// Rejected` for the message is dated by it, so that every receipt publishes the same
    /// event.
    pub sent_at: Option<Timestamp>,
}

/// The queue.
pub trait Inbox: Send + Sync {
    /// Long-polls for up to `max` messages, waiting at most `wait`; each received message
    /// stays hidden from other receivers for `visibility` (the worker's heartbeat extends
    /// it once work on it starts), so that a receive whose answer is lost delays its
    /// messages by that much only.
    fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> impl Future<Output = PortResult<Vec<Received>>> + Send;
    /// How many receipts a message gets before the queue dead-letters it (the redrive
    /// policy's `maxReceiveCount`), if the queue has one.
    fn receive_limit(&self) -> impl Future<Output = PortResult<Option<u32>>> + Send;
    /// Deletes a handled message.
    fn delete(&self, receipt: &str) -> impl Future<Output = PortResult<()>> + Send;
    /// Sets the message's visibility timeout (0 = visible again now).
    fn set_visibility(
        &self,
        receipt: &str,
        timeout: Duration,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Sends `body`, delivered after `delay` (the adapter caps it at the queue's maximum;
    /// ticks carry their due time and are re-delayed when they arrive early).
    fn send(&self, body: String, delay: Duration) -> impl Future<Output = PortResult<()>> + Send;
}

/// An effect a committed decision obliges the world to carry out (SPEC §4 invariant 12),
/// with the cursor its deployment had in the decision that asked for it: its result or
/// failure belongs to that step, and it lapses once the deployment moved past it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    /// The effect (idempotent by construction).
    pub effect: Effect,
    /// The deployment's cursor when the effect was decided.
    pub cursor: u32,
}

/// A service's state as stored, with its version for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The state.
    pub state: ServiceState,
    /// Version; 0 when nothing was stored yet.
    pub version: u64,
    /// What the decision at `version` (with what earlier ones left) committed the world to
    /// and nobody has yet recorded as carried out: empty once a run
    /// [discharged](Store::discharge) it. Whoever takes the lease carries it out first.
    pub owed: Vec<Owed>,
}

/// One decision to commit atomically.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The new state.
    pub state: &'a ServiceState,
    /// The version the decision was made on; the write fails with `Conflict` otherwise.
    pub expected_version: u64,
    /// Outbound events written in the same transaction (the outbox).
    pub outbox: &'a [Entry],
    /// The input's dedup key, remembered with a TTL beyond the state's own window.
    pub dedup_key: Option<&'a str>,
    /// Deployment records to write alongside (history, `status`).
    pub deployments: &'a [&'a Deployment],
    /// The service lease this commit takes or renews. The write fails with `Conflict`
    /// while another owner holds an unexpired lease.
    pub lease: Lease<'a>,
    /// What this decision (and what earlier ones left undone) obliges the world to do, in
    /// order: stored with the state, outstanding until [`Store::discharge`].
    pub owed: &'a [Owed],
    /// Whether this commit is the rollback a preemption mark was set for: it clears the
    /// mark (any other commit leaves it).
    pub clears_preemption: bool,
}

/// A lease: who holds it and until when (a service's, an outbox claim, the reconciler's).
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    /// The worker taking the lease.
    pub owner: &'a str,
    /// Expiry.
    pub until: Timestamp,
    /// The caller's clock, to judge whether another owner's lease has expired.
    pub now: Timestamp,
}

/// An outbox entry claimed for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Where the store keeps the entry: what [`Store::outbox_done`] removes it by.
    pub key: String,
    /// The entry.
    pub entry: Entry,
}

/// What the effect runner re-checks right before every effect: the stored version is the
/// fencing token, and the lease must still be ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Current version.
    pub version: u64,
    /// Current lease holder.
    pub owner: Option<String>,
    /// Lease expiry.
    pub until: Timestamp,
    /// Set while a rollback waits for the lease ([`Store::preempt`]): until then the
    /// holder stops its forward effects at the next effect boundary.
    pub preempt_until: Option<Timestamp>,
}

/// The deployment store.
pub trait Store: Send + Sync {
    /// Loads `service`'s state (a fresh one, live on `initial`, when none is stored).
    fn load(
        &self,
        service: &str,
        initial: Color,
    ) -> impl Future<Output = PortResult<Stored>> + Send;
    /// Commits a decision; returns the new version.
    ///
    /// Fails with [`PortError::Conflict`] when the version moved or another owner holds
    /// the lease, with [`PortError::Duplicate`] when the dedup key was already recorded,
    /// and with [`PortError::Retryable`] when the store could not judge (a transaction
    /// conflict, throttling).
    fn commit(
        &self,
        service: &str,
        commit: Commit<'_>,
    ) -> impl Future<Output = PortResult<u64>> + Send;
    /// Whether `key` was applied to `service` within the dedup TTL.
    fn seen(&self, service: &str, key: &str) -> impl Future<Output = PortResult<bool>> + Send;
    /// Version and lease, read strongly consistently: the fencing check before effects.
    fn fence(&self, service: &str) -> impl Future<Output = PortResult<Fence>> + Send;
    /// Gives the lease up if `owner` holds it.
    fn release(&self, service: &str, owner: &str) -> impl Future<Output = PortResult<()>> + Send;
    /// Extends `lease.owner`'s lease to `lease.until` while the state is still at
    /// `version` under that owner: false when a newer decision or another owner came
    /// in between (the caller is fenced out). A run whose effects take long keeps its
    /// lease this way instead of writing after it lapsed.
    fn extend(
        &self,
        service: &str,
        version: u64,
        lease: Lease<'_>,
    ) -> impl Future<Output = PortResult<bool>> + Send;
    /// Takes the lease at `version` to carry out what is owed there: true when
    /// `lease.owner` holds it now (it was free, expired or already theirs), false when
    /// another owner holds it or the version moved.
    fn take(
        &self,
        service: &str,
        version: u64,
        lease: Lease<'_>,
    ) -> impl Future<Output = PortResult<bool>> + Send;
    /// Records that everything owed at `version` has been carried out (the obligation is
    /// discharged), while the state is still at `version` under `owner`'s lease; with
    /// `release`, gives the lease up in the same write. False when fenced out.
    fn discharge(
        &self,
        service: &str,
        version: u64,
        owner: &str,
        release: bool,
    ) -> impl Future<Output = PortResult<bool>> + Send;
    /// Marks that a rollback waits for the service's lease until `until` (`None` clears
    /// the mark): the holder stops its forward effects at the next effect boundary. Needs
    /// no lease; a commit that [clears](Commit::clears_preemption) it ends it.
    fn preempt(
        &self,
        service: &str,
        until: Option<Timestamp>,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Remembers `key` for `service` as [`Store::seen`] reads it, without a decision (a
    /// message-level `Event Rejected` that was published).
    fn remember(
        &self,
        service: &str,
        key: &str,
        now: Timestamp,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Claims the outbox entries not yet published, oldest first: those nobody claimed
    /// and those whose claim expired. A claimed entry is handed to no other caller until
    /// `claim.until`, so two workers never publish one entry; only a publisher that dies
    /// between publishing and [`Store::outbox_done`] leaves an entry to be published again.
    /// At most [`OUTBOX_CLAIM_MAX`] entries per call, however long the backlog.
    fn claim_outbox(
        &self,
        service: &str,
        claim: Lease<'_>,
    ) -> impl Future<Output = PortResult<Vec<Claimed>>> + Send;
    /// Removes published entries from the outbox, by the keys their claim gave.
    fn outbox_done(
        &self,
        service: &str,
        keys: &[String],
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Takes or renews the named lease (not a service's): `Some(mark)` when `lease.owner`
    /// holds it until `lease.until`, with the mark its holders last left on it
    /// ([`Store::mark_lease`], 0 at first); `None` while another owner's lease is unexpired.
    fn try_lease(
        &self,
        name: &str,
        lease: Lease<'_>,
    ) -> impl Future<Output = PortResult<Option<u64>>> + Send;
    /// Leaves `mark` on the named lease while `owner` holds it (where the reconciler's
    /// pass stopped, for the next holder to go on from).
    fn mark_lease(
        &self,
        name: &str,
        owner: &str,
        mark: u64,
    ) -> impl Future<Output = PortResult<()>> + Send;
}

/// Most outbox entries one claim hands out (the rest wait for the next flush).
pub const OUTBOX_CLAIM_MAX: usize = 100;

/// The load balancer. Services are named; each adapter knows where a service's rules
/// are (ALB listener rules, the embedded proxy).
pub trait Traffic: Send + Sync {
    /// Current weights of each of the service's production rules.
    fn production(&self, service: &str)
    -> impl Future<Output = PortResult<ProductionRules>> + Send;
    /// Writes production weights to every production rule, preserving everything else on
    /// each, then reads them back and returns what was read; a rule that reads back
    /// anything else is an error.
    fn set_production(
        &self,
        service: &str,
        weights: Weights,
    ) -> impl Future<Output = PortResult<Weights>> + Send;
    /// Same for the test listener rule (a no-op without one).
    fn set_test(
        &self,
        service: &str,
        weights: Weights,
    ) -> impl Future<Output = PortResult<()>> + Send;
}

/// Where the colours run (ECS services, local processes), by service name.
pub trait Platform: Send + Sync {
    /// Registers the deployment's task definition: `template`'s current one with only the
    /// configured container's image replaced. Finds an earlier registration of the same
    /// deployment instead of registering twice. Returns its ARN.
    fn register_revision(
        &self,
        service: &str,
        deployment_id: &str,
        template: Color,
        image: &str,
    ) -> impl Future<Output = PortResult<String>> + Send;
    /// Points `color`'s service at `task_definition` with `match_count_of`'s desired count.
    fn update_service(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        match_count_of: Color,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Points `color`'s service at `task_definition` with `desired` tasks: the live
    /// colour put back after capacity drift.
    fn restore_capacity(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        desired: u32,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Scales `color`'s service up to `match_count_of`'s desired count (at least one),
    /// keeping what it runs; never scales down.
    fn scale_up(
        &self,
        service: &str,
        color: Color,
        match_count_of: Color,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Scales `color`'s service to zero.
    fn scale_to_zero(
        &self,
        service: &str,
        color: Color,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Rollout state and target health of `color`.
    fn health(
        &self,
        service: &str,
        color: Color,
    ) -> impl Future<Output = PortResult<TargetHealth>> + Send;
}

/// EventBridge.
pub trait Bus: Send + Sync {
    /// Publishes entries; returns the event ids that failed (to stay in the outbox).
    fn publish(&self, entries: &[Entry]) -> impl Future<Output = PortResult<Vec<String>>> + Send;
}

/// CloudWatch alarms.
pub trait Alarms: Send + Sync {
    /// Which of `names` are in ALARM now.
    fn firing(&self, names: &[String]) -> impl Future<Output = PortResult<Vec<String>>> + Send;
}

/// The image registry: tags to digests.
pub trait Registry: Send + Sync {
    /// The digest (`sha256:…`) that `tag` of `repository` names now.
    ///
    /// # Errors
    /// [`PortError::Permanent`] when the repository or tag does not exist (or cannot be
    /// read), with a reason for the `Event Rejected`; [`PortError::Retryable`] for
    /// throttling and the like.
    fn resolve(
        &self,
        repository: &str,
        tag: &str,
    ) -> impl Future<Output = PortResult<String>> + Send;
}

/// HTTP validation checks run against the test listener.
pub trait Checks: Send + Sync {
    /// GETs `url` and reports the status code (or the error as text).
    fn get(&self, url: &str) -> impl Future<Output = Result<u16, String>> + Send;
}
