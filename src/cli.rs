//! The command line (SPEC §7).
//!
//! Parses the command line and runs the command; the operator commands are in
//! [`crate::operator`]. Exit codes: [`crate::exit`].

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{CONFIG_FILE_ENV, Config};
use crate::contract::{self, Sources};
use crate::exit;
use crate::operator::{OperatorCommand, Output};
use crate::plan;

/// Environment variable naming the CloudWatch namespace of the worker's EMF metrics
/// (default [`crate::telemetry::DEFAULT_NAMESPACE`]).
pub const METRICS_NAMESPACE_ENV: &str = "BLUEGREEN_METRICS_NAMESPACE";

/// Zero-downtime blue-green, canary and linear deployments of ECS Fargate services.
#[derive(Debug, Parser)]
#[command(name = "bluegreen", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print each service's traffic schedule and total duration.
    Plan {
        /// Configuration file (TOML, or JSON when it ends in .json); default: the JSON
        /// document in the BLUEGREEN_CONFIG_JSON environment variable.
        #[arg(long, short, env = CONFIG_FILE_ENV)]
        config: Option<PathBuf>,
        /// Only this service.
        #[arg(long, short)]
        service: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run the worker: consume the queue until SIGTERM (or Ctrl-C), then stop polling,
    /// finish in-flight messages and exit.
    Worker {
        /// Configuration file; default: BLUEGREEN_CONFIG, else BLUEGREEN_CONFIG_JSON.
        #[arg(long, short, env = CONFIG_FILE_ENV)]
        config: Option<PathBuf>,
        /// Messages worked on at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Long-poll wait (at most 20s).
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// Run the reconciler this often (re-drives overdue deployments, finds weight
        /// drift on idle services); one worker of many runs it at a time, under a lease
        /// in the table. 0 turns it off.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        reconcile_every: std::time::Duration,
        /// This worker's identity in service leases (default: host name and process id).
        #[arg(long, env = "BLUEGREEN_WORKER_ID")]
        id: Option<String>,
        /// How long a service lease lasts without renewal: how soon another worker takes
        /// a service over from one that died while carrying out its effects.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        lease: std::time::Duration,
        /// Attempts per AWS call, the first included (the SDK's standard retry mode,
        /// exponential back-off with jitter); 1 turns the SDK's retries off.
        #[arg(long, env = "AWS_MAX_ATTEMPTS", default_value_t = 4)]
        aws_attempts: u32,
        /// How long one attempt of an AWS call may take; must exceed --wait, the long
        /// poll.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        aws_timeout: std::time::Duration,
        /// How long a received message stays hidden before work on it has begun (a
        /// receive whose answer is lost delays its messages by this much; the heartbeat
        /// extends it at a third of it).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        receive_visibility: std::time::Duration,
        /// How long the heartbeat keeps a message hidden while it is worked on (renewed
        /// every third of it): how soon a message whose worker died comes back.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        visibility: std::time::Duration,
        /// Services one reconciler pass works on at once.
        #[arg(long, default_value_t = 4)]
        reconcile_concurrency: usize,
        /// Loopback address where the worker answers `bluegreen health` (the container's
        /// health check); empty turns it off.
        #[arg(long, default_value = crate::health::DEFAULT_ADDR)]
        health_addr: String,
    },
    /// The container's health check: asks the worker on this machine how it is. Prints its
    /// report (JSON); exits 0 when it receives and finishes messages (or is stopping), 1
    /// when its loop is stuck, its queue has been out of reach for 5 minutes, or it does
    /// not answer within --timeout.
    #[command(
        after_help = "Example (the worker's task definition):\n  \"healthCheck\": { \"command\": [\"CMD\", \"/usr/local/bin/bluegreen\", \"health\"] }"
    )]
    Health {
        /// Where the worker answers (its --health-addr).
        #[arg(long, default_value = crate::health::DEFAULT_ADDR)]
        addr: String,
        /// How long to wait for its answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run the whole product on this machine, no AWS account: blue v1 under HTTP load
    /// through the embedded proxy, a clean v2 deployment, then a faulty v3 that the
    /// alarm rolls back; prints a report and exits 0 only if v2 succeeded with zero
    /// failed requests and v3 was rolled back.
    Demo {
        /// Which part to run.
        #[arg(long, value_enum, default_value_t = crate::local::demo::Scenario::Both)]
        scenario: crate::local::demo::Scenario,
        /// Expose the proxy on this address (point your own load tool at it).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Keep the embedded database and logs in this directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Serve Prometheus metrics on this address (`/metrics`).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Keep the proxy serving this long after the scenario ends (for an external
        /// load tool pointed at `--listen`).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        linger: std::time::Duration,
    },
    /// The small HTTP app the demo deploys (`/healthz`, `POST /echo`, anything else
    /// answers `<version> <color>`).
    DemoApp {
        /// Port on 127.0.0.1.
        #[arg(long, env = "PORT")]
        port: u16,
        /// Version it reports.
        #[arg(long, env = "BLUEGREEN_VERSION", default_value = "v1")]
        version: String,
        /// Colour it reports.
        #[arg(long, env = "BLUEGREEN_COLOR", default_value = "blue")]
        color: String,
        /// Share of requests answered with 500.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Apply the error rate only when running one of these versions.
        #[arg(long, value_delimiter = ',')]
        faulty_versions: Vec<String>,
        /// Added latency per request.
        #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
        latency: std::time::Duration,
    },
    /// The embedded worker for your own app: proxy, processes, alarms and worker on this
    /// machine, state in the configured directory. Without a subcommand it runs until
    /// SIGTERM or Ctrl-C.
    Local {
        /// Local configuration file (TOML).
        #[arg(long, short, global = true, default_value = "bluegreen.local.toml")]
        config: PathBuf,
        /// What to do (default: run).
        #[command(subcommand)]
        action: Option<LocalAction>,
    },
    /// Check a configuration or an event file against the schemas.
    Validate {
        /// What to validate.
        #[command(subcommand)]
        what: Validate,
    },
    /// Operator commands.
    #[command(flatten)]
    Operator(OperatorCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  bluegreen completions bash > /etc/bash_completion.d/bluegreen"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_help = "Example:\n  bluegreen man > bluegreen.1 && man ./bluegreen.1")]
    Man,
}

/// `validate` targets.
#[derive(Debug, Subcommand)]
pub enum Validate {
    /// A configuration file.
    Config {
        /// The file.
        file: PathBuf,
    },
    /// An event file (one EventBridge envelope).
    Event {
        /// The file.
        file: PathBuf,
        /// Take the operator and worker `source` names from this configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// `local` subcommands.
#[derive(Debug, Subcommand)]
pub enum LocalAction {
    /// Run the embedded worker (the default).
    Run,
    /// Deploy a version of a service (the running `local` picks it up).
    Deploy {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// The version label (passed to the app as `BLUEGREEN_VERSION` / `{version}`).
        #[arg(long, short)]
        version: String,
    },
    /// Put an event file (an operator event such as `Rollback Requested`) in the inbox.
    Send {
        /// The event file (one EventBridge envelope).
        file: PathBuf,
    },
}

/// Runs a parsed command, writing results to `out` and diagnostics to `err`; returns the
/// exit code.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let result = match cli.command {
        Command::Operator(command) => {
            return match runtime() {
                Ok(rt) => rt.block_on(crate::operator::commands::run(command, out, err)),
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    exit::UNREACHABLE
                }
            };
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "bluegreen", out);
            return exit::OK;
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            return match clap_mangen::Man::new(command).render(out) {
                Ok(()) => exit::OK,
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    exit::INVALID
                }
            };
        }
        Command::Plan {
            config,
            service,
            output,
        } => cmd_plan(config.as_deref(), service.as_deref(), output),
        Command::Validate {
            what: Validate::Config { file },
        } => Config::load(&file)
            .map(|c| {
                format!(
                    "valid: {} ({} service{})",
                    file.display(),
                    c.services.len(),
                    if c.services.len() == 1 { "" } else { "s" }
                )
            })
            .map_err(|e| e.to_string()),
        Command::Validate {
            what: Validate::Event { file, config },
        } => cmd_validate_event(&file, config.as_deref()),
        Command::Worker {
            config,
            concurrency,
            wait,
            reconcile_every,
            id,
            lease,
            aws_attempts,
            aws_timeout,
            receive_visibility,
            visibility,
            reconcile_concurrency,
            health_addr,
        } => Config::from_file_or_env(config.as_deref()).and_then(|config| {
            let d = humantime::format_duration;
            if aws_timeout <= wait {
                return Err(format!(
                    "--aws-timeout ({}) must exceed --wait ({}), the long poll",
                    d(aws_timeout),
                    d(wait)
                ));
            }
            if lease <= crate::runner::LEASE_MARGIN * 2 {
                return Err(format!(
                    "--lease ({}) must exceed {}: effects run {} short of its end",
                    d(lease),
                    d(crate::runner::LEASE_MARGIN * 2),
                    d(crate::runner::LEASE_MARGIN)
                ));
            }
            if receive_visibility < std::time::Duration::from_secs(3)
                || visibility < receive_visibility
            {
                return Err(format!(
                    "--receive-visibility ({}) must be at least 3s and at most --visibility ({})",
                    d(receive_visibility),
                    d(visibility)
                ));
            }
            let options = crate::worker::Options {
                concurrency,
                wait,
                worker_id: id.unwrap_or_else(default_worker_id),
                reconcile_every,
                lease,
                receive_visibility,
                visibility,
                reconcile_concurrency: reconcile_concurrency.max(1),
                ..crate::worker::Options::default()
            };
            let calls = crate::aws::CallPolicy {
                attempts: aws_attempts.max(1),
                attempt_timeout: aws_timeout,
            };
            run_worker(config, options, calls, &health_addr)
        }),
        Command::Health { addr, timeout } => {
            return cmd_health(&addr, timeout, out, err);
        }
        Command::Demo {
            scenario,
            listen,
            state_dir,
            metrics,
            linger,
        } => {
            let options = crate::local::demo::DemoOptions {
                scenario,
                listen,
                state_dir,
                metrics,
                linger,
                ..crate::local::demo::DemoOptions::default()
            };
            return cmd_demo(options, out, err);
        }
        Command::DemoApp {
            port,
            version,
            color,
            error_rate,
            faulty_versions,
            latency,
        } => {
            let faulty = faulty_versions.is_empty() || faulty_versions.contains(&version);
            let app = crate::local::demo_app::DemoApp {
                version,
                color,
                error_rate: if faulty { error_rate } else { 0.0 },
                latency,
            };
            run_demo_app(app, port)
        }
        Command::Local { config, action } => cmd_local(&config, action),
    };
    match result {
        Ok(text) => {
            let _ = write!(out, "{text}");
            if !text.ends_with('\n') {
                let _ = writeln!(out);
            }
            exit::OK
        }
        Err(message) => {
            let _ = writeln!(err, "error: {}", message.replace('\n', " "));
            exit::INVALID
        }
    }
}

