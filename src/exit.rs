//! The exit codes of the `bluegreen` binary: one meaning each, the same for every command
//! (docs/commands.md). A pipeline can tell "rolled back" from "still running" from "the
//! network is down" without reading the output.

/// The command did what it was asked: the document is valid, the action was sent, or the
/// deployment followed reached the end the command aimed at (`Succeeded` for `watch` and
/// `deploy --wait`, `RolledBack` for `abort --wait` and `rollback --wait`, paused for
/// `pause --wait`).
pub const OK: u8 = 0;
/// Invalid input: a configuration, an event file or an argument the command cannot use.
/// Retrying the same command will not help.
pub const INVALID: u8 = 1;
/// Usage error (clap's own code for unknown flags and missing arguments).
pub const USAGE: u8 = 2;
/// An operator action refused before anything was sent (unknown service, no deployment
/// to act on, an action the phase does not allow), or a deployment that was asked for
/// and never started (the worker rejected the event, or the image does not deploy).
pub const REFUSED: u8 = 3;
/// AWS or the embedded database could not be reached (no credentials, the bus not found,
/// the network). Retrying later may help.
pub const UNREACHABLE: u8 = 4;
/// `--timeout` ran out before the deployment reached an end; it may still be running.
pub const TIMED_OUT: u8 = 5;
/// The deployment followed was rolled back (production is on the colour it started on).
pub const ROLLED_BACK: u8 = 6;
/// The deployment followed failed: even its rollback could not complete, or a start check
/// refused it. Someone must look.
pub const FAILED: u8 = 7;
