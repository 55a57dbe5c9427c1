//! `aws.ec2.SecurityGroup`: rules are flattened to one CIDR each and sorted,
//! so they compare as sets; only what is declared is compared.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, Ipv6Range, ResourceType, SecurityGroup, TagSpecification,
};
use serde_json::{json, Map, Value};

use super::{
    declared_tags, ec2_tag_pairs, ec2_tags, next_page, owned_name, require_owned, sdk_error,
    tag_ec2, tags_json, TokenBucket,
};
use crate::model::{Kind, ResourceKey};
use crate::vocab::{Action, ActionType, LiveResource};

const KIND: Kind = Kind::AwsSecurityGroup;

/// One rule: a protocol, a port range (absent for all protocols) and one
/// CIDR.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rule {
    protocol: String,
    from: Option<i32>,
    to: Option<i32>,
    cidr: String,
    description: Option<String>,
}

impl Rule {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("protocol".into(), json!(self.protocol));
        if let (Some(f), Some(t)) = (self.from, self.to) {
            m.insert("fromPort".into(), json!(f));
            m.insert("toPort".into(), json!(t));
        }
        m.insert("cidr".into(), json!(self.cidr));
        if let Some(d) = &self.description {
            m.insert("description".into(), json!(d));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Option<Rule> {
        let protocol = match v.get("protocol")?.as_str()? {
            "all" | "-1" => "all".to_string(),
            p => p.to_ascii_lowercase(),
        };
        let ports = protocol != "all";
        Some(Rule {
            from: ports
                .then(|| v.get("fromPort").and_then(Value::as_i64))
                .flatten()
                .map(|p| p as i32),
            to: ports
                .then(|| v.get("toPort").and_then(Value::as_i64))
                .flatten()
                .map(|p| p as i32),
            cidr: v.get("cidr")?.as_str()?.to_string(),
            description: v
                .get("description")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .map(str::to_string),
            protocol,
        })
    }

    fn permission(&self) -> IpPermission {
        let mut p = IpPermission::builder().ip_protocol(if self.protocol == "all" {
            "-1"
        } else {
            self.protocol.as_str()
        });
        if let (Some(f), Some(t)) = (self.from, self.to) {
            p = p.from_port(f).to_port(t);
        }
        if self.cidr.contains(':') {
            p = p.ipv6_ranges(
                Ipv6Range::builder()
                    .cidr_ipv6(&self.cidr)
                    .set_description(self.description.clone())
                    .build(),
            );
        } else {
            p = p.ip_ranges(
                IpRange::builder()
                    .cidr_ip(&self.cidr)
                    .set_description(self.description.clone())
                    .build(),
            );
        }
        p.build()
    }
}

fn flatten(perms: &[IpPermission]) -> Vec<Rule> {
    let mut out = BTreeSet::new();
    for p in perms {
        let protocol = match p.ip_protocol().unwrap_or("-1") {
            "-1" => "all".to_string(),
            "6" => "tcp".to_string(),
            "17" => "udp".to_string(),
            "1" => "icmp".to_string(),
            other => other.to_ascii_lowercase(),
        };
        let ports = protocol != "all";
        let (from, to) = if ports {
            (p.from_port(), p.to_port())
        } else {
            (None, None)
        };
        let mut push = |cidr: Option<&str>, description: Option<&str>| {
            if let Some(c) = cidr {
                out.insert(Rule {
                    protocol: protocol.clone(),
                    from,
                    to,
                    cidr: c.to_string(),
                    description: description.filter(|d| !d.is_empty()).map(str::to_string),
                });
            }
        };
        for r in p.ip_ranges() {
            push(r.cidr_ip(), r.description());
        }
        for r in p.ipv6_ranges() {
            push(r.cidr_ipv6(), r.description());
        }
    }
    out.into_iter().collect()
}

fn rules_json(rules: &[Rule]) -> Value {
    Value::Array(rules.iter().map(Rule::to_json).collect())
}

/// Declared rules in the same canonical form as live ones.
pub(super) fn normalize(spec: &mut Map<String, Value>) {
    for field in ["ingress", "egress"] {
        if let Some(Value::Array(items)) = spec.get(field) {
            let rules: BTreeSet<Rule> = items.iter().filter_map(Rule::from_json).collect();
            let rules: Vec<Rule> = rules.into_iter().collect();
            spec.insert(field.into(), rules_json(&rules));
        }
    }
}

fn tags_of(g: &SecurityGroup) -> Vec<(String, String)> {
    ec2_tag_pairs(g.tags())
}

fn live(g: &SecurityGroup, region: &str) -> LiveResource {
    let tags = tags_of(g);
    let owned = owned_name(KIND, &tags);
    let name = owned
        .clone()
        .unwrap_or_else(|| g.group_name().unwrap_or_default().to_string());
    LiveResource {
        key: ResourceKey::new(KIND, name),
        spec: json!({
            "region": region,
            "groupName": g.group_name(),
            "description": g.description(),
            "vpcId": g.vpc_id(),
            "ingress": rules_json(&flatten(g.ip_permissions())),
            "egress": rules_json(&flatten(g.ip_permissions_egress())),
            "tags": tags_json(&tags),
        }),
        owned: owned.is_some(),
        id: g.group_id().unwrap_or_default().to_string(),
        note: None,
    }
}

pub(super) async fn list(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    reads: &TokenBucket,
) -> Result<Vec<LiveResource>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_security_groups()
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = next_page(&mut pages, reads).await {
        let page = page.map_err(|e| sdk_error(&e))?;
        out.extend(page.security_groups().iter().map(|g| live(g, region)));
    }
    Ok(out)
}

