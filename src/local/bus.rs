//! The embedded event bus: every outbound event appended as one JSON line (the envelope
//! EventBridge would deliver) to `events.jsonl`, and handed to whoever watches the console.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::contract::Entry;
use crate::ports::{PortError, PortResult};

/// One line for a person watching: time, detail type, deployment, phase, weights, reason.
#[must_use]
pub fn console_line(entry: &Entry) -> String {
    let d: serde_json::Value = serde_json::from_str(&entry.detail).unwrap_or_default();
    let text = |key: &str| d[key].as_str().unwrap_or("-").to_string();
    let weights = match (
        d["weights"]["blue"].as_u64(),
        d["weights"]["green"].as_u64(),
    ) {
        (Some(b), Some(g)) => format!("blue {b}% green {g}%"),
        _ => "-".into(),
    };
    format!(
        "{} {:<28} {:<12} {:<16} {:<22} {}",
        entry.time,
        entry.detail_type,
        text("deploymentId"),
        text("phase"),
        weights,
        d["reason"].as_str().unwrap_or("")
    )
}

/// The JSON Lines bus.
#[derive(Debug)]
pub struct JsonlBus {
    file: Mutex<std::fs::File>,
    watchers: broadcast::Sender<Entry>,
    published: Mutex<BTreeMap<String, u64>>,
}

impl JsonlBus {
    /// Appends to `path` (created when missing).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<JsonlBus> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(JsonlBus {
            file: Mutex::new(file),
            watchers: broadcast::channel(1024).0,
            published: Mutex::new(BTreeMap::new()),
        })
    }

    /// A stream of the events published from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.watchers.subscribe()
    }

    /// Events published so far, by detail type.
    #[must_use]
    pub fn published(&self) -> BTreeMap<String, u64> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Appends `entries`; all or none are written (one write, then one flush).
    ///
    /// # Errors
    /// `Retryable` when the file cannot be written.
    pub fn append(&self, entries: &[Entry]) -> PortResult<()> {
        let mut lines = String::new();
        for entry in entries {
            lines.push_str(&entry.as_delivered("000000000000", "local").to_string());
            lines.push('\n');
        }
        {
            let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
            file.write_all(lines.as_bytes())
                .and_then(|()| file.flush())
                .map_err(|e| {
                    PortError::Retryable(format!("cannot append to the event log: {e}"))
                })?;
        }
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in entries {
            *published.entry(entry.detail_type.to_string()).or_default() += 1;
            // Nobody watching is fine: the file is the record.
            let _ = self.watchers.send(entry.clone());
        }
        Ok(())
    }
}
