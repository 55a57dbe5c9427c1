//! `aws.ec2.Instance`: type, image, subnet, security groups (by tend name or
//! id), tags and whether it runs. Failed status checks become the instance's
//! `status` signal for the healing loop.

use std::collections::HashMap;

use aws_sdk_ec2::types::{
    AttributeValue, Filter, Instance, InstanceStateName, InstanceType, ResourceType,
    TagSpecification,
};
use serde_json::{json, Value};

use super::{
    declared_tags, ec2_tag_pairs, ec2_tags, next_page, owned_name, require_owned, sdk_error,
    tag_ec2, tags_json, TokenBucket, OWNER_TAG,
};
use crate::model::{Kind, Resource, ResourceKey};
use crate::vocab::{Action, ActionType, LiveResource};

const KIND: Kind = Kind::AwsInstance;

fn tags_of(i: &Instance) -> Vec<(String, String)> {
    ec2_tag_pairs(i.tags())
}

/// `pending` becomes `running` and `stopping` becomes `stopped`: an instance
/// on its way is not drift.
fn state_of(i: &Instance) -> Option<&'static str> {
    match i.state()?.name()? {
        InstanceStateName::Pending | InstanceStateName::Running => Some("running"),
        InstanceStateName::Stopping | InstanceStateName::Stopped => Some("stopped"),
        _ => None,
    }
}

/// Security groups in the form the declaration uses: ids where it names
/// ids, group names otherwise.
fn groups_as_declared(i: &Instance, declared: Option<&Value>) -> Value {
    let by_id = declared.and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .any(|g| g.as_str().is_some_and(|s| s.starts_with("sg-")))
    });
    let mut out: Vec<String> = i
        .security_groups()
        .iter()
        .filter_map(|g| if by_id { g.group_id() } else { g.group_name() }.map(str::to_string))
        .collect();
    out.sort();
    json!(out)
}

/// What an instance listing covers.
pub(super) struct Scope<'a> {
    /// Declared instances by tend name, to show security groups the way
    /// each declares them.
    pub declared: &'a HashMap<String, &'a Resource>,
    /// Only the instances with these ownership tag values, if set.
    pub owners: Option<&'a [String]>,
    /// Whether to read status checks.
    pub status: bool,
}

pub(super) async fn list(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    reads: &TokenBucket,
    scope: Scope<'_>,
) -> Result<Vec<LiveResource>, String> {
    let Scope {
        declared: desired,
        owners,
        status,
    } = scope;
    let mut instances = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .set_filters(owners.map(|o| {
            vec![Filter::builder()
                .name(format!("tag:{OWNER_TAG}"))
                .set_values(Some(o.to_vec()))
                .build()]
        }))
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = next_page(&mut pages, reads).await {
        let page = page.map_err(|e| sdk_error(&e))?;
        for r in page.reservations() {
            instances.extend(
                r.instances()
                    .iter()
                    .filter(|i| state_of(i).is_some())
                    .cloned(),
            );
        }
    }
    let impaired = match (status, owners) {
        (false, _) => HashMap::new(),
        (true, None) => impaired(ec2, reads, None).await?,
        (true, Some(_)) if instances.is_empty() => HashMap::new(),
        (true, Some(_)) => {
            let ids: Vec<String> = instances
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            impaired(ec2, reads, Some(ids)).await?
        }
    };
    Ok(instances
        .iter()
        .map(|i| {
            let tags = tags_of(i);
            let owned = owned_name(KIND, &tags);
            let id = i.instance_id().unwrap_or_default().to_string();
            let name = owned.clone().unwrap_or_else(|| id.clone());
            let declared = desired.get(&name).map(|r| &r.spec);
            LiveResource {
                key: ResourceKey::new(KIND, name),
                spec: json!({
                    "region": region,
                    "instanceType": i.instance_type().map(|t| t.as_str()),
                    "imageId": i.image_id(),
                    "subnetId": i.subnet_id(),
                    "securityGroups": groups_as_declared(i, declared.and_then(|s| s.get("securityGroups"))),
                    "tags": tags_json(&tags),
                    "state": state_of(i),
                }),
                owned: owned.is_some(),
                note: impaired.get(&id).cloned(),
                id,
            }
        })
        .collect())
}

/// Instances whose instance or system status check is impaired, among
/// `ids` if given, else in the whole region.
async fn impaired(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    ids: Option<Vec<String>>,
) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    // The API takes either instance ids or a page size, not both.
    let page_size = ids.is_none().then_some(1000);
    let mut pages = ec2
        .describe_instance_status()
        .set_instance_ids(ids)
        .set_max_results(page_size)
        .into_paginator()
        .send();
    while let Some(page) = next_page(&mut pages, reads).await {
        let page = page.map_err(|e| sdk_error(&e))?;
        for s in page.instance_statuses() {
            let check = |c: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| {
                c.and_then(|c| c.status()).map(|s| s.as_str().to_string())
            };
            let (inst, sys) = (check(s.instance_status()), check(s.system_status()));
            if inst.as_deref() == Some("impaired") || sys.as_deref() == Some("impaired") {
                out.insert(
                    s.instance_id().unwrap_or_default().to_string(),
                    format!(
                        "status checks: instance {}, system {}",
                        inst.unwrap_or_else(|| "unknown".into()),
                        sys.unwrap_or_else(|| "unknown".into())
                    ),
                );
            }
        }
    }
    Ok(out)
}

async fn find(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    name: &str,
) -> Result<Option<Instance>, String> {
    reads.acquire().await;
    let out = ec2
        .describe_instances()
        .filters(super::owner_filter(KIND, name))
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| state_of(i).is_some())
        .cloned())
}

