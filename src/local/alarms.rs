//! Embedded alarms: rules over the router's per-colour metrics that behave like the
//! CloudWatch alarms production uses.
//!
//! Every `evaluate_every` the evaluator snapshots each service's counters and judges each
//! rule over its window, on the colour that matters: the deploying colour while a
//! deployment is active, else the live one. Fewer requests than `min_requests` is
//! `INSUFFICIENT_DATA` (never ALARM). A state change enters the worker's inbox as a
//! `CloudWatch Alarm State Change` event of the same shape AWS delivers, so it is parsed,
//! routed and deduplicated by the same code; [`Alarms::firing`](crate::ports::Alarms)
//! answers from the current states.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::config::AlarmRule;
use super::db::LocalDb;
use super::proxy::{Route, Snapshot};
use crate::flow::Color;
use crate::ports::Clock;
use crate::ports::{Inbox, Store};

/// An alarm's state, as CloudWatch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Within the threshold.
    Ok,
    /// Beyond it.
    Alarm,
    /// Too few requests to judge.
    InsufficientData,
}

impl State {
    /// CloudWatch's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Alarm => "ALARM",
            State::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// Current alarm states, shared with the worker and the metrics endpoint.
#[derive(Debug, Default)]
pub struct AlarmBoard {
    states: Mutex<HashMap<String, State>>,
    last_alarm: Mutex<Option<(String, Instant)>>,
}

impl AlarmBoard {
    /// Which of `names` are in ALARM.
    #[must_use]
    pub fn firing(&self, names: &[String]) -> Vec<String> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        names
            .iter()
            .filter(|n| states.get(*n) == Some(&State::Alarm))
            .cloned()
            .collect()
    }

    /// Every alarm and its state, sorted by name.
    #[must_use]
    pub fn states(&self) -> Vec<(String, State)> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = states.iter().map(|(n, s)| (n.clone(), *s)).collect();
        all.sort();
        all
    }

    /// The last alarm that went to ALARM, and when.
    #[must_use]
    pub fn last_alarm(&self) -> Option<(String, Instant)> {
        self.last_alarm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, name: &str, state: State) -> Option<State> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = states.insert(name.to_string(), state);
        if state == State::Alarm && previous != Some(State::Alarm) {
            *self
                .last_alarm
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some((name.to_string(), Instant::now()));
        }
        previous
    }
}

