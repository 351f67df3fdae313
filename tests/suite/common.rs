//! The production worker, tested as it runs (SPEC §4 invariant 11).
//!
//! [`World`] drives the real [`Worker`] — the same runner, message handling and
//! reconciler as production — over the embedded store and inbox (in-memory SQLite) and
//! a simulated cloud ([`Sim`]: the ALB rules, the ECS colours, alarms, validation
//! targets, a registry and the bus), on tokio's paused clock. Tests hand it inputs,
//! deliver what is waiting in the inbox (ticks the worker sent itself, and EventBridge
//! envelopes), and read what the ports saw and every decision the runner reported.
//! Nothing here runs an effect: the runner calls the ports, and the simulated cloud
//! only answers them, like moto does in the end-to-end tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluegreen::contract::Entry;
use bluegreen::fleet::{Fleet, Service};
use bluegreen::flow::{
    Action, AlarmState, Color, Decision, EventDetail, EventKind, ImageRef, Input, InputKind,
    Observations, OutboundEvent, Outcome, Phase, ProductionRules, RuleWeights, ServiceSettings,
    ServiceState, Strategy, TargetHealth, TickKey, Timestamp, Weights,
};
use bluegreen::local::db::{LocalDb, QueueOptions};
use bluegreen::ports::{
    Alarms, Bus, Checks, Claimed, Clock, Commit, Fence, Inbox, Lease, Platform, PortError,
    PortResult, Received, Registry, Store, Stored, Traffic,
};
use bluegreen::runner::Decided;
use bluegreen::worker::{Options, Worker};

/// 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;

pub const SERVICE: &str = "web";
pub const ACCOUNT: &str = "123456789012";
pub const REPO: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/web";

pub fn linear(step_percent: u8, interval_secs: u64) -> Strategy {
    Strategy::Linear {
        step_percent,
        interval: Duration::from_secs(interval_secs),
    }
}

/// Linear 25 % per minute, 2 min bake, 5 min termination wait, two rollback alarms.
pub fn settings() -> ServiceSettings {
    let mut s = ServiceSettings::with_strategy(linear(25, 60));
    s.bake = Duration::from_secs(120);
    s.termination_wait = Duration::from_secs(300);
    s.rollback_alarms = vec!["web-5xx".into(), "web-p99".into()];
    s
}

pub fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

pub fn image(n: u32) -> ImageRef {
    ImageRef {
        repository: REPO.into(),
        digest: Some(digest(n)),
        tag: Some(format!("release-{n}")),
    }
}

pub fn push(n: u32) -> Input {
    let image = image(n);
    Input::new(
        format!("push:{}", image.pinned()),
        InputKind::Deploy {
            image,
            requested_by: "ecr-push".into(),
            reason: None,
            unresolved: None,
        },
    )
}

pub fn op(key: &str, action: Action) -> Input {
    op_on(key, action, None)
}

pub fn op_on(key: &str, action: Action, deployment_id: Option<&str>) -> Input {
    Input::new(
        format!("event:{key}"),
        InputKind::Operator {
            action,
            deployment_id: deployment_id.map(str::to_string),
            requested_by: "alice".into(),
            reason: None,
        },
    )
}

pub fn alarm(name: &str, at: &str) -> Input {
    Input::new(
        format!("alarm:{name}:{at}"),
        InputKind::Alarm {
            alarm: name.into(),
            state: AlarmState::Alarm,
            reason: Some("Threshold Crossed".into()),
            changed_at: None,
            observed: Observations::default(),
        },
    )
}

/// Healthy; the simulated ECS fills in the revision the colour really runs.
pub fn healthy() -> TargetHealth {
    TargetHealth {
        task_definition: None,
        rollout_completed: true,
        running: 2,
        desired: 2,
        healthy_targets: 2,
        registered_targets: 2,
    }
}

/// The production listener rule events name.
pub const RULE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/alb/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";

/// The second production rule, when the simulated service has one.
pub const RULE2: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/alb/50dc6c495c0c9188/3e9f0a8d6c1b2a47/0b1c2d3e4f5a6b7c";

/// The worker's view of the one service, deploying with `settings`.
pub fn fleet(s: &ServiceSettings) -> Fleet {
    let settings = s.clone();
    Fleet {
        source: "bluegreen".into(),
        manual_source: "bluegreen.manual".into(),
        account_id: Some(ACCOUNT.into()),
        region: Some("us-east-1".into()),
        services: vec![Service {
            name: SERVICE.into(),
            ecr_repository: "web".into(),
            tag_pattern: None,
            rollback_alarms: settings.all_rollback_alarms(),
            settings,
            resources: vec![RULE.into(), "web-blue".into(), "web-green".into()],
        }],
    }
}

/// A port call the simulated cloud answered, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Register {
        deployment_id: String,
    },
    Update {
        color: Color,
        task_definition: String,
    },
    ScaleToZero(Color),
    ScaleUp(Color),
    Restore {
        color: Color,
        task_definition: String,
        desired: u32,
    },
    Production(Weights),
    Test(Weights),
    Validate(String),
}

