//! The AWS worker end to end on moto server: events injected with `PutEvents` exactly as
//! AWS emits them, the worker consuming the real queue, and assertions on what really
//! happened in ELBv2, ECS, DynamoDB and on the bus (captured by a rule into an audit
//! queue and validated against `schemas/`).

use bluegreen::flow::{Color, Phase, Weights};
use bluegreen::schema::{self, SchemaId};
use tokio::sync::watch;

use crate::moto::{Env, Shape};

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn wt(blue: u8, green: u8) -> Weights {
    Weights { blue, green }
}

/// Drains the audit queue, validates every event against the outbound schema, and
/// returns their detail-types.
async fn audited(env: &Env) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for body in env.drain(&env.audit_url).await {
        let event: serde_json::Value = serde_json::from_str(&body).expect("audit event is JSON");
        if let Err(errors) = schema::validate(SchemaId::OutboundEvent, &event) {
            panic!("published event fails the schema: {errors:?}\n{event:#}");
        }
        out.push((
            event["detail-type"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            event["detail"].clone(),
        ));
    }
    out.sort_by_key(|(_, d)| d["sequence"].as_u64().unwrap_or(0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecr_push_deploys_linearly_and_releases_the_old_colour() {
    let env = Env::create("push", Shape::default()).await;
    let (worker, world) = env.worker("w1");
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.clone().run(stopped));

    env.push(&digest(1), "release-1").await;
    let state = env
        .wait_for(60, "success and release of blue", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::Succeeded && d.warm_until.is_none())
        })
        .await;
    stop.send(true).expect("stop");
    running.await.expect("worker stops");

    let d = state.last.expect("deployment");
    assert_eq!(d.id, "web-1");
    assert_eq!(state.live, Color::Green);
    assert_eq!(env.production().await, wt(0, 100));
    let applied = world.applied.lock().expect("lock").clone();
    assert_eq!(
        applied,
        [wt(50, 50), wt(0, 100), wt(0, 100), wt(0, 100)],
        "weights written and read back, in order"
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
    assert_eq!(
        kinds,
        [
            "Deployment Started",
            "Deployment Phase Changed",
            "Deployment Phase Changed",
            "Traffic Shifted",
            "Traffic Shifted",
            "Deployment Phase Changed",
            "Deployment Phase Changed",
            "Deployment Succeeded",
            "Old Color Released"
        ]
    );
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|(_, d)| d["eventId"].to_string())
        .collect();
    assert_eq!(ids.len(), events.len(), "no event published twice");
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
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.clone().run(stopped));

    env.push(&digest(2), "release-2").await;
    env.wait_for(60, "the second step", |s| {
        s.active
            .as_ref()
            .is_some_and(|d| d.phase == Phase::Shifting && d.step == 1)
    })
    .await;
    env.alarm_fires().await;
    let state = env
        .wait_for(60, "the rollback", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::RolledBack)
        })
        .await;
    stop.send(true).expect("stop");
    running.await.expect("worker stops");

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
    let kinds: Vec<String> = audited(&env).await.into_iter().map(|(k, _)| k).collect();
    assert!(
        kinds.ends_with(&[
            "Deployment Rolling Back".to_string(),
            "Deployment Rolled Back".to_string()
        ]),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_messages_are_rejected_and_dead_lettered() {
    let env = Env::create("poison", Shape::default()).await;
    let (worker, _) = env.worker("w1");
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.clone().run(stopped));

    env.send_raw("{ this is not json").await;
    env.send_raw(r#"{"version":"0","id":"x1","detail-type":"Launch Missiles","source":"bluegreen.manual","detail":{}}"#).await;
    env.send_raw(&serde_json::json!({
        "version": "0", "id": "x2", "detail-type": "Abort Requested", "source": "bluegreen.manual",
        "time": "2026-11-26T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": { "service": "payments", "requestedBy": "mallory" }
    }).to_string()).await;
    env.send_raw(&"A".repeat(200_000)).await;

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut dead = Vec::new();
    while dead.len() < 4 && tokio::time::Instant::now() < deadline {
        dead.extend(env.drain(&env.dlq_url).await);
    }
    stop.send(true).expect("stop");
    running.await.expect("the worker survived every message");
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
            "malformed-json",
            "unknown-kind",
            "unknown-service"
        ],
        "one rejection per message, on first receipt"
    );
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
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(first.clone().run(stopped));
    env.push(&digest(3), "release-3").await;
    env.push(&digest(3), "release-3").await; // the same image pushed twice
    env.wait_for(30, "the deployment to be committed", |s| s.active.is_some())
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    stop.send(true).expect("stop");
    running.await.expect("stops");
    let stalled = env.state().await;
    assert_eq!(
        stalled.active.as_ref().map(|d| d.phase),
        Some(Phase::Requested),
        "effects were lost with the crash"
    );

    // A restarted worker (with the reconciler) picks the deployment up again; every
    // operator message is delivered twice.
    let (second, _) = env.worker_with("w2", std::time::Duration::from_secs(2));
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(second.clone().run(stopped));
    let state = env
        .wait_for(90, "success after the restart", |s| {
            s.last
                .as_ref()
                .is_some_and(|d| d.phase == Phase::Succeeded && d.warm_until.is_none())
        })
        .await;
    let pause = serde_json::json!({
        "version": "0", "id": "op-1", "detail-type": "Rollback Requested", "source": "bluegreen.manual",
        "time": "2026-11-26T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": { "service": "web", "requestedBy": "alice" }
    })
    .to_string();
    env.send_raw(&pause).await;
    env.send_raw(&pause).await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    stop.send(true).expect("stop");
    running.await.expect("stops");

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
    let ids: Vec<String> = events
        .iter()
        .map(|(_, d)| d["eventId"].to_string())
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "no outbound event published twice: {ids:?}"
    );
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
