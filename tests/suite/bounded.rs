//! Bounded rollback on moto server: worker binaries killed between a decision's commit
//! and its effects (the effect held back by a proxy, the worker killed with SIGKILL), a
//! service kept busy while its alarm fires, the store's cancellation reasons, a rollback
//! alarm deleted mid-shift, the receive's own visibility, a lost registration answer
//! under SDK retries, and events published batch by batch.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use bluegreen::aws::Aws;
use bluegreen::flow::{Color, Phase, Weights};
use bytes::Bytes;
use hyper::StatusCode;
use tokio::time::Instant;

use crate::common::wt;
use crate::faults::{Counts, Fault, Faults, Hook, Plan, Planned, Proxy};
use crate::moto::{Env, Running, Shape, endpoint};

/// A proxy in front of moto that only does what `plan` says.
async fn proxy(label: &str, plan: Plan) -> Proxy {
    let hook: Hook = Arc::new(|_| Box::pin(async {}));
    Proxy::start(
        &endpoint(),
        label,
        Faults::planned(plan),
        1,
        Arc::new(Counts::default()),
        hook,
    )
    .await
}

/// The SDK configuration of `sdk`, through `proxy`.
fn through(sdk: &SdkConfig, proxy: &Proxy) -> SdkConfig {
    sdk.to_builder()
        .endpoint_url(format!("http://{}", proxy.addr))
        .build()
}

