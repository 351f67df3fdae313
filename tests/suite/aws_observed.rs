//! The AWS worker acts only on observed facts, end to end on moto server (SPEC §4
//! invariants 9 and 10): a service whose green is live, the production rule changed
//! behind the worker's back while idle and mid-shift, and an image requested by tag.
//! Every assertion reads what moto holds (ELBv2, ECS) or what reached the bus.

use std::time::Duration;

use bluegreen::flow::{Color, Phase, Weights};
use bluegreen::schema::{self, SchemaId};

use crate::moto::{Env, Running, Shape};

fn wt(blue: u8, green: u8) -> Weights {
    Weights { blue, green }
}

/// The events on the audit queue, each checked against the outbound schema.
async fn events(env: &Env) -> Vec<serde_json::Value> {
    env.drain(&env.audit_url)
        .await
        .iter()
        .map(|body| {
            let event: serde_json::Value = serde_json::from_str(body).expect("JSON");
            if let Err(errors) = schema::validate(SchemaId::OutboundEvent, &event) {
                panic!("published event fails the schema: {errors:?}\n{event:#}");
            }
            event
        })
        .collect()
}

/// A worker reconciling every second, once it deployed the image `sha256:<byte × 32>`
/// tagged `tag` and released blue.
async fn deployed_and_released(env: &Env, byte: &str, tag: &str) -> Running {
    let (worker, _) = env.worker_with("w1", Duration::from_secs(1));
    let running = Running::start(&worker);
    env.push(&format!("sha256:{}", byte.repeat(32)), tag).await;
    env.wait_for(60, "success and release of blue", |s| {
        s.last
            .as_ref()
            .is_some_and(|d| d.phase == Phase::Succeeded && d.warm_until.is_none())
    })
    .await;
    running
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["detail-type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_live_with_no_stored_state_deploys_to_blue_and_never_touches_green() {
    let env = Env::create(
        "greenlive",
        Shape {
            green_live: true,
            // Green would be released after this; the test ends long before.
            termination_wait: "10m",
            ..Shape::default()
        },
    )
    .await;
    let green_before = env.ecs_service("green").await;
    let (worker, world) = env.worker("w1");
    let running = Running::start(&worker);
    env.push(&format!("sha256:{}", "5a".repeat(32)), "release-5")
        .await;
    let state = env.wait_for_last(Phase::Succeeded, 60).await;
    running.stop().await;

    let d = state.last.expect("deployment");
    assert_eq!((d.stable, d.target), (Color::Green, Color::Blue));
    assert_eq!(state.live, Color::Blue);
    assert_eq!(env.production().await, wt(100, 0));
    let green = env.ecs_service("green").await;
    assert_eq!(
        (green.task_definition(), green.desired_count()),
        (green_before.task_definition(), 2),
        "the colour that carried the traffic was never updated"
    );
    let blue = env.ecs_service("blue").await;
    assert_eq!(blue.task_definition(), d.revision.as_deref());
    assert_eq!(blue.desired_count(), 2, "blue runs green's count");
    let applied = world.applied.lock().expect("lock").clone();
    assert_eq!(applied.first(), Some(&wt(50, 50)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_while_idle_is_detected_and_written_back() {
    let env = Env::create("idledrift", Shape::default()).await;
    let running = deployed_and_released(&env, "6b", "release-6").await;
    // A stack update writes the template's weights back: blue 100.
    env.rewrite_rule(wt(100, 0)).await;
    env.wait_for_weights(wt(0, 100), 30).await;
    running.stop().await;

    let events = events(&env).await;
    let drift = of_kind(&events, "Weight Drift Detected");
    assert_eq!(drift.len(), 1, "{drift:#?}");
    let d = &drift[0]["detail"];
    assert_eq!(
        d["drift"]["expected"],
        serde_json::json!({ "blue": 0, "green": 100 })
    );
    assert_eq!(
        d["drift"]["found"],
        serde_json::json!({ "blue": 100, "green": 0 })
    );
    assert_eq!(
        d["drift"]["rule"].as_str(),
        env.service().production_listener_rule_arn.as_deref()
    );
    assert_eq!(d["drift"]["policy"], "reassert");
    let shifted = of_kind(&events, "Traffic Shifted");
    assert_eq!(
        shifted.last().map(|e| &e["detail"]["weights"]),
        Some(&serde_json::json!({ "blue": 0, "green": 100 })),
        "the write-back is announced as read back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_mid_shift_pauses_the_deployment_with_the_pause_policy() {
    let env = Env::create(
        "shiftdrift",
        Shape {
            strategy: r#"{ kind = "linear", step_percent = 25, interval = "3s" }"#,
            extra: r#"drift = "pause""#.into(),
            ..Shape::default()
        },
    )
    .await;
    let (worker, _) = env.worker("w1");
    let running = Running::start(&worker);
    env.push(&format!("sha256:{}", "7c".repeat(32)), "release-7")
        .await;
    env.wait_for(60, "the first step", |s| {
        s.active
            .as_ref()
            .is_some_and(|d| d.phase == Phase::Shifting && d.step == 0)
    })
    .await;
    env.wait_for_weights(wt(75, 25), 10).await;
    env.rewrite_rule(wt(100, 0)).await;
    let paused = env
        .wait_for(30, "the deployment to pause", |s| {
            s.active.as_ref().is_some_and(|d| d.paused_at.is_some())
        })
        .await;
    assert_eq!(paused.active.as_ref().map(|d| d.step), Some(0));
    assert_eq!(
        env.production().await,
        wt(100, 0),
        "nothing written over it"
    );
    env.operator(
        "Resume Requested",
        serde_json::json!({ "reason": "the stack update is done" }),
    )
    .await;
    env.wait_for_last(Phase::Succeeded, 60).await;
    running.stop().await;
    assert_eq!(env.production().await, wt(0, 100));

    let events = events(&env).await;
    let drift = of_kind(&events, "Weight Drift Detected");
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert_eq!(drift[0]["detail"]["paused"], true);
    assert_eq!(
        drift[0]["detail"]["drift"]["expected"],
        serde_json::json!({ "blue": 75, "green": 25 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_requested_by_tag_is_resolved_through_ecr_and_deployed_by_digest() {
    let env = Env::create("bytag", Shape::default()).await;
    let tag = format!("{}-v5", env.prefix);
    let digest = env.ecr_image(&tag).await;
    let (worker, _) = env.worker("w1");
    let running = Running::start(&worker);
    env.operator(
        "Deploy Requested",
        serde_json::json!({ "image": format!("web:{tag}") }),
    )
    .await;
    let state = env.wait_for_last(Phase::Succeeded, 60).await;
    env.operator(
        "Deploy Requested",
        serde_json::json!({ "image": "web:no-such-tag" }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let rejected = loop {
        seen.extend(events(&env).await);
        if let Some(e) = of_kind(&seen, "Event Rejected").first() {
            break (*e).clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no Event Rejected");
    };
    running.stop().await;

    let d = state.last.expect("deployment");
    let repository = "123456789012.dkr.ecr.us-east-1.amazonaws.com/web";
    assert_eq!(d.to_image.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(d.to_image.tag.as_deref(), Some(tag.as_str()));
    let td = aws_sdk_ecs::Client::new(&env.sdk)
        .describe_task_definition()
        .task_definition(d.revision.expect("revision"))
        .send()
        .await
        .expect("td");
    let image = td
        .task_definition()
        .and_then(|t| {
            t.container_definitions()
                .iter()
                .find(|c| c.name() == Some("app"))
        })
        .and_then(|c| c.image())
        .map(str::to_string);
    assert_eq!(
        image,
        Some(format!("{repository}@{digest}")),
        "deployed by digest"
    );
    let started = of_kind(&seen, "Deployment Started");
    assert_eq!(started[0]["detail"]["toTag"].as_str(), Some(tag.as_str()));
    assert_eq!(rejected["detail"]["code"], "image-not-found");
    assert!(
        rejected["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no-such-tag")),
        "{rejected:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_outbox_claims_and_the_reconciler_lease_exclude_a_second_worker() {
    use bluegreen::contract::Entry;
    use bluegreen::flow::{ServiceState, Timestamp};
    use bluegreen::ports::{Commit, Lease, Store};

    let env = Env::create("claims", Shape::default()).await;
    let (a, b) = (env.world(), env.world());
    let now = Timestamp::from_millis(1_800_000_000_000);
    let lease = |owner, now: Timestamp| Lease {
        owner,
        until: now.plus(Duration::from_secs(30)),
        now,
    };
    let entry = |id: &str| Entry {
        source: "bluegreen".into(),
        detail_type: "Deployment Started",
        detail: "{}".into(),
        resources: vec![],
        event_id: id.into(),
        time: "2026-12-01T10:00:00.000Z".into(),
    };
    let events = [entry("web-1:1"), entry("web-1:2")];
    a.aws
        .commit(
            "web",
            Commit {
                state: &ServiceState::new("web", Color::Blue),
                expected_version: 0,
                outbox: &events,
                dedup_key: None,
                deployments: &[],
                lease: lease("a", now),
                owed: &[],
                clears_preemption: false,
            },
        )
        .await
        .expect("commit");
    let first = a
        .aws
        .claim_outbox("web", lease("a", now))
        .await
        .expect("a claims");
    let entries = |claimed: &[bluegreen::ports::Claimed]| -> Vec<Entry> {
        claimed.iter().map(|c| c.entry.clone()).collect()
    };
    assert_eq!(entries(&first), events);
    let second = b
        .aws
        .claim_outbox("web", lease("b", now))
        .await
        .expect("b claims");
    assert!(
        second.is_empty(),
        "claimed entries go to no one else: {second:?}"
    );
    let later = now.plus(Duration::from_secs(31));
    let third = b
        .aws
        .claim_outbox("web", lease("b", later))
        .await
        .expect("b claims");
    assert_eq!(
        entries(&third),
        events,
        "an expired claim (a died) is taken over"
    );
    let keys: Vec<String> = third.iter().map(|c| c.key.clone()).collect();
    b.aws.outbox_done("web", &keys).await.expect("done");
    assert!(
        b.aws
            .claim_outbox("web", lease("b", later))
            .await
            .expect("empty")
            .is_empty()
    );

    assert!(
        a.aws
            .try_lease("reconciler", lease("a", now))
            .await
            .expect("a")
            .is_some()
    );
    assert!(
        b.aws
            .try_lease("reconciler", lease("b", now))
            .await
            .expect("b")
            .is_none()
    );
    assert!(
        a.aws
            .try_lease("reconciler", lease("a", now))
            .await
            .expect("a renews")
            .is_some()
    );
    assert!(
        b.aws
            .try_lease("reconciler", lease("b", later))
            .await
            .expect("b after expiry")
            .is_some()
    );
    assert!(
        a.aws
            .try_lease("reconciler", lease("a", later))
            .await
            .expect("a is out")
            .is_none()
    );
}

/// DynamoDB makes conditional writes atomic; the store relies on it. Twelve commits on one
/// version at once (as many workers deciding on the same state): exactly one lands, and
/// the lease it takes is extended only for its owner at its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_on_one_version_land_once_and_only_the_owner_extends_its_lease() {
    use bluegreen::contract::Entry;
    use bluegreen::flow::{ServiceState, Timestamp};
    use bluegreen::ports::{Commit, Lease, Store};

    let env = Env::create("race", Shape::default()).await;
    let now = Timestamp::from_millis(1_800_000_000_000);
    fn lease(owner: &str, now: Timestamp) -> Lease<'_> {
        Lease {
            owner,
            until: now.plus(Duration::from_secs(30)),
            now,
        }
    }
    let first = env.world();
    first
        .aws
        .commit(
            "web",
            Commit {
                state: &ServiceState::new("web", Color::Blue),
                expected_version: 0,
                outbox: &[],
                dedup_key: None,
                deployments: &[],
                lease: lease("setup", now),
                owed: &[],
                clears_preemption: false,
            },
        )
        .await
        .expect("first commit");
    // A table of some size: moto's transactions copy it, which widens any race.
    let dynamodb = aws_sdk_dynamodb::Client::new(&env.sdk);
    for batch in 0..16 {
        let writes = (0..25).map(|k| {
            let put = aws_sdk_dynamodb::types::PutRequest::builder()
                .item(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S(format!("FILL#{batch}-{k}")),
                )
                .item("sk", aws_sdk_dynamodb::types::AttributeValue::S("X".into()))
                .item(
                    "payload",
                    aws_sdk_dynamodb::types::AttributeValue::S("x".repeat(200)),
                )
                .build()
                .expect("put");
            aws_sdk_dynamodb::types::WriteRequest::builder()
                .put_request(put)
                .build()
        });
        dynamodb
            .batch_write_item()
            .request_items(&env.config.worker.table, writes.collect())
            .send()
            .await
            .expect("fill");
    }
    let released = now.plus(Duration::from_secs(31));
    let racers: Vec<_> = (0..12)
        .map(|i| {
            let world = env.world();
            tokio::spawn(async move {
                let owner = format!("w{i}");
                let events = [Entry {
                    source: "bluegreen".into(),
                    detail_type: "Deployment Queued",
                    detail: format!("{{\"racer\":{i}}}"),
                    resources: vec![],
                    event_id: "web-1:2".into(),
                    time: "2026-12-01T10:00:00.000Z".into(),
                }];
                let state = ServiceState::new(format!("web{i}"), Color::Blue);
                world
                    .aws
                    .commit(
                        "web",
                        Commit {
                            state: &state,
                            expected_version: 1,
                            outbox: &events,
                            dedup_key: None,
                            deployments: &[],
                            lease: lease(&owner, released),
                            owed: &[],
                            clears_preemption: false,
                        },
                    )
                    .await
                    .map(|_| owner)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        if let Ok(owner) = r.await.expect("task") {
            winners.push(owner);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one commit lands: {winners:?}");
    let claimed = first
        .aws
        .claim_outbox("web", lease("reader", released))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one outbox entry: {claimed:?}");

    let winner = winners[0].as_str();
    let later = released.plus(Duration::from_secs(20));
    assert!(
        !first
            .aws
            .extend("web", 2, lease("someone-else", later))
            .await
            .expect("extend"),
        "another owner cannot extend the lease"
    );
    assert!(
        !first
            .aws
            .extend("web", 1, lease(winner, later))
            .await
            .expect("extend"),
        "nor the owner at an old version"
    );
    assert!(
        first
            .aws
            .extend("web", 2, lease(winner, later))
            .await
            .expect("extend")
    );
    let fence = first.aws.fence("web").await.expect("fence");
    assert_eq!(
        (fence.owner.as_deref(), fence.until),
        (Some(winner), later.plus(Duration::from_secs(30)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_production_rules_move_together_and_drift_on_one_is_found_and_written_back() {
    let env = Env::create(
        "tworules",
        Shape {
            second_rule: true,
            ..Shape::default()
        },
    )
    .await;
    let rules = env.service().production_listener_rule_arns.clone();
    assert_eq!(rules.len(), 2, "{:?}", env.service());
    let running = deployed_and_released(&env, "8d", "release-8").await;
    assert_eq!(env.production().await, wt(0, 100), "both rules moved");
    // Each rule kept its own conditions and the stickiness it was created with.
    let described = aws_sdk_elasticloadbalancingv2::Client::new(&env.sdk)
        .describe_rules()
        .set_rule_arns(Some(rules.clone()))
        .send()
        .await
        .expect("describe rules");
    let fields: Vec<Vec<String>> = described
        .rules()
        .iter()
        .map(|r| {
            r.conditions()
                .iter()
                .map(|c| format!("{}={:?}", c.field().unwrap_or_default(), c.values()))
                .collect()
        })
        .collect();
    assert_eq!(
        fields,
        [
            vec![r#"path-pattern=["/*"]"#.to_string()],
            vec![r#"host-header=["api0.example.com"]"#.to_string()]
        ]
    );
    for rule in described.rules() {
        let sticky = rule.actions()[0]
            .forward_config()
            .and_then(|f| f.target_group_stickiness_config())
            .map(|s| (s.enabled(), s.duration_seconds()));
        assert_eq!(sticky, Some((Some(true), Some(300))), "{rule:?}");
    }

    // A person sets the second rule back to blue; the first still serves green.
    env.rewrite(&rules[1], wt(100, 0)).await;
    env.wait_for_weights(wt(0, 100), 30).await;
    running.stop().await;

    let events = events(&env).await;
    let drift = of_kind(&events, "Weight Drift Detected");
    assert_eq!(drift.len(), 1, "{drift:#?}");
    let d = &drift[0]["detail"]["drift"];
    assert_eq!(
        d["rule"].as_str(),
        Some(rules[1].as_str()),
        "the rule that moved"
    );
    assert_eq!(d["found"], serde_json::json!({ "blue": 100, "green": 0 }));
    assert_eq!(
        d["expected"],
        serde_json::json!({ "blue": 0, "green": 100 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_of_an_effect_leaves_after_its_send_deadline() {
    use bluegreen::aws::Aws;
    use bluegreen::ports::{PortError, Traffic, sending_before};

    let env = Env::create("senddeadline", Shape::default()).await;
    let aws = Aws::new(&env.sdk, &env.config);
    // The deadline has passed (a task woken after its lease margin): nothing is sent.
    let late = tokio::time::Instant::now();
    let refused = sending_before(late, aws.set_production("web", wt(0, 100))).await;
    match refused {
        Err(PortError::Retryable(why)) => assert!(why.contains("lease margin"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        env.production().await,
        wt(100, 0),
        "the rule was not written"
    );
    // Before the deadline the same write lands; outside an effect there is no deadline.
    let soon = tokio::time::Instant::now() + Duration::from_secs(60);
    let written = sending_before(soon, aws.set_production("web", wt(50, 50))).await;
    assert_eq!(written.expect("written"), wt(50, 50));
    assert_eq!(
        aws.set_production("web", wt(0, 100))
            .await
            .expect("written"),
        wt(0, 100)
    );
    assert_eq!(env.production().await, wt(0, 100));
}

/// A call that fails retryably is repeated a few times, but not once its next try would
/// start after the send deadline of the effect it belongs to.
#[tokio::test(start_paused = true)]
async fn no_repeat_of_a_call_starts_after_its_send_deadline() {
    use bluegreen::ports::{PortError, PortResult, patiently, sending_before};

    let tries = |deadline: Option<Duration>| async move {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let call = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            PortResult::<()>::Err(PortError::Retryable("reset".into()))
        };
        let result = match deadline {
            Some(d) => sending_before(tokio::time::Instant::now() + d, patiently(call)).await,
            None => patiently(call).await,
        };
        assert!(matches!(result, Err(PortError::Retryable(_))), "{result:?}");
        calls.into_inner()
    };
    assert_eq!(tries(None).await, 4, "outside an effect: every try");
    assert_eq!(
        tries(Some(Duration::from_secs(60))).await,
        4,
        "a distant deadline"
    );
    // Back-offs of 100, 200 and 300 ms: the second repeat would start at 300 ms.
    assert_eq!(tries(Some(Duration::from_millis(250))).await, 2);
    assert_eq!(tries(Some(Duration::ZERO)).await, 1, "a passed deadline");
}

/// A stack update (or a console change) puts the live colour's ECS service back on its
/// first task definition with no tasks, after a deployment: the reconciler reads the live
/// colour through ECS and ELBv2, announces `Capacity Drift Detected` once, and puts the
/// deployed revision and its count back; the production rule never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_colour_moved_off_its_revision_is_put_back_by_the_reconciler() {
    let env = Env::create("capdrift", Shape::default()).await;
    let running = deployed_and_released(&env, "6c", "release-6").await;
    let green = env.ecs_service("green").await;
    let deployed = green.task_definition().expect("td").to_string();
    let count = green.desired_count();
    let first = env.ecs_service("blue").await;
    let first = first.task_definition().expect("td").to_string();
    assert_ne!(first, deployed);
    let ecs = aws_sdk_ecs::Client::new(&env.sdk);
    ecs.update_service()
        .cluster(&env.service().cluster)
        .service(&env.service().green_service)
        .task_definition(&first)
        .desired_count(0)
        .send()
        .await
        .expect("update");
    env.wait_for_ecs_service("green", 60, "green put back", |s| {
        s.task_definition() == Some(deployed.as_str()) && s.desired_count() == count
    })
    .await;
    assert_eq!(env.production().await, wt(0, 100), "traffic never moved");
    running.stop().await;

    let events = events(&env).await;
    let drift = of_kind(&events, "Capacity Drift Detected");
    assert_eq!(drift.len(), 1, "{drift:#?}");
    let c = &drift[0]["detail"]["capacity"];
    assert_eq!(c["color"], "green");
    assert_eq!(
        c["expectedTaskDefinition"].as_str(),
        Some(deployed.as_str())
    );
    assert_eq!(c["expectedDesired"], count);
    assert_eq!(c["found"]["taskDefinition"].as_str(), Some(first.as_str()));
    assert_eq!(c["found"]["desired"], 0);
    assert_eq!(c["policy"], "reassert");
}
