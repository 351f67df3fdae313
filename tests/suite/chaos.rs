//! The fault suite: the real worker binary, several copies on one queue, talking to moto
//! server through a faulty AWS (see `faults`) with SDK retries off, killed with SIGKILL
//! at random and restarted, under a load of deployments with alarms, operator actions
//! and duplicate deliveries; then an oracle judges what happened from the outside —
//! every `ModifyRule` and `UpdateService` as the proxies saw it (checked against what moto
//! held at that moment), the rules and services moto holds, the deployment records, and
//! the events on an audit queue — never from the workers' logs.
//!
//! Knobs (environment): `CHAOS_SEED` (printed; the same seed replays the same faults and
//! load, not the same timing), `CHAOS_DEPLOYMENTS` (30), `CHAOS_SERVICES` (6),
//! `CHAOS_WORKERS` (4), `CHAOS_FAULT_RATE` (0.2), `CHAOS_KILL_EVERY_MS` (by the knobs), and
//! `CHAOS_KNOBS`: `fast` (default: a 10 s lease, a reconciler pass every 3 s, 10
//! receipts, a kill every ~4 s) or `defaults` (the worker's shipped lease and reconciler
//! period, 30 s each, its own visibility, the stack's 15 receipts, and a kill every ~12 s:
//! the same deaths per lease). Services come in pairs that share a
//! rollback alarm, and every deployment runs a validation that takes 6 s.
//! `scripts/chaos` runs 200 deployments over 20 services with each set of knobs and
//! prints the summary tables.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use bluegreen::flow::{Color, Deployment, Phase, ServiceState, Weights};
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::faults::{Call, Counts, Fault, Faults, Hook, Proxy};
use crate::moto::{Env, Shape, endpoint, set_alarm};

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The worker's knobs in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Knobs {
    /// A short lease and a frequent reconciler: faults recover fast.
    Fast,
    /// What the worker and the stack ship with.
    Defaults,
}

impl Knobs {
    /// The lease and the reconciler period the workers run with.
    fn lease_and_period(self) -> (Duration, Duration) {
        match self {
            Knobs::Fast => (Duration::from_secs(10), Duration::from_secs(3)),
            Knobs::Defaults => (Duration::from_secs(30), Duration::from_secs(30)),
        }
    }

    /// The worker's arguments for them.
    fn args(self) -> Vec<String> {
        match self {
            Knobs::Fast => ["--reconcile-every", "3s", "--lease", "10s"]
                .map(str::to_string)
                .to_vec(),
            Knobs::Defaults => Vec::new(),
        }
    }

    /// The queue's `maxReceiveCount`.
    fn receipts(self) -> u32 {
        match self {
            Knobs::Fast => 10,
            Knobs::Defaults => 15,
        }
    }

