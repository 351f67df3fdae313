//! The event contract: AWS documentation samples, operator and worker messages, broken
//! messages, hostile input, and every event the core emits, against `schemas/`.

use std::collections::HashSet;
use std::path::Path;

use bluegreen::config::Config;
use bluegreen::contract::{self, Body, Entry, ParseError, Routed, Sources, parse_image};
use bluegreen::fleet::Fleet;
use bluegreen::flow::{
    Action, Check, Color, Concurrency, EventKind, InputKind, Phase, TargetHealth, Weights,
};
use bluegreen::schema::{self, SchemaId};
use proptest::prelude::*;

use crate::common::*;

fn fixtures(dir: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new("tests/fixtures").join(dir))
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {dir}");
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, std::fs::read_to_string(&p).expect("read"))
        })
        .collect()
}

#[test]
fn every_schema_compiles() {
    schema::check_all().expect("schemas compile");
}

#[test]
fn every_aws_documentation_sample_validates_and_parses() {
    for (name, mut text) in fixtures("aws") {
        if name.starts_with("ecr") {
            // The documentation's sample digest has 60 hex digits, not 64: a digest that
            // cannot name an image is refused, naming the field.
            let err = contract::parse_str(&text, &Sources::default()).expect_err("short digest");
            assert!(err.to_string().contains("detail.image-digest"), "{err}");
            text = text.replace("abcd1234\"", "abcd12345678\"");
        }
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let id = contract::inbound::classify(&value, &Sources::default()).expect("known kind");
        if let Err(errors) = schema::validate(id, &value) {
            panic!("{name} fails {}: {errors:?}", id.path());
        }
        let msg = contract::parse_str(&text, &Sources::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match (&msg.body, name.starts_with("ecr")) {
            (Body::Ecr(e), true) => assert_eq!(e.action_type, "PUSH"),
            (Body::ApiCall(c), false) if name.starts_with("cloudtrail") => {
                assert_eq!(c.event_name, "ModifyRule")
            }
            (Body::Alarm(a), false) => {
                assert_eq!(a.state.value, bluegreen::flow::AlarmState::Alarm)
            }
            other => panic!("{name} parsed as {other:?}"),
        }
    }
}

#[test]
fn the_composite_alarm_sample_is_read_like_a_metric_alarm() {
    let text = std::fs::read_to_string("tests/fixtures/aws/cloudwatch-alarm-composite.json")
        .expect("fixture");
    let msg = contract::parse_str(&text, &Sources::default()).expect("parses");
    let Body::Alarm(a) = msg.body else {
        panic!("not an alarm")
    };
    assert_eq!(a.alarm_name, "ServiceAggregatedAlarm");
    assert_eq!(a.state.timestamp, "2022-07-22T15:57:45.394+0000");
}

#[test]
fn every_operator_and_worker_message_validates_and_parses() {
    for (name, text) in fixtures("valid") {
        let msg = contract::parse_str(&text, &Sources::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let id = contract::inbound::classify(&value, &Sources::default()).expect("kind");
        assert!(schema::validate(id, &value).is_ok(), "{name}");
        if name.starts_with("ecr-push-failed") || name.starts_with("alarm-back-to-ok") {
            assert!(
                msg.ignorable().is_some(),
                "{name} should be valid but ignorable"
            );
        } else {
            assert_eq!(msg.ignorable(), None, "{name}");
        }
    }
}

#[test]
fn a_push_without_account_and_with_unknown_fields_is_accepted() {
    let text = std::fs::read_to_string("tests/fixtures/valid/ecr-push-without-account.json")
        .expect("fixture");
    let msg = contract::parse_str(&text, &Sources::default()).expect("parses");
    assert_eq!(msg.envelope.account, None);
}

#[test]
fn broken_messages_get_one_line_errors_naming_the_field() {
    let expect = [
        ("alarm-unknown-state.json", "detail.state.value"),
        ("deploy-without-image.json", "detail"),
        ("promote-skip-bake-not-bool.json", "detail.skipBake"),
        ("push-digest-not-a-string.json", "detail.image-digest"),
        ("push-without-repository.json", "detail"),
        ("truncated.json", "line 1, column"),
        ("unknown-detail-type.json", "Launch Missiles"),
    ];
    let files = fixtures("invalid");
    assert_eq!(
        files.len(),
        expect.len(),
        "every invalid fixture has an expectation"
    );
    for ((name, text), (want_name, field)) in files.iter().zip(expect) {
        assert_eq!(name, want_name);
        let err = contract::parse_str(text, &Sources::default()).expect_err(name);
        let line = err.to_string();
        assert!(!line.contains('\n'), "{name}: multi-line error {line:?}");
        assert!(
            line.contains(field),
            "{name}: {line:?} does not name {field:?}"
        );
        if name == "push-without-repository.json" {
            assert!(line.contains("repository-name"), "{line}");
        }
    }
}

#[test]
fn rejected_messages_carry_a_stable_code() {
    let e = contract::parse_str("nope", &Sources::default()).expect_err("not json");
    assert_eq!(e.code(), "malformed-json");
    let e = contract::parse_str(r#"{"source":"a","detail-type":"b"}"#, &Sources::default())
        .expect_err("unknown");
    assert!(matches!(e, ParseError::UnknownKind { .. }));
    assert_eq!(e.code(), "unknown-kind");
    let e = contract::parse_str("[1,2]", &Sources::default()).expect_err("array");
    assert_eq!(e.code(), "invalid-event");
}

fn example_config() -> Fleet {
    Fleet::from(&Config::load(Path::new("examples/bluegreen.toml")).expect("example config"))
}

#[test]
fn operator_events_for_unknown_services_or_other_accounts_are_refused() {
    let config = example_config();
    let text =
        std::fs::read_to_string("tests/fixtures/valid/abort-requested.json").expect("fixture");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
    value["detail"]["service"] = "nope".into();
    let msg = contract::parse(&value, &Sources::default()).expect("parses");
    assert_eq!(
        contract::route(&msg, &config)
            .expect_err("unknown service")
            .code,
        "unknown-service"
    );
    value["detail"]["service"] = "web".into();
    value["account"] = "999999999999".into();
    let msg = contract::parse(&value, &Sources::default()).expect("parses");
    assert_eq!(
        contract::route(&msg, &config)
            .expect_err("wrong account")
            .code,
        "wrong-account"
    );
}

#[test]
fn a_push_deploys_to_every_service_whose_repository_and_tag_pattern_match() {
    let config = example_config();
    let text =
        std::fs::read_to_string("tests/fixtures/valid/ecr-image-push.json").expect("fixture");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
    value["region"] = "us-east-1".into();
    value["detail"]["repository-name"] = "web".into();
    let route = |v: &serde_json::Value| {
        contract::route(
            &contract::parse(v, &Sources::default()).expect("parses"),
            &config,
        )
        .expect("routes")
    };
    assert!(
        matches!(route(&value), Routed::Ignored(why) if why.contains("tag latest")),
        "latest is not release-*"
    );
    value["detail"]["image-tag"] = "release-42".into();
    let Routed::Inputs(inputs) = route(&value) else {
        panic!("ignored")
    };
    assert_eq!(
        inputs.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["web"]
    );
}

#[test]
fn manual_images_are_read_by_digest_or_tag() {
    let d = format!("sha256:{}", "a".repeat(64));
    let by_digest = parse_image(&format!("localhost:5000/team/web@{d}")).expect("digest");
    assert_eq!(by_digest.repository, "localhost:5000/team/web");
    assert_eq!(by_digest.digest.as_deref(), Some(d.as_str()));
    let by_tag = parse_image("localhost:5000/team/web:v2").expect("tag");
    assert_eq!(
        (by_tag.repository.as_str(), by_tag.tag.as_deref()),
        ("localhost:5000/team/web", Some("v2"))
    );
    assert_eq!(by_tag.digest, None);
    assert_eq!(parse_image("web@md5:abc"), None);
    assert_eq!(parse_image("web:"), None);
}

/// `repository:tag@digest` is legal: the digest wins and the tag is dropped, whether or
/// not the repository has a registry host (with a port) and a path in front of it.
#[test]
fn a_tag_next_to_a_digest_is_dropped() {
    let d = format!("sha256:{}", "b".repeat(64));
    for (text, repository) in [
        (format!("web:v1@{d}"), "web"),
        (format!("team/web:v1@{d}"), "team/web"),
        (
            format!("localhost:5000/team/web:v1@{d}"),
            "localhost:5000/team/web",
        ),
        (format!("localhost:5000/web@{d}"), "localhost:5000/web"),
    ] {
        let image = parse_image(&text).expect("parses");
        assert_eq!(image.repository, repository, "{text}");
        assert_eq!(image.digest.as_deref(), Some(d.as_str()), "{text}");
        assert_eq!(image.tag, None, "{text}");
    }
    assert_eq!(parse_image(&format!(":v1@{d}")), None);
}

/// A tag never holds a slash: a colon right before the last slash is part of the path
/// (odd as such a reference is), so no tag is split off there, with or without a digest.
#[test]
fn a_colon_right_before_the_last_slash_never_starts_a_tag() {
    let plain = parse_image("localhost:/web").expect("parses");
    assert_eq!(
        (plain.repository.as_str(), plain.tag.as_deref()),
        ("localhost:/web", None)
    );
    let d = format!("sha256:{}", "d".repeat(64));
    let pinned = parse_image(&format!("localhost:/web@{d}")).expect("parses");
    assert_eq!(pinned.repository, "localhost:/web");
}

/// Worlds that between them emit every outbound event kind.
fn worlds() -> Vec<World> {
    let mut out = Vec::new();
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::Shifting));
    w.apply(push(2)); // queued
    w.apply(op("pause", Action::Pause));
    w.apply(op("resume", Action::Resume));
    w.apply(op("bad-approve", Action::Approve)); // rejected
    w.settle();
    out.push(w);

    let mut s = settings();
    s.approval = true;
    s.has_test_listener = true;
    s.checks = vec![Check::Http {
        name: "healthz".into(),
        url: "http://t/h".into(),
        expect_status: 200,
    }];
    s.concurrency = Concurrency::Supersede;
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::AwaitingApproval));
    w.apply(push(2));
    w.settle();
    out.push(w);

    let mut s = settings();
    s.rollback_attempts = 2;
    let mut w = world_in(s, Phase::Baking);
    w.failing_effect = Some("scale-to-zero");
    w.apply(alarm("web-5xx", "t"));
    w.settle();
    out.push(w);

    // A stack update rewrites the rule mid-shift; the tag of a requested image is
    // resolved.
    let mut w = world_in(settings(), Phase::Shifting);
    w.cloud().rule = Weights::all(Color::Blue);
    w.settle();
    w.cloud().tags.insert("v2".into(), digest(2));
    let mut by_tag = push(2);
    if let InputKind::Deploy { image, .. } = &mut by_tag.kind {
        image.digest = None;
        image.tag = Some("v2".into());
    }
    w.apply(by_tag);
    w.settle();
    out.push(w);

    // The live colour wants no tasks after a deployment: capacity drift.
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    w.health = Some(TargetHealth {
        desired: 0,
        healthy_targets: 0,
        ..healthy()
    });
    w.reconcile();
    out.push(w);
    out
}