/// Everything the simulated cloud saw, and every event decided.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Production weights written (and read back), in order.
    pub production: Vec<Weights>,
    /// When the rule took each written weight.
    pub timeline: Vec<(Timestamp, Weights)>,
    pub test: Vec<Weights>,
    /// Task definitions registered (a repeated registration of one deployment finds
    /// the earlier one, as the ECS adapter does).
    pub registrations: Vec<String>,
    pub updates: Vec<(Color, String)>,
    pub scaled_to_zero: Vec<Color>,
    /// Outbound events as committed to the outbox, in order (the store's view: a commit
    /// whose answer was lost, by a worker that died before it knew, counts too).
    pub events: Vec<OutboundEvent>,
    /// Outbound events as they reached the bus.
    pub published: Vec<OutboundEvent>,
    /// Who held the service lease at each publish (the store's lease owner).
    pub published_under: Vec<Option<String>>,
    /// `Event Rejected` details for messages the worker could not read or route.
    pub unreadable: Vec<serde_json::Value>,
    pub calls: Vec<Call>,
}

/// The simulated cloud's state and knobs.
#[derive(Debug)]
pub struct Cloud {
    /// The production rule's weights.
    pub rule: Weights,
    /// A second production rule's weights, when the service has two (written after the
    /// first, read after it).
    pub rule2: Option<Weights>,
    /// The worker dies between the first and the second rule's write.
    pub crash_between_rules: bool,
    /// Set: the rule cannot be read as the service's pair (e.g. a third target group).
    pub rule_error: Option<String>,
    pub test_rule: Weights,
    /// What the alarm read returns; `None` = the read fails.
    pub alarms_firing: Option<Vec<String>>,
    /// What the health read returns; `None` = the read fails.
    pub health: Option<TargetHealth>,
    pub validations_pass: bool,
    /// Every call of this effect fails.
    pub failing_effect: Option<&'static str>,
    /// The revision each colour's service runs, and its desired count.
    pub colors: HashMap<Color, (Option<String>, u32)>,
    /// Tags the registry knows, with their digests.
    pub tags: HashMap<String, String>,
    pub log: Log,
    /// The worker dies right after its next commit (at its next call: the fencing
    /// check before the first effect, or the outbox).
    pub crash_after_commit: bool,
    dying: bool,
    /// The worker dies right before this many more effect calls.
    pub crash_before_call: Option<u32>,
    /// The worker dies right after its next production write, before it records the
    /// read-back.
    pub crash_after_write: bool,
    pub crashes: u32,
    calls_this_op: u64,
    /// The next this many fencing reads fail retryably (a store hiccup).
    pub fence_failures: u32,
    /// The next commit lands, but its answer is lost (a retryable error).
    pub commit_answer_lost: bool,
    /// Commits are refused for good (the table's permissions, say).
    pub commit_refused: bool,
    /// The next production write lands, but its answer is lost.
    pub write_answer_lost: bool,
    /// The next call of this effect takes this long.
    pub slow: Option<(&'static str, Duration)>,
    /// Reads of the production rule fail retryably (throttling).
    pub rule_unreadable: bool,
    /// The next receive takes its messages off the queue at once and answers this much
    /// later (a long poll whose answer is on its way).
    pub receive_answer_late: Option<Duration>,
    /// Receives fail (the queue out of reach).
    pub receive_fails: bool,
    /// The next this many publishes fail.
    pub bus_down: u32,
    /// Store calls yield to other tasks first, so that concurrent workers interleave.
    pub interleave: bool,
}

impl Default for Cloud {
    fn default() -> Cloud {
        Cloud {
            rule: Weights::all(Color::Blue),
            rule_error: None,
            rule2: None,
            crash_between_rules: false,
            test_rule: Weights::all(Color::Blue),
            alarms_firing: Some(Vec::new()),
            health: Some(healthy()),
            validations_pass: true,
            failing_effect: None,
            colors: HashMap::from([
                (Color::Blue, (Some("web:initial".into()), 2)),
                (Color::Green, (None, 0)),
            ]),
            tags: HashMap::new(),
            log: Log::default(),
            crash_after_commit: false,
            dying: false,
            crash_before_call: None,
            crash_after_write: false,
            crashes: 0,
            calls_this_op: 0,
            fence_failures: 0,
            commit_answer_lost: false,
            commit_refused: false,
            write_answer_lost: false,
            slow: None,
            rule_unreadable: false,
            receive_answer_late: None,
            receive_fails: false,
            bus_down: 0,
            interleave: false,
        }
    }
}

/// The embedded store and inbox plus the simulated cloud, behind the worker's ports.
pub struct Sim {
    pub db: LocalDb,
    pub cloud: Mutex<Cloud>,
    crashed: tokio::sync::Notify,
    clock: Clock,
}

tokio::task_local! {
    /// Told when the worker whose future runs in this scope dies (several workers at once).
    static DEATH: Arc<tokio::sync::Notify>;
}

impl Sim {
    fn cloud(&self) -> std::sync::MutexGuard<'_, Cloud> {
        self.cloud.lock().expect("cloud lock")
    }

    /// The worker dies here: the harness drops its future, nothing after this runs.
    async fn die(&self) {
        self.cloud().crashes += 1;
        if DEATH.try_with(|n| n.notify_one()).is_err() {
            self.crashed.notify_one();
        }
        std::future::pending::<()>().await;
    }

