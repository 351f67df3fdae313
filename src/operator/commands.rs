//! The operator commands of the command line: their arguments and what each one does with
//! a [`Console`]. `crate::cli` parses them and hands them here.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::config::{CONFIG_FILE_ENV, Config};
use crate::exit;
use crate::flow::{Action, Color};

fn parse_color(text: &str) -> Result<Color, String> {
    match text {
        "blue" => Ok(Color::Blue),
        "green" => Ok(Color::Green),
        _ => Err(format!("{text:?} is not a colour: blue or green")),
    }
}

use super::actions::{Request, Verb};
use super::console::{Console, ConsoleError};
use super::status::{render_history, render_status};
use super::watch::{Aim, Answer, Follow, ImageQuery, Pick, answer, watch};

/// Output formats of the read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for humans.
    Text,
    /// One JSON document (`watch`: one JSON object per change).
    Json,
}

/// Where an operator command acts.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The worker's configuration (AWS); default BLUEGREEN_CONFIG, else
    /// BLUEGREEN_CONFIG_JSON. With --local: the embedded configuration (default
    /// bluegreen.local.toml).
    #[arg(long, short, env = CONFIG_FILE_ENV)]
    pub config: Option<std::path::PathBuf>,
    /// Act on the embedded mode (`bluegreen local`) instead of AWS.
    #[arg(long)]
    pub local: bool,
}

/// How a command waits.
#[derive(Debug, Clone, clap::Args)]
pub struct Waiting {
    /// How often to read the state.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Give up after this long (exit 5); 0 waits for ever.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Give up when the deployment asked for has not started, or the action has not been
    /// applied, after this long (exit 5): the worker may be down.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
}

