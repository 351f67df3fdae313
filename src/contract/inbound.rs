//! Inbound messages: EventBridge envelopes as they arrive on the queue.
//!
//! [`parse`] classifies a message by `source` and `detail-type`, checks it against the
//! matching schema (so errors name the field), then deserializes the typed detail.
//! Unknown fields are tolerated everywhere AWS may add them; `account` may be missing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::{Action, Color};
use crate::schema::{self, FieldError, SchemaId};

/// The sources the worker accepts its own and operators' events from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// `source` of the worker's own messages and outbound events.
    pub own: String,
    /// `source` of operator events.
    pub manual: String,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            own: "bluegreen".into(),
            manual: "bluegreen.manual".into(),
        }
    }
}

/// Envelope fields common to every EventBridge event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version (`"0"`).
    #[serde(default)]
    pub version: Option<String>,
    /// EventBridge event id (dedup key of operator events).
    pub id: String,
    /// Detail type.
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    /// Source.
    pub source: String,
    /// Account; missing in some emulators' deliveries.
    #[serde(default)]
    pub account: Option<String>,
    /// Event time (RFC 3339).
    #[serde(default)]
    pub time: Option<String>,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Resource ARNs.
    #[serde(default)]
    pub resources: Vec<String>,
}

/// `ECR Image Action` detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcrImageAction {
    /// `PUSH` or `DELETE`.
    #[serde(rename = "action-type")]
    pub action_type: String,
    /// `SUCCESS` or `FAILURE`.
    pub result: String,
    /// Repository name.
    #[serde(rename = "repository-name")]
    pub repository_name: String,
    /// `sha256:…`.
    #[serde(rename = "image-digest")]
    pub image_digest: String,
    /// Pushed tag, if any.
    #[serde(rename = "image-tag", default)]
    pub image_tag: Option<String>,
}

/// `CloudWatch Alarm State Change` detail (metric and composite alarms alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmStateChange {
    /// Alarm name.
    #[serde(rename = "alarmName")]
    pub alarm_name: String,
    /// New state.
    pub state: AlarmStateValue,
    /// Previous state.
    #[serde(rename = "previousState", default)]
    pub previous_state: Option<AlarmStateValue>,
}

/// One alarm state in an alarm event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmStateValue {
    /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
    pub value: crate::flow::AlarmState,
    /// CloudWatch's explanation.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the state was entered (part of the dedup key).
    pub timestamp: String,
}

impl AlarmStateValue {
    /// When the state was entered, if `timestamp` is readable: CloudWatch writes
    /// `2019-10-02T17:04:40.985+0000` (UTC, offset without a colon); RFC 3339 in UTC is
    /// read too. Any other offset reads as unknown.
    #[must_use]
    pub fn entered_at(&self) -> Option<crate::flow::Timestamp> {
        let t = self.timestamp.trim();
        let utc = t
            .strip_suffix("+0000")
            .or_else(|| t.strip_suffix("+00:00"))
            .map_or_else(|| t.to_string(), |s| format!("{s}Z"));
        crate::flow::Timestamp::parse_rfc3339(&utc).ok()
    }
}

/// Detail of every operator event.
#[derive(Default, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorDetail {
    /// Service name.
    pub service: String,
    /// Deployment; default: active, else last.
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// `Deploy Requested`: the image.
    #[serde(default)]
    pub image: Option<String>,
    /// `Promote Requested`: also skip the bake.
    #[serde(default)]
    pub skip_bake: bool,
    /// `Switch Requested`: the colour to make live.
    #[serde(default)]
    pub to: Option<Color>,
    /// `Switch Requested`: move without waiting for healthy targets.
    #[serde(default)]
    pub force: bool,
    /// `Validation Reported`: the hook.
    #[serde(default)]
    pub hook: Option<String>,
    /// `Validation Reported`: the verdict.
    #[serde(default)]
    pub passed: Option<bool>,
}

/// Detail of a `Deployment Tick`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TickDetail {
    /// Service name.
    pub service: String,
    /// Deployment.
    pub deployment_id: String,
    /// Cursor.
    pub cursor: u32,
    /// Attempt.
    pub attempt: u32,
    /// When it is due (RFC 3339); a tick arriving early is re-delayed.
    pub due: String,
}

/// Detail of a `Reconcile Requested`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileDetail {
    /// One service, or all when absent.
    #[serde(default)]
    pub service: Option<String>,
}

/// `AWS API Call via CloudTrail` detail: a write to a load balancer or ECS by anyone (a
/// stack update, the console, a script).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiCall {
    /// `elasticloadbalancing.amazonaws.com` or `ecs.amazonaws.com`.
    pub event_source: String,
    /// The operation (`ModifyRule`, `UpdateService`, …).
    pub event_name: String,
    /// The call's parameters as CloudTrail recorded them.
    #[serde(default)]
    pub request_parameters: Option<Value>,
    /// Set when the call failed.
    #[serde(default)]
    pub error_code: Option<String>,
}

