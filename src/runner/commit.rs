//! Committing a decision (SPEC §4 invariant 2): the state, what it owes, its outbox, its
//! dedup key and the deployment records, in one compare-and-swap under the service lease;
//! a commit whose answer was lost is recognised by reading the store back.

use std::time::Duration;

use super::Runner;
use super::lease::Session;
use crate::contract::Entry;
use crate::fleet::Service;
use crate::flow::{self, Decision, Input, Timestamp};
use crate::ports::{Commit, Lease, Owed, PortError, PortResult, World, patiently};

/// Attempts of a commit whose failure is retryable.
const COMMIT_ATTEMPTS: u32 = 3;

/// Pause before the n-th retry of a commit: n times this.
const COMMIT_BACKOFF: Duration = Duration::from_millis(250);

impl<W: World> Runner<W> {
    /// Commits `decision` (made on `version`) with `owed`, its outbox, dedup key and
    /// records, taking (or renewing) the lease for `session`; `clears_preemption` for the
    /// rollback a preemption mark waited for.
    ///
    /// A commit whose answer is lost may have landed: after a retryable failure the
    /// store is read, and a stored state that is exactly this decision's, at the next
    /// version and under this run's lease, counts as committed; otherwise the commit is
    /// tried again (it is conditional on the version, so it never applies twice).
    ///
    /// # Errors
    /// [`PortError::Conflict`] (the version moved or another owner holds the lease),
    /// [`PortError::Duplicate`] (the input's key was recorded meanwhile), or the store's
    /// last failure.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &self,
        svc: &Service,
        decision: &Decision,
        input: &Input,
        version: u64,
        owed: &[Owed],
        clears_preemption: bool,
        session: &mut Session,
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
        let until = now.plus(self.lease);
        let owner = session.owner.clone();
        let commit = Commit {
            state: &decision.state,
            expected_version: version,
            outbox: &entries,
            dedup_key: input.is_keyed().then_some(input.key.as_str()),
            deployments: &deployments,
            lease: Lease {
                owner: &owner,
                until,
                now,
            },
            owed,
            clears_preemption,
        };
        let mut attempt = 1;
        let committed = loop {
            match self.world.commit(&svc.name, commit).await {
                Err(PortError::Retryable(why)) => {
                    let landed = patiently(|| self.world.load(&svc.name, flow::Color::Blue))
                        .await
                        .is_ok_and(|s| s.version == version + 1 && s.state == decision.state);
                    let ours = patiently(|| self.world.fence(&svc.name))
                        .await
                        .is_ok_and(|f| {
                            f.version == version + 1 && f.owner.as_deref() == Some(&owner)
                        });
                    if landed && ours {
                        break Ok(version + 1);
                    }
                    if attempt >= COMMIT_ATTEMPTS {
                        break Err(PortError::Retryable(why));
                    }
                    tokio::time::sleep(COMMIT_BACKOFF * attempt).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        if committed.is_ok() {
            session.holding(until);
            session.wrote = true;
        }
        committed
    }
}
