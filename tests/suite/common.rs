//! A tiny in-process world for driving the decision core: it plays the worker's part
//! (commit, run effects in order, feed results back, deliver ticks when due) without any
//! IO, so tests read as stories.

use std::time::Duration;

use bluegreen::flow::{
    Action, AlarmState, Check, CheckOutcome, Color, Decision, Effect, ImageRef, Input, InputKind,
    Observations, OutboundEvent, Outcome, Phase, ServiceSettings, ServiceState, Strategy,
    TargetHealth, TickKey, Timestamp, Weights, decide,
};

/// 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;

pub const SERVICE: &str = "web";
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
        },
    )
}

/// Healthy; the world fills in the revision the colour really runs.
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

/// Everything the world saw, in order.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub production: Vec<Weights>,
    pub test: Vec<Weights>,
    pub registrations: Vec<String>,
    pub updates: Vec<(Color, String)>,
    pub scaled_to_zero: Vec<Color>,
    pub events: Vec<OutboundEvent>,
    pub effects: Vec<Effect>,
}

pub struct World {
    pub state: ServiceState,
    pub settings: ServiceSettings,
    pub now: Timestamp,
    /// Ticks sent and not yet delivered.
    pub ticks: Vec<(TickKey, Timestamp)>,
    pub log: Log,
    /// What the alarm read returns; `None` = the read fails.
    pub alarms_firing: Option<Vec<String>>,
    pub health: Option<TargetHealth>,
    pub validations_pass: bool,
    /// Drop the effects of the next decision (crash after commit, before effects).
    pub crash_next: bool,
    /// Make every effect of this name fail.
    pub failing_effect: Option<&'static str>,
    /// Every (input, now) applied, for replay tests.
    pub history: Vec<(Input, Timestamp)>,
    /// Every decision with the state it was made on.
    pub records: Vec<Record>,
}

/// One decision as the world saw it.
#[derive(Debug, Clone)]
pub struct Record {
    pub before: ServiceState,
    pub input: Input,
    pub decision: Decision,
}

