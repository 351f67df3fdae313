//! The platform: ECS services of the two colours and their task definitions.
//!
//! The new revision is the live colour's task definition with only the configured
//! container's image replaced (by digest), tagged `bluegreen:deployment=<id>`. Before
//! registering, recent revisions of the family are searched for that tag, so a retried
//! effect finds the earlier registration instead of registering twice.

use aws_sdk_ecs::types::{
    DeploymentRolloutState, SortOrder, Tag, TaskDefinition, TaskDefinitionField,
};
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;

use super::{Aws, port_error, repeat};
use crate::config::ServiceConfig;
use crate::flow::{Color, TargetHealth};
use crate::ports::{Platform, PortError, PortResult};

/// Tag naming the deployment a task definition revision was registered for.
pub const DEPLOYMENT_TAG: &str = "bluegreen:deployment";

fn service_name(svc: &ServiceConfig, color: Color) -> &str {
    match color {
        Color::Blue => &svc.blue_service,
        Color::Green => &svc.green_service,
    }
}

fn target_group(svc: &ServiceConfig, color: Color) -> &str {
    match color {
        Color::Blue => &svc.blue_target_group_arn,
        Color::Green => &svc.green_target_group_arn,
    }
}

impl Aws {
    async fn describe_service(
        &self,
        svc: &ServiceConfig,
        color: Color,
    ) -> PortResult<aws_sdk_ecs::types::Service> {
        let name = service_name(svc, color);
        let out = repeat("DescribeServices", || {
            self.ecs
                .describe_services()
                .cluster(&svc.cluster)
                .services(name)
                .send()
        })
        .await?;
        out.services().first().cloned().ok_or_else(|| {
            PortError::Permanent(format!("ECS service {name} not found in {}", svc.cluster))
        })
    }

    /// Points `color`'s service at `task_definition` with `desired` tasks.
    async fn point(
        &self,
        svc: &ServiceConfig,
        color: Color,
        task_definition: &str,
        desired: u32,
    ) -> PortResult<()> {
        let desired = i32::try_from(desired).unwrap_or(i32::MAX);
        repeat("UpdateService", || {
            self.ecs
                .update_service()
                .cluster(&svc.cluster)
                .service(service_name(svc, color))
                .task_definition(task_definition)
                .desired_count(desired)
                .send()
        })
        .await?;
        Ok(())
    }

    async fn registered_for(
        &self,
        family: &str,
        deployment_id: &str,
    ) -> PortResult<Option<String>> {
        let list = repeat("ListTaskDefinitions", || {
            self.ecs
                .list_task_definitions()
                .family_prefix(family)
                .sort(SortOrder::Desc)
                .max_results(10)
                .send()
        })
        .await?;
        for arn in list.task_definition_arns() {
            let tags = repeat("ListTagsForResource", || {
                self.ecs.list_tags_for_resource().resource_arn(arn).send()
            })
            .await?;
            let ours = tags
                .tags()
                .iter()
                .any(|t| t.key() == Some(DEPLOYMENT_TAG) && t.value() == Some(deployment_id));
            if ours {
                return Ok(Some(arn.clone()));
            }
        }
        Ok(None)
    }
}

/// The template with `container`'s image replaced; every other field as it was.
fn with_image(
    td: &TaskDefinition,
    container: &str,
    image: &str,
) -> PortResult<Vec<aws_sdk_ecs::types::ContainerDefinition>> {
    let mut containers = td.container_definitions().to_vec();
    let target = containers
        .iter_mut()
        .find(|c| c.name() == Some(container))
        .ok_or_else(|| {
            PortError::Permanent(format!(
                "task definition {} has no container named {container}",
                td.task_definition_arn().unwrap_or_default()
            ))
        })?;
    target.image = Some(image.to_string());
    Ok(containers)
}

