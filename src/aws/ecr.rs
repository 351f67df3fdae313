//! The registry: a tag of an ECR repository resolved to the digest it names now
//! (`DescribeImages`), so that a deployment requested by tag is deployed by digest.
//!
//! The repository is named by its URI, `<account>.dkr.ecr.<region>.amazonaws.com/<name>`
//! (`.amazonaws.com.cn` in China); the account is the registry id.

use aws_sdk_ecr::types::ImageIdentifier;

use super::{Aws, port_error};
use crate::ports::{PortError, PortResult, Registry};

/// `(registry id, repository name)` of an ECR repository URI; `None` for any other
/// registry.
#[must_use]
pub fn ecr_repository(uri: &str) -> Option<(&str, &str)> {
    let (host, name) = uri.split_once('/')?;
    let mut labels = host.split('.');
    let account = labels.next()?;
    let ecr = [labels.next()?, labels.next()?];
    let is_ecr = account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && ecr == ["dkr", "ecr"]
        && host.contains(".amazonaws.com");
    (is_ecr && !name.is_empty()).then_some((account, name))
}

impl Registry for Aws {
    async fn resolve(&self, repository: &str, tag: &str) -> PortResult<String> {
        let Some((registry, name)) = ecr_repository(repository) else {
            return Err(PortError::Permanent(format!(
                "{repository} is not an ECR repository; request the image by digest"
            )));
        };
        let out = self
            .ecr
            .describe_images()
            .registry_id(registry)
            .repository_name(name)
            .image_ids(ImageIdentifier::builder().image_tag(tag).build())
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let missing = e.as_service_error().is_some_and(|s| {
                    s.is_image_not_found_exception() || s.is_repository_not_found_exception()
                });
                return Err(if missing {
                    PortError::Permanent(format!("tag {tag} does not exist in {repository}"))
                } else {
                    port_error("DescribeImages", e)
                });
            }
        };
        out.image_details()
            .first()
            .and_then(|d| d.image_digest())
            .map(str::to_string)
            .ok_or_else(|| {
                PortError::Permanent(format!("tag {tag} does not exist in {repository}"))
            })
    }
}