impl World {
    pub fn new(settings: ServiceSettings) -> World {
        World {
            state: ServiceState::new(SERVICE, Color::Blue),
            settings,
            now: Timestamp::from_millis(T0),
            ticks: Vec::new(),
            log: Log::default(),
            alarms_firing: Some(Vec::new()),
            health: Some(healthy()),
            validations_pass: true,
            crash_next: false,
            failing_effect: None,
            history: Vec::new(),
            records: Vec::new(),
        }
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

    /// Decides `input` now, commits, runs effects (unless crashing) and feeds results
    /// back. Returns the outcome of `input` itself.
    pub fn apply(&mut self, input: Input) -> Outcome {
        self.history.push((input.clone(), self.now));
        let decision = decide(self.state.clone(), &self.settings, &input, self.now);
        let outcome = decision.outcome.clone();
        if matches!(outcome, Outcome::Ignored { .. }) {
            assert_eq!(
                decision.state, self.state,
                "an ignored input changed the state: {input:?}"
            );
            assert!(decision.effects.is_empty() && decision.events.is_empty());
        }
        self.log.events.extend(decision.events.iter().cloned());
        let effects = decision.effects.clone();
        self.records.push(Record {
            before: std::mem::replace(&mut self.state, decision.state.clone()),
            input: input.clone(),
            decision,
        });
        if std::mem::take(&mut self.crash_next) {
            return outcome;
        }
        let cursor = self.state.active.as_ref().map_or(0, |d| d.cursor);
        for effect in effects {
            if let Some(followup) = self.run(&effect, cursor) {
                let failed = matches!(followup.kind, InputKind::EffectFailed { .. });
                self.apply(followup);
                if failed {
                    break;
                }
            }
        }
        outcome
    }

    fn run(&mut self, effect: &Effect, cursor: u32) -> Option<Input> {
        self.log.effects.push(effect.clone());
        if self.failing_effect == Some(effect.name()) {
            let deployment_id = effect.deployment_id();
            let cursor = self
                .state
                .deployment(deployment_id)
                .map_or(cursor, |d| d.cursor);
            return Some(Input::effect_failed(
                deployment_id,
                cursor,
                effect.name(),
                "injected failure".into(),
                self.log.effects.len() as u64,
            ));
        }
        match effect {
            Effect::RegisterRevision { deployment_id, .. } => {
                let arn = format!(
                    "arn:aws:ecs:us-east-1:123456789012:task-definition/web:{deployment_id}"
                );
                if !self.log.registrations.contains(&arn) {
                    self.log.registrations.push(arn.clone());
                }
                Some(Input::revision_registered(deployment_id, arn))
            }
            Effect::UpdateService {
                color,
                task_definition,
                ..
            } => {
                self.log.updates.push((*color, task_definition.clone()));
                None
            }
            Effect::ScaleToZero { color, .. } => {
                self.log.scaled_to_zero.push(*color);
                None
            }
            Effect::SetProductionWeights { weights, .. } => {
                self.log.production.push(*weights);
                None
            }
            Effect::SetTestWeights { weights, .. } => {
                self.log.test.push(*weights);
                None
            }
            Effect::RunValidations {
                deployment_id,
                cursor,
                checks,
            } => Some(Input::validations_completed(
                deployment_id,
                *cursor,
                checks
                    .iter()
                    .map(|c: &Check| CheckOutcome {
                        name: c.name().into(),
                        passed: self.validations_pass,
                        detail: if self.validations_pass {
                            "200".into()
                        } else {
                            "503".into()
                        },
                    })
                    .collect(),
            )),
            Effect::ScheduleTick { tick, due } => {
                self.ticks.push((tick.clone(), *due));
                None
            }
        }
    }

    /// What the worker would read: the alarm states, and the health of the colour being
    /// deployed to, running whatever revision an `UpdateService` last gave it.
    pub fn observations(&self) -> Observations {
        let target = self.state.active.as_ref().map(|d| d.target);
        let running = self
            .log
            .updates
            .iter()
            .rev()
            .find(|(c, _)| Some(*c) == target)
            .map(|(_, td)| td.clone());
        Observations {
            alarms_firing: self.alarms_firing.clone(),
            target_health: self.health.clone().map(|h| TargetHealth {
                task_definition: h.task_definition.or(running),
                ..h
            }),
        }
    }

    /// Delivers the earliest tick, advancing the clock to its due time.
    pub fn tick(&mut self) -> Option<Outcome> {
        let i = (0..self.ticks.len()).min_by_key(|&i| self.ticks[i].1)?;
        let (key, due) = self.ticks.remove(i);
        self.now = self.now.max(due);
        let observed = self.observations();
        Some(self.apply(Input::tick(key, observed)))
    }

    /// Delivers ticks until `stop` holds or no tick is left (bounded).
    pub fn run_until(&mut self, stop: impl Fn(&World) -> bool) {
        for _ in 0..500 {
            if stop(self) || self.tick().is_none() {
                return;
            }
        }
        panic!("world did not settle in 500 ticks");
    }

    /// Delivers every tick, then, if a deployment still waits for a lost tick, lets the
    /// reconciler find it; until nothing is left (bounded).
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
                .filter_map(|d| d.next_tick)
                .map(|t| t.due)
                .min();
            match waiting {
                Some(due) => {
                    let grace = self.settings.timeouts.reconcile_grace;
                    self.now = self.now.max(due).plus(grace + Duration::from_secs(1));
                    let key = format!("reconcile:{}", self.now.millis());
                    self.apply(Input::new(key, InputKind::Reconcile));
                }
                None => return,
            }
        }
        panic!("world did not settle");
    }

    pub fn advance(&mut self, secs: u64) {
        self.now = self.now.plus(Duration::from_secs(secs));
    }

    pub fn event_kinds(&self) -> Vec<&'static str> {
        self.log
            .events
            .iter()
            .map(|e| e.kind.detail_type())
            .collect()
    }
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
