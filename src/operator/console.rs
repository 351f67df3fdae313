//! Where operator commands act: AWS (the configured bus, table, rules and alarms) or the
//! embedded mode's database.

use crate::fleet::Fleet;
use crate::flow::{Color, Deployment, ProductionRules, ServiceState, Timestamp};

use super::actions::{Refusal, Request, Verb, check};
use super::status::{AlarmStatus, DeploymentView, Status};

/// A console: AWS or the embedded mode.
pub enum Console {
    /// AWS, from the worker's configuration.
    Aws {
        /// The adapters.
        aws: Box<crate::aws::Aws>,
        /// The services.
        fleet: Fleet,
        /// For the caller's identity.
        sts: aws_sdk_sts::Client,
    },
    /// The embedded mode, from its configuration.
    Local {
        /// Its database (shared with the running `bluegreen local`).
        db: crate::local::LocalDb,
        /// The services.
        fleet: Fleet,
        /// Rollback alarm names per service.
        alarms: std::collections::HashMap<String, Vec<String>>,
        /// The clock.
        clock: crate::ports::Clock,
    },
}

/// Why a console could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// See [`Refusal`].
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// AWS or the embedded database could not be reached or answered an error.
    #[error("{0}")]
    Unreachable(String),
    /// The command's own configuration is missing or invalid.
    #[error("{0}")]
    Config(String),
}

/// One line for an AWS error an operator meets.
fn aws_error(what: &str, bus: &str, e: &impl std::fmt::Display) -> ConsoleError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    ConsoleError::Unreachable(if lower.contains("credential") {
        format!(
            "{what}: no AWS credentials (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where a role is attached): {text}"
        )
    } else if lower.contains("resourcenotfound") && what == "PutEvents" {
        format!(
            "{what}: event bus {bus:?} not found (worker.event_bus in the configuration): {text}"
        )
    } else {
        format!("{what}: {text}")
    })
}

impl Console {
    /// A console on AWS for `config` (the default credential and region chain).
    pub async fn aws(config: &crate::config::Config) -> Console {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Console::aws_with(&sdk, config)
    }

    /// A console on AWS with an explicit SDK configuration.
    #[must_use]
    pub fn aws_with(sdk: &aws_config::SdkConfig, config: &crate::config::Config) -> Console {
        Console::Aws {
            aws: Box::new(crate::aws::Aws::new(sdk, config)),
            fleet: Fleet::from(config),
            sts: aws_sdk_sts::Client::new(sdk),
        }
    }

