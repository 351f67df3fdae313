//! The worker's liveness, for the container's health check (`bluegreen health`).
//!
//! The worker's loop records its progress in a [`Pulse`]: every answered receive and every
//! finished message. [`serve`] answers each connection on a loopback address with one
//! JSON line, the [`Report`]; [`probe`] reads it. Nothing touches the file system, so the
//! check runs in a container with a read-only root. A worker is unhealthy when
//!
//! - its loop made no progress for longer than a receive and a message can take
//!   ([`Limits::stuck_after`]: a wedged runtime, a deadlock, a call without a deadline), or
//! - every receive failed for [`Limits::unreachable_after`] (credentials, network, a
//!   deleted queue): a new task gets a new network interface and new credentials, and
//!   ECS replacing it again and again shows as running < desired tasks.
//!
//! A process that cannot answer at all (stopped, out of threads) fails [`probe`]'s
//! deadline. A worker that was told to stop reports `stopping` and counts as healthy.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Where the worker answers health checks unless told otherwise (loopback only).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9469";

/// How long every receive may fail before the worker calls itself unhealthy.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(300);

/// What the worker's loop records of its own progress.
#[derive(Debug)]
pub struct Pulse {
    base: Instant,
    /// Milliseconds since `base` of the last progress.
    progress: AtomicU64,
    /// Milliseconds since `base` + 1 of the first receive failure in a row; 0 = none.
    failing_since: AtomicU64,
    stopping: AtomicBool,
    in_flight: AtomicUsize,
}

impl Default for Pulse {
    fn default() -> Pulse {
        Pulse {
            base: Instant::now(),
            progress: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Pulse {
    fn millis(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A message was finished (or the loop moved on some other way).
    pub fn progressed(&self) {
        self.progress.store(self.millis(), Ordering::Relaxed);
    }

    /// A receive was answered: the queue is reachable.
    pub fn received(&self) {
        self.failing_since.store(0, Ordering::Relaxed);
        self.progressed();
    }

    /// A receive failed; the loop itself still goes on.
    pub fn receive_failed(&self) {
        let now = self.millis();
        let _ = self.failing_since.compare_exchange(
            0,
            now.saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.progressed();
    }

    /// The worker was told to stop.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// How many messages are being worked on.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// The report now, judged by `limits`.
    pub fn report(&self, limits: &Limits) -> Report {
        let now = self.millis();
        let since_progress_ms = now.saturating_sub(self.progress.load(Ordering::Relaxed));
        let failing_for_ms = match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now.saturating_sub(since - 1)),
        };
        let stopping = self.stopping.load(Ordering::Relaxed);
        Report {
            status: judge(
                Duration::from_millis(since_progress_ms),
                failing_for_ms.map(Duration::from_millis),
                stopping,
                limits,
            ),
            since_progress_ms,
            failing_for_ms,
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// When a worker is judged unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// No progress for this long: the loop is wedged.
    pub stuck_after: Duration,
    /// Every receive failed for this long: the queue is out of reach.
    pub unreachable_after: Duration,
}

impl Limits {
    /// The limits for a worker whose receive long-polls `wait`, whose AWS calls take up to
    /// `attempts` attempts of `attempt_timeout`, and whose messages stay hidden
    /// `visibility` while worked on: one full receive or one message's visibility, whichever
    /// is longer, plus a minute.
    pub fn for_worker(
        wait: Duration,
        attempt_timeout: Duration,
        attempts: u32,
        visibility: Duration,
    ) -> Limits {
        let receive = wait + attempt_timeout * attempts.max(1);
        Limits {
            stuck_after: receive.max(visibility) + Duration::from_secs(60),
            unreachable_after: UNREACHABLE_AFTER,
        }
    }
}

/// The worker's state as the health check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Receiving and finishing messages.
    Ok,
    /// Told to stop; finishing what it holds.
    Stopping,
    /// No progress for longer than [`Limits::stuck_after`].
    Stuck,
    /// Every receive failed for longer than [`Limits::unreachable_after`].
    QueueUnreachable,
}

impl Status {
    /// Whether the container is healthy in this state.
    pub fn healthy(self) -> bool {
        matches!(self, Status::Ok | Status::Stopping)
    }
}

/// One health answer: a JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The verdict.
    pub status: Status,
    /// Since the loop last made progress.
    pub since_progress_ms: u64,
    /// Since the first of the receive failures in a row, if the last receive failed.
    pub failing_for_ms: Option<u64>,
    /// Messages being worked on.
    pub in_flight: usize,
}

/// The verdict for a loop last seen making progress `since_progress` ago, whose receives
/// have failed for `failing_for` (if they fail), told to stop or not.
pub fn judge(
    since_progress: Duration,
    failing_for: Option<Duration>,
    stopping: bool,
    limits: &Limits,
) -> Status {
    if stopping {
        Status::Stopping
    } else if since_progress > limits.stuck_after {
        Status::Stuck
    } else if failing_for.is_some_and(|f| f > limits.unreachable_after) {
        Status::QueueUnreachable
    } else {
        Status::Ok
    }
}

/// Answers every connection on `listener` with the pulse's report, until the process ends.
pub async fn serve(listener: TcpListener, pulse: std::sync::Arc<Pulse>, limits: Limits) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: the next accept may work, a hot loop would not help.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let report = pulse.report(&limits);
        tokio::spawn(async move {
            let mut line = serde_json::to_vec(&report).unwrap_or_default();
            line.push(b'\n');
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&line)).await;
        });
    }
}

/// Asks the worker at `addr` for its report, within `deadline`.
pub async fn probe(addr: &str, deadline: Duration) -> Result<Report, String> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("no worker answers on {addr}: {e}"))?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("reading the answer of {addr}: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("not a health report ({e}): {line:?}"))
    };
    tokio::time::timeout(deadline, ask)
        .await
        .map_err(|_| format!("the worker on {addr} did not answer within {deadline:?}"))?
}
