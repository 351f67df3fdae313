//! The test suite: one binary (compile time matters on small machines).
//!
//! * `transitions` — one test per transition of the flow;
//! * `sequences` — canned event sequences, replayed step by step and all at once;
//! * `invariants` — property tests of SPEC §4, named after the invariants;
//! * `contract` — AWS samples and every emitted event against `schemas/`;
//! * `config` — the configuration document and its errors;
//! * `cli` — the binary's commands and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cli;
mod common;
mod config;
mod contract;
mod invariants;
mod sequences;
mod transitions;