/// Declared security groups as ids: `sg-…` as is, tend names through the
/// group's ownership tag, other names by group name.
pub(super) async fn group_ids(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    spec: &Value,
) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for g in spec
        .get("securityGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if g.starts_with("sg-") {
            ids.push(g.to_string());
            continue;
        }
        reads.acquire().await;
        let tagged = ec2
            .describe_security_groups()
            .filters(super::owner_filter(Kind::AwsSecurityGroup, g))
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        let found = match tagged.security_groups().first() {
            Some(sg) => sg.group_id().map(str::to_string),
            None => {
                reads.acquire().await;
                ec2.describe_security_groups()
                    .filters(Filter::builder().name("group-name").values(g).build())
                    .send()
                    .await
                    .map_err(|e| sdk_error(&e))?
                    .security_groups()
                    .first()
                    .and_then(|sg| sg.group_id().map(str::to_string))
            }
        };
        ids.push(found.ok_or_else(|| format!("security group `{g}` does not exist"))?);
    }
    Ok(ids)
}

async fn launch(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    action: &Action,
    spec: &Value,
) -> Result<String, String> {
    let str_of = |f: &str| spec.get(f).and_then(Value::as_str);
    let mut req = ec2
        .run_instances()
        .image_id(str_of("imageId").unwrap_or_default())
        .instance_type(InstanceType::from(
            str_of("instanceType").unwrap_or_default(),
        ))
        .min_count(1)
        .max_count(1)
        // The same action retried launches nothing new.
        .client_token(format!(
            "tend-{}-{}",
            action.action_type.as_str(),
            action.fingerprint
        ))
        .set_security_group_ids(Some(group_ids(ec2, reads, spec).await?))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(ec2_tags(declared_tags(spec))))
                .build(),
        );
    if let Some(subnet) = str_of("subnetId") {
        req = req.subnet_id(subnet);
    }
    let out = req.send().await.map_err(|e| sdk_error(&e))?;
    let id = out
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .unwrap_or_default()
        .to_string();
    if str_of("state") == Some("stopped") {
        ec2.stop_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        return Ok(format!("launched {id} and stopped it"));
    }
    Ok(format!("launched {id}"))
}

async fn terminate(ec2: &aws_sdk_ec2::Client, i: &Instance) -> Result<String, String> {
    require_owned(KIND, &tags_of(i), "instance", "terminate")?;
    let id = i.instance_id().unwrap_or_default();
    ec2.terminate_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    Ok(format!("terminated {id}"))
}

pub(super) async fn apply(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    action: &Action,
    spec: &Value,
) -> Result<String, String> {
    let existing = find(ec2, reads, &action.target.name).await?;
    match (action.action_type, existing) {
        (ActionType::Delete, None) => Ok("already gone".into()),
        (ActionType::Delete, Some(i)) => terminate(ec2, &i).await,
        (ActionType::Create | ActionType::Update, None) => launch(ec2, reads, action, spec).await,
        (ActionType::Replace, existing) => {
            let mut did = Vec::new();
            if let Some(i) = existing {
                did.push(terminate(ec2, &i).await?);
            }
            did.push(launch(ec2, reads, action, spec).await?);
            Ok(did.join("; "))
        }
        (ActionType::Restart, None) => Err("the instance does not exist".into()),
        (ActionType::Restart, Some(i)) => {
            let id = i.instance_id().unwrap_or_default();
            ec2.reboot_instances()
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            Ok(format!("rebooted {id}"))
        }
        (ActionType::Create | ActionType::Update, Some(i)) => update(ec2, reads, &i, spec).await,
        (other, _) => Err(format!("an instance has no {} action", other.as_str())),
    }
}

async fn update(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    i: &Instance,
    spec: &Value,
) -> Result<String, String> {
    let id = i.instance_id().unwrap_or_default().to_string();
    let str_of = |f: &str| spec.get(f).and_then(Value::as_str);
    for (field, live) in [("imageId", i.image_id()), ("subnetId", i.subnet_id())] {
        if let Some(want) = str_of(field) {
            if Some(want) != live {
                return Err(format!(
                    "{field} cannot change in place ({} → {want}); a runbook `replace` step or a new instance does that",
                    live.unwrap_or("none")
                ));
            }
        }
    }
    let mut did = Vec::new();
    did.extend(tag_ec2(ec2, &id, spec, &tags_of(i)).await?);
    if spec.get("securityGroups").is_some() {
        let want = group_ids(ec2, reads, spec).await?;
        let mut have: Vec<String> = i
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        let mut sorted = want.clone();
        sorted.sort();
        have.sort();
        if sorted != have {
            ec2.modify_instance_attribute()
                .instance_id(&id)
                .set_groups(Some(want))
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            did.push("security groups set".into());
        }
    }
    let running = state_of(i) == Some("running");
    let want_running = str_of("state").unwrap_or("running") == "running";
    if let Some(t) = str_of("instanceType") {
        if i.instance_type().map(|x| x.as_str()) != Some(t) {
            // The type changes only while the instance is stopped.
            if running {
                ec2.stop_instances()
                    .instance_ids(&id)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&e))?;
            }
            ec2.modify_instance_attribute()
                .instance_id(&id)
                .instance_type(AttributeValue::builder().value(t).build())
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            did.push(format!("type set to {t}"));
            if want_running {
                ec2.start_instances()
                    .instance_ids(&id)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&e))?;
            }
            return Ok(did.join("; "));
        }
    }
    if want_running && !running {
        ec2.start_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        did.push(format!("started {id}"));
    } else if !want_running && running {
        ec2.stop_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        did.push(format!("stopped {id}"));
    }
    if did.is_empty() {
        did.push(format!("{id} already as declared"));
    }
    Ok(did.join("; "))
}
