//! The AWS worker end to end on moto server: events injected with `PutEvents` exactly as
//! AWS emits them, the worker consuming the real queue, and assertions on what really
//! happened in ELBv2, ECS, DynamoDB and on the bus (captured by a rule into an audit
//! queue and validated against `schemas/`).

use bluegreen::flow::{Color, Phase, Weights};
use bluegreen::schema::{self, SchemaId};

use crate::moto::{Env, Running, Shape};

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn wt(blue: u8, green: u8) -> Weights {
    Weights { blue, green }
}

/// Drains the audit queue, validates every event against the outbound schema, and
/// returns the events in sequence order. Publication is at least once with a stable
/// `eventId`, but a copy can only come from a worker that died between `PutEvents` and
/// marking the entry done; none of these scenarios kills one there, so an `eventId`
/// published twice fails (two workers flushing one entry), and distinct events must never
/// repeat a deployment's sequence (a transition made twice).
async fn audited(env: &Env) -> Vec<(String, serde_json::Value)> {
    let mut by_id: std::collections::HashMap<String, (String, serde_json::Value)> =
        std::collections::HashMap::new();
    for body in env.drain(&env.audit_url).await {
        let event: serde_json::Value = serde_json::from_str(&body).expect("audit event is JSON");
        if let Err(errors) = schema::validate(SchemaId::OutboundEvent, &event) {
            panic!("published event fails the schema: {errors:?}\n{event:#}");
        }
        let kind = event["detail-type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let id = event["detail"]["eventId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some((_, earlier)) = by_id.get(&id) {
            panic!(
                "eventId {id} published twice:\n{earlier:#}\n{:#}",
                event["detail"]
            );
        }
        by_id.insert(id, (kind, event["detail"].clone()));
    }
    let mut out: Vec<(String, serde_json::Value)> = by_id.into_values().collect();
    out.sort_by_key(|(_, d)| {
        (
            d["deploymentId"].to_string(),
            d["sequence"].as_u64().unwrap_or(0),
        )
    });
    let mut transitions = std::collections::HashSet::new();
    for (kind, d) in out.iter().filter(|(k, _)| k != "Event Rejected") {
        assert!(
            transitions.insert((d["deploymentId"].to_string(), d["sequence"].as_u64())),
            "two different events for one transition: {kind} {d}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecr_push_deploys_linearly_and_releases_the_old_colour() {
    let env = Env::create("push", Shape::default()).await;
    let (worker, world) = env.worker("w1");
    let running = Running::start(&worker);

    env.push(&digest(1), "release-1").await;
    let state = env
        .wait_for(120, "success and release of blue", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::Succeeded && d.warm_until.is_none())
        })
        .await;
    running.stop().await;

    let d = state.last.expect("deployment");
    assert_eq!(d.id, "web-1");
    let record = aws_sdk_dynamodb::Client::new(&env.sdk)
        .get_item()
        .table_name(&env.config.worker.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("DEPLOYMENT#web-1".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("RECORD".into()),
        )
        .send()
        .await
        .expect("record");
    let item = record.item().expect("the deployment record exists");
    assert_eq!(
        item.get("phase")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str),
        Some("Succeeded")
    );
    let stored: bluegreen::flow::Deployment = serde_json::from_str(
        item.get("record")
            .and_then(|v| v.as_s().ok())
            .expect("record"),
    )
    .expect("record JSON");
    assert_eq!(stored, d, "the record matches the state");
    assert_eq!(state.live, Color::Green);
    assert_eq!(env.production().await, wt(0, 100));
    // The same weights may be written again (a tick or a reconciler pass that finds them
    // unconfirmed on a loaded machine writes them once more); never other weights, never
    // back.
    let mut applied = world.applied.lock().expect("lock").clone();
    let writes = applied.clone();
    applied.dedup();
    assert_eq!(
        applied,
        [wt(50, 50), wt(0, 100)],
        "weights written and read back, in order: {writes:?}"
    );

    let green = env.ecs_service("green").await;
    let revision = d.revision.expect("revision");
    assert_eq!(green.task_definition(), Some(revision.as_str()));
    assert_eq!(green.desired_count(), 2, "green runs blue's desired count");
    assert_eq!(
        env.ecs_service("blue").await.desired_count(),
        0,
        "blue released after the termination wait"
    );
    let td = aws_sdk_ecs::Client::new(&env.sdk)
        .describe_task_definition()
        .task_definition(&revision)
        .send()
        .await
        .expect("td");
    let containers = td.task_definition().expect("td").container_definitions();
    let app = containers
        .iter()
        .find(|c| c.name() == Some("app"))
        .expect("app");
    assert_eq!(
        app.image(),
        Some(
            format!(
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/web@{}",
                digest(1)
            )
            .as_str()
        ),
        "only the app image is replaced, by digest"
    );
    let sidecar = containers
        .iter()
        .find(|c| c.name() == Some("log-router"))
        .expect("sidecar");
    assert_eq!(
        sidecar.image(),
        Some("public.ecr.aws/aws-observability/aws-for-fluent-bit:stable")
    );

    let events = audited(&env).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let story: Vec<String> = events
        .iter()
        .map(|(k, d)| {
            format!(
                "{k}: {} → {} ({})",
                d["previousPhase"], d["phase"], d["reason"]
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Deployment Started",
            "Deployment Phase Changed",
            "Deployment Phase Changed",
            "Deployment Phase Changed",
            "Traffic Shifted",
            "Traffic Shifted",
            "Deployment Phase Changed",
            "Deployment Phase Changed",
            "Deployment Succeeded",
            "Old Color Released"
        ],
        "{story:#?}"
    );
    assert!(
        env.drain(&env.dlq_url).await.is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_mid_shift_restores_the_old_colour_first() {
    let env = Env::create(
        "alarm",
        Shape {
            strategy: r#"{ kind = "linear", step_percent = 25, interval = "3s" }"#,
            ..Shape::default()
        },
    )
    .await;
    let (worker, world) = env.worker("w1");
    let running = Running::start(&worker);

    env.push(&digest(2), "release-2").await;
    env.wait_for(60, "the second step", |s| {
        s.active
            .as_ref()
            .is_some_and(|d| d.phase == Phase::Shifting && d.step == 1)
    })
    .await;
    env.alarm_fires().await;
    let state = env.wait_for_last(Phase::RolledBack, 60).await;
    running.stop().await;

    assert_eq!(state.live, Color::Blue);
    assert_eq!(env.production().await, wt(100, 0));
    let applied = world.applied.lock().expect("lock").clone();
    assert_eq!(&applied[..2], [wt(75, 25), wt(50, 50)]);
    assert_eq!(applied.last(), Some(&wt(100, 0)), "production restored");
    assert_eq!(
        env.ecs_service("green").await.desired_count(),
        0,
        "the failed colour is scaled down"
    );
    let reason = state
        .last
        .and_then(|d| d.rollback)
        .map(|r| r.reason)
        .unwrap_or_default();
    assert!(reason.contains(&env.alarm), "{reason}");
    let events = audited(&env).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        kinds.ends_with(&[
            "Deployment Rolling Back",
            "Traffic Shifted",
            "Deployment Rolled Back"
        ]),
        "{kinds:?}"
    );
    let (_, restored) = &events[events.len() - 2];
    assert_eq!(
        (restored["phase"].as_str(), &restored["weights"]),
        (
            Some("RollingBack"),
            &serde_json::json!({ "blue": 100, "green": 0 })
        ),
        "the restore is announced with the weights read back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_messages_are_rejected_and_dead_lettered() {
    let env = Env::create("poison", Shape::default()).await;
    let (worker, _) = env.worker("w1");
    let running = Running::start(&worker);

    env.send_raw("{ this is not json").await;
    env.send_raw(r#"{"version":"0","id":"x1","detail-type":"Launch Missiles","source":"bluegreen.manual","detail":{}}"#).await;
    env.send_raw(&serde_json::json!({
        "version": "0", "id": "x2", "detail-type": "Abort Requested", "source": "bluegreen.manual",
        "time": crate::common::wall_now(), "region": "us-east-1", "resources": [],
        "detail": { "service": "payments", "requestedBy": "mallory" }
    }).to_string()).await;
    env.send_raw(&"A".repeat(200_000)).await;

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut dead = Vec::new();
    while dead.len() < 4 && tokio::time::Instant::now() < deadline {
        dead.extend(env.drain(&env.dlq_url).await);
    }
    running.stop().await;
    assert_eq!(
        dead.len(),
        4,
        "every poison message reached the dead-letter queue: {dead:?}"
    );
    let events = audited(&env).await;
    let mut codes: Vec<String> = events
        .iter()
        .filter(|(k, _)| k == "Event Rejected")
        .map(|(_, d)| d["code"].as_str().unwrap_or_default().to_string())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "malformed-json",
            "too-large",
            "unknown-kind",
            "unknown-service"
        ],
        "one rejection per message, on first receipt"
    );
    for (_, d) in events.iter().filter(|(k, _)| k == "Event Rejected") {
        assert!(
            d["service"].is_null() && d["weights"].is_null() && d["liveColor"].is_null(),
            "nothing invented: {d}"
        );
        assert!(
            d["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "a reason: {d}"
        );
    }
    assert!(env.state().await.active.is_none(), "nothing was deployed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_a_crash_between_commit_and_effects_change_nothing() {
    let env = Env::create("dupes", Shape::default()).await;
    // The first worker dies right after committing the deployment's first decision.
    let (first, first_world) = env.worker("w1");
    first_world
        .crash_after_next_commit
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let running = Running::start(&first);
    env.push(&digest(3), "release-3").await;
    env.push(&digest(3), "release-3").await; // the same image pushed twice
    env.wait_for(30, "the deployment to be committed", |s| s.active.is_some())
        .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while first_world
        .crash_after_next_commit
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never died"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    running.kill();
    let stalled = env.state().await;
    assert_eq!(
        stalled.active.as_ref().map(|d| d.phase),
        Some(Phase::Requested),
        "effects were lost with the crash"
    );

    // A restarted worker (with the reconciler) picks the deployment up again; every
    // operator message is delivered twice.
    let (second, _) = env.worker_with("w2", std::time::Duration::from_secs(2));
    let running = Running::start(&second);
    let state = env
        .wait_for(90, "success after the restart", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::Succeeded && d.warm_until.is_none())
        })
        .await;
    let pause = serde_json::json!({
        "version": "0", "id": "op-1", "detail-type": "Rollback Requested", "source": "bluegreen.manual",
        "time": crate::common::wall_now(), "region": "us-east-1", "resources": [],
        "detail": { "service": "web", "requestedBy": "alice" }
    })
    .to_string();
    env.send_raw(&pause).await;
    env.send_raw(&pause).await;
    env.wait_for_empty_queue(30).await;
    running.stop().await;

    assert_eq!(
        state.deployments_started, 1,
        "the second push was a duplicate"
    );
    assert_eq!(
        env.registrations("web-1").await,
        1,
        "one task definition registration"
    );
    let events = audited(&env).await;
    let rejected: Vec<_> = events
        .iter()
        .filter(|(k, _)| k == "Event Rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "the late rollback is refused once, the duplicate ignored: {rejected:?}"
    );
    assert_eq!(env.production().await, wt(0, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_deploy_several_services_without_conflicting_writes() {
    let env = Env::create(
        "two",
        Shape {
            services: 3,
            ..Shape::default()
        },
    )
    .await;
    let (first, first_world) = env.worker("w1");
    let (second, second_world) = env.worker("w2");
    let runs = [Running::start(&first), Running::start(&second)];
    env.push(&digest(4), "release-4").await;
    for name in ["web", "web1", "web2"] {
        env.wait_for_service(name, 120, "every service to succeed", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::Succeeded && d.warm_until.is_none())
        })
        .await;
    }
    for run in runs {
        run.stop().await;
    }
    let mut writes: Vec<_> = first_world.applied_at.lock().expect("lock").clone();
    writes.extend(
        second_world
            .applied_at
            .lock()
            .expect("lock")
            .iter()
            .cloned(),
    );
    writes.sort_by_key(|(at, _, _)| *at);
    for name in ["web", "web1", "web2"] {
        let all: Vec<Weights> = writes
            .iter()
            .filter(|(_, s, _)| s == name)
            .map(|(_, _, w)| *w)
            .collect();
        // Weights found unconfirmed on a loaded machine are written again: the same
        // weights, never other ones, never back.
        let mut seen = all.clone();
        seen.dedup();
        assert_eq!(
            seen,
            [wt(50, 50), wt(0, 100)],
            "{name}: writes by both workers, in time order: {all:?}"
        );
    }
    let events = audited(&env).await;
    let mut per_deployment: std::collections::HashMap<String, Vec<u64>> =
        std::collections::HashMap::new();
    for (_, d) in &events {
        per_deployment
            .entry(format!("{}/{}", d["service"], d["deploymentId"]))
            .or_default()
            .push(d["sequence"].as_u64().unwrap_or(0));
    }
    assert_eq!(per_deployment.len(), 3);
    for (deployment, mut sequences) in per_deployment {
        sequences.sort_unstable();
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(
            sequences, expected,
            "{deployment}: every transition published once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_during_the_bake_rolls_back_from_full_traffic() {
    let env = Env::create(
        "bake",
        Shape {
            bake: "1h",
            ..Shape::default()
        },
    )
    .await;
    let (worker, world) = env.worker("w1");
    let running = Running::start(&worker);
    env.push(&digest(5), "release-5").await;
    env.wait_for(60, "the bake", |s| {
        s.active.as_ref().is_some_and(|d| d.phase == Phase::Baking)
    })
    .await;
    assert_eq!(env.production().await, wt(0, 100));
    // The alarm's event, as CloudWatch sends it when the alarm enters ALARM now.
    env.send_raw(&env.alarm_message(&crate::moto::cloudwatch_now()))
        .await;
    let state = env.wait_for_last(Phase::RolledBack, 60).await;
    running.stop().await;
    assert_eq!(state.live, Color::Blue);
    assert_eq!(env.production().await, wt(100, 0));
    let from = state.last.and_then(|d| d.rollback).map(|r| r.from_phase);
    assert_eq!(from, Some(Phase::Baking));
    assert_eq!(
        world.applied.lock().expect("lock").last(),
        Some(&wt(100, 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_approve_pause_resume_promote_roll_back_after_success_retry_and_abort() {
    let env = Env::create(
        "ops",
        Shape {
            strategy: r#"{ kind = "linear", step_percent = 50, interval = "1h" }"#,
            bake: "1h",
            termination_wait: "1h",
            extra: "approval = true".into(),
            ..Shape::default()
        },
    )
    .await;
    let (worker, _) = env.worker("w1");
    let running = Running::start(&worker);
    let phase = |p: Phase| {
        move |s: &bluegreen::flow::ServiceState| s.active.as_ref().is_some_and(|d| d.phase == p)
    };

    env.push(&digest(6), "release-6").await;
    env.wait_for(60, "the approval gate", phase(Phase::AwaitingApproval))
        .await;
    assert_eq!(
        env.production().await,
        wt(100, 0),
        "nothing moves before approval"
    );
    env.operator("Approve Requested", serde_json::json!({}))
        .await;
    env.wait_for(60, "the first step", phase(Phase::Shifting))
        .await;
    env.wait_for_weights(wt(50, 50), 30).await;
    env.operator(
        "Pause Requested",
        serde_json::json!({ "reason": "checking a dashboard" }),
    )
    .await;
    env.wait_for(30, "the pause", |s| {
        s.active.as_ref().is_some_and(|d| d.is_paused())
    })
    .await;
    env.operator("Resume Requested", serde_json::json!({}))
        .await;
    env.wait_for(30, "the resume", |s| {
        s.active.as_ref().is_some_and(|d| !d.is_paused())
    })
    .await;
    env.operator("Promote Requested", serde_json::json!({ "skipBake": true }))
        .await;
    let succeeded = env.wait_for_last(Phase::Succeeded, 60).await;
    assert_eq!(succeeded.live, Color::Green);
    assert_eq!(env.production().await, wt(0, 100));
    assert_eq!(
        env.ecs_service("blue").await.desired_count(),
        2,
        "blue stays warm"
    );

    env.operator(
        "Rollback Requested",
        serde_json::json!({ "reason": "customer reports" }),
    )
    .await;
    let rolled = env
        .wait_for(60, "rollback after success", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::RolledBack)
        })
        .await;
    assert_eq!(rolled.live, Color::Blue);
    assert_eq!(env.production().await, wt(100, 0));
    assert_eq!(env.ecs_service("green").await.desired_count(), 0);

    env.operator("Retry Requested", serde_json::json!({})).await;
    env.wait_for(60, "the retry at the gate", |s| {
        s.active
            .as_ref()
            .is_some_and(|d| d.id == "web-2" && d.phase == Phase::AwaitingApproval)
    })
    .await;
    env.operator(
        "Abort Requested",
        serde_json::json!({ "reason": "wrong day" }),
    )
    .await;
    let aborted = env
        .wait_for(60, "the abort", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.id == "web-2" && d.phase == Phase::RolledBack)
        })
        .await;
    running.stop().await;

    let reason = aborted
        .last
        .and_then(|d| d.rollback)
        .map(|r| r.reason)
        .unwrap_or_default();
    assert!(
        reason.contains("aborted by alice@example.com: wrong day"),
        "{reason}"
    );
    let events = audited(&env).await;
    let by_alice = events
        .iter()
        .filter(|(_, d)| d["requestedBy"] == "alice@example.com")
        .count();
    assert!(
        by_alice >= 6,
        "operator-driven transitions name who asked ({by_alice})"
    );
    assert!(
        events.iter().all(|(k, _)| k != "Event Rejected"),
        "no action was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_consumes_the_queue_and_stops_cleanly_on_sigterm() {
    let env = Env::create("binary", Shape::default()).await;
    let config = serde_json::to_string(&env.config).expect("config as JSON");
    let log_path = std::env::temp_dir().join(format!("{}-worker.log", env.prefix));
    let stdout_path = std::env::temp_dir().join(format!("{}-worker.out", env.prefix));
    // Its working directory, HOME and TMPDIR: an empty directory that must stay empty
    // (the container's root file system is read-only).
    let home = std::env::temp_dir().join(format!("{}-home", env.prefix));
    std::fs::create_dir_all(&home).expect("home");
    let health = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["worker", "--wait", "1s", "--id", "binary-test"])
        .args(["--health-addr", &health])
        .current_dir(&home)
        .env("HOME", &home)
        .env("TMPDIR", &home)
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .env("BLUEGREEN_CONFIG_JSON", config)
        .env_remove("BLUEGREEN_CONFIG")
        .env("AWS_ENDPOINT_URL", crate::moto::endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker");
    env.push(&digest(7), "release-7").await;
    env.wait_for(60, "the binary to take the push", |s| {
        s.active.is_some() || s.last.is_some()
    })
    .await;
    let pid = child.id().expect("pid").to_string();
    // The container's health check: the same binary asks the worker over loopback.
    let check = |timeout: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bluegreen"))
            .args(["health", "--addr", &health, "--timeout", timeout])
            .output()
            .expect("bluegreen health");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, said) = check("5s");
    assert_eq!(code, Some(0), "{said}");
    let report: serde_json::Value = serde_json::from_str(&said).expect("a JSON report");
    assert_eq!(report["status"], "ok", "{said}");
    // A frozen worker answers nothing: the check fails on its deadline.
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .expect("kill")
                .success()
        );
    };
    signal("-STOP");
    let (code, said) = check("1s");
    signal("-CONT");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("did not answer within"), "{said}");
    let signalled = tokio::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut child = child;
    let exit = tokio::time::timeout(std::time::Duration::from_secs(25), child.wait())
        .await
        .expect("the worker exits within the ECS stop timeout")
        .expect("exit status");
    assert_eq!(exit.code(), Some(0));
    assert!(signalled.elapsed() < std::time::Duration::from_secs(25));
    let written: Vec<_> = std::fs::read_dir(&home)
        .expect("home")
        .map(|e| e.map(|e| e.path()))
        .collect();
    assert!(written.is_empty(), "the worker wrote {written:?}");
    // Nothing is left in flight: each message it held was finished (deleted) or released.
    let attributes = aws_sdk_sqs::Client::new(&env.sdk)
        .get_queue_attributes()
        .queue_url(&env.queue_url)
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .expect("queue attributes");
    let in_flight = attributes
        .attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        })
        .cloned();
    assert_eq!(in_flight.as_deref(), Some("0"), "messages left in flight");
    // stdout carries the EMF documents (flushed once more at exit) and the final line.
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout");
    let (emf, other): (Vec<&str>, Vec<&str>) = stdout.lines().partition(|l| l.starts_with('{'));
    assert_eq!(other, ["worker stopped"], "{stdout}");
    let documents: Vec<serde_json::Value> = emf
        .iter()
        .map(|l| serde_json::from_str(l).expect("an EMF document is JSON"))
        .collect();
    assert!(
        documents
            .iter()
            .any(|d| d["MessagesProcessed"].as_u64() >= Some(1)
                && d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Bluegreen"),
        "{stdout}"
    );
    assert!(
        documents
            .iter()
            .any(|d| d["Service"] == "web" && d["DeploymentsStarted"].as_u64() == Some(1)),
        "{stdout}"
    );
    let logs = std::fs::read_to_string(&log_path).expect("logs");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "shutdown requested"),
        "{logs}"
    );
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "message"
            || l["spans"].as_array().is_some_and(|s| !s.is_empty())),
        "messages are logged inside their span: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validations_through_the_test_listener_gate_the_shift() {
    for (status, passes) in [(200, true), (503, false)] {
        let (url, hits) = crate::moto::http_stub(status).await;
        let env = Env::create(
            "checks",
            Shape {
                test_listener: true,
                extra: format!("validations = [ {{ url = \"{url}\", expect_status = 200 }} ]"),
                ..Shape::default()
            },
        )
        .await;
        let (worker, world) = env.worker("w1");
        let running = Running::start(&worker);
        env.push(&digest(8), "release-8").await;
        let want = if passes {
            Phase::Succeeded
        } else {
            Phase::RolledBack
        };
        let state = env
            .wait_for(60, "the end of the deployment", |s| {
                s.last.as_ref().is_some_and(|d| d.phase == want)
            })
            .await;
        running.stop().await;
        assert!(
            hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the check was run"
        );
        let applied = world.applied.lock().expect("lock").clone();
        if passes {
            assert_eq!(
                env.test_weights().await,
                wt(0, 100),
                "the test rule follows the new live colour"
            );
            assert_eq!(applied.first(), Some(&wt(50, 50)));
        } else {
            assert_eq!(
                env.test_weights().await,
                wt(100, 0),
                "the test rule is restored"
            );
            assert!(
                applied.iter().all(|w| *w == wt(100, 0)),
                "production never moved: {applied:?}"
            );
            let reason = state
                .last
                .and_then(|d| d.rollback)
                .map(|r| r.reason)
                .unwrap_or_default();
            assert!(reason.contains("HTTP 503"), "{reason}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_already_in_alarm_blocks_the_start() {
    let env = Env::create("blocked", Shape::default()).await;
    crate::moto::set_alarm(&env.sdk, &env.alarm, "ALARM").await;
    let (worker, _) = env.worker("w1");
    let running = Running::start(&worker);
    env.push(&digest(9), "release-9").await;
    let state = env
        .wait_for(60, "the blocked start", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::RolledBack)
        })
        .await;
    running.stop().await;
    let reason = state
        .last
        .as_ref()
        .and_then(|d| d.rollback.clone())
        .map(|r| r.reason)
        .unwrap_or_default();
    assert!(
        reason.contains("blocked") && reason.contains(&env.alarm),
        "{reason}"
    );
    assert_eq!(
        state.last.and_then(|d| d.revision),
        None,
        "nothing was registered"
    );
    assert_eq!(env.production().await, wt(100, 0));
}