    /// A store call: other workers may run first.
    async fn store_call(&self) {
        let interleave = self.cloud().interleave;
        if interleave {
            tokio::task::yield_now().await;
        }
    }

    /// Fails the test when one operation runs away (a loop in the runner).
    fn guard(&self) {
        let mut c = self.cloud();
        c.calls_this_op += 1;
        assert!(
            c.calls_this_op < 20_000,
            "one operation made 20 000 store calls: a runaway loop"
        );
    }

    /// The worker dies here if its last commit was to be its last act.
    async fn after_commit(&self) {
        let dying = std::mem::take(&mut self.cloud().dying);
        if dying {
            self.die().await;
        }
    }

    /// An effect is about to reach the cloud: the worker may die first, or the call fail.
    async fn effect(&self, name: &'static str) -> PortResult<()> {
        self.after_commit().await;
        let die = {
            let mut c = self.cloud();
            match c.crash_before_call {
                Some(0) => {
                    c.crash_before_call = None;
                    true
                }
                Some(n) => {
                    c.crash_before_call = Some(n - 1);
                    false
                }
                None => false,
            }
        };
        if die {
            self.die().await;
        }
        if self.cloud().failing_effect == Some(name) {
            return Err(PortError::Permanent(format!("{name}: injected failure")));
        }
        let slow = self.cloud().slow.take_if(|(effect, _)| *effect == name);
        if let Some((_, took)) = slow {
            tokio::time::sleep(took).await;
        }
        Ok(())
    }
}

impl Inbox for Sim {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<Received>> {
        if self.cloud().receive_fails {
            return Err(PortError::Retryable(
                "ReceiveMessage: dispatch failure: connection refused".into(),
            ));
        }
        let received = self.db.receive(max, wait, visibility).await;
        let late = self.cloud().receive_answer_late.take();
        if let Some(late) = late {
            tokio::time::sleep(late).await;
        }
        received
    }
    async fn receive_limit(&self) -> PortResult<Option<u32>> {
        self.db.receive_limit().await
    }
    async fn delete(&self, receipt: &str) -> PortResult<()> {
        self.db.delete(receipt).await
    }
    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()> {
        self.db.set_visibility(receipt, timeout).await
    }
    async fn send(&self, body: String, delay: Duration) -> PortResult<()> {
        self.effect("schedule-tick").await?;
        self.db.send(body, delay).await
    }
}

impl Store for Sim {
    async fn load(&self, service: &str, initial: Color) -> PortResult<Stored> {
        self.store_call().await;
        self.guard();
        self.db.load(service, initial).await
    }
    async fn commit(&self, service: &str, commit: Commit<'_>) -> PortResult<u64> {
        self.store_call().await;
        if self.cloud().commit_refused {
            return Err(PortError::Permanent(
                "TransactWriteItems: AccessDeniedException: not authorized to perform dynamodb:UpdateItem".into(),
            ));
        }
        let version = self.db.commit(service, commit).await?;
        let mut c = self.cloud();
        c.log.events.extend(commit.outbox.iter().map(outbound));
        c.dying = std::mem::take(&mut c.crash_after_commit);
        if std::mem::take(&mut c.commit_answer_lost) {
            return Err(PortError::Retryable(
                "TransactWriteItems: answer lost".into(),
            ));
        }
        Ok(version)
    }
    async fn seen(&self, service: &str, key: &str) -> PortResult<bool> {
        self.db.seen(service, key).await
    }
    async fn fence(&self, service: &str) -> PortResult<Fence> {
        self.after_commit().await;
        self.store_call().await;
        self.guard();
        {
            let mut c = self.cloud();
            if c.fence_failures > 0 {
                c.fence_failures -= 1;
                return Err(PortError::Retryable(
                    "GetItem: injected store failure".into(),
                ));
            }
        }
        self.db.fence(service).await
    }
    async fn extend(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        self.after_commit().await;
        self.db.extend(service, version, lease).await
    }
    async fn release(&self, service: &str, owner: &str) -> PortResult<()> {
        self.after_commit().await;
        self.db.release(service, owner).await
    }
    async fn take(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        self.after_commit().await;
        self.db.take(service, version, lease).await
    }
    async fn discharge(
        &self,
        service: &str,
        version: u64,
        owner: &str,
        release: bool,
    ) -> PortResult<bool> {
        self.after_commit().await;
        self.db.discharge(service, version, owner, release).await
    }
    async fn preempt(&self, service: &str, until: Option<Timestamp>) -> PortResult<()> {
        self.db.preempt(service, until).await
    }
    async fn remember(&self, service: &str, key: &str, now: Timestamp) -> PortResult<()> {
        self.db.remember(service, key, now).await
    }
    async fn claim_outbox(&self, service: &str, claim: Lease<'_>) -> PortResult<Vec<Claimed>> {
        self.after_commit().await;
        self.db.claim_outbox(service, claim).await
    }
    async fn outbox_done(&self, service: &str, keys: &[String]) -> PortResult<()> {
        self.db.outbox_done(service, keys).await
    }
    async fn try_lease(&self, name: &str, lease: Lease<'_>) -> PortResult<Option<u64>> {
        self.db.try_lease(name, lease).await
    }
    async fn mark_lease(&self, name: &str, owner: &str, mark: u64) -> PortResult<()> {
        self.db.mark_lease(name, owner, mark).await
    }
}

