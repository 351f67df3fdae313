//! `bluegreen`: zero-downtime blue-green, canary and linear deployments of Amazon ECS
//! Fargate services behind an Application Load Balancer.
//!
//! Layers, from the inside out:
//! * [`flow`] — the pure decision core (state, inputs, effects, `decide`);
//! * [`contract`] — the wire shapes: inbound EventBridge envelopes, outbound events;
//! * [`schema`] — the JSON Schemas in `schemas/`, compiled once, and validation;
//! * [`config`] — the configuration document, parsed and validated once at start-up;
//! * [`fleet`] — the services as the worker sees them (names, triggers, settings);
//! * [`plan`] — the schedule a strategy produces, for `bluegreen plan`;
//! * [`ports`] — what the worker needs from the world, as traits;
//! * [`aws`] — the AWS adapters of the ports;
//! * [`local`] — the embedded mode: SQLite store and inbox, reverse proxy, processes,
//!   alarms, JSONL bus, `/metrics`, and `bluegreen demo`;
//! * [`runner`] — the one effect runner: observe → decide → commit → fenced effects, each
//!   result decided in turn → outbox;
//! * [`worker`] — the runtime: queue → route → runner → settle the message, and the
//!   reconciler;
//! * [`operator`] — the operator commands: actions, status, watch, on AWS or embedded;
//! * [`cli`] — the command line; [`exit`] — its exit codes.

pub mod aws;
pub mod cli;
pub mod config;
pub mod contract;
pub mod exit;
pub mod fleet;
pub mod flow;
pub mod health;
pub mod local;
pub mod operator;
pub mod plan;
pub mod ports;
pub mod runner;
pub mod schema;
pub mod telemetry;
pub mod worker;
