//! Carrying out what a committed decision owes, effect by effect (SPEC §4 invariants 3
//! and 12): a fencing check right before each, a few tries of an effect that fails
//! transiently (they are idempotent), and each result decided on the committed state and
//! committed — with what is still owed — before the next effect runs.

use std::collections::VecDeque;
use std::time::Duration;

use tracing::{error, info, warn};

use super::lease::{Holding, LEASE_MARGIN, Session};
use super::{Runner, log_decision, owed_by};
use crate::fleet::Service;
use crate::flow::{self, CheckOutcome, Effect, Input, Phase, ServiceState};
use crate::ports::{Owed, PortError, PortResult, World, sending_before};

/// Attempts of an effect whose failure is retryable, before it counts as failed.
const EFFECT_ATTEMPTS: u32 = 3;

/// Pause before the n-th retry of an effect: n times this.
const EFFECT_BACKOFF: Duration = Duration::from_millis(250);

/// How carrying out an obligation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drove {
    /// Everything owed was carried out (at the version returned with it).
    Completed,
    /// A newer decision or another lease holder took over; it owns what is left.
    Fenced,
    /// A rollback waits for the lease: forward effects stopped, what is left stays owed.
    Preempted,
}

/// How one effect ended.
enum Attempt {
    Done(Option<Input>),
    Failed(PortError),
    Fenced,
    Preempted,
}

/// Whether `owed` is still to be carried out on `state`: a tick only while the
/// deployment waits for exactly it, any other effect while its deployment is still at
/// the cursor that asked for it (a later decision established what its own step needs).
pub(super) fn is_due(state: &ServiceState, owed: &Owed) -> bool {
    match &owed.effect {
        Effect::ScheduleTick { tick, .. } => flow::decide::waits_for(state, tick),
        effect => state
            .deployment(effect.deployment_id())
            .is_some_and(|d| d.cursor == owed.cursor),
    }
}

/// Whether `effect` belongs to a rollback (a preemption never stops those).
fn is_rollback(state: &ServiceState, effect: &Effect) -> bool {
    state.deployment(effect.deployment_id()).is_some_and(|d| {
        matches!(
            d.phase,
            Phase::RollingBack | Phase::RolledBack | Phase::Failed
        )
    })
}

impl<W: World> Runner<W> {
    /// Runs `owed` in order on `state` (committed at `version`). Results are decided and
    /// committed with what is owed after them; a failure's decision replaces what was
    /// queued. Returns how it ended and the version last committed.
    ///
    /// # Errors
    /// A store failure (a lease check that kept failing, a commit that could not be
    /// judged): what is left stays owed.
    pub(super) async fn drive(
        &self,
        svc: &Service,
        mut state: ServiceState,
        mut version: u64,
        owed: Vec<Owed>,
        session: &mut Session,
    ) -> PortResult<(Drove, u64)> {
        let settings = &svc.settings;
        let mut queue: VecDeque<Owed> = owed.into();
        while let Some(owed) = queue.pop_front() {
            if !is_due(&state, &owed) {
                continue;
            }
            let Owed { effect, cursor } = owed;
            let rollback = is_rollback(&state, &effect);
            let next = match self
                .attempt(svc, version, &effect, cursor, rollback, session)
                .await?
            {
                Attempt::Fenced => {
                    info!(
                        effect = effect.name(),
                        "fenced: a newer decision or another lease holder; stopping"
                    );
                    return Ok((Drove::Fenced, version));
                }
                Attempt::Preempted => {
                    info!(
                        effect = effect.name(),
                        "preempted: a rollback waits for the lease; stopping forward effects"
                    );
                    return Ok((Drove::Preempted, version));
                }
                Attempt::Done(None) => continue,
                Attempt::Done(Some(result)) => result,
                Attempt::Failed(e) => {
                    // A failure counts only while this run still owns the service; a
                    // failed check is the store's failure, never the effect's.
                    match self.hold(svc, version, session, rollback).await? {
                        Holding::Ours(_) => {}
                        Holding::Fenced => {
                            warn!(effect = effect.name(), error = %e, "effect failed after being fenced out");
                            return Ok((Drove::Fenced, version));
                        }
                        Holding::Preempted => return Ok((Drove::Preempted, version)),
                    }
                    // Failed for good (its attempts spent, the lease still ours): the
                    // deployment rolls back over it, and a person should know why.
                    error!(effect = effect.name(), deployment = effect.deployment_id(), error = %e, "effect failed for good");
                    // What was decided after it waits for the failure's own decision.
                    queue.clear();
                    Input::effect_failed(
                        effect.deployment_id(),
                        cursor,
                        effect.name(),
                        e.to_string(),
                        self.now().millis(),
                    )
                }
            };
            // Decided when the result is in, not when the effect began.
            let now = self.now();
            let decided = flow::decide(state.clone(), settings, &next, now);
            if !decided.changed() {
                self.tell(&svc.name, &state, &next, now, &decided);
                continue;
            }
            let mut still = owed_by(&decided);
            still.extend(queue.iter().cloned());
            match self
                .commit(svc, &decided, &next, version, &still, false, session, now)
                .await
            {
                Ok(v) => {
                    log_decision(&next, &decided);
                    self.tell(&svc.name, &state, &next, now, &decided);
                    version = v;
                    queue = still.into();
                    state = decided.state;
                }
                Err(PortError::Conflict) => {
                    info!("fenced: the state moved on while effects ran; stopping");
                    return Ok((Drove::Fenced, version));
                }
                // The result was recorded before (its key is known): nothing to commit.
                Err(PortError::Duplicate) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Drove::Completed, version))
    }