impl Traffic for Sim {
    async fn production(&self, _service: &str) -> PortResult<ProductionRules> {
        let c = self.cloud();
        if c.rule_unreadable {
            return Err(PortError::Retryable("DescribeRules: throttled".into()));
        }
        if let Some(why) = &c.rule_error {
            return Err(PortError::Permanent(why.clone()));
        }
        let mut rules = vec![RuleWeights {
            rule: RULE.into(),
            weights: c.rule,
        }];
        rules.extend(c.rule2.map(|weights| RuleWeights {
            rule: RULE2.into(),
            weights,
        }));
        Ok(ProductionRules::new(rules).expect("a rule"))
    }
    async fn set_production(&self, _service: &str, weights: Weights) -> PortResult<Weights> {
        self.effect("set-production-weights").await?;
        let die_between = {
            let mut c = self.cloud();
            c.rule = weights;
            c.rule2.is_some() && std::mem::take(&mut c.crash_between_rules)
        };
        if die_between {
            self.die().await;
        }
        let now = (self.clock)();
        let (die, lost) = {
            let mut c = self.cloud();
            if c.rule2.is_some() {
                c.rule2 = Some(weights);
            }
            c.log.production.push(weights);
            c.log.timeline.push((now, weights));
            c.log.calls.push(Call::Production(weights));
            (
                std::mem::take(&mut c.crash_after_write),
                std::mem::take(&mut c.write_answer_lost),
            )
        };
        if die {
            self.die().await;
        }
        if lost {
            return Err(PortError::Retryable("ModifyRule: answer lost".into()));
        }
        Ok(weights)
    }
    async fn set_test(&self, _service: &str, weights: Weights) -> PortResult<()> {
        self.effect("set-test-weights").await?;
        let mut c = self.cloud();
        c.test_rule = weights;
        c.log.test.push(weights);
        c.log.calls.push(Call::Test(weights));
        Ok(())
    }
}

impl Platform for Sim {
    async fn register_revision(
        &self,
        _service: &str,
        deployment_id: &str,
        _template: Color,
        _image: &str,
    ) -> PortResult<String> {
        self.effect("register-revision").await?;
        let arn = format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/web:{deployment_id}");
        let mut c = self.cloud();
        if !c.log.registrations.contains(&arn) {
            c.log.registrations.push(arn.clone());
        }
        c.log.calls.push(Call::Register {
            deployment_id: deployment_id.into(),
        });
        Ok(arn)
    }
    async fn update_service(
        &self,
        _service: &str,
        color: Color,
        task_definition: &str,
        match_count_of: Color,
    ) -> PortResult<()> {
        self.effect("update-service").await?;
        let mut c = self.cloud();
        let count = c.colors.get(&match_count_of).map_or(0, |(_, n)| *n).max(1);
        c.colors
            .insert(color, (Some(task_definition.to_string()), count));
        c.log.updates.push((color, task_definition.to_string()));
        c.log.calls.push(Call::Update {
            color,
            task_definition: task_definition.into(),
        });
        Ok(())
    }
    async fn restore_capacity(
        &self,
        _service: &str,
        color: Color,
        task_definition: &str,
        desired: u32,
    ) -> PortResult<()> {
        self.effect("restore-capacity").await?;
        let mut c = self.cloud();
        c.colors
            .insert(color, (Some(task_definition.to_string()), desired));
        c.log.calls.push(Call::Restore {
            color,
            task_definition: task_definition.into(),
            desired,
        });
        Ok(())
    }
    async fn scale_up(
        &self,
        _service: &str,
        color: Color,
        match_count_of: Color,
    ) -> PortResult<()> {
        self.effect("scale-up").await?;
        let mut c = self.cloud();
        let want = c.colors.get(&match_count_of).map_or(0, |(_, n)| *n).max(1);
        let entry = c.colors.entry(color).or_insert((None, 0));
        entry.1 = entry.1.max(want);
        c.log.calls.push(Call::ScaleUp(color));
        Ok(())
    }
    async fn scale_to_zero(&self, _service: &str, color: Color) -> PortResult<()> {
        self.effect("scale-to-zero").await?;
        let mut c = self.cloud();
        if let Some(entry) = c.colors.get_mut(&color) {
            entry.1 = 0;
        }
        c.log.scaled_to_zero.push(color);
        c.log.calls.push(Call::ScaleToZero(color));
        Ok(())
    }
    async fn health(&self, _service: &str, color: Color) -> PortResult<TargetHealth> {
        let c = self.cloud();
        let h = c
            .health
            .clone()
            .ok_or_else(|| PortError::Retryable("no health reading".into()))?;
        let running = c.colors.get(&color).and_then(|(td, _)| td.clone());
        Ok(TargetHealth {
            task_definition: h.task_definition.or(running),
            ..h
        })
    }
}

/// An outbox entry as the event it carries.
fn outbound(e: &Entry) -> OutboundEvent {
    let kind = EventKind::ALL
        .into_iter()
        .find(|k| k.detail_type() == e.detail_type)
        .expect("a known detail type");
    let detail = serde_json::from_str::<EventDetail>(&e.detail).expect("an event detail");
    OutboundEvent { kind, detail }
}

