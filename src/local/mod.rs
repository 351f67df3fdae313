//! The embedded adapters: the same ports as [`crate::aws`], on one machine, with no AWS
//! account, and the runtime that wires them to the worker.
//!
//! * [`db`] — store and inbox on SQLite (DynamoDB and SQS semantics);
//! * [`proxy`] — the traffic router, an HTTP/1.1 reverse proxy (the ALB);
//! * [`platform`] / [`process`] — colours as local processes (ECS);
//! * [`alarms`] — rules over the router's metrics (CloudWatch alarms);
//! * [`bus`] — events as JSON Lines (EventBridge);
//! * [`metrics`] — the Prometheus endpoint;
//! * [`runtime`] — all of it started, stopped and wired to the [`Worker`](crate::worker::Worker);
//! * [`demo`] / [`demo_app`] — `bluegreen demo` and the app it deploys.

pub mod alarms;
pub mod bus;
pub mod config;
pub mod db;
pub mod demo;
pub mod demo_app;
pub mod http;
pub mod metrics;
pub mod platform;
pub mod process;
pub mod proxy;
pub mod runtime;
pub(crate) mod world;

pub use config::LocalConfig;
pub use db::{DeadLetter, LocalDb, QueueOptions};
pub use runtime::Runtime;
pub use world::Local;
