//! From a parsed message to the decision core's inputs, one per service concerned.
//!
//! A push deploys to every service configured for the repository whose tag pattern
//! matches; an alarm concerns every service that lists it; operator events and ticks
//! name their service. Dedup keys are built here (SPEC §4 invariant 4).

use crate::fleet::Fleet;
use crate::flow::{ImageRef, Input, InputKind, Observations, TickKey, Timestamp};

use super::inbound::{Body, Message, OperatorKind};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// One input per service concerned.
    Inputs(Vec<(String, Input)>),
    /// Well-formed but deliberately ignored, with the reason.
    Ignored(String),
}

/// Why a well-formed message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// Stable code for `Event Rejected` (`unknown-service`, `wrong-account`, …).
    pub code: &'static str,
    /// One sentence.
    pub reason: String,
}

fn reject(code: &'static str, reason: String) -> Rejection {
    Rejection { code, reason }
}

/// How old an operator event may be when the worker reads it. Older ones — a week-old
/// `Deploy Requested` or `Rollback Requested` moved back from the dead-letter queue — are
/// refused (`stale-event`) instead of acted on now.
pub const OPERATOR_EVENT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Refuses an operator event older than [`OPERATOR_EVENT_MAX_AGE`] at `now` (by its
/// envelope's `time`, which EventBridge sets when the event is put). Other messages, and
/// an event without a readable time, pass.
///
/// # Errors
/// A `stale-event` [`Rejection`] naming the event's time and age.
pub fn check_age(msg: &Message, now: Timestamp) -> Result<(), Rejection> {
    if !matches!(msg.body, Body::Operator(..)) {
        return Ok(());
    }
    let Some((text, at)) = msg
        .envelope
        .time
        .as_deref()
        .and_then(|t| Timestamp::parse_rfc3339(t).ok().map(|at| (t, at)))
    else {
        return Ok(());
    };
    let age = now.since(at);
    if u128::from(age) <= OPERATOR_EVENT_MAX_AGE.as_millis() {
        return Ok(());
    }
    Err(reject(
        "stale-event",
        format!(
            "operator event put at {text} is {} old, more than {}: not acted on now; send it again if it still applies",
            humantime::format_duration(std::time::Duration::from_secs(age / 1000)),
            humantime::format_duration(OPERATOR_EVENT_MAX_AGE)
        ),
    ))
}

/// Routes `msg` for `fleet`.
///
/// # Errors
/// A [`Rejection`] for unknown services, wrong account or region, an image that cannot
/// be named, or a tick that lacks its service.
pub fn route(msg: &Message, config: &Fleet) -> Result<Routed, Rejection> {
    check_origin(msg, config)?;
    if let Some(reason) = msg.ignorable() {
        return Ok(Routed::Ignored(reason));
    }
    let env = &msg.envelope;
    match &msg.body {
        Body::Ecr(e) => {
            let registry =
                registry(env.account.as_ref(), env.region.as_ref(), config).ok_or_else(|| {
                    reject(
                        "unknown-registry",
                        "push event has no account and worker.account_id is not set".into(),
                    )
                })?;
            let image = ImageRef {
                repository: format!("{registry}/{}", e.repository_name),
                digest: Some(e.image_digest.clone()),
                tag: e.image_tag.clone(),
            };
            let inputs: Vec<(String, Input)> = config
                .services
                .iter()
                .filter(|s| s.ecr_repository == e.repository_name)
                .filter(|s| s.matches_tag(e.image_tag.as_deref()))
                .map(|s| {
                    let input = Input::new(
                        format!("push:{}", image.pinned()),
                        InputKind::Deploy {
                            image: image.clone(),
                            requested_by: "ecr-push".into(),
                            reason: e.image_tag.as_ref().map(|t| format!("pushed tag {t}")),
                            unresolved: None,
                        },
                    );
                    (s.name.clone(), input)
                })
                .collect();
            if inputs.is_empty() {
                return Ok(Routed::Ignored(format!(
                    "no service deploys repository {} with tag {}",
                    e.repository_name,
                    e.image_tag.as_deref().unwrap_or("(none)")
                )));
            }
            Ok(Routed::Inputs(inputs))
        }
        Body::Alarm(a) => {
            let inputs: Vec<(String, Input)> = config
                .services
                .iter()
                .filter(|s| s.rollback_alarms.contains(&a.alarm_name))
                .map(|s| {
                    let input = Input::new(
                        format!("alarm:{}:{}", a.alarm_name, a.state.timestamp),
                        InputKind::Alarm {
                            alarm: a.alarm_name.clone(),
                            state: a.state.value,
                            reason: a.state.reason.clone(),
                            changed_at: a.state.entered_at(),
                            observed: Observations::default(),
                        },
                    );
                    (s.name.clone(), input)
                })
                .collect();
            if inputs.is_empty() {
                return Ok(Routed::Ignored(format!(
                    "alarm {} is not a rollback alarm of any service",
                    a.alarm_name
                )));
            }
            Ok(Routed::Inputs(inputs))
        }
        Body::Operator(kind, d) => {
            let service = config.service(&d.service).ok_or_else(|| {
                reject(
                    "unknown-service",
                    format!("service {:?} is not configured", d.service),
                )
            })?;
            let key = format!("event:{}", env.id);
            let kind = match kind {
                OperatorKind::Deploy => {
                    let text = d.image.as_deref().unwrap_or_default();
                    let mut image = parse_image(text).ok_or_else(|| {
                        reject("invalid-image", format!("cannot read image {text:?}"))
                    })?;
                    // A bare repository name that is the service's ECR repository means
                    // that repository in this account's registry.
                    if image.repository == service.ecr_repository
                        && let Some(r) = registry(env.account.as_ref(), env.region.as_ref(), config)
                    {
                        image.repository = format!("{r}/{}", image.repository);
                    }
                    InputKind::Deploy {
                        image,
                        requested_by: d.requested_by.clone(),
                        reason: d.reason.clone(),
                        unresolved: None,
                    }
                }
                OperatorKind::Action(action) => InputKind::Operator {
                    action: *action,
                    deployment_id: d.deployment_id.clone(),
                    requested_by: d.requested_by.clone(),
                    reason: d.reason.clone(),
                },
                OperatorKind::ValidationReported => InputKind::HookReported {
                    deployment_id: d.deployment_id.clone().unwrap_or_default(),
                    hook: d.hook.clone().unwrap_or_default(),
                    passed: d.passed.unwrap_or(false),
                    detail: d.reason.clone(),
                },
            };
            Ok(Routed::Inputs(vec![(
                service.name.clone(),
                Input::new(key, kind),
            )]))
        }
        Body::Tick(t) => {
            if config.service(&t.service).is_none() {
                return Err(reject(
                    "unknown-service",
                    format!("tick for unconfigured service {:?}", t.service),
                ));
            }
            let tick = TickKey {
                deployment_id: t.deployment_id.clone(),
                cursor: t.cursor,
                attempt: t.attempt,
            };
            Ok(Routed::Inputs(vec![(
                t.service.clone(),
                Input::tick(tick, Observations::default()),
            )]))
        }
        Body::ApiCall(c) => {
            let Some(touched) = c.touched() else {
                return Ok(Routed::Ignored(format!("{} changes nothing", c.event_name)));
            };
            // Someone changed what a service is made of: its reconciliation now, not at
            // the next pass, finds and answers any drift.
            let inputs: Vec<(String, Input)> = config
                .services
                .iter()
                .filter(|s| s.is_made_of(&touched))
                .map(|s| {
                    let input = Input::reconcile(format!("reconcile:{}", env.id));
                    (s.name.clone(), input)
                })
                .collect();
            if inputs.is_empty() {
                return Ok(Routed::Ignored(format!(
                    "{} of {touched:?} concerns no service",
                    c.event_name
                )));
            }
            Ok(Routed::Inputs(inputs))
        }
        Body::Reconcile(r) => {
            let services: Vec<&str> = match &r.service {
                Some(name) => {
                    let s = config.service(name).ok_or_else(|| {
                        reject(
                            "unknown-service",
                            format!("service {name:?} is not configured"),
                        )
                    })?;
                    vec![s.name.as_str()]
                }
                None => config.services.iter().map(|s| s.name.as_str()).collect(),
            };
            Ok(Routed::Inputs(
                services
                    .into_iter()
                    .map(|s| {
                        (
                            s.to_string(),
                            Input::reconcile(format!("reconcile:{}", env.id)),
                        )
                    })
                    .collect(),
            ))
        }
    }
}

/// Operator actions are refused for another account or region when those are
/// configured; AWS events from elsewhere are refused the same way.
fn check_origin(msg: &Message, config: &Fleet) -> Result<(), Rejection> {
    let env = &msg.envelope;
    if let (Some(want), Some(got)) = (&config.account_id, &env.account)
        && want != got
    {
        return Err(reject(
            "wrong-account",
            format!("event from account {got}; this worker serves {want}"),
        ));
    }
    if let (Some(want), Some(got)) = (&config.region, &env.region)
        && want != got
    {
        return Err(reject(
            "wrong-region",
            format!("event from region {got}; this worker serves {want}"),
        ));
    }
    Ok(())
}

fn registry(account: Option<&String>, region: Option<&String>, config: &Fleet) -> Option<String> {
    let account = account.or(config.account_id.as_ref())?;
    let region = region.or(config.region.as_ref())?;
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    Some(format!("{account}.dkr.ecr.{region}.{suffix}"))
}

/// Reads `repository@sha256:…` or `repository:tag` (the repository may start with a
/// registry host, which may carry a port).
#[must_use]
pub fn parse_image(text: &str) -> Option<ImageRef> {
    if let Some((repository, digest)) = text.split_once('@') {
        // `repo:tag@sha256:…` is legal; the digest wins and the tag is dropped.
        let repository = strip_tag(repository);
        return (!repository.is_empty() && ImageRef::is_digest(digest)).then(|| ImageRef {
            repository: repository.to_string(),
            digest: Some(digest.to_string()),
            tag: None,
        });
    }
    let slash = text.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match text[slash..].rfind(':') {
        Some(i) => (&text[..slash + i], Some(text[slash + i + 1..].to_string())),
        None => (text, None),
    };
    (!repository.is_empty() && tag.as_deref().is_none_or(|t| !t.is_empty())).then(|| ImageRef {
        repository: repository.to_string(),
        digest: None,
        tag,
    })
}

/// `host:5000/repo:tag` → `host:5000/repo`.
fn strip_tag(repository: &str) -> &str {
    let slash = repository.rfind('/').map_or(0, |i| i + 1);
    match repository[slash..].rfind(':') {
        Some(i) => &repository[..slash + i],
        None => repository,
    }
}
