//! The end-to-end harness: real AWS resources created through the SDK on moto server
//! (started by `scripts/test` on loopback; its URL in `BLUEGREEN_MOTO_ENDPOINT`).
//!
//! Every test builds its own resources under a unique prefix, so tests run in parallel
//! against one server. SDK retries are off: moto answers unimplemented calls with 500.
//!
//! moto stores ECS shapes but never rolls a deployment out or registers targets; the
//! server `scripts/moto` starts (`scripts/moto_server.py`) plays ECS's part on the server
//! side: an `UpdateService` rolls out at once and registers the service's tasks in its
//! target groups. The [`MotoWorld`] wrapper delegates every port to the real [`Aws`]
//! adapter unchanged; it only records the weights written and read back, and can make
//! the worker die after a commit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerDefinition, LoadBalancer, NetworkConfiguration,
};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, FixedResponseActionConfig, ForwardActionConfig, RuleCondition,
    TargetGroupStickinessConfig, TargetGroupTuple, TargetTypeEnum,
};
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use bluegreen::aws::Aws;
use bluegreen::config::{Config, ServiceConfig};
use bluegreen::contract::Entry;
use bluegreen::flow::{Color, ProductionRules, ServiceState, TargetHealth, Timestamp, Weights};
use bluegreen::ports::{
    Alarms, Bus, Checks, Claimed, Commit, Fence, Inbox, Lease, Platform, PortResult, Received,
    Registry, Store, Stored, Traffic, system_clock,
};
use bluegreen::worker::{Options, Worker};

pub fn endpoint() -> String {
    std::env::var("BLUEGREEN_MOTO_ENDPOINT").expect(
        "BLUEGREEN_MOTO_ENDPOINT is not set: run the tests with scripts/test, which starts moto",
    )
}

pub async fn sdk() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "moto",
        ))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique prefix for one test's resources.
pub fn prefix(name: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{name}{}x{n}", std::process::id() % 10_000)
}

/// One test's resources.
pub struct Env {
    pub sdk: SdkConfig,
    pub prefix: String,
    pub config: Config,
    pub queue_url: String,
    pub dlq_url: String,
    pub audit_url: String,
    pub bus: String,
    pub cluster: String,
    pub alarm: String,
    /// Every rollback alarm (the first is `alarm`).
    pub alarms: Vec<String>,
}

pub struct Shape {
    pub strategy: &'static str,
    pub bake: &'static str,
    pub termination_wait: &'static str,
    pub concurrency: &'static str,
    /// How many services (`web`, `web1`, …), all deploying repository `web`.
    pub services: u8,
    /// More TOML lines for every service.
    pub extra: String,
    /// Give every service a test listener rule.
    pub test_listener: bool,
    /// Green serves production (100 %) and runs the tasks; blue is idle at zero.
    pub green_live: bool,
    /// Per service (cycled): strategies and concurrency policies instead of the one
    /// `strategy` and `concurrency`.
    pub strategies: &'static [&'static str],
    pub concurrencies: &'static [&'static str],
    /// Each service its own rollback alarm (`…-alarm<k>`) and repository (`web<k>`).
    pub own_alarm_and_repository: bool,
    /// With `own_alarm_and_repository`: services in groups of this many share one alarm
    /// (1: each its own). `Env::alarms[k]` is service `k`'s.
    pub alarm_group: u8,
    /// The queue's redrive policy.
    pub max_receive_count: u32,
    /// Give every service a second production rule (a host-header rule on the same
    /// listener), configured with the first as `production_listener_rule_arns`.
    pub second_rule: bool,
    /// `timeouts.unreadable`: how long alarms or the rule may stay unreadable.
    pub unreadable: &'static str,
    /// `timeouts.reconcile_grace` (short by default, so that lost ticks come back soon).
    pub reconcile_grace: &'static str,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            strategy: r#"{ kind = "linear", step_percent = 50, interval = "1s" }"#,
            bake: "1s",
            termination_wait: "1s",
            concurrency: "queue",
            services: 1,
            extra: String::new(),
            test_listener: false,
            green_live: false,
            strategies: &[],
            concurrencies: &[],
            own_alarm_and_repository: false,
            alarm_group: 1,
            max_receive_count: 3,
            second_rule: false,
            unreadable: "10m",
            reconcile_grace: "2s",
        }
    }
}

