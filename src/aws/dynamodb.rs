//! The store: one DynamoDB table, string keys `pk` and `sk`, TTL on `expires_at`.
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | service state | `SERVICE#<name>` | `STATE` | `state` (JSON), `version` (N), `owed` (JSON), `applied` (N), `lease_owner`, `lease_until` (N, ms), `preempt_until` (N, ms) |
//! | outbox entry | `SERVICE#<name>` | `OUTBOX#<ms, 20 digits>#<eventId>` | `entry` (JSON), `claim_owner`, `claim_until` (N, ms) |
//! | dedup key | `DEDUP#<name>#<key>` | `DEDUP` | `expires_at` (N, s) |
//! | deployment record | `DEPLOYMENT#<id>` | `RECORD` | `record` (JSON), `service`, `phase` |
//! | named lease | `LEASE#<name>` | `LEASE` | `lease_owner`, `lease_until` (N, ms), `mark` (N) |
//!
//! A decision commits in one `TransactWriteItems`: the state with what it owes (an update
//! conditional on its version and on no other unexpired lease, which leaves `applied` and
//! a preemption mark as they are), its outbox entries, its dedup key (conditional on not
//! existing) and the deployment records it touched. A cancelled transaction is judged by
//! its cancellation reasons. `applied` is the version whose obligation was discharged;
//! what `owed` holds is outstanding while it is below `version`. Publishing claims each
//! outbox entry with a conditional update first, so two workers never publish the same
//! entry.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use super::{Aws, port_error, repeat};
use crate::contract::Entry;
use crate::flow::{Color, Deployment, ServiceState, Timestamp};
use crate::ports::{
    Claimed, Commit, Fence, Lease, OUTBOX_CLAIM_MAX, Owed, PortError, PortResult, Store, Stored,
};

/// How long dedup keys are remembered beyond the state's own window.
pub const DEDUP_TTL_SECS: u64 = 7 * 24 * 3600;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn state_key(service: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("SERVICE#{service}"))),
        ("sk".to_string(), s("STATE")),
    ])
}

fn dedup_key(service: &str, key: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("DEDUP#{service}#{key}"))),
        ("sk".to_string(), s("DEDUP")),
    ])
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// A conditional write's answer: whether it was made (false: its condition did not hold).
fn conditional<T, E>(
    operation: &str,
    result: Result<T, SdkError<E, HttpResponse>>,
) -> PortResult<bool>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error().and_then(ProvideErrorMetadata::code)
                == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(e) => Err(port_error(operation, e)),
    }
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> PortResult<T> {
    r.map_err(|e| PortError::Permanent(format!("building a DynamoDB request: {e}")))
}

impl Aws {
    /// The stored record of deployment `id` (`<service>-<number>`), if any.
    ///
    /// # Errors
    /// When DynamoDB cannot be read or the record is unreadable.
    pub async fn deployment_record(&self, id: &str) -> PortResult<Option<Deployment>> {
        let out = repeat("GetItem", || {
            self.dynamodb
                .get_item()
                .table_name(&self.table)
                .key("pk", s(format!("DEPLOYMENT#{id}")))
                .key("sk", s("RECORD"))
                .send()
        })
        .await?;
        let Some(text) = out.item().and_then(|item| get_s(item, "record")) else {
            return Ok(None);
        };
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| PortError::Permanent(format!("record of {id} is unreadable: {e}")))
    }
}

