//! What the worker knows of the services it deploys, in the domain's terms: each
//! service's name, what starts or stops its deployments (an image repository and tag
//! pattern, rollback alarms) and how it deploys (the core's settings), plus which events
//! the worker accepts (sources, account, region).
//!
//! Where a service lives — clusters, target group and listener rule ARNs, or local
//! processes behind the embedded proxy — is the adapters' business: the ports name a
//! service, and each adapter looks its own resources up by that name.

use crate::config::Config;
use crate::flow::ServiceSettings;

/// One service, as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique name; deployment ids start with it.
    pub name: String,
    /// Repository whose pushes deploy the service (the name, not the registry URI).
    pub ecr_repository: String,
    /// Glob over pushed tags; `None`: any tag.
    pub tag_pattern: Option<String>,
    /// Every rollback alarm of the service, of either colour: what the worker reads and
    /// routes (which ones count for a deployment is the core's decision).
    pub rollback_alarms: Vec<String>,
    /// What the decision core needs.
    pub settings: ServiceSettings,
    /// ARNs of its production rules (and listener), and the names of its colour
    /// services: a recorded change to one of them is reconciled at once.
    pub resources: Vec<String>,
}

impl Service {
    /// Whether `touched` is one of the resources the service is made of.
    #[must_use]
    pub fn is_made_of(&self, touched: &crate::contract::inbound::Touched) -> bool {
        self.resources.iter().any(|r| r == touched.id())
    }

    /// Whether a pushed tag matches `tag_pattern` (no pattern: any tag, even none).
    #[must_use]
    pub fn matches_tag(&self, tag: Option<&str>) -> bool {
        match (&self.tag_pattern, tag) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(p), Some(t)) => glob::Pattern::new(p).is_ok_and(|p| p.matches(t)),
        }
    }
}

/// Every service of one worker, and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// `source` of the worker's own events (outbound, ticks).
    pub source: String,
    /// `source` accepted for operator events.
    pub manual_source: String,
    /// When set, events from another account are refused; also the registry account of
    /// pushed images when an event lacks `account`.
    pub account_id: Option<String>,
    /// When set, events from another region are refused.
    pub region: Option<String>,
    /// The services.
    pub services: Vec<Service>,
}

impl Fleet {
    /// The service named `name`.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl From<&Config> for Fleet {
    fn from(config: &Config) -> Fleet {
        Fleet {
            source: config.worker.source.clone(),
            manual_source: config.worker.manual_source.clone(),
            account_id: config.worker.account_id.clone(),
            region: config.worker.region.clone(),
            services: config
                .services
                .iter()
                .map(|s| Service {
                    name: s.name.clone(),
                    ecr_repository: s.ecr_repository.clone(),
                    tag_pattern: s.tag_pattern.clone(),
                    rollback_alarms: s.rollback_alarms.all(),
                    settings: s.settings(),
                    resources: s
                        .production_listener_rule_arn
                        .iter()
                        .chain(&s.production_listener_rule_arns)
                        .chain(&s.production_listener_arn)
                        .chain([&s.blue_service, &s.green_service])
                        .cloned()
                        .collect(),
                })
                .collect(),
        }
    }
}
