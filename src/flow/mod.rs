//! The pure deployment flow (SPEC §2–§4): no async, no AWS types, no clock, no
//! randomness.
//!
//! * [`model`] — colours, weights, time, the per-service aggregate and its deployment;
//! * [`settings`] — per-service settings and the strategy → plan expansion;
//! * [`input`] — what can happen, each with a dedup key;
//! * [`effect`] — what a decision asks for: effects, outbound events, outcome;
//! * [`decide()`] — the transition table.
//!
//! The worker loop is: build an [`Input`], observe what [`needs`] asks for, call
//! [`decide()`], commit the new state with a conditional write, publish the events, run
//! the effects in order, and feed effect results back as inputs.

pub mod decide;
pub mod effect;
pub mod input;
pub mod model;
pub mod settings;

pub use decide::{Needs, decide, needs};
pub use effect::{
    CapacityDrift, CapacityFound, Decided, Decision, Drift, Effect, EventDetail, EventKind,
    IgnoreCode, OutboundEvent, Outcome, RejectCode, StepPosition,
};
pub use input::{
    Action, AlarmState, CheckOutcome, Input, InputKind, Observations, ProductionRules, RuleWeights,
    TargetHealth, TickKey,
};
pub use model::{
    Color, Deployment, Hold, ImageRef, LiveRevision, PendingTick, Phase, Plan, QueuedImage,
    RECENT_REJECTIONS, RejectedInput, Rollback, ServiceState, Step, SwitchOrder, Timestamp,
    Weights,
};
pub use settings::{
    Check, ColorAlarms, Concurrency, DriftPolicy, ExplicitStep, ServiceSettings, Strategy,
    Timeouts, UnreadablePolicy,
};