impl Store for Aws {
    async fn load(&self, service: &str, initial: Color) -> PortResult<Stored> {
        let out = repeat("GetItem", || {
            self.dynamodb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(state_key(service)))
                .consistent_read(true)
                .send()
        })
        .await?;
        let Some(item) = out.item() else {
            return Ok(Stored {
                state: ServiceState::new(service, initial),
                version: 0,
                owed: Vec::new(),
            });
        };
        let text = get_s(item, "state").unwrap_or_default();
        let state: ServiceState = serde_json::from_str(text).map_err(|e| {
            PortError::Permanent(format!("stored state of {service} is unreadable: {e}"))
        })?;
        let version = get_n(item, "version");
        Ok(Stored {
            state,
            version,
            owed: owed_of(service, item, version)?,
        })
    }

    async fn commit(&self, service: &str, c: Commit<'_>) -> PortResult<u64> {
        let version = c.expected_version + 1;
        let state = serde_json::to_string(c.state)
            .map_err(|e| PortError::Permanent(format!("serializing state: {e}")))?;
        let owed = serde_json::to_string(c.owed)
            .map_err(|e| PortError::Permanent(format!("serializing what is owed: {e}")))?;
        // An update, not a put: `applied` and a preemption mark outlive the commit (only
        // the rollback the mark waited for clears it).
        let mut update_expression = "SET #state = :state, #version = :next, #owed = :owed, \
             lease_owner = :me, lease_until = :until"
            .to_string();
        if c.clears_preemption {
            update_expression.push_str(" REMOVE preempt_until");
        }
        let condition = if c.expected_version == 0 {
            "attribute_not_exists(pk)"
        } else {
            "#version = :v AND (attribute_not_exists(lease_owner) OR lease_owner = :me OR lease_until < :now)"
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(state_key(service)))
            .update_expression(update_expression)
            .condition_expression(condition)
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#owed", "owed")
            .expression_attribute_values(":state", s(state))
            .expression_attribute_values(":next", n(version))
            .expression_attribute_values(":owed", s(owed))
            .expression_attribute_values(":me", s(c.lease.owner))
            .expression_attribute_values(":until", n(c.lease.until.millis()));
        if c.expected_version != 0 {
            update = update
                .expression_attribute_values(":v", n(c.expected_version))
                .expression_attribute_values(":now", n(c.lease.now.millis()));
        }
        let mut items = vec![
            TransactWriteItem::builder()
                .update(built(update.build())?)
                .build(),
        ];
        for e in c.outbox {
            let sk = format!("OUTBOX#{:020}#{}", c.lease.now.millis(), e.event_id);
            let put = Put::builder()
                .table_name(&self.table)
                .item("pk", s(format!("SERVICE#{service}")))
                .item("sk", s(sk))
                .item("entry", s(e.to_json()))
                .build();
            items.push(TransactWriteItem::builder().put(built(put)?).build());
        }
        let dedup_index = c.dedup_key.map(|_| items.len());
        if let Some(key) = c.dedup_key {
            let mut item = dedup_key(service, key);
            item.insert(
                "expires_at".into(),
                n(c.lease.now.millis() / 1000 + DEDUP_TTL_SECS),
            );
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build();
            items.push(TransactWriteItem::builder().put(built(put)?).build());
        }
        for d in c.deployments {
            let record = serde_json::to_string(d)
                .map_err(|e| PortError::Permanent(format!("serializing deployment: {e}")))?;
            let put = Put::builder()
                .table_name(&self.table)
                .item("pk", s(format!("DEPLOYMENT#{}", d.id)))
                .item("sk", s("RECORD"))
                .item("service", s(service))
                .item("phase", s(d.phase.as_str()))
                .item("record", s(record))
                .build();
            items.push(TransactWriteItem::builder().put(built(put)?).build());
        }
        let result = self
            .dynamodb
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(version),
            Err(e) => {
                let reasons: Option<Vec<Option<String>>> = e
                    .as_service_error()
                    .filter(|s| s.is_transaction_canceled_exception())
                    .map(|s| match s {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => t
                            .cancellation_reasons()
                            .iter()
                            .map(|r| r.code().map(str::to_string))
                            .collect(),
                        _ => Vec::new(),
                    });
                match reasons {
                    Some(reasons) => Err(cancelled(
                        &reasons,
                        dedup_index,
                        &aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string(),
                    )),
                    None => Err(port_error("TransactWriteItems", e)),
                }
            }
        }
    }

    async fn seen(&self, service: &str, key: &str) -> PortResult<bool> {
        let out = repeat("GetItem", || {
            self.dynamodb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(dedup_key(service, key)))
                .consistent_read(true)
                .send()
        })
        .await?;
        Ok(out.item().is_some())
    }

    async fn fence(&self, service: &str) -> PortResult<Fence> {
        let out = repeat("GetItem", || {
            self.dynamodb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(state_key(service)))
                .projection_expression("#version, lease_owner, lease_until, preempt_until")
                .expression_attribute_names("#version", "version")
                .consistent_read(true)
                .send()
        })
        .await?;
        let empty = HashMap::new();
        let item = out.item().unwrap_or(&empty);
        Ok(Fence {
            version: get_n(item, "version"),
            owner: get_s(item, "lease_owner").map(str::to_string),
            until: Timestamp::from_millis(get_n(item, "lease_until")),
            preempt_until: item
                .contains_key("preempt_until")
                .then(|| Timestamp::from_millis(get_n(item, "preempt_until"))),
        })
    }

    async fn extend(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        let result = self
            .update_state(service)
            .update_expression("SET lease_until = :until")
            .condition_expression("#version = :v AND lease_owner = :me")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":me", s(lease.owner))
            .expression_attribute_values(":until", n(lease.until.millis()))
            .send()
            .await;
        conditional("UpdateItem", result)
    }

    async fn release(&self, service: &str, owner: &str) -> PortResult<()> {
        let result = self
            .update_state(service)
            .update_expression("REMOVE lease_owner, lease_until")
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        // Not the owner (any more): nothing to give up.
        conditional("UpdateItem", result).map(|_| ())
    }

    async fn take(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        let result = self
            .update_state(service)
            .update_expression("SET lease_owner = :me, lease_until = :until")
            .condition_expression(
                "#version = :v AND (attribute_not_exists(lease_owner) OR lease_owner = :me OR lease_until < :now)",
            )
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":me", s(lease.owner))
            .expression_attribute_values(":until", n(lease.until.millis()))
            .expression_attribute_values(":now", n(lease.now.millis()))
            .send()
            .await;
        conditional("UpdateItem", result)
    }

    async fn discharge(
        &self,
        service: &str,
        version: u64,
        owner: &str,
        release: bool,
    ) -> PortResult<bool> {
        let expression = if release {
            "SET applied = :v REMOVE lease_owner, lease_until"
        } else {
            "SET applied = :v"
        };
        let result = self
            .update_state(service)
            .update_expression(expression)
            .condition_expression("#version = :v AND lease_owner = :me")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        conditional("UpdateItem", result)
    }

    async fn preempt(&self, service: &str, until: Option<Timestamp>) -> PortResult<()> {
        let request = self
            .update_state(service)
            .condition_expression("attribute_exists(pk)");
        let request = match until {
            Some(t) => request
                .update_expression("SET preempt_until = :until")
                .expression_attribute_values(":until", n(t.millis())),
            None => request.update_expression("REMOVE preempt_until"),
        };
        // No state yet: nothing holds the lease, nothing to preempt.
        conditional("UpdateItem", request.send().await).map(|_| ())
    }

    async fn remember(&self, service: &str, key: &str, now: Timestamp) -> PortResult<()> {
        let mut item = dedup_key(service, key);
        item.insert("expires_at".into(), n(now.millis() / 1000 + DEDUP_TTL_SECS));
        repeat("PutItem", || {
            self.dynamodb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .send()
        })
        .await?;
        Ok(())
    }

    async fn claim_outbox(&self, service: &str, claim: Lease<'_>) -> PortResult<Vec<Claimed>> {
        let now = claim.now.millis();
        let mut claimed = Vec::new();
        let mut failed = None;
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        // Page by page, oldest first, until the claim is full or the outbox read through.
        loop {
            let out = repeat("Query", || {
                self.dynamodb
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":pk", s(format!("SERVICE#{service}")))
                    .expression_attribute_values(":prefix", s("OUTBOX#"))
                    .set_exclusive_start_key(start.clone())
                    .consistent_read(true)
                    .send()
            })
            .await?;
            self.claim_page(service, &claim, now, out.items(), &mut claimed, &mut failed)
                .await?;
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() && claimed.len() < OUTBOX_CLAIM_MAX => {
                    start = Some(key.clone());
                }
                // Nothing claimed and a claim failed: the caller tries again.
                _ => {
                    return match failed {
                        Some(e) if claimed.is_empty() => Err(e),
                        _ => Ok(claimed),
                    };
                }
            }
        }
    }

    async fn outbox_done(&self, service: &str, keys: &[String]) -> PortResult<()> {
        for sk in keys {
            repeat("DeleteItem", || {
                self.dynamodb
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", s(format!("SERVICE#{service}")))
                    .key("sk", s(sk))
                    .send()
            })
            .await?;
        }
        Ok(())
    }

    async fn try_lease(&self, name: &str, lease: Lease<'_>) -> PortResult<Option<u64>> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("LEASE#{name}")))
            .key("sk", s("LEASE"))
            .update_expression("SET lease_owner = :me, lease_until = :until")
            .condition_expression(
                "attribute_not_exists(pk) OR lease_owner = :me OR lease_until < :now",
            )
            .expression_attribute_values(":me", s(lease.owner))
            .expression_attribute_values(":until", n(lease.until.millis()))
            .expression_attribute_values(":now", n(lease.now.millis()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(out.attributes().map_or(0, |a| get_n(a, "mark")))),
            Err(e)
                if e.as_service_error().and_then(ProvideErrorMetadata::code)
                    == Some("ConditionalCheckFailedException") =>
            {
                Ok(None)
            }
            Err(e) => Err(port_error("UpdateItem", e)),
        }
    }

    async fn mark_lease(&self, name: &str, owner: &str, mark: u64) -> PortResult<()> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("LEASE#{name}")))
            .key("sk", s("LEASE"))
            .update_expression("SET mark = :mark")
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":mark", n(mark))
            .send()
            .await;
        conditional("UpdateItem", result).map(|_| ())
    }
}

