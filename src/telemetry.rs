//! Metrics, through the [`metrics`] facade: one set of instrumentation, two outputs.
//! The AWS worker installs a CloudWatch Embedded Metric Format recorder
//! ([`init_emf`]: JSON lines on stdout, flushed every few seconds, no API calls); the
//! embedded mode a Prometheus recorder ([`init_prometheus`], rendered on `/metrics`).
//! Without a recorder every call here is a no-op.
//!
//! | metric | kind | dimensions | what |
//! |---|---|---|---|
//! | `DeploymentsStarted`, `DeploymentsSucceeded`, `DeploymentsRolledBack` | counter | `Service` | deployments by outcome |
//! | `DeploymentsFailed` | counter | `Service`, and none | deployments whose rollback could not complete, or refused at their start |
//! | `Weight` | samples | `Service`, `Color` | production weight of each colour: after a confirmed write, and from the stored state on every reconciler pass |
//! | `GreenWeight` | samples | `Service` | the deploying (new) colour's weight after each confirmed shift |
//! | `Phase` | samples | `Service` | index of the phase in [`PHASES`]: on each transition, and from the stored state on every pass |
//! | `RollbackLatency` | histogram (ms) | `Service` | a rollback alarm's input → weights restored and confirmed |
//! | `StepLag` | histogram (ms) | `Service`, and none | a tick's due time → decided |
//! | `MessagesProcessed`, `MessagesIgnored`, `MessagesRejected`, `MessagesRetried` | counter | none | queue messages by disposition |
//! | `OutboxPending` | gauge | none | outbox entries left unpublished by this worker's last flush |
//! | `WeightDrift` | counter | `Service`, and none | weights found that the worker did not write |
//! | `CapacityDrift` | counter | `Service`, and none | live colour on another revision, under `min_tasks` or without a healthy target |
//! | `ObligationsRedriven` | counter | `Service` | effects a dead or fenced worker left owed, carried out by another run |
//! | `ReconcilePass` | histogram (ms) | none | how long one reconciler pass took |
//! | `ReconcileSkipped` | counter | none | services a pass did not reach within its time (the next pass goes on from there) |

use std::io::Write;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::flow::{Color, Decided, EventKind, Phase};

/// The phases in order; the `Phase` gauge is an index into it (the dashboard labels it).
pub const PHASES: [Phase; 12] = [
    Phase::Requested,
    Phase::Provisioning,
    Phase::WaitingForGreen,
    Phase::Testing,
    Phase::AwaitingApproval,
    Phase::Shifting,
    Phase::Baking,
    Phase::Finalizing,
    Phase::Succeeded,
    Phase::RollingBack,
    Phase::RolledBack,
    Phase::Failed,
];

/// The EMF namespace unless `BLUEGREEN_METRICS_NAMESPACE` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "Bluegreen";

/// How often the EMF recorder writes its lines.
pub const EMF_FLUSH: Duration = Duration::from_secs(10);

/// What became of a queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Applied to at least one service.
    Processed,
    /// Not for us, a duplicate, or stale: deleted with a reason.
    Ignored,
    /// Refused: dead-lettered, or refused by the decision with an `Event Rejected`.
    Rejected,
    /// Put back to be tried again.
    Retried,
}

/// Counts one message by what became of it.
pub fn message(what: Message) {
    let name = match what {
        Message::Processed => "MessagesProcessed",
        Message::Ignored => "MessagesIgnored",
        Message::Rejected => "MessagesRejected",
        Message::Retried => "MessagesRetried",
    };
    counter!(name).increment(1);
}

/// Entries this worker's last outbox flush left unpublished.
pub fn outbox_pending(entries: usize) {
    gauge!("OutboxPending").set(entries as f64);
}

/// Counts a run that carried out what an earlier decision owed (a worker died or was
/// fenced between a commit and its effects).
pub fn redriven(service: &str) {
    counter!("ObligationsRedriven", "Service" => service.to_string()).increment(1);
}

/// Records one reconciler pass: how long it took and how many services it left for the
/// next one.
pub fn reconcile_pass(took: Duration, skipped: usize) {
    histogram!("ReconcilePass").record(took.as_secs_f64() * 1000.0);
    if skipped > 0 {
        counter!("ReconcileSkipped").increment(skipped as u64);
    }
}

