//! The worker's ERROR log lines: what the stack's `$.level = "ERROR"` metric filter and
//! its `worker-errors` alarm count. A deployment that ends `Failed`, an effect that
//! failed for good, a decision the store refuses to commit and a panic each write one;
//! a deployment that goes well writes none.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bluegreen::flow::Phase;
use bluegreen::worker::Disposition;
use serde_json::Value;

use crate::common::*;

/// A log sink the test can read back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Runs `f` with the worker's JSON log format writing into a sink; returns the ERROR lines.
fn errors_of<T>(f: impl FnOnce() -> T) -> (T, Vec<Value>) {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let errors = sink
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    (out, errors)
}

fn messages(errors: &[Value]) -> Vec<&str> {
    errors
        .iter()
        .map(|e| e["fields"]["message"].as_str().unwrap_or(""))
        .collect()
}

#[test]
fn a_deployment_that_goes_well_logs_no_error() {
    let (_, errors) = errors_of(|| {
        let mut w = World::new(settings());
        w.apply(push(1));
        w.settle();
        assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    });
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn a_write_that_fails_for_good_logs_the_effect_and_then_the_failed_deployment() {
    let (id, errors) = errors_of(|| {
        let mut s = settings();
        s.rollback_attempts = 2;
        let mut w = world_in(s, Phase::Shifting);
        w.failing_effect = Some("set-production-weights");
        w.apply(alarm("web-5xx", "t1"));
        w.settle();
        assert_eq!(w.last_phase(), Some(Phase::Failed));
        w.state.last.as_ref().unwrap().id.clone()
    });
    let effects: Vec<&Value> = errors
        .iter()
        .filter(|e| e["fields"]["message"] == "effect failed for good")
        .collect();
    assert!(!effects.is_empty(), "{:?}", messages(&errors));
    for e in &effects {
        assert_eq!(e["fields"]["effect"], "set-production-weights", "{e}");
        assert_eq!(e["fields"]["deployment"], id.as_str(), "{e}");
        assert!(
            e["fields"]["error"]
                .as_str()
                .unwrap()
                .contains("injected failure"),
            "{e}"
        );
    }
    let failed: Vec<&Value> = errors
        .iter()
        .filter(|e| e["fields"]["message"] == "deployment failed")
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", messages(&errors));
    assert_eq!(failed[0]["fields"]["deployment"], id.as_str());
    assert!(
        failed[0]["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("rollback could not complete"),
        "{}",
        failed[0]
    );
}

#[test]
fn a_decision_the_store_refuses_to_commit_logs_an_error_and_loses_nothing() {
    let (disposition, errors) = errors_of(|| {
        let mut w = World::new(settings());
        w.cloud().commit_refused = true;
        w.send(&envelope::push(1), std::time::Duration::ZERO);
        let m = w.receive(1).pop().expect("the push");
        let worker = w.other_worker("w2");
        let disposition = w.block_on(async move { worker.process(m).await });
        assert_eq!(w.phase(), None, "nothing was committed");
        disposition
    });
    assert!(
        matches!(disposition, Disposition::Retry(_)),
        "the message goes back to be tried again: {disposition:?}"
    );
    let commits: Vec<&Value> = errors
        .iter()
        .filter(|e| e["fields"]["message"] == "the decision could not be committed")
        .collect();
    assert_eq!(commits.len(), 1, "{:?}", messages(&errors));
    assert!(
        commits[0]["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("AccessDeniedException"),
        "{}",
        commits[0]
    );
}

#[test]
fn a_panic_is_one_json_error_line() {
    let sink = Sink::default();
    let writer = sink.clone();
    let previous = std::panic::take_hook();
    bluegreen::telemetry::log_panics(move || writer.clone());
    let caught = std::panic::catch_unwind(|| panic!("error-logs test panic {}", 42));
    std::panic::set_hook(previous);
    assert!(caught.is_err());
    let ours: Vec<Value> = sink
        .lines()
        .into_iter()
        .filter(|l| l["fields"]["panic"] == "error-logs test panic 42")
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let line = &ours[0];
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["target"], "bluegreen::panic");
    assert!(
        line["fields"]["location"]
            .as_str()
            .unwrap()
            .contains("error_logs.rs"),
        "{line}"
    );
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
}
