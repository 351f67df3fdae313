//! What the runner reads before deciding (SPEC §4 invariant 9: facts come from
//! observation), and the ticks it sends itself.

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::Runner;
use crate::fleet::Service;
use crate::flow::{self, Input, InputKind, Observations, TickKey, Timestamp};
use crate::ports::{PortError, PortResult, World, patiently};

impl<W: World> Runner<W> {
    /// Reads what the core needs before deciding `input`.
    ///
    /// # Errors
    /// A retryable failure resolving a tag (the message is retried); every other failed
    /// read is passed on as unknown, with its error, which the core never takes as
    /// healthy.
    pub(super) async fn observe(
        &self,
        svc: &Service,
        state: &flow::ServiceState,
        input: &Input,
    ) -> PortResult<Input> {
        let needs = flow::needs(state, input);
        let mut input = input.clone();
        match &mut input.kind {
            InputKind::Deploy {
                image, unresolved, ..
            } if needs.resolve_tag => {
                let tag = image.tag.clone().unwrap_or_else(|| "latest".into());
                match patiently(|| self.world.resolve(&image.repository, &tag)).await {
                    Ok(digest) => {
                        info!(repository = %image.repository, %tag, %digest, "tag resolved");
                        image.digest = Some(digest);
                        image.tag = Some(tag);
                    }
                    Err(PortError::Permanent(why)) => *unresolved = Some(why),
                    Err(e) => return Err(e),
                }
            }
            InputKind::Tick { observed, .. }
            | InputKind::Reconcile { observed }
            | InputKind::Alarm { observed, .. } => {
                *observed = self.read(svc, needs).await;
            }
            _ => {}
        }
        Ok(input)
    }

    async fn read(&self, svc: &Service, needs: flow::Needs) -> Observations {
        let mut observed = Observations::default();
        if needs.alarms {
            observed.alarms_firing =
                match patiently(|| self.world.firing(&svc.rollback_alarms)).await {
                    Ok(firing) => Some(firing),
                    Err(e) => {
                        warn!(error = %e, "cannot read rollback alarms; the step holds");
                        observed.read_errors.push(e.to_string());
                        None
                    }
                };
        }
        if let Some(color) = needs.target_health {
            observed.target_health = match patiently(|| self.world.health(&svc.name, color)).await {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(error = %e, "cannot read target health");
                    None
                }
            };
        }
        if needs.production {
            observed.production = match patiently(|| self.world.production(&svc.name)).await {
                Ok(w) => Some(Ok(w)),
                Err(PortError::Permanent(why)) => Some(Err(why)),
                Err(e) => {
                    warn!(error = %e, "cannot read the production rule");
                    observed.read_errors.push(e.to_string());
                    None
                }
            };
        }
        observed
    }

    pub(super) async fn resend_early_tick(
        &self,
        svc: &Service,
        state: &flow::ServiceState,
        input: &Input,
        now: Timestamp,
    ) -> PortResult<()> {
        let InputKind::Tick { tick, .. } = &input.kind else {
            return Ok(());
        };
        let due = state
            .deployment(&tick.deployment_id)
            .and_then(|d| d.next_tick)
            .map_or(now, |t| t.due);
        self.send_tick(svc, tick, due, now).await
    }

    /// Sends `tick` to the worker's own queue, due at `due`.
    pub(super) async fn send_tick(
        &self,
        svc: &Service,
        tick: &TickKey,
        due: Timestamp,
        now: Timestamp,
    ) -> PortResult<()> {
        let body = json!({
            "version": "0",
            "id": format!("{}-{}", tick.key(), now.millis()),
            "detail-type": "Deployment Tick",
            "source": self.source,
            "time": now.rfc3339(),
            "resources": [],
            "detail": {
                "service": svc.name,
                "deploymentId": tick.deployment_id,
                "cursor": tick.cursor,
                "attempt": tick.attempt,
                "due": due.rfc3339(),
            }
        });
        let delay = Duration::from_millis(due.since(now));
        self.world.send(body.to_string(), delay).await
    }
}
