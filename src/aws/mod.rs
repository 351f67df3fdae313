//! The AWS adapters (official SDK crates): one [`Aws`] value implements every port.
//!
//! * [`sqs`] — the inbox (long poll, visibility, delayed self-addressed ticks);
//! * [`dynamodb`] — the store (one table; key design in docs/worker.md);
//! * [`elb`] — the traffic router (listener rule / default action weights, read back);
//! * [`ecs`] — the platform (task definition revision, service updates, health);
//! * [`events`] — the bus (`PutEvents` in batches of 10);
//! * [`cloudwatch`] — rollback alarm states;
//! * [`ecr`] — the registry: a requested tag resolved to its digest;
//! * [`http`] — HTTP validation checks.
//!
//! Clients come from `aws_config`'s default chain, so `AWS_REGION`, `AWS_ENDPOINT_URL`
//! (and `AWS_ENDPOINT_URL_<SERVICE>`) and the usual credential sources apply.

pub mod cloudwatch;
pub mod dynamodb;
pub mod ecr;
pub mod ecs;
pub mod elb;
pub mod events;
pub mod http;
pub mod sqs;

use std::collections::HashMap;
use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ecs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ecs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::config::{Config, ServiceConfig};
use crate::ports::{PortError, PortResult, patiently};

/// How the SDK calls AWS: attempts per call and how long one attempt may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// Attempts per call, the first included (1 = no SDK retries).
    pub attempts: u32,
    /// Longest time one attempt may take (above the long poll's wait).
    pub attempt_timeout: std::time::Duration,
}

impl Default for CallPolicy {
    fn default() -> CallPolicy {
        CallPolicy {
            attempts: 4,
            attempt_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Every AWS client the worker uses, the names of its own resources, and where each
/// service lives (the ports name services; this adapter looks their resources up).
#[derive(Debug, Clone)]
pub struct Aws {
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) dynamodb: aws_sdk_dynamodb::Client,
    pub(crate) elb: aws_sdk_elasticloadbalancingv2::Client,
    pub(crate) ecs: aws_sdk_ecs::Client,
    pub(crate) ecr: aws_sdk_ecr::Client,
    pub(crate) events: aws_sdk_eventbridge::Client,
    pub(crate) cloudwatch: aws_sdk_cloudwatch::Client,
    pub(crate) queue_url: String,
    pub(crate) table: String,
    pub(crate) bus: String,
    pub(crate) http: http::HttpChecks,
    services: Arc<HashMap<String, ServiceConfig>>,
}

impl Aws {
    /// Clients from the default chain with `calls`' attempts (the SDK's `standard` retry
    /// mode: exponential back-off with jitter) and attempt timeout.
    pub async fn from_env(config: &Config, calls: CallPolicy) -> Aws {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(calls.attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(calls.attempt_timeout)
                    .build(),
            )
            .load()
            .await;
        Aws::new(&sdk, config)
    }

    /// Clients from an explicit SDK configuration (tests point it at the emulator).
    ///
    /// The clients whose calls run under a send deadline (ELBv2 and ECS writes under the
    /// service lease, EventBridge under an outbox claim) carry the `SendDeadline`
    /// interceptor and a connect timeout of [`CONNECT_TIMEOUT`], below the runner's lease
    /// margin: the deadline is checked before the connection is made, so a slow connect
    /// must not carry a request past it.
    #[must_use]
    pub fn new(sdk: &SdkConfig, config: &Config) -> Aws {
        let fenced = sdk
            .timeout_config()
            .map_or_else(TimeoutConfig::builder, TimeoutConfig::to_builder)
            .connect_timeout(CONNECT_TIMEOUT)
            .build();
        Aws {
            sqs: aws_sdk_sqs::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::from_conf(
                aws_sdk_elasticloadbalancingv2::config::Builder::from(sdk)
                    .timeout_config(fenced.clone())
                    .interceptor(SendDeadline)
                    .build(),
            ),
            ecs: aws_sdk_ecs::Client::from_conf(
                aws_sdk_ecs::config::Builder::from(sdk)
                    .timeout_config(fenced.clone())
                    .interceptor(SendDeadline)
                    .build(),
            ),
            ecr: aws_sdk_ecr::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(sdk)
                    .timeout_config(fenced)
                    .interceptor(SendDeadline)
                    .build(),
            ),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            queue_url: config.worker.queue_url.clone(),
            table: config.worker.table.clone(),
            bus: config.worker.event_bus.clone(),
            http: http::HttpChecks::new(),
            services: Arc::new(
                config
                    .services
                    .iter()
                    .map(|s| (s.name.clone(), s.clone()))
                    .collect(),
            ),
        }
    }

    /// The AWS resources of the service named `name`.
    pub(crate) fn resources(&self, name: &str) -> PortResult<&ServiceConfig> {
        self.services
            .get(name)
            .ok_or_else(|| PortError::Permanent(format!("service {name} is not configured")))
    }
}

/// How long the fenced clients (ELBv2, ECS, EventBridge) may take to set up a connection:
/// well below the runner's 2 s lease margin, since the send deadline is checked before
/// the connection is made.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

const _: () = assert!(
    CONNECT_TIMEOUT.as_millis() < crate::runner::LEASE_MARGIN.as_millis(),
    "a connect must fit in the lease margin"
);

/// Refuses to transmit a request after the send deadline of the effect it belongs to
/// ([`crate::ports::sending_before`]), checked after signing, before the connection is
/// made and the request leaves (a connect is bounded by [`CONNECT_TIMEOUT`]). On the
/// clients whose writes move traffic or colours (ELBv2, ECS), and on EventBridge, whose
/// publishes run under an outbox claim: a `ModifyRule` or `UpdateService` never leaves a
/// worker whose lease is about to lapse, nor a `PutEvents` one whose claim is about to
/// lapse, however late its task was woken. The refusal reaches the caller as a transport
/// failure, which is retryable: the runner checks its lease again before another try.
#[derive(Debug)]
struct SendDeadline;

impl Intercept for SendDeadline {
    fn name(&self) -> &'static str {
        "SendDeadline"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match crate::ports::send_deadline() {
            Some(deadline) if tokio::time::Instant::now() >= deadline => {
                Err("not sent: the effect's lease margin was reached".into())
            }
            _ => Ok(()),
        }
    }
}

/// Sends an AWS call that is safe to repeat (a read, an idempotent or conditional write),
/// repeating it a few times while it fails retryably ([`patiently`]): what the SDK's own
/// retries do, kept even when those are turned off, so that a lossy network reaches the
/// worker's logic as a slower call rather than a failed step.
pub(crate) async fn repeat<T, E, F, Fut>(operation: &str, mut send: F) -> PortResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    patiently(|| {
        let sent = send();
        async move { sent.await.map_err(|e| port_error(operation, e)) }
    })
    .await
}

/// Error codes worth retrying whatever the HTTP status says.
/// `TransactionConflictException` is DynamoDB's answer to a write on an item another
/// transaction is writing (HTTP 400): a race, not a refusal.
const RETRYABLE_CODES: [&str; 7] = [
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "TransactionConflictException",
];

/// Maps an SDK error to the caller's reaction: throttling, 5xx and transport failures
/// are retryable; other service errors are permanent.
pub(crate) fn port_error<E>(operation: &str, e: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = format!("{operation}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            let status = s.raw().status().as_u16();
            if status >= 500 || RETRYABLE_CODES.contains(&code) {
                PortError::Retryable(text)
            } else {
                PortError::Permanent(text)
            }
        }
        _ => PortError::Retryable(text),
    }
}
