//! The JSON Schemas of `schemas/`, embedded in the binary and compiled once.
//!
//! Every inbound message and every outbound event has a schema; so has the configuration.
//! [`validate`] turns schema violations into [`FieldError`]s that name the field in the
//! reader's terms (`services[1].strategy.step_percent`), not as a JSON pointer.

use std::fmt;
use std::sync::OnceLock;

use serde_json::Value;

/// The schemas bluegreen knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaId {
    /// `schemas/config.schema.json`.
    Config,
    /// `schemas/inbound/ecr-image-action.schema.json`.
    EcrImageAction,
    /// `schemas/inbound/cloudwatch-alarm-state-change.schema.json`.
    AlarmStateChange,
    /// `schemas/inbound/operator-event.schema.json`.
    OperatorEvent,
    /// `schemas/inbound/worker-event.schema.json`.
    WorkerEvent,
    /// `schemas/inbound/cloudtrail-api-call.schema.json`.
    ApiCall,
    /// `schemas/outbound/deployment-event.schema.json`.
    OutboundEvent,
}

impl SchemaId {
    /// Every schema.
    pub const ALL: [SchemaId; 7] = [
        SchemaId::Config,
        SchemaId::EcrImageAction,
        SchemaId::AlarmStateChange,
        SchemaId::OperatorEvent,
        SchemaId::WorkerEvent,
        SchemaId::ApiCall,
        SchemaId::OutboundEvent,
    ];

    /// Path of the schema file relative to the repository root.
    #[must_use]
    pub fn path(self) -> &'static str {
        match self {
            SchemaId::Config => "schemas/config.schema.json",
            SchemaId::EcrImageAction => "schemas/inbound/ecr-image-action.schema.json",
            SchemaId::AlarmStateChange => {
                "schemas/inbound/cloudwatch-alarm-state-change.schema.json"
            }
            SchemaId::OperatorEvent => "schemas/inbound/operator-event.schema.json",
            SchemaId::WorkerEvent => "schemas/inbound/worker-event.schema.json",
            SchemaId::ApiCall => "schemas/inbound/cloudtrail-api-call.schema.json",
            SchemaId::OutboundEvent => "schemas/outbound/deployment-event.schema.json",
        }
    }

    fn source(self) -> &'static str {
        match self {
            SchemaId::Config => include_str!("../schemas/config.schema.json"),
            SchemaId::EcrImageAction => {
                include_str!("../schemas/inbound/ecr-image-action.schema.json")
            }
            SchemaId::AlarmStateChange => {
                include_str!("../schemas/inbound/cloudwatch-alarm-state-change.schema.json")
            }
            SchemaId::OperatorEvent => {
                include_str!("../schemas/inbound/operator-event.schema.json")
            }
            SchemaId::WorkerEvent => include_str!("../schemas/inbound/worker-event.schema.json"),
            SchemaId::ApiCall => {
                include_str!("../schemas/inbound/cloudtrail-api-call.schema.json")
            }
            SchemaId::OutboundEvent => {
                include_str!("../schemas/outbound/deployment-event.schema.json")
            }
        }
    }

    fn index(self) -> usize {
        match self {
            SchemaId::Config => 0,
            SchemaId::EcrImageAction => 1,
            SchemaId::AlarmStateChange => 2,
            SchemaId::OperatorEvent => 3,
            SchemaId::WorkerEvent => 4,
            SchemaId::ApiCall => 5,
            SchemaId::OutboundEvent => 6,
        }
    }
}

/// One violation: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with indices, e.g. `detail.image-digest` or `services[0].bake`;
    /// empty for the document itself.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Converts a JSON pointer (`/services/1/name`) to a dotted path (`services[1].name`).
#[must_use]
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

type Compiled = Result<jsonschema::Validator, String>;

fn compiled(id: SchemaId) -> &'static Compiled {
    static CACHE: OnceLock<Vec<Compiled>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        SchemaId::ALL
            .iter()
            .map(|id| {
                let schema: Value =
                    serde_json::from_str(id.source()).map_err(|e| format!("{}: {e}", id.path()))?;
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .map_err(|e| format!("{}: {e}", id.path()))
            })
            .collect()
    });
    &all[id.index()]
}

/// Validates `instance` against schema `id`.
///
/// # Errors
/// Every violation, each naming its field; errors are sorted by field so the output is
/// stable. A schema that fails to compile (a build defect, caught by the test suite) is
/// reported as one error on the document.
pub fn validate(id: SchemaId, instance: &Value) -> Result<(), Vec<FieldError>> {
    let validator = match compiled(id) {
        Ok(v) => v,
        Err(e) => {
            return Err(vec![FieldError {
                field: String::new(),
                message: format!("schema does not compile: {e}"),
            }]);
        }
    };
    let mut errors: Vec<FieldError> = validator
        .iter_errors(instance)
        .map(|e| FieldError {
            field: pointer_to_path(e.instance_path().as_str()),
            message: e.to_string(),
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort_by(|a, b| a.field.cmp(&b.field).then(a.message.cmp(&b.message)));
    errors.dedup();
    Err(errors)
}

/// Whether every embedded schema compiles (used by tests and `validate`).
///
/// # Errors
/// The first schema that does not compile, with the compiler's message.
pub fn check_all() -> Result<(), String> {
    SchemaId::ALL
        .iter()
        .try_for_each(|id| compiled(*id).as_ref().map(|_| ()).map_err(Clone::clone))
}