impl Bus for Sim {
    async fn publish(&self, entries: &[Entry]) -> PortResult<Vec<String>> {
        let holder = self.db.fence(SERVICE).await.ok().and_then(|f| f.owner);
        let mut c = self.cloud();
        if c.bus_down > 0 {
            c.bus_down -= 1;
            return Err(PortError::Retryable("PutEvents: injected failure".into()));
        }
        c.log.published_under.push(holder);
        for e in entries {
            let kind = EventKind::ALL
                .into_iter()
                .find(|k| k.detail_type() == e.detail_type)
                .expect("a known detail type");
            match serde_json::from_str::<EventDetail>(&e.detail) {
                Ok(detail) => c.log.published.push(OutboundEvent { kind, detail }),
                // A message-level rejection names no service or weights (they are null).
                Err(_) => c
                    .log
                    .unreadable
                    .push(serde_json::from_str(&e.detail).expect("detail JSON")),
            }
        }
        Ok(Vec::new())
    }
}

impl Alarms for Sim {
    async fn firing(&self, _names: &[String]) -> PortResult<Vec<String>> {
        self.cloud()
            .alarms_firing
            .clone()
            .ok_or_else(|| PortError::Retryable("DescribeAlarms: throttled".into()))
    }
}

impl Checks for Sim {
    async fn get(&self, url: &str) -> Result<u16, String> {
        let slow = self
            .cloud()
            .slow
            .take_if(|(effect, _)| *effect == "run-validations");
        if let Some((_, took)) = slow {
            tokio::time::sleep(took).await;
        }
        let mut c = self.cloud();
        c.log.calls.push(Call::Validate(url.into()));
        Ok(if c.validations_pass { 200 } else { 503 })
    }
}

impl Registry for Sim {
    async fn resolve(&self, repository: &str, tag: &str) -> PortResult<String> {
        self.cloud().tags.get(tag).cloned().ok_or_else(|| {
            PortError::Permanent(format!("tag {tag} does not exist in {repository}"))
        })
    }
}

/// One decision as the runner reported it.
#[derive(Debug, Clone)]
pub struct Record {
    pub before: ServiceState,
    pub input: Input,
    pub now: Timestamp,
    pub decision: Decision,
    /// How many production writes had reached the rule when it was decided
    /// ([`Log::timeline`]).
    pub writes_before: usize,
}

/// How long a dead worker's service lease blocks the next one.
pub const LEASE: Duration = Duration::from_secs(1);

/// The production worker in a simulated world; see the module docs.
pub struct World {
    rt: tokio::runtime::Runtime,
    /// Records every decision of every worker of this world.
    listener: bluegreen::runner::Listener,
    /// The service lease of this world's workers.
    pub lease: Duration,
    clock: Clock,
    worker: Worker<Sim>,
    pub sim: Arc<Sim>,
    journal: Arc<Mutex<Vec<Record>>>,
    /// The settings the worker runs with (derived from its configuration).
    pub settings: ServiceSettings,
    /// The stored service state, as of the last operation.
    pub state: ServiceState,
    /// The clock, as of the last operation.
    pub now: Timestamp,
    /// What the cloud saw and every decided event, as of the last operation.
    pub log: Log,
    /// Knobs, handed to the cloud before every operation.
    pub alarms_firing: Option<Vec<String>>,
    pub health: Option<TargetHealth>,
    pub validations_pass: bool,
    pub failing_effect: Option<&'static str>,
    /// The worker dies right after its next commit: that decision's effects are lost.
    pub crash_next: bool,
    /// Every input the core decided, with its `now`, in order (replay tests).
    pub history: Vec<(Input, Timestamp)>,
    /// Every decision with the state it was made on.
    pub records: Vec<Record>,
}

impl World {
    pub fn new(settings: ServiceSettings) -> World {
        World::with_lease(settings, LEASE)
    }

