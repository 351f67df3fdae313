//! Rollback alarm states via `DescribeAlarms` (metric and composite alarms).
//!
//! `aws-sdk-cloudwatch` is pinned to 1.99.0, the last release speaking awsQuery: later
//! ones speak rpcv2-CBOR, which the test emulator does not.

use aws_sdk_cloudwatch::types::{AlarmType, StateValue};

use super::{Aws, repeat};
use crate::ports::{Alarms, PortError, PortResult};

impl Alarms for Aws {
    async fn firing(&self, names: &[String]) -> PortResult<Vec<String>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        let mut firing = Vec::new();
        // DescribeAlarms takes at most 100 names.
        for chunk in names.chunks(100) {
            let out = repeat("DescribeAlarms", || {
                self.cloudwatch
                    .describe_alarms()
                    .set_alarm_names(Some(chunk.to_vec()))
                    .alarm_types(AlarmType::MetricAlarm)
                    .alarm_types(AlarmType::CompositeAlarm)
                    .send()
            })
            .await?;
            let metric = out
                .metric_alarms()
                .iter()
                .map(|a| (a.alarm_name(), a.state_value()));
            let composite = out
                .composite_alarms()
                .iter()
                .map(|a| (a.alarm_name(), a.state_value()));
            for (name, state) in metric.chain(composite) {
                let Some(name) = name else { continue };
                found.push(name.to_string());
                if state == Some(&StateValue::Alarm) {
                    firing.push(name.to_string());
                }
            }
        }
        // An alarm that does not exist cannot vouch for the deployment: unknown, not OK.
        if let Some(missing) = names.iter().find(|n| !found.contains(n)) {
            return Err(PortError::Permanent(format!(
                "rollback alarm {missing} does not exist"
            )));
        }
        Ok(firing)
    }
}