    /// A console on the embedded mode configured by `config`.
    ///
    /// # Errors
    /// The state directory or its database cannot be opened.
    pub fn local(
        config: &crate::local::LocalConfig,
        clock: crate::ports::Clock,
    ) -> Result<Console, ConsoleError> {
        use crate::local::runtime as rt;
        std::fs::create_dir_all(&config.local.state_dir).map_err(|e| {
            ConsoleError::Unreachable(format!(
                "cannot create {}: {e}",
                config.local.state_dir.display()
            ))
        })?;
        let db = crate::local::LocalDb::open(
            &rt::db_path(&config.local.state_dir),
            clock.clone(),
            rt::queue_options(),
        )
        .map_err(|e| ConsoleError::Unreachable(e.to_string()))?;
        Ok(Console::Local {
            db,
            fleet: config.fleet(),
            alarms: config
                .services
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.alarms.iter().map(|a| a.name.clone()).collect(),
                    )
                })
                .collect(),
            clock,
        })
    }

    /// The services.
    #[must_use]
    pub fn fleet(&self) -> &Fleet {
        match self {
            Console::Aws { fleet, .. } | Console::Local { fleet, .. } => fleet,
        }
    }

    /// Now, by the console's clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        match self {
            Console::Aws { .. } => (crate::ports::system_clock())(),
            Console::Local { clock, .. } => clock(),
        }
    }

    fn known(&self, service: &str) -> Result<(), ConsoleError> {
        if self.fleet().service(service).is_some() {
            return Ok(());
        }
        Err(Refusal::UnknownService {
            service: service.to_string(),
            configured: self
                .fleet()
                .services
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        }
        .into())
    }

    /// The stored state of `service`.
    ///
    /// # Errors
    /// Unknown service, or the store cannot be read.
    pub async fn state(&self, service: &str) -> Result<ServiceState, ConsoleError> {
        self.stored(service).await.map(|s| s.state)
    }

    /// The stored state of `service` with what its last decisions still owe.
    async fn stored(&self, service: &str) -> Result<crate::ports::Stored, ConsoleError> {
        use crate::ports::Store;
        self.known(service)?;
        match self {
            Console::Aws { aws, .. } => aws
                .load(service, Color::Blue)
                .await
                .map_err(|e| aws_error("GetItem", "", &e)),
            Console::Local { db, .. } => db
                .load(service, Color::Blue)
                .await
                .map_err(|e| ConsoleError::Unreachable(e.to_string())),
        }
    }

    /// Who is asking: the caller's ARN on AWS, the user on the embedded mode.
    ///
    /// # Errors
    /// AWS cannot tell (no credentials).
    pub async fn caller(&self) -> Result<String, ConsoleError> {
        match self {
            Console::Aws { sts, .. } => sts
                .get_caller_identity()
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        "GetCallerIdentity",
                        "",
                        &aws_sdk_sts::error::DisplayErrorContext(e),
                    )
                })
                .map(|out| out.arn().unwrap_or("unknown").to_string()),
            Console::Local { .. } => Ok(std::env::var("USER").unwrap_or_else(|_| "local".into())),
        }
    }

    /// Checks `request` against the stored state and sends it; returns the event id.
    ///
    /// # Errors
    /// Refused by the check, or the event could not be put.
    pub async fn send(&self, request: &Request) -> Result<String, ConsoleError> {
        let state = self.state(&request.service).await?;
        let now = self.now();
        // The embedded mode deploys versions, not images: nothing for the core to judge.
        let local_deploy =
            matches!(self, Console::Local { .. }) && matches!(request.verb, Verb::Deploy { .. });
        if !local_deploy {
            check(request, self.fleet(), &state, now)?;
        }
        match self {
            Console::Aws { aws, fleet, .. } => {
                let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .event_bus_name(&aws.bus)
                    .source(&fleet.manual_source)
                    .detail_type(request.verb.detail_type())
                    .detail(request.detail().to_string())
                    .build();
                let out = aws
                    .events
                    .put_events()
                    .entries(entry)
                    .send()
                    .await
                    .map_err(|e| {
                        aws_error(
                            "PutEvents",
                            &aws.bus,
                            &aws_sdk_eventbridge::error::DisplayErrorContext(e),
                        )
                    })?;
                let first = out.entries().first();
                match first.and_then(|e| e.event_id()) {
                    Some(id) if out.failed_entry_count() == 0 => Ok(id.to_string()),
                    _ => Err(ConsoleError::Unreachable(format!(
                        "PutEvents refused the event: {}",
                        first
                            .and_then(|e| e.error_message())
                            .unwrap_or("no reason given")
                    ))),
                }
            }
            Console::Local { db, clock, .. } => {
                if let Verb::Deploy { image } = &request.verb {
                    // The embedded mode deploys versions: the image is the version label.
                    let (_, id) = crate::local::runtime::enqueue_deploy(
                        db,
                        clock,
                        &request.service,
                        image,
                        &request.requested_by,
                    )
                    .await
                    .map_err(|e| ConsoleError::Unreachable(e.to_string()))?;
                    return Ok(id);
                }
                let id = format!(
                    "local-{}-{}-{}",
                    request.verb.name(),
                    request.service,
                    now.millis()
                );
                let body = request.envelope(&id, &self.fleet().manual_source, now);
                crate::ports::Inbox::send(db, body.to_string(), std::time::Duration::ZERO)
                    .await
                    .map_err(|e| ConsoleError::Unreachable(e.to_string()))?;
                Ok(id)
            }
        }
    }

    /// The status of `service`: stored state, the rule read now, the alarms, and what
    /// the worker is doing (its lease, the effects it owes).
    ///
    /// # Errors
    /// Unknown service, or the store cannot be read.
    pub async fn status(&self, service: &str) -> Result<Status, ConsoleError> {
        use crate::ports::Store;
        let stored = self.stored(service).await?;
        // Who holds the lease is extra information: unreadable, it is left out.
        let fence = match self {
            Console::Aws { aws, .. } => aws.fence(service).await.ok(),
            Console::Local { db, .. } => db.fence(service).await.ok(),
        };
        let mut status = self.status_of(&stored.state).await;
        status.owed_effects = stored.owed.len();
        let now = self.now();
        if let Some(f) = fence.filter(|f| f.owner.is_some() && now < f.until) {
            status.lease_owner = f.owner;
            status.lease_until = Some(f.until.rfc3339());
        }
        Ok(status)
    }

    /// The status of the service whose stored state is `state`: the rule and the alarms
    /// are read now; what cannot be read is shown as such.
    pub async fn status_of(&self, state: &ServiceState) -> Status {
        use crate::ports::{Alarms, Traffic};
        let service = state.service.as_str();
        let names: Vec<String> = match self {
            Console::Aws { fleet, .. } => fleet
                .service(service)
                .map(|s| s.rollback_alarms.clone())
                .unwrap_or_default(),
            Console::Local { alarms, .. } => alarms.get(service).cloned().unwrap_or_default(),
        };
        let (rule, alarms) = match self {
            Console::Aws { aws, .. } => {
                let rule = aws.production(service).await.map_err(|e| e.to_string());
                let alarms = match aws.firing(&names).await {
                    Ok(firing) => Ok(names
                        .iter()
                        .map(|n| {
                            AlarmStatus::new(n, if firing.contains(n) { "ALARM" } else { "OK" })
                        })
                        .collect()),
                    Err(e) => Err(format!("the rollback alarms cannot be read: {e}")),
                };
                (rule, alarms)
            }
            Console::Local { db, .. } => {
                // The router's weights as the running `bluegreen local` persisted them;
                // its alarms are evaluated in that process only.
                let rule = match db.get(&crate::local::world::weights_key(service)) {
                    Ok(Some(text)) => serde_json::from_str(&text)
                        .map(|w| ProductionRules::one(crate::local::world::router_name(service), w))
                        .map_err(|e| e.to_string()),
                    Ok(None) => Err("the embedded router has not started yet".into()),
                    Err(e) => Err(e.to_string()),
                };
                // As the running `bluegreen local` last judged them.
                let alarms = names
                    .iter()
                    .map(|n| {
                        AlarmStatus::new(
                            n,
                            match db.get(&crate::local::alarms::alarm_key(n)) {
                                Ok(Some(s)) if s == "ALARM" => "ALARM",
                                Ok(Some(s)) if s == "OK" => "OK",
                                Ok(Some(_)) => "INSUFFICIENT_DATA",
                                _ => "UNKNOWN",
                            },
                        )
                    })
                    .collect();
                (rule, Ok(alarms))
            }
        };
        let (mut alarms, alarm_error): (Vec<AlarmStatus>, _) = match alarms {
            Ok(alarms) => (alarms, None),
            Err(e) => (
                names
                    .iter()
                    .map(|n| AlarmStatus::new(n, "UNKNOWN"))
                    .collect(),
                Some(e),
            ),
        };
        // Which colour each alarm watches, and whether it gates the deployment now.
        if let Some(settings) = self.fleet().service(service).map(|s| &s.settings) {
            let target = state
                .active
                .as_ref()
                .map_or(state.live.other(), |d| d.target);
            for a in &mut alarms {
                a.color = settings.color_alarms.color_of(&a.name);
                a.gates = settings.rolls_back(&a.name, target);
            }
        }
        let mut status = Status::of(state, rule, alarms, self.now());
        status.alarm_error = alarm_error;
        status
    }

    /// Up to `limit` finished and running deployments of `service`, newest first.
    ///
    /// # Errors
    /// Unknown service, or the store cannot be read.
    pub async fn history(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentView>, ConsoleError> {
        let now = self.now();
        let records: Vec<Deployment> = match self {
            Console::Aws { aws, .. } => {
                let state = self.state(service).await?;
                let mut out = Vec::new();
                let newest = state.deployments_started;
                for number in (1..=newest).rev().take(limit) {
                    let id = format!("{service}-{number}");
                    match aws.deployment_record(&id).await {
                        Ok(Some(d)) => out.push(d),
                        Ok(None) => {}
                        Err(e) => return Err(aws_error("GetItem", "", &e)),
                    }
                }
                out
            }
            Console::Local { db, .. } => {
                self.known(service)?;
                db.deployments(service)
                    .map_err(|e| ConsoleError::Unreachable(e.to_string()))?
                    .iter()
                    .filter_map(|text| serde_json::from_str(text).ok())
                    .take(limit)
                    .collect()
            }
        };
        Ok(records.iter().map(|d| DeploymentView::of(d, now)).collect())
    }
}
