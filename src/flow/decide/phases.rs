//! The world each phase establishes: one list of idempotent effects per phase, asked for
//! when the phase is entered and again when the reconciler re-drives a deployment whose
//! tick went missing (a crash between commit and effects).

use crate::flow::effect::Effect;
use crate::flow::model::{Color, Deployment, Phase, Rollback, Weights};
use crate::flow::settings::{Check, ServiceSettings};

/// The effects that establish `d`'s current phase, in order. Every one is idempotent:
/// absolute weights, a named task definition, a registration keyed by deployment.
#[must_use]
pub fn desired_effects(settings: &ServiceSettings, d: &Deployment) -> Vec<Effect> {
    let production = |weights: Weights| Effect::SetProductionWeights {
        deployment_id: d.id.clone(),
        weights,
    };
    // The test listener follows the new colour from the moment it is healthy until the
    // deployment ends (a rollback points it back).
    let test = |color: Color| {
        settings.has_test_listener.then(|| Effect::SetTestWeights {
            deployment_id: d.id.clone(),
            weights: Weights::all(color),
        })
    };
    match d.phase {
        // Nothing has been touched yet: the start checks only read.
        Phase::Requested => Vec::new(),
        Phase::Provisioning => vec![Effect::RegisterRevision {
            deployment_id: d.id.clone(),
            template: d.stable,
            image: d.to_image.pinned(),
        }],
        Phase::WaitingForGreen if d.is_switch() => vec![Effect::ScaleUp {
            deployment_id: d.id.clone(),
            color: d.target,
            match_count_of: d.stable,
        }],
        Phase::WaitingForGreen => d
            .revision
            .iter()
            .map(|arn| Effect::UpdateService {
                deployment_id: d.id.clone(),
                color: d.target,
                task_definition: arn.clone(),
                match_count_of: d.stable,
            })
            .collect(),
        Phase::Testing => {
            let pending: Vec<Check> = d
                .plan
                .checks
                .iter()
                .filter(|c| {
                    matches!(c, Check::Http { .. })
                        && !d.checks_passed.iter().any(|p| p == c.name())
                })
                .cloned()
                .collect();
            let run = (!pending.is_empty()).then(|| Effect::RunValidations {
                deployment_id: d.id.clone(),
                cursor: d.cursor,
                checks: pending,
            });
            test(d.target).into_iter().chain(run).collect()
        }
        Phase::AwaitingApproval => test(d.target).into_iter().collect(),
        // `weights` is the step's split while shifting and 100 % on the new colour after.
        Phase::Shifting | Phase::Baking | Phase::Finalizing => {
            std::iter::once(production(d.weights))
                .chain(test(d.target))
                .collect()
        }
        // Production first, in one call, before anything else (SPEC §3). A rollback from
        // `Requested` has nothing to undo, and must not touch a colour it never observed.
        Phase::RollingBack => {
            let from_start = matches!(
                d.rollback,
                Some(Rollback {
                    from_phase: Phase::Requested,
                    ..
                })
            );
            if from_start {
                return Vec::new();
            }
            // A switch leaves the colour it meant to move to as it is: it may be the warm
            // old colour someone needs next.
            let scale_down = (!d.is_switch()).then(|| Effect::ScaleToZero {
                deployment_id: d.id.clone(),
                color: d.target,
            });
            std::iter::once(production(Weights::all(d.stable)))
                .chain(test(d.stable))
                .chain(scale_down)
                .collect()
        }
        Phase::Succeeded | Phase::RolledBack | Phase::Failed => Vec::new(),
    }
}
