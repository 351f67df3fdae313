//! The test suite: one binary (compile time matters on small machines).
//!
//! * `common` — the production worker over the embedded store and inbox and a simulated
//!   cloud, on tokio's paused clock: what the flow tests drive;
//! * `transitions` — one test per transition of the flow;
//! * `observed` — the worker acts on observed facts: live colour, read-backs, drift,
//!   tags, the runner's follow-ups, the reconciler's lease;
//! * `obligations` — bounded rollback: what a decision commits to is carried out by
//!   whoever takes the lease, steps count once served, waits end, rollbacks preempt;
//! * `error_logs` — what the worker logs at ERROR (a failed deployment, an effect failed
//!   for good, a refused commit, a panic), and that a good deployment logs none;
//! * `sequences` — canned event sequences, replayed step by step and all at once;
//! * `invariants` — property tests of SPEC §4 on the production worker, named after the
//!   invariants;
//! * `contract` — AWS samples and every emitted event against `schemas/`;
//! * `hostile` — events that must neither deploy nor roll back, and fuzzing of the whole
//!   inbound path;
//! * `config` — the configuration document and its errors;
//! * `docs` — the generated references and state machine of `docs/` match the schemas
//!   and the code;
//! * `local_db` — the embedded store and inbox;
//! * `local_e2e` — the embedded mode end to end: proxy, processes, alarms, worker;
//! * `local_proxy` — the embedded proxy alone: split, headers, streaming, draining;
//! * `cli` — the binary's commands and exit codes;
//! * `operator` — the operator commands end to end, on moto and on the embedded mode;
//! * `aws_e2e` (with the `moto` harness) — the AWS worker end to end on moto server;
//! * `aws_observed` — on moto too: green live at first sight, the rule changed behind the
//!   worker's back (idle and mid-shift), an image requested by tag;
//! * `bounded` (with the `faults` proxy) — on moto: worker binaries killed between a
//!   rollback's or a canary step's commit and its write, a busy service under a shared
//!   alarm, cancellation reasons, a deleted rollback alarm, the receive's visibility;
//! * `chaos` (with the `faults` proxy) — worker binaries killed at random behind a faulty
//!   AWS, under load, judged by an oracle from the outside.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod aws_e2e;
mod aws_observed;
mod bounded;
mod chaos;
mod cli;
mod common;
mod config;
mod contract;
mod docs;
mod error_logs;
mod faults;
mod health;
mod hostile;
mod invariants;
mod local_db;
mod local_e2e;
mod local_proxy;
mod moto;
mod obligations;
mod observed;
mod operator;
mod sequences;
mod transitions;
