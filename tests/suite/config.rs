//! The configuration document: the shipped example, the JSON form, and errors that name
//! their field.

use std::path::Path;
use std::time::Duration;

use bluegreen::config::{Config, ConfigError};
use bluegreen::flow::{Check, Concurrency, Strategy};

const EXAMPLE: &str = include_str!("../../examples/bluegreen.toml");

fn errors_of(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_shipped_example_loads_with_two_services() {
    let c = Config::load(Path::new("examples/bluegreen.toml")).expect("loads");
    assert_eq!(c.services.len(), 2);
    let web = c.service("web").expect("web");
    assert_eq!(
        web.strategy,
        Strategy::Linear {
            step_percent: 10,
            interval: Duration::from_secs(60)
        }
    );
    assert_eq!(web.termination_wait, Duration::from_secs(600));
    let settings = web.settings();
    assert!(settings.has_test_listener);
    assert!(matches!(
        &settings.checks[..],
        [Check::Http {
            expect_status: 200,
            ..
        }]
    ));
    let api = c.service("api").expect("api");
    assert_eq!(api.concurrency, Concurrency::Supersede);
    assert_eq!(api.settings().timeouts.poll, Duration::from_secs(10));
    let fleet = bluegreen::fleet::Fleet::from(&c);
    let (web, api) = (
        fleet.service("web").expect("web"),
        fleet.service("api").expect("api"),
    );
    assert!(web.matches_tag(Some("release-7")));
    assert!(!web.matches_tag(Some("latest")));
    assert!(api.matches_tag(None));
}

#[test]
fn rollback_alarms_are_a_list_or_one_list_per_colour() {
    use bluegreen::flow::Color;
    let c = Config::from_toml_str(EXAMPLE).expect("example");
    // web: one list per colour; only the target colour's alarms gate a deployment.
    let web = c.service("web").expect("web").settings();
    assert!(web.rollback_alarms.is_empty());
    assert!(web.rolls_back("web-green-5xx", Color::Green));
    assert!(
        !web.rolls_back("web-green-5xx", Color::Blue),
        "green's alarm never blocks a deployment to blue"
    );
    assert!(web.rolls_back("web-blue-p99", Color::Blue));
    assert_eq!(
        web.all_rollback_alarms(),
        [
            "web-blue-5xx",
            "web-blue-p99",
            "web-green-5xx",
            "web-green-p99"
        ]
    );
    let fleet = bluegreen::fleet::Fleet::from(&c);
    assert_eq!(
        fleet.service("web").expect("web").rollback_alarms.len(),
        4,
        "the worker reads and routes both colours' alarms"
    );
    // api: a plain list gates a deployment to either colour.
    let api = c.service("api").expect("api").settings();
    assert!(api.rolls_back("api-5xx", Color::Blue) && api.rolls_back("api-5xx", Color::Green));
    // A per-colour form needs both colours.
    let text = EXAMPLE.replace(
        r#"rollback_alarms = { blue = ["web-blue-5xx", "web-blue-p99"], green = ["web-green-5xx", "web-green-p99"] }"#,
        r#"rollback_alarms = { blue = ["web-blue-5xx"] }"#,
    );
    assert_ne!(text, EXAMPLE);
    assert!(
        errors_of(&text).contains("rollback_alarms"),
        "{}",
        errors_of(&text)
    );
}

#[test]
fn the_same_document_as_json_gives_the_same_configuration() {
    let from_toml = Config::from_toml_str(EXAMPLE).expect("toml");
    let value: serde_json::Value = toml::from_str(EXAMPLE).expect("toml value");
    let from_json = Config::from_json_str(&value.to_string()).expect("json");
    assert_eq!(from_toml, from_json);
}

#[test]
fn schema_errors_name_the_field() {
    let cases = [
        (
            "step_percent = 10",
            "step_percent = 0",
            "services[0].strategy.step_percent",
        ),
        (
            "bake = \"5m\"",
            "bake = \"five minutes\"",
            "services[0].bake",
        ),
        (
            "container_name = \"app\"",
            "container_name = 7",
            "services[0].container_name",
        ),
        (
            "concurrency = \"queue\"",
            "concurrency = \"fifo\"",
            "services[0].concurrency",
        ),
        (
            "approval = false",
            "approval = false\nappoval = true",
            "services[0]",
        ),
        (
            "blue_target_group_arn = \"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-blue/6d0ecf831eec9f09\"",
            "blue_target_group_arn = \"web-blue\"",
            "services[0].blue_target_group_arn",
        ),
    ];
    for (from, to, field) in cases {
        assert!(EXAMPLE.contains(from), "{from}");
        let text = EXAMPLE.replacen(from, to, 1);
        let e = errors_of(&text);
        assert!(e.contains(field), "{to:?}: {e}");
    }
}

#[test]
fn semantic_errors_name_the_field() {
    let cases = [
        (
            "name = \"api\"",
            "name = \"web\"",
            "services[1].name: duplicate service name \"web\"",
        ),
        (
            "green_service = \"web-green\"",
            "green_service = \"web-blue\"",
            "services[0].green_service: must differ",
        ),
        (
            "api-blue/8f2ae1a53aae1b2b",
            "web-blue/6d0ecf831eec9f09",
            "services[1].blue_target_group_arn",
        ),
        (
            "strategy = { kind = \"linear\", step_percent = 10, interval = \"1m\" }",
            "strategy = { kind = \"steps\", steps = [ { weight = 50 }, { weight = 20 } ] }",
            "services[0].strategy.steps[1].weight: weights must strictly increase",
        ),
        (
            "strategy = { kind = \"linear\", step_percent = 10, interval = \"1m\" }",
            "strategy = { kind = \"steps\", steps = [ { weight = 50, pause = \"1m\" } ] }",
            "services[0].strategy.steps: the last step must have weight 100",
        ),
        (
            "strategy = { kind = \"linear\", step_percent = 10, interval = \"1m\" }",
            "strategy = { kind = \"linear\", step_percent = 10, interval = \"0s\" }",
            "services[0].strategy.interval: must be greater than zero",
        ),
        (
            "tag_pattern = \"release-*\"",
            "tag_pattern = \"release-[\"",
            "services[0].tag_pattern",
        ),
        (
            "test_listener_rule_arn = \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/prod-alb/50dc6c495c0c9188/0467ef3c8400ae65/1b2c3d4e5f607182\"\n",
            "",
            "services[0].validations[0].url: HTTP validations need",
        ),
        (
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-green",
            "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web-green",
            "services[0].green_target_group_arn: is in aws:elasticloadbalancing:eu-west-1",
        ),
    ];
    for (from, to, want) in cases {
        assert!(EXAMPLE.contains(from), "{from}");
        let e = errors_of(&EXAMPLE.replacen(from, to, 1));
        assert!(e.contains(want), "{to:?}: {e}");
    }
}

#[test]
fn a_service_needs_exactly_one_production_target() {
    let without = EXAMPLE.replacen(
        "production_listener_rule_arn",
        "# production_listener_rule_arn",
        1,
    );
    assert!(errors_of(&without).contains("services[0].production_listener_rule_arn: one of"));
    let both = EXAMPLE.replacen(
        "container_name = \"app\"",
        "container_name = \"app\"\nproduction_listener_arn = \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/prod-alb/50dc6c495c0c9188/f2f7dc8efc522ab2\"",
        1,
    );
    assert!(errors_of(&both).contains("services[0].production_listener_arn: give only one"));
}

const RULE_A: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/prod-alb/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";
const RULE_B: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/prod-alb/50dc6c495c0c9188/0467ef3c8400ae65/4c5d6e7f8091a2b3";
const API_RULE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/prod-alb/50dc6c495c0c9188/f2f7dc8efc522ab2/a794c3e13b7dbcff";

/// The example with web's production rule replaced by `line`.
fn with_web_production(line: &str) -> String {
    let single = format!("production_listener_rule_arn = \"{RULE_A}\"");
    assert!(EXAMPLE.contains(&single));
    EXAMPLE.replacen(&single, line, 1)
}

#[test]
fn several_production_rules_are_moved_together() {
    let text = with_web_production(&format!(
        "production_listener_rule_arns = [\"{RULE_A}\", \"{RULE_B}\"]"
    ));
    let c = Config::from_toml_str(&text).expect("loads");
    let web = c.service("web").expect("web");
    let arns: Vec<String> = web
        .production()
        .iter()
        .map(|t| t.arn().to_string())
        .collect();
    assert_eq!(arns, [RULE_A, RULE_B]);
    // And as JSON (the form the CDK construct injects).
    let value: serde_json::Value = toml::from_str(&text).expect("toml value");
    assert_eq!(Config::from_json_str(&value.to_string()).expect("json"), c);
}

#[test]
fn several_production_rules_are_checked_one_by_one() {
    let cases = [
        (
            format!("production_listener_rule_arns = [\"{RULE_A}\", \"{RULE_B}\"]\nproduction_listener_rule_arn = \"{RULE_A}\""),
            "services[0].production_listener_rule_arns: give only one".to_string(),
        ),
        (
            format!("production_listener_rule_arns = [\"{RULE_A}\", \"{RULE_A}\"]"),
            "services[0].production_listener_rule_arns: [".to_string(),
        ),
        (
            format!("production_listener_rule_arns = [\"{RULE_B}\", \"{API_RULE}\"]"),
            format!("services[1].production_listener_rule_arn: {API_RULE} is already used by services[0].production_listener_rule_arns[1]"),
        ),
        (
            format!(
                "production_listener_rule_arns = [\"{RULE_A}\", \"{}\"]",
                RULE_B.replace("us-east-1", "eu-west-1")
            ),
            "services[0].production_listener_rule_arns[1]: is in aws:elasticloadbalancing:eu-west-1".to_string(),
        ),
        (
            "production_listener_rule_arns = []".to_string(),
            "services[0].production_listener_rule_arns: [] has less than 1 item".to_string(),
        ),
    ];
    for (line, want) in cases {
        // Duplicates and an empty list are the schema's to refuse; the rest the checks'.
        let e = errors_of(&with_web_production(&line));
        assert!(e.contains(&want), "{line}: {e}");
    }
}

#[test]
fn malformed_documents_report_where() {
    match Config::from_toml_str("[worker\nqueue_url = 1") {
        Err(ConfigError::Syntax {
            format: "TOML",
            message,
        }) => assert!(message.contains("line 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    match Config::from_json_str("{\"worker\": ") {
        Err(ConfigError::Syntax {
            format: "JSON",
            message,
        }) => assert!(message.contains("line 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    match Config::load(Path::new("does/not/exist.toml")) {
        Err(ConfigError::Io { path, .. }) => assert_eq!(path, "does/not/exist.toml"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_configuration_round_trips_through_its_json_form() {
    let config = Config::from_toml_str(EXAMPLE).expect("toml");
    let json = serde_json::to_string(&config).expect("serialize");
    let back = Config::from_json_str(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(back, config);
}

#[test]
fn explicit_steps_without_a_pause_round_trip_through_json() {
    let text = EXAMPLE.replace(
        r#"strategy = { kind = "canary", percent = 10, bake = "5m" }"#,
        r#"strategy = { kind = "steps", steps = [ { weight = 30 }, { weight = 60, pause = "1m" }, { weight = 100 } ] }"#,
    );
    assert_ne!(text, EXAMPLE, "the example still has the canary line");
    let config = Config::from_toml_str(&text).expect("toml");
    let json = serde_json::to_string(&config).expect("serialize");
    let back = Config::from_json_str(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(back, config);
}

#[test]
fn durations_longer_than_a_year_are_refused_naming_the_field() {
    let cases = [
        ("bake = \"5m\"", "bake = \"3000000d\"", "services[0].bake"),
        (
            "timeouts = { green = \"10m\", poll = \"10s\" }",
            "timeouts = { green = \"10m\", poll = \"10s\", approval = \"400d\" }",
            "services[1].timeouts.approval",
        ),
        (
            "strategy = { kind = \"linear\", step_percent = 10, interval = \"1m\" }",
            "strategy = { kind = \"linear\", step_percent = 10, interval = \"367d\" }",
            "services[0].strategy.interval",
        ),
    ];
    for (from, to, field) in cases {
        assert!(EXAMPLE.contains(from), "{from}");
        let e = errors_of(&EXAMPLE.replacen(from, to, 1));
        assert!(
            e.contains(field) && e.contains("longer than the longest duration accepted"),
            "{to:?}: {e}"
        );
    }
    // A year is fine.
    let year = EXAMPLE.replacen("bake = \"5m\"", "bake = \"365d\"", 1);
    assert!(Config::from_toml_str(&year).is_ok());
}

#[test]
fn unreadable_policy_and_the_warm_window_rollback_are_read_with_defaults() {
    let config = Config::from_toml_str(EXAMPLE).expect("example");
    let s = config.services[0].settings();
    assert_eq!(s.on_unreadable, bluegreen::flow::UnreadablePolicy::Rollback);
    assert!(s.rollback_while_warm);
    assert_eq!(s.timeouts.unreadable, Duration::from_secs(600));
    let changed = EXAMPLE.replacen(
        "bake = \"5m\"",
        "bake = \"5m\"\non_unreadable = \"pause\"\nrollback_while_warm = false\ntimeouts = { unreadable = \"2m\" }",
        1,
    );
    let s = Config::from_toml_str(&changed).expect("valid").services[0].settings();
    assert_eq!(s.on_unreadable, bluegreen::flow::UnreadablePolicy::Pause);
    assert!(!s.rollback_while_warm);
    assert_eq!(s.timeouts.unreadable, Duration::from_secs(120));
    let e = errors_of(&EXAMPLE.replacen(
        "bake = \"5m\"",
        "bake = \"5m\"\non_unreadable = \"ignore\"",
        1,
    ));
    assert!(e.contains("on_unreadable"), "{e}");
}

#[test]
fn a_timestamp_past_the_year_9999_is_written_as_its_last_moment_never_a_panic() {
    use bluegreen::flow::Timestamp;
    assert_eq!(
        Timestamp::from_millis(u64::MAX).rfc3339(),
        "9999-12-31T23:59:59.999Z"
    );
    assert_eq!(Timestamp::MAX_RFC3339.rfc3339(), "9999-12-31T23:59:59.999Z");
    assert_eq!(
        Timestamp::from_millis(1_700_000_000_000).rfc3339(),
        "2023-11-14T22:13:20.000Z"
    );
}

#[test]
fn lease_owner_tokens_carry_a_random_per_process_nonce() {
    let a = bluegreen::runner::owner_token("worker");
    let b = bluegreen::runner::owner_token("worker");
    let (id, rest) = a.split_once('#').expect("id#nonce.counter");
    assert_eq!(id, "worker");
    let (nonce, counter) = rest.split_once('.').expect("nonce.counter");
    assert_eq!(nonce.len(), 16, "{a}");
    assert!(nonce.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert!(counter.parse::<u64>().is_ok(), "{a}");
    assert_ne!(a, b, "each run its own token");
    assert!(
        b.starts_with(&format!("worker#{nonce}.")),
        "one nonce per process"
    );
}
