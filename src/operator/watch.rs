//! `watch` and every `--wait`: follow one deployment until it reaches the end the command
//! aimed at, and exit with a code that says which end it was (see [`crate::exit`]).
//!
//! What is followed is chosen once and never changes: the deployment a `deploy` or `retry`
//! asked for (matched by the request's event id, never "the next one to start"), the
//! deployment of an image (`watch --image`), a named deployment, or the one in progress
//! (else the last). A request the worker refused ends the wait at once with its reason; a
//! deployment that does not start within the start timeout ends it with [`exit::TIMED_OUT`].

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::exit;
use crate::flow::{Color, Deployment, Phase, RejectedInput, ServiceState};

use super::console::{Console, ConsoleError};
use super::status::{DeploymentView, Status, split_bar};

/// Which deployment to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The one in progress, else the last one.
    Current,
    /// This deployment id.
    Id(String),
    /// The deployment the input with this dedup key started (`event:<id>`).
    Request(String),
    /// The deployment of this image.
    Image(ImageQuery),
}

/// What the command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aim {
    /// The deployment's end: exit 0 on `Succeeded`, [`exit::ROLLED_BACK`],
    /// [`exit::FAILED`].
    End,
    /// A rollback the command asked for (`abort`, `rollback`): exit 0 on `RolledBack`.
    RolledBack,
    /// A pause the command asked for: exit 0 once the deployment is paused.
    Paused,
    /// A switch the command asked for: exit 0 once the deployment it ended or started
    /// leaves this colour live (rolled back to it, or switched to it).
    Live(Color),
}

/// What `watch` follows and how.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The service.
    pub service: String,
    /// Which deployment.
    pub pick: Pick,
    /// Which end counts as success.
    pub aim: Aim,
    /// The dedup key of the action this command sent, if any: the wait ends as soon as
    /// the worker refuses it, and [`Aim::RolledBack`] and [`Aim::Paused`] count only after
    /// the worker applied it.
    pub sent: Option<String>,
    /// How often to read the state.
    pub interval: Duration,
    /// Give up after this long ([`exit::TIMED_OUT`]); zero waits for ever.
    pub timeout: Duration,
    /// Give up when the deployment asked for has not started (or the action has not been
    /// applied) after this long.
    pub start_timeout: Duration,
    /// Redraw one line (a terminal) instead of printing one line per change.
    pub tty: bool,
    /// One JSON object per change instead of text.
    pub json: bool,
}

/// An image as an operator or a pipeline names it: a tag, `repository:tag`,
/// `registry/repository:tag`, `repository@sha256:…` or a bare `sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageQuery {
    /// The repository, with or without registry, when given.
    pub repository: Option<String>,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The digest, when given.
    pub digest: Option<String>,
}

impl ImageQuery {
    /// Reads `text`.
    ///
    /// # Errors
    /// Empty, or a digest that is not `sha256:` and 64 hex digits.
    pub fn parse(text: &str) -> Result<ImageQuery, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("--image is empty".into());
        }
        let (name, digest) = match text.rsplit_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None if text.starts_with("sha256:") => ("", Some(text)),
            None => (text, None),
        };
        if let Some(d) = digest
            && !crate::flow::ImageRef::is_digest(d)
        {
            return Err(format!(
                "{d:?} is not a digest (sha256: and 64 lower-case hex digits)"
            ));
        }
        // A ':' after the last '/' starts the tag; one before it is a registry's port.
        let (repository, tag) = match name.rfind(':') {
            Some(i) if name[i..].find('/').is_none() => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        let (repository, tag) = match (repository, tag, digest) {
            // A bare word is a tag (what a pipeline pushed).
            (r, None, None) if !r.contains('/') => (None, Some(r)),
            (r, t, _) => ((!r.is_empty()).then_some(r), t),
        };
        Ok(ImageQuery {
            repository: repository.map(str::to_string),
            tag: tag.filter(|t| !t.is_empty()).map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// Whether a deployment of `pinned` (`repository@digest`), pushed or asked for as
    /// `tag`, is this image.
    #[must_use]
    pub fn matches(&self, pinned: &str, tag: Option<&str>) -> bool {
        let (repository, digest) = match pinned.rsplit_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (pinned.rsplit_once(':').map_or(pinned, |(r, _)| r), None),
        };
        let repository_ok = self
            .repository
            .as_deref()
            .is_none_or(|want| repository == want || repository.ends_with(&format!("/{want}")));
        let image_ok = match (&self.digest, &self.tag) {
            (Some(want), _) => digest == Some(want.as_str()),
            (None, Some(want)) => tag == Some(want.as_str()),
            (None, None) => false,
        };
        repository_ok && image_ok
    }
}

/// How a followed deployment or request stands after one look.
enum Look<'s> {
    /// Nothing to follow yet: not started, or not applied. `accepted` once the worker
    /// took the request (a deployment queued behind another one): from then on only
    /// `--timeout` bounds the wait.
    Waiting {
        /// The worker took the request.
        accepted: bool,
    },
    /// The worker refused the request.
    Refused(String),
    /// This deployment, and whether the aim is reached (`Some(code)`).
    At(&'s DeploymentView, Option<u8>),
}

fn rejection<'a>(state: &'a ServiceState, key: &str) -> Option<&'a RejectedInput> {
    state.rejected.iter().rev().find(|r| r.key == key)
}

