//! The `aws` provider: EC2 instances, security groups and launch templates,
//! Auto Scaling groups and S3 buckets through the official AWS SDK for Rust.
//!
//! Credentials come from the SDK's standard chain (environment, shared
//! profile, SSO, web identity for GitHub OIDC, instance role); TLS is rustls
//! with ring, the same stack as the rest of tend. An endpoint URL override
//! points it at an AWS-compatible server. Ownership is the tag
//! `tend.dev/name=<kind>/<name>`: only tagged resources are ever deleted.
//! Listing is concurrent across kinds and regions, fully paged, and held
//! inside EC2's documented request token buckets; the SDK retries throttling
//! with jittered exponential backoff. A listing that fails is an error for
//! the whole pass, never an empty inventory.

mod bucket;
mod group;
mod instance;
mod launch_template;
mod limit;
mod security_group;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::{Applied, ListRequest, LiveResource, Provider, ProviderError};
use crate::model::{AwsSettings, Kind, ProviderName, Resource};
use crate::vocab::Action;

pub use limit::TokenBucket;

/// The tag that marks what tend owns.
pub const OWNER_TAG: &str = "tend.dev/name";

/// The clients of one region.
#[derive(Clone)]
struct Regional {
    ec2: aws_sdk_ec2::Client,
    s3: aws_sdk_s3::Client,
    asg: aws_sdk_autoscaling::Client,
}

pub struct AwsProvider {
    regions: HashMap<String, Regional>,
    default_region: String,
    /// EC2 describe calls: bucket 100, refill 20 per second.
    reads: TokenBucket,
    /// EC2 mutating calls: bucket 200, refill 5 per second.
    writes: TokenBucket,
}

#[derive(Debug, thiserror::Error)]
#[error("failed to configure the aws provider: {0}")]
pub struct ConfigError(String);

impl AwsProvider {
    /// Builds clients for every configured region. Nothing is called yet.
    pub async fn new(settings: &AwsSettings) -> Result<AwsProvider, ConfigError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let retry = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(200));
        let loader = |region: Option<String>| {
            let mut l = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(http.clone())
                .retry_config(retry.clone());
            if let Some(r) = region {
                l = l.region(aws_config::Region::new(r));
            }
            if let Some(p) = &settings.profile {
                l = l.profile_name(p);
            }
            if let Some(e) = &settings.endpoint_url {
                l = l.endpoint_url(e);
            }
            l
        };
        let mut names = settings.regions.clone();
        if names.is_empty() {
            let conf = loader(None).load().await;
            match conf.region() {
                Some(r) => names.push(r.to_string()),
                None => {
                    return Err(ConfigError(
                        "no region: set Settings spec.aws.regions or AWS_REGION".into(),
                    ))
                }
            }
        }
        let mut regions = HashMap::new();
        for name in &names {
            let conf = loader(Some(name.clone())).load().await;
            let s3_conf = aws_sdk_s3::config::Builder::from(&conf)
                // Path-style addressing works with every AWS-compatible
                // endpoint; AWS itself accepts it too.
                .force_path_style(settings.endpoint_url.is_some())
                .build();
            regions.insert(
                name.clone(),
                Regional {
                    ec2: aws_sdk_ec2::Client::new(&conf),
                    s3: aws_sdk_s3::Client::from_conf(s3_conf),
                    asg: aws_sdk_autoscaling::Client::new(&conf),
                },
            );
        }
        Ok(AwsProvider {
            regions,
            default_region: names[0].clone(),
            reads: TokenBucket::new(100.0, 20.0),
            writes: TokenBucket::new(200.0, 5.0),
        })
    }

    fn region_of(&self, spec: &Value) -> String {
        spec.get("region")
            .and_then(Value::as_str)
            .unwrap_or(&self.default_region)
            .to_string()
    }

    fn regional(&self, region: &str, kind: Kind) -> Result<&Regional, String> {
        self.regions.get(region).ok_or_else(|| {
            format!("region {region} of this {kind} is not in Settings spec.aws.regions")
        })
    }
}

/// The next page of a paged listing, sent once the rate limiter allows.
async fn next_page<T>(
    pages: &mut aws_smithy_async::future::pagination_stream::PaginationStream<T>,
    reads: &TokenBucket,
) -> Option<T> {
    reads.acquire().await;
    pages.next().await
}

/// The declared tags (the ownership tag included) as key and value.
fn declared_tags(spec: &Value) -> Vec<(String, String)> {
    spec.get("tags")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect()
}