#[test]
fn every_event_the_core_emits_validates_against_the_outbound_schema() {
    let mut kinds = HashSet::new();
    for w in worlds() {
        for e in &w.log.events {
            kinds.insert(e.kind);
            let delivered = Entry::new(e, "bluegreen").as_delivered("123456789012", "us-east-1");
            if let Err(errors) = schema::validate(SchemaId::OutboundEvent, &delivered) {
                panic!(
                    "{} fails the outbound schema: {errors:?}\n{delivered:#}",
                    e.kind.detail_type()
                );
            }
        }
    }
    let missing: Vec<_> = EventKind::ALL
        .iter()
        .filter(|k| !kinds.contains(k))
        .collect();
    assert!(missing.is_empty(), "no scenario emitted {missing:?}");
}

#[test]
fn the_outbound_schema_rejects_weights_out_of_range_and_missing_fields() {
    let w = &worlds()[0];
    let e = &w.log.events[0];
    let mut delivered = Entry::new(e, "bluegreen").as_delivered("123456789012", "us-east-1");
    delivered["detail"]["weights"]["green"] = 101.into();
    assert!(schema::validate(SchemaId::OutboundEvent, &delivered).is_err());
    for field in ["weights", "liveColor", "service"] {
        let mut delivered = Entry::new(e, "bluegreen").as_delivered("123456789012", "us-east-1");
        delivered["detail"][field] = serde_json::Value::Null;
        assert!(
            schema::validate(SchemaId::OutboundEvent, &delivered).is_err(),
            "a transition event may not have a null {field}"
        );
    }
    let mut delivered = Entry::new(e, "bluegreen").as_delivered("123456789012", "us-east-1");
    delivered["detail"]
        .as_object_mut()
        .expect("object")
        .remove("sequence");
    let errors =
        schema::validate(SchemaId::OutboundEvent, &delivered).expect_err("missing sequence");
    assert!(
        errors.iter().any(|e| e.message.contains("sequence")),
        "{errors:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Bad input never panics: arbitrary text, and fixtures with arbitrary bytes changed.
    #[test]
    fn no_message_panics_the_parser(text in ".{0,300}", cut in 0usize..2000, byte in any::<u8>()) {
        let _ = contract::parse_str(&text, &Sources::default());
        let fixture = include_str!("../fixtures/aws/cloudwatch-alarm-composite.json");
        let mut bytes = fixture.as_bytes().to_vec();
        let at = cut % bytes.len();
        bytes[at] = byte;
        let mutated = String::from_utf8_lossy(&bytes);
        if let Ok(msg) = contract::parse_str(&mutated, &Sources::default()) {
            let _ = contract::route(&msg, &example_config());
        }
    }

    /// Arbitrary JSON values of the right general shape never panic routing either.
    #[test]
    fn no_well_formed_message_panics_routing(
        service in "[a-z]{1,5}", id in "[a-z0-9-]{1,10}", cursor in any::<u32>(), attempt in any::<u32>()
    ) {
        let value = serde_json::json!({
            "id": id, "detail-type": "Deployment Tick", "source": "bluegreen",
            "detail": { "service": service, "deploymentId": id, "cursor": cursor, "attempt": attempt.max(1), "due": "2026-01-01T00:00:00Z" }
        });
        if let Ok(msg) = contract::parse(&value, &Sources::default()) {
            let _ = contract::route(&msg, &example_config());
        }
    }
}

/// Only a successful push deploys and only `ALARM` rolls back, through routing as the
/// worker does it: a successful delete and an alarm back to OK are ignored with the reason,
/// and the documentation's `ALARM` sample, named as a service's rollback alarm, reaches
/// that service alone.
#[test]
fn only_a_successful_push_deploys_and_only_alarm_rolls_back() {
    let config = example_config();
    let route = |v: &serde_json::Value| {
        contract::route(
            &contract::parse(v, &Sources::default()).expect("parses"),
            &config,
        )
        .expect("routes")
    };
    let text =
        std::fs::read_to_string("tests/fixtures/valid/ecr-image-push.json").expect("fixture");
    let mut push: serde_json::Value = serde_json::from_str(&text).expect("json");
    push["region"] = "us-east-1".into();
    push["detail"]["repository-name"] = "web".into();
    push["detail"]["image-tag"] = "release-42".into();
    assert!(
        matches!(route(&push), Routed::Inputs(_)),
        "the push deploys"
    );
    push["detail"]["action-type"] = "DELETE".into();
    assert!(
        matches!(route(&push), Routed::Ignored(why) if why.contains("DELETE")),
        "a successful delete deploys nothing"
    );

    let text = std::fs::read_to_string("tests/fixtures/aws/cloudwatch-alarm-single-metric.json")
        .expect("fixture");
    let mut alarm: serde_json::Value = serde_json::from_str(&text).expect("json");
    alarm["detail"]["alarmName"] = "api-5xx".into();
    let Routed::Inputs(inputs) = route(&alarm) else {
        panic!("ALARM is not ignored")
    };
    assert_eq!(inputs.len(), 1);
    let (service, input) = &inputs[0];
    assert_eq!(service, "api");
    assert!(
        matches!(&input.kind, InputKind::Alarm { alarm, state, .. }
            if alarm == "api-5xx" && *state == bluegreen::flow::AlarmState::Alarm),
        "{input:?}"
    );
    alarm["detail"]["state"]["value"] = "OK".into();
    assert!(
        matches!(route(&alarm), Routed::Ignored(why) if why.contains("only ALARM")),
        "an alarm back to OK rolls nothing back"
    );
}

/// A `Deploy Requested` naming the service's repository by its bare name means that
/// repository in this account's registry; any other repository is taken as written.
#[test]
fn a_bare_repository_name_in_a_deploy_request_means_the_services_ecr_repository() {
    let config = example_config();
    let text =
        std::fs::read_to_string("tests/fixtures/valid/deploy-requested.json").expect("fixture");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
    let repository = |v: &serde_json::Value| {
        let msg = contract::parse(v, &Sources::default()).expect("parses");
        let Routed::Inputs(inputs) = contract::route(&msg, &config).expect("routes") else {
            panic!("ignored")
        };
        match &inputs[0].1.kind {
            InputKind::Deploy { image, .. } => image.repository.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        repository(&value),
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/web"
    );
    value["detail"]["image"] = format!("ghcr.io/team/web@sha256:{}", "b".repeat(64)).into();
    assert_eq!(repository(&value), "ghcr.io/team/web");
}

/// A reference with both a tag and a digest deploys the digest, from the repository
/// without the tag (a registry port is not a tag).
#[test]
fn a_reference_with_a_tag_and_a_digest_names_the_repository_without_the_tag() {
    let d = format!("sha256:{}", "c".repeat(64));
    for (text, repository) in [
        (
            format!("localhost:5000/team/web:v2@{d}"),
            "localhost:5000/team/web",
        ),
        (format!("web:v2@{d}"), "web"),
    ] {
        let image = parse_image(&text).expect("parses");
        assert_eq!(image.repository, repository, "{text}");
        assert_eq!(image.digest.as_deref(), Some(d.as_str()));
    }
}

/// The `Phase` metric is an index into `telemetry::PHASES`: the list holds every phase of
/// the outbound schema once, in the order the dashboard (infra/lib/dashboard.ts) labels.
#[test]
fn the_phase_metric_index_matches_the_schema_and_the_dashboard() {
    let ours: Vec<String> = bluegreen::telemetry::PHASES
        .iter()
        .map(ToString::to_string)
        .collect();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas/outbound/deployment-event.schema.json"),
        )
        .expect("schema"),
    )
    .expect("schema JSON");
    let mut in_schema: Vec<String> = schema["$defs"]["phase"]["enum"]
        .as_array()
        .expect("phase enum")
        .iter()
        .filter_map(|p| p.as_str().map(String::from))
        .collect();
    let mut sorted = ours.clone();
    sorted.sort();
    in_schema.sort();
    assert_eq!(sorted, in_schema, "every phase once");
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/lib/dashboard.ts"),
    )
    .expect("dashboard.ts");
    let list = dashboard
        .split("export const PHASES = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("PHASES in dashboard.ts");
    let labelled: Vec<String> = list
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert_eq!(labelled, ours, "the dashboard labels the same indices");
}