/// What the worker made of a `deploy` or `retry` request, once it took it up.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'s> {
    /// It started this deployment.
    Started(&'s Deployment),
    /// It queued the image behind the deployment in progress.
    Queued,
    /// It refused the request.
    Refused(&'s RejectedInput),
}

/// The worker's answer to the request whose dedup key is `key`, if it answered yet.
#[must_use]
pub fn answer<'s>(state: &'s ServiceState, key: &str) -> Option<Answer<'s>> {
    let started = state
        .active
        .iter()
        .chain(state.last.iter())
        .find(|d| d.request.as_deref() == Some(key));
    let queued = state
        .queued
        .as_ref()
        .is_some_and(|q| q.request.as_deref() == Some(key));
    match (started, queued) {
        (Some(d), _) => Some(Answer::Started(d)),
        (None, true) => Some(Answer::Queued),
        (None, false) => rejection(state, key).map(Answer::Refused),
    }
}

fn end_code(phase: Phase) -> Option<u8> {
    match phase {
        Phase::Succeeded => Some(exit::OK),
        Phase::RolledBack => Some(exit::ROLLED_BACK),
        Phase::Failed => Some(exit::FAILED),
        _ => None,
    }
}

fn look<'s>(follow: &Follow, state: &ServiceState, status: &'s Status) -> Look<'s> {
    let sent = follow.sent.as_deref();
    if let Some(r) = sent.and_then(|k| rejection(state, k)) {
        return Look::Refused(format!("the worker refused it ({}): {}", r.code, r.reason));
    }
    let applied = sent.is_none_or(|k| state.recent_keys.iter().any(|r| r == k));
    let views = || {
        [status.active.as_ref(), status.last.as_ref()]
            .into_iter()
            .flatten()
    };
    let found = match &follow.pick {
        Pick::Current => status.deployment(None),
        Pick::Id(id) => status.deployment(Some(id)),
        Pick::Request(key) => views().find(|d| d.request.as_deref() == Some(key.as_str())),
        Pick::Image(q) => {
            let found = views().find(|d| q.matches(&d.to_image, d.to_tag.as_deref()));
            if found.is_none()
                && let Some(r) = state.rejected.iter().rev().find(|r| {
                    r.image
                        .as_deref()
                        .is_some_and(|i| q.matches(i, i.rsplit_once(':').map(|(_, t)| t)))
                })
            {
                return Look::Refused(format!(
                    "the worker refused its deployment ({}): {}",
                    r.code, r.reason
                ));
            }
            found
        }
    };
    let queued = match &follow.pick {
        Pick::Request(key) => matches!(answer(state, key), Some(Answer::Queued)),
        Pick::Image(want) => state
            .queued
            .as_ref()
            .is_some_and(|q| want.matches(&q.image.pinned(), q.image.tag.as_deref())),
        _ => false,
    };
    let Some(d) = found.filter(|_| applied) else {
        return Look::Waiting {
            accepted: queued || (sent.is_some() && applied),
        };
    };
    let code = match follow.aim {
        Aim::End => end_code(d.phase),
        Aim::RolledBack => match d.phase {
            Phase::RolledBack => Some(exit::OK),
            Phase::Failed => Some(exit::FAILED),
            // Applied, and yet it ended well: the rollback came too late.
            Phase::Succeeded if d.finished_at.is_some() && state.active.is_none() => {
                Some(exit::REFUSED)
            }
            _ => None,
        },
        Aim::Paused if d.paused => Some(exit::OK),
        Aim::Paused => end_code(d.phase),
        Aim::Live(color) => match d.phase {
            Phase::RolledBack if d.target != color => Some(exit::OK),
            Phase::Succeeded if d.target == color => Some(exit::OK),
            Phase::RolledBack | Phase::Succeeded => Some(exit::REFUSED),
            Phase::Failed => Some(exit::FAILED),
            _ => None,
        },
    };
    Look::At(d, code)
}

/// One line (or JSON object) of the followed deployment as it is now.
fn describe(d: &DeploymentView, status: &Status, now: &str, json: bool) -> String {
    let weights = status.rule_weights.unwrap_or(d.weights);
    let firing: Vec<&str> = status
        .alarms
        .iter()
        .filter(|a| a.state == "ALARM")
        .map(|a| a.name.as_str())
        .collect();
    if json {
        return json!({
            "time": now,
            "deployment": d.id,
            "phase": d.phase,
            "paused": d.paused,
            "step": d.step,
            "weights": weights,
            "alarmsFiring": firing,
            "reason": d.reason,
        })
        .to_string();
    }
    format!(
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
    )
}