/// What an API call changed, of what a service is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// A listener rule, by ARN.
    Rule(String),
    /// A listener, by ARN.
    Listener(String),
    /// An ECS service, by name (the last part of an ARN).
    EcsService(String),
}

impl Touched {
    /// The ARN or name that identifies what was touched.
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Touched::Rule(id) | Touched::Listener(id) | Touched::EcsService(id) => id,
        }
    }
}

impl ApiCall {
    /// The resource the call changed, if it is one a service can be made of.
    #[must_use]
    pub fn touched(&self) -> Option<Touched> {
        let param = |k: &str| {
            self.request_parameters
                .as_ref()
                .and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        match self.event_name.as_str() {
            "ModifyRule" | "DeleteRule" => param("ruleArn").map(Touched::Rule),
            "ModifyListener" => param("listenerArn").map(Touched::Listener),
            "UpdateService" | "DeleteService" => param("service")
                .and_then(|s| s.rsplit('/').next().map(str::to_string))
                .map(Touched::EcsService),
            _ => None,
        }
    }
}

/// Operator detail-types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorKind {
    /// `Deploy Requested`.
    Deploy,
    /// One of the actions.
    Action(Action),
    /// `Validation Reported`.
    ValidationReported,
}

impl OperatorKind {
    /// Maps a `detail-type` to a kind; the detail completes `Promote` (`skipBake`) and
    /// `Switch` (`to`, `force`; `None` without `to`).
    #[must_use]
    pub fn from_detail_type(detail_type: &str, detail: &OperatorDetail) -> Option<OperatorKind> {
        Some(match detail_type {
            "Deploy Requested" => OperatorKind::Deploy,
            "Promote Requested" => OperatorKind::Action(Action::Promote {
                skip_bake: detail.skip_bake,
            }),
            "Switch Requested" => OperatorKind::Action(Action::Switch {
                to: detail.to?,
                force: detail.force,
            }),
            "Approve Requested" => OperatorKind::Action(Action::Approve),
            "Pause Requested" => OperatorKind::Action(Action::Pause),
            "Resume Requested" => OperatorKind::Action(Action::Resume),
            "Abort Requested" => OperatorKind::Action(Action::Abort),
            "Rollback Requested" => OperatorKind::Action(Action::Rollback),
            "Retry Requested" => OperatorKind::Action(Action::Retry),
            "Validation Reported" => OperatorKind::ValidationReported,
            _ => return None,
        })
    }
}

/// Whether `detail_type` is one of the operator events (`Switch Requested` included).
fn is_operator_detail_type(detail_type: &str) -> bool {
    let any = OperatorDetail {
        to: Some(Color::Blue),
        ..OperatorDetail::default()
    };
    OperatorKind::from_detail_type(detail_type, &any).is_some()
}

/// A classified, schema-checked inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// An ECR push or delete.
    Ecr(EcrImageAction),
    /// An alarm state change.
    Alarm(AlarmStateChange),
    /// An operator event.
    Operator(OperatorKind, OperatorDetail),
    /// One of the worker's ticks.
    Tick(TickDetail),
    /// A reconciler run.
    Reconcile(ReconcileDetail),
    /// A write to a load balancer or ECS, recorded by CloudTrail.
    ApiCall(ApiCall),
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Envelope fields.
    pub envelope: Envelope,
    /// Typed detail.
    pub body: Body,
}

impl Message {
    /// Why the worker would deliberately ignore this well-formed message, if it would
    /// (a failed push, a delete, an alarm leaving ALARM).
    #[must_use]
    pub fn ignorable(&self) -> Option<String> {
        match &self.body {
            Body::Ecr(e) if e.action_type != "PUSH" => {
                Some(format!("ECR action {} does not deploy", e.action_type))
            }
            Body::Ecr(e) if e.result != "SUCCESS" => {
                Some(format!("ECR push result {} does not deploy", e.result))
            }
            Body::ApiCall(c) if c.error_code.is_some() => Some(format!(
                "{} failed ({}): nothing changed",
                c.event_name,
                c.error_code.as_deref().unwrap_or_default()
            )),
            Body::ApiCall(c) if c.touched().is_none() => Some(format!(
                "{} changes nothing a service is made of",
                c.event_name
            )),
            Body::Alarm(a) if a.state.value != crate::flow::AlarmState::Alarm => Some(format!(
                "alarm {} changed to {:?}; only ALARM rolls back",
                a.alarm_name, a.state.value
            )),
            _ => None,
        }
    }
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Parser message.
        message: String,
    },
    /// JSON, but the envelope lacks `source` or `detail-type`, or names a kind the
    /// worker does not know.
    #[error("unknown event kind: source {event_source:?}, detail-type {detail_type:?}")]
    UnknownKind {
        /// `source`, as given.
        event_source: String,
        /// `detail-type`, as given.
        detail_type: String,
    },
    /// A known kind whose fields are wrong; the first error names the field.
    #[error("{}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// Larger than any event the worker consumes; not parsed at all.
    #[error(
        "message of {bytes} bytes is larger than the {MAX_MESSAGE_BYTES} bytes any event bluegreen consumes may have"
    )]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

