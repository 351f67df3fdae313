//! The operator commands of the command line: `deploy`, `promote`, `approve`, `pause`,
//! `resume`, `abort`, `rollback`, `retry`, `status`, `history`, `watch`, `completions`,
//! `man` (the work is in [`crate::operate`]).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{
    ActionArgs, Cli, Command, EXIT_INVALID, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, Output,
    Target, load_config, runtime,
};
use crate::flow::Action;
use crate::operate::{Console, ConsoleError, Request, Status, Verb, exit_code, split_bar};

/// Runs `cli` if it is an operator command and returns its exit code; gives any other
/// command back.
///
/// # Errors
/// The command is not an operator command (it is returned unchanged).
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, Box<Cli>> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (verb, args) = match cli.command {
        Command::Deploy { image, args } => (Verb::Deploy { image }, args),
        Command::Promote { skip_bake, args } => (Verb::Act(Action::Promote { skip_bake }), args),
        Command::Approve { args } => (Verb::Act(Action::Approve), args),
        Command::Pause { args } => (Verb::Act(Action::Pause), args),
        Command::Resume { args } => (Verb::Act(Action::Resume), args),
        Command::Abort { args } => (Verb::Act(Action::Abort), args),
        Command::Rollback { args } => (Verb::Act(Action::Rollback), args),
        Command::Retry { args } => (Verb::Act(Action::Retry), args),
        Command::Status {
            service,
            target,
            output,
        } => {
            return Ok(with_console(&target, err, |console| async move {
                status(&console, service.as_deref(), output, out).await
            }));
        }
        Command::History {
            service,
            limit,
            target,
            output,
        } => {
            return Ok(with_console(&target, err, |console| async move {
                history(&console, &service, limit, output, out).await
            }));
        }
        Command::Watch {
            service,
            deployment,
            interval,
            timeout,
            target,
        } => {
            return Ok(with_console(&target, err, |console| async move {
                let follow = Follow {
                    service: &service,
                    deployment,
                    after: None,
                    interval,
                    timeout,
                    tty,
                };
                watch(&console, follow, out).await
            }));
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "bluegreen", out);
            return Ok(EXIT_OK);
        }
        Command::Man => {
            return Ok(match clap_mangen::Man::new(Cli::command()).render(out) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    EXIT_UNREACHABLE
                }
            });
        }
        other => return Err(Box::new(Cli { command: other })),
    };
    Ok(with_console(
        &args.target.clone(),
        err,
        |console| async move { act(&console, verb, args, tty, out).await },
    ))
}

/// Opens the console `target` names and runs `f` on it in a runtime; prints an error as
/// one line and maps it to its exit code.
fn with_console<'a, F, Fut>(target: &Target, err: &mut dyn Write, f: F) -> u8
where
    F: FnOnce(Console) -> Fut,
    Fut: std::future::Future<Output = Result<u8, ConsoleError>> + 'a,
{
    let result = runtime()
        .map_err(ConsoleError::Unreachable)
        .and_then(|rt| rt.block_on(async { f(open(target).await?).await }));
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {}", e.to_string().replace('\n', " "));
            match e {
                ConsoleError::Refused(_) => EXIT_REFUSED,
                ConsoleError::Unreachable(_) => EXIT_UNREACHABLE,
            }
        }
    }
}

async fn open(target: &Target) -> Result<Console, ConsoleError> {
    if target.local {
        let path = target
            .config
            .clone()
            .unwrap_or_else(|| "bluegreen.local.toml".into());
        let config = crate::local::LocalConfig::load(&path)
            .map_err(|e| ConsoleError::Unreachable(e.to_string()))?;
        return Console::local(&config, crate::ports::system_clock());
    }
    let config =
        load_config(target.config.as_deref().map(Path::new)).map_err(ConsoleError::Unreachable)?;
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
    let before = console.state(&args.service).await?;
    let request = Request {
        service: args.service.clone(),
        verb,
        deployment: args.deployment.clone(),
        reason: args.reason,
        requested_by,
    };
    let id = console.send(&request).await?;
    let _ = writeln!(
        out,
        "{} {}: event {id}",
        request.verb.name(),
        request.service
    );
    if !args.wait {
        return Ok(EXIT_OK);
    }
    // A deploy follows the deployment it creates; the others the one they act on.
    let (deployment, after) = match request.verb {
        Verb::Deploy { .. } | Verb::Act(Action::Retry) => (None, Some(before.deployments_started)),
        _ => (args.deployment, None),
    };
    let follow = Follow {
        service: &args.service,
        deployment,
        after,
        interval: Duration::from_secs(1),
        timeout: args.timeout,
        tty,
    };
    watch(console, follow, out).await
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
                let _ = write!(out, "{}", crate::operate::render_status(s));
            }
        }
        Output::Json => {
            let _ = writeln!(out, "{}", json(&serde_json::json!({ "services": all })));
        }
    }
    Ok(EXIT_OK)
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
            let _ = write!(out, "{}", crate::operate::render_history(&entries));
        }
        Output::Json => {
            let document = serde_json::json!({ "service": service, "deployments": entries });
            let _ = writeln!(out, "{}", json(&document));
        }
    }
    Ok(EXIT_OK)
}

