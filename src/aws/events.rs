//! The bus: `PutEvents` in batches of 10, reporting per-entry failures so that failed
//! events stay in the outbox. Each batch stands alone: one that fails marks its own
//! entries failed and the next batches are still sent, so a retry re-sends only what
//! failed. Consumers dedupe on `detail.eventId`.

use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::{Aws, port_error};
use crate::contract::Entry;
use crate::ports::{Bus, PortResult};

impl Bus for Aws {
    async fn publish(&self, entries: &[Entry]) -> PortResult<Vec<String>> {
        let mut failed = Vec::new();
        for batch in entries.chunks(10) {
            let request: Vec<PutEventsRequestEntry> = batch
                .iter()
                .map(|e| {
                    let time = DateTime::from_str(
                        &e.time,
                        aws_sdk_eventbridge::primitives::DateTimeFormat::DateTimeWithOffset,
                    )
                    .ok();
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(&e.source)
                        .detail_type(e.detail_type)
                        .detail(&e.detail)
                        .set_resources(Some(e.resources.clone()))
                        .set_time(time)
                        .build()
                })
                .collect();
            let out = match self
                .events
                .put_events()
                .set_entries(Some(request))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let e = port_error("PutEvents", e);
                    tracing::warn!(error = %e, entries = batch.len(), "a batch of events was not published");
                    failed.extend(batch.iter().map(|entry| entry.event_id.clone()));
                    continue;
                }
            };
            if out.failed_entry_count() > 0 {
                for (entry, result) in batch.iter().zip(out.entries()) {
                    if result.error_code().is_some() {
                        failed.push(entry.event_id.clone());
                    }
                }
            }
        }
        Ok(failed)
    }
}