    /// A world whose workers hold a service lease for `lease` (the production default is
    /// 30 s; most tests use [`LEASE`]).
    pub fn with_lease(settings: ServiceSettings, lease: Duration) -> World {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let base = rt.block_on(async { tokio::time::Instant::now() });
        let clock: Clock = Arc::new(move || {
            let elapsed = tokio::time::Instant::now().duration_since(base);
            Timestamp::from_millis(T0 + u64::try_from(elapsed.as_millis()).unwrap_or(0))
        });
        let db = LocalDb::in_memory(
            clock.clone(),
            QueueOptions {
                visibility: Duration::from_secs(30),
                max_receives: 5,
                poll_every: Duration::from_millis(20),
            },
        )
        .expect("database");
        let sim = Arc::new(Sim {
            db,
            cloud: Mutex::new(Cloud::default()),
            crashed: tokio::sync::Notify::new(),
            clock: clock.clone(),
        });
        let fleet = fleet(&settings);
        let journal = Arc::new(Mutex::new(Vec::new()));
        let sink = journal.clone();
        let cloud = sim.clone();
        let options = Options {
            concurrency: 1,
            wait: Duration::ZERO,
            visibility: Duration::from_secs(30),
            lease,
            max_receives: Some(5),
            worker_id: "sim".into(),
            reconcile_every: Duration::ZERO,
            ..Options::default()
        };
        let settings = fleet.services[0].settings.clone();
        let listener: bluegreen::runner::Listener = Arc::new(move |d: &Decided<'_>| {
            let writes_before = cloud.cloud().log.timeline.len();
            sink.lock().expect("journal").push(Record {
                before: d.before.clone(),
                input: d.input.clone(),
                now: d.now,
                decision: d.decision.clone(),
                writes_before,
            });
        });
        let worker =
            Worker::new(sim.clone(), fleet, clock.clone(), options).with_listener(listener.clone());
        let mut w = World {
            rt,
            lease,
            listener,
            clock,
            worker,
            settings,
            sim,
            journal,
            state: ServiceState::new(SERVICE, Color::Blue),
            now: Timestamp::from_millis(T0),
            log: Log::default(),
            alarms_firing: Some(Vec::new()),
            health: Some(healthy()),
            validations_pass: true,
            failing_effect: None,
            crash_next: false,
            history: Vec::new(),
            records: Vec::new(),
        };
        w.sync_out();
        w
    }

    /// The cloud's state and knobs, for what the fields do not cover (the production
    /// rule, tags, crashes).
    pub fn cloud(&self) -> std::sync::MutexGuard<'_, Cloud> {
        self.sim.cloud()
    }

    fn sync_in(&mut self) {
        let mut c = self.sim.cloud();
        c.calls_this_op = 0;
        c.alarms_firing = self.alarms_firing.clone();
        c.health = self.health.clone();
        c.validations_pass = self.validations_pass;
        c.failing_effect = self.failing_effect;
        c.crash_after_commit = std::mem::take(&mut self.crash_next);
    }

    fn sync_out(&mut self) {
        let sim = self.sim.clone();
        let clock = self.clock.clone();
        let (state, now) = self.rt.block_on(async move {
            let stored = sim.db.load(SERVICE, Color::Blue).await.expect("load");
            (stored.state, clock())
        });
        self.state = state;
        self.now = now;
        let fresh: Vec<Record> = std::mem::take(&mut *self.journal.lock().expect("journal"));
        let log = self.sim.cloud().log.clone();
        for r in &fresh {
            self.history.push((r.input.clone(), r.now));
        }
        self.records.extend(fresh);
        self.log = log;
    }

    /// Runs `fut` on the worker until it finishes or the worker dies; `None` on death.
    fn run<T>(&mut self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        let sim = self.sim.clone();
        self.rt.block_on(async move {
            tokio::select! {
                out = fut => Some(out),
                () = sim.crashed.notified() => None,
            }
        })
    }

    /// Decides `input` now and carries it out (the runner runs its effects and feeds
    /// their results back). Returns the outcome of `input` itself.
    pub fn apply(&mut self, input: Input) -> Outcome {
        self.sync_in();
        let from = self.records.len();
        let worker = self.worker.clone();
        let key = input.key.clone();
        let result = self.run(async move { worker.apply(SERVICE, input).await });
        self.sync_out();
        match result {
            Some(Ok(outcome)) => outcome,
            Some(Err(e)) => panic!("the worker failed on {key}: {e}"),
            // The worker may die carrying out what an earlier decision owed, before it
            // decided this input.
            None => self.records[from..]
                .iter()
                .find(|r| r.input.key == key)
                .map_or_else(
                    || Outcome::Ignored {
                        code: bluegreen::flow::IgnoreCode::Stale,
                        reason: format!("the worker died before deciding {key}"),
                    },
                    |r| r.decision.outcome.clone(),
                ),
        }
    }

    /// Messages waiting in the inbox, with when each becomes visible.
    pub fn inbox(&self) -> Vec<(serde_json::Value, Timestamp)> {
        self.sim
            .db
            .pending()
            .expect("inbox")
            .into_iter()
            .map(|(body, at)| (serde_json::from_str(&body).expect("JSON"), at))
            .collect()
    }

    /// Ticks the worker sent itself and that wait in the inbox.
    pub fn ticks(&self) -> Vec<(TickKey, Timestamp)> {
        self.inbox()
            .into_iter()
            .filter(|(m, _)| m["detail-type"] == "Deployment Tick")
            .map(|(m, at)| {
                let d = &m["detail"];
                let n = |f: &str| u32::try_from(d[f].as_u64().expect("number")).expect("u32");
                let key = TickKey {
                    deployment_id: d["deploymentId"].as_str().expect("id").into(),
                    cursor: n("cursor"),
                    attempt: n("attempt"),
                };
                (key, at)
            })
            .collect()
    }

    /// Puts an EventBridge envelope in the inbox, visible after `delay`.
    pub fn send(&mut self, body: &serde_json::Value, delay: Duration) {
        let db = self.sim.db.clone();
        let text = put_now(body.clone(), (self.sim.clock)()).to_string();
        self.rt
            .block_on(async move { db.send(text, delay).await })
            .expect("send");
    }

    /// Delivers the message that becomes visible first (a tick, or an envelope),
    /// advancing the clock to it, through the worker's message handling. `None` when
    /// the inbox is empty; otherwise the outcome of the first input decided for it.
    pub fn tick(&mut self) -> Option<Outcome> {
        self.sync_in();
        let (_, at) = self.inbox().into_iter().next()?;
        if at > self.now {
            self.advance_ms(at.since(self.now));
        }
        let db = self.sim.db.clone();
        let mut received = self
            .rt
            .block_on(async move { db.receive(1, Duration::ZERO, Duration::ZERO).await })
            .expect("receive");
        let m = received.pop()?;
        let from = self.records.len();
        let worker = self.worker.clone();
        let disposition = self.run(async move { worker.process(m).await });
        self.sync_out();
        let outcome = self.records[from..]
            .first()
            .map(|r| r.decision.outcome.clone());
        Some(outcome.unwrap_or_else(|| Outcome::Ignored {
            code: bluegreen::flow::IgnoreCode::Duplicate,
            reason: format!("no decision: {disposition:?}"),
        }))
    }

    /// Delivers messages until `stop` holds or the inbox is empty (bounded).
    pub fn run_until(&mut self, stop: impl Fn(&World) -> bool) {
        for _ in 0..500 {
            if stop(self) || self.tick().is_none() {
                return;
            }
        }
        panic!("world did not settle in 500 deliveries");
    }

    /// Delivers every message; when a deployment still waits for a lost tick, lets the
    /// reconciler find it after its grace; until nothing is left but a paused deployment
    /// (a human hold) (bounded).
    pub fn settle(&mut self) {
        for _ in 0..2000 {
            if self.tick().is_some() {
                continue;
            }
            let waiting = self
                .state
                .active
                .iter()
                .chain(self.state.last.iter())
                .filter(|d| !d.is_paused())
                .filter_map(|d| d.next_tick)
                .map(|t| t.due)
                .min();
            match waiting {
                Some(due) => {
                    let grace = self.settings.timeouts.reconcile_grace;
                    let at = self.now.max(due).plus(grace + Duration::from_secs(1));
                    self.advance_ms(at.since(self.now));
                    self.reconcile();
                }
                None => return,
            }
        }
        panic!("world did not settle");
    }

    /// Takes up to `n` messages that are visible now off the queue (each hidden for the
    /// queue's visibility), to hand to workers.
    pub fn receive(&mut self, n: u32) -> Vec<Received> {
        let db = self.sim.db.clone();
        self.rt
            .block_on(async move { db.receive(n, Duration::ZERO, Duration::ZERO).await })
            .expect("receive")
    }

    /// Runs each worker's handling of its message at once, interleaved on this world's
    /// clock; a worker that dies leaves `None`.
    pub fn concurrently(
        &mut self,
        runs: Vec<(Worker<Sim>, Received)>,
    ) -> Vec<Option<bluegreen::worker::Disposition>> {
        self.sync_in();
        let out = self.rt.block_on(async move {
            futures_util::future::join_all(runs.into_iter().map(|(worker, m)| async move {
                let death = Arc::new(tokio::sync::Notify::new());
                DEATH
                    .scope(death.clone(), async move {
                        tokio::select! {
                            d = worker.process(m) => Some(d),
                            () = death.notified() => None,
                        }
                    })
                    .await
            }))
            .await
        });
        self.sync_out();
        out
    }

    /// Runs `fut` (another worker's call) to its end or its worker's death, on this
    /// world's runtime, and brings the world's view up to date.
    pub fn survive<T>(&mut self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        self.sync_in();
        let out = self.rt.block_on(async move {
            let death = Arc::new(tokio::sync::Notify::new());
            DEATH
                .scope(death.clone(), async move {
                    tokio::select! {
                        out = fut => Some(out),
                        () = death.notified() => None,
                    }
                })
                .await
        });
        self.sync_out();
        out
    }

    /// Another worker over the same store, inbox and cloud (a second task on one queue).
    pub fn other_worker(&self, id: &str) -> Worker<Sim> {
        let options = Options {
            concurrency: 1,
            wait: Duration::ZERO,
            visibility: Duration::from_secs(30),
            lease: self.lease,
            max_receives: Some(5),
            worker_id: id.into(),
            reconcile_every: Duration::from_secs(30),
            ..Options::default()
        };
        Worker::new(
            self.sim.clone(),
            fleet(&self.settings),
            self.clock.clone(),
            options,
        )
        .with_listener(self.listener.clone())
    }

    /// Runs `fut` on this world's runtime (for another worker's calls).
    pub fn block_on<T>(&mut self, fut: impl std::future::Future<Output = T>) -> T {
        let out = self.rt.block_on(fut);
        self.sync_out();
        out
    }

    /// One run of the reconciler, as the worker's own loop runs it.
    pub fn reconcile(&mut self) -> Outcome {
        let key = format!("reconcile:{}", self.now.millis());
        self.apply(Input::reconcile(key))
    }

    pub fn advance(&mut self, secs: u64) {
        self.advance_ms(secs * 1000);
    }

    /// Moves the clock to `at` (never back).
    pub fn advance_to(&mut self, at: Timestamp) {
        self.advance_ms(at.since(self.now));
    }

    pub fn advance_ms(&mut self, ms: u64) {
        self.rt
            .block_on(tokio::time::advance(Duration::from_millis(ms)));
        self.sync_out();
    }

    pub fn active(&self) -> &bluegreen::flow::Deployment {
        self.state.active.as_ref().expect("an active deployment")
    }

    pub fn phase(&self) -> Option<Phase> {
        self.state.active.as_ref().map(|d| d.phase)
    }

    pub fn last_phase(&self) -> Option<Phase> {
        self.state.last.as_ref().map(|d| d.phase)
    }

    pub fn event_kinds(&self) -> Vec<&'static str> {
        self.log
            .events
            .iter()
            .map(|e| e.kind.detail_type())
            .collect()
    }
}

