//! The operator commands end to end: the `bluegreen` binary against moto server (with a
//! worker running on the same queue) and against the embedded mode (`bluegreen local`):
//! a whole deployment paused, resumed, promoted and followed, a second one rolled back
//! while `--wait` follows it, refusals and unreachable AWS with their exit codes, and the
//! JSON outputs validated against `schemas/cli/`.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bluegreen::flow::{Phase, Weights};
use serde_json::Value;

use crate::common::digest;
use crate::moto::{Env, Running, Shape};

/// Runs the binary with no AWS settings (the embedded mode, local commands).
fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    command(args, envs).output().expect("run bluegreen")
}

fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bluegreen"));
    command
        .args(args)
        .env_remove("BLUEGREEN_CONFIG")
        .env_remove("BLUEGREEN_CONFIG_JSON");
    for (k, v) in envs {
        command.env(k, v);
    }
    command
}

/// Runs the binary against moto server.
fn run_aws(args: &[&str]) -> Output {
    let endpoint = crate::moto::endpoint();
    command(
        args,
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
    .output()
    .expect("run bluegreen")
}

/// Polls `probe` every 100 ms until it gives a value; fails naming `what` after two
/// minutes (the suite runs next to the fault suite on two cores).
fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(value) = probe() {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after two minutes waiting for {what}");
}

/// Asserts the exit code, showing both streams when it is not the one expected.
fn exited(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `args` in a blocking thread (the worker under test runs on this runtime).
async fn bluegreen(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_aws(&args)
    })
    .await
    .expect("join")
}

/// Serves `schemas/cli/*.json` by their `$id`, so that one schema can refer to another.
struct CliSchemas;

impl jsonschema::Retrieve for CliSchemas {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let file = uri
            .as_str()
            .strip_prefix("https://bluegreen.invalid/schemas/cli/")
            .ok_or_else(|| format!("not a CLI schema: {}", uri.as_str()))?;
        Ok(read_schema(file))
    }
}

fn read_schema(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas/cli")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("JSON")
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::options()
        .with_retriever(CliSchemas)
        .build(&read_schema(name))
        .expect("the schema compiles")
}