/// The live group a desired one corresponds to: by ownership tag, else (for
/// adoption) by name.
async fn find(
    ec2: &aws_sdk_ec2::Client,
    reads: &TokenBucket,
    name: &str,
    spec: &Value,
) -> Result<Option<SecurityGroup>, String> {
    let by_tag = super::owner_filter(KIND, name);
    reads.acquire().await;
    let tagged = ec2
        .describe_security_groups()
        .filters(by_tag)
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    if let Some(g) = tagged.security_groups().first() {
        return Ok(Some(g.clone()));
    }
    let Some(group_name) = spec.get("groupName").and_then(Value::as_str) else {
        return Ok(None);
    };
    let mut req = ec2.describe_security_groups().filters(
        Filter::builder()
            .name("group-name")
            .values(group_name)
            .build(),
    );
    if let Some(vpc) = spec.get("vpcId").and_then(Value::as_str) {
        req = req.filters(Filter::builder().name("vpc-id").values(vpc).build());
    }
    reads.acquire().await;
    let named = req.send().await.map_err(|e| sdk_error(&e))?;
    Ok(named
        .security_groups()
        .iter()
        .find(|g| owned_name(KIND, &tags_of(g)).is_none())
        .cloned())
}

fn declared_rules(spec: &Value, field: &str) -> Option<BTreeSet<Rule>> {
    spec.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Rule::from_json).collect())
}