impl Aws {
    /// An `UpdateItem` of `service`'s state item.
    fn update_state(
        &self,
        service: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(state_key(service)))
    }

    /// Claims what it can of one page of outbox items, up to [`OUTBOX_CLAIM_MAX`] in all.
    async fn claim_page(
        &self,
        service: &str,
        claim: &Lease<'_>,
        now: u64,
        items: &[HashMap<String, AttributeValue>],
        claimed: &mut Vec<Claimed>,
        failed: &mut Option<PortError>,
    ) -> PortResult<()> {
        for item in items {
            if claimed.len() >= OUTBOX_CLAIM_MAX {
                return Ok(());
            }
            let (Some(sk), Some(entry)) = (
                get_s(item, "sk"),
                get_s(item, "entry").and_then(Entry::from_json),
            ) else {
                continue;
            };
            let owner = get_s(item, "claim_owner");
            if owner.is_some() && owner != Some(claim.owner) && get_n(item, "claim_until") >= now {
                continue;
            }
            let result = self
                .dynamodb
                .update_item()
                .table_name(&self.table)
                .key("pk", s(format!("SERVICE#{service}")))
                .key("sk", s(sk))
                .update_expression("SET claim_owner = :me, claim_until = :until")
                .condition_expression(
                    "attribute_exists(pk) AND (attribute_not_exists(claim_owner) OR claim_owner = :me OR claim_until < :now)",
                )
                .expression_attribute_values(":me", s(claim.owner))
                .expression_attribute_values(":until", n(claim.until.millis()))
                .expression_attribute_values(":now", n(now))
                .send()
                .await;
            // Not claimed: someone else claimed (or published and deleted) it meanwhile.
            // A claim that failed leaves the entry for the next flush: one failed write
            // among many must not keep a whole backlog from being published.
            match conditional("UpdateItem", result) {
                Ok(true) => claimed.push(Claimed {
                    key: sk.to_string(),
                    entry,
                }),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, entry = sk, "an outbox entry could not be claimed; it stays for the next flush");
                    *failed = Some(e);
                }
            }
        }
        Ok(())
    }
}

