//! The embedded mode's `/metrics` endpoint, in the Prometheus text exposition format
//! (version 0.0.4): the router's own numbers and the embedded world's, followed by the
//! instrumentation the AWS worker sends to CloudWatch as EMF ([`crate::telemetry`]),
//! recorded here by a Prometheus recorder.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http::{serve, text};
use super::proxy::LATENCY_BOUNDS_US;
use super::world::Local;
use crate::flow::Color;

/// Renders every metric of `local`.
#[must_use]
pub fn render(local: &Local) -> String {
    let mut out = String::new();
    let mut services: Vec<&String> = local.routes.keys().collect();
    services.sort();
    let colors = [Color::Blue, Color::Green];

    header(
        &mut out,
        "bluegreen_weight_percent",
        "gauge",
        "Production traffic share of each colour.",
    );
    for s in &services {
        let w = local.routes[*s].weights();
        let _ = writeln!(
            out,
            "bluegreen_weight_percent{{service=\"{s}\",color=\"blue\"}} {}",
            w.blue
        );
        let _ = writeln!(
            out,
            "bluegreen_weight_percent{{service=\"{s}\",color=\"green\"}} {}",
            w.green
        );
    }
    header(
        &mut out,
        "bluegreen_requests_total",
        "counter",
        "Requests answered through the router.",
    );
    each_color(
        &mut out,
        local,
        &services,
        &colors,
        "bluegreen_requests_total",
        |r, c| r.metrics(c).snapshot().requests,
    );
    header(
        &mut out,
        "bluegreen_request_errors_total",
        "counter",
        "Requests answered with a 5xx (the router's own 502/503/504 included).",
    );
    each_color(
        &mut out,
        local,
        &services,
        &colors,
        "bluegreen_request_errors_total",
        |r, c| r.metrics(c).snapshot().errors,
    );
    header(
        &mut out,
        "bluegreen_requests_in_flight",
        "gauge",
        "Requests forwarded and not finished.",
    );
    each_color(
        &mut out,
        local,
        &services,
        &colors,
        "bluegreen_requests_in_flight",
        |r, c| r.metrics(c).in_flight(),
    );
    header(
        &mut out,
        "bluegreen_request_duration_seconds",
        "histogram",
        "Time to response headers.",
    );
    for s in &services {
        for c in colors {
            let snap = local.routes[*s].metrics(c).snapshot();
            let mut cumulative = 0;
            for (i, count) in snap.buckets.iter().enumerate() {
                cumulative += count;
                let le = LATENCY_BOUNDS_US
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |us| seconds(*us));
                let _ = writeln!(
                    out,
                    "bluegreen_request_duration_seconds_bucket{{service=\"{s}\",color=\"{c}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "bluegreen_request_duration_seconds_sum{{service=\"{s}\",color=\"{c}\"}} {}",
                seconds(snap.sum_us)
            );
            let _ = writeln!(
                out,
                "bluegreen_request_duration_seconds_count{{service=\"{s}\",color=\"{c}\"}} {cumulative}"
            );
        }
    }
    header(
        &mut out,
        "bluegreen_deployments",
        "gauge",
        "Deployments by phase (terminal phases count history).",
    );
    for s in &services {
        for (phase, n) in local.db.phase_counts(s).unwrap_or_default() {
            let _ = writeln!(
                out,
                "bluegreen_deployments{{service=\"{s}\",phase=\"{phase}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "bluegreen_alarm_state",
        "gauge",
        "1 for each alarm's current state.",
    );
    for (name, state) in local.alarms.states() {
        let _ = writeln!(
            out,
            "bluegreen_alarm_state{{alarm=\"{name}\",state=\"{}\"}} 1",
            state.as_str()
        );
    }
    header(
        &mut out,
        "bluegreen_events_published_total",
        "counter",
        "Outbound events by detail type.",
    );
    let published = local.bus.published();
    for (kind, n) in &published {
        let _ = writeln!(
            out,
            "bluegreen_events_published_total{{detail_type=\"{kind}\"}} {n}"
        );
    }
    header(
        &mut out,
        "bluegreen_messages_processed_total",
        "counter",
        "Inbox messages handled and deleted.",
    );
    let _ = writeln!(
        out,
        "bluegreen_messages_processed_total {}",
        local.processed()
    );
    header(
        &mut out,
        "bluegreen_messages_rejected_total",
        "counter",
        "Inputs refused with Event Rejected.",
    );
    let _ = writeln!(
        out,
        "bluegreen_messages_rejected_total {}",
        published.get("Event Rejected").copied().unwrap_or(0)
    );
    header(
        &mut out,
        "bluegreen_queue_depth",
        "gauge",
        "Messages waiting in the inbox.",
    );
    let _ = writeln!(
        out,
        "bluegreen_queue_depth {}",
        local.db.depth().unwrap_or(0)
    );
    header(
        &mut out,
        "bluegreen_dead_letters",
        "gauge",
        "Messages in the dead-letter queue.",
    );
    let dead = local.db.dead_letters().map(|d| d.len()).unwrap_or(0);
    let _ = writeln!(out, "bluegreen_dead_letters {dead}");
    // The instrumentation the AWS worker sends to CloudWatch as EMF (crate::telemetry).
    out.push_str(&crate::telemetry::render_prometheus());
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn each_color(
    out: &mut String,
    local: &Local,
    services: &[&String],
    colors: &[Color],
    name: &str,
    value: impl Fn(&super::proxy::Route, Color) -> u64,
) {
    for s in services {
        for c in colors {
            let v = value(&local.routes[*s], *c);
            let _ = writeln!(out, "{name}{{service=\"{s}\",color=\"{c}\"}} {v}");
        }
    }
}

fn seconds(us: u64) -> String {
    let s = Duration::from_micros(us).as_secs_f64();
    format!("{s}")
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve_metrics(
    local: Arc<Local>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = crate::telemetry::init_prometheus() {
        tracing::warn!(error = %e, "deployment metrics are off");
    }
    let handler = move |request: hyper::Request<hyper::body::Incoming>, _peer: SocketAddr| {
        let local = local.clone();
        async move {
            if request.uri().path() == "/metrics" {
                let mut response = text(StatusCode::OK, render(&local));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                );
                response
            } else {
                text(StatusCode::NOT_FOUND, "see /metrics\n")
            }
        }
    };
    serve(listener, handler, shutdown, Duration::from_secs(1)).await;
}