/// How long reads may keep failing before `watch` gives up with
/// [`exit::UNREACHABLE`]: a throttled or dropped call does not end a pipeline's wait.
pub const READ_FAILURES_TOLERATED: Duration = Duration::from_secs(60);

/// Follows a deployment as `follow` says and returns the exit code; plain lines when
/// stdout is not a terminal, a live split bar when it is, one JSON object per change with
/// `json`.
///
/// # Errors
/// Nothing to follow (a named deployment that is neither in progress nor the last), or
/// the state cannot be read for [`READ_FAILURES_TOLERATED`].
pub async fn watch(
    console: &Console,
    follow: &Follow,
    out: &mut dyn Write,
) -> Result<u8, ConsoleError> {
    let started = tokio::time::Instant::now();
    let mut last_line = String::new();
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut seen_once = false;
    loop {
        match read(console, &follow.service).await {
            Ok((state, status)) => {
                failing_since = None;
                match look(follow, &state, &status) {
                    Look::Refused(why) => {
                        let _ = writeln!(out, "{}: {why}", follow.service);
                        return Ok(exit::REFUSED);
                    }
                    Look::At(d, code) => {
                        seen_once = true;
                        let line = describe(d, &status, &console.now().rfc3339(), follow.json);
                        if line != last_line {
                            if follow.json {
                                let _ = writeln!(out, "{line}");
                            } else if follow.tty {
                                let _ = write!(out, "\r\x1b[2K{line}");
                            } else {
                                let _ = writeln!(out, "{} {line}", console.now().rfc3339());
                            }
                            let _ = out.flush();
                            last_line = line;
                        }
                        if let Some(code) = code {
                            if follow.json {
                                return Ok(code);
                            }
                            if follow.tty {
                                let _ = writeln!(out);
                            }
                            let reason = d
                                .reason
                                .as_deref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default();
                            let _ = writeln!(out, "{} {}{reason}", d.id, d.phase);
                            return Ok(code);
                        }
                    }
                    Look::Waiting { accepted } => {
                        if let Some(code) = nothing_to_follow(follow, &state, out)? {
                            return Ok(code);
                        }
                        if !seen_once && !accepted && started.elapsed() >= follow.start_timeout {
                            let _ = writeln!(
                                out,
                                "{}: {} after {}; the worker may be down or the event may not have reached its queue (bluegreen status {}; the bluegreen-oldest-message runbook)",
                                follow.service,
                                match &follow.pick {
                                    Pick::Image(_) => "no deployment of the image started",
                                    Pick::Request(_) => "the deployment asked for did not start",
                                    _ => "the action was not applied",
                                },
                                humantime::format_duration(follow.start_timeout),
                                follow.service,
                            );
                            return Ok(exit::TIMED_OUT);
                        }
                    }
                }
            }
            Err(ConsoleError::Unreachable(e)) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= READ_FAILURES_TOLERATED {
                    return Err(ConsoleError::Unreachable(e));
                }
                tracing::warn!(error = %e, "cannot read the state; trying again");
            }
            Err(e) => return Err(e),
        }
        if !follow.timeout.is_zero() && started.elapsed() >= follow.timeout {
            if follow.tty && !follow.json {
                let _ = writeln!(out);
            }
            let _ = writeln!(
                out,
                "gave up after {}; the deployment may still be running",
                humantime::format_duration(follow.timeout)
            );
            return Ok(exit::TIMED_OUT);
        }
        tokio::time::sleep(follow.interval).await;
    }
}

async fn read(console: &Console, service: &str) -> Result<(ServiceState, Status), ConsoleError> {
    let state = console.state(service).await?;
    let status = console.status_of(&state).await;
    Ok((state, status))
}

/// When waiting cannot end well: a named deployment that is not there, or no deployment
/// at all to follow.
fn nothing_to_follow(
    follow: &Follow,
    state: &ServiceState,
    out: &mut dyn Write,
) -> Result<Option<u8>, ConsoleError> {
    let nothing = |text: String| Err(super::actions::Refusal::Nothing(text).into());
    match &follow.pick {
        Pick::Id(id) if follow.sent.is_none() => nothing(format!(
            "no deployment {id} of {} in progress or last",
            follow.service
        )),
        Pick::Current if follow.sent.is_none() => {
            nothing(format!("{} has no deployment to watch", follow.service))
        }
        Pick::Image(q) if state.active.is_none() => {
            // Already live without a deployment of ours to show for it.
            let live = state
                .live_image
                .as_deref()
                .is_some_and(|i| q.matches(i, None));
            if live && q.digest.is_some() {
                let _ = writeln!(
                    out,
                    "{}: the image is already live; a push of the same digest deploys nothing",
                    follow.service
                );
                return Ok(Some(exit::REFUSED));
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}