/// Declared tags that the live resource lacks or holds with another value.
fn missing_tags(spec: &Value, live: &[(String, String)]) -> Vec<(String, String)> {
    declared_tags(spec)
        .into_iter()
        .filter(|want| !live.contains(want))
        .collect()
}

/// Adds the declared tags an EC2 resource lacks; says what it did, if
/// anything.
async fn tag_ec2(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    spec: &Value,
    live: &[(String, String)],
) -> Result<Option<String>, String> {
    let missing = missing_tags(spec, live);
    if missing.is_empty() {
        return Ok(None);
    }
    let n = missing.len();
    ec2.create_tags()
        .resources(id)
        .set_tags(Some(ec2_tags(missing)))
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    Ok(Some(format!("tagged ({n})")))
}

/// Key and value of EC2 tags.
fn ec2_tag_pairs(tags: &[aws_sdk_ec2::types::Tag]) -> Vec<(String, String)> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

/// EC2 tags from key and value pairs.
fn ec2_tags(pairs: Vec<(String, String)>) -> Vec<aws_sdk_ec2::types::Tag> {
    pairs
        .into_iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
        .collect()
}

/// The owner tag's value for a resource.
pub fn owner_value(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// The EC2 filter for the resource tend owns as `kind/name`.
pub(super) fn owner_filter(kind: Kind, name: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{OWNER_TAG}"))
        .values(owner_value(kind, name))
        .build()
}

/// Prune and termination act only on what tend owns: an error naming
/// `what` and the refused `verb` unless the ownership tag claims it for
/// `kind`.
fn require_owned(
    kind: Kind,
    tags: &[(String, String)],
    what: &str,
    verb: &str,
) -> Result<(), String> {
    match owned_name(kind, tags) {
        Some(_) => Ok(()),
        None => Err(format!(
            "tend does not own this {what}; refusing to {verb} it"
        )),
    }
}

/// The tend name a tag set claims for `kind`, if any.
fn owned_name(kind: Kind, tags: &[(String, String)]) -> Option<String> {
    let prefix = format!("{kind}/");
    tags.iter()
        .find(|(k, _)| k == OWNER_TAG)
        .and_then(|(_, v)| v.strip_prefix(&prefix).map(str::to_string))
}

fn tags_json(tags: &[(String, String)]) -> Value {
    let mut sorted: Vec<&(String, String)> = tags.iter().collect();
    sorted.sort();
    Value::Object(
        sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
    )
}

/// Declared tags plus the ownership tag.
fn with_owner_tag(kind: Kind, name: &str, spec: &mut serde_json::Map<String, Value>) {
    let tags = spec
        .entry("tags")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(t) = tags.as_object_mut() {
        t.insert(OWNER_TAG.into(), Value::from(owner_value(kind, name)));
    }
}

/// Live resources keyed for the diff: tagged ones by their tend name,
/// untagged ones by their own name (reported as unmanaged unless declared,
/// in which case the plan adopts them by adding the tag).
fn key_untagged(out: &mut Vec<LiveResource>, mut live: LiveResource) {
    if out.iter().any(|l| l.key == live.key) {
        live.key.name = format!("{}.{}", live.key.name, live.id);
    }
    out.push(live);
}

fn sdk_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.contains(&t) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

impl Provider for AwsProvider {
    fn name(&self) -> ProviderName {
        ProviderName::Aws
    }

    fn kinds(&self) -> &'static [Kind] {
        &[
            Kind::AwsSecurityGroup,
            Kind::AwsBucket,
            Kind::AwsInstance,
            Kind::AwsLaunchTemplate,
            Kind::AwsAutoScalingGroup,
        ]
    }

    async fn list(&self, req: &ListRequest<'_>) -> Result<Vec<LiveResource>, ProviderError> {
        let mut regions: Vec<&String> = self.regions.keys().collect();
        regions.sort();
        let mut jobs = Vec::new();
        for kind in req.kinds {
            if !self.kinds().contains(kind) {
                continue;
            }
            for region in &regions {
                jobs.push((*kind, (*region).clone()));
            }
        }
        let declared_of = |kind: Kind| -> HashMap<String, &Resource> {
            req.desired
                .iter()
                .filter(|r| r.key.kind == kind)
                .map(|r| (r.key.name.clone(), *r))
                .collect()
        };
        let (declared, templates) = (
            &declared_of(Kind::AwsInstance),
            &declared_of(Kind::AwsLaunchTemplate),
        );
        // Buckets are global: list them once, from the first region.
        jobs.retain(|(k, r)| *k != Kind::AwsBucket || *r == self.default_region);
        if req.only_declared {
            // A re-read of named resources: only their regions, and where the
            // API can look resources up by name, only them.
            jobs.retain(|(k, r)| {
                *k == Kind::AwsBucket
                    || req
                        .desired
                        .iter()
                        .any(|d| d.key.kind == *k && self.region_of(&d.spec) == *r)
            });
        }
        let only = |kind: Kind, field: &str| -> Option<Vec<String>> {
            req.only_declared.then(|| {
                req.desired
                    .iter()
                    .filter(|d| d.key.kind == kind)
                    .filter_map(|d| d.spec.get(field).and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
        };
        let owners = req.only_declared.then(|| {
            req.desired
                .iter()
                .filter(|d| d.key.kind == Kind::AwsInstance)
                .map(|d| owner_value(Kind::AwsInstance, &d.key.name))
                .collect::<Vec<_>>()
        });
        let (buckets, groups, template_names, owners) = (
            &only(Kind::AwsBucket, "bucketName"),
            &only(Kind::AwsAutoScalingGroup, "groupName"),
            &only(Kind::AwsLaunchTemplate, "launchTemplateName"),
            &owners,
        );
        let lists = jobs.iter().map(|(kind, region)| async move {
            let regional = &self.regions[region];
            let result = match kind {
                Kind::AwsSecurityGroup => {
                    security_group::list(&regional.ec2, region, &self.reads).await
                }
                Kind::AwsBucket => bucket::list(self, &regional.s3, buckets.as_deref()).await,
                Kind::AwsInstance => {
                    let scope = instance::Scope {
                        declared,
                        owners: owners.as_deref(),
                        status: req.status,
                    };
                    instance::list(&regional.ec2, region, &self.reads, scope).await
                }
                Kind::AwsLaunchTemplate => {
                    launch_template::list(
                        &regional.ec2,
                        region,
                        &self.reads,
                        templates,
                        template_names.as_deref(),
                    )
                    .await
                }
                Kind::AwsAutoScalingGroup => {
                    group::list(&regional.asg, region, &self.reads, groups.as_deref()).await
                }
                _ => Ok(Vec::new()),
            };
            result.map_err(|message| ProviderError::List {
                kind: *kind,
                message: format!("{region}: {message}"),
            })
        });
        let mut out = Vec::new();
        for r in futures::future::join_all(lists).await {
            for live in r? {
                if live.owned {
                    out.push(live);
                } else {
                    key_untagged(&mut out, live);
                }
            }
        }
        Ok(out)
    }

    async fn apply(
        &self,
        action: &Action,
        desired: Option<&Resource>,
    ) -> Result<Applied, ProviderError> {
        let kind = action.target.kind;
        let fail = |message: String| ProviderError::Apply {
            action: action.action_type.as_str(),
            target: action.target.clone(),
            message,
        };
        let spec = desired.map(|r| r.spec.clone()).unwrap_or(Value::Null);
        let region = self.region_of(&spec);
        let regional = self.regional(&region, kind).map_err(&fail)?;
        self.writes.acquire().await;
        let detail = match kind {
            Kind::AwsSecurityGroup => {
                security_group::apply(&regional.ec2, &self.reads, action, &spec).await
            }
            Kind::AwsBucket => bucket::apply(&regional.s3, &region, action, &spec).await,
            Kind::AwsInstance => instance::apply(&regional.ec2, &self.reads, action, &spec).await,
            Kind::AwsLaunchTemplate => {
                launch_template::apply(&regional.ec2, &self.reads, action, &spec).await
            }
            Kind::AwsAutoScalingGroup => {
                group::apply(&regional.asg, &self.reads, action, &spec).await
            }
            _ => Err(format!("{kind} is not an aws kind")),
        }
        .map_err(fail)?;
        Ok(Applied { detail })
    }

    fn normalize(&self, kind: Kind, spec: &mut Value) {
        let Some(obj) = spec.as_object_mut() else {
            return;
        };
        obj.entry("region")
            .or_insert_with(|| Value::from(self.default_region.clone()));
        match kind {
            Kind::AwsSecurityGroup => security_group::normalize(obj),
            Kind::AwsAutoScalingGroup => {
                for field in ["availabilityZones", "subnets"] {
                    if let Some(Value::Array(items)) = obj.get_mut(field) {
                        items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                    }
                }
            }
            Kind::AwsInstance => {
                obj.entry("state").or_insert_with(|| Value::from("running"));
                if let Some(Value::Array(groups)) = obj.get_mut("securityGroups") {
                    groups.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                }
            }
            Kind::AwsLaunchTemplate => {
                if let Some(Value::Array(groups)) = obj.get_mut("securityGroups") {
                    groups.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                    groups.dedup();
                }
            }
            _ => {}
        }
    }
}

/// What normalisation needs the resource's name for (`normalize` sees only
/// the spec): the ownership tag, names that default to `metadata.name`, and
/// references to other declared resources by tend name, which become the
/// names AWS knows them by (so that live values, which carry AWS names,
/// compare with them).
pub fn prepare(resources: &mut [Resource]) {
    for r in resources.iter_mut() {
        if r.key.kind.provider() != Some(ProviderName::Aws) {
            continue;
        }
        let Some(obj) = r.spec.as_object_mut() else {
            continue;
        };
        with_owner_tag(r.key.kind, &r.key.name, obj);
        let field = match r.key.kind {
            Kind::AwsSecurityGroup => "groupName",
            Kind::AwsBucket => "bucketName",
            Kind::AwsAutoScalingGroup => "groupName",
            Kind::AwsLaunchTemplate => "launchTemplateName",
            _ => continue,
        };
        obj.entry(field)
            .or_insert_with(|| Value::from(r.key.name.clone()));
    }
    resolve_references(resources);
}

/// Security groups named by tend name (in instances and launch templates)
/// become their group names, and a group's launch template named by tend
/// name becomes the template's name.
fn resolve_references(resources: &mut [Resource]) {
    let aws_name = |kind: Kind, field: &str| -> HashMap<String, String> {
        resources
            .iter()
            .filter(|r| r.key.kind == kind)
            .filter_map(|r| {
                let name = r.spec.get(field).and_then(Value::as_str)?;
                (name != r.key.name).then(|| (r.key.name.clone(), name.to_string()))
            })
            .collect()
    };
    let groups = aws_name(Kind::AwsSecurityGroup, "groupName");
    let templates = aws_name(Kind::AwsLaunchTemplate, "launchTemplateName");
    if groups.is_empty() && templates.is_empty() {
        return;
    }
    for r in resources.iter_mut() {
        let (pointer, names) = match r.key.kind {
            Kind::AwsInstance | Kind::AwsLaunchTemplate => ("/securityGroups", &groups),
            Kind::AwsAutoScalingGroup => ("/launchTemplate/name", &templates),
            _ => continue,
        };
        match r.spec.pointer_mut(pointer) {
            Some(Value::Array(items)) => {
                for item in items {
                    if let Some(name) = item.as_str().and_then(|s| names.get(s)) {
                        *item = Value::from(name.clone());
                    }
                }
            }
            Some(item) => {
                if let Some(name) = item.as_str().and_then(|s| names.get(s)) {
                    *item = Value::from(name.clone());
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, ResourceKey};
    use serde_json::json;

    fn res(kind: Kind, name: &str, spec: Value) -> Resource {
        Resource {
            key: ResourceKey::new(kind, name),
            labels: Vec::new(),
            mode: None,
            spec,
            ignore: Vec::new(),
            origin: Origin {
                file: "a.yaml".into(),
                line: 1,
                col: 1,
            },
            health: None,
            remediation: None,
            changes: None,
        }
    }

    #[test]
    fn references_by_tend_name_become_aws_names() {
        let mut rs = vec![
            res(
                Kind::AwsSecurityGroup,
                "web",
                json!({"groupName": "web-sg"}),
            ),
            res(
                Kind::AwsLaunchTemplate,
                "web",
                json!({"launchTemplateName": "web-lt", "securityGroups": ["web", "sg-1", "other"]}),
            ),
            res(
                Kind::AwsLaunchTemplate,
                "api",
                json!({"securityGroups": ["web"]}),
            ),
            res(
                Kind::AwsAutoScalingGroup,
                "web",
                json!({"launchTemplate": {"name": "web", "version": "$Latest"}}),
            ),
            res(
                Kind::AwsAutoScalingGroup,
                "api",
                json!({"launchTemplate": {"name": "api"}}),
            ),
            res(Kind::AwsInstance, "vm", json!({"securityGroups": ["web"]})),
        ];
        prepare(&mut rs);
        assert_eq!(
            rs[1].spec["securityGroups"],
            json!(["web-sg", "sg-1", "other"])
        );
        assert_eq!(
            rs[2].spec["launchTemplateName"], "api",
            "defaults to metadata.name"
        );
        assert_eq!(rs[3].spec["launchTemplate"]["name"], "web-lt");
        assert_eq!(rs[4].spec["launchTemplate"]["name"], "api");
        assert_eq!(rs[5].spec["securityGroups"], json!(["web-sg"]));
        assert_eq!(rs[2].spec["tags"][OWNER_TAG], "aws.ec2.LaunchTemplate/api");
    }
}
