//! A faulty AWS: an HTTP proxy between the workers and moto server that fails a share of
//! the calls the way AWS and networks fail them, so that the faults reach the worker's
//! own logic (the workers run with SDK retries off).
//!
//! Per call, with probability `rate`, one of:
//! * `internal` — HTTP 500 `InternalFailure`, shaped as the call's protocol expects
//!   (JSON for DynamoDB, SQS, ECS, ECR and EventBridge; query/XML for ELBv2 and
//!   CloudWatch);
//! * `throttle` — HTTP 400 `ProvisionedThroughputExceededException` (DynamoDB),
//!   `ThrottlingException` (other JSON services) or `Throttling` (query services);
//! * `reset` — the connection is closed without an answer; nothing reached moto;
//! * `timeout` — no answer until past the worker's attempt timeout, then a reset;
//! * `answer-lost` — the call is forwarded and applied by moto, but its answer is lost.
//!
//! Every call is shown to a [`Hook`] first (with the fault chosen for it), which the
//! chaos suite uses to audit writes against what moto holds at that moment.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

/// What the proxy does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    Internal,
    Throttle,
    Reset,
    Timeout,
    AnswerLost,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Internal,
        Fault::Throttle,
        Fault::Reset,
        Fault::Timeout,
        Fault::AnswerLost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Internal => "HTTP 500",
            Fault::Throttle => "throttling",
            Fault::Reset => "connection reset",
            Fault::Timeout => "timeout",
            Fault::AnswerLost => "applied, answer lost",
        }
    }

    /// Whether moto applies the call.
    pub fn applied(self) -> bool {
        self == Fault::AnswerLost
    }
}

/// One call as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The worker whose proxy it went through.
    pub worker: String,
    /// The API operation (`ModifyRule`, `TransactWriteItems`, …).
    pub operation: String,
    /// The request body.
    pub body: Bytes,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// Set once moto's answer came back later than the worker's attempt timeout, or the
    /// worker hung up before it came (a slow emulator on a saturated machine): the
    /// worker gave up on a call moto may have applied, so its answer was lost as surely
    /// as an injected `AnswerLost`.
    pub answered_late: Arc<AtomicBool>,
}

/// Told of every call before it is forwarded (or failed).
pub type Hook = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Calls and faults so far.
#[derive(Debug, Default)]
pub struct Counts {
    pub calls: AtomicU64,
    per_fault: Mutex<std::collections::BTreeMap<Fault, u64>>,
}

impl Counts {
    pub fn faults(&self) -> std::collections::BTreeMap<Fault, u64> {
        self.per_fault.lock().expect("counts").clone()
    }
}

/// What a [`Plan`] makes of one call, instead of a random fault.
#[derive(Debug, Clone)]
pub enum Planned {
    /// This fault.
    Fault(Fault),
    /// This answer (a canned AWS error, an empty receive); nothing reaches moto.
    Answer(StatusCode, String),
    /// No answer, ever (the worker is about to be killed).
    Hang,
}

/// Chooses what happens to a call, by its operation and body; `None` leaves it to the
/// random faults.
pub type Plan = Arc<dyn Fn(&str, &Bytes) -> Option<Planned> + Send + Sync>;

/// How faulty.
#[derive(Clone)]
pub struct Faults {
    /// Share of calls that fail.
    pub rate: f64,
    /// How long a `timeout` holds the call (past the worker's attempt timeout).
    pub hold: Duration,
    /// The worker's attempt timeout: a call answered later than this was given up on.
    pub attempt_timeout: Duration,
    /// Calls a test decides itself, before any random fault.
    pub plan: Option<Plan>,
}

impl Faults {
    /// No random faults: only what `plan` decides.
    pub fn planned(plan: Plan) -> Faults {
        Faults {
            rate: 0.0,
            hold: Duration::from_secs(4),
            attempt_timeout: Duration::from_secs(30),
            plan: Some(plan),
        }
    }
}

/// One proxy, for one worker.
pub struct Proxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Result<Response<Full<Bytes>>, std::io::Error>;