    /// One effect: a fencing check, then the effect under a deadline short of the lease
    /// (the SDK interceptor refuses to send a request past it), tried again after a
    /// retryable failure (under a fresh check) up to [`EFFECT_ATTEMPTS`] times.
    async fn attempt(
        &self,
        svc: &Service,
        version: u64,
        effect: &Effect,
        cursor: u32,
        rollback: bool,
        session: &mut Session,
    ) -> PortResult<Attempt> {
        let mut attempt = 1;
        loop {
            let until = match self.hold(svc, version, session, rollback).await? {
                Holding::Ours(until) => until,
                Holding::Fenced => return Ok(Attempt::Fenced),
                Holding::Preempted => return Ok(Attempt::Preempted),
            };
            // From the clock now: the check itself may have taken seconds (a slow
            // store), and that time is gone from the lease.
            let now = self.now();
            let left = until.since(now);
            let budget = Duration::from_millis(left).saturating_sub(LEASE_MARGIN);
            let send_before = tokio::time::Instant::now() + budget;
            let executed = tokio::time::timeout(
                budget,
                sending_before(send_before, self.execute(svc, effect, cursor, now)),
            )
            .await
            .unwrap_or_else(|_| {
                Err(PortError::Retryable(format!(
                    "still running {} before the lease ends",
                    humantime::format_duration(LEASE_MARGIN)
                )))
            });
            match executed {
                // Effects are idempotent: a transient failure (throttling, a lost
                // answer) is tried again before it counts as the step's failure.
                Err(PortError::Retryable(why)) if attempt < EFFECT_ATTEMPTS => {
                    warn!(effect = effect.name(), attempt, error = %why, "effect failed; trying again");
                    tokio::time::sleep(EFFECT_BACKOFF * attempt).await;
                    attempt += 1;
                }
                Ok(result) => return Ok(Attempt::Done(result)),
                Err(e) => return Ok(Attempt::Failed(e)),
            }
        }
    }

    /// Carries out one effect; some produce an input to decide next.
    async fn execute(
        &self,
        svc: &Service,
        effect: &Effect,
        cursor: u32,
        now: flow::Timestamp,
    ) -> PortResult<Option<Input>> {
        match effect {
            Effect::RegisterRevision {
                deployment_id,
                template,
                image,
            } => {
                let arn = self
                    .world
                    .register_revision(&svc.name, deployment_id, *template, image)
                    .await?;
                Ok(Some(Input::revision_registered(deployment_id, arn)))
            }
            Effect::UpdateService {
                color,
                task_definition,
                match_count_of,
                ..
            } => {
                self.world
                    .update_service(&svc.name, *color, task_definition, *match_count_of)
                    .await?;
                Ok(None)
            }
            Effect::RestoreCapacity {
                color,
                task_definition,
                desired,
                ..
            } => {
                self.world
                    .restore_capacity(&svc.name, *color, task_definition, *desired)
                    .await?;
                Ok(None)
            }
            Effect::ScaleUp {
                color,
                match_count_of,
                ..
            } => {
                self.world
                    .scale_up(&svc.name, *color, *match_count_of)
                    .await?;
                Ok(None)
            }
            Effect::ScaleToZero { color, .. } => {
                self.world.scale_to_zero(&svc.name, *color).await?;
                Ok(None)
            }
            Effect::SetProductionWeights {
                deployment_id,
                weights,
            } => {
                let read = self.world.set_production(&svc.name, *weights).await?;
                Ok(Some(Input::traffic_confirmed(deployment_id, cursor, read)))
            }
            Effect::SetTestWeights { weights, .. } => {
                self.world.set_test(&svc.name, *weights).await?;
                Ok(None)
            }
            Effect::RunValidations {
                deployment_id,
                cursor,
                checks,
            } => {
                let mut outcomes = Vec::new();
                for check in checks {
                    if let flow::Check::Http {
                        name,
                        url,
                        expect_status,
                    } = check
                    {
                        let (passed, detail) = match self.world.get(url).await {
                            Ok(status) => (status == *expect_status, format!("HTTP {status}")),
                            Err(e) => (false, e),
                        };
                        outcomes.push(CheckOutcome {
                            name: name.clone(),
                            passed,
                            detail,
                        });
                    }
                }
                Ok(Some(Input::validations_completed(
                    deployment_id,
                    *cursor,
                    outcomes,
                )))
            }
            Effect::ScheduleTick { tick, due } => {
                self.send_tick(svc, tick, *due, now).await?;
                Ok(None)
            }
        }
    }
}
