//! The operator's side: what `deploy`, `promote`, `approve`, `pause`, `resume`, `abort`,
//! `rollback`, `retry`, `status`, `history` and `watch` do, on AWS or on the embedded
//! mode. Actions are operator events (SPEC §5) put where the worker reads them — the
//! configured bus on AWS, the inbox of the embedded mode — after a check of the stored
//! state with the decision core itself, so an action the worker would refuse is refused
//! here with the same reason, before anything is sent. The worker stays the authority:
//! the state may move between the check and the event.

use serde::Serialize;
use serde_json::{Value, json};

use crate::contract::{self, Routed, Sources};
use crate::fleet::Fleet;
use crate::flow::{
    self, Action, Color, Deployment, Outcome, Phase, ProductionRules, RuleWeights, ServiceState,
    Timestamp, Weights,
};

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
    /// The request itself is malformed (an image that is not `repository:tag` or
    /// `repository@sha256:…`).
    #[error("{0}")]
    Invalid(String),
}

fn phase_hint(phase: Option<Phase>) -> String {
    match phase {
        Some(p) => format!(" (phase {p}; allowed: {})", allowed(p).join(", ")),
        None => " (no deployment in progress; allowed: deploy, retry, rollback of a warm success)"
            .into(),
    }
}

/// The actions the core accepts in `phase` (for the error an operator reads).
#[must_use]
pub fn allowed(phase: Phase) -> Vec<&'static str> {
    match phase {
        Phase::Requested | Phase::Provisioning | Phase::WaitingForGreen | Phase::Testing => {
            vec!["pause", "resume", "abort", "rollback"]
        }
        Phase::AwaitingApproval => vec!["approve", "pause", "resume", "abort", "rollback"],
        Phase::Shifting | Phase::Baking => {
            vec!["promote", "pause", "resume", "abort", "rollback"]
        }
        Phase::Finalizing | Phase::RollingBack => vec![],
        Phase::Succeeded => vec!["deploy", "rollback (while the old colour is warm)"],
        Phase::RolledBack | Phase::Failed => vec!["deploy", "retry"],
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

/// An alarm and whether it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlarmStatus {
    /// The alarm's name.
    pub name: String,
    /// `ALARM`, `OK` (not in alarm), `INSUFFICIENT_DATA` (the embedded mode: too few
    /// requests to judge), or `UNKNOWN` (not read, or not judged yet).
    pub state: &'static str,
}

/// A step position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepAt {
    /// 1-based step number (0 before the first shift).
    pub index: usize,
    /// Steps in the plan.
    pub count: usize,
}

/// A deployment as `status` and `history` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// `<service>-<number>`.
    pub id: String,
    /// Phase.
    pub phase: Phase,
    /// Whether the clock is stopped.
    pub paused: bool,
    /// The colour being deployed to.
    pub target: Color,
    /// Weights it last wrote.
    pub weights: Weights,
    /// Step position.
    pub step: StepAt,
    /// Image before.
    pub from_image: Option<String>,
    /// Image deployed.
    pub to_image: String,
    /// Who asked.
    pub requested_by: String,
    /// Why it rolled back or failed, or the operator's reason.
    pub reason: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Seconds from start to end (or to now).
    pub duration_seconds: u64,
    /// When its next step is due.
    pub next_tick_due: Option<String>,
}

impl DeploymentView {
    /// The view of `d` at `now`.
    #[must_use]
    pub fn of(d: &Deployment, now: Timestamp) -> DeploymentView {
        let end = d.finished_at.unwrap_or(now);
        DeploymentView {
            id: d.id.clone(),
            phase: d.phase,
            paused: d.is_paused(),
            target: d.target,
            weights: d.weights,
            step: StepAt {
                index: if matches!(d.phase, Phase::Shifting) {
                    d.step + 1
                } else if d.weights.of(d.target) == 100 {
                    d.plan.steps.len()
                } else {
                    d.step
                },
                count: d.plan.steps.len(),
            },
            from_image: d.from_image.clone(),
            to_image: d.to_image.pinned(),
            requested_by: d.requested_by.clone(),
            reason: d
                .rollback
                .as_ref()
                .map(|r| r.reason.clone())
                .or_else(|| d.reason.clone()),
            started_at: d.started_at.rfc3339(),
            finished_at: d.finished_at.map(Timestamp::rfc3339),
            duration_seconds: end.since(d.started_at) / 1000,
            next_tick_due: d.next_tick.map(|t| t.due.rfc3339()),
        }
    }
}

