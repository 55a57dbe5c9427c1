//! `aws.ec2.LaunchTemplate`: image, instance type, security groups (by tend
//! name, group name or id), user data and tags. The declared fields are
//! compared with the template's latest version; a change creates a new
//! version and makes it the default, so groups that follow `$Latest` or
//! `$Default` launch from it and groups pinned to a number keep theirs.

use std::collections::HashMap;

use aws_sdk_ec2::types::{
    Filter, InstanceType, LaunchTemplate, LaunchTemplateVersion, RequestLaunchTemplateData,
    ResourceType, TagSpecification,
};
use serde_json::{json, Map, Value};

use super::{
    declared_tags, ec2_tag_pairs, ec2_tags, instance, next_page, owned_name, require_owned,
    sdk_error, tag_ec2, tags_json, TokenBucket,
};
use crate::model::{Kind, Resource, ResourceKey};
use crate::vocab::{Action, ActionType, LiveResource};

const KIND: Kind = Kind::AwsLaunchTemplate;

/// The fields a version holds: a change to any of them is a new version.
const VERSIONED: [&str; 4] = ["imageId", "instanceType", "securityGroups", "userData"];

fn tags_of(t: &LaunchTemplate) -> Vec<(String, String)> {
    ec2_tag_pairs(t.tags())
}

/// Security group ids and names, to show live groups the way a
/// declaration names them.
#[derive(Default)]
struct GroupNames {
    by_id: HashMap<String, String>,
}