/// A commit of `state` at `expected` under `owner`'s 30 s lease, owing nothing.
pub fn commit_of<'a>(
    state: &'a ServiceState,
    expected: u64,
    owner: &'a str,
    now: Timestamp,
    key: Option<&'a str>,
    outbox: &'a [Entry],
) -> Commit<'a> {
    Commit {
        state,
        expected_version: expected,
        outbox,
        dedup_key: key,
        deployments: &[],
        lease: Lease {
            owner,
            until: now.plus(Duration::from_secs(30)),
            now,
        },
        owed: &[],
        clears_preemption: false,
    }
}

/// Weights, blue first.
pub fn wt(blue: u8, green: u8) -> Weights {
    Weights { blue, green }
}

/// `at` as CloudWatch writes an alarm's state timestamp (`…T10:00:00.000+0000`).
pub fn cloudwatch_time(at: Timestamp) -> String {
    at.rfc3339().replace('Z', "+0000")
}

/// A world with one deployment of image 1 driven until `phase`.
pub fn world_in(settings: ServiceSettings, phase: Phase) -> World {
    let mut w = World::new(settings);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(phase));
    assert_eq!(w.phase(), Some(phase), "could not reach {phase}");
    w
}

pub fn reason_of(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Applied => String::new(),
        Outcome::Rejected { reason, .. } | Outcome::Ignored { reason, .. } => reason.clone(),
    }
}