/// Records what one decision says: deployments started and ended, weights confirmed,
/// phase, drift, step lag and rollback latency.
pub fn decided(d: &Decided<'_>) {
    let service = d.service.to_string();
    if let crate::flow::InputKind::Tick { tick, .. } = &d.input.kind
        && let Some(due) = d
            .before
            .deployment(&tick.deployment_id)
            .and_then(|dep| dep.next_tick)
            .filter(|t| t.cursor == tick.cursor && t.attempt == tick.attempt)
            .map(|t| t.due)
    {
        let lag = d.now.since(due) as f64;
        histogram!("StepLag", "Service" => service.clone()).record(lag);
        histogram!("StepLag").record(lag);
    }
    for event in &d.decision.events {
        let detail = &event.detail;
        let count = |name: &'static str| counter!(name, "Service" => service.clone()).increment(1);
        match event.kind {
            EventKind::Started => count("DeploymentsStarted"),
            EventKind::Succeeded => count("DeploymentsSucceeded"),
            EventKind::RolledBack => count("DeploymentsRolledBack"),
            // Also without dimensions: the controller's alarms watch every service at once.
            EventKind::Failed => {
                count("DeploymentsFailed");
                counter!("DeploymentsFailed").increment(1);
            }
            EventKind::WeightDriftDetected => {
                count("WeightDrift");
                counter!("WeightDrift").increment(1);
            }
            EventKind::CapacityDriftDetected => {
                count("CapacityDrift");
                counter!("CapacityDrift").increment(1);
            }
            EventKind::TrafficShifted => {
                weights(&service, detail.weights);
                let deployment = detail
                    .deployment_id
                    .as_deref()
                    .and_then(|id| d.decision.state.deployment(id));
                if let Some(dep) = deployment {
                    histogram!("GreenWeight", "Service" => service.clone())
                        .record(f64::from(detail.weights.of(dep.target)));
                    let restored = detail.phase == Some(Phase::RollingBack)
                        && detail.weights.of(dep.stable) == 100;
                    if let Some(at) = dep
                        .rollback
                        .as_ref()
                        .filter(|r| restored && r.by_alarm)
                        .and_then(|r| r.at)
                    {
                        histogram!("RollbackLatency", "Service" => service.clone())
                            .record(d.now.since(at) as f64);
                    }
                }
            }
            _ => {}
        }
        if let Some(phase) = detail.phase {
            phase_of(&service, phase);
        }
    }
}

/// Publishes what production serves (the confirmed weights, else the intended ones) and
/// the phase of the active or last deployment, from the stored state of `service`: the
/// reconciler's leader does so for every service on every pass. Samples, not gauges: a
/// gauge is written out again on every flush for the life of the process, so a worker
/// that no longer leads (or decides) would keep publishing its last, stale value.
pub fn stored_state(service: &str, state: &crate::flow::ServiceState) {
    let service = service.to_string();
    weights(&service, state.serving());
    if let Some(d) = state.active.as_ref().or(state.last.as_ref()) {
        phase_of(&service, d.phase);
    }
}

fn weights(service: &str, weights: crate::flow::Weights) {
    for color in [Color::Blue, Color::Green] {
        histogram!("Weight", "Service" => service.to_string(), "Color" => color.to_string())
            .record(f64::from(weights.of(color)));
    }
}

fn phase_of(service: &str, phase: Phase) {
    if let Some(index) = PHASES.iter().position(|p| *p == phase) {
        histogram!("Phase", "Service" => service.to_string()).record(index as f64);
    }
}

/// One JSON log line for a panic, in the shape of the worker's other log lines (level
/// `ERROR`, so the stack's `$.level = "ERROR"` metric filter counts it), instead of the
/// default hook's plain text.
#[must_use]
pub fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into());
    let now = crate::ports::system_clock()();
    serde_json::json!({
        "timestamp": now.rfc3339(),
        "level": "ERROR",
        "fields": {
            "message": "panic: the worker task stops",
            "panic": message,
            "location": info.location().map(ToString::to_string),
            "thread": std::thread::current().name().unwrap_or("unnamed"),
        },
        "target": "bluegreen::panic",
    })
    .to_string()
}

