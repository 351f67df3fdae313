//! Canned event sequences, recorded from whole stories, replayed two ways: in one go (a
//! fold in memory) and one input at a time with the state persisted and reloaded in
//! between (as the store does). Both must give the same states, events and effects as the
//! live run: that comparison is the crash-recovery property. Replaying a sequence a
//! second time on its own end state must change nothing.

use bluegreen::config::Config;
use bluegreen::contract::{self, Routed, Sources};
use bluegreen::flow::{
    Action, Color, Decision, Effect, Input, InputKind, OutboundEvent, Outcome, Phase,
    ServiceSettings, ServiceState, Timestamp, decide,
};

use crate::common::*;

struct Replay {
    state: ServiceState,
    events: Vec<OutboundEvent>,
    effects: Vec<Effect>,
    outcomes: Vec<Outcome>,
}

fn absorb(r: &mut Replay, d: Decision) {
    r.events.extend(d.events);
    r.effects.extend(d.effects);
    r.outcomes.push(d.outcome);
    r.state = d.state;
}

fn in_one_go(
    start: ServiceState,
    settings: &ServiceSettings,
    history: &[(Input, Timestamp)],
) -> Replay {
    let mut r = Replay {
        state: start,
        events: vec![],
        effects: vec![],
        outcomes: vec![],
    };
    for (input, now) in history {
        let d = decide(r.state.clone(), settings, input, *now);
        absorb(&mut r, d);
    }
    r
}

fn one_at_a_time(
    start: ServiceState,
    settings: &ServiceSettings,
    history: &[(Input, Timestamp)],
) -> Replay {
    let mut stored = serde_json::to_string(&start).expect("serialize");
    let mut r = Replay {
        state: start,
        events: vec![],
        effects: vec![],
        outcomes: vec![],
    };
    for (input, now) in history {
        let state: ServiceState = serde_json::from_str(&stored).expect("deserialize");
        // The input also travels through the queue as JSON.
        let input: Input =
            serde_json::from_str(&serde_json::to_string(input).expect("ser")).expect("de");
        let d = decide(state, settings, &input, *now);
        if d.changed() {
            stored = serde_json::to_string(&d.state).expect("serialize");
        }
        absorb(&mut r, d);
    }
    r
}

/// Replays the world's history both ways and compares with the live run.
fn check_replays(w: &World) {
    let start = ServiceState::new(SERVICE, Color::Blue);
    let a = in_one_go(start.clone(), &w.settings, &w.history);
    let b = one_at_a_time(start, &w.settings, &w.history);
    assert_eq!(
        a.state, w.state,
        "in-one-go replay diverged from the live run"
    );
    assert_eq!(
        b.state, w.state,
        "step-by-step replay diverged from the live run"
    );
    assert_eq!(a.events, w.log.events);
    assert_eq!(b.events, w.log.events);
    assert_eq!(a.effects, b.effects);
    assert_eq!(a.outcomes, b.outcomes);
    // The same sequence delivered again, in full, on its own end state: all duplicates or
    // stale ticks, so nothing changes and nothing is published.
    let again = in_one_go(w.state.clone(), &w.settings, &w.history);
    let changed: Vec<&Outcome> = again
        .outcomes
        .iter()
        .zip(&w.history)
        .filter(|(o, (i, _))| {
            !matches!(o, Outcome::Ignored { .. })
                && !matches!(i.kind, bluegreen::flow::InputKind::Reconcile { .. })
                && w.state.recent_keys.contains(&i.key)
        })
        .map(|(o, _)| o)
        .collect();
    assert!(
        changed.is_empty(),
        "replayed inputs were applied again: {changed:?}"
    );
    let republished: Vec<_> = again
        .events
        .iter()
        .filter(|e| e.kind != bluegreen::flow::EventKind::Rejected)
        .filter(|e| {
            w.log
                .events
                .iter()
                .any(|l| l.detail.event_id == e.detail.event_id)
        })
        .collect();
    assert!(
        republished.is_empty(),
        "replay re-published {republished:?}"
    );
}

#[test]
fn a_linear_deployment_replays_identically() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    check_replays(&w);
}

#[test]
fn approval_pause_resume_and_promote_replay_identically() {
    let mut s = settings();
    s.approval = true;
    let mut w = World::new(s);
    w.apply(push(1));
    w.run_until(|w| w.phase() == Some(Phase::AwaitingApproval));
    w.apply(op("approve", Action::Approve));
    w.advance(10);
    w.apply(op("pause", Action::Pause));
    w.tick();
    w.advance(300);
    w.apply(op("resume", Action::Resume));
    w.tick();
    w.apply(op("promote", Action::Promote { skip_bake: false }));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    check_replays(&w);
}