/// A write by anyone else to what a service is made of, as CloudTrail records it: the
/// service's production rule, a colour service (by name or ARN) or a listener. Each is
/// reconciled at once; a failed call, a call on something else or a read changes nothing;
/// a call in another account is refused.
#[test]
fn a_recorded_change_to_a_services_rule_or_colour_service_reconciles_it_at_once() {
    let config = example_config();
    let text =
        std::fs::read_to_string("tests/fixtures/aws/cloudtrail-modify-rule.json").expect("fixture");
    let rule: serde_json::Value = serde_json::from_str(&text).expect("json");
    let route = |v: &serde_json::Value| {
        contract::route(
            &contract::parse(v, &Sources::default()).expect("parses"),
            &config,
        )
    };
    let reconciles = |v: &serde_json::Value| match route(v).expect("routes") {
        Routed::Inputs(inputs) => inputs
            .into_iter()
            .map(|(service, input)| {
                assert!(
                    matches!(input.kind, bluegreen::flow::InputKind::Reconcile { .. }),
                    "{input:?}"
                );
                assert_eq!(
                    input.key,
                    format!("reconcile:{}", v["id"].as_str().unwrap_or_default())
                );
                service
            })
            .collect::<Vec<_>>(),
        Routed::Ignored(why) => vec![format!("ignored: {why}")],
    };
    assert_eq!(reconciles(&rule), ["web"]);

    let mut api = rule.clone();
    api["detail"]["requestParameters"]["ruleArn"] = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/prod-alb/50dc6c495c0c9188/f2f7dc8efc522ab2/a794c3e13b7dbcff".into();
    assert_eq!(reconciles(&api), ["api"]);

    let mut update = rule.clone();
    update["source"] = "aws.ecs".into();
    update["detail"]["eventSource"] = "ecs.amazonaws.com".into();
    update["detail"]["eventName"] = "UpdateService".into();
    update["detail"]["requestParameters"] = serde_json::json!({
        "cluster": "prod",
        "service": "arn:aws:ecs:us-east-1:123456789012:service/prod/api-green",
        "taskDefinition": "api:1"
    });
    assert_eq!(reconciles(&update), ["api"], "by ARN");
    update["detail"]["requestParameters"]["service"] = "web-blue".into();
    assert_eq!(reconciles(&update), ["web"], "by name");

    let mut other = rule.clone();
    other["detail"]["requestParameters"]["ruleArn"] = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/prod-alb/50dc6c495c0c9188/f2f7dc8efc522ab2/0000000000000000".into();
    assert!(
        reconciles(&other)[0].contains("concerns no service"),
        "{:?}",
        reconciles(&other)
    );
    let mut failed = rule.clone();
    failed["detail"]["errorCode"] = "AccessDenied".into();
    assert!(reconciles(&failed)[0].contains("AccessDenied"));
    let mut tags = rule.clone();
    tags["detail"]["eventName"] = "AddTags".into();
    assert!(reconciles(&tags)[0].contains("changes nothing"));
    let mut foreign = rule.clone();
    foreign["account"] = "210987654321".into();
    assert_eq!(route(&foreign).expect_err("refused").code, "wrong-account");
}

#[test]
fn an_operator_event_older_than_an_hour_is_refused_as_stale() {
    use bluegreen::flow::Timestamp;
    let sources = Sources::default();
    let event = crate::common::envelope::operator(
        "op-1",
        "Rollback Requested",
        serde_json::json!({ "service": "web", "requestedBy": "alice" }),
    );
    let msg = contract::parse(&event, &sources).expect("parses");
    let put = Timestamp::parse_rfc3339(event["time"].as_str().expect("time")).expect("RFC 3339");
    assert!(contract::check_age(&msg, put.plus_ms(59 * 60 * 1000)).is_ok());
    let stale =
        contract::check_age(&msg, put.plus_ms(7 * 24 * 3600 * 1000)).expect_err("a week old");
    assert_eq!(stale.code, "stale-event");
    assert!(stale.reason.contains("7days"), "{}", stale.reason);
    // Only operator events age: a push moved back from the dead-letter queue still deploys.
    let push = contract::parse(&crate::common::envelope::push(1), &sources).expect("push");
    assert!(contract::check_age(&push, put.plus_ms(7 * 24 * 3600 * 1000)).is_ok());
}
