//! `bluegreen demo-app`: the small HTTP service the demo deploys, built into the same
//! binary so the demo needs nothing else.
//!
//! * `GET /healthz` → 200 (the health check);
//! * `POST /echo` → the request body streamed back;
//! * `GET /headers` → the request headers as received, one `name: value` per line;
//! * anything else → 200 with `<version> <color>`, or 500 for a share of requests when
//!   the version is faulty. Errors are spread evenly and deterministically: request `n`
//!   fails when `⌊(n+1)·rate⌋ > ⌊n·rate⌋`.
//!
//! SIGTERM or Ctrl-C stops accepting and lets open requests finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http::{Body, serve, text};

/// How the app behaves.
#[derive(Debug, Clone)]
pub struct DemoApp {
    /// Version reported in responses.
    pub version: String,
    /// Colour reported in responses.
    pub color: String,
    /// Share of requests answered with 500 (0..1).
    pub error_rate: f64,
    /// Added to every non-health response.
    pub latency: Duration,
}

impl DemoApp {
    /// Whether request number `n` (0-based) fails.
    #[must_use]
    pub fn fails(&self, n: u64) -> bool {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let at = |k: u64| (k as f64 * self.error_rate.clamp(0.0, 1.0)).floor() as u64;
        at(n + 1) > at(n)
    }
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn run(app: DemoApp, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let app = Arc::new(app);
    let counter = Arc::new(AtomicU64::new(0));
    let handler = move |request: hyper::Request<hyper::body::Incoming>, _peer: SocketAddr| {
        let app = app.clone();
        let counter = counter.clone();
        async move {
            match (request.method(), request.uri().path()) {
                (_, "/healthz") => text(StatusCode::OK, "ok\n"),
                (_, "/headers") => {
                    let mut lines = String::new();
                    for (name, value) in request.headers() {
                        lines.push_str(&format!(
                            "{name}: {}\n",
                            String::from_utf8_lossy(value.as_bytes())
                        ));
                    }
                    text(StatusCode::OK, lines)
                }
                (&Method::POST, "/echo") => {
                    let body: Body = request.into_body().boxed();
                    Response::new(body)
                }
                _ => {
                    if !app.latency.is_zero() {
                        tokio::time::sleep(app.latency).await;
                    }
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if app.fails(n) {
                        text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("{} {} failed\n", app.version, app.color),
                        )
                    } else {
                        let mut r =
                            text(StatusCode::OK, format!("{} {}\n", app.version, app.color));
                        if let Ok(v) = hyper::header::HeaderValue::from_str(&app.version) {
                            r.headers_mut().insert("x-app-version", v);
                        }
                        r
                    }
                }
            }
        }
    };
    serve(listener, handler, shutdown, Duration::from_secs(10)).await;
}