/// Options of every operator action.
#[derive(Debug, Clone, clap::Args)]
pub struct ActionArgs {
    /// The service.
    pub service: String,
    /// The deployment meant (default: the one the action applies to).
    #[arg(long)]
    pub deployment: Option<String>,
    /// Why, for the record (in the events and the deployment's history).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who asks (default: the caller's identity from STS; $USER on the embedded mode).
    #[arg(long)]
    pub by: Option<String>,
    /// Then wait for the intended end: the deployment succeeded (deploy, retry, promote,
    /// approve, resume), rolled back (abort, rollback), paused (pause). Exit 0 when it
    /// got there, 6 rolled back, 7 failed, 3 refused by the worker, 5 timed out.
    #[arg(long)]
    pub wait: bool,
    /// How it waits.
    #[command(flatten)]
    pub waiting: Waiting,
    /// Where.
    #[command(flatten)]
    pub target: Target,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The operator subcommands.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Deploy an image to a service (puts a `Deploy Requested` operator event), then
    /// wait until the worker started it (or queued it, or refused it) and print the
    /// deployment id.
    #[command(
        after_help = "Examples:\n  bluegreen deploy web --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/web:release-42 --wait\n  bluegreen deploy web --image web@sha256:<64 hex> --reason 'hotfix 1234'\n  bluegreen deploy shop --image v2 --local          # the embedded mode: a version label\n  bluegreen deploy web --previous --wait            # back to the image before the live one"
    )]
    Deploy {
        /// `repository:tag` or `repository@sha256:…` (the embedded mode: a version).
        #[arg(
            long,
            required_unless_present = "previous",
            conflicts_with = "previous"
        )]
        image: Option<String>,
        /// Deploy the image that was live before the live one (from the history): the way
        /// back once the old colour is no longer warm.
        #[arg(long)]
        previous: bool,
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Skip to 100 % (or past a step that waits for promote).
    #[command(
        after_help = "Examples:\n  bluegreen promote web\n  bluegreen promote web --skip-bake --reason 'verified by hand' --wait"
    )]
    Promote {
        /// Also skip the bake.
        #[arg(long)]
        skip_bake: bool,
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Pass the approval gate of a deployment awaiting approval.
    #[command(after_help = "Example:\n  bluegreen approve web --reason 'change 4711 approved'")]
    Approve {
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Stop a deployment's clock (alarms still roll back).
    #[command(after_help = "Example:\n  bluegreen pause web --reason 'looking at latency' --wait")]
    Pause {
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Start a paused deployment's clock again.
    #[command(after_help = "Example:\n  bluegreen resume web")]
    Resume {
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Roll the deployment in progress back (`--wait` exits 0 once it is rolled back).
    #[command(after_help = "Example:\n  bluegreen abort web --reason 'wrong image' --wait")]
    Abort {
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Roll back the deployment in progress, or the last one while its old colour is warm
    /// (`--wait` exits 0 once it is rolled back).
    #[command(
        after_help = "Example:\n  bluegreen rollback web --reason 'errors after release' --wait"
    )]
    Rollback {
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// The emergency traffic switch: make a colour live, carried out by the worker with
    /// rollback priority. A deployment in progress is rolled back to it (or a success
    /// whose old colour it is, while warm); otherwise the colour is scaled to the live
    /// task count, awaited until its targets are healthy (bounded by the service's green
    /// timeout; refused if not, production unchanged), given every production rule, read
    /// back and recorded as live, so drift handling keeps it and the next deployment goes
    /// to the other colour. `--wait` exits 0 once the colour is live.
    #[command(
        after_help = "Examples:\n  bluegreen switch web --to blue --reason 'green 5xx after release' --wait\n  bluegreen switch web --to green --force --wait   # do not wait for healthy targets"
    )]
    Switch {
        /// The colour to make live.
        #[arg(long, value_parser = parse_color)]
        to: Color,
        /// Move every rule without waiting for the colour's healthy targets.
        #[arg(long)]
        force: bool,
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Deploy the image of the last deployment again when it rolled back or failed.
    #[command(after_help = "Example:\n  bluegreen retry web --wait")]
    Retry {
        /// Common options.
        #[command(flatten)]
        args: ActionArgs,
    },
    /// Phase, step, weights written and read from the rule now, next step, alarms, queued
    /// image, last deployment.
    #[command(after_help = "Examples:\n  bluegreen status\n  bluegreen status web --output json")]
    Status {
        /// Only this service.
        service: Option<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// A service's deployments, newest first: outcome, images, duration, reason.
    #[command(after_help = "Example:\n  bluegreen history web --limit 5 --output json")]
    History {
        /// The service.
        service: String,
        /// At most this many.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Where.
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Follow a deployment until it ends: exit 0 on Succeeded, 6 on RolledBack, 7 on
    /// Failed, 5 when --timeout runs out, 3 when the image's deployment was refused.
    #[command(
        after_help = "Examples:\n  bluegreen watch web\n  bluegreen watch web --image \"$DIGEST\" --timeout 45m   # in a CI pipeline, after the push\n  bluegreen watch web --deployment web-12 --output json"
    )]
    Watch {
        /// The service.
        service: String,
        /// The deployment (default: the one in progress, else the last one).
        #[arg(long, conflicts_with = "image")]
        deployment: Option<String>,
        /// The deployment of this image: a tag, `repository:tag`, `repository@sha256:…`
        /// or `sha256:…`. Waits for it to start (--start-timeout), then follows it.
        #[arg(long)]
        image: Option<String>,
        /// How it waits.
        #[command(flatten)]
        waiting: Waiting,
        /// Where.
        #[command(flatten)]
        target: Target,
        /// Output format (json: one object per change, newline-delimited).
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Runs `command` and returns its exit code; prints an error as one line.
pub async fn run(command: OperatorCommand, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let result = match command {
        OperatorCommand::Status {
            service,
            target,
            output,
        } => match open(&target).await {
            Ok(console) => status(&console, service.as_deref(), output, out).await,
            Err(e) => Err(e),
        },
        OperatorCommand::History {
            service,
            limit,
            target,
            output,
        } => match open(&target).await {
            Ok(console) => history(&console, &service, limit, output, out).await,
            Err(e) => Err(e),
        },
        OperatorCommand::Watch {
            service,
            deployment,
            image,
            waiting,
            target,
            output,
        } => {
            watch_command(
                service, deployment, image, waiting, target, output, tty, out,
            )
            .await
        }
        OperatorCommand::Deploy {
            image: None,
            previous: true,
            args,
        } => match open(&args.target).await {
            Ok(console) => match previous_image(&console, &args.service).await {
                Ok(image) => act(&console, Verb::Deploy { image }, args, tty, out).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        action => match verb_of(action) {
            Some((verb, args)) => match open(&args.target).await {
                Ok(console) => act(&console, verb, args, tty, out).await,
                Err(e) => Err(e),
            },
            None => Ok(exit::USAGE),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {}", e.to_string().replace('\n', " "));
            match e {
                ConsoleError::Refused(super::actions::Refusal::Invalid(_))
                | ConsoleError::Config(_) => exit::INVALID,
                ConsoleError::Refused(_) => exit::REFUSED,
                ConsoleError::Unreachable(_) => exit::UNREACHABLE,
            }
        }
    }
}

fn verb_of(command: OperatorCommand) -> Option<(Verb, ActionArgs)> {
    Some(match command {
        OperatorCommand::Deploy {
            image: Some(image),
            args,
            ..
        } => (Verb::Deploy { image }, args),
        OperatorCommand::Promote { skip_bake, args } => {
            (Verb::Act(Action::Promote { skip_bake }), args)
        }
        OperatorCommand::Approve { args } => (Verb::Act(Action::Approve), args),
        OperatorCommand::Pause { args } => (Verb::Act(Action::Pause), args),
        OperatorCommand::Resume { args } => (Verb::Act(Action::Resume), args),
        OperatorCommand::Abort { args } => (Verb::Act(Action::Abort), args),
        OperatorCommand::Rollback { args } => (Verb::Act(Action::Rollback), args),
        OperatorCommand::Retry { args } => (Verb::Act(Action::Retry), args),
        OperatorCommand::Switch { to, force, args } => {
            (Verb::Act(Action::Switch { to, force }), args)
        }
        OperatorCommand::Deploy { image: None, .. }
        | OperatorCommand::Status { .. }
        | OperatorCommand::History { .. }
        | OperatorCommand::Watch { .. } => return None,
    })
}

/// The image that was live before the live one: what the newest success that put the
/// live image there replaced.
async fn previous_image(console: &Console, service: &str) -> Result<String, ConsoleError> {
    let live = console.state(service).await?.live_image;
    let history = console.history(service, 50).await?;
    history
        .iter()
        .filter(|d| d.phase == crate::flow::Phase::Succeeded)
        .find(|d| live.as_deref().is_none_or(|l| l == d.to_image))
        .and_then(|d| d.from_image.clone())
        .ok_or_else(|| {
            super::actions::Refusal::Nothing(format!(
                "{service}: no earlier image is known (no success in the last 50 deployments replaced the live image); deploy one with --image"
            ))
            .into()
        })
}

/// Opens the console `target` names.
async fn open(target: &Target) -> Result<Console, ConsoleError> {
    if target.local {
        let path = target
            .config
            .clone()
            .unwrap_or_else(|| "bluegreen.local.toml".into());
        let config = crate::local::LocalConfig::load(&path)
            .map_err(|e| ConsoleError::Config(e.to_string()))?;
        return Console::local(&config, crate::ports::system_clock());
    }
    let config = Config::from_file_or_env(target.config.as_deref().map(Path::new))
        .map_err(ConsoleError::Config)?;
    Ok(Console::aws(&config).await)
}

async fn act(
    console: &Console,
    verb: Verb,
    args: ActionArgs,
    tty: bool,
    out: &mut dyn Write,
) -> Result<u8, ConsoleError> {
    let requested_by = match args.by {
        Some(by) => by,
        None => console.caller().await?,
    };
    let request = Request {
        service: args.service.clone(),
        verb,
        deployment: args.deployment.clone(),
        reason: args.reason,
        requested_by,
    };
    let id = console.send(&request).await?;
    let sent = format!("event:{id}");
    let starts = matches!(request.verb, Verb::Deploy { .. } | Verb::Act(Action::Retry));
    let (pick, aim) = match (&request.verb, args.deployment) {
        (_, _) if starts => (Pick::Request(sent.clone()), Aim::End),
        (Verb::Act(Action::Abort | Action::Rollback), id) => {
            (id.map_or(Pick::Current, Pick::Id), Aim::RolledBack)
        }
        (Verb::Act(Action::Pause), id) => (id.map_or(Pick::Current, Pick::Id), Aim::Paused),
        (Verb::Act(Action::Switch { to, .. }), _) => (Pick::Current, Aim::Live(*to)),
        (_, id) => (id.map_or(Pick::Current, Pick::Id), Aim::End),
    };
    if args.output == Output::Text {
        let _ = writeln!(
            out,
            "{} {}: event {id}",
            request.verb.name(),
            request.service
        );
    }
    let follow = Follow {
        service: args.service.clone(),
        pick,
        aim,
        sent: Some(sent.clone()),
        interval: args.waiting.interval,
        timeout: args.waiting.timeout,
        start_timeout: args.waiting.start_timeout,
        tty,
        json: args.output == Output::Json,
    };
    if args.wait {
        return watch(console, &follow, out).await;
    }
    if !starts || args.waiting.start_timeout.is_zero() {
        if args.output == Output::Json {
            let _ = writeln!(out, "{}", json!({ "event": id }));
        }
        return Ok(exit::OK);
    }
    started(console, &follow, &id, args.output, out).await
}

/// After a `deploy` or `retry` without `--wait`: waits until the worker started the
/// deployment (or queued or refused the request) and says which.
async fn started(
    console: &Console,
    follow: &Follow,
    event: &str,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, ConsoleError> {
    let Pick::Request(key) = &follow.pick else {
        return Ok(exit::OK);
    };
    let begun = tokio::time::Instant::now();
    loop {
        let state = console.state(&follow.service).await?;
        let (status, deployment, refused, code) = match answer(&state, key) {
            Some(Answer::Started(d)) => ("started", Some(d.id.as_str()), None, exit::OK),
            Some(Answer::Queued) => ("queued", None, None, exit::OK),
            Some(Answer::Refused(r)) => ("refused", None, Some(r), exit::REFUSED),
            None if begun.elapsed() >= follow.start_timeout => {
                ("not started", None, None, exit::TIMED_OUT)
            }
            None => {
                tokio::time::sleep(follow.interval).await;
                continue;
            }
        };
        let _ = match output {
            Output::Json => writeln!(
                out,
                "{}",
                json!({
                    "event": event, "deployment": deployment, "status": status,
                    "code": refused.map(|r| &r.code), "reason": refused.map(|r| &r.reason),
                })
            ),
            Output::Text => {
                let what = match (deployment, refused) {
                    (Some(id), _) => format!("deployment {id} started"),
                    (None, Some(r)) => format!("refused by the worker ({}): {}", r.code, r.reason),
                    (None, None) if code == exit::OK => {
                        "queued behind the deployment in progress".into()
                    }
                    (None, None) => format!(
                        "no deployment started within {}; the worker may be down (bluegreen status {})",
                        humantime::format_duration(follow.start_timeout),
                        follow.service
                    ),
                };
                writeln!(out, "{}: {what}", follow.service)
            }
        };
        return Ok(code);
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_command(
    service: String,
    deployment: Option<String>,
    image: Option<String>,
    waiting: Waiting,
    target: Target,
    output: Output,
    tty: bool,
    out: &mut dyn Write,
) -> Result<u8, ConsoleError> {
    let pick = match (deployment, image) {
        (Some(id), _) => Pick::Id(id),
        (None, Some(text)) => {
            Pick::Image(ImageQuery::parse(&text).map_err(super::actions::Refusal::Invalid)?)
        }
        (None, None) => Pick::Current,
    };
    let console = open(&target).await?;
    if let Pick::Image(q) = &pick {
        let Some(s) = console.fleet().service(&service) else {
            console.state(&service).await?; // the unknown-service refusal
            return Ok(exit::REFUSED);
        };
        if let Some(tag) = &q.tag
            && q.digest.is_none()
            && !s.matches_tag(Some(tag))
        {
            let _ = writeln!(
                out,
                "{service}: tag {tag} does not match the service's tag_pattern; a push of it deploys nothing"
            );
            return Ok(exit::REFUSED);
        }
    }
    let follow = Follow {
        service,
        pick,
        aim: Aim::End,
        sent: None,
        interval: waiting.interval,
        timeout: waiting.timeout,
        start_timeout: waiting.start_timeout,
        tty,
        json: output == Output::Json,
    };
    watch(&console, &follow, out).await
}

async fn status(
    console: &Console,
    service: Option<&str>,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, ConsoleError> {
    let names: Vec<String> = match service {
        Some(s) => vec![s.to_string()],
        None => console
            .fleet()
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect(),
    };
    let mut all = Vec::new();
    for name in &names {
        all.push(console.status(name).await?);
    }
    match output {
        Output::Text => {
            for s in &all {
                let _ = write!(out, "{}", render_status(s));
            }
        }
        Output::Json => {
            let _ = writeln!(out, "{}", pretty(&json!({ "services": all })));
        }
    }
    Ok(exit::OK)
}

async fn history(
    console: &Console,
    service: &str,
    limit: usize,
    output: Output,
    out: &mut dyn Write,
) -> Result<u8, ConsoleError> {
    let entries = console.history(service, limit).await?;
    match output {
        Output::Text => {
            let _ = write!(out, "{}", render_history(&entries));
        }
        Output::Json => {
            let document = json!({ "service": service, "deployments": entries });
            let _ = writeln!(out, "{}", pretty(&document));
        }
    }
    Ok(exit::OK)
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
