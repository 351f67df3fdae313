//! The schedule a service's strategy produces, for `bluegreen plan`.
//!
//! Offsets count from the first traffic shift (provisioning, health and testing take as
//! long as they take). Weights assume blue is live and green is the new colour.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::ServiceConfig;
use crate::flow::{Hold, Plan};

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    /// 1-based.
    pub index: usize,
    /// Seconds after the first shift at which this step applies (at the earliest).
    pub offset_seconds: u64,
    /// Blue (old colour) weight.
    pub blue: u8,
    /// Green (new colour) weight.
    pub green: u8,
    /// What must happen before this step applies, beyond time passing.
    pub gate: Option<String>,
}

/// The schedule of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    /// Service name.
    pub service: String,
    /// Strategy in words.
    pub strategy: String,
    /// Gates before the first shift (`validations`, `approval`).
    pub gates_before_shift: Vec<String>,
    /// Ordered steps.
    pub steps: Vec<PlannedStep>,
    /// Bake after 100 %.
    pub bake_seconds: u64,
    /// Old colour kept warm after success.
    pub termination_wait_seconds: u64,
    /// First shift → success: last step offset + bake.
    pub total_seconds: u64,
    /// Whether some step waits for `promote`; then `totalSeconds` excludes that wait.
    pub waits_for_promote: bool,
}

/// Computes the schedule of `service`.
#[must_use]
pub fn plan_service(service: &ServiceConfig) -> ServicePlan {
    let settings = service.settings();
    schedule(
        &service.name,
        &settings.strategy.describe(),
        &settings.plan(),
    )
}

/// Computes the schedule of a plan.
#[must_use]
pub fn schedule(service: &str, strategy: &str, plan: &Plan) -> ServicePlan {
    let mut offset_ms = 0u64;
    let mut gate: Option<String> = None;
    let mut steps = Vec::new();
    let mut waits_for_promote = false;
    for (i, step) in plan.steps.iter().enumerate() {
        steps.push(PlannedStep {
            index: i + 1,
            offset_seconds: offset_ms / 1000,
            blue: 100 - step.percent,
            green: step.percent,
            gate: gate.take(),
        });
        match step.hold {
            Hold::Timed(ms) => offset_ms = offset_ms.saturating_add(ms),
            Hold::UntilPromote => {
                waits_for_promote = true;
                gate = Some("promote".into());
            }
        }
    }
    let mut gates_before_shift = Vec::new();
    if !plan.checks.is_empty() {
        gates_before_shift.push(format!("validations ({})", plan.checks.len()));
    }
    if plan.approval {
        gates_before_shift.push("approval".into());
    }
    let last_offset = steps.last().map_or(0, |s| s.offset_seconds);
    ServicePlan {
        service: service.to_string(),
        strategy: strategy.to_string(),
        gates_before_shift,
        steps,
        bake_seconds: plan.bake_ms / 1000,
        termination_wait_seconds: plan.termination_wait_ms / 1000,
        total_seconds: last_offset + plan.bake_ms / 1000,
        waits_for_promote,
    }
}

fn human(seconds: u64) -> String {
    if seconds == 0 {
        return "0s".into();
    }
    humantime::format_duration(std::time::Duration::from_secs(seconds))
        .to_string()
        .replace(' ', "")
}

/// Renders plans as a table for humans.
#[must_use]
pub fn render_text(plans: &[ServicePlan]) -> String {
    let mut out = String::new();
    for p in plans {
        let _ = writeln!(
            out,
            "{}: {}, bake {}, termination wait {} (blue live, deploying to green)",
            p.service,
            p.strategy,
            human(p.bake_seconds),
            human(p.termination_wait_seconds)
        );
        if !p.gates_before_shift.is_empty() {
            let _ = writeln!(
                out,
                "  before the first shift: {}",
                p.gates_before_shift.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  {:>4}  {:>8}  {:>4}  {:>5}  gate",
            "step", "offset", "blue", "green"
        );
        for s in &p.steps {
            let _ = writeln!(
                out,
                "  {:>4}  {:>8}  {:>4}  {:>5}  {}",
                s.index,
                human(s.offset_seconds),
                s.blue,
                s.green,
                s.gate.as_deref().unwrap_or("-")
            );
        }
        let last = p.steps.last().map_or(0, |s| s.offset_seconds);
        let _ = writeln!(out, "  bake {} → {}", human(last), human(p.total_seconds));
        let _ = writeln!(
            out,
            "  total {}{} (shift {} + bake {}); blue released {} after success",
            if p.waits_for_promote { "at least " } else { "" },
            human(p.total_seconds),
            human(last),
            human(p.bake_seconds),
            human(p.termination_wait_seconds)
        );
    }
    out
}