/// Makes every panic write one [`panic_line`] to what `sink` returns.
pub fn log_panics<W: Write>(sink: impl Fn() -> W + Send + Sync + 'static) {
    std::panic::set_hook(Box::new(move |info| {
        let _ = writeln!(sink(), "{}", panic_line(info));
    }));
}

fn describe() {
    describe_counter!("DeploymentsStarted", Unit::Count, "Deployments started");
    describe_counter!("DeploymentsSucceeded", Unit::Count, "Deployments succeeded");
    describe_counter!(
        "DeploymentsRolledBack",
        Unit::Count,
        "Deployments rolled back"
    );
    describe_counter!("DeploymentsFailed", Unit::Count, "Deployments failed");
    describe_counter!(
        "WeightDrift",
        Unit::Count,
        "Weights found that the worker did not write"
    );
    describe_counter!(
        "CapacityDrift",
        Unit::Count,
        "Live colours found running another revision, too few tasks or no healthy target"
    );
    describe_counter!("MessagesProcessed", Unit::Count, "Queue messages applied");
    describe_counter!(
        "MessagesIgnored",
        Unit::Count,
        "Queue messages ignored with a reason"
    );
    describe_counter!("MessagesRejected", Unit::Count, "Queue messages refused");
    describe_counter!(
        "MessagesRetried",
        Unit::Count,
        "Queue messages put back to retry"
    );
    describe_histogram!("Weight", Unit::Percent, "Production weight of each colour");
    describe_histogram!(
        "GreenWeight",
        Unit::Percent,
        "The new colour's production weight"
    );
    describe_histogram!("Phase", Unit::Count, "Index of the deployment's phase");
    describe_gauge!(
        "OutboxPending",
        Unit::Count,
        "Outbox entries left unpublished"
    );
    describe_histogram!(
        "RollbackLatency",
        Unit::Milliseconds,
        "Rollback alarm to weights restored"
    );
    describe_histogram!("StepLag", Unit::Milliseconds, "Tick due to tick decided");
    describe_counter!(
        "ObligationsRedriven",
        Unit::Count,
        "Owed effects carried out by another run than the one that committed them"
    );
    describe_histogram!(
        "ReconcilePass",
        Unit::Milliseconds,
        "Duration of one reconciler pass"
    );
    describe_counter!(
        "ReconcileSkipped",
        Unit::Count,
        "Services a reconciler pass left for the next one"
    );
}

/// Writes each flush to stdout in one piece, so a log line can never land inside an
/// EMF document.
struct Stdout(Vec<u8>);

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Stdout {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.0);
            let _ = out.flush();
        }
    }
}

/// The installed EMF recorder; flush it once more before exiting.
pub struct Emf(&'static metrics_cloudwatch_embedded::Collector);

impl Emf {
    /// Writes what was recorded since the last flush.
    pub fn flush(&self) {
        let _ = self.0.flush(Stdout(Vec::new()));
    }
}

/// Installs the EMF recorder as the process's metrics recorder: a document per label set
/// on stdout every [`EMF_FLUSH`] (needs a tokio runtime). `namespace` is the CloudWatch
/// namespace.
///
/// # Errors
/// A recorder is already installed, or the namespace is empty.
pub fn init_emf(namespace: &str) -> Result<Emf, String> {
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(namespace.to_string())
        .with_auto_flush_writer(EMF_FLUSH, || Stdout(Vec::new()))
        .init()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(Emf(collector))
}

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs a Prometheus recorder as the process's metrics recorder (once; later calls
/// return the same handle), so that [`render_prometheus`] renders what was recorded.
///
/// # Errors
/// Another recorder is already installed.
pub fn init_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    Ok(PROMETHEUS.get_or_init(|| handle).clone())
}

/// The Prometheus exposition text of everything recorded, if [`init_prometheus`] ran.
#[must_use]
pub fn render_prometheus() -> String {
    PROMETHEUS.get().map(|h| h.render()).unwrap_or_default()
}
