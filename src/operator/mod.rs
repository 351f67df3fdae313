//! The operator's side: what `deploy`, `promote`, `approve`, `pause`, `resume`, `abort`,
//! `rollback`, `retry`, `status`, `history` and `watch` do, on AWS or on the embedded mode.
//!
//! * [`actions`] — the request an action puts where the worker reads it (the configured
//!   bus on AWS, the inbox of the embedded mode), checked first with the decision core
//!   itself, so an action the worker would refuse is refused here with the same reason,
//!   before anything is sent. The worker stays the authority: the state may move between
//!   the check and the event.
//! * [`status`] — what `status` and `history` show;
//! * [`watch`] — following one deployment to the end a command aimed at, with exit codes
//!   that say which end it was;
//! * [`console`] — where the commands act: AWS or the embedded database;
//! * [`commands`] — the command-line arguments and what each command does.

pub mod actions;
pub mod commands;
pub mod console;
pub mod status;
pub mod watch;

pub use actions::{Refusal, Request, Verb, allowed, check};
pub use commands::{ActionArgs, OperatorCommand, Output, Target};
pub use console::{Console, ConsoleError};
pub use status::{
    AlarmStatus, DeploymentView, Status, StepAt, render_history, render_status, split_bar,
};