fn cmd_plan(
    config: Option<&Path>,
    service: Option<&str>,
    output: Output,
) -> Result<String, String> {
    let config = Config::from_file_or_env(config)?;
    let services: Vec<_> = match service {
        Some(name) => vec![
            config
                .service(name)
                .ok_or_else(|| format!("service {name:?} is not in the configuration"))?,
        ],
        None => config.services.iter().collect(),
    };
    let plans: Vec<plan::ServicePlan> = services.into_iter().map(plan::plan_service).collect();
    match output {
        Output::Text => Ok(plan::render_text(&plans)),
        Output::Json => serde_json::to_string_pretty(&serde_json::json!({ "services": plans }))
            .map_err(|e| e.to_string()),
    }
}

fn cmd_validate_event(file: &Path, config: Option<&Path>) -> Result<String, String> {
    let sources = match config {
        Some(path) => {
            let c = Config::load(path).map_err(|e| e.to_string())?;
            Sources {
                own: c.worker.source,
                manual: c.worker.manual_source,
            }
        }
        None => Sources::default(),
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let msg = contract::parse_str(&text, &sources).map_err(|e| e.to_string())?;
    let kind = format!("{} from {}", msg.envelope.detail_type, msg.envelope.source);
    Ok(match msg.ignorable() {
        Some(why) => format!("valid: {kind} (the worker would ignore it: {why})"),
        None => format!("valid: {kind}"),
    })
}

/// Stack of each runtime thread. An unoptimized build keeps every temporary of a poll
/// in its own stack slot, and a message's poll goes through the worker, the runner and
/// an AWS SDK call (its deserializers alone take hundreds of kilobytes there); only the
/// pages touched count towards the resident size.
pub const THREAD_STACK: usize = 16 * 1024 * 1024;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn cmd_demo(
    options: crate::local::demo::DemoOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let scenario = options.scenario;
    // Ctrl-C / SIGTERM reach the demo as `stop`: it stops everything in order and
    // removes its temporary state directory itself.
    let result = match runtime() {
        Ok(rt) => {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            rt.spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            });
            let result = rt.block_on(crate::local::demo::run(
                options,
                crate::ports::system_clock(),
                out,
                stopped,
            ));
            drop(rt);
            result
        }
        Err(e) => Err(anyhow::anyhow!(e)),
    };
    match result {
        // The report is printed already.
        Ok(report) if report.passed(scenario) => exit::OK,
        Ok(_) => exit::INVALID,
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            exit::INVALID
        }
    }
}