/// The weights a `ModifyRule` request writes for the pair `(blue, green)`.
fn written(body: &Bytes, blue: &str, green: &str) -> Option<Weights> {
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let get = |k: String| {
        form.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    let prefix = "Actions.member.1.ForwardConfig.TargetGroups.member.";
    let (mut b, mut g) = (None, None);
    for n in 1..=2 {
        let arn = get(format!("{prefix}{n}.TargetGroupArn"))?;
        let weight: u8 = get(format!("{prefix}{n}.Weight"))?.parse().ok()?;
        if arn == blue {
            b = Some(weight);
        } else if arn == green {
            g = Some(weight);
        }
    }
    Some(Weights {
        blue: b?,
        green: g?,
    })
}

/// A `bluegreen worker` process behind `proxy`.
struct Binary(Child);

impl Binary {
    fn spawn(env: &Env, proxy: &Proxy, id: &str, args: &[&str]) -> Binary {
        let child = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
            .args(["worker", "--wait", "1s", "--aws-timeout", "5s", "--id", id])
            .args(args)
            .env(
                "BLUEGREEN_CONFIG_JSON",
                serde_json::to_string(&env.config).expect("config"),
            )
            .env_remove("BLUEGREEN_CONFIG")
            .env("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr))
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("BLUEGREEN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker");
        Binary(child)
    }

    /// SIGKILL.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 200 ms until it holds (at most `secs`).
async fn until(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lease and reconciler period of the two-binary tests.
const LEASE_SECS: u64 = 10;
const RECONCILE_SECS: u64 = 10;

/// Two worker binaries: `w1` takes the messages (and runs no reconciler); `w2` only
/// reconciles (its receives never answer). Writes of `held` weights by `w1` are held
/// back forever, and reported.
struct Pair {
    w1: Binary,
    _w2: Binary,
    /// Set once `w1` is dead: `w2` takes messages from then on.
    w2_receives: Arc<AtomicBool>,
    held_at: Arc<Mutex<Option<Instant>>>,
    /// Every rule write `w2` made, when, with its weights.
    w2_writes: Arc<Mutex<Vec<(Instant, Weights)>>>,
    _proxies: (Proxy, Proxy),
}

async fn pair(env: &Env, held: Weights) -> Pair {
    let svc = env.service();
    let (blue, green) = (svc.blue_target_group_arn, svc.green_target_group_arn);
    let held_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let plan: Plan = {
        let (held_at, blue, green) = (held_at.clone(), blue.clone(), green.clone());
        Arc::new(move |op: &str, body: &Bytes| {
            (op == "ModifyRule" && written(body, &blue, &green) == Some(held)).then(|| {
                held_at
                    .lock()
                    .expect("held")
                    .get_or_insert_with(Instant::now);
                Planned::Hang
            })
        })
    };
    let p1 = proxy("w1", plan).await;
    let w2_writes: Arc<Mutex<Vec<(Instant, Weights)>>> = Arc::default();
    let w2_receives = Arc::new(AtomicBool::new(false));
    let plan: Plan = {
        let writes = w2_writes.clone();
        let receives = w2_receives.clone();
        Arc::new(move |op: &str, body: &Bytes| match op {
            "ReceiveMessage" if !receives.load(Ordering::SeqCst) => Some(Planned::Hang),
            "ModifyRule" => {
                if let Some(w) = written(body, &blue, &green) {
                    writes.lock().expect("writes").push((Instant::now(), w));
                }
                None
            }
            _ => None,
        })
    };
    let p2 = proxy("w2", plan).await;
    let lease = format!("{LEASE_SECS}s");
    let every = format!("{RECONCILE_SECS}s");
    let w1 = Binary::spawn(
        env,
        &p1,
        "w1",
        &["--lease", &lease, "--reconcile-every", "0s"],
    );
    let w2 = Binary::spawn(
        env,
        &p2,
        "w2",
        &["--lease", &lease, "--reconcile-every", &every],
    );
    Pair {
        w1,
        _w2: w2,
        w2_receives,
        held_at,
        w2_writes,
        _proxies: (p1, p2),
    }
}

/// Waits until `w1` sent the held write, then kills it; returns when it died.
async fn kill_at_the_held_write(p: &mut Pair) -> Instant {
    let held = p.held_at.clone();
    until(90, "the held write", async || {
        held.lock().expect("held").is_some()
    })
    .await;
    p.w1.kill();
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_a_rollbacks_commit_and_its_write_is_replaced_within_a_lease_and_a_reconciler_period()
 {
    let env = Env::create(
        "killrb",
        Shape {
            strategy: r#"{ kind = "canary", percent = 25, bake = "10m" }"#,
            bake: "10m",
            // The shipped grace: an overdue tick is not what brings production back.
            reconcile_grace: "60s",
            ..Shape::default()
        },
    )
    .await;
    let mut p = pair(&env, wt(100, 0)).await;
    env.push(&crate::common::digest(7), "release-7").await;
    until(120, "the canary", async || {
        env.production().await == wt(75, 25)
    })
    .await;
    // The alarm fires; w1 commits the rollback, and dies before its restore leaves.
    let alarm_at = Instant::now();
    env.alarm_fires().await;
    let died = kill_at_the_held_write(&mut p).await;
    until(90, "production restored", async || {
        env.production().await == wt(100, 0)
    })
    .await;
    let restored = p
        .w2_writes
        .lock()
        .expect("writes")
        .iter()
        .find(|(_, w)| *w == wt(100, 0))
        .map(|(at, _)| *at)
        .expect("w2 restored it");
    // Only now does w2 take messages (the redelivered alarm, the ticks): the restore
    // above was the reconciler's.
    p.w2_receives.store(true, Ordering::SeqCst);
    let bound = Duration::from_secs(LEASE_SECS + RECONCILE_SECS + 5);
    println!(
        "restored {:?} after the worker died, {:?} after the alarm",
        restored.duration_since(died),
        restored.duration_since(alarm_at)
    );
    assert!(
        restored.duration_since(died) <= bound,
        "restored {:?} after the worker died ({:?} after the alarm); bound {bound:?}",
        restored.duration_since(died),
        restored.duration_since(alarm_at)
    );
    let state = env.wait_for_last(Phase::RolledBack, 60).await;
    assert_eq!(state.live, Color::Blue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_a_canary_steps_commit_and_its_write_leaves_the_canary_its_whole_bake()
 {
    let env = Env::create(
        "killcanary",
        Shape {
            strategy: r#"{ kind = "canary", percent = 25, bake = "20s" }"#,
            bake: "1s",
            reconcile_grace: "60s",
            ..Shape::default()
        },
    )
    .await;
    let mut p = pair(&env, wt(75, 25)).await;
    env.push(&crate::common::digest(8), "release-8").await;
    kill_at_the_held_write(&mut p).await;
    assert_eq!(
        env.production().await,
        wt(100, 0),
        "the canary never left w1"
    );
    until(
        90,
        "the canary carried out by w2's reconciler",
        async || env.production().await == wt(75, 25),
    )
    .await;
    p.w2_receives.store(true, Ordering::SeqCst);
    until(120, "full traffic", async || {
        env.production().await == wt(0, 100)
    })
    .await;
    let writes = p.w2_writes.lock().expect("writes").clone();
    let canary = writes
        .iter()
        .find(|(_, w)| *w == wt(75, 25))
        .expect("canary")
        .0;
    let full = writes
        .iter()
        .find(|(_, w)| *w == wt(0, 100))
        .expect("full")
        .0;
    assert!(
        full.duration_since(canary) >= Duration::from_secs(20),
        "green carried 25 % for {:?} of a 20 s canary",
        full.duration_since(canary)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alarm_shared_by_three_services_restores_the_free_ones_while_one_is_busy() {
    let env = Env::create(
        "shared",
        Shape {
            services: 3,
            strategy: r#"{ kind = "canary", percent = 25, bake = "10m" }"#,
            bake: "10m",
            ..Shape::default()
        },
    )
    .await;
    let (worker, _) = env.worker("w1");
    let running = Running::start(&worker);
    env.push(&crate::common::digest(9), "release-9").await;
    for name in ["web", "web1", "web2"] {
        env.wait_for_service(name, 120, "the canary", |s| {
            s.active
                .as_ref()
                .is_some_and(|d| d.phase == Phase::Shifting)
        })
        .await;
    }
    running.stop().await;
    // web1 is busy: another task holds its lease (a long effect) for 25 s more.
    let busy_until = hold_lease(&env, "web1", "busy-task", Duration::from_secs(25)).await;
    let alarm_at = Instant::now();
    let running = Running::start(&worker);
    env.alarm_fires().await;
    let restored = |name: &'static str| {
        let aws = Aws::new(&env.sdk, &env.config);
        async move {
            until(90, name, async || {
                use bluegreen::ports::Traffic;
                aws.production(name).await.ok().and_then(|r| r.agreed()) == Some(wt(100, 0))
            })
            .await;
            Instant::now()
        }
    };
    let (web, web2) = tokio::join!(restored("web"), restored("web2"));
    assert!(
        web.max(web2).duration_since(alarm_at) < Duration::from_secs(15),
        "the free services waited for the busy one: {:?}",
        web.max(web2).duration_since(alarm_at)
    );
    let web1 = restored("web1").await;
    assert!(
        web1 >= busy_until,
        "web1 rolled back under another task's lease"
    );
    running.stop().await;
    assert!(
        env.drain(&env.dlq_url).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// Makes `owner` hold `service`'s lease for `long` from now, as a task running a long
/// effect does; returns when it ends.
async fn hold_lease(env: &Env, service: &str, owner: &str, long: Duration) -> Instant {
    use aws_sdk_dynamodb::types::AttributeValue;
    let now = bluegreen::ports::system_clock()();
    aws_sdk_dynamodb::Client::new(&env.sdk)
        .update_item()
        .table_name(&env.config.worker.table)
        .key("pk", AttributeValue::S(format!("SERVICE#{service}")))
        .key("sk", AttributeValue::S("STATE".into()))
        .update_expression("SET lease_owner = :o, lease_until = :u")
        .expression_attribute_values(":o", AttributeValue::S(owner.into()))
        .expression_attribute_values(":u", AttributeValue::N(now.plus(long).millis().to_string()))
        .send()
        .await
        .expect("hold the lease");
    Instant::now() + long
}

#[tokio::test]
async fn a_cancelled_commit_is_judged_by_its_cancellation_reasons() {
    use bluegreen::flow::{ServiceState, Timestamp};
    use bluegreen::ports::{Lease, PortError, Store};

    let env = Env::create("cancel", Shape::default()).await;
    let aws = Aws::new(&env.sdk, &env.config);
    let now = Timestamp::from_millis(1_800_000_000_000);
    let state = ServiceState::new("web", Color::Blue);
    let commit = |expected, owner: &'static str, key: Option<&'static str>| {
        crate::common::commit_of(&state, expected, owner, now, key, &[])
    };
    assert_eq!(
        aws.commit("web", commit(0, "a", Some("event:1"))).await,
        Ok(1)
    );
    // The condition on the state: the version moved, or another owner holds the lease.
    assert_eq!(
        aws.commit("web", commit(0, "a", None)).await,
        Err(PortError::Conflict)
    );
    assert_eq!(
        aws.commit("web", commit(1, "b", None)).await,
        Err(PortError::Conflict)
    );
    // The condition on the dedup key: the input was applied already.
    assert_eq!(
        aws.commit("web", commit(1, "a", Some("event:1"))).await,
        Err(PortError::Duplicate)
    );
    // A transaction conflict (another transaction on the item) could not be judged:
    // retryable, and the next try lands. DynamoDB's answer, played by a proxy.
    let once = Arc::new(AtomicBool::new(true));
    let plan: Plan = {
        let once = once.clone();
        Arc::new(move |op: &str, _: &Bytes| {
            (op == "TransactWriteItems" && once.swap(false, Ordering::SeqCst)).then(|| {
                Planned::Answer(
                    StatusCode::BAD_REQUEST,
                    r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict]","CancellationReasons":[{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"}]}"#.into(),
                )
            })
        })
    };
    let p = proxy("cancel", plan).await;
    let proxied = Aws::new(&through(&env.sdk, &p), &env.config);
    match proxied.commit("web", commit(1, "a", None)).await {
        Err(PortError::Retryable(why)) => assert!(why.contains("TransactionConflict"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(proxied.commit("web", commit(1, "a", None)).await, Ok(2));
    // A write that meets another transaction on its item: TransactionConflictException,
    // retryable too (the lease extension is such a write).
    let plan: Plan = Arc::new(|op: &str, _: &Bytes| {
        (op == "UpdateItem").then(|| {
            Planned::Answer(
                StatusCode::BAD_REQUEST,
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#.into(),
            )
        })
    });
    let p = proxy("conflict", plan).await;
    let proxied = Aws::new(&through(&env.sdk, &p), &env.config);
    let extended = proxied
        .extend(
            "web",
            2,
            Lease {
                owner: "a",
                until: now.plus(Duration::from_secs(60)),
                now,
            },
        )
        .await;
    assert!(
        matches!(&extended, Err(PortError::Retryable(why)) if why.contains("TransactionConflict")),
        "{extended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_alarm_deleted_mid_shift_rolls_back_after_the_unreadable_wait() {
    let env = Env::create(
        "deletedalarm",
        Shape {
            strategy: r#"{ kind = "linear", step_percent = 25, interval = "2s" }"#,
            unreadable: "6s",
            ..Shape::default()
        },
    )
    .await;
    let (worker, _) = env.worker("w1");
    let running = Running::start(&worker);
    env.push(&crate::common::digest(10), "release-10").await;
    until(60, "the first step", async || {
        env.production().await == wt(75, 25)
    })
    .await;
    aws_sdk_cloudwatch::Client::new(&env.sdk)
        .delete_alarms()
        .alarm_names(&env.alarm)
        .send()
        .await
        .expect("delete");
    let state = env.wait_for_last(Phase::RolledBack, 60).await;
    running.stop().await;
    let reason = state
        .last
        .and_then(|d| d.rollback)
        .map(|r| r.reason)
        .unwrap_or_default();
    assert!(
        reason.contains(&env.alarm)
            && reason.contains("does not exist")
            && reason.contains("on_unreadable = rollback"),
        "{reason}"
    );
    assert_eq!(env.production().await, wt(100, 0));
}

#[tokio::test]
async fn a_received_message_is_hidden_for_the_receives_own_visibility_only() {
    use bluegreen::ports::Inbox;
    let env = Env::create("visibility", Shape::default()).await;
    let aws = Aws::new(&env.sdk, &env.config);
    env.send_raw(r#"{"hello":"world"}"#).await;
    let first = aws
        .receive(1, Duration::from_secs(1), Duration::from_secs(2))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    // Its receiver never answers (a lost receive): hidden for seconds, not the queue's 30.
    let hidden = aws
        .receive(1, Duration::ZERO, Duration::from_secs(2))
        .await
        .expect("receive");
    assert!(hidden.is_empty());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = aws
        .receive(1, Duration::from_secs(1), Duration::from_secs(2))
        .await
        .expect("receive");
    assert_eq!(again.len(), 1, "visible again after two seconds");
    assert_eq!(again[0].receive_count, 2);
    // Each receipt carries when the queue accepted the message: an Event Rejected for it
    // is dated by that, the same on every receipt.
    assert!(first[0].sent_at.is_some(), "{:?}", first[0]);
    assert_eq!(first[0].sent_at, again[0].sent_at);
    assert_eq!(aws.receive_limit().await.expect("limit"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_registration_answer_under_sdk_retries_registers_once() {
    let env = Env::create("register", Shape::default()).await;
    let lost = Arc::new(AtomicU32::new(0));
    let plan: Plan = {
        let lost = lost.clone();
        Arc::new(move |op: &str, _: &Bytes| {
            (op == "RegisterTaskDefinition" && lost.fetch_add(1, Ordering::SeqCst) == 0)
                .then_some(Planned::Fault(Fault::AnswerLost))
        })
    };
    let p = proxy("register", plan).await;
    // The SDK's standard retries on (4 attempts), as the worker ships.
    let sdk = through(&env.sdk, &p)
        .to_builder()
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(4))
        .build();
    let world = Arc::new(crate::moto::MotoWorld::over(Aws::new(&sdk, &env.config)));
    let worker = env.worker_over("w1", world);
    let running = Running::start(&worker);
    env.push(&crate::common::digest(11), "release-11").await;
    env.wait_for_last(Phase::Succeeded, 90).await;
    running.stop().await;
    assert_eq!(
        lost.load(Ordering::SeqCst),
        1,
        "one registration call (its answer lost); no SDK retry re-sent it"
    );
    assert_eq!(
        env.registrations("web-1").await,
        1,
        "one revision registered"
    );
}

#[tokio::test]
async fn events_are_published_batch_by_batch_and_only_a_failed_batch_is_sent_again() {
    use bluegreen::contract::Entry;
    use bluegreen::ports::Bus;
    let env = Env::create("batches", Shape::default()).await;
    let calls = Arc::new(AtomicU32::new(0));
    let plan: Plan = {
        let calls = calls.clone();
        Arc::new(move |op: &str, _: &Bytes| {
            (op == "PutEvents" && calls.fetch_add(1, Ordering::SeqCst) == 0)
                .then_some(Planned::Fault(Fault::Internal))
        })
    };
    let p = proxy("batches", plan).await;
    let aws = Aws::new(&through(&env.sdk, &p), &env.config);
    let entries: Vec<Entry> = (1..=15)
        .map(|i| Entry {
            source: "bluegreen".into(),
            detail_type: "Deployment Queued",
            detail: format!(r#"{{"eventId":"web-1:{i}"}}"#),
            resources: vec![],
            event_id: format!("web-1:{i}"),
            time: "2026-12-01T10:00:00.000Z".into(),
        })
        .collect();
    let failed = aws.publish(&entries).await.expect("publish");
    let first: Vec<String> = (1..=10).map(|i| format!("web-1:{i}")).collect();
    assert_eq!(failed, first, "the first batch failed, the second went out");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one call per batch");
    let again: Vec<Entry> = entries[..10].to_vec();
    assert!(aws.publish(&again).await.expect("publish").is_empty());
    let bodies = env.drain(&env.audit_url).await;
    let mut ids: Vec<String> = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter_map(|e| e["detail"]["eventId"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (1..=15).map(|i| format!("web-1:{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "each event once");
}

#[tokio::test]
async fn no_event_is_published_past_its_outbox_claims_deadline() {
    use bluegreen::contract::Entry;
    use bluegreen::ports::{Bus, sending_before};
    let env = Env::create("claimdeadline", Shape::default()).await;
    let aws = Aws::new(&env.sdk, &env.config);
    let entry = Entry {
        source: "bluegreen".into(),
        detail_type: "Deployment Queued",
        detail: r#"{"eventId":"web-1:1"}"#.into(),
        resources: vec![],
        event_id: "web-1:1".into(),
        time: "2026-12-01T10:00:00.000Z".into(),
    };
    let late = Instant::now();
    let failed = sending_before(late, aws.publish(std::slice::from_ref(&entry)))
        .await
        .expect("publish");
    assert_eq!(failed, ["web-1:1"], "refused before it left");
    assert!(env.drain(&env.audit_url).await.is_empty());
}

#[tokio::test]
async fn the_reconciler_visits_what_owes_effects_first_and_goes_on_where_the_last_pass_stopped() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use bluegreen::flow::{Effect, ServiceState, TickKey, Timestamp};
    use bluegreen::ports::{Commit, Lease, Owed, Store};

    let env = Env::create(
        "reconcileorder",
        Shape {
            services: 3,
            ..Shape::default()
        },
    )
    .await;
    // The order in which a pass takes services up: the first state read of each visit
    // (after the pass's own read of what each owes, in configuration order).
    let reads: Arc<Mutex<Vec<String>>> = Arc::default();
    let plan: Plan = {
        let reads = reads.clone();
        Arc::new(move |op: &str, body: &Bytes| {
            if op == "GetItem" {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                if v["Key"]["sk"]["S"] == "STATE" && v.get("ProjectionExpression").is_none() {
                    let pk = v["Key"]["pk"]["S"].as_str().unwrap_or_default();
                    reads
                        .lock()
                        .expect("reads")
                        .push(pk.trim_start_matches("SERVICE#").to_string());
                }
            }
            None
        })
    };
    let p = proxy("reconciler", plan).await;
    let world = Arc::new(crate::moto::MotoWorld::over(Aws::new(
        &through(&env.sdk, &p),
        &env.config,
    )));
    let worker = {
        let mut options = bluegreen::worker::Options {
            reconcile_concurrency: 1,
            worker_id: "leader".into(),
            reconcile_every: Duration::from_secs(30),
            ..bluegreen::worker::Options::default()
        };
        options.lease = Duration::from_secs(15);
        bluegreen::worker::Worker::new(
            world,
            bluegreen::fleet::Fleet::from(&env.config),
            bluegreen::ports::system_clock(),
            options,
        )
    };
    // web2 owes an effect that a dead worker committed (its lease long lapsed).
    let aws = Aws::new(&env.sdk, &env.config);
    let long_ago = Timestamp::from_millis(1_600_000_000_000);
    let owed = [Owed {
        effect: Effect::ScheduleTick {
            tick: TickKey {
                deployment_id: "web2-1".into(),
                cursor: 1,
                attempt: 1,
            },
            due: long_ago,
        },
        cursor: 1,
    }];
    aws.commit(
        "web2",
        Commit {
            state: &ServiceState::new("web2", Color::Blue),
            expected_version: 0,
            outbox: &[],
            dedup_key: None,
            deployments: &[],
            lease: Lease {
                owner: "dead",
                until: long_ago,
                now: long_ago,
            },
            owed: &owed,
            clears_preemption: false,
        },
    )
    .await
    .expect("commit");
    let visits = |reads: &Arc<Mutex<Vec<String>>>| -> Vec<String> {
        let all = std::mem::take(&mut *reads.lock().expect("reads"));
        all[3..].to_vec()
    };
    // A pass from position 1: web2 (it owes) first, then web1, web (rotated from 1).
    assert_eq!(worker.reconcile(1, Duration::MAX).await, 0, "a whole pass");
    assert_eq!(visits(&reads), ["web2", "web1", "web"]);
    assert!(
        aws.load("web2", Color::Blue)
            .await
            .expect("load")
            .owed
            .is_empty(),
        "carried out and discharged"
    );
    // A pass with no time left takes nothing up and says where to go on from.
    assert_eq!(worker.reconcile(2, Duration::ZERO).await, 2);
    assert!(visits(&reads).is_empty());
    // The leader goes on from the mark the last pass left on the reconciler's lease.
    aws_sdk_dynamodb::Client::new(&env.sdk)
        .put_item()
        .table_name(&env.config.worker.table)
        .item("pk", AttributeValue::S("LEASE#reconciler".into()))
        .item("sk", AttributeValue::S("LEASE".into()))
        .item("lease_owner", AttributeValue::S("leader".into()))
        .item("lease_until", AttributeValue::N("0".into()))
        .item("mark", AttributeValue::N("2".into()))
        .send()
        .await
        .expect("mark");
    assert!(worker.reconcile_if_leader().await);
    assert_eq!(visits(&reads), ["web2", "web", "web1"]);
}

#[tokio::test]
async fn a_rule_whose_weights_are_both_zero_reads_as_no_colour_and_is_written_over() {
    use bluegreen::ports::{PortError, Traffic};
    let env = Env::create("zeroweights", Shape::default()).await;
    env.rewrite_rule(Weights { blue: 0, green: 0 }).await;
    let aws = Aws::new(&env.sdk, &env.config);
    match aws.production("web").await {
        Err(PortError::Permanent(why)) => assert!(why.contains("weight of 0"), "{why}"),
        other => panic!("read as {other:?}"),
    }
    assert_eq!(
        aws.set_production("web", wt(100, 0)).await,
        Ok(wt(100, 0)),
        "a rollback's write repairs it"
    );
}

#[tokio::test]
async fn an_outbox_claim_that_fails_for_one_entry_still_claims_the_others() {
    use bluegreen::contract::Entry;
    use bluegreen::flow::{ServiceState, Timestamp};
    use bluegreen::ports::{Lease, Store};

    let env = Env::create("claimone", Shape::default()).await;
    let aws = Aws::new(&env.sdk, &env.config);
    let now = Timestamp::from_millis(1_800_000_000_000);
    let entries: Vec<Entry> = (1..=5)
        .map(|i| Entry {
            source: "bluegreen".into(),
            detail_type: "Deployment Queued",
            detail: "{}".into(),
            resources: vec![],
            event_id: format!("web-1:{i}"),
            time: "2026-12-01T10:00:00.000Z".into(),
        })
        .collect();
    let state = ServiceState::new("web", Color::Blue);
    aws.commit(
        "web",
        crate::common::commit_of(&state, 0, "a", now, None, &entries),
    )
    .await
    .expect("commit");
    // The second claim write fails, every time: a backlog is never held up by it.
    let claims = Arc::new(AtomicU32::new(0));
    let plan: Plan = {
        let claims = claims.clone();
        Arc::new(move |op: &str, body: &Bytes| {
            let claim = op == "UpdateItem" && String::from_utf8_lossy(body).contains("OUTBOX#");
            (claim && claims.fetch_add(1, Ordering::SeqCst) % 5 == 1)
                .then_some(Planned::Fault(Fault::Internal))
        })
    };
    let p = proxy("claim", plan).await;
    let proxied = Aws::new(&through(&env.sdk, &p), &env.config);
    let lease = |owner| Lease {
        owner,
        until: now.plus(Duration::from_secs(30)),
        now,
    };
    let first = proxied
        .claim_outbox("web", lease("a"))
        .await
        .expect("claim");
    let ids: Vec<String> = first.iter().map(|c| c.entry.event_id.clone()).collect();
    assert_eq!(ids, ["web-1:1", "web-1:3", "web-1:4", "web-1:5"]);
    let keys: Vec<String> = first.iter().map(|c| c.key.clone()).collect();
    aws.outbox_done("web", &keys).await.expect("done");
    let rest = aws.claim_outbox("web", lease("a")).await.expect("claim");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].entry.event_id, "web-1:2");
}
