//! The embedded traffic router: an HTTP/1.1 reverse proxy on loopback that does what the
//! ALB's weighted forward action does for one service.
//!
//! * Each request goes to blue or green by the current weights. The split is exact over
//!   every 100 requests and spread out (slot `n·37 mod 100`, 37 being coprime with 100),
//!   so a 10 % step sends 10 % without a random number generator.
//! * Upstream connections are pooled and kept alive; request and response bodies stream
//!   through without buffering.
//! * Hop-by-hop headers (RFC 9110 §7.6.1, and any listed in `Connection`) are dropped in
//!   both directions; `X-Forwarded-For`, `-Proto` and `-Host` are set.
//! * Optional stickiness: a cookie pins a client to its colour while that colour has
//!   weight; once it has none (rollback, finalization) the client is routed again.
//! * Draining: a colour whose weight drops to 0 gets no new requests, and its in-flight
//!   count lets the platform wait for open requests before stopping its processes.
//! * Per colour: requests, 5xx (including the proxy's own 502/503/504), requests in
//!   flight and a latency histogram (time to response headers).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tracing::debug;

use super::http::{Body, text};
use crate::flow::{Color, Weights};

/// Upper bounds of the latency histogram buckets, in microseconds (the last bucket,
/// `+Inf`, is implicit).
pub const LATENCY_BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// How long the proxy waits for an upstream's response headers.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// A colour's slot in per-colour arrays.
pub(super) fn index(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

/// Live counters of one colour.
#[derive(Debug, Default)]
pub struct ColorMetrics {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    sum_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A copy of a colour's counters at one instant; windows are differences of two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests answered (any status).
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Sum of latencies, microseconds.
    pub sum_us: u64,
    /// Requests per latency bucket (not cumulative), the last one `+Inf`.
    pub buckets: [u64; BUCKETS],
}

impl Snapshot {
    /// `self - older`, counter by counter.
    #[must_use]
    pub fn since(&self, older: &Snapshot) -> Snapshot {
        let mut buckets = [0; BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(older.buckets[i]);
        }
        Snapshot {
            requests: self.requests.saturating_sub(older.requests),
            errors: self.errors.saturating_sub(older.errors),
            sum_us: self.sum_us.saturating_sub(older.sum_us),
            buckets,
        }
    }

    /// The `q` quantile (0..1) as the upper bound of the bucket it falls in; `None`
    /// without requests. Beyond the last bound it reports the last bound.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based, rounded up.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bound = LATENCY_BOUNDS_US
                    .get(i)
                    .or(LATENCY_BOUNDS_US.last())
                    .copied()
                    .unwrap_or_default();
                return Some(Duration::from_micros(bound));
            }
        }
        None
    }

    /// Share of 5xx among the requests; `None` without requests.
    #[must_use]
    pub fn error_rate(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

impl ColorMetrics {
    fn record(&self, status: StatusCode, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        if status.is_server_error() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut buckets = [0; BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].load(Ordering::Relaxed);
        }
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            buckets,
        }
    }

    /// Requests forwarded and not yet finished (response body included).
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight until dropped (with the response body).
struct InFlight(Arc<Route>, Color);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics[index(self.1)]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    authority: hyper::http::uri::Authority,
}

#[derive(Debug)]
struct Table {
    weights: Weights,
    upstreams: [Vec<Target>; 2],
}

/// One service's routing table and metrics, shared by the proxy, the platform, the
/// alarm evaluator and the metrics endpoint.
#[derive(Debug)]
pub struct Route {
    service: String,
    cookie: Option<String>,
    table: RwLock<Table>,
    next: AtomicU64,
    metrics: [ColorMetrics; 2],
    changed_at: Mutex<Option<Instant>>,
}

impl Route {
    /// A route for `service` with `weights` and no upstreams yet; `sticky` adds the
    /// stickiness cookie `bluegreen-<service>`.
    #[must_use]
    pub fn new(service: &str, weights: Weights, sticky: bool) -> Route {
        Route {
            service: service.to_string(),
            cookie: sticky.then(|| format!("bluegreen-{service}")),
            table: RwLock::new(Table {
                weights,
                upstreams: [Vec::new(), Vec::new()],
            }),
            next: AtomicU64::new(0),
            metrics: [ColorMetrics::default(), ColorMetrics::default()],
            changed_at: Mutex::new(None),
        }
    }

    /// The service.
    #[must_use]
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The stickiness cookie's name, when stickiness is on.
    #[must_use]
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Current weights.
    #[must_use]
    pub fn weights(&self) -> Weights {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .weights
    }

    /// Sets the weights; new requests follow at once.
    pub fn set_weights(&self, weights: Weights) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if table.weights != weights {
            table.weights = weights;
            *self
                .changed_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }

    /// When the weights last changed.
    #[must_use]
    pub fn changed_at(&self) -> Option<Instant> {
        *self
            .changed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces `color`'s upstream addresses (its registered, healthy targets).
    pub fn set_upstreams(&self, color: Color, addrs: Vec<SocketAddr>) {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .upstreams[index(color)] = addrs
            .into_iter()
            .map(|addr| Target {
                addr,
                authority: authority(addr),
            })
            .collect();
    }

    /// `color`'s upstream addresses.
    #[must_use]
    pub fn upstreams(&self, color: Color) -> Vec<SocketAddr> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .upstreams[index(color)]
        .iter()
        .map(|t| t.addr)
        .collect()
    }