fn valid(name: &str, output: &Output) -> Value {
    let document: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&output.stdout)));
    let validator = validator(name);
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{document:#}");
    document
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_pauses_promotes_and_rolls_back_deployments_with_commands_only() {
    let env = Env::create(
        "operator",
        Shape {
            strategy: r#"{ kind = "steps", steps = [ { weight = 50 }, { weight = 100 } ] }"#,
            bake: "0s",
            ..Shape::default()
        },
    )
    .await;
    let dir = std::env::temp_dir().join(format!("{}-operator", env.prefix));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string(&env.config).expect("JSON")).expect("write");
    let config = config.to_str().expect("path").to_string();
    let c = config.as_str();
    let (worker, _world) = env.worker("w1");
    let running = Running::start(&worker);

    // Refusals before anything is sent, exit 3.
    let o = bluegreen(&["pause", "nope", "--by", "alice", "--config", c]).await;
    exited(&o, 3);
    assert!(
        text(&o.stderr).contains("unknown service \"nope\"; configured: web"),
        "{}",
        text(&o.stderr)
    );
    let o = bluegreen(&["promote", "web", "--by", "alice", "--config", c]).await;
    exited(&o, 3);
    assert!(
        text(&o.stderr).contains("no deployment in progress"),
        "{}",
        text(&o.stderr)
    );

    // 1. deploy (requestedBy from STS), pause, resume, promote --wait: Succeeded, exit 0.
    let image = format!("web@{}", digest(21));
    let o = bluegreen(&["deploy", "web", "--image", &image, "--config", c]).await;
    exited(&o, 0);
    assert!(
        text(&o.stdout).starts_with("deploy web: event ")
            && text(&o.stdout).contains("web: deployment web-1 started"),
        "deploy waits for the worker to start it and names it: {}",
        text(&o.stdout)
    );
    // The same image again: the worker refuses it, and deploy says so (exit 3).
    let o = bluegreen(&[
        "deploy", "web", "--image", &image, "--config", c, "--output", "json",
    ])
    .await;
    exited(&o, 3);
    let answer: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(answer["status"], "refused", "{answer}");
    assert_eq!(answer["code"], "already-deployed", "{answer}");
    env.wait_for_weights(
        Weights {
            blue: 50,
            green: 50,
        },
        60,
    )
    .await;
    let o = bluegreen(&["status", "web", "--output", "json", "--config", c]).await;
    exited(&o, 0);
    let status = valid("status.schema.json", &o);
    let web = &status["services"][0];
    assert_eq!(web["active"]["phase"], "Shifting");
    assert_eq!(
        web["active"]["step"],
        serde_json::json!({ "index": 1, "count": 2 })
    );
    assert_eq!(
        web["ruleWeights"],
        serde_json::json!({ "blue": 50, "green": 50 })
    );
    assert_eq!(
        web["writtenWeights"],
        serde_json::json!({ "blue": 50, "green": 50 })
    );
    assert_eq!(web["alarms"][0]["state"], "OK");
    assert!(
        web["active"]["requestedBy"]
            .as_str()
            .is_some_and(|by| by.starts_with("arn:aws:")),
        "the caller's identity from STS: {web}"
    );

    let o = bluegreen(&[
        "pause", "web", "--by", "alice", "--reason", "looking", "--wait", "--config", c,
    ])
    .await;
    exited(&o, 0);
    assert!(
        text(&o.stdout).contains("web-1 Shifting (paused)"),
        "pause --wait returns once paused: {}",
        text(&o.stdout)
    );
    let state = env.state().await;
    assert!(state.active.as_ref().is_some_and(|d| d.is_paused()));
    let o = bluegreen(&["approve", "web", "--by", "alice", "--config", c]).await;
    exited(&o, 3);
    assert!(
        text(&o.stderr)
            .contains("phase Shifting; allowed: promote, pause, resume, abort, rollback"),
        "{}",
        text(&o.stderr)
    );
    let o = bluegreen(&["resume", "web", "--by", "alice", "--config", c]).await;
    exited(&o, 0);
    env.wait_for(30, "resumed", |s| {
        s.active.as_ref().is_some_and(|d| !d.is_paused())
    })
    .await;
    let o = bluegreen(&[
        "promote",
        "web",
        "--by",
        "alice",
        "--wait",
        "--timeout",
        "60s",
        "--config",
        c,
    ])
    .await;
    exited(&o, 0);
    assert!(
        text(&o.stdout).contains("web-1 Succeeded"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        env.production().await,
        Weights {
            blue: 0,
            green: 100
        }
    );
    let o = bluegreen(&["watch", "web", "--config", c]).await;
    exited(&o, 0);
    assert!(
        text(&o.stdout).ends_with("web-1 Succeeded\n"),
        "{}",
        text(&o.stdout)
    );
    // watch --image follows the deployment of that image, not whatever is last.
    let o = bluegreen(&["watch", "web", "--image", &digest(21), "--config", c]).await;
    exited(&o, 0);
    assert!(
        text(&o.stdout).ends_with("web-1 Succeeded\n"),
        "{}",
        text(&o.stdout)
    );
    let o = bluegreen(&[
        "watch",
        "web",
        "--image",
        &digest(99),
        "--start-timeout",
        "1s",
        "--interval",
        "200ms",
        "--config",
        c,
    ])
    .await;
    exited(&o, 5);
    assert!(
        text(&o.stdout).contains("no deployment of the image started after 1s"),
        "an image nobody pushed is not the previous deployment: {}",
        text(&o.stdout)
    );

    // 2. a deploy followed with --wait, rolled back by the operator: exit 6.
    let image = format!("web@{}", digest(22));
    let config_owned = config.clone();
    let waiting = tokio::task::spawn_blocking(move || {
        run_aws(&[
            "deploy",
            "web",
            "--image",
            &image,
            "--by",
            "bob",
            "--wait",
            "--timeout",
            "90s",
            "--config",
            &config_owned,
        ])
    });
    env.wait_for(60, "the second deployment shifting", |s| {
        s.active
            .as_ref()
            .is_some_and(|d| d.id == "web-2" && d.phase == Phase::Shifting)
    })
    .await;
    // watch names a rollback alarm in ALARM (a first line, then it gives up).
    crate::moto::set_alarm(&env.sdk, &env.alarm, "ALARM").await;
    let o = bluegreen(&["watch", "web", "--timeout", "1s", "--config", c]).await;
    exited(&o, 5);
    assert!(
        text(&o.stdout).contains("web-2 Shifting step 1/2 blue  50%"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stdout).contains(&format!("ALARM: {}", env.alarm)),
        "{}",
        text(&o.stdout)
    );
    crate::moto::set_alarm(&env.sdk, &env.alarm, "OK").await;
    let o = bluegreen(&[
        "rollback",
        "web",
        "--by",
        "bob",
        "--reason",
        "bad build",
        "--config",
        c,
    ])
    .await;
    exited(&o, 0);
    let followed = waiting.await.expect("join");
    exited(&followed, 6);
    let lines = text(&followed.stdout);
    assert!(
        lines.contains("web-2 RolledBack: rollback requested by bob"),
        "{lines}"
    );
    let changes: Vec<&str> = lines.lines().filter(|l| l.contains(" web-2 ")).collect();
    assert!(
        changes.len() >= 2
            && changes
                .iter()
                .all(|l| l.starts_with("20") && l.contains("Z web-2 ") && l.contains("% green")),
        "plain lines with a time, one per change, when stdout is not a terminal: {lines}"
    );
    let o = bluegreen(&["watch", "web", "--deployment", "web-2", "--config", c]).await;
    exited(&o, 6);
    let o = bluegreen(&["watch", "web", "--deployment", "web-1", "--config", c]).await;
    assert_eq!(
        o.status.code(),
        Some(3),
        "web-1 is neither active nor last: {}",
        text(&o.stderr)
    );

    // history, newest first, against its schema.
    let o = bluegreen(&["history", "web", "--output", "json", "--config", c]).await;
    exited(&o, 0);
    let history = valid("history.schema.json", &o);
    let phases: Vec<&str> = history["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .filter_map(|d| d["phase"].as_str())
        .collect();
    assert_eq!(phases, ["RolledBack", "Succeeded"]);
    assert_eq!(
        history["deployments"][0]["reason"],
        "rollback requested by bob: bad build"
    );
    let o = bluegreen(&["history", "web", "--config", c]).await;
    assert!(text(&o.stdout).starts_with("web-2 "), "{}", text(&o.stdout));

    // 3. retry deploys the rolled-back image again; abort rolls the retry back.
    let o = bluegreen(&["retry", "web", "--by", "carol", "--config", c]).await;
    exited(&o, 0);
    env.wait_for(60, "the retry shifting", |s| {
        s.active
            .as_ref()
            .is_some_and(|d| d.id == "web-3" && d.phase == Phase::Shifting)
    })
    .await;
    let o = bluegreen(&[
        "abort",
        "web",
        "--by",
        "carol",
        "--reason",
        "enough",
        "--wait",
        "--timeout",
        "90s",
        "--config",
        c,
    ])
    .await;
    exited(&o, 0);
    assert!(
        text(&o.stdout).contains("web-3 RolledBack"),
        "abort --wait succeeds when the rollback it asked for is done: {}",
        text(&o.stdout)
    );
    let state = env
        .wait_for(60, "the retry rolled back", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.id == "web-3" && d.phase == Phase::RolledBack)
        })
        .await;
    let retried = state.last.expect("the retry");
    assert_eq!(retried.id, "web-3");
    assert_eq!(retried.retry_of.as_deref(), Some("web-2"));
    assert_eq!(
        retried.to_image.digest.as_deref(),
        Some(digest(22).as_str())
    );

    // 4. The emergency switch: green is live and blue was released; switch to blue,
    //    following it to the end (exit 0 once blue is live on every rule).
    assert_eq!(env.state().await.live, bluegreen::flow::Color::Green);
    let o = bluegreen(&[
        "switch", "web", "--to", "green", "--by", "dave", "--config", c,
    ])
    .await;
    exited(&o, 3);
    assert!(
        text(&o.stderr).contains("already the live colour"),
        "{}",
        text(&o.stderr)
    );
    let o = bluegreen(&[
        "switch",
        "web",
        "--to",
        "blue",
        "--by",
        "dave",
        "--reason",
        "green is bad",
        "--wait",
        "--timeout",
        "120s",
        "--config",
        c,
    ])
    .await;
    exited(&o, 0);
    assert!(text(&o.stdout).contains("Succeeded"), "{}", text(&o.stdout));
    assert_eq!(
        env.production().await,
        Weights {
            blue: 100,
            green: 0
        }
    );
    let state = env.state().await;
    assert_eq!(state.live, bluegreen::flow::Color::Blue, "recorded as live");
    assert!(state.last.as_ref().is_some_and(|d| d.is_switch()));
    running.stop().await;

    // AWS that cannot be reached: a bus that does not exist, no credentials; exit 4.
    let mut broken = env.config.clone();
    broken.worker.event_bus = format!("{}-missing", env.prefix);
    let broken_file = dir.join("broken.json");
    std::fs::write(&broken_file, serde_json::to_string(&broken).expect("JSON")).expect("write");
    let b = broken_file.to_str().expect("path");
    let o = bluegreen(&[
        "deploy",
        "web",
        "--image",
        "web:release-1",
        "--by",
        "x",
        "--config",
        b,
    ])
    .await;
    exited(&o, 4);
    assert!(text(&o.stderr).contains("not found"), "{}", text(&o.stderr));
    let c2 = c.to_string();
    let o = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bluegreen"));
        command
            .args(["deploy", "web", "--image", "web:release-1", "--config", &c2])
            .env("AWS_ENDPOINT_URL", crate::moto::endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE");
        command.output().expect("run")
    })
    .await
    .expect("join");
    exited(&o, 4);
    assert!(
        text(&o.stderr).contains("no AWS credentials"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_same_commands_drive_the_embedded_mode() {
    let dir = std::env::temp_dir().join(format!("bluegreen-operator-local-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
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
strategy = {{ kind = "steps", steps = [ {{ weight = 50 }}, {{ weight = 100 }} ] }}
bake = "100ms"
termination_wait = "100ms"
timeouts = {{ poll = "100ms" }}
alarms = [ {{ name = "web-5xx", error_rate_above = 0.5, window = "2s", min_requests = 1 }} ]
"#,
            dir = dir.display(),
            exe = env!("CARGO_BIN_EXE_bluegreen")
        ),
    )
    .expect("config");
    let c = file.to_str().expect("path");
    let mut local = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["local", "--config", c])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("local");
    let status = |_: ()| -> Value {
        let o = run(
            &[
                "status", "web", "--local", "--config", c, "--output", "json",
            ],
            &[],
        );
        exited(&o, 0);
        valid("status.schema.json", &o)["services"][0].clone()
    };
    // Traffic through the router until the running `local` judged the alarm, which
    // `status` (another process) reads back.
    until("the alarm to be judged", || {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = std::io::Write::write_all(
                &mut stream,
                b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
            );
            let _ = std::io::Read::read_to_end(&mut stream, &mut Vec::new());
        }
        let s = status(());
        let alarm = &s["alarms"][0];
        (alarm["name"] == "web-5xx" && alarm["state"] == "OK" && alarm["gates"] == true)
            .then_some(s)
    });
    let o = run(
        &["deploy", "web", "--image", "v2", "--local", "--config", c],
        &[],
    );
    exited(&o, 0);
    let at_half = until("the router at 50 %", || {
        let s = status(());
        (s["ruleWeights"] == serde_json::json!({ "blue": 50, "green": 50 })).then_some(s)
    });
    assert_eq!(at_half["active"]["phase"], "Shifting");
    let o = run(
        &[
            "promote",
            "web",
            "--local",
            "--config",
            c,
            "--wait",
            "--timeout",
            "60s",
        ],
        &[],
    );
    exited(&o, 0);
    assert!(
        text(&o.stdout).contains("web-1 Succeeded"),
        "{}",
        text(&o.stdout)
    );
    let o = run(
        &[
            "history", "web", "--local", "--config", c, "--output", "json",
        ],
        &[],
    );
    let history = valid("history.schema.json", &o);
    assert_eq!(history["deployments"][0]["phase"], "Succeeded");
    // The emergency switch on the embedded mode: back to blue, every rule, recorded live.
    let o = run(
        &[
            "switch",
            "web",
            "--to",
            "blue",
            "--local",
            "--config",
            c,
            "--wait",
            "--timeout",
            "60s",
        ],
        &[],
    );
    exited(&o, 0);
    let s = until("the router on blue", || {
        let s = status(());
        (s["ruleWeights"] == serde_json::json!({ "blue": 100, "green": 0 })).then_some(s)
    });
    assert_eq!(s["liveColor"], "blue");
    let o = run(&["abort", "web", "--local", "--config", c], &[]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "nothing to abort: {}",
        text(&o.stderr)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &local.id().to_string()])
        .status();
    let _ = local.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_and_the_man_page_come_from_the_command_definitions() {
    let o = run(&["completions", "bash"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let script = text(&o.stdout);
    for command in [
        "deploy", "promote", "watch", "status", "history", "rollback",
    ] {
        assert!(
            script.contains(command),
            "{command} missing from the bash completion"
        );
    }
    let o = run(&["man"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let page = text(&o.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH bluegreen"),
        "{page}"
    );
    assert!(page.contains("deploy"), "{page}");
    let o = run(&["watch", "--help"], &[]);
    assert!(text(&o.stdout).contains("Examples:"), "{}", text(&o.stdout));
}

#[test]
fn watch_names_an_image_by_tag_repository_registry_or_digest() {
    use bluegreen::operator::watch::ImageQuery;
    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pinned = format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/web@{D}");
    let hit = |q: &str, tag: Option<&str>| {
        ImageQuery::parse(q)
            .expect("an image reference")
            .matches(&pinned, tag)
    };
    assert!(hit("release-42", Some("release-42")));
    assert!(hit("web:release-42", Some("release-42")));
    assert!(hit(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/web:release-42",
        Some("release-42")
    ));
    assert!(hit(&format!("web@{D}"), None));
    assert!(hit(D, Some("anything")));
    assert!(!hit("release-41", Some("release-42")));
    assert!(!hit("api:release-42", Some("release-42")));
    assert!(
        !hit("release-42", None),
        "a tag never matches an image asked for by digest"
    );
    assert!(!hit(&format!("api@{D}"), None));
    let port = ImageQuery::parse("localhost:5000/web").expect("a repository with a port");
    assert_eq!(port.repository.as_deref(), Some("localhost:5000/web"));
    assert_eq!(port.tag, None);
    assert!(ImageQuery::parse("web@sha256:short").is_err());
    assert!(ImageQuery::parse(" ").is_err());
}

#[test]
fn status_says_when_a_step_is_overdue_and_what_the_worker_refused() {
    use bluegreen::flow::{Action, Outcome, ProductionRules};
    use bluegreen::operator::{AlarmStatus, DeploymentView, Status, render_status};
    let mut w = crate::common::world_in(crate::common::settings(), Phase::Shifting);
    let refused = w.apply(crate::common::op("a1", Action::Approve));
    assert!(matches!(refused, Outcome::Rejected { .. }));
    let d = w.active().clone();
    let due = d.next_tick.expect("a step tick").due;
    let on_time = DeploymentView::of(&d, due.plus_ms(30_000));
    assert_eq!(
        on_time.overdue_seconds, None,
        "a tick taken within a minute is not overdue"
    );
    let late = DeploymentView::of(&d, due.plus_ms(7 * 60_000));
    assert_eq!(late.overdue_seconds, Some(420));
    let mut paused = d.clone();
    paused.paused_at = Some(due);
    assert_eq!(
        DeploymentView::of(&paused, due.plus_ms(7 * 60_000)).overdue_seconds,
        None
    );

    let status = Status::of(
        &w.state,
        Ok(ProductionRules::one("rule", d.weights)),
        vec![AlarmStatus::new("web-5xx", "OK")],
        due.plus_ms(7 * 60_000),
    );
    let text = render_status(&status);
    assert!(text.contains("OVERDUE by 7m"), "{text}");
    assert!(text.contains("step served since"), "{text}");
    assert_eq!(status.refused.len(), 1);
    assert!(
        text.contains("refused") && text.contains("a1 (invalid-transition)"),
        "{text}"
    );
}
