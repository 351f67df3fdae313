//! Hostile input (SPEC §4 invariants 6 and 7).
//!
//! * Named cases that must neither deploy nor roll back: another account or region, a
//!   source imitating the manual one, an alarm whose name merely contains a rollback
//!   alarm's, a repository whose name is a prefix of a configured one, a digest that is
//!   not `sha256:` and 64 hex digits, an oversized message, deeply nested JSON. Each is
//!   delivered through the production worker (see `common`) to a service mid-shift.
//! * Structured fuzzing of the whole inbound path — parse → schema → route → decide —
//!   with near-valid AWS and operator envelopes mutated at random, and raw bytes: no
//!   panic, and every refusal carries a code. `FUZZ_CASES` sets the number of messages
//!   (20 000 by default; `scripts/fuzz` runs 10 million in a release build).

use std::collections::BTreeMap;
use std::path::Path;

use bluegreen::config::Config;
use bluegreen::contract::{self, Routed, Sources};
use bluegreen::fleet::Fleet;
use bluegreen::flow::{
    EventKind, Input, InputKind, Observations, Outcome, Phase, ProductionRules, ServiceState,
    TargetHealth, Timestamp, Weights, decide,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{Value, json};

use crate::common::*;

/// A service mid-shift, on the production worker.
fn mid_shift() -> World {
    world_in(settings(), Phase::Shifting)
}

/// Delivers `body` to a service mid-shift and checks that nothing about its deployment
/// changed; returns the `Event Rejected` code published for it, if any.
fn changes_nothing(body: String) -> Option<String> {
    let mut w = mid_shift();
    let before = w.state.clone();
    let published = w.log.published.len();
    let unreadable = w.log.unreadable.len();
    let db = w.sim.db.clone();
    w.block_on(async move {
        use bluegreen::ports::Inbox;
        db.send(body, std::time::Duration::ZERO).await
    })
    .expect("send");
    // Deliver only what is visible now (not the step's tick).
    let now = w.now;
    while w.inbox().first().is_some_and(|(_, at)| *at <= now) {
        w.tick();
    }
    let (a, b) = (before.active.as_ref(), w.state.active.as_ref());
    assert_eq!(
        (a.map(|d| (&d.id, d.phase, d.step)), before.queued.clone()),
        (b.map(|d| (&d.id, d.phase, d.step)), w.state.queued.clone()),
        "the deployment changed"
    );
    assert_eq!(w.state.deployments_started, before.deployments_started);
    let message_level = w.log.unreadable[unreadable..]
        .iter()
        .find_map(|d| d["code"].as_str().map(str::to_string));
    message_level.or_else(|| {
        w.log.published[published..]
            .iter()
            .find(|e| e.kind == EventKind::Rejected)
            .and_then(|e| e.detail.code.clone())
    })
}

fn envelope(source: &str, detail_type: &str, detail: Value) -> Value {
    json!({
        "version": "0", "id": "hostile-1", "detail-type": detail_type, "source": source,
        "account": ACCOUNT, "time": "2023-11-14T22:13:20Z", "region": "us-east-1",
        "resources": [], "detail": detail
    })
}

#[test]
fn a_push_from_another_account_or_region_is_rejected() {
    let mut push = envelope::push(9);
    push["account"] = "999999999999".into();
    assert_eq!(
        changes_nothing(push.to_string()).as_deref(),
        Some("wrong-account")
    );
    let mut push = envelope::push(9);
    push["region"] = "eu-west-1".into();
    assert_eq!(
        changes_nothing(push.to_string()).as_deref(),
        Some("wrong-region")
    );
}

#[test]
fn an_alarm_from_another_account_does_not_roll_back() {
    let mut alarm = envelope::alarm("web-5xx", "2023-11-14T22:30:00.000+0000");
    alarm["account"] = "999999999999".into();
    assert_eq!(
        changes_nothing(alarm.to_string()).as_deref(),
        Some("wrong-account")
    );
}

#[test]
fn a_source_imitating_the_manual_source_is_rejected() {
    for source in [
        "bluegreen.manual ",
        "Bluegreen.Manual",
        "bluegreen.manual.evil",
        "xbluegreen.manual",
        "bluegreen\u{2024}manual",
        "bluegreen.manuaI",
    ] {
        let abort = envelope(
            source,
            "Abort Requested",
            json!({ "service": SERVICE, "requestedBy": "mallory" }),
        );
        assert_eq!(
            changes_nothing(abort.to_string()).as_deref(),
            Some("unknown-kind"),
            "{source:?}"
        );
    }
}

#[test]
fn an_alarm_whose_name_merely_contains_a_rollback_alarm_does_not_roll_back() {
    for name in ["web-5xx-canary", "prod-web-5xx", "web-5xx ", "WEB-5XX"] {
        let alarm = envelope::alarm(name, "2023-11-14T22:30:00.000+0000");
        assert_eq!(
            changes_nothing(alarm.to_string()),
            None,
            "{name} is ignored, not refused"
        );
    }
}

#[test]
fn a_push_to_a_repository_whose_name_prefixes_a_configured_one_deploys_nothing() {
    for repository in ["we", "web2", "web-api", "team/web"] {
        let mut push = envelope::push(9);
        push["detail"]["repository-name"] = repository.into();
        assert_eq!(changes_nothing(push.to_string()), None, "{repository}");
    }
}

#[test]
fn a_digest_that_is_not_sha256_and_64_hex_digits_deploys_nothing() {
    for digest in [
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha512:{}", "a".repeat(64)),
        format!("sha256:{}g", "a".repeat(63)),
        "sha256:".into(),
    ] {
        let mut push = envelope::push(9);
        push["detail"]["image-digest"] = digest.clone().into();
        assert_eq!(
            changes_nothing(push.to_string()).as_deref(),
            Some("invalid-event"),
            "{digest}"
        );
        let deploy = envelope(
            "bluegreen.manual",
            "Deploy Requested",
            json!({ "service": SERVICE, "requestedBy": "mallory", "image": format!("web@{digest}") }),
        );
        assert_eq!(
            changes_nothing(deploy.to_string()).as_deref(),
            Some("invalid-event"),
            "{digest}"
        );
    }
}

#[test]
fn an_oversized_message_is_rejected_unread() {
    let mut abort = envelope(
        "bluegreen.manual",
        "Abort Requested",
        json!({ "service": SERVICE, "requestedBy": "mallory" }),
    );
    abort["detail"]["reason"] = "x".repeat(256 * 1024 - 300).into();
    let text = abort.to_string();
    assert!(text.len() <= 256 * 1024, "fits an SQS message");
    assert_eq!(changes_nothing(text).as_deref(), Some("too-large"));
}

#[test]
fn a_message_of_exactly_the_size_limit_is_read_and_one_byte_more_is_refused() {
    let max = contract::inbound::MAX_MESSAGE_BYTES;
    let event = r#"{"version":"0","id":"x","source":"aws.ecr","detail-type":"ECR Image Action","detail":{}}"#;
    let at_limit = format!("{event}{}", " ".repeat(max - event.len()));
    assert_eq!(at_limit.len(), max);
    let read = contract::parse_str(&at_limit, &Sources::default());
    assert!(
        !matches!(read, Err(contract::ParseError::TooLarge { .. })),
        "refused at the limit"
    );
    match contract::parse_str(&format!("{at_limit} "), &Sources::default()) {
        Err(contract::ParseError::TooLarge { bytes }) => assert_eq!(bytes, max + 1),
        other => panic!("{other:?}"),
    }
}

/// Ticks and reconcile requests come only from the worker's own source: the same detail
/// types from any other source (the manual one included) are of no known kind.
#[test]
fn worker_messages_from_any_other_source_are_of_no_known_kind() {
    let sources = Sources::default();
    let message = |source: &str, detail_type: &str| {
        serde_json::json!({
            "version": "0", "id": "t-1", "source": source, "detail-type": detail_type,
            "time": "2026-01-01T00:00:00Z", "resources": [],
            "detail": {
                "service": "web", "deploymentId": "web-1", "cursor": 1, "attempt": 1,
                "due": "2026-01-01T00:00:00Z"
            }
        })
    };
    for source in [sources.manual.as_str(), "aws.ecr", "evil"] {
        for detail_type in ["Deployment Tick", "Reconcile Requested"] {
            let err =
                contract::parse(&message(source, detail_type), &sources).expect_err("refused");
            assert_eq!(err.code(), "unknown-kind", "{source} {detail_type}");
        }
    }
    assert!(contract::parse(&message(&sources.own, "Deployment Tick"), &sources).is_ok());
}

#[test]
fn deeply_nested_json_is_rejected_without_exhausting_the_stack() {
    let depth = 100_000;
    let nested = format!(
        "{{\"version\":\"0\",\"id\":\"n\",\"source\":\"aws.ecr\",\"detail-type\":\"ECR Image Action\",\"detail\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let cut = &nested[..contract::inbound::MAX_MESSAGE_BYTES.min(nested.len())];
    for text in [
        cut.to_string(),
        format!("{}1{}", "[".repeat(200), "]".repeat(200)),
    ] {
        let err = contract::parse_str(&text, &Sources::default()).expect_err("refused");
        assert!(!err.code().is_empty());
    }
    let shallow_enough = format!(
        "{{\"version\":\"0\",\"id\":\"n\",\"source\":\"aws.ecr\",\"detail-type\":\"ECR Image Action\",\"detail\":{}1{}}}",
        "[".repeat(120),
        "]".repeat(120)
    );
    assert_eq!(
        changes_nothing(shallow_enough).as_deref(),
        Some("invalid-event")
    );
}

// ---------------------------------------------------------------------------------------
// Fuzzing the inbound path

/// Near-valid envelopes to mutate: every sample the worker consumes.
fn templates() -> Vec<Value> {
    let mut out = Vec::new();
    for dir in ["aws", "valid", "invalid"] {
        let mut files: Vec<_> = std::fs::read_dir(Path::new("tests/fixtures").join(dir))
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            if let Ok(v) = serde_json::from_str::<Value>(&std::fs::read_to_string(f).expect("read"))
            {
                out.push(v);
            }
        }
    }
    out.push(envelope::push(1));
    out.push(envelope::alarm("web-5xx", "2023-11-14T22:30:00.000+0000"));
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Set a (top-level or detail) field to a value.
    Set {
        detail: bool,
        field: usize,
        value: Value,
    },
    Remove {
        detail: bool,
        field: usize,
    },
    /// Replace the source, the detail-type, or the service name.
    Source(String),
    DetailType(usize),
    Service(String),
}

const FIELDS: [&str; 22] = [
    "version",
    "id",
    "detail-type",
    "source",
    "account",
    "time",
    "region",
    "resources",
    "detail",
    "service",
    "requestedBy",
    "deploymentId",
    "image",
    "skipBake",
    "hook",
    "passed",
    "alarmName",
    "state",
    "repository-name",
    "image-digest",
    "image-tag",
    "cursor",
];

const DETAIL_TYPES: [&str; 14] = [
    "ECR Image Action",
    "CloudWatch Alarm State Change",
    "Deploy Requested",
    "Promote Requested",
    "Approve Requested",
    "Pause Requested",
    "Resume Requested",
    "Abort Requested",
    "Rollback Requested",
    "Retry Requested",
    "Validation Reported",
    "Deployment Tick",
    "Reconcile Requested",
    "Launch Missiles",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        "[a-z0-9-]{1,12}".prop_map(Value::from),
        Just(Value::from(format!("sha256:{}", "b".repeat(64)))),
        Just(Value::from("web")),
        Just(Value::from("ALARM")),
        Just(Value::from("123456789012")),
        (0usize..5000).prop_map(|n| Value::from("é".repeat(n))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z-]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<bool>(), 0..FIELDS.len(), json_value())
            .prop_map(|(detail, field, value)| Mutation::Set { detail, field, value }),
        2 => (any::<bool>(), 0..FIELDS.len()).prop_map(|(detail, field)| Mutation::Remove { detail, field }),
        1 => prop_oneof![
            Just("bluegreen.manual".to_string()),
            Just("bluegreen".to_string()),
            Just("aws.ecr".to_string()),
            Just("aws.cloudwatch".to_string()),
            ".{0,20}",
        ].prop_map(Mutation::Source),
        1 => (0..DETAIL_TYPES.len()).prop_map(Mutation::DetailType),
        1 => prop_oneof![Just("web".to_string()), Just("api".to_string()), "[a-z]{0,8}"].prop_map(Mutation::Service),
    ]
}