impl GroupNames {
    /// Names of the groups with these ids, in one filtered call (a filter,
    /// unlike a list of ids, does not fail on a group that is gone).
    async fn lookup(
        ec2: &aws_sdk_ec2::Client,
        reads: &TokenBucket,
        ids: Vec<String>,
    ) -> Result<GroupNames, String> {
        let mut by_id = HashMap::new();
        for chunk in ids.chunks(200) {
            let mut pages = ec2
                .describe_security_groups()
                .filters(
                    Filter::builder()
                        .name("group-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .into_paginator()
                .send();
            while let Some(page) = next_page(&mut pages, reads).await {
                let page = page.map_err(|e| sdk_error(&e))?;
                for g in page.security_groups() {
                    if let (Some(id), Some(name)) = (g.group_id(), g.group_name()) {
                        by_id.insert(id.to_string(), name.to_string());
                    }
                }
            }
        }
        Ok(GroupNames { by_id })
    }
}

/// The ids of the security groups the versions name (by id).
fn referenced_groups<'a>(versions: impl Iterator<Item = &'a LaunchTemplateVersion>) -> Vec<String> {
    let mut ids: Vec<String> = versions
        .filter_map(|v| v.launch_template_data())
        .flat_map(|d| d.security_group_ids().iter().cloned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A version's security groups in the form the declaration uses: each
/// group by id where the declaration names that id, else by group name.
fn groups_as_declared(v: &LaunchTemplateVersion, declared: &[&str], names: &GroupNames) -> Value {
    let data = v.launch_template_data();
    let mut out: Vec<String> = Vec::new();
    for id in data.map(|d| d.security_group_ids()).unwrap_or_default() {
        let shown = match names.by_id.get(id) {
            Some(name) if !declared.contains(&id.as_str()) => name.clone(),
            _ => id.clone(),
        };
        out.push(shown);
    }
    for name in data.map(|d| d.security_groups()).unwrap_or_default() {
        let id = names
            .by_id
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id.as_str());
        match id {
            Some(id) if declared.contains(&id) => out.push(id.to_string()),
            _ => out.push(name.clone()),
        }
    }
    out.sort();
    out.dedup();
    json!(out)
}

fn declared_groups(spec: Option<&Value>) -> Vec<&str> {
    spec.and_then(|s| s.get("securityGroups"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The live form of a template and its latest version, comparable with a
/// normalised declaration (`declared`, if there is one).
fn live_spec(
    t: &LaunchTemplate,
    latest: Option<&LaunchTemplateVersion>,
    region: &str,
    declared: Option<&Value>,
    names: &GroupNames,
) -> Value {
    let data = latest.and_then(|v| v.launch_template_data());
    let mut spec = Map::new();
    spec.insert("region".into(), json!(region));
    spec.insert("launchTemplateName".into(), json!(t.launch_template_name()));
    spec.insert("imageId".into(), json!(data.and_then(|d| d.image_id())));
    spec.insert(
        "instanceType".into(),
        json!(data.and_then(|d| d.instance_type()).map(|t| t.as_str())),
    );
    spec.insert(
        "securityGroups".into(),
        latest
            .map(|v| groups_as_declared(v, &declared_groups(declared), names))
            .unwrap_or_else(|| json!([])),
    );
    spec.insert(
        "userData".into(),
        json!(data.and_then(|d| d.user_data()).map(user_data_text)),
    );
    spec.insert("tags".into(), tags_json(&tags_of(t)));
    spec.insert("latestVersion".into(), json!(t.latest_version_number()));
    spec.insert("defaultVersion".into(), json!(t.default_version_number()));
    Value::Object(spec)
}

fn live(
    t: &LaunchTemplate,
    latest: Option<&LaunchTemplateVersion>,
    region: &str,
    declared: &HashMap<String, &Resource>,
    names: &GroupNames,
) -> LiveResource {
    let tags = tags_of(t);
    let owned = owned_name(KIND, &tags);
    let name = owned
        .clone()
        .unwrap_or_else(|| t.launch_template_name().unwrap_or_default().to_string());
    let spec = live_spec(
        t,
        latest,
        region,
        declared.get(&name).map(|r| &r.spec),
        names,
    );
    LiveResource {
        key: ResourceKey::new(KIND, name),
        spec,
        owned: owned.is_some(),
        id: t.launch_template_id().unwrap_or_default().to_string(),
        note: None,
    }
}

/// Every template in the region, or only those named in `only`, each with
/// its latest version.
pub(super) async fn list(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    reads: &TokenBucket,
    declared: &HashMap<String, &Resource>,
    only: Option<&[String]>,
) -> Result<Vec<LiveResource>, String> {
    if only.is_some_and(<[String]>::is_empty) {
        return Ok(Vec::new());
    }
    let mut templates = Vec::new();
    let mut pages = ec2
        .describe_launch_templates()
        // A filter, unlike a list of names, does not fail on a name that
        // does not exist yet.
        .set_filters(only.map(|names| {
            vec![Filter::builder()
                .name("launch-template-name")
                .set_values(Some(names.to_vec()))
                .build()]
        }))
        .max_results(200)
        .into_paginator()
        .send();
    while let Some(page) = next_page(&mut pages, reads).await {
        let page = page.map_err(|e| sdk_error(&e))?;
        templates.extend(page.launch_templates().iter().cloned());
    }
    if templates.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Option<Vec<String>> = only.map(|_| {
        templates
            .iter()
            .filter_map(|t| t.launch_template_id().map(str::to_string))
            .collect()
    });
    let latest = latest_versions(ec2, reads, ids.as_deref()).await?;
    let names = GroupNames::lookup(ec2, reads, referenced_groups(latest.values())).await?;
    Ok(templates
        .iter()
        .map(|t| {
            let v = t.launch_template_id().and_then(|id| latest.get(id));
            live(t, v, region, declared, &names)
        })
        .collect())
}

/// The latest version of each template, by template id: of the given
/// templates, or of every template in the region in one paged call.
async fn latest_versions(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    ids: Option<&[String]>,
) -> Result<HashMap<String, LaunchTemplateVersion>, String> {
    let mut out = HashMap::new();
    let mut keep = |versions: &[LaunchTemplateVersion]| {
        for v in versions {
            if let Some(id) = v.launch_template_id() {
                out.insert(id.to_string(), v.clone());
            }
        }
    };
    match ids {
        Some(ids) => {
            for id in ids {
                reads.acquire().await;
                let page = ec2
                    .describe_launch_template_versions()
                    .launch_template_id(id)
                    .versions("$Latest")
                    .send()
                    .await
                    .map_err(|e| sdk_error(&e))?;
                keep(page.launch_template_versions());
            }
        }
        None => {
            // Without a template, `$Latest` means the latest version of
            // every template.
            let mut pages = ec2
                .describe_launch_template_versions()
                .versions("$Latest")
                .max_results(200)
                .into_paginator()
                .send();
            while let Some(page) = next_page(&mut pages, reads).await {
                let page = page.map_err(|e| sdk_error(&e))?;
                keep(page.launch_template_versions());
            }
        }
    }
    Ok(out)
}

/// The live template a declared one corresponds to: by ownership tag, else
/// (for adoption) an untagged one by name.
async fn find(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    name: &str,
    spec: &Value,
) -> Result<Option<LaunchTemplate>, String> {
    reads.acquire().await;
    let tagged = ec2
        .describe_launch_templates()
        .filters(super::owner_filter(KIND, name))
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    if let Some(t) = tagged.launch_templates().first() {
        return Ok(Some(t.clone()));
    }
    let Some(template_name) = spec.get("launchTemplateName").and_then(Value::as_str) else {
        return Ok(None);
    };
    reads.acquire().await;
    let named = ec2
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name("launch-template-name")
                .values(template_name)
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    Ok(named
        .launch_templates()
        .iter()
        .find(|t| owned_name(KIND, &tags_of(t)).is_none())
        .cloned())
}

/// The declared version data, security groups resolved to ids.
async fn data(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    spec: &Value,
) -> Result<RequestLaunchTemplateData, String> {
    let str_of = |f: &str| spec.get(f).and_then(Value::as_str).map(str::to_string);
    let groups = match spec.get("securityGroups") {
        Some(_) => Some(instance::group_ids(ec2, reads, spec).await?),
        None => None,
    };
    Ok(RequestLaunchTemplateData::builder()
        .set_image_id(str_of("imageId"))
        .set_instance_type(str_of("instanceType").map(|t| InstanceType::from(t.as_str())))
        .set_security_group_ids(groups)
        .set_user_data(str_of("userData").map(|u| base64_encode(u.as_bytes())))
        .build())
}

/// The declared versioned fields that differ from the live latest version.
fn changed_fields(spec: &Value, live: &Value) -> Vec<&'static str> {
    VERSIONED
        .into_iter()
        .filter(|f| spec.get(*f).is_some_and(|want| live.get(*f) != Some(want)))
        .collect()
}

pub(super) async fn apply(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    action: &Action,
    spec: &Value,
) -> Result<String, String> {
    let name = &action.target.name;
    // Re-read live state before acting: an earlier attempt may have done
    // part of the work.
    let existing = find(ec2, reads, name, spec).await?;
    match (action.action_type, existing) {
        (ActionType::Delete, None) => Ok("already gone".into()),
        (ActionType::Delete, Some(t)) => {
            require_owned(KIND, &tags_of(&t), "launch template", "delete")?;
            let id = t.launch_template_id().unwrap_or_default();
            ec2.delete_launch_template()
                .launch_template_id(id)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            Ok(format!("deleted {id}"))
        }
        (ActionType::Create | ActionType::Update, None) => create(ec2, reads, name, spec).await,
        (ActionType::Create | ActionType::Update, Some(t)) => update(ec2, reads, &t, spec).await,
        (other, _) => Err(format!(
            "a launch template has no {} action",
            other.as_str()
        )),
    }
}

async fn create(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    name: &str,
    spec: &Value,
) -> Result<String, String> {
    let template_name = spec
        .get("launchTemplateName")
        .and_then(Value::as_str)
        .unwrap_or(name);
    let created = ec2
        .create_launch_template()
        .launch_template_name(template_name)
        .launch_template_data(data(ec2, reads, spec).await?)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .set_tags(Some(ec2_tags(declared_tags(spec))))
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    let id = created
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .unwrap_or_default();
    Ok(format!("created {template_name} ({id}), version 1"))
}

async fn update(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    t: &LaunchTemplate,
    spec: &Value,
) -> Result<String, String> {
    let id = t.launch_template_id().unwrap_or_default().to_string();
    if let Some(want) = spec.get("launchTemplateName").and_then(Value::as_str) {
        let have = t.launch_template_name().unwrap_or_default();
        if want != have {
            return Err(format!(
                "launchTemplateName cannot change in place ({have} → {want}); declare a new template and remove this one"
            ));
        }
    }
    let mut did = Vec::new();
    did.extend(tag_ec2(ec2, &id, spec, &tags_of(t)).await?);
    let latest = latest_versions(ec2, reads, Some(std::slice::from_ref(&id))).await?;
    let latest = latest.get(&id);
    let names = GroupNames::lookup(ec2, reads, referenced_groups(latest.into_iter())).await?;
    let live = live_spec(t, latest, "", Some(spec), &names);
    let changed = changed_fields(spec, &live);
    if !changed.is_empty() {
        // The declared fields, the rest copied from the latest version.
        let created = ec2
            .create_launch_template_version()
            .launch_template_id(&id)
            .source_version("$Latest")
            .launch_template_data(data(ec2, reads, spec).await?)
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        let version = created
            .launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or("the new version has no number")?;
        ec2.modify_launch_template()
            .launch_template_id(&id)
            .default_version(version.to_string())
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        did.push(format!(
            "version {version} ({}) is the default",
            changed.join(", ")
        ));
    }
    if did.is_empty() {
        did.push(format!("{id} already as declared"));
    }
    Ok(did.join("; "))
}

/// Live user data as text; what is not UTF-8 stays in base64.
fn user_data_text(encoded: &str) -> String {
    base64_decode(encoded)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| encoded.to_string())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as EC2 takes user data.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional and whitespace ignored; `None` if it
/// is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::ResponseLaunchTemplateData;

    #[test]
    fn user_data_round_trips_through_base64() {
        for text in ["", "a", "ab", "abc", "#!/bin/sh\necho héllo\n"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(user_data_text(&encoded), text);
        }
        assert_eq!(base64_encode(b"#!/bin/sh\n"), "IyEvYmluL3NoCg==");
        assert_eq!(user_data_text("not base64!"), "not base64!");
    }

    fn version(ids: &[&str], names: &[&str]) -> LaunchTemplateVersion {
        LaunchTemplateVersion::builder()
            .launch_template_data(
                ResponseLaunchTemplateData::builder()
                    .set_security_group_ids(Some(ids.iter().map(|s| s.to_string()).collect()))
                    .set_security_groups(Some(names.iter().map(|s| s.to_string()).collect()))
                    .build(),
            )
            .build()
    }

    #[test]
    fn live_security_groups_take_the_form_each_declared_one_has() {
        let names = GroupNames {
            by_id: HashMap::from([
                ("sg-1".to_string(), "web".to_string()),
                ("sg-2".to_string(), "ssh".to_string()),
                ("sg-3".to_string(), "legacy".to_string()),
            ]),
        };
        let v = version(&["sg-1", "sg-2"], &["legacy"]);
        assert_eq!(
            groups_as_declared(&v, &["web", "sg-2", "sg-3"], &names),
            json!(["sg-2", "sg-3", "web"])
        );
        assert_eq!(
            groups_as_declared(&v, &[], &names),
            json!(["legacy", "ssh", "web"]),
            "names where nothing is declared"
        );
    }

    #[test]
    fn only_declared_versioned_fields_make_a_new_version() {
        let live = json!({"imageId": "ami-1", "instanceType": "t3.micro", "securityGroups": ["web"], "userData": null, "tags": {"team": "x"}});
        assert!(
            changed_fields(&json!({"imageId": "ami-1", "tags": {"team": "y"}}), &live).is_empty()
        );
        assert_eq!(
            changed_fields(
                &json!({"imageId": "ami-1", "instanceType": "t3.small", "userData": "x"}),
                &live
            ),
            ["instanceType", "userData"]
        );
    }
}