/// What `status` shows for one service (schemas/cli/status.schema.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The service.
    pub service: String,
    /// The live colour.
    pub live_color: Color,
    /// The image on the live colour, when known.
    pub live_image: Option<String>,
    /// The deployment in progress.
    pub active: Option<DeploymentView>,
    /// Weights last written and read back.
    pub written_weights: Option<Weights>,
    /// Weights read from the production rules now, when they all hold the same.
    pub rule_weights: Option<Weights>,
    /// Why the rules could not be read, or that they disagree.
    pub rule_error: Option<String>,
    /// Each production rule and its weights as read now.
    pub rules: Vec<RuleWeights>,
    /// Rollback alarms and their states.
    pub alarms: Vec<AlarmStatus>,
    /// The image waiting for the active deployment to end.
    pub queued_image: Option<String>,
    /// The last finished deployment.
    pub last: Option<DeploymentView>,
}

impl Status {
    /// Builds the status from the stored state and what was read now.
    #[must_use]
    pub fn of(
        state: &ServiceState,
        rules: Result<ProductionRules, String>,
        alarms: Vec<AlarmStatus>,
        now: Timestamp,
    ) -> Status {
        let (rule_weights, rule_error, rules) = match rules {
            Ok(read) => match read.agreed() {
                Some(w) => (Some(w), None, read.rules().to_vec()),
                None => (
                    None,
                    Some(format!(
                        "the production rules disagree: {}",
                        read.describe()
                    )),
                    read.rules().to_vec(),
                ),
            },
            Err(e) => (None, Some(e), Vec::new()),
        };
        Status {
            service: state.service.clone(),
            live_color: state.live,
            live_image: state.live_image.clone(),
            active: state.active.as_ref().map(|d| DeploymentView::of(d, now)),
            written_weights: state.active.as_ref().map(|d| d.weights).or(state.confirmed),
            rule_weights,
            rule_error,
            rules,
            alarms,
            queued_image: state.queued.as_ref().map(|q| q.image.pinned()),
            last: state.last.as_ref().map(|d| DeploymentView::of(d, now)),
        }
    }

    /// The deployment `id` names, or the active one, or the last one.
    #[must_use]
    pub fn deployment(&self, id: Option<&str>) -> Option<&DeploymentView> {
        let all = [self.active.as_ref(), self.last.as_ref()];
        match id {
            Some(id) => all.into_iter().flatten().find(|d| d.id == id),
            None => all.into_iter().flatten().next(),
        }
    }
}

/// A bar of the traffic split: `blue ████████░░ green`, `width` cells.
#[must_use]
pub fn split_bar(w: Weights, width: usize) -> String {
    let green = (usize::from(w.green) * width + 50) / 100;
    format!(
        "blue {:>3}% {}{} {:>3}% green",
        w.blue,
        "█".repeat(width - green.min(width)),
        "░".repeat(green.min(width)),
        w.green
    )
}

/// `status` as text.
#[must_use]
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: live {}{}",
        s.service,
        s.live_color,
        s.live_image
            .as_deref()
            .map(|i| format!(" ({i})"))
            .unwrap_or_default()
    );
    match &s.active {
        Some(d) => {
            let _ = writeln!(
                out,
                "  deployment {}: {}{} step {}/{}, to {} ({})",
                d.id,
                d.phase,
                if d.paused { " (paused)" } else { "" },
                d.step.index,
                d.step.count,
                d.target,
                d.to_image
            );
            if let Some(due) = &d.next_tick_due {
                let _ = writeln!(out, "  next step due {due}");
            }
        }
        None => {
            let _ = writeln!(out, "  no deployment in progress");
        }
    }
    if let Some(w) = s.written_weights {
        let _ = writeln!(out, "  written: {}", split_bar(w, 20));
    }
    match (&s.rule_weights, &s.rule_error) {
        (Some(w), _) if s.rules.len() < 2 => {
            let _ = writeln!(out, "  rule:    {}", split_bar(*w, 20));
        }
        (None, Some(e)) if s.rules.is_empty() => {
            let _ = writeln!(out, "  rule:    unreadable: {e}");
        }
        _ => {
            for r in &s.rules {
                let _ = writeln!(out, "  rule:    {} {}", split_bar(r.weights, 20), r.rule);
            }
            if let Some(e) = &s.rule_error {
                let _ = writeln!(out, "  rules:   {e}");
            }
        }
    }
    for a in &s.alarms {
        let _ = writeln!(out, "  alarm {}: {}", a.name, a.state);
    }
    if let Some(q) = &s.queued_image {
        let _ = writeln!(out, "  queued: {q}");
    }
    if let Some(d) = &s.last {
        let _ = writeln!(
            out,
            "  last: {} {} {}{}",
            d.id,
            d.phase,
            d.to_image,
            d.reason
                .as_deref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        );
    }
    out
}