fn run_demo_app(app: crate::local::demo_app::DemoApp, port: u16) -> Result<String, String> {
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        crate::local::demo_app::run(app, listener, stopped).await;
        Ok(String::new())
    })
}

fn cmd_local(path: &Path, action: Option<LocalAction>) -> Result<String, String> {
    use crate::local::{LocalConfig, LocalDb, runtime as rt};
    let config = LocalConfig::load(path).map_err(|e| e.to_string())?;
    let clock = crate::ports::system_clock();
    let open = |config: &LocalConfig| {
        std::fs::create_dir_all(&config.local.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", config.local.state_dir.display()))?;
        LocalDb::open(
            &rt::db_path(&config.local.state_dir),
            clock.clone(),
            rt::queue_options(),
        )
        .map_err(|e| e.to_string())
    };
    match action.unwrap_or(LocalAction::Run) {
        LocalAction::Run => runtime()?.block_on(async {
            let runtime = rt::Runtime::start(&config, clock.clone())
                .await
                .map_err(|e| format!("{e:#}"))?;
            for s in &config.services {
                if let Some(addr) = runtime.proxy_addr(&s.name) {
                    tracing::info!(service = %s.name, %addr, "serving");
                }
            }
            let mut events = runtime.local.bus.subscribe();
            let console = tokio::spawn(async move {
                while let Ok(entry) = events.recv().await {
                    println!("{}", crate::local::bus::console_line(&entry));
                }
            });
            shutdown_signal().await;
            console.abort();
            tracing::info!("shutdown requested");
            runtime.shutdown().await;
            Ok("stopped".into())
        }),
        LocalAction::Deploy { service, version } => {
            if config.service(&service).is_none() {
                return Err(format!("service {service:?} is not in {}", path.display()));
            }
            let db = open(&config)?;
            let who = std::env::var("USER").unwrap_or_else(|_| "local".into());
            let (image, _) = runtime()?
                .block_on(rt::enqueue_deploy(&db, &clock, &service, &version, &who))
                .map_err(|e| e.to_string())?;
            Ok(format!("queued: deploy {service} {version} ({image})"))
        }
        LocalAction::Send { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            // Put now, as PutEvents stamps `time`: the worker refuses operator events
            // older than an hour. Anything that is not a JSON object goes as it is (the
            // worker rejects it with a reason).
            let text = match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(mut event) if event.get("time").is_some() => {
                    event["time"] = clock().rfc3339().into();
                    event.to_string()
                }
                _ => text,
            };
            let db = open(&config)?;
            runtime()?
                .block_on(crate::ports::Inbox::send(
                    &db,
                    text,
                    std::time::Duration::ZERO,
                ))
                .map_err(|e| e.to_string())?;
            Ok(format!("queued: {}", file.display()))
        }
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the AWS worker until SIGTERM or Ctrl-C.
fn cmd_health(
    addr: &str,
    timeout: std::time::Duration,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let report = runtime().and_then(|rt| rt.block_on(crate::health::probe(addr, timeout)));
    match report {
        Ok(report) => {
            let _ = writeln!(out, "{}", serde_json::json!(report));
            if report.status.healthy() {
                exit::OK
            } else {
                exit::INVALID
            }
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            exit::INVALID
        }
    }
}

fn run_worker(
    config: Config,
    options: crate::worker::Options,
    calls: crate::aws::CallPolicy,
    health_addr: &str,
) -> Result<String, String> {
    let limits = crate::health::Limits::for_worker(
        options.wait,
        calls.attempt_timeout,
        calls.attempts,
        options.visibility,
    );
    runtime()?.block_on(async move {
        let namespace = std::env::var(METRICS_NAMESPACE_ENV)
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| crate::telemetry::DEFAULT_NAMESPACE.to_string());
        let emf = crate::telemetry::init_emf(&namespace)
            .inspect_err(|e| tracing::warn!(error = %e, "metrics are off"))
            .ok();
        let aws = crate::aws::Aws::from_env(&config, calls).await;
        let worker = crate::worker::Worker::new(
            std::sync::Arc::new(aws),
            crate::fleet::Fleet::from(&config),
            crate::ports::system_clock(),
            options,
        );
        if !health_addr.is_empty() {
            match tokio::net::TcpListener::bind(health_addr).await {
                Ok(listener) => {
                    tokio::spawn(crate::health::serve(listener, worker.pulse(), limits));
                }
                Err(e) => tracing::warn!(
                    addr = health_addr,
                    error = %e,
                    "the health check has no answer: cannot listen"
                ),
            }
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested");
            let _ = stop.send(true);
        });
        worker.run(stopped).await;
        if let Some(emf) = emf {
            emf.flush();
        }
    });
    Ok("worker stopped".into())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
