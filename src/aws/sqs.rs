//! The inbox: an SQS standard queue with a redrive policy to a dead-letter queue.
//!
//! Long polls in batches with a short visibility of their own (a receive whose answer is
//! lost hides its messages for seconds, not for the queue's timeout; the worker's
//! heartbeat extends it once work starts), asks for `ApproximateReceiveCount`, reads the
//! redrive policy's `maxReceiveCount`, and caps delays at the queue maximum of 15 minutes: a tick due later arrives early and is re-delayed by the
//! worker (the core refuses early ticks), which chains long waits.

use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use super::{Aws, repeat};
use crate::ports::{Inbox, PortResult, Received};

/// SQS's maximum `DelaySeconds`.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

impl Inbox for Aws {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<Received>> {
        // At least a second: 0 would make the messages visible again at once.
        let hidden = i32::try_from(visibility.as_secs().clamp(1, 43_200)).unwrap_or(30);
        let out = repeat("ReceiveMessage", || {
            self.sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
                .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
                .visibility_timeout(hidden)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
        })
        .await?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Received {
                message_id: m.message_id().unwrap_or_default().to_string(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                sent_at: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse().ok())
                    .map(crate::flow::Timestamp::from_millis),
            })
            .collect())
    }

    async fn receive_limit(&self) -> PortResult<Option<u32>> {
        let out = repeat("GetQueueAttributes", || {
            self.sqs
                .get_queue_attributes()
                .queue_url(&self.queue_url)
                .attribute_names(QueueAttributeName::RedrivePolicy)
                .send()
        })
        .await?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .and_then(|policy| serde_json::from_str::<serde_json::Value>(policy).ok())
            .and_then(|policy| match &policy["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .and_then(|n| u32::try_from(n).ok()))
    }

    async fn delete(&self, receipt: &str) -> PortResult<()> {
        repeat("DeleteMessage", || {
            self.sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(receipt)
                .send()
        })
        .await?;
        Ok(())
    }

    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()> {
        repeat("ChangeMessageVisibility", || {
            self.sqs
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(i32::try_from(timeout.as_secs().min(43_200)).unwrap_or(0))
                .send()
        })
        .await?;
        Ok(())
    }

    async fn send(&self, body: String, delay: Duration) -> PortResult<()> {
        // Round up so a tick never arrives before it is due because of truncation.
        let secs = delay
            .as_millis()
            .div_ceil(1000)
            .min(u128::from(MAX_DELAY.as_secs()));
        repeat("SendMessage", || {
            self.sqs
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body.clone())
                .delay_seconds(i32::try_from(secs).unwrap_or(0))
                .send()
        })
        .await?;
        Ok(())
    }
}
