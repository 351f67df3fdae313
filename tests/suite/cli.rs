//! The `bluegreen` binary: output and exit codes of `plan` and `validate`.

use std::process::{Command, Output};

fn bluegreen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(args)
        .output()
        .expect("run bluegreen")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn plan_prints_the_linear_and_canary_schedules() {
    let o = bluegreen(&["plan", "--config", "examples/bluegreen.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("web: linear 10% every 1m"), "{text}");
    assert!(text.contains("    10        9m     0    100"), "{text}");
    assert!(text.contains("total 14m (shift 9m + bake 5m)"), "{text}");
    assert!(text.contains("api: canary 10% for 5m"), "{text}");
    assert!(text.contains("before the first shift: approval"), "{text}");
    assert!(text.contains("total 15m (shift 5m + bake 10m)"), "{text}");
}

#[test]
fn plan_as_json_lists_steps_with_offsets_and_weights() {
    let o = bluegreen(&[
        "plan",
        "--config",
        "examples/bluegreen.toml",
        "--service",
        "web",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let services = v["services"].as_array().expect("services");
    assert_eq!(services.len(), 1);
    let web = &services[0];
    let steps = web["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 10);
    assert_eq!(steps[0]["green"], 10);
    assert_eq!(steps[0]["blue"], 90);
    assert_eq!(steps[9]["offsetSeconds"], 540);
    assert_eq!(steps[9]["green"], 100);
    assert_eq!(web["totalSeconds"], 540 + 300);
    assert_eq!(web["waitsForPromote"], false);
}

#[test]
fn plan_for_an_unknown_service_fails_with_a_reason() {
    let o = bluegreen(&[
        "plan",
        "--config",
        "examples/bluegreen.toml",
        "--service",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\"nope\" is not in the configuration"));
}

#[test]
fn validate_exit_codes_are_0_valid_1_invalid_2_usage() {
    let ok = bluegreen(&[
        "validate",
        "event",
        "tests/fixtures/aws/ecr-image-push.json",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let ignored = bluegreen(&[
        "validate",
        "event",
        "tests/fixtures/valid/alarm-back-to-ok.json",
    ]);
    assert_eq!(ignored.status.code(), Some(0));
    assert!(stdout(&ignored).contains("the worker would ignore it"));
    let bad = bluegreen(&[
        "validate",
        "event",
        "tests/fixtures/invalid/push-digest-not-a-string.json",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let line = stderr(&bad);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("detail.image-digest"), "{line}");
    let config = bluegreen(&["validate", "config", "examples/bluegreen.toml"]);
    assert_eq!(config.status.code(), Some(0));
    let usage = bluegreen(&["validate", "everything"]);
    assert_eq!(usage.status.code(), Some(2));
    let missing = bluegreen(&["validate", "event", "tests/fixtures/none.json"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn plan_reads_the_configuration_as_json_from_the_environment() {
    let toml = std::fs::read_to_string("examples/bluegreen.toml").expect("example");
    let value: serde_json::Value = toml::from_str(&toml).expect("toml");
    let o = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["plan", "--service", "api"])
        .env_remove("BLUEGREEN_CONFIG")
        .env("BLUEGREEN_CONFIG_JSON", value.to_string())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("api: canary 10% for 5m"));
    let none = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .arg("plan")
        .env_remove("BLUEGREEN_CONFIG")
        .env_remove("BLUEGREEN_CONFIG_JSON")
        .output()
        .expect("run");
    assert_eq!(none.status.code(), Some(1));
    assert!(stderr(&none).contains("BLUEGREEN_CONFIG_JSON"));
}