#[test]
fn queued_images_replay_identically() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.apply(push(2));
    w.apply(push(3));
    // Pushes are keyed by repository@digest: the same digest again is a duplicate.
    assert!(matches!(w.apply(push(2)), Outcome::Ignored { .. }));
    w.settle();
    assert_eq!(
        w.state.live_image,
        Some(image(3).pinned()),
        "the latest push wins"
    );
    check_replays(&w);
}

#[test]
fn rollback_after_success_replays_identically() {
    let mut w = World::new(settings());
    w.apply(push(1));
    w.run_until(|w| w.last_phase() == Some(Phase::Succeeded));
    w.apply(op("rb", Action::Rollback));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    check_replays(&w);
}

#[test]
fn a_crash_between_commit_and_effects_replays_identically() {
    let mut w = world_in(settings(), Phase::Shifting);
    w.crash_next = true;
    w.tick();
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::Succeeded));
    assert_eq!(w.log.registrations.len(), 1);
    check_replays(&w);
}

const CONFIG: &str = r#"
[worker]
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/bluegreen-events"
table = "bluegreen-deployments"
event_bus = "bluegreen"

[[services]]
name = "web"
cluster = "prod"
blue_service = "web-blue"
green_service = "web-green"
blue_target_group_arn = "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/web-blue/6d0ecf831eec9f09"
green_target_group_arn = "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/web-green/7e1fd0942ffd0a1a"
production_listener_rule_arn = "arn:aws:elasticloadbalancing:us-west-2:123456789012:listener-rule/app/alb/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee"
container_name = "app"
ecr_repository = "my-repository-name"
strategy = { kind = "linear", step_percent = 25, interval = "1m" }
bake = "2m"
termination_wait = "5m"
rollback_alarms = ["ServerCpuTooHigh"]
"#;

fn routed(file: &str, config: &Config) -> Vec<(String, Input)> {
    let fleet = bluegreen::fleet::Fleet::from(config);
    let text = std::fs::read_to_string(format!("tests/fixtures/{file}")).expect("fixture");
    let msg = contract::parse_str(&text, &Sources::default()).expect("fixture parses");
    match contract::route(&msg, &fleet).expect("routes") {
        Routed::Inputs(inputs) => inputs,
        Routed::Ignored(why) => panic!("{file} was ignored: {why}"),
    }
}

#[test]
fn the_aws_push_and_alarm_samples_drive_a_deployment_into_rollback() {
    let config = Config::from_toml_str(CONFIG).expect("config");
    let service = config.service("web").expect("web");
    let w_settings = service.settings();
    assert_eq!(w_settings.rollback_alarms, service.rollback_alarms.all());
    let mut w = World::new(w_settings);
    let push = routed("valid/ecr-image-push.json", &config);
    assert_eq!(push.len(), 1);
    assert_eq!(push[0].0, "web");
    assert_eq!(
        push[0].1.key,
        "push:123456789012.dkr.ecr.us-west-2.amazonaws.com/my-repository-name@sha256:7f5b2640fe6fb4f46592dfd3410c4a79dac4f89e4782432e0378abcd12345678"
    );
    w.apply(push[0].1.clone());
    w.run_until(|w| w.state.active.as_ref().is_some_and(|d| d.step == 1));
    let alarm = routed("aws/cloudwatch-alarm-single-metric.json", &config);
    assert_eq!(
        alarm[0].1.key,
        "alarm:ServerCpuTooHigh:2019-10-02T17:04:40.989+0000"
    );
    let InputKind::Alarm { changed_at, .. } = &alarm[0].1.kind else {
        panic!("an alarm input");
    };
    assert_eq!(
        changed_at.map(Timestamp::rfc3339).as_deref(),
        Some("2019-10-02T17:04:40.989Z"),
        "CloudWatch's +0000 timestamp is read"
    );
    // The sample's transition is older than the deployment: it rolls back only while the
    // alarm still reads ALARM (here it does).
    w.alarms_firing = Some(vec!["ServerCpuTooHigh".into()]);
    assert_eq!(w.apply(alarm[0].1.clone()), Outcome::Applied);
    w.alarms_firing = Some(vec![]);
    // The same alarm event delivered twice changes nothing.
    assert!(matches!(
        w.apply(alarm[0].1.clone()),
        Outcome::Ignored { .. }
    ));
    w.settle();
    assert_eq!(w.last_phase(), Some(Phase::RolledBack));
    check_replays(&w);
}