/// The largest message the worker parses. The events it consumes are a few KiB (an
/// alarm with its metric configuration is the largest); SQS allows 256 KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

impl ParseError {
    /// Stable machine-readable code for `Event Rejected`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::Malformed { .. } => "malformed-json",
            ParseError::UnknownKind { .. } => "unknown-kind",
            ParseError::Invalid(_) => "invalid-event",
            ParseError::TooLarge { .. } => "too-large",
        }
    }
}

fn describe(errors: &[FieldError]) -> String {
    match errors {
        [] => "invalid event".into(),
        [one] => format!("invalid event: {one}"),
        [first, rest @ ..] => format!("invalid event: {first} (and {} more)", rest.len()),
    }
}

/// Parses message text.
///
/// # Errors
/// See [`ParseError`]. Never panics, whatever the input.
pub fn parse_str(text: &str, sources: &Sources) -> Result<Message, ParseError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge { bytes: text.len() });
    }
    // serde_json refuses nesting deeper than 128 levels, so hostile depth cannot
    // exhaust the stack.
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::Malformed {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    parse(&value, sources)
}

/// Which schema a message must satisfy, from its `source` and `detail-type`.
///
/// # Errors
/// [`ParseError::UnknownKind`] when the pair is not one the worker consumes.
pub fn classify(value: &Value, sources: &Sources) -> Result<SchemaId, ParseError> {
    let field = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or_default();
    let (source, detail_type) = (field("source"), field("detail-type"));
    let unknown = || ParseError::UnknownKind {
        event_source: source.to_string(),
        detail_type: detail_type.to_string(),
    };
    if !value.is_object() {
        return Err(ParseError::Invalid(vec![FieldError {
            field: String::new(),
            message: "an event must be a JSON object".into(),
        }]));
    }
    match (source, detail_type) {
        ("aws.ecr", "ECR Image Action") => Ok(SchemaId::EcrImageAction),
        ("aws.cloudwatch", "CloudWatch Alarm State Change") => Ok(SchemaId::AlarmStateChange),
        (s, d) if s == sources.manual && is_operator_detail_type(d) => Ok(SchemaId::OperatorEvent),
        ("aws.elasticloadbalancing" | "aws.ecs", "AWS API Call via CloudTrail") => {
            Ok(SchemaId::ApiCall)
        }
        (s, "Deployment Tick" | "Reconcile Requested") if s == sources.own => {
            Ok(SchemaId::WorkerEvent)
        }
        _ => Err(unknown()),
    }
}

/// Parses a JSON value.
///
/// # Errors
/// See [`ParseError`].
pub fn parse(value: &Value, sources: &Sources) -> Result<Message, ParseError> {
    let schema_id = classify(value, sources)?;
    schema::validate(schema_id, value).map_err(ParseError::Invalid)?;
    let typed = |e: serde_json::Error| {
        ParseError::Invalid(vec![FieldError {
            field: String::new(),
            message: e.to_string(),
        }])
    };
    let envelope: Envelope = serde_json::from_value(value.clone()).map_err(typed)?;
    let detail = value.get("detail").cloned().unwrap_or(Value::Null);
    let body = match schema_id {
        SchemaId::EcrImageAction => Body::Ecr(serde_json::from_value(detail).map_err(typed)?),
        SchemaId::AlarmStateChange => Body::Alarm(serde_json::from_value(detail).map_err(typed)?),
        SchemaId::OperatorEvent => {
            let detail: OperatorDetail = serde_json::from_value(detail).map_err(typed)?;
            let kind = OperatorKind::from_detail_type(&envelope.detail_type, &detail).ok_or_else(
                || ParseError::UnknownKind {
                    event_source: envelope.source.clone(),
                    detail_type: envelope.detail_type.clone(),
                },
            )?;
            Body::Operator(kind, detail)
        }
        SchemaId::ApiCall => Body::ApiCall(serde_json::from_value(detail).map_err(typed)?),
        _ if envelope.detail_type == "Deployment Tick" => {
            Body::Tick(serde_json::from_value(detail).map_err(typed)?)
        }
        _ => Body::Reconcile(serde_json::from_value(detail).map_err(typed)?),
    };
    Ok(Message { envelope, body })
}
