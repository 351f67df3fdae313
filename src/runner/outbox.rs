//! Publishing the outbox (SPEC §5): entries are claimed first (a conditional write, so
//! two workers never publish one entry), published under a deadline short of the claim
//! (so no publish outlives it and lets a second flusher publish the same entries), each
//! batch on its own, and marked done; what failed is tried again a few times, then stays
//! for the next flush.

use std::time::Duration;

use tracing::warn;

use super::Runner;
use crate::contract::Entry;
use crate::ports::{Lease, World, patiently, sending_before};

/// How long an outbox claim keeps other publishers off an entry.
const OUTBOX_CLAIM: Duration = Duration::from_secs(30);

/// Time kept in hand between the last publish of a flush and the end of its claim.
const OUTBOX_MARGIN: Duration = Duration::from_secs(5);

/// Publish attempts of one flush for the entries that failed.
const PUBLISH_ATTEMPTS: u32 = 3;

/// Pause before the n-th retry of a publish: n times this.
const PUBLISH_BACKOFF: Duration = Duration::from_millis(200);

impl<W: World> Runner<W> {
    /// Publishes the outbox entries this call can claim; what fails stays for the next
    /// flush (a claim expires after [`OUTBOX_CLAIM`]).
    pub(super) async fn flush_outbox(&self, service: &str, owner: &str) {
        let now = self.now();
        let claim = Lease {
            owner,
            until: now.plus(OUTBOX_CLAIM),
            now,
        };
        let deadline = tokio::time::Instant::now() + OUTBOX_CLAIM.saturating_sub(OUTBOX_MARGIN);
        let mut pending = match patiently(|| self.world.claim_outbox(service, claim)).await {
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
        let mut attempt = 1;
        loop {
            let entries: Vec<Entry> = pending.iter().map(|c| c.entry.clone()).collect();
            let failed = match sending_before(deadline, self.world.publish(&entries)).await {
                Ok(failed) => failed,
                Err(e) => {
                    warn!(error = %e, "publishing failed; events stay in the outbox");
                    entries.iter().map(|e| e.event_id.clone()).collect()
                }
            };
            let (left, done): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|c| failed.contains(&c.entry.event_id));
            if !done.is_empty() {
                let keys: Vec<String> = done.into_iter().map(|c| c.key).collect();
                if let Err(e) = patiently(|| self.world.outbox_done(service, &keys)).await {
                    warn!(error = %e, "published events stay in the outbox");
                }
            }
            pending = left;
            let pause = PUBLISH_BACKOFF * attempt;
            if pending.is_empty()
                || attempt >= PUBLISH_ATTEMPTS
                || tokio::time::Instant::now() + pause >= deadline
            {
                break;
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
        crate::telemetry::outbox_pending(pending.len());
    }
}