impl Platform for Aws {
    async fn register_revision(
        &self,
        service: &str,
        deployment_id: &str,
        template: Color,
        image: &str,
    ) -> PortResult<String> {
        let svc = self.resources(service)?;
        let live = self.describe_service(svc, template).await?;
        let current = live.task_definition().ok_or_else(|| {
            PortError::Permanent(format!(
                "{} has no task definition",
                service_name(svc, template)
            ))
        })?;
        let out = repeat("DescribeTaskDefinition", || {
            self.ecs
                .describe_task_definition()
                .task_definition(current)
                .include(TaskDefinitionField::Tags)
                .send()
        })
        .await?;
        let td = out
            .task_definition()
            .ok_or_else(|| PortError::Permanent(format!("task definition {current} not found")))?;
        let family = td.family().unwrap_or_default().to_string();
        if let Some(arn) = self.registered_for(&family, deployment_id).await? {
            return Ok(arn);
        }
        let containers = with_image(td, &svc.container_name, image)?;
        let mut tags: Vec<Tag> = out
            .tags()
            .iter()
            .filter(|t| t.key() != Some(DEPLOYMENT_TAG))
            .cloned()
            .collect();
        tags.push(
            Tag::builder()
                .key(DEPLOYMENT_TAG)
                .value(deployment_id)
                .build(),
        );
        let registered = self
            .ecs
            .register_task_definition()
            .family(family)
            .set_container_definitions(Some(containers))
            .set_task_role_arn(td.task_role_arn().map(str::to_string))
            .set_execution_role_arn(td.execution_role_arn().map(str::to_string))
            .set_network_mode(td.network_mode().cloned())
            .set_volumes(Some(td.volumes().to_vec()))
            .set_placement_constraints(Some(td.placement_constraints().to_vec()))
            .set_requires_compatibilities(Some(td.requires_compatibilities().to_vec()))
            .set_cpu(td.cpu().map(str::to_string))
            .set_memory(td.memory().map(str::to_string))
            .set_pid_mode(td.pid_mode().cloned())
            .set_ipc_mode(td.ipc_mode().cloned())
            .set_proxy_configuration(td.proxy_configuration().cloned())
            .set_ephemeral_storage(td.ephemeral_storage().cloned())
            .set_runtime_platform(td.runtime_platform().cloned())
            .set_tags(Some(tags))
            // Not idempotent: no SDK retry may send it twice. A lost answer fails this
            // attempt, and the runner's next one finds the registration by its tag.
            .customize()
            .config_override(
                aws_sdk_ecs::config::Builder::default()
                    .retry_config(aws_config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| port_error("RegisterTaskDefinition", e))?;
        registered
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_string)
            .ok_or_else(|| PortError::Permanent("RegisterTaskDefinition returned no ARN".into()))
    }

    async fn update_service(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        match_count_of: Color,
    ) -> PortResult<()> {
        let svc = self.resources(service)?;
        let live = self.describe_service(svc, match_count_of).await?;
        let desired = u32::try_from(live.desired_count())
            .unwrap_or(0)
            .max(svc.min_tasks)
            .max(1);
        self.point(svc, color, task_definition, desired).await
    }

    async fn restore_capacity(
        &self,
        service: &str,
        color: Color,
        task_definition: &str,
        desired: u32,
    ) -> PortResult<()> {
        let svc = self.resources(service)?;
        self.point(svc, color, task_definition, desired).await
    }

    async fn scale_up(&self, service: &str, color: Color, match_count_of: Color) -> PortResult<()> {
        let svc = self.resources(service)?;
        let live = self.describe_service(svc, match_count_of).await?;
        let target = self.describe_service(svc, color).await?;
        let want = u32::try_from(live.desired_count())
            .unwrap_or(0)
            .max(svc.min_tasks)
            .max(1);
        if u32::try_from(target.desired_count()).unwrap_or(0) >= want {
            return Ok(());
        }
        let desired = i32::try_from(want).unwrap_or(i32::MAX);
        repeat("UpdateService", || {
            self.ecs
                .update_service()
                .cluster(&svc.cluster)
                .service(service_name(svc, color))
                .desired_count(desired)
                .send()
        })
        .await?;
        Ok(())
    }

    async fn scale_to_zero(&self, service: &str, color: Color) -> PortResult<()> {
        let svc = self.resources(service)?;
        repeat("UpdateService", || {
            self.ecs
                .update_service()
                .cluster(&svc.cluster)
                .service(service_name(svc, color))
                .desired_count(0)
                .send()
        })
        .await?;
        Ok(())
    }

    async fn health(&self, service: &str, color: Color) -> PortResult<TargetHealth> {
        let svc = self.resources(service)?;
        let described = self.describe_service(svc, color).await?;
        let primary = described
            .deployments()
            .iter()
            .find(|d| d.status() == Some("PRIMARY"));
        let count = |n: i32| u32::try_from(n).unwrap_or(0);
        let (task_definition, completed, running, desired) = match primary {
            Some(d) => (
                d.task_definition().map(str::to_string),
                d.rollout_state() == Some(&DeploymentRolloutState::Completed)
                    && described.deployments().len() == 1,
                count(d.running_count()),
                count(d.desired_count()),
            ),
            None => (
                described.task_definition().map(str::to_string),
                false,
                count(described.running_count()),
                count(described.desired_count()),
            ),
        };
        let targets = repeat("DescribeTargetHealth", || {
            self.elb
                .describe_target_health()
                .target_group_arn(target_group(svc, color))
                .send()
        })
        .await?;
        let states: Vec<Option<&TargetHealthStateEnum>> = targets
            .target_health_descriptions()
            .iter()
            .map(|t| t.target_health().and_then(|h| h.state()))
            .filter(|s| *s != Some(&TargetHealthStateEnum::Draining))
            .collect();
        Ok(TargetHealth {
            task_definition,
            rollout_completed: completed,
            running,
            desired,
            healthy_targets: u32::try_from(
                states
                    .iter()
                    .filter(|s| **s == Some(&TargetHealthStateEnum::Healthy))
                    .count(),
            )
            .unwrap_or(0),
            registered_targets: u32::try_from(states.len()).unwrap_or(0),
        })
    }
}
