//! The traffic router: weights of the forward action of a listener rule, or of a
//! listener's default actions; a service with several production rules has them read
//! and written together.
//!
//! Only the two target groups' weights change: the action list, its order, every other
//! action, the rule's conditions and the stickiness configuration are written back as
//! read (SPEC §4 invariant 1). After each write the weights are read back; a mismatch is
//! an error, which the core treats as a failed step, and a match is what the core
//! announces as `Traffic Shifted`. A write that fails transiently is checked the same
//! way: if the rule holds the weights, the answer was lost, not the write.

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetGroupTuple,
};

use futures_util::future::join_all;

use super::{Aws, repeat};
use crate::config::{ServiceConfig, TrafficTarget};
use crate::flow::{ProductionRules, RuleWeights, Weights};
use crate::ports::{PortError, PortResult, Traffic};

impl Aws {
    async fn read_actions(&self, target: &TrafficTarget) -> PortResult<Vec<Action>> {
        match target {
            TrafficTarget::Rule(arn) => {
                let out = repeat("DescribeRules", || {
                    self.elb.describe_rules().rule_arns(arn).send()
                })
                .await?;
                let rule = out.rules().first().ok_or_else(|| {
                    PortError::Permanent(format!("listener rule {arn} not found"))
                })?;
                Ok(rule.actions().to_vec())
            }
            TrafficTarget::Listener(arn) => {
                let out = repeat("DescribeListeners", || {
                    self.elb.describe_listeners().listener_arns(arn).send()
                })
                .await?;
                let listener = out
                    .listeners()
                    .first()
                    .ok_or_else(|| PortError::Permanent(format!("listener {arn} not found")))?;
                Ok(listener.default_actions().to_vec())
            }
        }
    }

