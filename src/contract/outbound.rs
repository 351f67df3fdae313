//! Outbound events as EventBridge sees them.
//!
//! [`Entry`] is what the bus adapter hands to `PutEvents`; [`Entry::as_delivered`] is the
//! envelope a consumer receives, which is what `schemas/outbound/` describes.

use serde_json::{Value, json};

use crate::flow::OutboundEvent;

/// One `PutEvents` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `Source`.
    pub source: String,
    /// `DetailType`.
    pub detail_type: &'static str,
    /// `Detail`, serialized.
    pub detail: String,
    /// `Resources` (the deployment's service name is not an ARN, so this stays empty
    /// unless the adapter adds ARNs).
    pub resources: Vec<String>,
    /// The stable event id consumers dedupe on (`detail.eventId`).
    pub event_id: String,
    /// `Time` (RFC 3339): the decision's `now`.
    pub time: String,
}

impl Entry {
    /// Builds the entry for `event` with the configured `source`.
    #[must_use]
    pub fn new(event: &OutboundEvent, source: &str) -> Entry {
        Entry {
            source: source.to_string(),
            detail_type: event.kind.detail_type(),
            detail: serde_json::to_string(&event.detail).unwrap_or_else(|_| "{}".into()),
            resources: Vec::new(),
            event_id: event.detail.event_id.clone(),
            time: event.detail.at.clone(),
        }
    }

    /// The entry as stored in an outbox (JSON).
    #[must_use]
    pub fn to_json(&self) -> String {
        json!({
            "source": self.source,
            "detailType": self.detail_type,
            "detail": self.detail,
            "resources": self.resources,
            "eventId": self.event_id,
            "time": self.time,
        })
        .to_string()
    }

    /// Reads an entry stored by [`Entry::to_json`]; `None` when the text is not one.
    #[must_use]
    pub fn from_json(text: &str) -> Option<Entry> {
        let v: Value = serde_json::from_str(text).ok()?;
        let kind = crate::flow::EventKind::ALL
            .into_iter()
            .find(|k| Some(k.detail_type()) == v["detailType"].as_str())?;
        Some(Entry {
            source: v["source"].as_str()?.to_string(),
            detail_type: kind.detail_type(),
            detail: v["detail"].as_str()?.to_string(),
            resources: v["resources"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            event_id: v["eventId"].as_str()?.to_string(),
            time: v["time"].as_str()?.to_string(),
        })
    }

    /// The envelope as delivered to a consumer (EventBridge adds `id`, `account` and
    /// `region`; here `id` is the stable event id).
    #[must_use]
    pub fn as_delivered(&self, account: &str, region: &str) -> Value {
        json!({
            "version": "0",
            "id": self.event_id,
            "detail-type": self.detail_type,
            "source": self.source,
            "account": account,
            "time": self.time,
            "region": region,
            "resources": self.resources,
            "detail": serde_json::from_str::<Value>(&self.detail).unwrap_or(Value::Null),
        })
    }
}
