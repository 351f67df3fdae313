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
        "tests/fixtures/valid/ecr-image-push.json",
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

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bluegreen-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn the_demo_runs_both_scenarios_to_a_passing_report() {
    let dir = temp_dir("demo");
    let o = bluegreen(&["demo", "--state-dir", dir.to_str().unwrap()]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}\n{}", stderr(&o));
    assert!(
        text.contains("v2: Succeeded with 0 failed requests"),
        "{text}"
    );
    assert!(text.contains("v3: RolledBack"), "{text}");
    assert!(text.contains("alarm to weights restored:"), "{text}");
    assert!(text.contains("PASSED"), "{text}");
    for phase in [
        "baseline (v1)",
        "deploy v2",
        "deploy v3 (faulty)",
        "after rollback",
    ] {
        assert!(
            text.contains(phase),
            "{phase} missing from the report:\n{text}"
        );
    }
    // --state-dir keeps the database and the event log.
    assert!(dir.join("bluegreen.db").exists());
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(events.contains("\"detail-type\":\"Deployment Rolled Back\""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_local_configuration_is_valid_and_mistakes_name_their_field() {
    use bluegreen::local::LocalConfig;
    let config = LocalConfig::load(std::path::Path::new("examples/bluegreen.local.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.services[0].alarms.len(), 2);
    let text = std::fs::read_to_string("examples/bluegreen.local.toml").unwrap();
    let broken = text
        .replace("--port {port}", "--port 8081")
        .replace("step_percent = 20", "step_percent = 0");
    let e = LocalConfig::from_toml_str(&broken).unwrap_err().to_string();
    assert!(
        e.contains("services[0].command: must contain {port}"),
        "{e}"
    );
    let e = LocalConfig::from_toml_str(&text.replace("step_percent = 20", "step_percent = 0"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("services[0].strategy"), "{e}");
    let e = LocalConfig::from_toml_str(&text.replace(
        "min_requests = 20 },\n  { name = \"web-p99\"",
        "min_requests = 20, p99_above = \"1s\" },\n  { name = \"web-p99\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("services[0].alarms[0]: needs exactly one"),
        "{e}"
    );
    let e = LocalConfig::from_toml_str(&text.replace("sticky = true", "stiky = true"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stiky"), "{e}");
}

#[test]
fn local_deploys_a_version_and_stops_cleanly_on_sigterm() {
    let dir = temp_dir("local");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("local.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[local]
state_dir = "{dir}"

[[services]]
name = "web"
listen = "127.0.0.1:{port}"
command = "'{exe}' demo-app --port {{port}}"
strategy = {{ kind = "all-at-once" }}
bake = "100ms"
termination_wait = "100ms"
timeouts = {{ poll = "100ms" }}
"#,
            dir = dir.display(),
            exe = env!("CARGO_BIN_EXE_bluegreen")
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let local = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["local", "--config", config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = bluegreen(&[
        "local",
        "--config",
        config,
        "deploy",
        "--service",
        "web",
        "--version",
        "v2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("queued: deploy web v2 (web@sha256:"),
        "{}",
        stdout(&o)
    );
    let events = dir.join("events.jsonl");
    let mut polls = 0;
    while !std::fs::read_to_string(&events)
        .unwrap_or_default()
        .contains("Old Color Released")
    {
        polls += 1;
        // Two minutes: the suite runs this next to the fault suite on two cores.
        assert!(polls < 2400, "the deployment did not finish");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nv2 green\n"), "{answer}");
    let term = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", local.id())])
        .status()
        .unwrap();
    assert!(term.success());
    let out = local.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn worker_options_that_would_leave_no_room_for_effects_are_refused() {
    let run = |args: &[&str]| {
        let mut all = vec!["worker", "--config", "examples/bluegreen.toml"];
        all.extend_from_slice(args);
        bluegreen(&all)
    };
    let short = run(&["--lease", "3s"]);
    assert_ne!(short.status.code(), Some(0));
    assert!(
        stderr(&short).contains("--lease (3s) must exceed 4s"),
        "{}",
        stderr(&short)
    );
    let hidden = run(&["--receive-visibility", "1s"]);
    assert_ne!(hidden.status.code(), Some(0));
    assert!(
        stderr(&hidden).contains("--receive-visibility (1s) must be at least 3s"),
        "{}",
        stderr(&hidden)
    );
}

#[test]
fn an_operator_command_without_a_usable_configuration_exits_1_not_4() {
    // Missing, unreadable and invalid configurations are the operator's input: 1, which a
    // pipeline does not retry (4 means AWS unreachable, worth retrying).
    let dir = temp_dir("config-error");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[worker]\nqueue_url = 3\n").expect("write");
    for args in [
        vec!["status", "web", "--config", "/nonexistent/bluegreen.toml"],
        vec!["status", "web", "--config", bad.to_str().expect("path")],
        vec!["watch", "web", "--config", bad.to_str().expect("path")],
        vec![
            "abort",
            "web",
            "--local",
            "--config",
            "/nonexistent/local.toml",
        ],
    ] {
        let o = bluegreen(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("error: "),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // No configuration at all names the ways to give one.
    let o = bluegreen(&["status", "web"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("BLUEGREEN_CONFIG_JSON"),
        "{}",
        stderr(&o)
    );
}