impl Proxy {
    /// Starts a proxy to `upstream` (moto) on a free loopback port.
    pub async fn start(
        upstream: &str,
        worker: &str,
        faults: Faults,
        seed: u64,
        counts: Arc<Counts>,
        hook: Hook,
    ) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..8 + worker.len().min(24)]
            .copy_from_slice(&worker.as_bytes()[..worker.len().min(24)]);
        let rng = Arc::new(Mutex::new(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let upstream: hyper::Uri = upstream.parse().expect("upstream");
        let route = Arc::new(Route {
            client,
            upstream,
            worker: worker.to_string(),
            faults,
            rng,
            counts,
            hook,
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let route = route.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        handle(request, route.clone())
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy { addr, task }
    }
}

/// The protocol family of a call, for shaping errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// awsJson (`x-amz-target: Service.Operation`).
    Json { dynamodb: bool },
    /// awsQuery (`Action=Operation` in a form body).
    Query,
}

fn operation(request: &hyper::http::request::Parts, body: &[u8]) -> (Protocol, String) {
    if let Some(target) = request
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        let dynamodb = target.starts_with("DynamoDB");
        let op = target.rsplit('.').next().unwrap_or(target).to_string();
        return (Protocol::Json { dynamodb }, op);
    }
    let text = String::from_utf8_lossy(body);
    let op = text
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_string();
    (Protocol::Query, op)
}

fn error(protocol: Protocol, status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let (content_type, body) = match protocol {
        Protocol::Json { .. } => (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"{code}","message":"injected by the fault proxy"}}"#),
        ),
        Protocol::Query => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>{}</Type><Code>{code}</Code><Message>injected by the fault proxy</Message></Error><RequestId>fault</RequestId></ErrorResponse>",
                if status.is_server_error() {
                    "Receiver"
                } else {
                    "Sender"
                }
            ),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Marks a forwarded call's answer as lost when dropped before the answer was taken
/// (the worker hung up first).
struct Unanswered(Option<Arc<AtomicBool>>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

fn reset() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset")
}

/// What one proxy needs for every call it handles.
struct Route {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: hyper::Uri,
    worker: String,
    faults: Faults,
    rng: Arc<Mutex<TestRng>>,
    counts: Arc<Counts>,
    hook: Hook,
}

async fn handle(request: Request<Incoming>, route: Arc<Route>) -> Reply {
    let Route {
        client,
        upstream,
        worker,
        faults,
        rng,
        counts,
        hook,
    } = &*route;
    let received = tokio::time::Instant::now();
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(reset()),
    };
    let (protocol, op) = operation(&parts, &body);
    let planned = faults.plan.as_ref().and_then(|plan| plan(&op, &body));
    match planned {
        Some(Planned::Hang) => return std::future::pending().await,
        Some(Planned::Answer(status, text)) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            *response.status_mut() = status;
            let content_type = match protocol {
                Protocol::Json { .. } => "application/x-amz-json-1.0",
                Protocol::Query => "text/xml",
            };
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(content_type),
            );
            return Ok(response);
        }
        _ => {}
    }
    let fault = match planned {
        Some(Planned::Fault(f)) => Some(f),
        _ => {
            let mut rng = rng.lock().expect("rng");
            rng.random_bool(faults.rate)
                .then(|| Fault::ALL[rng.random_range(0..Fault::ALL.len())])
        }
    };
    counts.calls.fetch_add(1, Ordering::Relaxed);
    if let Some(f) = fault {
        *counts
            .per_fault
            .lock()
            .expect("counts")
            .entry(f)
            .or_default() += 1;
    }
    let answered_late = Arc::new(AtomicBool::new(false));
    hook(Call {
        worker: worker.clone(),
        operation: op,
        body: body.clone(),
        fault,
        answered_late: answered_late.clone(),
    })
    .await;
    match fault {
        Some(Fault::Internal) => {
            return Ok(error(
                protocol,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
            ));
        }
        Some(Fault::Throttle) => {
            let code = match protocol {
                Protocol::Json { dynamodb: true } => "ProvisionedThroughputExceededException",
                Protocol::Json { dynamodb: false } => "ThrottlingException",
                Protocol::Query => "Throttling",
            };
            return Ok(error(protocol, StatusCode::BAD_REQUEST, code));
        }
        Some(Fault::Reset) => return Err(reset()),
        Some(Fault::Timeout) => {
            tokio::time::sleep(faults.hold).await;
            return Err(reset());
        }
        Some(Fault::AnswerLost) | None => {}
    }
    let mut uri = upstream.clone().into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    let mut forward = Request::builder()
        .method(parts.method.clone())
        .uri(hyper::Uri::from_parts(uri).expect("uri"));
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            forward = forward.header(name, value);
        }
    }
    let forward = forward.body(Full::new(body)).expect("request");
    // From here moto may apply the call whether or not its answer reaches the worker: the
    // worker gives up after its attempt timeout and closes the connection, and hyper then
    // drops this future before it answers.
    let mut unanswered = Unanswered(Some(answered_late));
    let response = client.request(forward).await.map_err(|_| reset())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|_| reset())?.to_bytes();
    let answered_late = unanswered.0.take().expect("set above");
    if received.elapsed() >= faults.attempt_timeout {
        answered_late.store(true, Ordering::Relaxed);
    }
    if fault == Some(Fault::AnswerLost) {
        return Err(reset());
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}
