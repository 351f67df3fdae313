//! Child processes of the embedded platform: started from a command template, watched
//! until they exit, stopped with SIGTERM and then SIGKILL after a timeout.
//!
//! No orphans: every child asks the kernel for SIGTERM when `bluegreen` dies
//! (`PR_SET_PDEATHSIG`, checked against a parent that already died), and runs in its own
//! process group so that a terminal's Ctrl-C reaches `bluegreen` alone, which then
//! drains and stops the children in order. The command runs as `sh -c "exec …"`, so the
//! app itself is the child, not a shell around it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

/// What an instance is started with.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The command template.
    pub template: &'a str,
    /// The port to listen on.
    pub port: u16,
    /// Version label.
    pub version: &'a str,
    /// Colour.
    pub color: &'a str,
    /// Where its stdout and stderr go.
    pub log: &'a Path,
}

/// A running (or exited) child.
#[derive(Debug)]
pub struct Instance {
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The version it runs.
    pub version: String,
    exited: watch::Receiver<Option<ExitStatus>>,
}

/// Replaces `{port}`, `{version}` and `{color}` in `template`.
#[must_use]
pub fn render(template: &str, port: u16, version: &str, color: &str) -> String {
    template
        .replace("{port}", &port.to_string())
        .replace("{version}", version)
        .replace("{color}", color)
}

/// A free loopback port (bound, then released for the child to take).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Instance {
    /// Starts one instance.
    ///
    /// # Errors
    /// When the log cannot be opened or the shell cannot be started.
    pub fn start(launch: &Launch<'_>) -> std::io::Result<Instance> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(launch.log)?;
        let command = render(launch.template, launch.port, launch.version, launch.color);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .env("PORT", launch.port.to_string())
            .env("BLUEGREEN_COLOR", launch.color)
            .env("BLUEGREEN_VERSION", launch.version)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        sys::die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or_default();
        let (tx, exited) = watch::channel(None);
        let version = launch.version.to_string();
        tokio::spawn(async move {
            let status = child.wait().await;
            match &status {
                Ok(s) => info!(pid, status = %s, "instance exited"),
                Err(e) => warn!(pid, error = %e, "cannot wait for instance"),
            }
            let _ = tx.send(Some(status.unwrap_or_else(|_| sys::failed())));
        });
        info!(
            pid,
            port = launch.port,
            version,
            color = launch.color,
            "instance started"
        );
        Ok(Instance {
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], launch.port)),
            version,
            exited,
        })
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it is still running.
    #[must_use]
    pub fn alive(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// SIGTERM, then SIGKILL if it has not exited after `timeout`; returns once it exited.
    pub async fn stop(&self, timeout: Duration) {
        let mut exited = self.exited.clone();
        if exited.borrow().is_some() {
            return;
        }
        sys::signal(self.pid, libc::SIGTERM);
        let gone = tokio::time::timeout(timeout, exited.wait_for(Option::is_some))
            .await
            .is_ok();
        if !gone {
            warn!(
                pid = self.pid,
                ?timeout,
                "instance ignored SIGTERM; killing it"
            );
            sys::signal(self.pid, libc::SIGKILL);
            let _ = exited.wait_for(Option::is_some).await;
        }
    }
}

/// The two system calls std does not wrap.
#[allow(unsafe_code)]
mod sys {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    /// Makes the child receive SIGTERM when this process dies.
    pub fn die_with_parent(cmd: &mut tokio::process::Command) {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid); it touches no locks or heap.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died between fork and prctl: nobody will stop us.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::other(
                        "parent exited before the child started",
                    ));
                }
                Ok(())
            });
        }
    }

    /// Sends `signal` to `pid` (ignored when it is gone already).
    pub fn signal(pid: u32, signal: i32) {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return;
        };
        if pid <= 0 {
            return;
        }
        // SAFETY: kill(2) with a positive pid of our own unreaped child; no memory is
        // shared with the callee.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// The status reported when waiting itself failed.
    pub fn failed() -> ExitStatus {
        ExitStatus::from_raw(1 << 8)
    }
}