    /// `color`'s counters.
    #[must_use]
    pub fn metrics(&self, color: Color) -> &ColorMetrics {
        &self.metrics[index(color)]
    }

    /// Waits until `color` has no request in flight, at most `timeout`; whether it drained.
    pub async fn drained(&self, color: Color, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.metrics(color).in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Picks the colour and upstream for a request: the sticky colour while it has
    /// weight, else by weight; a colour without targets falls over to the other one only
    /// when that one has weight too.
    fn pick(&self, sticky: Option<Color>) -> Option<(Color, Target)> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let weight = |c: Color| match c {
            Color::Blue => table.weights.blue,
            Color::Green => table.weights.green,
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let by_weight = || {
            let slot = u8::try_from(n.wrapping_mul(37) % 100).unwrap_or(0);
            if slot < table.weights.green {
                Color::Green
            } else {
                Color::Blue
            }
        };
        let mut color = match sticky {
            Some(c) if weight(c) > 0 && !table.upstreams[index(c)].is_empty() => c,
            _ => by_weight(),
        };
        if table.upstreams[index(color)].is_empty() && weight(color.other()) > 0 {
            color = color.other();
        }
        let addrs = &table.upstreams[index(color)];
        let len = u64::try_from(addrs.len()).ok().filter(|l| *l > 0)?;
        let at = usize::try_from(n % len).unwrap_or(0);
        addrs.get(at).map(|t| (color, t.clone()))
    }

    fn sticky_color(&self, headers: &HeaderMap) -> Option<Color> {
        let name = self.cookie.as_deref()?;
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| match v {
                "blue" => Some(Color::Blue),
                "green" => Some(Color::Green),
                _ => None,
            })
    }
}

/// `addr` as a URI authority.
fn authority(addr: SocketAddr) -> hyper::http::uri::Authority {
    // An IP address and port always form a valid authority.
    hyper::http::uri::Authority::try_from(addr.to_string().as_str())
        .unwrap_or_else(|_| hyper::http::uri::Authority::from_static("127.0.0.1"))
}

/// The pooled upstream client.
pub type Upstream = Client<HttpConnector, Incoming>;

/// A client that keeps upstream connections alive.
#[must_use]
pub fn upstream_client() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Drops hop-by-hop headers, including those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        strip_listed(headers);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn strip_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
}

fn forwarded_headers(headers: &mut HeaderMap, peer: SocketAddr) {
    let client = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
}

/// Serves `route` on `listener` from `threads` OS threads, each with its own
/// single-threaded runtime, accept loop and upstream pool, like nginx's worker processes:
/// a request's downstream and upstream connections live on one thread, so forwarding
/// never hops between threads. Each thread stops as [`serve`](super::http::serve) does.
///
/// # Errors
/// When the listener cannot be cloned or a thread or runtime cannot be started.
pub fn serve_on_threads(
    listener: &std::net::TcpListener,
    route: &Arc<Route>,
    threads: usize,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    listener.set_nonblocking(true)?;
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let route = route.clone();
        let shutdown = shutdown.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = std::thread::Builder::new()
            .name(format!("proxy-{}-{i}", route.service))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let client = upstream_client();
                    let handler =
                        move |request, peer| forward(route.clone(), client.clone(), request, peer);
                    super::http::serve(listener, handler, shutdown, grace).await;
                });
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Forwards one request on `route`.
pub async fn forward(
    route: Arc<Route>,
    client: Upstream,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let sticky = route.sticky_color(request.headers());
    let Some((color, Target { addr, authority })) = route.pick(sticky) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy target for {}\n", route.service),
        );
    };
    route.metrics[index(color)]
        .in_flight
        .fetch_add(1, Ordering::Relaxed);
    let guard = InFlight(route.clone(), color);
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
    }
    let uri = match Uri::from_parts(parts) {
        Ok(uri) => uri,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad request URI: {e}\n")),
    };
    *request.uri_mut() = uri;
    strip_hop_by_hop(request.headers_mut());
    forwarded_headers(request.headers_mut(), peer);
    let answered = tokio::time::timeout(UPSTREAM_TIMEOUT, client.request(request)).await;
    let metrics = &route.metrics[index(color)];
    let mut response = match answered {
        Ok(Ok(response)) => {
            metrics.record(response.status(), started.elapsed());
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The guard lives as long as the body streams: in flight until the end.
            let body = body
                .map_frame(move |frame| {
                    let _in_flight = &guard;
                    frame
                })
                .boxed();
            Response::from_parts(parts, body)
        }
        Ok(Err(e)) => {
            debug!(error = %e, %addr, %color, "upstream failed");
            metrics.record(StatusCode::BAD_GATEWAY, started.elapsed());
            text(StatusCode::BAD_GATEWAY, format!("upstream {color}: {e}\n"))
        }
        Err(_) => {
            metrics.record(StatusCode::GATEWAY_TIMEOUT, started.elapsed());
            text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("upstream {color} did not answer within {UPSTREAM_TIMEOUT:?}\n"),
            )
        }
    };
    if let Some(name) = route.cookie.as_deref()
        && sticky != Some(color)
        && let Ok(v) =
            HeaderValue::from_str(&format!("{name}={color}; Path=/; HttpOnly; SameSite=Lax"))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}