fn apply(mut v: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        let Some(obj) = v.as_object_mut() else {
            return v;
        };
        match m {
            Mutation::Set {
                detail,
                field,
                value,
            } => {
                let target = if *detail {
                    obj.get_mut("detail").and_then(Value::as_object_mut)
                } else {
                    Some(obj)
                };
                if let Some(t) = target {
                    t.insert(FIELDS[*field].to_string(), value.clone());
                }
            }
            Mutation::Remove { detail, field } => {
                let target = if *detail {
                    obj.get_mut("detail").and_then(Value::as_object_mut)
                } else {
                    Some(obj)
                };
                if let Some(t) = target {
                    t.remove(FIELDS[*field]);
                }
            }
            Mutation::Source(s) => {
                obj.insert("source".into(), s.clone().into());
            }
            Mutation::DetailType(i) => {
                obj.insert("detail-type".into(), DETAIL_TYPES[*i].into());
            }
            Mutation::Service(s) => {
                if let Some(d) = obj.get_mut("detail").and_then(Value::as_object_mut) {
                    d.insert("service".into(), s.clone().into());
                }
            }
        }
    }
    v
}

/// A message as text: a mutated template, or raw bytes.
fn message(templates: Vec<Value>) -> impl Strategy<Value = String> {
    let n = templates.len();
    prop_oneof![
        8 => (0..n, proptest::collection::vec(mutation(), 0..4))
            .prop_map(move |(i, ms)| apply(templates[i].clone(), &ms).to_string()),
        1 => proptest::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => ".{0,200}",
    ]
}