    /// How often a worker is killed unless `CHAOS_KILL_EVERY_MS` says: every 4 s with the
    /// fast knobs; with the shipped ones the same number of deaths per lease (a worker
    /// lives about 1.6 leases in both): a kill every 12 s.
    fn kill_every(self) -> Duration {
        let (lease, _) = self.lease_and_period();
        Duration::from_secs(4) * u32::try_from(lease.as_secs() / 10).unwrap_or(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    seed: u64,
    deployments: u64,
    services: u8,
    workers: usize,
    rate: f64,
    kill_every: Duration,
    knobs: Knobs,
}

impl Settings {
    fn from_env() -> Settings {
        #[allow(clippy::disallowed_methods)] // a fresh seed when none is given
        let fresh = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Settings {
            seed: knob("CHAOS_SEED", fresh),
            deployments: knob("CHAOS_DEPLOYMENTS", 30),
            services: knob("CHAOS_SERVICES", 6),
            workers: knob("CHAOS_WORKERS", 4),
            rate: knob("CHAOS_FAULT_RATE", 0.2),
            kill_every: Duration::ZERO,
            knobs: match std::env::var("CHAOS_KNOBS").as_deref() {
                Ok("defaults") => Knobs::Defaults,
                _ => Knobs::Fast,
            },
        }
        .with_kills()
    }

    fn with_kills(mut self) -> Settings {
        let default = u64::try_from(self.knobs.kill_every().as_millis()).unwrap_or(4000);
        self.kill_every = Duration::from_millis(knob("CHAOS_KILL_EVERY_MS", default));
        self
    }
}

/// Where each service's resources are, by name.
#[derive(Debug, Clone)]
struct Topology {
    /// Rule ARN → service.
    rules: HashMap<String, String>,
    /// ECS service name → (service, colour).
    ecs: HashMap<String, (String, Color)>,
    /// Service → (blue group, green group).
    groups: HashMap<String, (String, String)>,
    table: String,
}

impl Topology {
    fn of(env: &Env) -> Topology {
        let mut t = Topology {
            rules: HashMap::new(),
            ecs: HashMap::new(),
            groups: HashMap::new(),
            table: env.config.worker.table.clone(),
        };
        for s in &env.config.services {
            t.rules.insert(
                s.production_listener_rule_arn.clone().expect("rule"),
                s.name.clone(),
            );
            t.ecs
                .insert(s.blue_service.clone(), (s.name.clone(), Color::Blue));
            t.ecs
                .insert(s.green_service.clone(), (s.name.clone(), Color::Green));
            t.groups.insert(
                s.name.clone(),
                (
                    s.blue_target_group_arn.clone(),
                    s.green_target_group_arn.clone(),
                ),
            );
        }
        t
    }
}

/// A production write as a proxy saw it.
#[derive(Debug, Clone)]
struct RuleWrite {
    at: Instant,
    service: String,
    weights: Option<Weights>,
    /// Whether moto applied it (no fault, or only its answer was lost).
    applied: bool,
}

/// One `PutEvents` or outbox `DeleteItem` as a proxy saw it.
#[derive(Debug, Clone)]
struct EventCall {
    at: Instant,
    worker: String,
    event_ids: Vec<String>,
    fault: Option<Fault>,
    /// The answer came back after the worker's attempt timeout (see `faults::Call`).
    late: Arc<AtomicBool>,
    /// The request body (`PutEvents` only): what to show when an input left no trace.
    body: String,
}

impl EventCall {
    /// Whether the worker never got this call's answer, though moto applied it.
    fn answer_lost(&self) -> bool {
        self.fault == Some(Fault::AnswerLost) || self.late.load(Ordering::Relaxed)
    }
}

/// The workers' SDK attempt timeout in this suite.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the proxies' hook saw and judged.
#[derive(Debug, Default)]
struct Audit {
    rule_writes: Vec<RuleWrite>,
    violations: Vec<String>,
    stale_writes: Vec<String>,
    puts: Vec<EventCall>,
    marks: Vec<EventCall>,
    /// Commits (`TransactWriteItems`) that wrote outbox entries; `event_ids` holds their
    /// sort keys.
    commits: Vec<EventCall>,
    checked_writes: u64,
    checked_updates: u64,
}

/// Reads moto directly (never through a proxy) to judge each write as it happens.
struct Inspector {
    topology: Topology,
    dynamodb: aws_sdk_dynamodb::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    audit: Mutex<Audit>,
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[allow(clippy::disallowed_methods)] // leases are judged in the workers' time: wall-clock ms
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inspector {
    fn hook(self: &Arc<Self>) -> Hook {
        let me = self.clone();
        Arc::new(move |call: Call| {
            let me = me.clone();
            Box::pin(async move { me.inspect(call).await })
        })
    }

    async fn inspect(&self, call: Call) {
        let applied = call.fault.is_none_or(Fault::applied);
        match call.operation.as_str() {
            "ModifyRule" => self.rule_write(&call, applied).await,
            "UpdateService" if applied => self.service_update(&call).await,
            "PutEvents" => {
                let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
                let ids = body["Entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        let detail: Value =
                            serde_json::from_str(e["Detail"].as_str().unwrap_or("{}")).ok()?;
                        detail["eventId"].as_str().map(str::to_string)
                    })
                    .collect();
                self.audit.lock().expect("audit").puts.push(EventCall {
                    at: Instant::now(),
                    worker: call.worker.clone(),
                    event_ids: ids,
                    fault: call.fault,
                    late: call.answered_late.clone(),
                    body: String::from_utf8_lossy(&call.body).into_owned(),
                });
            }
            "TransactWriteItems" => {
                let text = String::from_utf8_lossy(&call.body).into_owned();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let keys: Vec<String> = body["TransactItems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["Put"]["Item"]["sk"]["S"].as_str())
                    .filter(|sk| sk.starts_with("OUTBOX#"))
                    .map(str::to_string)
                    .collect();
                if !keys.is_empty() {
                    self.audit.lock().expect("audit").commits.push(EventCall {
                        at: Instant::now(),
                        worker: call.worker.clone(),
                        event_ids: keys,
                        fault: call.fault,
                        late: call.answered_late.clone(),
                        body: text,
                    });
                }
            }
            "DeleteItem" => {
                let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
                if let Some(sk) = body["Key"]["sk"]["S"].as_str()
                    && sk.starts_with("OUTBOX#")
                {
                    let id = sk.rsplit('#').next().unwrap_or_default().to_string();
                    self.audit.lock().expect("audit").marks.push(EventCall {
                        at: Instant::now(),
                        worker: call.worker.clone(),
                        event_ids: vec![id],
                        fault: call.fault,
                        late: call.answered_late.clone(),
                        body: sk.to_string(),
                    });
                }
            }
            _ => {}
        }
    }

    /// The stored state and lease of `service`, as moto holds them now.
    async fn stored(&self, service: &str) -> Option<(ServiceState, String, u64)> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.topology.table)
            .key("pk", AttributeValue::S(format!("SERVICE#{service}")))
            .key("sk", AttributeValue::S("STATE".into()))
            .consistent_read(true)
            .send()
            .await
            .ok()?;
        let item = out.item()?;
        let text = item.get("state")?.as_s().ok()?;
        let owner = item
            .get("lease_owner")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default();
        let until = item
            .get("lease_until")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Some((serde_json::from_str(text).ok()?, owner, until))
    }

    async fn rule_write(&self, call: &Call, applied: bool) {
        let f = form(&call.body);
        let Some(service) = f
            .get("RuleArn")
            .and_then(|arn| self.topology.rules.get(arn))
            .cloned()
        else {
            return;
        };
        let (blue_tg, green_tg) = self.topology.groups[&service].clone();
        let prefix = "Actions.member.1.ForwardConfig.";
        let mut problems = Vec::new();
        let mut tuples = Vec::new();
        for n in 1.. {
            let arn = f.get(&format!("{prefix}TargetGroups.member.{n}.TargetGroupArn"));
            let weight = f.get(&format!("{prefix}TargetGroups.member.{n}.Weight"));
            let Some(arn) = arn else { break };
            tuples.push((arn.clone(), weight.and_then(|w| w.parse::<u32>().ok())));
        }
        let weight_of = |tg: &str| tuples.iter().find(|(a, _)| a == tg).and_then(|(_, w)| *w);
        let weights = match (weight_of(&blue_tg), weight_of(&green_tg)) {
            (Some(b), Some(g)) if tuples.len() == 2 && b + g == 100 => Some(Weights {
                blue: u8::try_from(b).unwrap_or(0),
                green: u8::try_from(g).unwrap_or(0),
            }),
            _ => {
                problems.push(format!(
                    "{service}: weights {tuples:?} are not the pair summing to 100"
                ));
                None
            }
        };
        if f.get(&format!("{prefix}TargetGroupStickinessConfig.Enabled"))
            .map(String::as_str)
            != Some("true")
            || f.get(&format!(
                "{prefix}TargetGroupStickinessConfig.DurationSeconds"
            ))
            .map(String::as_str)
                != Some("300")
        {
            problems.push(format!("{service}: stickiness not kept: {f:?}"));
        }
        // The writer must hold the service's lease right now.
        let now = wall_ms();
        let stored = self.stored(&service).await;
        let mut stale = None;
        if let Some((state, owner, until)) = &stored {
            if !owner.starts_with(&format!("{}#", call.worker)) || *until < now {
                stale = Some(format!(
                    "{service}: ModifyRule {weights:?} by {} while the lease is {owner:?} until {until} (now {now})",
                    call.worker
                ));
            }
            // Traffic on the new colour only once it runs the deployment's revision.
            if let (Some(w), Some(d)) = (weights, state.active.as_ref())
                && w.of(d.target) > 0
                && applied
                && let Some(problem) = self.runs_revision(&service, d).await
            {
                problems.push(problem);
            }
        }
        let mut audit = self.audit.lock().expect("audit");
        audit.checked_writes += 1;
        audit.violations.extend(problems);
        audit.stale_writes.extend(stale);
        audit.rule_writes.push(RuleWrite {
            at: Instant::now(),
            service,
            weights,
            applied,
        });
    }

    /// `None` when `d.target`'s ECS service runs `d`'s revision; else the problem.
    async fn runs_revision(&self, service: &str, d: &Deployment) -> Option<String> {
        let name = self
            .topology
            .ecs
            .iter()
            .find(|(_, (s, c))| s == service && *c == d.target)
            .map(|(n, _)| n.clone())?;
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&name)
            .send()
            .await
            .ok()?;
        let running = out
            .services()
            .first()?
            .task_definition()
            .map(str::to_string);
        (running != d.revision).then(|| {
            format!(
                "{service}: traffic sent to {} running {running:?}, not {}'s {:?}",
                d.target, d.id, d.revision
            )
        })
    }