fn json(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// What `watch` follows.
struct Follow<'a> {
    service: &'a str,
    /// This deployment; else the active one, else the last one.
    deployment: Option<String>,
    /// Only a deployment numbered above this (one a `deploy` just asked for).
    after: Option<u64>,
    interval: Duration,
    timeout: Duration,
    tty: bool,
}

fn number(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn pick<'s>(
    status: &'s Status,
    deployment: Option<&str>,
    after: Option<u64>,
) -> Option<&'s crate::operate::DeploymentView> {
    match (deployment, after) {
        (Some(id), _) => status.deployment(Some(id)),
        (None, Some(after)) => [status.active.as_ref(), status.last.as_ref()]
            .into_iter()
            .flatten()
            .filter(|d| number(&d.id) > after)
            .min_by_key(|d| number(&d.id)),
        (None, None) => status.deployment(None),
    }
}

/// Follows a deployment until it ends; plain lines when stdout is not a terminal, a live
/// split bar when it is.
async fn watch(
    console: &Console,
    follow: Follow<'_>,
    out: &mut dyn Write,
) -> Result<u8, ConsoleError> {
    let started = tokio::time::Instant::now();
    let mut last_line = String::new();
    let mut followed: Option<String> = follow.deployment.clone();
    loop {
        let status = console.status(follow.service).await?;
        let current = pick(&status, followed.as_deref(), follow.after);
        match current {
            Some(d) => {
                followed.get_or_insert_with(|| d.id.clone());
                let weights = status.rule_weights.unwrap_or(d.weights);
                let firing: Vec<&str> = status
                    .alarms
                    .iter()
                    .filter(|a| a.state == "ALARM")
                    .map(|a| a.name.as_str())
                    .collect();
                let line = format!(
                    "{} {}{} step {}/{} {}{}",
                    d.id,
                    d.phase,
                    if d.paused { " (paused)" } else { "" },
                    d.step.index,
                    d.step.count,
                    split_bar(weights, 20),
                    if firing.is_empty() {
                        String::new()
                    } else {
                        format!(" ALARM: {}", firing.join(", "))
                    }
                );
                if line != last_line {
                    if follow.tty {
                        let _ = write!(out, "\r\x1b[2K{line}");
                    } else {
                        let _ = writeln!(out, "{} {line}", console.now().rfc3339());
                    }
                    let _ = out.flush();
                    last_line = line;
                }
                if let Some(code) = exit_code(d.phase) {
                    if follow.tty {
                        let _ = writeln!(out);
                    }
                    let _ = writeln!(
                        out,
                        "{} {}{}",
                        d.id,
                        d.phase,
                        d.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                    return Ok(code);
                }
            }
            None if follow.deployment.is_some() => {
                return Err(crate::operate::Refusal::Invalid(format!(
                    "no deployment {} of {} in progress or last",
                    follow.deployment.as_deref().unwrap_or_default(),
                    follow.service
                ))
                .into());
            }
            None if follow.after.is_none() => {
                return Err(crate::operate::Refusal::Invalid(format!(
                    "{} has no deployment to watch",
                    follow.service
                ))
                .into());
            }
            None => {} // the requested deployment has not started yet
        }
        if !follow.timeout.is_zero() && started.elapsed() >= follow.timeout {
            let _ = writeln!(
                out,
                "gave up after {}",
                humantime::format_duration(follow.timeout)
            );
            return Ok(EXIT_INVALID);
        }
        tokio::time::sleep(follow.interval).await;
    }
}