/// Where the inbound path ended for one message.
#[derive(Default, Debug)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    fn count(&mut self, what: String) {
        *self.0.entry(what).or_default() += 1;
    }
}

/// States the decisions are made on: a fresh service, and one mid-shift.
fn states(fleet: &Fleet) -> Vec<(String, ServiceState)> {
    let mut out = Vec::new();
    for svc in &fleet.services {
        let fresh = ServiceState::new(&svc.name, bluegreen::flow::Color::Blue);
        let mut state = fresh.clone();
        let mut now = Timestamp::from_millis(T0);
        let deploy = Input::new(
            "push:x",
            InputKind::Deploy {
                image: image(1),
                requested_by: "ecr-push".into(),
                reason: None,
                unresolved: None,
            },
        );
        state = decide(state, &svc.settings, &deploy, now).state;
        for _ in 0..12 {
            let Some(d) = state.active.clone() else { break };
            if d.phase == Phase::Shifting {
                break;
            }
            let input = match d.phase {
                Phase::Provisioning => Input::revision_registered(&d.id, "arn:td:2".into()),
                Phase::Testing | Phase::AwaitingApproval => Input::new(
                    "event:approve",
                    InputKind::Operator {
                        action: bluegreen::flow::Action::Approve,
                        deployment_id: None,
                        requested_by: "a".into(),
                        reason: None,
                    },
                ),
                _ => {
                    now = now.max(d.next_tick.map_or(now, |t| t.due));
                    let observed = Observations {
                        alarms_firing: Some(vec![]),
                        target_health: Some(TargetHealth {
                            task_definition: Some("arn:td:2".into()),
                            ..healthy()
                        }),
                        production: Some(Ok(ProductionRules::one("rule", state.serving()))),
                        read_errors: Vec::new(),
                    };
                    Input::tick(d.pending_key().expect("tick"), observed)
                }
            };
            state = decide(state, &svc.settings, &input, now).state;
        }
        out.push((svc.name.clone(), fresh));
        out.push((svc.name.clone(), state));
    }
    out
}