    /// An ECS update must not touch a colour the rule sends traffic to.
    async fn service_update(&self, call: &Call) {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let Some((service, color)) = body["service"]
            .as_str()
            .and_then(|n| self.topology.ecs.get(n))
            .cloned()
        else {
            return;
        };
        let rule = self
            .topology
            .rules
            .iter()
            .find(|(_, s)| **s == service)
            .map(|(r, _)| r.clone());
        let mut problem = None;
        if let Some(rule) = rule
            && let Ok(out) = self.elb.describe_rules().rule_arns(&rule).send().await
            && let Some(r) = out.rules().first()
        {
            let (blue_tg, green_tg) = &self.topology.groups[&service];
            let group = if color == Color::Blue {
                blue_tg
            } else {
                green_tg
            };
            let share: i32 = r
                .actions()
                .iter()
                .filter_map(|a| a.forward_config())
                .flat_map(|f| f.target_groups())
                .filter(|t| t.target_group_arn() == Some(group.as_str()))
                .filter_map(|t| t.weight())
                .sum();
            if share > 0 {
                problem = Some(format!(
                    "{service}: UpdateService on {color} ({body}) while the rule sends it {share}%"
                ));
            }
        }
        let mut audit = self.audit.lock().expect("audit");
        audit.checked_updates += 1;
        audit.violations.extend(problem);
    }
}

/// The worker processes, each behind its own proxy.
struct Workers {
    children: Vec<Option<Child>>,
    proxies: Vec<Proxy>,
    config_json: String,
    logs: std::path::PathBuf,
    kills: Vec<(String, Instant)>,
    /// The knobs' worker arguments.
    knobs: Vec<String>,
}

impl Workers {
    fn label(i: usize) -> String {
        format!("w{i}")
    }