    async fn write_actions(&self, target: &TrafficTarget, actions: Vec<Action>) -> PortResult<()> {
        match target {
            TrafficTarget::Rule(arn) => {
                repeat("ModifyRule", || {
                    self.elb
                        .modify_rule()
                        .rule_arn(arn)
                        .set_actions(Some(actions.clone()))
                        .send()
                })
                .await?;
            }
            TrafficTarget::Listener(arn) => {
                repeat("ModifyListener", || {
                    self.elb
                        .modify_listener()
                        .listener_arn(arn)
                        .set_default_actions(Some(actions.clone()))
                        .send()
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn weights_of(
        &self,
        service: &ServiceConfig,
        target: &TrafficTarget,
    ) -> PortResult<Weights> {
        let actions = self.read_actions(target).await?;
        weights_in(service, &actions)
    }

    async fn set_weights(
        &self,
        service: &ServiceConfig,
        target: &TrafficTarget,
        weights: Weights,
    ) -> PortResult<Weights> {
        let actions = self.read_actions(target).await?;
        let updated = with_weights(service, &actions, weights)?;
        if let Err(e) = self.write_actions(target, updated).await {
            // A write whose answer was lost may have landed: the rule says.
            match self.weights_of(service, target).await {
                Ok(seen) if seen == weights && matches!(e, PortError::Retryable(_)) => {
                    return Ok(seen);
                }
                _ => return Err(e),
            }
        }
        let seen = self.weights_of(service, target).await?;
        if seen != weights {
            return Err(PortError::Permanent(format!(
                "weights read back as {seen} after writing {weights}"
            )));
        }
        Ok(seen)
    }
}

/// The forward action: the one of type `forward`.
fn forward_index(actions: &[Action]) -> PortResult<usize> {
    actions
        .iter()
        .position(|a| a.r#type() == Some(&ActionTypeEnum::Forward))
        .ok_or_else(|| PortError::Permanent("the rule has no forward action".into()))
}

/// Reads the two target groups' weights. Any other target group in the forward action
/// is an error: the rule must reference exactly the service's two groups; so are two
/// weights of 0 (the rule forwards nowhere, which is no colour's share).
pub fn weights_in(service: &ServiceConfig, actions: &[Action]) -> PortResult<Weights> {
    let (blue, green) = pair_in(service, actions)?;
    let total = blue + green;
    if total <= 0 {
        return Err(PortError::Permanent(format!(
            "the forward action gives both of {}'s target groups a weight of 0",
            service.name
        )));
    }
    // Normalise to percent (ALB weights are relative, 0..=999).
    let blue_pct = u8::try_from((blue * 100 + total / 2) / total).unwrap_or(100);
    Ok(Weights::split(crate::flow::Color::Blue, blue_pct))
}

/// The blue and green target groups' raw weights in the forward action; an error when it
/// routes to any other group.
fn pair_in(service: &ServiceConfig, actions: &[Action]) -> PortResult<(i32, i32)> {
    let action = &actions[forward_index(actions)?];
    let tuples: Vec<(String, i32)> = match action.forward_config() {
        Some(f) if !f.target_groups().is_empty() => f
            .target_groups()
            .iter()
            .map(|t| {
                (
                    t.target_group_arn().unwrap_or_default().to_string(),
                    t.weight().unwrap_or(1),
                )
            })
            .collect(),
        _ => vec![(action.target_group_arn().unwrap_or_default().to_string(), 1)],
    };
    let (mut blue, mut green) = (0i32, 0i32);
    for (arn, weight) in &tuples {
        if *arn == service.blue_target_group_arn {
            blue += weight;
        } else if *arn == service.green_target_group_arn {
            green += weight;
        } else {
            return Err(PortError::Permanent(format!(
                "the forward action also routes to {arn}, which is not {}'s blue or green target group",
                service.name
            )));
        }
    }
    Ok((blue, green))
}

/// The same actions with only the forward action's weights replaced (a rule whose weights
/// are both 0 is written too: a rollback must be able to repair it).
pub fn with_weights(
    service: &ServiceConfig,
    actions: &[Action],
    weights: Weights,
) -> PortResult<Vec<Action>> {
    pair_in(service, actions)?;
    let index = forward_index(actions)?;
    let mut updated = actions.to_vec();
    let action = &mut updated[index];
    let stickiness = action
        .forward_config()
        .and_then(|f| f.target_group_stickiness_config())
        .cloned();
    let tuple = |arn: &str, weight: u8| {
        TargetGroupTuple::builder()
            .target_group_arn(arn)
            .weight(i32::from(weight))
            .build()
    };
    let forward = ForwardActionConfig::builder()
        .target_groups(tuple(&service.blue_target_group_arn, weights.blue))
        .target_groups(tuple(&service.green_target_group_arn, weights.green))
        .set_target_group_stickiness_config(stickiness)
        .build();
    action.forward_config = Some(forward);
    // A forward action names its groups either by TargetGroupArn or by ForwardConfig.
    action.target_group_arn = None;
    Ok(updated)
}

/// `error` with the rule or listener it is about named first.
fn about(target: &TrafficTarget, error: PortError) -> PortError {
    match error {
        PortError::Retryable(why) => PortError::Retryable(format!("{}: {why}", target.arn())),
        PortError::Permanent(why) => PortError::Permanent(format!("{}: {why}", target.arn())),
        other => other,
    }
}

impl Traffic for Aws {
    async fn production(&self, service: &str) -> PortResult<ProductionRules> {
        let svc = self.resources(service)?;
        let targets = svc.production();
        let reads = join_all(targets.iter().map(|t| self.weights_of(svc, t))).await;
        let mut rules = Vec::with_capacity(reads.len());
        for (target, read) in targets.iter().zip(reads) {
            rules.push(RuleWeights {
                rule: target.arn().to_string(),
                weights: read.map_err(|e| about(target, e))?,
            });
        }
        ProductionRules::new(rules)
            .ok_or_else(|| PortError::Permanent("no production listener configured".into()))
    }

    /// Every rule is written at once (a rollback takes as long with three rules as with
    /// one); a rule that fails fails the write, which the core retries as a whole.
    async fn set_production(&self, service: &str, weights: Weights) -> PortResult<Weights> {
        let svc = self.resources(service)?;
        let targets = svc.production();
        if targets.is_empty() {
            return Err(PortError::Permanent(
                "no production listener configured".into(),
            ));
        }
        let writes = join_all(targets.iter().map(|t| self.set_weights(svc, t, weights))).await;
        for (target, written) in targets.iter().zip(writes) {
            written.map_err(|e| about(target, e))?;
        }
        Ok(weights)
    }

    async fn set_test(&self, service: &str, weights: Weights) -> PortResult<()> {
        let svc = self.resources(service)?;
        match svc.test() {
            Some(target) => self.set_weights(svc, &target, weights).await.map(|_| ()),
            None => Ok(()),
        }
    }
}