/// `body` as EventBridge delivers an operator event put at `now`: it stamps `time` when
/// the event is put (the worker refuses operator events older than an hour).
pub fn put_now(mut body: serde_json::Value, now: Timestamp) -> serde_json::Value {
    if body["source"] == "bluegreen.manual" && body.get("time").is_some() {
        body["time"] = now.rfc3339().into();
    }
    body
}

/// The wall clock as RFC 3339, for envelopes sent to moto or the embedded mode.
pub fn wall_now() -> String {
    (bluegreen::ports::system_clock())().rfc3339()
}

/// EventBridge envelopes as AWS and operators send them, for delivery through the inbox.
pub mod envelope {
    use serde_json::{Value, json};

    use super::{ACCOUNT, SERVICE};

    fn wrap(id: &str, source: &str, detail_type: &str, detail: Value) -> Value {
        json!({
            "version": "0", "id": id, "detail-type": detail_type, "source": source,
            "account": ACCOUNT, "time": "2023-11-14T22:13:20Z", "region": "us-east-1",
            "resources": [], "detail": detail
        })
    }

    /// An ECR push of image `n` (the digest and tag of [`super::image`]).
    pub fn push(n: u32) -> Value {
        wrap(
            &format!("push-{n}"),
            "aws.ecr",
            "ECR Image Action",
            json!({
                "result": "SUCCESS", "repository-name": "web", "image-digest": super::digest(n),
                "action-type": "PUSH", "image-tag": format!("release-{n}")
            }),
        )
    }

    /// A CloudWatch alarm entering ALARM at `at`.
    pub fn alarm(name: &str, at: &str) -> Value {
        wrap(
            &format!("alarm-{name}-{at}"),
            "aws.cloudwatch",
            "CloudWatch Alarm State Change",
            json!({
                "alarmName": name,
                "state": { "value": "ALARM", "reason": "Threshold Crossed", "timestamp": at },
                "previousState": { "value": "OK", "reason": "fine", "timestamp": "2023-11-14T00:00:00.000+0000" },
                "configuration": { "metrics": [] }
            }),
        )
    }

    /// A write recorded by CloudTrail (`ModifyRule` on the load balancer, `UpdateService`
    /// on ECS), made by someone other than the worker.
    pub fn api_call(id: &str, event_name: &str, parameters: Value) -> Value {
        let (source, service) = if event_name.ends_with("Service") {
            ("aws.ecs", "ecs.amazonaws.com")
        } else {
            (
                "aws.elasticloadbalancing",
                "elasticloadbalancing.amazonaws.com",
            )
        };
        wrap(
            id,
            source,
            "AWS API Call via CloudTrail",
            json!({
                "eventSource": service, "eventName": event_name,
                "requestParameters": parameters,
                "userIdentity": { "type": "AssumedRole", "invokedBy": "cloudformation.amazonaws.com" }
            }),
        )
    }

    /// An operator event (`Promote Requested`, …) with EventBridge id `id`.
    pub fn operator(id: &str, detail_type: &str, mut detail: Value) -> Value {
        detail["service"] = SERVICE.into();
        detail["requestedBy"] = "alice".into();
        wrap(id, "bluegreen.manual", detail_type, detail)
    }
}