    fn spawn(&mut self, i: usize) {
        let label = Workers::label(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{label}.log")))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
            .args([
                "worker",
                "--wait",
                "1s",
                "--aws-attempts",
                "1",
                "--aws-timeout",
                &format!("{}s", ATTEMPT_TIMEOUT.as_secs()),
                "--concurrency",
                "4",
                "--id",
                &label,
            ])
            .args(&self.knobs)
            .env("BLUEGREEN_CONFIG_JSON", &self.config_json)
            .env_remove("BLUEGREEN_CONFIG")
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://{}", self.proxies[i].addr),
            )
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("BLUEGREEN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker");
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            self.kills.push((Workers::label(i), Instant::now()));
        }
    }

    fn stop_all(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            // SIGTERM: let in-flight messages finish.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let mut child = child;
            let _ = child.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn push_envelope(id: &str, repository: &str, digest: &str, tag: &str) -> String {
    json!({
        "version": "0", "id": id, "detail-type": "ECR Image Action", "source": "aws.ecr",
        "account": "123456789012", "time": "2026-12-01T10:00:00Z", "region": "us-east-1",
        "resources": [], "detail": {
            "result": "SUCCESS", "repository-name": repository, "image-digest": digest,
            "action-type": "PUSH", "image-tag": tag
        }
    })
    .to_string()
}

fn operator_envelope(id: &str, service: &str, detail_type: &str) -> String {
    json!({
        "version": "0", "id": id, "detail-type": detail_type, "source": "bluegreen.manual",
        "account": "123456789012", "time": crate::common::wall_now(), "region": "us-east-1",
        "resources": [], "detail": { "service": service, "requestedBy": "chaos" }
    })
    .to_string()
}

/// Every worker's log lines that name one of `needles` (not followed by a digit: `web1`
/// is not `web12`), in time order, each prefixed with its worker.
fn log_lines_naming(logs: &std::path::Path, needles: &[&str]) -> Vec<String> {
    let names = |line: &str| {
        needles.iter().filter(|n| !n.is_empty()).any(|n| {
            line.match_indices(n)
                .any(|(i, _)| !line[i + n.len()..].starts_with(|c: char| c.is_ascii_digit()))
        })
    };
    let mut lines: Vec<(String, String)> = std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|file| {
            let worker = file.file_name().to_string_lossy().into_owned();
            std::fs::read_to_string(file.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| names(l))
                .map(|l| (l.to_string(), worker.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
        .into_iter()
        .map(|(line, worker)| format!("{worker}: {line}"))
        .collect()
}

fn alarm_envelope(id: &str, alarm: &str, at: &str) -> String {
    json!({
        "version": "0", "id": id, "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch", "account": "123456789012", "time": "2026-12-01T10:00:00Z",
        "region": "us-east-1", "resources": [], "detail": {
            "alarmName": alarm,
            "state": { "value": "ALARM", "reason": "chaos", "timestamp": at },
            "previousState": { "value": "OK", "reason": "fine", "timestamp": "2026-12-01T09:00:00.000+0000" },
            "configuration": { "metrics": [] }
        }
    })
    .to_string()
}

/// The stored state of every service, read directly from moto.
async fn states(inspector: &Inspector, names: &[String]) -> HashMap<String, ServiceState> {
    let mut out = HashMap::new();
    for name in names {
        if let Some((state, _, _)) = inspector.stored(name).await {
            out.insert(name.clone(), state);
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lossy_aws_and_killed_workers_break_no_promise() {
    let s = Settings::from_env();
    let (lease, period) = s.knobs.lease_and_period();
    println!(
        "== chaos: seed {} (CHAOS_SEED={} replays the faults and the load), {} deployments over {} services, {} workers, {:.0} % of AWS calls failed, a worker killed every ~{:?}; knobs {:?}: lease {lease:?}, reconciler every {period:?}, {} receipts",
        s.seed,
        s.seed,
        s.deployments,
        s.services,
        s.workers,
        s.rate * 100.0,
        s.kill_every,
        s.knobs,
        s.knobs.receipts(),
    );
    // Every deployment runs one validation that takes 6 s (its run holds the lease).
    let (check, _) = crate::moto::http_stub_after(200, Duration::from_secs(6)).await;
    let env = Env::create(
        "chaos",
        Shape {
            services: s.services,
            strategies: &[
                r#"{ kind = "linear", step_percent = 50, interval = "1s" }"#,
                r#"{ kind = "all-at-once" }"#,
                r#"{ kind = "canary", percent = 25, bake = "2s" }"#,
                r#"{ kind = "steps", steps = [ { weight = 20, pause = "1s" }, { weight = 60, pause = "1s" }, { weight = 100 } ] }"#,
            ],
            concurrencies: &["queue", "supersede", "reject"],
            own_alarm_and_repository: true,
            alarm_group: 2,
            max_receive_count: s.knobs.receipts(),
            bake: "2s",
            termination_wait: "2s",
            test_listener: true,
            extra: format!(r#"validations = [ {{ url = "{check}", expect_status = 200 }} ]"#),
            ..Shape::default()
        },
    )
    .await;
    let topology = Topology::of(&env);
    let names: Vec<String> = env.config.services.iter().map(|s| s.name.clone()).collect();
    let inspector = Arc::new(Inspector {
        topology: topology.clone(),
        dynamodb: aws_sdk_dynamodb::Client::new(&env.sdk),
        elb: aws_sdk_elasticloadbalancingv2::Client::new(&env.sdk),
        ecs: aws_sdk_ecs::Client::new(&env.sdk),
        cluster: env.cluster.clone(),
        audit: Mutex::new(Audit::default()),
    });
    let counts = Arc::new(Counts::default());
    let faults = Faults {
        rate: s.rate,
        hold: Duration::from_secs(4),
        attempt_timeout: ATTEMPT_TIMEOUT,
        plan: None,
    };
    let logs = std::env::temp_dir().join(format!("bluegreen-chaos-{}", env.prefix));
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut proxies = Vec::new();
    for i in 0..s.workers {
        proxies.push(
            Proxy::start(
                &endpoint(),
                &Workers::label(i),
                faults.clone(),
                s.seed,
                counts.clone(),
                inspector.hook(),
            )
            .await,
        );
    }
    let mut workers = Workers {
        children: (0..s.workers).map(|_| None).collect(),
        proxies,
        config_json: serde_json::to_string(&env.config).expect("config"),
        logs: logs.clone(),
        kills: Vec::new(),
        knobs: s.knobs.args(),
    };
    for i in 0..s.workers {
        workers.spawn(i);
    }
    let workers = Arc::new(Mutex::new(workers));

    // Poison messages: each must end in the dead-letter queue with one Event Rejected.
    let poison = [
        "{ not json".to_string(),
        r#"{"version":"0","id":"p1","detail-type":"Launch Missiles","source":"bluegreen.manual","detail":{}}"#.to_string(),
        operator_envelope("p2", "payments", "Abort Requested"),
    ];
    for p in &poison {
        env.send_raw(p).await;
    }

    // Kill a random worker every few seconds, and restart it.
    let stop_kills = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (workers, stop, every, n) =
            (workers.clone(), stop_kills.clone(), s.kill_every, s.workers);
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(s.seed, 1));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let pause = every.mul_f64(rng.random_range(0.5..1.5));
                tokio::time::sleep(pause).await;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let i = rng.random_range(0..n);
                let mut w = workers.lock().expect("workers");
                w.kill(i);
                w.spawn(i);
            }
        })
    };

    // The load: pushes, operator actions and alarms, each message delivered 1-3 times.
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(s.seed, 2));
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let send = |body: String| {
        let (sqs, url) = (sqs.clone(), env.queue_url.clone());
        async move {
            sqs.send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .expect("send");
        }
    };
    let mut pushed: Vec<(String, String)> = Vec::new();
    // (service, deployment, when, the weights a rollback restores)
    let mut alarms_fired: Vec<(String, String, Instant, Weights)> = Vec::new();
    let mut alarms_to_clear: Vec<(String, Instant)> = Vec::new();
    let mut messages = 0u64;
    let mut n = 0u64;
    let load_started = Instant::now();
    // Deployments start one after another per service (the queue policy waits), each
    // with a 6 s validation and steps held from their read-back; the shipped 30 s lease
    // keeps a killed worker's service longer.
    let per_deployment = match s.knobs {
        Knobs::Fast => 10,
        Knobs::Defaults => 15,
    };
    let load_deadline = load_started + Duration::from_secs(60 + s.deployments * per_deployment);
    let mut known = states(&inspector, &names).await;
    let started = |known: &HashMap<String, ServiceState>| -> u64 {
        known.values().map(|st| st.deployments_started).sum()
    };
    while started(&known) < s.deployments {
        assert!(
            Instant::now() < load_deadline,
            "the load could not start {} deployments in time ({} started); worker logs in {}",
            s.deployments,
            started(&known),
            logs.display()
        );
        n += 1;
        let k = rng.random_range(0..names.len());
        let name = names[k].clone();
        let copies = rng.random_range(1..=3);
        let dice = rng.random_range(0..100);
        let body = if dice < 35 {
            let digest = format!("sha256:{:064x}", 0xc4a0_0000_u64 + n);
            let repository = if k == 0 {
                "web".to_string()
            } else {
                format!("web{k}")
            };
            pushed.push((name.clone(), digest.clone()));
            Some(push_envelope(
                &format!("push-{n}"),
                &repository,
                &digest,
                &format!("r{n}"),
            ))
        } else if dice < 47 {
            let action = [
                "Pause Requested",
                "Resume Requested",
                "Promote Requested",
                "Abort Requested",
                "Rollback Requested",
            ][rng.random_range(0..5)];
            Some(operator_envelope(&format!("op-{n}"), &name, action))
        } else if dice < 57 {
            let active = known.get(&name).and_then(|st| st.active.clone());
            match active {
                Some(d) if matches!(d.phase, Phase::Shifting | Phase::Baking) => {
                    let alarm = env.alarms[k].clone();
                    set_alarm(&env.sdk, &alarm, "ALARM").await;
                    // Every service that shares the alarm and carries traffic to its new
                    // colour rolls back.
                    let fired = Instant::now();
                    for (j, other) in names.iter().enumerate() {
                        let sharing = env.alarms[j] == alarm;
                        let deployment = if j == k {
                            Some(d.clone())
                        } else {
                            known.get(other).and_then(|st| st.active.clone())
                        };
                        if let Some(dj) = deployment.filter(|dj| {
                            sharing && matches!(dj.phase, Phase::Shifting | Phase::Baking)
                        }) {
                            alarms_fired.push((
                                other.clone(),
                                dj.id.clone(),
                                fired,
                                Weights::all(dj.stable),
                            ));
                        }
                    }
                    alarms_to_clear.push((alarm.clone(), Instant::now() + Duration::from_secs(3)));
                    Some(alarm_envelope(
                        &format!("alarm-{n}"),
                        &alarm,
                        &crate::moto::cloudwatch_now(),
                    ))
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(body) = body {
            for _ in 0..copies {
                send(body.clone()).await;
                messages += 1;
            }
        }
        let now = Instant::now();
        for (alarm, _) in alarms_to_clear.iter().filter(|(_, at)| *at <= now) {
            set_alarm(&env.sdk, alarm, "OK").await;
        }
        alarms_to_clear.retain(|(_, at)| *at > now);
        // About one input a second over all services: a busy platform, not a flood that
        // no set of workers could keep up with.
        tokio::time::sleep(Duration::from_millis(400)).await;
        if n.is_multiple_of(4) {
            known = states(&inspector, &names).await;
        }
    }
    let load_took = load_started.elapsed();

    // Drain: no more kills or inputs; alarms back to OK; paused deployments resumed (a
    // pause is a human hold). Every deployment must then finish.
    stop_kills.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.abort();
    let _ = killer.await;
    for alarm in &env.alarms {
        set_alarm(&env.sdk, alarm, "OK").await;
    }
    let drain_deadline = Instant::now() + Duration::from_secs(240);
    let mut resumes = 0u64;
    let idle = loop {
        let known = states(&inspector, &names).await;
        let busy: Vec<String> = known
            .iter()
            .filter(|(_, st)| st.active.is_some() || st.queued.is_some())
            .map(|(n, st)| {
                format!(
                    "{n}: {:?}",
                    st.active.as_ref().map(|d| (
                        d.id.clone(),
                        d.phase,
                        d.paused_at.is_some(),
                        d.next_tick
                    ))
                )
            })
            .collect();
        if busy.is_empty() {
            break true;
        }
        if Instant::now() > drain_deadline {
            println!("still busy at the deadline: {busy:#?}");
            break false;
        }
        for (name, st) in &known {
            if st.active.as_ref().is_some_and(|d| d.is_paused()) {
                resumes += 1;
                send(operator_envelope(
                    &format!("resume-{resumes}"),
                    name,
                    "Resume Requested",
                ))
                .await;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // What a dead worker left in an outbox is published by the reconciler once its
    // claim expires (30 s).
    let outbox_deadline = Instant::now() + Duration::from_secs(90);
    let mut outbox_left = 0;
    while Instant::now() < outbox_deadline {
        outbox_left = outbox_entries(&inspector, &names).await;
        if outbox_left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Three minutes: the suite runs this next to the other end-to-end tests on two cores.
    env.wait_for_empty_queue(180).await;
    workers.lock().expect("workers").stop_all();

    // ---- The oracle, from the outside.
    let mut report = String::new();
    let mut failures: Vec<String> = Vec::new();
    let records = deployment_records(&inspector).await;
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let mut stalled = Vec::new();
    for d in &records {
        *by_outcome.entry(d.phase.as_str().into()).or_default() += 1;
        if let Some(r) = &d.rollback {
            *by_outcome
                .entry(format!("{} ({})", d.phase.as_str(), cause(&r.reason)))
                .or_default() += 1;
        }
        if !d.phase.is_terminal() {
            stalled.push(format!("{} {:?} {:?}", d.id, d.phase, d.next_tick));
        }
    }
    if !idle || !stalled.is_empty() {
        failures.push(format!("stalled deployments: {stalled:?}"));
    }

    let audit = std::mem::take(&mut *inspector.audit.lock().expect("audit"));
    if !audit.stale_writes.is_empty() {
        failures.push(format!("stale writes: {:#?}", audit.stale_writes));
    }
    if !audit.violations.is_empty() {
        failures.push(format!("violations: {:#?}", audit.violations));
    }
    // Rule conditions as created.
    for (k, svc) in env.config.services.iter().enumerate() {
        let rule = aws_sdk_elasticloadbalancingv2::Client::new(&env.sdk)
            .describe_rules()
            .rule_arns(svc.production_listener_rule_arn.clone().expect("rule"))
            .send()
            .await
            .expect("rule");
        let values: Vec<String> = rule.rules()[0]
            .conditions()
            .iter()
            .flat_map(|c| c.values().iter().cloned())
            .collect();
        let expected = if k == 0 {
            "/*".to_string()
        } else {
            format!("/s{k}/*")
        };
        if values != [expected.clone()] {
            failures.push(format!(
                "{}: conditions {values:?}, not [{expected}]",
                svc.name
            ));
        }
    }

    // Events: schema, no gap in sequence, duplicates only where a publisher could not
    // know it had published.
    let bodies = env.drain(&env.audit_url).await;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut first: HashMap<String, Value> = HashMap::new();
    let mut sequences: HashMap<String, Vec<u64>> = HashMap::new();
    let mut rejected_messages = 0;
    let mut mentioned = String::new();
    for body in &bodies {
        let event: Value = serde_json::from_str(body).expect("JSON");
        if let Err(errors) =
            bluegreen::schema::validate(bluegreen::schema::SchemaId::OutboundEvent, &event)
        {
            failures.push(format!("an event fails the schema: {errors:?}"));
        }
        let d = &event["detail"];
        let id = d["eventId"].as_str().unwrap_or_default().to_string();
        *seen.entry(id.clone()).or_default() += 1;
        if let Some(earlier) = first.get(&id) {
            if earlier != d {
                failures.push(format!(
                    "two different events share the id {id}: {earlier} and {d}"
                ));
            }
            continue;
        }
        first.insert(id.clone(), d.clone());
        let _ = write!(
            mentioned,
            "{} {} {} ",
            d["toImage"], d["reason"], d["input"]
        );
        if event["detail-type"] == "Deployment Failed"
            && d["reason"].as_str().is_none_or(str::is_empty)
        {
            failures.push(format!("a deployment failed without a reason: {d}"));
        }
        if event["detail-type"] == "Event Rejected" {
            if d["deploymentId"].is_null() {
                rejected_messages += 1;
            }
            continue;
        }
        sequences
            .entry(d["deploymentId"].as_str().unwrap_or_default().into())
            .or_default()
            .push(d["sequence"].as_u64().unwrap_or(0));
    }
    let mut gaps = Vec::new();
    for (deployment, mut seqs) in sequences {
        seqs.sort_unstable();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            gaps.push(format!("{deployment}: {seqs:?}"));
        }
    }
    if !gaps.is_empty() {
        failures.push(format!("sequence gaps: {gaps:?}"));
    }
    let (mut after_kill, mut after_fault, mut other) = (0, 0, Vec::new());
    for (id, count) in seen.iter().filter(|(_, c)| **c > 1) {
        let puts: Vec<&EventCall> = audit
            .puts
            .iter()
            .filter(|p| p.event_ids.contains(id))
            .collect();
        let lost_answer = puts.iter().any(|p| p.answer_lost())
            || audit
                .marks
                .iter()
                .any(|m| m.event_ids.contains(id) && (m.fault.is_some() || m.answer_lost()));
        let killed = puts.iter().filter(|p| p.fault.is_none()).any(|p| {
            workers
                .lock()
                .expect("workers")
                .kills
                .iter()
                .any(|(w, at)| {
                    *w == p.worker && *at >= p.at && *at < p.at + Duration::from_secs(40)
                })
        });
        let extra = count - 1;
        if lost_answer {
            after_fault += extra;
        } else if killed {
            after_kill += extra;
        } else {
            // The evidence, for whoever reads the failure.
            let kills = &workers.lock().expect("workers").kills;
            let t = |at: Instant| at.saturating_duration_since(load_started);
            let calls: Vec<String> = puts
                .iter()
                .map(|p| {
                    format!(
                        "put by {} at {:.1?} ({:?}{})",
                        p.worker,
                        t(p.at),
                        p.fault,
                        if p.answer_lost() { ", answer lost" } else { "" }
                    )
                })
                .chain(
                    audit
                        .marks
                        .iter()
                        .filter(|m| m.event_ids.contains(id))
                        .map(|m| {
                            format!("done by {} at {:.1?} ({:?})", m.worker, t(m.at), m.fault)
                        }),
                )
                .chain(
                    kills
                        .iter()
                        .filter(|(w, _)| puts.iter().any(|p| p.worker == *w))
                        .map(|(w, at)| format!("{w} killed at {:.1?}", t(*at))),
                )
                .collect();
            other.push(format!("{id}: {calls:?}"));
        }
    }
    if !other.is_empty() {
        failures.push(format!("duplicate events nothing explains: {other:?}"));
    }

    // Inputs: nothing valid in the dead-letter queue or left on the queue; every push
    // left a trace (a deployment, a queue entry, a rejection).
    let dead = env.drain(&env.dlq_url).await;
    let lost_in_dlq: Vec<&String> = dead.iter().filter(|b| !poison.contains(b)).collect();
    let untraced: Vec<&(String, String)> = pushed
        .iter()
        .filter(|(_, digest)| !mentioned.contains(digest.as_str()))
        .collect();
    let lost = lost_in_dlq.len() + untraced.len();
    if lost > 0 {
        let evidence: Vec<String> = untraced
            .iter()
            .map(|(service, digest)| {
                let t = |at: Instant| at.saturating_duration_since(load_started);
                let puts: Vec<String> = audit
                    .puts
                    .iter()
                    .filter(|p| p.body.contains(digest.as_str()))
                    .map(|p| format!("{} {:?} {:?}", p.worker, p.fault, p.event_ids))
                    .collect();
                let commits: Vec<String> = audit
                    .commits
                    .iter()
                    .filter(|c| c.body.contains(digest.as_str()))
                    .map(|c| {
                        let marks: Vec<String> = audit
                            .marks
                            .iter()
                            .filter(|m| c.event_ids.contains(&m.body))
                            .map(|m| {
                                format!("done by {} at {:.1?} ({:?})", m.worker, t(m.at), m.fault)
                            })
                            .collect();
                        format!(
                            "committed by {} at {:.1?} ({:?}) as {:?}, then {marks:?}",
                            c.worker,
                            t(c.at),
                            c.fault,
                            c.event_ids
                        )
                    })
                    .collect();
                format!("{service} {digest}: published in {puts:?}; {commits:?}")
            })
            .collect();
        failures.push(format!(
            "lost inputs: dead-lettered {lost_in_dlq:?}, pushes without a trace {evidence:#?}"
        ));
    }
    if dead.len() - lost_in_dlq.len() != poison.len() || rejected_messages < poison.len() {
        failures.push(format!(
            "poison messages: {} dead-lettered of {}, {rejected_messages} Event Rejected",
            dead.len() - lost_in_dlq.len(),
            poison.len()
        ));
    }
    if outbox_left > 0 {
        failures.push(format!("{outbox_left} outbox entries never published"));
    }

    // Alarm to weights restored, under faults: for the deployments an alarm rolled back
    // (an alarm that found its deployment already rolling back, superseded or aborted,
    // restored nothing), when the rule carried traffic to the new colour (an alarm before
    // the first shift has nothing to restore; the next write of those weights would be
    // a later deployment's).
    let by_alarm: std::collections::HashSet<&str> = records
        .iter()
        .filter(|d| {
            d.rollback
                .as_ref()
                .is_some_and(|r| cause(&r.reason) == "rollback alarm")
        })
        .map(|d| d.id.as_str())
        .collect();
    let mut first_alarm: HashMap<&str, &(String, String, Instant, Weights)> = HashMap::new();
    for fired in &alarms_fired {
        first_alarm.entry(fired.1.as_str()).or_insert(fired);
    }
    let applied_writes = |service: &String| -> Vec<&RuleWrite> {
        audit
            .rule_writes
            .iter()
            .filter(|w| w.service == *service && w.applied)
            .collect()
    };
    let mut latencies: Vec<(Duration, String)> = first_alarm
        .values()
        .filter(|(_, id, _, _)| by_alarm.contains(id.as_str()))
        .filter(|(service, _, at, restore)| {
            let before = applied_writes(service).into_iter().rfind(|w| w.at < *at);
            before.is_some_and(|w| w.weights != Some(*restore))
        })
        .filter_map(|(service, id, at, restore)| {
            applied_writes(service)
                .into_iter()
                .filter(|w| w.at >= *at && w.weights == Some(*restore))
                .map(|w| (w.at.duration_since(*at), id.clone()))
                .next()
        })
        .collect();
    latencies.sort();

    let faults = counts.faults();
    let kills = workers.lock().expect("workers").kills.len();
    let calls = counts.calls.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(report, "| figure | value |\n|---|---|");
    let _ = writeln!(
        report,
        "| deployments | {} ({} inputs sent as {messages} messages in {load_took:.0?}) |",
        records.len(),
        n
    );
    for (outcome, count) in &by_outcome {
        let _ = writeln!(report, "| … {outcome} | {count} |");
    }
    let _ = writeln!(report, "| stalled | {} |", stalled.len());
    let _ = writeln!(
        report,
        "| AWS calls / faulted | {calls} / {} |",
        faults.values().sum::<u64>()
    );
    for (fault, count) in &faults {
        let _ = writeln!(report, "| … {} | {count} |", fault.name());
    }
    let _ = writeln!(report, "| worker kills (SIGKILL) | {kills} |");
    let _ = writeln!(
        report,
        "| rule writes checked / stale | {} / {} |",
        audit.checked_writes,
        audit.stale_writes.len()
    );
    let _ = writeln!(
        report,
        "| ECS updates checked / on a colour with traffic | {} / {} |",
        audit.checked_updates,
        audit
            .violations
            .iter()
            .filter(|v| v.contains("UpdateService"))
            .count()
    );
    let _ = writeln!(report, "| lost inputs | {lost} |");
    let _ = writeln!(
        report,
        "| duplicate events: after a kill / after a lost answer or mark / other | {after_kill} / {after_fault} / {} |",
        other.len()
    );
    let _ = writeln!(report, "| sequence gaps | {} |", gaps.len());
    let durations: Vec<Duration> = latencies.iter().map(|(d, _)| *d).collect();
    let p99 = percentile(&durations, 0.99);
    // The promise: production back within a lease and a reconciler period of the alarm,
    // with 15 s for the faults' own delays (timeouts of 3 s, repeats).
    let bound = lease + period + Duration::from_secs(15);
    let _ = writeln!(
        report,
        "| alarm → weights restored, p50 / p99 (n = {}; bound {bound:.0?}) | {:.0?} / {:.0?} (slowest: {}) |",
        latencies.len(),
        percentile(&durations, 0.5),
        p99,
        latencies.last().map_or("none", |(_, id)| id.as_str())
    );
    if p99 > bound {
        failures.push(format!(
            "alarm → weights restored p99 {p99:.1?} beyond lease + reconciler period + 15 s = {bound:?}"
        ));
    }
    println!("{report}");
    // The slowest restore's timeline, for whoever looks into it.
    if let Some((_, id)) = latencies.last()
        && let Some((service, _, at, restore)) = first_alarm.get(id.as_str())
    {
        let t = |i: Instant| i.saturating_duration_since(load_started);
        let writes: Vec<String> = audit
            .rule_writes
            .iter()
            .filter(|w| w.service == *service && w.at + Duration::from_secs(60) >= *at)
            .take(12)
            .map(|w| format!("{:.1?} {:?} applied={}", t(w.at), w.weights, w.applied))
            .collect();
        let kills: Vec<String> = workers
            .lock()
            .expect("workers")
            .kills
            .iter()
            .filter(|(_, k)| {
                *k + Duration::from_secs(30) >= *at && *k <= *at + Duration::from_secs(120)
            })
            .map(|(w, k)| format!("{w} at {:.1?}", t(*k)))
            .collect();
        println!(
            "slowest restore: {id} (alarm at {:.1?}, restore {restore}); rule writes on {service} from a minute before: {writes:?}; workers killed around it: {kills:?}",
            t(*at)
        );
        // A passing run deletes the logs: keep what the workers said about it and about
        // the service's alarm.
        let alarm = names
            .iter()
            .position(|n| n == service)
            .map_or("", |k| env.alarms[k].as_str());
        for line in log_lines_naming(&logs, &[id, alarm]).iter().take(150) {
            println!("  {line}");
        }
    }
    println!("worker logs: {}", logs.display());
    assert!(
        failures.is_empty(),
        "the oracle failed (seed {}):\n{}",
        s.seed,
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// The kind of a rollback's cause, for the table.
fn cause(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    [
        ("superseded", "superseded by a newer image"),
        ("alarm", "rollback alarm"),
        ("requested by", "operator"),
        ("aborted by", "operator"),
        (" within ", "timed out"),
        ("validation", "validation failed"),
        ("failed", "an effect failed"),
    ]
    .iter()
    .find(|(needle, _)| r.contains(needle))
    .map_or("other", |(_, kind)| kind)
}

fn seed_bytes(seed: u64, stream: u8) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8] = stream;
    bytes
}

/// Outbox entries not yet published, over every service.
async fn outbox_entries(inspector: &Inspector, names: &[String]) -> usize {
    let mut n = 0;
    for name in names {
        if let Ok(out) = inspector
            .dynamodb
            .query()
            .table_name(&inspector.topology.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(format!("SERVICE#{name}")))
            .expression_attribute_values(":prefix", AttributeValue::S("OUTBOX#".into()))
            .send()
            .await
        {
            n += out.items().len();
        }
    }
    n
}

/// Every deployment record in the table.
async fn deployment_records(inspector: &Inspector) -> Vec<Deployment> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = inspector
            .dynamodb
            .scan()
            .table_name(&inspector.topology.table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        for item in page.items() {
            if let Some(text) = item.get("record").and_then(|v| v.as_s().ok())
                && let Ok(d) = serde_json::from_str::<Deployment>(text)
            {
                out.push(d);
            }
        }
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return out,
        }
    }
}