/// What a stored state item owes: its `owed` list while `applied` is below `version`.
fn owed_of(
    service: &str,
    item: &HashMap<String, AttributeValue>,
    version: u64,
) -> PortResult<Vec<Owed>> {
    if get_n(item, "applied") >= version {
        return Ok(Vec::new());
    }
    match get_s(item, "owed") {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| PortError::Permanent(format!("what {service} owes is unreadable: {e}"))),
    }
}

/// Judges a cancelled commit by its cancellation reasons (item 0 is the state, then the
/// outbox entries, the dedup key at `dedup_index`, the deployment records): a transaction
/// conflict or throttling could not be judged and is retryable; a failed condition on the
/// state is a conflict (the version moved, or another owner holds the lease); one on the
/// dedup key a duplicate.
fn cancelled(reasons: &[Option<String>], dedup_index: Option<usize>, text: &str) -> PortError {
    let code = |i: usize| reasons.get(i).and_then(|c| c.as_deref());
    let retryable = [
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    ];
    if reasons
        .iter()
        .any(|c| c.as_deref().is_some_and(|c| retryable.contains(&c)))
    {
        return PortError::Retryable(format!("TransactWriteItems: {text}"));
    }
    if code(0) == Some("ConditionalCheckFailed") {
        return PortError::Conflict;
    }
    if dedup_index.is_some_and(|i| code(i) == Some("ConditionalCheckFailed")) {
        return PortError::Duplicate;
    }
    PortError::Permanent(format!("TransactWriteItems: {text}"))
}