impl Env {
    pub async fn create(name: &str, shape: Shape) -> Env {
        let sdk = sdk().await;
        let p = prefix(name);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let queue = |n: String| {
            let sqs = sqs.clone();
            async move {
                sqs.create_queue()
                    .queue_name(n)
                    .send()
                    .await
                    .expect("queue")
                    .queue_url()
                    .expect("url")
                    .to_string()
            }
        };
        let dlq_url = queue(format!("{p}-dlq")).await;
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dlq attrs")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("dlq arn");
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("{p}-events"))
            .attributes(QueueAttributeName::VisibilityTimeout, "30")
            .attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": shape.max_receive_count.to_string() })
                    .to_string(),
            )
            .send()
            .await
            .expect("queue")
            .queue_url()
            .expect("url")
            .to_string();
        let audit_url = queue(format!("{p}-audit")).await;
        let arn_of = |url: String| {
            let sqs = sqs.clone();
            async move {
                sqs.get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .expect("attrs")
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                    .expect("arn")
            }
        };
        let queue_arn = arn_of(queue_url.clone()).await;
        let audit_arn = arn_of(audit_url.clone()).await;

        let table = format!("{p}-deployments");
        aws_sdk_dynamodb::Client::new(&sdk)
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attr"),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("sk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attr"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("key"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("sk")
                    .key_type(KeyType::Range)
                    .build()
                    .expect("key"),
            )
            .send()
            .await
            .expect("table");

        let events = aws_sdk_eventbridge::Client::new(&sdk);
        let bus = format!("{p}-bus");
        events
            .create_event_bus()
            .name(&bus)
            .send()
            .await
            .expect("bus");
        let rule = |name: String, pattern: serde_json::Value, target: String| {
            let events = events.clone();
            let bus = bus.clone();
            async move {
                events
                    .put_rule()
                    .name(&name)
                    .event_bus_name(&bus)
                    .event_pattern(pattern.to_string())
                    .send()
                    .await
                    .expect("rule");
                events
                    .put_targets()
                    .rule(&name)
                    .event_bus_name(&bus)
                    .targets(
                        Target::builder()
                            .id("queue")
                            .arn(target)
                            .build()
                            .expect("target"),
                    )
                    .send()
                    .await
                    .expect("targets");
            }
        };
        rule(
            format!("{p}-inbound"),
            serde_json::json!({ "source": ["aws.ecr", "aws.cloudwatch", "bluegreen.manual"] }),
            queue_arn,
        )
        .await;
        rule(
            format!("{p}-audit"),
            serde_json::json!({ "source": ["bluegreen"] }),
            audit_arn,
        )
        .await;

        let (vpc, subnet_a, subnet_b, sg) = network().await;
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
        let lb = elb
            .create_load_balancer()
            .name(format!("{p}-alb"))
            .subnets(&subnet_a)
            .subnets(&subnet_b)
            .send()
            .await
            .expect("alb")
            .load_balancers()[0]
            .load_balancer_arn()
            .expect("arn")
            .to_string();
        let tg = |n: String| {
            let elb = elb.clone();
            let vpc = vpc.clone();
            async move {
                elb.create_target_group()
                    .name(n)
                    .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
                    .port(8080)
                    .vpc_id(vpc)
                    .target_type(TargetTypeEnum::Ip)
                    .send()
                    .await
                    .expect("tg")
                    .target_groups()[0]
                    .target_group_arn()
                    .expect("arn")
                    .to_string()
            }
        };
        let listener = elb
            .create_listener()
            .load_balancer_arn(&lb)
            .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
            .port(80)
            .default_actions(
                Action::builder()
                    .r#type(ActionTypeEnum::FixedResponse)
                    .fixed_response_config(
                        FixedResponseActionConfig::builder()
                            .status_code("404")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("listener")
            .listeners()[0]
            .listener_arn()
            .expect("arn")
            .to_string();
        let ecs = aws_sdk_ecs::Client::new(&sdk);
        let cluster = format!("{p}-cluster");
        ecs.create_cluster()
            .cluster_name(&cluster)
            .send()
            .await
            .expect("cluster");
        let alarm = format!("{p}-green-5xx");
        let mut alarms = vec![alarm.clone()];
        let mut services = String::new();
        for k in 0..shape.services {
            let suffix = if k == 0 { String::new() } else { k.to_string() };
            let blue_tg = tg(format!("{p}-b{suffix}")).await;
            let green_tg = tg(format!("{p}-g{suffix}")).await;
            let live = if shape.green_live {
                Color::Green
            } else {
                Color::Blue
            };
            // A production rule forwarding to the pair, serving the live colour.
            let weighted_rule = |priority: i32, field: &str, value: String| {
                elb.create_rule()
                    .listener_arn(&listener)
                    .priority(priority)
                    .conditions(RuleCondition::builder().field(field).values(value).build())
                    .actions(forward_action(&blue_tg, &green_tg, Weights::all(live)))
                    .send()
            };
            let arn_of =
                |out: aws_sdk_elasticloadbalancingv2::operation::create_rule::CreateRuleOutput| {
                    out.rules()[0].rule_arn().expect("arn").to_string()
                };
            let path = if k == 0 {
                "/*".to_string()
            } else {
                format!("/s{k}/*")
            };
            let rule_arn = arn_of(
                weighted_rule(10 + i32::from(k), "path-pattern", path)
                    .await
                    .expect("rule"),
            );

            let production = if shape.second_rule {
                let host = format!("api{k}.example.com");
                let second = arn_of(
                    weighted_rule(30 + i32::from(k), "host-header", host)
                        .await
                        .expect("second rule"),
                );
                format!(r#"production_listener_rule_arns = ["{rule_arn}", "{second}"]"#)
            } else {
                format!(r#"production_listener_rule_arn = "{rule_arn}""#)
            };

            let td = ecs
                .register_task_definition()
                .family(format!("{p}-web{suffix}"))
                .container_definitions(
                    ContainerDefinition::builder()
                        .name("app")
                        .image("public.ecr.aws/nginx/nginx:1.27")
                        .memory(512)
                        .build(),
                )
                .container_definitions(
                    ContainerDefinition::builder()
                        .name("log-router")
                        .image("public.ecr.aws/aws-observability/aws-for-fluent-bit:stable")
                        .memory(128)
                        .build(),
                )
                .send()
                .await
                .expect("td")
                .task_definition()
                .and_then(|t| t.task_definition_arn())
                .expect("td arn")
                .to_string();
            let network = NetworkConfiguration::builder()
                .awsvpc_configuration(
                    AwsVpcConfiguration::builder()
                        .subnets(&subnet_a)
                        .security_groups(&sg)
                        .assign_public_ip(AssignPublicIp::Disabled)
                        .build()
                        .expect("vpc config"),
                )
                .build();
            for (name, group) in [("blue", &blue_tg), ("green", &green_tg)] {
                let count = if name == live.as_str() { 2 } else { 0 };
                ecs.create_service()
                    .cluster(&cluster)
                    .service_name(format!("{p}-{name}{suffix}"))
                    .task_definition(&td)
                    .desired_count(count)
                    .network_configuration(network.clone())
                    .load_balancers(
                        LoadBalancer::builder()
                            .target_group_arn(group)
                            .container_name("app")
                            .container_port(8080)
                            .build(),
                    )
                    .send()
                    .await
                    .expect("service");
            }
            let test_rule = if shape.test_listener {
                let rule = elb
                    .create_rule()
                    .listener_arn(&listener)
                    .priority(50 + i32::from(k))
                    .conditions(
                        RuleCondition::builder()
                            .field("path-pattern")
                            .values(format!("/test{k}/*"))
                            .build(),
                    )
                    .actions(
                        Action::builder()
                            .r#type(ActionTypeEnum::Forward)
                            .forward_config(
                                ForwardActionConfig::builder()
                                    .target_groups(
                                        TargetGroupTuple::builder()
                                            .target_group_arn(&blue_tg)
                                            .weight(100)
                                            .build(),
                                    )
                                    .target_groups(
                                        TargetGroupTuple::builder()
                                            .target_group_arn(&green_tg)
                                            .weight(0)
                                            .build(),
                                    )
                                    .build(),
                            )
                            .build(),
                    )
                    .send()
                    .await
                    .expect("test rule");
                format!(
                    "test_listener_rule_arn = \"{}\"",
                    rule.rules()[0].rule_arn().expect("arn")
                )
            } else {
                String::new()
            };
            let k_usize = usize::from(k);
            let strategy = shape
                .strategies
                .get(k_usize % shape.strategies.len().max(1))
                .copied()
                .unwrap_or(shape.strategy);
            let concurrency = shape
                .concurrencies
                .get(k_usize % shape.concurrencies.len().max(1))
                .copied()
                .unwrap_or(shape.concurrency);
            let (service_alarm, repository) = if shape.own_alarm_and_repository && k > 0 {
                // Services in groups of `alarm_group` share the first one's alarm.
                let lead = k - k % shape.alarm_group.max(1);
                let own = if lead == 0 {
                    alarm.clone()
                } else {
                    format!("{p}-alarm{lead}")
                };
                alarms.push(own.clone());
                (own, format!("web{k}"))
            } else {
                (alarm.clone(), "web".to_string())
            };
            services.push_str(&format!(
                r#"
[[services]]
name = "web{suffix}"
cluster = "{cluster}"
blue_service = "{p}-blue{suffix}"
green_service = "{p}-green{suffix}"
blue_target_group_arn = "{blue_tg}"
green_target_group_arn = "{green_tg}"
{production}
container_name = "app"
ecr_repository = "{repository}"
strategy = {strategy}
bake = "{bake}"
termination_wait = "{termination_wait}"
rollback_alarms = ["{service_alarm}"]
concurrency = "{concurrency}"
timeouts = {{ poll = "1s", green = "30s", reconcile_grace = "{grace}", unreadable = "{unreadable}" }}
{test_rule}
{extra}
"#,
                extra = shape.extra,
                unreadable = shape.unreadable,
                grace = shape.reconcile_grace,
                bake = shape.bake,
                termination_wait = shape.termination_wait,
            ));
        }
        for alarm in &alarms {
            aws_sdk_cloudwatch::Client::new(&sdk)
                .put_metric_alarm()
                .alarm_name(alarm)
                .namespace("AWS/ApplicationELB")
                .metric_name("HTTPCode_Target_5XX_Count")
                .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
                .period(60)
                .evaluation_periods(1)
                .threshold(5.0)
                .comparison_operator(
                    aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
                )
                .send()
                .await
                .expect("alarm");
            set_alarm(&sdk, alarm, "OK").await;
        }

        let toml = format!(
            r#"
[worker]
queue_url = "{queue_url}"
table = "{table}"
event_bus = "{bus}"
region = "us-east-1"
account_id = "123456789012"
{services}"#
        );
        let config = Config::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        Env {
            sdk,
            prefix: p,
            config,
            queue_url,
            dlq_url,
            audit_url,
            bus,
            cluster,
            alarm,
            alarms,
        }
    }

    pub fn service(&self) -> ServiceConfig {
        self.config.services[0].clone()
    }

    pub fn world(&self) -> MotoWorld {
        MotoWorld::over(Aws::new(&self.sdk, &self.config))
    }

    /// A worker over a fresh [`MotoWorld`], and that world (to read what it recorded).
    pub fn worker(&self, id: &str) -> (Worker<MotoWorld>, std::sync::Arc<MotoWorld>) {
        self.worker_with(id, Duration::ZERO)
    }

    /// A worker that also runs the reconciler every `reconcile_every` (0 = never).
    pub fn worker_with(
        &self,
        id: &str,
        reconcile_every: Duration,
    ) -> (Worker<MotoWorld>, std::sync::Arc<MotoWorld>) {
        let world = std::sync::Arc::new(self.world());
        (self.worker_in(id, reconcile_every, world.clone()), world)
    }

    /// A worker (no reconciler) over `world` (say, one whose calls go through a proxy).
    pub fn worker_over(&self, id: &str, world: std::sync::Arc<MotoWorld>) -> Worker<MotoWorld> {
        self.worker_in(id, Duration::ZERO, world)
    }

    fn worker_in(
        &self,
        id: &str,
        reconcile_every: Duration,
        world: std::sync::Arc<MotoWorld>,
    ) -> Worker<MotoWorld> {
        let options = Options {
            concurrency: 4,
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
            lease: Duration::from_secs(15),
            worker_id: id.into(),
            reconcile_every,
            ..Options::default()
        };
        Worker::new(
            world,
            bluegreen::fleet::Fleet::from(&self.config),
            system_clock(),
            options,
        )
    }

    /// Puts an event on the bus exactly as AWS would emit it.
    pub async fn put_event(&self, source: &str, detail_type: &str, detail: serde_json::Value) {
        let out = aws_sdk_eventbridge::Client::new(&self.sdk)
            .put_events()
            .entries(
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(source)
                    .detail_type(detail_type)
                    .detail(detail.to_string())
                    .build(),
            )
            .send()
            .await
            .expect("put events");
        assert_eq!(out.failed_entry_count(), 0);
    }

    pub async fn push(&self, digest: &str, tag: &str) {
        self.put_event(
            "aws.ecr",
            "ECR Image Action",
            serde_json::json!({
                "result": "SUCCESS", "repository-name": "web", "image-digest": digest,
                "action-type": "PUSH", "image-tag": tag
            }),
        )
        .await;
    }

    pub async fn alarm_fires(&self) {
        set_alarm(&self.sdk, &self.alarm, "ALARM").await;
        self.put_event(
            "aws.cloudwatch",
            "CloudWatch Alarm State Change",
            serde_json::json!({
                "alarmName": self.alarm,
                "state": { "value": "ALARM", "reason": "Threshold Crossed", "timestamp": cloudwatch_now() },
                "previousState": { "value": "OK", "reason": "Threshold not crossed", "timestamp": "2026-11-26T09:00:00.000+0000" },
                "configuration": { "metrics": [] }
            }),
        )
        .await;
    }

    /// The stored state of the service.
    pub async fn state(&self) -> ServiceState {
        self.state_of("web").await
    }

    /// The stored state of service `name`.
    pub async fn state_of(&self, name: &str) -> ServiceState {
        Aws::new(&self.sdk, &self.config)
            .load(name, Color::Blue)
            .await
            .expect("load")
            .state
    }

    /// Polls the stored state until `done` holds (at most `secs`).
    pub async fn wait_for(
        &self,
        secs: u64,
        what: &str,
        done: impl Fn(&ServiceState) -> bool,
    ) -> ServiceState {
        self.wait_for_service("web", secs, what, done).await
    }

    /// Polls service `name`'s stored state until `done` holds (at most `secs`).
    pub async fn wait_for_service(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        done: impl Fn(&ServiceState) -> bool,
    ) -> ServiceState {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let state = self.state_of(name).await;
            if done(&state) {
                return state;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; state: {state:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every message of a queue, drained.
    pub async fn drain(&self, url: &str) -> Vec<String> {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let mut bodies = Vec::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            if out.messages().is_empty() {
                return bodies;
            }
            for m in out.messages() {
                bodies.push(m.body().unwrap_or_default().to_string());
                sqs.delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }

    /// Current production weights on the listener rule (every production rule holds
    /// them: rules that disagree fail the test).
    pub async fn production(&self) -> Weights {
        let rules = self.production_rules().await;
        rules
            .agreed()
            .unwrap_or_else(|| panic!("the production rules disagree: {}", rules.describe()))
    }

    /// Every production rule of `web` as the ELBv2 adapter reads it.
    pub async fn production_rules(&self) -> ProductionRules {
        Aws::new(&self.sdk, &self.config)
            .production("web")
            .await
            .expect("weights")
    }

    pub async fn ecs_service(&self, color: &str) -> aws_sdk_ecs::types::Service {
        aws_sdk_ecs::Client::new(&self.sdk)
            .describe_services()
            .cluster(&self.cluster)
            .services(format!("{}-{color}", self.prefix))
            .send()
            .await
            .expect("describe")
            .services()[0]
            .clone()
    }

    /// Polls the `color` ECS service until `done` holds (at most `secs`).
    pub async fn wait_for_ecs_service(
        &self,
        color: &str,
        secs: u64,
        what: &str,
        done: impl Fn(&aws_sdk_ecs::types::Service) -> bool,
    ) -> aws_sdk_ecs::types::Service {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let service = self.ecs_service(color).await;
            if done(&service) {
                return service;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}: {:?} x{}; state {:#?}",
                    service.task_definition(),
                    service.desired_count(),
                    self.state().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Env {
    /// Waits until the worker's queue holds no message, visible, delayed or in flight
    /// (at most `secs`): everything sent was handled.
    pub async fn wait_for_empty_queue(&self, secs: u64) {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let out = sqs
                .get_queue_attributes()
                .queue_url(&self.queue_url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
                .expect("queue attributes");
            let waiting: u64 = out
                .attributes()
                .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
                .unwrap_or(0);
            if waiting == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{waiting} messages still in the queue"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Rewrites the production rule's forward weights with a plain ELBv2 call, as a
    /// stack update or a person in the console does (stickiness kept as created).
    pub async fn rewrite_rule(&self, weights: Weights) {
        let rule = self.service().production_listener_rule_arn.expect("a rule");
        self.rewrite(&rule, weights).await;
    }

    /// Rewrites `rule`'s forward weights the same way.
    pub async fn rewrite(&self, rule: &str, weights: Weights) {
        let svc = self.service();
        aws_sdk_elasticloadbalancingv2::Client::new(&self.sdk)
            .modify_rule()
            .rule_arn(rule)
            .actions(forward_action(
                &svc.blue_target_group_arn,
                &svc.green_target_group_arn,
                weights,
            ))
            .send()
            .await
            .expect("modify rule");
    }

    /// Pushes an image tagged `tag` to the `web` repository of moto's ECR (created on
    /// first use); returns its digest.
    pub async fn ecr_image(&self, tag: &str) -> String {
        let ecr = aws_sdk_ecr::Client::new(&self.sdk);
        let _ = ecr.create_repository().repository_name("web").send().await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": { "mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
                        "digest": format!("sha256:{:064x}", u128::from(tag.len() as u32)) },
            "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654,
                         "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f" }],
            "annotations": { "tag": tag }
        });
        ecr.put_image()
            .repository_name("web")
            .image_manifest(manifest.to_string())
            .image_tag(tag)
            .send()
            .await
            .expect("put image")
            .image()
            .and_then(|i| i.image_id())
            .and_then(|id| id.image_digest())
            .expect("digest")
            .to_string()
    }
}

/// A production rule's forward action over the two groups, sticky for 5 minutes, built
/// here rather than by the adapter under test.
fn forward_action(blue: &str, green: &str, weights: Weights) -> Action {
    let tuple = |arn: &str, weight: u8| {
        TargetGroupTuple::builder()
            .target_group_arn(arn)
            .weight(i32::from(weight))
            .build()
    };
    let forward = ForwardActionConfig::builder()
        .target_groups(tuple(blue, weights.blue))
        .target_groups(tuple(green, weights.green))
        .target_group_stickiness_config(
            TargetGroupStickinessConfig::builder()
                .enabled(true)
                .duration_seconds(300)
                .build(),
        )
        .build();
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .forward_config(forward)
        .build()
}

pub async fn set_alarm(sdk: &SdkConfig, name: &str, state: &str) {
    aws_sdk_cloudwatch::Client::new(sdk)
        .set_alarm_state()
        .alarm_name(name)
        .state_value(aws_sdk_cloudwatch::types::StateValue::from(state))
        .state_reason("set by the test")
        .send()
        .await
        .expect("set alarm state");
}

/// VPC, two subnets and a security group (moto needs security groups in awsvpc).
///
/// The EC2 SDK crate is not a dependency of the product, and these four calls are all the
/// tests need from EC2, so they go to moto as plain EC2 query requests.
async fn network() -> (String, String, String, String) {
    let ec2 = Ec2Query {
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    };
    let vpc = ec2
        .call(&[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")])
        .await;
    let vpc = between(&vpc, "<vpcId>", "</vpcId>");
    let mut subnets = Vec::new();
    for (cidr, az) in [("10.0.1.0/24", "us-east-1a"), ("10.0.2.0/24", "us-east-1b")] {
        let out = ec2
            .call(&[
                ("Action", "CreateSubnet"),
                ("VpcId", &vpc),
                ("CidrBlock", cidr),
                ("AvailabilityZone", az),
            ])
            .await;
        subnets.push(between(&out, "<subnetId>", "</subnetId>"));
    }
    let name = format!("sg-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    let sg = ec2
        .call(&[
            ("Action", "CreateSecurityGroup"),
            ("GroupName", &name),
            ("GroupDescription", "bluegreen"),
            ("VpcId", &vpc),
        ])
        .await;
    let b = subnets.pop().expect("subnet");
    let a = subnets.pop().expect("subnet");
    (vpc, a, b, between(&sg, "<groupId>", "</groupId>"))
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .map(|i| i + start.len())
        .unwrap_or_else(|| panic!("{start} not in {text}"));
    let to = text[from..].find(end).map(|i| from + i).expect("end");
    text[from..to].to_string()
}

struct Ec2Query {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Ec2Query {
    async fn call(&self, params: &[(&str, &str)]) -> String {
        use http_body_util::BodyExt;
        let mut body: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('/', "%2F")))
            .collect();
        body.push("Version=2016-11-15".into());
        let request = hyper::Request::post(endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=test/20261126/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.join("&"))))
            .expect("request");
        let response = self.client.request(request).await.expect("ec2 call");
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Now as CloudWatch writes an alarm's state timestamp: `2026-12-01T10:00:00.000+0000`.
pub fn cloudwatch_now() -> String {
    let now = bluegreen::ports::system_clock()();
    now.rfc3339().replace('Z', "+0000")
}

/// The real AWS adapter, with ECS's rollout played where moto cannot.
pub struct MotoWorld {
    pub aws: Aws,
    /// Production weights as written and read back, in order.
    pub applied: Mutex<Vec<Weights>>,
    /// When each production write was confirmed by the read-back, for which service.
    pub applied_at: Mutex<Vec<(tokio::time::Instant, String, Weights)>>,
    /// When set, the worker dies at its next fencing read (right after committing a
    /// decision, before running its effects): from then on none of its calls returns.
    pub crash_after_next_commit: std::sync::atomic::AtomicBool,
    /// Set once that happened: this world's worker is dead.
    pub dead: std::sync::atomic::AtomicBool,
}

impl MotoWorld {
    /// The world of a worker over `aws`.
    pub fn over(aws: Aws) -> MotoWorld {
        MotoWorld {
            aws,
            applied: Mutex::new(Vec::new()),
            applied_at: Mutex::new(Vec::new()),
            crash_after_next_commit: std::sync::atomic::AtomicBool::new(false),
            dead: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A dead worker makes no more calls: its futures never finish.
    async fn alive(&self) {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

impl Inbox for MotoWorld {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<Received>> {
        self.alive().await;
        self.aws.receive(max, wait, visibility).await
    }
    async fn receive_limit(&self) -> PortResult<Option<u32>> {
        self.aws.receive_limit().await
    }
    async fn delete(&self, receipt: &str) -> PortResult<()> {
        self.alive().await;
        self.aws.delete(receipt).await
    }
    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()> {
        self.alive().await;
        self.aws.set_visibility(receipt, timeout).await
    }
    async fn send(&self, body: String, delay: Duration) -> PortResult<()> {
        self.alive().await;
        self.aws.send(body, delay).await
    }
}

impl Store for MotoWorld {
    async fn load(&self, service: &str, initial: Color) -> PortResult<Stored> {
        self.alive().await;
        self.aws.load(service, initial).await
    }
    async fn commit(&self, service: &str, commit: Commit<'_>) -> PortResult<u64> {
        self.alive().await;
        self.aws.commit(service, commit).await
    }
    async fn seen(&self, service: &str, key: &str) -> PortResult<bool> {
        self.alive().await;
        self.aws.seen(service, key).await
    }
    async fn fence(&self, service: &str) -> PortResult<Fence> {
        if self.crash_after_next_commit.swap(false, Ordering::SeqCst) {
            self.dead.store(true, Ordering::SeqCst);
        }
        self.alive().await;
        self.aws.fence(service).await
    }
    async fn extend(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        self.alive().await;
        self.aws.extend(service, version, lease).await
    }
    async fn release(&self, service: &str, owner: &str) -> PortResult<()> {
        self.alive().await;
        self.aws.release(service, owner).await
    }
    async fn take(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        self.alive().await;
        self.aws.take(service, version, lease).await
    }
    async fn discharge(
        &self,
        service: &str,
        version: u64,
        owner: &str,
        release: bool,
    ) -> PortResult<bool> {
        self.alive().await;
        self.aws.discharge(service, version, owner, release).await
    }
    async fn preempt(&self, service: &str, until: Option<Timestamp>) -> PortResult<()> {
        self.alive().await;
        self.aws.preempt(service, until).await
    }
    async fn remember(&self, service: &str, key: &str, now: Timestamp) -> PortResult<()> {
        self.alive().await;
        self.aws.remember(service, key, now).await
    }
    async fn claim_outbox(&self, service: &str, claim: Lease<'_>) -> PortResult<Vec<Claimed>> {
        self.alive().await;
        self.aws.claim_outbox(service, claim).await
    }
    async fn outbox_done(&self, service: &str, keys: &[String]) -> PortResult<()> {
        self.alive().await;
        self.aws.outbox_done(service, keys).await
    }
    async fn try_lease(&self, name: &str, lease: Lease<'_>) -> PortResult<Option<u64>> {
        self.alive().await;
        self.aws.try_lease(name, lease).await
    }
    async fn mark_lease(&self, name: &str, owner: &str, mark: u64) -> PortResult<()> {
        self.alive().await;
        self.aws.mark_lease(name, owner, mark).await
    }
}

impl Traffic for MotoWorld {
    async fn production(&self, service: &str) -> PortResult<ProductionRules> {
        self.alive().await;
        self.aws.production(service).await
    }
    async fn set_production(&self, service: &str, weights: Weights) -> PortResult<Weights> {
        self.alive().await;
        let read = self.aws.set_production(service, weights).await?;
        self.applied.lock().expect("lock").push(read);
        self.applied_at.lock().expect("lock").push((
            tokio::time::Instant::now(),
            service.to_string(),
            read,
        ));
        Ok(read)
    }
    async fn set_test(&self, service: &str, weights: Weights) -> PortResult<()> {
        self.alive().await;
        self.aws.set_test(service, weights).await
    }
}

impl Platform for MotoWorld {
    async fn register_revision(
        &self,
        service: &str,
        deployment_id: &str,
        template: Color,
        image: &str,
    ) -> PortResult<String> {
        self.alive().await;
        self.aws
            .register_revision(service, deployment_id, template, image)
            .await
    }
    async fn update_service(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        match_count_of: Color,
    ) -> PortResult<()> {
        self.alive().await;
        self.aws
            .update_service(service, color, task_definition, match_count_of)
            .await
    }
    async fn restore_capacity(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        desired: u32,
    ) -> PortResult<()> {
        self.alive().await;
        self.aws
            .restore_capacity(service, color, task_definition, desired)
            .await
    }
    async fn scale_up(&self, service: &str, color: Color, match_count_of: Color) -> PortResult<()> {
        self.alive().await;
        self.aws.scale_up(service, color, match_count_of).await
    }
    async fn scale_to_zero(&self, service: &str, color: Color) -> PortResult<()> {
        self.alive().await;
        self.aws.scale_to_zero(service, color).await
    }
    async fn health(&self, service: &str, color: Color) -> PortResult<TargetHealth> {
        self.alive().await;
        self.aws.health(service, color).await
    }
}

impl Bus for MotoWorld {
    async fn publish(&self, entries: &[Entry]) -> PortResult<Vec<String>> {
        self.alive().await;
        self.aws.publish(entries).await
    }
}

impl Alarms for MotoWorld {
    async fn firing(&self, names: &[String]) -> PortResult<Vec<String>> {
        self.alive().await;
        self.aws.firing(names).await
    }
}

impl Registry for MotoWorld {
    async fn resolve(&self, repository: &str, tag: &str) -> PortResult<String> {
        self.alive().await;
        self.aws.resolve(repository, tag).await
    }
}

impl Checks for MotoWorld {
    async fn get(&self, url: &str) -> Result<u16, String> {
        self.aws.get(url).await
    }
}

impl Env {
    /// Sends a raw body straight to the worker's queue (a duplicate delivery, a hostile
    /// message).
    pub async fn send_raw(&self, body: &str) {
        aws_sdk_sqs::Client::new(&self.sdk)
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    /// Task definition revisions of the test's family tagged for `deployment_id`.
    pub async fn registrations(&self, deployment_id: &str) -> usize {
        let ecs = aws_sdk_ecs::Client::new(&self.sdk);
        let list = ecs
            .list_task_definitions()
            .family_prefix(format!("{}-web", self.prefix))
            .send()
            .await
            .expect("list");
        let mut n = 0;
        for arn in list.task_definition_arns() {
            let tags = ecs
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .expect("tags");
            if tags.tags().iter().any(|t| t.value() == Some(deployment_id)) {
                n += 1;
            }
        }
        n
    }
}

impl Env {
    /// The `CloudWatch Alarm State Change` envelope for the service's rollback alarm
    /// entering ALARM at `timestamp` (as EventBridge delivers it to the queue).
    pub fn alarm_message(&self, timestamp: &str) -> String {
        serde_json::json!({
            "version": "0", "id": format!("alarm-{timestamp}"), "detail-type": "CloudWatch Alarm State Change",
            "source": "aws.cloudwatch", "time": "2026-11-26T10:00:00Z", "region": "us-east-1",
            "resources": [format!("arn:aws:cloudwatch:us-east-1:123456789012:alarm:{}", self.alarm)],
            "detail": {
                "alarmName": self.alarm,
                "state": { "value": "ALARM", "reason": "Threshold Crossed", "timestamp": timestamp },
                "previousState": { "value": "OK", "reason": "Threshold not crossed", "timestamp": "2026-11-26T09:00:00.000+0000" },
                "configuration": { "metrics": [] }
            }
        })
        .to_string()
    }
}

impl Env {
    /// An operator event on the bus (as `bluegreen <action>` or `aws events put-events`).
    pub async fn operator(&self, detail_type: &str, detail: serde_json::Value) {
        let mut detail = detail;
        detail["service"] = "web".into();
        detail["requestedBy"] = "alice@example.com".into();
        self.put_event("bluegreen.manual", detail_type, detail)
            .await;
    }
}

impl Env {
    /// Current test listener rule weights of the service.
    pub async fn test_weights(&self) -> Weights {
        let svc = self.service();
        let arn = svc
            .test_listener_rule_arn
            .clone()
            .expect("a test listener rule");
        let rule = aws_sdk_elasticloadbalancingv2::Client::new(&self.sdk)
            .describe_rules()
            .rule_arns(arn)
            .send()
            .await
            .expect("rule")
            .rules()[0]
            .clone();
        bluegreen::aws::elb::weights_in(&svc, rule.actions()).expect("weights")
    }
}

/// A stand-in for the new colour behind the test listener: answers every request with
/// `status` and counts the requests.
pub async fn http_stub(status: u16) -> (String, std::sync::Arc<AtomicU32>) {
    http_stub_after(status, Duration::ZERO).await
}

/// [`http_stub`] answering each request only after `delay` (a slow health check).
pub async fn http_stub_after(status: u16, delay: Duration) -> (String, std::sync::Arc<AtomicU32>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/healthz", listener.local_addr().expect("addr"));
    let hits = std::sync::Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

impl Env {
    /// Polls the production rule until it carries `weights` (at most `secs`): state is
    /// committed before the effects that carry it out run.
    pub async fn wait_for_weights(&self, weights: Weights, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let seen = self.production_rules().await;
            if seen.agreed() == Some(weights) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "production stayed at {}, expected {weights}",
                seen.describe()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A worker running in the background until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts `worker`'s receive loop.
    pub fn start(worker: &Worker<MotoWorld>) -> Running {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        Running {
            stop,
            task: tokio::spawn(worker.clone().run(stopped)),
        }
    }

    /// Asks the worker to stop and waits until it has finished its in-flight messages.
    pub async fn stop(self) {
        self.stop.send(true).expect("stop");
        self.task.await.expect("the worker stops without panicking");
    }

    /// Kills the worker (its receive loop; tasks it spawned die with a world whose
    /// worker is [dead](MotoWorld::dead)).
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Env {
    /// Waits until the service's last deployment is in `phase` (at most `secs`).
    pub async fn wait_for_last(&self, phase: bluegreen::flow::Phase, secs: u64) -> ServiceState {
        self.wait_for(secs, phase.as_str(), |s| {
            s.last.as_ref().is_some_and(|d| d.phase == phase)
        })
        .await
    }
}
