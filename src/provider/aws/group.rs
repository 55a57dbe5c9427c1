//! `aws.autoscaling.Group`: sizes, launch template, health check and tags.
//! Fewer healthy instances in service than desired becomes the group's `status`
//! signal; `scale` runbook steps set the desired capacity.

use aws_sdk_autoscaling::types::{
    AutoScalingGroup, LaunchTemplateSpecification, LifecycleState, Tag,
};
use serde_json::{json, Map, Value};

use super::{
    declared_tags, missing_tags, next_page, owned_name, require_owned, sdk_error, tags_json,
    TokenBucket,
};
use crate::model::{Kind, ResourceKey};
use crate::vocab::{Action, ActionType, LiveResource};

const KIND: Kind = Kind::AwsAutoScalingGroup;

fn tags_of(g: &AutoScalingGroup) -> Vec<(String, String)> {
    g.tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

/// Instances that are in service and pass the group's health check.
fn in_service(g: &AutoScalingGroup) -> usize {
    g.instances()
        .iter()
        .filter(|i| {
            i.lifecycle_state() == Some(&LifecycleState::InService)
                && i.health_status() == Some("Healthy")
        })
        .count()
}

fn live(g: &AutoScalingGroup, region: &str) -> LiveResource {
    let tags = tags_of(g);
    let owned = owned_name(KIND, &tags);
    let name = g.auto_scaling_group_name().unwrap_or_default().to_string();
    let mut template = Map::new();
    if let Some(t) = g.launch_template() {
        if let Some(n) = t.launch_template_name() {
            template.insert("name".into(), json!(n));
        }
        if let Some(v) = t.version() {
            template.insert("version".into(), json!(v));
        }
    }
    let mut zones: Vec<&str> = g.availability_zones().iter().map(String::as_str).collect();
    zones.sort_unstable();
    let mut subnets: Vec<&str> = g
        .vpc_zone_identifier()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    subnets.sort_unstable();
    let desired = g.desired_capacity().unwrap_or(0);
    let serving = in_service(g);
    LiveResource {
        key: ResourceKey::new(KIND, owned.clone().unwrap_or_else(|| name.clone())),
        spec: json!({
            "region": region,
            "groupName": name,
            "minSize": g.min_size(),
            "maxSize": g.max_size(),
            "desiredCapacity": desired,
            "launchTemplate": template,
            "availabilityZones": zones,
            "subnets": subnets,
            "healthCheckType": g.health_check_type(),
            "healthCheckGracePeriod": g.health_check_grace_period(),
            "tags": tags_json(&tags),
        }),
        owned: owned.is_some(),
        note: (serving < desired as usize)
            .then(|| format!("{serving} of {desired} instances in service and healthy")),
        id: name,
    }
}

/// Every group in the region, or only those named in `only`.
pub(super) async fn list(
    asg: &aws_sdk_autoscaling::Client,
    region: &str,
    reads: &TokenBucket,
    only: Option<&[String]>,
) -> Result<Vec<LiveResource>, String> {
    let mut out = Vec::new();
    let mut pages = asg
        .describe_auto_scaling_groups()
        .set_auto_scaling_group_names(only.map(<[String]>::to_vec))
        .max_records(100)
        .into_paginator()
        .send();
    while let Some(page) = next_page(&mut pages, reads).await {
        let page = page.map_err(|e| sdk_error(&e))?;
        out.extend(page.auto_scaling_groups().iter().map(|g| live(g, region)));
    }
    Ok(out)
}

fn int(spec: &Value, field: &str) -> Option<i32> {
    spec.get(field).and_then(Value::as_i64).map(|v| v as i32)
}

fn template(spec: &Value) -> Option<LaunchTemplateSpecification> {
    let t = spec.get("launchTemplate")?;
    Some(
        LaunchTemplateSpecification::builder()
            .set_launch_template_name(t.get("name").and_then(Value::as_str).map(str::to_string))
            .set_version(t.get("version").and_then(Value::as_str).map(str::to_string))
            .build(),
    )
}

fn list_of(spec: &Value, field: &str) -> Option<Vec<String>> {
    spec.get(field).and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

/// Group tags (not copied to instances) from key and value pairs.
fn tags(pairs: Vec<(String, String)>, name: &str) -> Vec<Tag> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .propagate_at_launch(false)
                .build()
        })
        .collect()
}