/// `history` as text, newest first.
#[must_use]
pub fn render_history(entries: &[DeploymentView]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for d in entries {
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:>6}s  {} → {}{}",
            d.id,
            d.phase.to_string(),
            d.duration_seconds,
            d.from_image.as_deref().unwrap_or("-"),
            d.to_image,
            d.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
    }
    if entries.is_empty() {
        out.push_str("no deployments yet\n");
    }
    out
}

/// How `watch` ends: 0 on `Succeeded`, 1 on `RolledBack` or `Failed`.
#[must_use]
pub fn exit_code(phase: Phase) -> Option<u8> {
    match phase {
        Phase::Succeeded => Some(0),
        Phase::RolledBack | Phase::Failed => Some(1),
        _ => None,
    }
}

/// Where operator commands act: AWS (the configured bus, table, rules and alarms) or the
/// embedded mode's database.
pub enum Console {
    /// AWS, from the worker's configuration.
    Aws {
        /// The adapters.
        aws: Box<crate::aws::Aws>,
        /// The services.
        fleet: Fleet,
        /// For the caller's identity.
        sts: aws_sdk_sts::Client,
    },
    /// The embedded mode, from its configuration.
    Local {
        /// Its database (shared with the running `bluegreen local`).
        db: crate::local::LocalDb,
        /// The services.
        fleet: Fleet,
        /// Rollback alarm names per service.
        alarms: std::collections::HashMap<String, Vec<String>>,
        /// The clock.
        clock: crate::ports::Clock,
    },
}

/// Why a console could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// See [`Refusal`].
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// AWS or the embedded database could not be reached or answered an error.
    #[error("{0}")]
    Unreachable(String),
}

/// One line for an AWS error an operator meets.
fn aws_error(what: &str, bus: &str, e: &impl std::fmt::Display) -> ConsoleError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    ConsoleError::Unreachable(if lower.contains("credential") {
        format!(
            "{what}: no AWS credentials (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where a role is attached): {text}"
        )
    } else if lower.contains("resourcenotfound") && what == "PutEvents" {
        format!(
            "{what}: event bus {bus:?} not found (worker.event_bus in the configuration): {text}"
        )
    } else {
        format!("{what}: {text}")
    })
}

impl Console {
    /// A console on AWS for `config` (the default credential and region chain).
    pub async fn aws(config: &crate::config::Config) -> Console {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Console::aws_with(&sdk, config)
    }

    /// A console on AWS with an explicit SDK configuration.
    #[must_use]
    pub fn aws_with(sdk: &aws_config::SdkConfig, config: &crate::config::Config) -> Console {
        Console::Aws {
            aws: Box::new(crate::aws::Aws::new(sdk, config)),
            fleet: Fleet::from(config),
            sts: aws_sdk_sts::Client::new(sdk),
        }
    }

