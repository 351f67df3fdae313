//! Operator actions: the request an operator command puts where the worker reads it, and
//! the check of that request with the decision core before anything is sent.

use serde_json::{Value, json};

use crate::contract::{self, Routed, Sources};
use crate::fleet::Fleet;
use crate::flow::{self, Action, Outcome, Phase, ServiceState, Timestamp};

/// An operator action: a deployment of an image, or one of the core's actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// Deploy an image (`repository:tag` or `repository@sha256:…`).
    Deploy {
        /// The image.
        image: String,
    },
    /// Promote, approve, pause, resume, abort, roll back or retry.
    Act(Action),
}

impl Verb {
    /// The event's `detail-type`.
    #[must_use]
    pub fn detail_type(&self) -> &'static str {
        match self {
            Verb::Deploy { .. } => "Deploy Requested",
            Verb::Act(Action::Promote { .. }) => "Promote Requested",
            Verb::Act(Action::Approve) => "Approve Requested",
            Verb::Act(Action::Pause) => "Pause Requested",
            Verb::Act(Action::Resume) => "Resume Requested",
            Verb::Act(Action::Abort) => "Abort Requested",
            Verb::Act(Action::Rollback) => "Rollback Requested",
            Verb::Act(Action::Retry) => "Retry Requested",
            Verb::Act(Action::Switch { .. }) => "Switch Requested",
        }
    }

    /// The command's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Verb::Deploy { .. } => "deploy",
            Verb::Act(action) => action.as_str(),
        }
    }
}

/// One operator request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The service.
    pub service: String,
    /// What to do.
    pub verb: Verb,
    /// The deployment it is meant for (default: the one the action applies to).
    pub deployment: Option<String>,
    /// Why, for the record.
    pub reason: Option<String>,
    /// Who asks.
    pub requested_by: String,
}

impl Request {
    /// The event's `detail` (schemas/inbound/operator-event.schema.json).
    #[must_use]
    pub fn detail(&self) -> Value {
        let mut detail = json!({ "service": self.service, "requestedBy": self.requested_by });
        if let Some(id) = &self.deployment {
            detail["deploymentId"] = json!(id);
        }
        if let Some(reason) = &self.reason {
            detail["reason"] = json!(reason);
        }
        match &self.verb {
            Verb::Deploy { image } => detail["image"] = json!(image),
            Verb::Act(Action::Promote { skip_bake: true }) => detail["skipBake"] = json!(true),
            Verb::Act(Action::Switch { to, force }) => {
                detail["to"] = json!(to);
                if *force {
                    detail["force"] = json!(true);
                }
            }
            _ => {}
        }
        detail
    }

    /// The whole EventBridge envelope, as the worker receives it.
    #[must_use]
    pub fn envelope(&self, id: &str, source: &str, now: Timestamp) -> Value {
        json!({
            "version": "0",
            "id": id,
            "detail-type": self.verb.detail_type(),
            "source": source,
            "time": now.rfc3339(),
            "resources": [],
            "detail": self.detail(),
        })
    }
}

/// Why an operator command did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The service is not configured.
    #[error("unknown service {service:?}; configured: {}", configured.join(", "))]
    UnknownService {
        /// What was asked for.
        service: String,
        /// What exists.
        configured: Vec<String>,
    },
    /// The decision core refuses the action in the current state.
    #[error("{action} refused for {service}: {reason}{}", phase_hint(*phase))]
    Refused {
        /// The command.
        action: &'static str,
        /// The service.
        service: String,
        /// The core's reason.
        reason: String,
        /// The active deployment's phase, if any.
        phase: Option<Phase>,
    },
    /// There is nothing to act on or to follow (no such deployment in progress or last).
    #[error("{0}")]
    Nothing(String),
    /// The request itself is malformed (an image that is not `repository:tag` or
    /// `repository@sha256:…`).
    #[error("{0}")]
    Invalid(String),
}

fn phase_hint(phase: Option<Phase>) -> String {
    match phase {
        Some(p) => format!(" (phase {p}; allowed: {})", allowed(p).join(", ")),
        None => " (no deployment in progress; allowed: deploy, retry, switch, rollback of a warm success)"
            .into(),
    }
}

/// The actions the core accepts in `phase` (for the error an operator reads).
#[must_use]
pub fn allowed(phase: Phase) -> Vec<&'static str> {
    match phase {
        Phase::Requested | Phase::Provisioning | Phase::WaitingForGreen | Phase::Testing => {
            vec![
                "pause",
                "resume",
                "abort",
                "rollback",
                "switch (to the known-good colour)",
            ]
        }
        Phase::AwaitingApproval => vec![
            "approve",
            "pause",
            "resume",
            "abort",
            "rollback",
            "switch (to the known-good colour)",
        ],
        Phase::Shifting => vec![
            "promote",
            "pause",
            "resume",
            "abort",
            "rollback",
            "switch (to the known-good colour)",
        ],
        Phase::Baking => vec![
            "promote --skip-bake",
            "pause",
            "resume",
            "abort",
            "rollback",
            "switch (to the known-good colour)",
        ],
        Phase::Finalizing | Phase::RollingBack => vec![],
        Phase::Succeeded => vec![
            "deploy",
            "rollback (while the old colour is warm)",
            "switch",
        ],
        Phase::RolledBack | Phase::Failed => vec!["deploy", "retry", "switch"],
    }
}

/// Checks `request` against `fleet` and the stored `state` with the decision core: the
/// same parse → route → decide path the worker takes. `Ok` means the worker would accept
/// it now (a deploy by tag is checked up to its tag resolution, which the worker does).
///
/// # Errors
/// The service is unknown, the request malformed, or the core refuses it.
pub fn check(
    request: &Request,
    fleet: &Fleet,
    state: &ServiceState,
    now: Timestamp,
) -> Result<(), Refusal> {
    let Some(service) = fleet.service(&request.service) else {
        return Err(Refusal::UnknownService {
            service: request.service.clone(),
            configured: fleet.services.iter().map(|s| s.name.clone()).collect(),
        });
    };
    let sources = Sources {
        own: fleet.source.clone(),
        manual: fleet.manual_source.clone(),
    };
    let envelope = request.envelope("precheck", &fleet.manual_source, now);
    let message = contract::parse_str(&envelope.to_string(), &sources)
        .map_err(|e| Refusal::Invalid(e.to_string()))?;
    let inputs = match contract::route(&message, fleet) {
        Ok(Routed::Inputs(inputs)) => inputs,
        Ok(Routed::Ignored(why)) => return Err(Refusal::Invalid(why)),
        Err(e) => return Err(Refusal::Invalid(e.reason)),
    };
    if matches!(request.verb, Verb::Deploy { .. }) {
        // A tag is resolved to a digest by the worker (ECR); nothing more to judge here.
        return Ok(());
    }
    for (_, input) in inputs {
        let decision = flow::decide(state.clone(), &service.settings, &input, now);
        if let Outcome::Rejected { reason, .. } = decision.outcome {
            return Err(Refusal::Refused {
                action: request.verb.name(),
                service: request.service.clone(),
                reason,
                phase: state.active.as_ref().map(|d| d.phase),
            });
        }
    }
    Ok(())
}