/// The inbound path for one message; panics (a failure) when a refusal has no code.
fn inbound(text: &str, fleet: &Fleet, states: &[(String, ServiceState)], tally: &mut Tally) {
    let sources = Sources::default();
    let msg = match contract::parse_str(text, &sources) {
        Ok(msg) => msg,
        Err(e) => {
            assert!(!e.code().is_empty(), "a parse error without a code: {e}");
            tally.count(format!("parse: {}", e.code()));
            return;
        }
    };
    let inputs = match contract::route(&msg, fleet) {
        Err(r) => {
            assert!(!r.code.is_empty() && !r.reason.is_empty(), "{r:?}");
            tally.count(format!("route: {}", r.code));
            return;
        }
        Ok(Routed::Ignored(why)) => {
            assert!(!why.is_empty());
            tally.count("route: ignored".into());
            return;
        }
        Ok(Routed::Inputs(inputs)) => inputs,
    };
    let now = Timestamp::from_millis(T0 + 3_600_000);
    for (service, input) in inputs {
        let settings = &fleet
            .service(&service)
            .expect("routed to a configured service")
            .settings;
        for (_, state) in states.iter().filter(|(s, _)| *s == service) {
            let decision = decide(state.clone(), settings, &input, now);
            for e in &decision.events {
                assert!(e.detail.weights.is_valid(), "{e:?}");
                if e.kind == EventKind::Rejected {
                    assert!(
                        e.detail.code.as_deref().is_some_and(|c| !c.is_empty()),
                        "{e:?}"
                    );
                }
            }
            let outcome = match &decision.outcome {
                Outcome::Applied => "applied".to_string(),
                Outcome::Rejected { code, .. } => format!("rejected: {}", code.as_str()),
                Outcome::Ignored { code, .. } => format!("ignored: {code:?}"),
            };
            tally.count(format!("decide: {outcome}"));
            let weights: Weights = decision.state.production_weights();
            assert!(weights.is_valid());
        }
    }
}

#[test]
fn fuzzed_messages_never_panic_the_inbound_path_and_every_refusal_has_a_code() {
    let cases: u32 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let config = Config::load(Path::new("examples/bluegreen.toml")).expect("example config");
    let mut fleet = Fleet::from(&config);
    // The fixtures name service `web` of account 123456789012 in us-west-2 and us-east-1;
    // accept both regions' events so that routing and deciding are reached.
    fleet.region = None;
    let states = states(&fleet);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let tally = std::cell::RefCell::new(Tally::default());
    let started = tokio::time::Instant::now();
    let result = runner.run(&message(templates()), |text| {
        inbound(&text, &fleet, &states, &mut tally.borrow_mut());
        Ok(())
    });
    let elapsed = started.elapsed();
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner();
    println!("inbound fuzzing: {cases} messages in {elapsed:.1?}");
    for (what, n) in &tally.0 {
        println!("  {what:<40} {n}");
    }
    let reached: u64 = tally
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("decide"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        reached > u64::from(cases) / 20,
        "too few messages reach the core to prove anything: {tally:?}"
    );
}