    /// A console on the embedded mode configured by `config`.
    ///
    /// # Errors
    /// The state directory or its database cannot be opened.
    pub fn local(
        config: &crate::local::LocalConfig,
        clock: crate::ports::Clock,
    ) -> Result<Console, ConsoleError> {
        use crate::local::runtime as rt;
        std::fs::create_dir_all(&config.local.state_dir).map_err(|e| {
            ConsoleError::Unreachable(format!(
                "cannot create {}: {e}",
                config.local.state_dir.display()
            ))
        })?;
        let db = crate::local::LocalDb::open(
            &rt::db_path(&config.local.state_dir),
            clock.clone(),
            rt::queue_options(),
        )
        .map_err(|e| ConsoleError::Unreachable(e.to_string()))?;
        Ok(Console::Local {
            db,
            fleet: config.fleet(),
            alarms: config
                .services
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.alarms.iter().map(|a| a.name.clone()).collect(),
                    )
                })
                .collect(),
            clock,
        })
    }

    /// The services.
    #[must_use]
    pub fn fleet(&self) -> &Fleet {
        match self {
            Console::Aws { fleet, .. } | Console::Local { fleet, .. } => fleet,
        }
    }

    /// Now, by the console's clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        match self {
            Console::Aws { .. } => (crate::ports::system_clock())(),
            Console::Local { clock, .. } => clock(),
        }
    }

    fn known(&self, service: &str) -> Result<(), ConsoleError> {
        if self.fleet().service(service).is_some() {
            return Ok(());
        }
        Err(Refusal::UnknownService {
            service: service.to_string(),
            configured: self
                .fleet()
                .services
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        }
        .into())
    }

    /// The stored state of `service`.
    ///
    /// # Errors
    /// Unknown service, or the store cannot be read.
    pub async fn state(&self, service: &str) -> Result<ServiceState, ConsoleError> {
        use crate::ports::Store;
        self.known(service)?;
        match self {
            Console::Aws { aws, .. } => aws
                .load(service, Color::Blue)
                .await
                .map_err(|e| aws_error("GetItem", "", &e)),
            Console::Local { db, .. } => db
                .load(service, Color::Blue)
                .await
                .map_err(|e| ConsoleError::Unreachable(e.to_string())),
        }
        .map(|s| s.state)
    }

    /// Who is asking: the caller's ARN on AWS, the user on the embedded mode.
    ///
    /// # Errors
    /// AWS cannot tell (no credentials).
    pub async fn caller(&self) -> Result<String, ConsoleError> {
        match self {
            Console::Aws { sts, .. } => sts
                .get_caller_identity()
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        "GetCallerIdentity",
                        "",
                        &aws_sdk_sts::error::DisplayErrorContext(e),
                    )
                })
                .map(|out| out.arn().unwrap_or("unknown").to_string()),
            Console::Local { .. } => Ok(std::env::var("USER").unwrap_or_else(|_| "local".into())),
        }
    }

    /// Checks `request` against the stored state and sends it; returns the event id.
    ///
    /// # Errors
    /// Refused by the check, or the event could not be put.
    pub async fn send(&self, request: &Request) -> Result<String, ConsoleError> {
        let state = self.state(&request.service).await?;
        let now = self.now();
        // The embedded mode deploys versions, not images: nothing for the core to judge.
        let local_deploy =
            matches!(self, Console::Local { .. }) && matches!(request.verb, Verb::Deploy { .. });
        if !local_deploy {
            check(request, self.fleet(), &state, now)?;
        }
        match self {
            Console::Aws { aws, fleet, .. } => {
                let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .event_bus_name(&aws.bus)
                    .source(&fleet.manual_source)
                    .detail_type(request.verb.detail_type())
                    .detail(request.detail().to_string())
                    .build();
                let out = aws
                    .events
                    .put_events()
                    .entries(entry)
                    .send()
                    .await
                    .map_err(|e| {
                        aws_error(
                            "PutEvents",
                            &aws.bus,
                            &aws_sdk_eventbridge::error::DisplayErrorContext(e),
                        )
                    })?;
                let first = out.entries().first();
                match first.and_then(|e| e.event_id()) {
                    Some(id) if out.failed_entry_count() == 0 => Ok(id.to_string()),
                    _ => Err(ConsoleError::Unreachable(format!(
                        "PutEvents refused the event: {}",
                        first
                            .and_then(|e| e.error_message())
                            .unwrap_or("no reason given")
                    ))),
                }
            }
            Console::Local { db, clock, .. } => {
                if let Verb::Deploy { image } = &request.verb {
                    // The embedded mode deploys versions: the image is the version label.
                    let image = crate::local::runtime::enqueue_deploy(
                        db,
                        clock,
                        &request.service,
                        image,
                        &request.requested_by,
                    )
                    .await
                    .map_err(|e| ConsoleError::Unreachable(e.to_string()))?;
                    return Ok(format!("local-deploy:{image}"));
                }
                let id = format!(
                    "local-{}-{}-{}",
                    request.verb.name(),
                    request.service,
                    now.millis()
                );
                let body = request.envelope(&id, &self.fleet().manual_source, now);
                crate::ports::Inbox::send(db, body.to_string(), std::time::Duration::ZERO)
                    .await
                    .map_err(|e| ConsoleError::Unreachable(e.to_string()))?;
                Ok(id)
            }
        }
    }

    /// The status of `service`: stored state, the rule read now, the alarms.
    ///
    /// # Errors
    /// Unknown service, or the store cannot be read.
    pub async fn status(&self, service: &str) -> Result<Status, ConsoleError> {
        use crate::ports::{Alarms, Traffic};
        let state = self.state(service).await?;
        let names: Vec<String> = match self {
            Console::Aws { fleet, .. } => fleet
                .service(service)
                .map(|s| s.rollback_alarms.clone())
                .unwrap_or_default(),
            Console::Local { alarms, .. } => alarms.get(service).cloned().unwrap_or_default(),
        };
        let (rule, alarms) = match self {
            Console::Aws { aws, .. } => {
                let rule = aws.production(service).await.map_err(|e| e.to_string());
                let alarms = match aws.firing(&names).await {
                    Ok(firing) => names
                        .iter()
                        .map(|n| AlarmStatus {
                            name: n.clone(),
                            state: if firing.contains(n) { "ALARM" } else { "OK" },
                        })
                        .collect(),
                    Err(_) => unknown_alarms(&names),
                };
                (rule, alarms)
            }
            Console::Local { db, .. } => {
                // The router's weights as the running `bluegreen local` persisted them;
                // its alarms are evaluated in that process only.
                let rule = match db.get(&crate::local::world::weights_key(service)) {
                    Ok(Some(text)) => serde_json::from_str(&text)
                        .map(|w| ProductionRules::one(crate::local::world::router_name(service), w))
                        .map_err(|e| e.to_string()),
                    Ok(None) => Err("the embedded router has not started yet".into()),
                    Err(e) => Err(e.to_string()),
                };
                // As the running `bluegreen local` last judged them.
                let alarms = names
                    .iter()
                    .map(|n| AlarmStatus {
                        name: n.clone(),
                        state: match db.get(&crate::local::alarms::alarm_key(n)) {
                            Ok(Some(s)) if s == "ALARM" => "ALARM",
                            Ok(Some(s)) if s == "OK" => "OK",
                            Ok(Some(_)) => "INSUFFICIENT_DATA",
                            _ => "UNKNOWN",
                        },
                    })
                    .collect();
                (rule, alarms)
            }
        };
        Ok(Status::of(&state, rule, alarms, self.now()))
    }

    /// Up to `limit` finished and running deployments of `service`, newest first.
    ///
    /// # Errors
    /// Unknown service, or the store cannot be read.
    pub async fn history(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentView>, ConsoleError> {
        let now = self.now();
        let records: Vec<Deployment> = match self {
            Console::Aws { aws, .. } => {
                let state = self.state(service).await?;
                let mut out = Vec::new();
                let newest = state.deployments_started;
                for number in (1..=newest).rev().take(limit) {
                    let id = format!("{service}-{number}");
                    match aws.deployment_record(&id).await {
                        Ok(Some(d)) => out.push(d),
                        Ok(None) => {}
                        Err(e) => return Err(aws_error("GetItem", "", &e)),
                    }
                }
                out
            }
            Console::Local { db, .. } => {
                self.known(service)?;
                db.deployments(service)
                    .map_err(|e| ConsoleError::Unreachable(e.to_string()))?
                    .iter()
                    .filter_map(|text| serde_json::from_str(text).ok())
                    .take(limit)
                    .collect()
            }
        };
        Ok(records.iter().map(|d| DeploymentView::of(d, now)).collect())
    }
}

fn unknown_alarms(names: &[String]) -> Vec<AlarmStatus> {
    names
        .iter()
        .map(|n| AlarmStatus {
            name: n.clone(),
            state: "UNKNOWN",
        })
        .collect()
}