impl Ord for State {
    fn cmp(&self, other: &State) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for State {
    fn partial_cmp(&self, other: &State) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// One service's rules and the counter history they are judged on.
#[derive(Debug)]
pub struct Evaluator {
    service: String,
    rules: Vec<AlarmRule>,
    route: Arc<Route>,
    history: VecDeque<(Instant, [Snapshot; 2])>,
}

/// What a rule concluded, with CloudWatch-like reason text.
fn judge(rule: &AlarmRule, window: &Snapshot, span: Duration) -> (State, String) {
    if window.requests < rule.min_requests {
        return (
            State::InsufficientData,
            format!(
                "{} requests in the last {span:.1?}, fewer than the {} needed",
                window.requests, rule.min_requests
            ),
        );
    }
    if let Some(limit) = rule.error_rate_above {
        let rate = window.error_rate().unwrap_or(0.0);
        let state = if rate > limit {
            State::Alarm
        } else {
            State::Ok
        };
        return (
            state,
            format!(
                "Threshold Crossed: 5xx rate {rate:.3} ({} of {} requests in the last {span:.1?}) was {} the threshold ({limit})",
                window.errors,
                window.requests,
                if state == State::Alarm {
                    "greater than"
                } else {
                    "not greater than"
                }
            ),
        );
    }
    let limit = rule.p99_above.unwrap_or(Duration::MAX);
    let p99 = window.quantile(0.99).unwrap_or_default();
    let state = if p99 > limit { State::Alarm } else { State::Ok };
    (
        state,
        format!(
            "Threshold Crossed: p99 latency {p99:?} over {} requests in the last {span:.1?} was {} the threshold ({limit:?})",
            window.requests,
            if state == State::Alarm {
                "greater than"
            } else {
                "not greater than"
            }
        ),
    )
}

impl Evaluator {
    /// An evaluator of `rules` over `route`.
    #[must_use]
    pub fn new(service: &str, rules: Vec<AlarmRule>, route: Arc<Route>) -> Evaluator {
        Evaluator {
            service: service.to_string(),
            rules,
            route,
            history: VecDeque::new(),
        }
    }

    /// Snapshots the counters and judges every rule on `color`.
    fn evaluate(&mut self, color: Color, now: Instant) -> Vec<(String, State, String)> {
        let snapshot = [
            self.route.metrics(Color::Blue).snapshot(),
            self.route.metrics(Color::Green).snapshot(),
        ];
        self.history.push_back((now, snapshot));
        let longest = self
            .rules
            .iter()
            .map(|r| r.window)
            .max()
            .unwrap_or_default();
        // Keep one entry at or beyond the longest window as its baseline.
        while self.history.len() > 2
            && self
                .history
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= longest)
        {
            self.history.pop_front();
        }
        let at = usize::from(color == Color::Green);
        let mut verdicts = Vec::new();
        for rule in &self.rules {
            let baseline = self
                .history
                .iter()
                .rev()
                .find(|(t, _)| now.duration_since(*t) >= rule.window)
                .or(self.history.front());
            let Some((since, base)) = baseline else {
                continue;
            };
            let window = snapshot[at].since(&base[at]);
            let (state, reason) = judge(rule, &window, now.duration_since(*since));
            verdicts.push((rule.name.clone(), state, reason));
        }
        verdicts
    }
}

/// Where the embedded database keeps an alarm's last state.
#[must_use]
pub fn alarm_key(name: &str) -> String {
    format!("alarm:{name}")
}

/// The CloudWatch-shaped event for a state change.
#[must_use]
pub fn state_change_event(
    name: &str,
    state: State,
    previous: State,
    reason: &str,
    at: &str,
    id: &str,
) -> String {
    json!({
        "version": "0",
        "id": id,
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": "000000000000",
        "time": at,
        "region": "local",
        "resources": [format!("arn:aws:cloudwatch:local:000000000000:alarm:{name}")],
        "detail": {
            "alarmName": name,
            "state": { "value": state.as_str(), "reason": reason, "timestamp": at },
            "previousState": { "value": previous.as_str(), "reason": "", "timestamp": at },
            "configuration": { "description": "bluegreen embedded alarm over the router's metrics" }
        }
    })
    .to_string()
}

/// Evaluates every service's rules until `shutdown` turns true.
pub async fn run(
    mut evaluators: Vec<Evaluator>,
    board: Arc<AlarmBoard>,
    db: LocalDb,
    clock: Clock,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        for evaluator in &mut evaluators {
            let watched = match db.load(&evaluator.service, Color::Blue).await {
                Ok(stored) => stored
                    .state
                    .active
                    .as_ref()
                    .map_or(stored.state.live, |d| d.target),
                Err(e) => {
                    warn!(error = %e, "alarms: cannot read the service state");
                    continue;
                }
            };
            for (name, state, reason) in evaluator.evaluate(watched, Instant::now()) {
                let previous = board.set(&name, state).unwrap_or(State::InsufficientData);
                if previous == state {
                    continue;
                }
                let at = clock().rfc3339();
                sequence += 1;
                let id = format!("local-alarm-{name}-{}-{sequence}", clock().millis());
                info!(alarm = %name, from = previous.as_str(), to = state.as_str(), %reason, "alarm state change");
                // For `bluegreen status --local`, which runs in another process.
                if let Err(e) = db.put(&alarm_key(&name), state.as_str()) {
                    warn!(error = %e, "alarms: cannot record the state");
                }
                let body = state_change_event(&name, state, previous, &reason, &at, &id);
                if let Err(e) = db.send(body, Duration::ZERO).await {
                    warn!(error = %e, "alarms: cannot enqueue the state change");
                }
            }
        }
    }
}