async fn find(
    asg: &aws_sdk_autoscaling::Client,
    reads: &TokenBucket,
    name: &str,
) -> Result<Option<AutoScalingGroup>, String> {
    reads.acquire().await;
    Ok(asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| sdk_error(&e))?
        .auto_scaling_groups()
        .first()
        .cloned())
}

pub(super) async fn apply(
    asg: &aws_sdk_autoscaling::Client,
    reads: &TokenBucket,
    action: &Action,
    spec: &Value,
) -> Result<String, String> {
    let name = spec
        .get("groupName")
        .and_then(Value::as_str)
        .unwrap_or(&action.target.name)
        .to_string();
    let existing = find(asg, reads, &name).await?;
    match (action.action_type, existing) {
        (ActionType::Delete, None) => Ok("already gone".into()),
        (ActionType::Delete, Some(g)) => {
            require_owned(KIND, &tags_of(&g), "group", "delete")?;
            asg.delete_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .force_delete(true)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            Ok(format!("deleted {name}"))
        }
        (ActionType::Scale, None) => Err("the group does not exist".into()),
        (ActionType::Scale, Some(g)) => {
            let to = action
                .changes
                .iter()
                .find(|c| c.path == "/spec/desiredCapacity")
                .and_then(|c| c.to.as_i64())
                .ok_or("a scale action names the new desired capacity")?;
            let from = g.desired_capacity().unwrap_or(0);
            asg.set_desired_capacity()
                .auto_scaling_group_name(&name)
                .desired_capacity(to as i32)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            Ok(format!("desired capacity {from} → {to}"))
        }
        (ActionType::Create | ActionType::Update, None) => {
            asg.create_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .min_size(int(spec, "minSize").unwrap_or(0))
                .max_size(int(spec, "maxSize").unwrap_or(0))
                .set_desired_capacity(int(spec, "desiredCapacity"))
                .set_launch_template(template(spec))
                .set_availability_zones(list_of(spec, "availabilityZones"))
                .set_vpc_zone_identifier(list_of(spec, "subnets").map(|s| s.join(",")))
                .set_health_check_type(
                    spec.get("healthCheckType")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                )
                .set_health_check_grace_period(int(spec, "healthCheckGracePeriod"))
                .set_tags(Some(tags(declared_tags(spec), &name)))
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            Ok(format!("created {name}"))
        }
        (ActionType::Create | ActionType::Update, Some(g)) => {
            let mut did = Vec::new();
            let changed =
                |field: &str, live: Option<i32>| int(spec, field).filter(|w| Some(*w) != live);
            let (min, max, desired, grace) = (
                changed("minSize", g.min_size()),
                changed("maxSize", g.max_size()),
                changed("desiredCapacity", g.desired_capacity()),
                changed("healthCheckGracePeriod", g.health_check_grace_period()),
            );
            let check = spec
                .get("healthCheckType")
                .and_then(Value::as_str)
                .filter(|w| Some(*w) != g.health_check_type())
                .map(str::to_string);
            let live_template = live(&g, "").spec["launchTemplate"].clone();
            let template = spec
                .get("launchTemplate")
                .filter(|w| **w != live_template)
                .and_then(|_| template(spec));
            if min.is_some()
                || max.is_some()
                || desired.is_some()
                || grace.is_some()
                || check.is_some()
                || template.is_some()
            {
                asg.update_auto_scaling_group()
                    .auto_scaling_group_name(&name)
                    .set_min_size(min)
                    .set_max_size(max)
                    .set_desired_capacity(desired)
                    .set_health_check_grace_period(grace)
                    .set_health_check_type(check)
                    .set_launch_template(template)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&e))?;
                did.push("group updated".to_string());
            }
            let missing = tags(missing_tags(spec, &tags_of(&g)), &name);
            if !missing.is_empty() {
                let n = missing.len();
                asg.create_or_update_tags()
                    .set_tags(Some(missing))
                    .send()
                    .await
                    .map_err(|e| sdk_error(&e))?;
                did.push(format!("tagged ({n})"));
            }
            if did.is_empty() {
                did.push(format!("{name} already as declared"));
            }
            Ok(did.join("; "))
        }
        (other, _) => Err(format!(
            "an auto scaling group has no {} action",
            other.as_str()
        )),
    }
}