/// Revokes live rules that are not declared and authorizes declared ones
/// that are missing; returns what it did.
async fn sync_rules(
    ec2: &aws_sdk_ec2::Client,
    group_id: &str,
    egress: bool,
    live: &[Rule],
    want: &BTreeSet<Rule>,
) -> Result<Vec<String>, String> {
    let have: BTreeSet<Rule> = live.iter().cloned().collect();
    let revoke: Vec<IpPermission> = have.difference(want).map(Rule::permission).collect();
    let grant: Vec<IpPermission> = want.difference(&have).map(Rule::permission).collect();
    let dir = if egress { "egress" } else { "ingress" };
    let mut did = Vec::new();
    if !revoke.is_empty() {
        let n = revoke.len();
        if egress {
            ec2.revoke_security_group_egress()
                .group_id(group_id)
                .set_ip_permissions(Some(revoke))
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
        } else {
            ec2.revoke_security_group_ingress()
                .group_id(group_id)
                .set_ip_permissions(Some(revoke))
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
        }
        did.push(format!("revoked {n} {dir} rule(s)"));
    }
    if !grant.is_empty() {
        let n = grant.len();
        if egress {
            ec2.authorize_security_group_egress()
                .group_id(group_id)
                .set_ip_permissions(Some(grant))
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
        } else {
            ec2.authorize_security_group_ingress()
                .group_id(group_id)
                .set_ip_permissions(Some(grant))
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
        }
        did.push(format!("authorized {n} {dir} rule(s)"));
    }
    Ok(did)
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
    match action.action_type {
        ActionType::Delete => {
            let Some(g) = existing else {
                return Ok("already gone".into());
            };
            require_owned(KIND, &tags_of(&g), "security group", "delete")?;
            let id = g.group_id().unwrap_or_default();
            ec2.delete_security_group()
                .group_id(id)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            Ok(format!("deleted {id}"))
        }
        ActionType::Create | ActionType::Update => {
            let mut did = Vec::new();
            let group = match existing {
                Some(g) => g,
                None => {
                    let mut req = ec2
                        .create_security_group()
                        .group_name(
                            spec.get("groupName")
                                .and_then(Value::as_str)
                                .unwrap_or(name),
                        )
                        .description(
                            spec.get("description")
                                .and_then(Value::as_str)
                                .unwrap_or(name),
                        )
                        .tag_specifications(
                            TagSpecification::builder()
                                .resource_type(ResourceType::SecurityGroup)
                                .set_tags(Some(ec2_tags(declared_tags(spec))))
                                .build(),
                        );
                    if let Some(vpc) = spec.get("vpcId").and_then(Value::as_str) {
                        req = req.vpc_id(vpc);
                    }
                    let created = req.send().await.map_err(|e| sdk_error(&e))?;
                    let id = created.group_id().unwrap_or_default().to_string();
                    did.push(format!("created {id}"));
                    find(ec2, reads, name, spec)
                        .await?
                        .ok_or_else(|| format!("created {id} but cannot read it back"))?
                }
            };
            let id = group.group_id().unwrap_or_default().to_string();
            for field in ["description", "vpcId", "groupName"] {
                let want = spec.get(field).and_then(Value::as_str);
                let have = match field {
                    "description" => group.description(),
                    "vpcId" => group.vpc_id(),
                    _ => group.group_name(),
                };
                if let Some(w) = want {
                    if Some(w) != have {
                        return Err(format!(
                            "{field} cannot change in place ({} → {w}); declare a new group and remove this one",
                            have.unwrap_or("none")
                        ));
                    }
                }
            }
            did.extend(tag_ec2(ec2, &id, spec, &tags_of(&group)).await?);
            if let Some(want) = declared_rules(spec, "ingress") {
                did.extend(
                    sync_rules(ec2, &id, false, &flatten(group.ip_permissions()), &want).await?,
                );
            }
            if let Some(want) = declared_rules(spec, "egress") {
                did.extend(
                    sync_rules(
                        ec2,
                        &id,
                        true,
                        &flatten(group.ip_permissions_egress()),
                        &want,
                    )
                    .await?,
                );
            }
            if did.is_empty() {
                did.push(format!("{id} already as declared"));
            }
            Ok(did.join("; "))
        }
        other => Err(format!("a security group has no {} action", other.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_rules_compare_as_sets_in_one_canonical_form() {
        let mut a = json!({"ingress": [
            {"protocol": "TCP", "fromPort": 443, "toPort": 443, "cidr": "0.0.0.0/0"},
            {"protocol": "all", "fromPort": 0, "toPort": 65535, "cidr": "10.0.0.0/8"},
            {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "10.0.0.0/8", "description": ""}
        ]});
        let mut b = json!({"ingress": [
            {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "10.0.0.0/8"},
            {"protocol": "-1", "cidr": "10.0.0.0/8"},
            {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidr": "0.0.0.0/0"},
            {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidr": "0.0.0.0/0"}
        ]});
        normalize(a.as_object_mut().unwrap());
        normalize(b.as_object_mut().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            a["ingress"][0],
            json!({"protocol": "all", "cidr": "10.0.0.0/8"}),
            "all protocols carry no ports"
        );
    }

    #[test]
    fn live_permissions_flatten_to_one_rule_per_cidr() {
        let p = IpPermission::builder()
            .ip_protocol("6")
            .from_port(22)
            .to_port(22)
            .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/8").build())
            .ipv6_ranges(
                Ipv6Range::builder()
                    .cidr_ipv6("::/0")
                    .description("v6")
                    .build(),
            )
            .build();
        let rules = rules_json(&flatten(&[p]));
        assert_eq!(
            rules,
            json!([
                {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "10.0.0.0/8"},
                {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "::/0", "description": "v6"}
            ])
        );
        let back: Vec<Rule> = rules
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Rule::from_json)
            .collect();
        assert_eq!(back, flatten(&[back[0].permission(), back[1].permission()]));
    }
}
