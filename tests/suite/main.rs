//! The test suite: one binary (compile time matters on small machines).
//!
//! * `transitions` — one test per transition of the flow;
//! * `sequences` — canned event sequences, replayed step by step and all at once;
//! * `invariants` — property tests of SPEC §4, named after the invariants;
//! * `contract` — AWS samples and every emitted event against `schemas/`;
//! * `config` — the configuration document and its errors;
//! * `local_db` — the embedded store and inbox;
//! * `local_e2e` — the embedded mode end to end: proxy, processes, alarms, worker;
//! * `local_proxy` — the embedded proxy alone: split, headers, streaming, draining;
//! * `cli` — the binary's commands and exit codes;
//! * `aws_e2e` (with the `moto` harness) — the AWS worker end to end on moto server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aws_e2e;
mod cli;
mod common;
mod config;
mod contract;
mod invariants;
mod local_db;
mod local_e2e;
mod local_proxy;
mod moto;
mod sequences;
mod transitions;
