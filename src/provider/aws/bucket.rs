//! `aws.s3.Bucket`: versioning, public access block, default encryption
//! and tags. A setting the bucket does not have reads as its S3 default
//! (versioning off, no public access block, no tags).

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
    VersioningConfiguration,
};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::{owned_name, sdk_error, tags_json, AwsProvider};
use crate::model::{Kind, ResourceKey};
use crate::vocab::{Action, ActionType, LiveResource};

const KIND: Kind = Kind::AwsBucket;

/// `Ok(None)` when S3 answers with one of the "not configured" codes.
fn absent<T, E>(r: Result<T, E>, codes: &[&str]) -> Result<Option<T>, String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code().is_some_and(|c| codes.contains(&c)) => Ok(None),
        Err(e) => Err(sdk_error(&e)),
    }
}

async fn read(s3: &aws_sdk_s3::Client, name: &str) -> Result<LiveResource, String> {
    let (location, tagging, versioning, pab, encryption) = futures::join!(
        s3.get_bucket_location().bucket(name).send(),
        s3.get_bucket_tagging().bucket(name).send(),
        s3.get_bucket_versioning().bucket(name).send(),
        s3.get_public_access_block().bucket(name).send(),
        s3.get_bucket_encryption().bucket(name).send(),
    );
    let location = location.map_err(|e| sdk_error(&e))?;
    let region = location
        .location_constraint()
        .map(|l| l.as_str().to_string())
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "us-east-1".into());
    let tags: Vec<(String, String)> = absent(tagging, &["NoSuchTagSet", "NoSuchTagSetError"])?
        .map(|t| {
            t.tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let versioning = match versioning {
        Ok(v) => v
            .status()
            .is_some_and(|s| *s == BucketVersioningStatus::Enabled),
        // Some S3-compatible servers wrap the answer in a
        // `GetBucketVersioningResponse` root instead of
        // `VersioningConfiguration`; the status inside means the same.
        Err(e) => match wrapped_versioning(e.raw_response()) {
            Some(on) => on,
            None => return Err(sdk_error(&e)),
        },
    };
    let pab = absent(pab, &["NoSuchPublicAccessBlockConfiguration"])?
        .and_then(|p| p.public_access_block_configuration().cloned());
    let pab = json!({
        "blockPublicAcls": pab.as_ref().and_then(|p| p.block_public_acls()).unwrap_or(false),
        "ignorePublicAcls": pab.as_ref().and_then(|p| p.ignore_public_acls()).unwrap_or(false),
        "blockPublicPolicy": pab.as_ref().and_then(|p| p.block_public_policy()).unwrap_or(false),
        "restrictPublicBuckets": pab.as_ref().and_then(|p| p.restrict_public_buckets()).unwrap_or(false),
    });
    let encryption = absent(
        encryption,
        &["ServerSideEncryptionConfigurationNotFoundError"],
    )?
    .and_then(|e| {
        let rule = e
            .server_side_encryption_configuration()?
            .rules()
            .first()?
            .clone();
        let d = rule.apply_server_side_encryption_by_default()?;
        let mut m = Map::new();
        m.insert("algorithm".into(), json!(d.sse_algorithm().as_str()));
        if let Some(k) = d.kms_master_key_id() {
            m.insert("kmsKeyId".into(), json!(k));
        }
        Some(Value::Object(m))
    })
    .unwrap_or(Value::Null);
    let owned = owned_name(KIND, &tags);
    Ok(LiveResource {
        key: ResourceKey::new(KIND, owned.clone().unwrap_or_else(|| name.to_string())),
        spec: json!({
            "region": region,
            "bucketName": name,
            "versioning": versioning,
            "publicAccessBlock": pab,
            "encryption": encryption,
            "tags": tags_json(&tags),
        }),
        owned: owned.is_some(),
        id: name.to_string(),
        note: None,
    })
}

fn wrapped_versioning(raw: Option<&aws_sdk_s3::config::http::HttpResponse>) -> Option<bool> {
    let body = raw
        .filter(|r| r.status().is_success())
        .and_then(|r| r.body().bytes())
        .and_then(|b| std::str::from_utf8(b).ok())?;
    body.contains("<GetBucketVersioningResponse")
        .then(|| body.contains("<Status>Enabled</Status>"))
}

/// Every bucket of the account, or only those named in `only`.
pub(super) async fn list(
    p: &AwsProvider,
    s3: &aws_sdk_s3::Client,
    only: Option<&[String]>,
) -> Result<Vec<LiveResource>, String> {
    let mut names = Vec::new();
    let mut pages = s3.list_buckets().into_paginator().send();
    while let Some(page) = super::next_page(&mut pages, &p.reads).await {
        let page = page.map_err(|e| sdk_error(&e))?;
        names.extend(
            page.buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_string))
                .filter(|n| only.is_none_or(|o| o.contains(n))),
        );
    }
    let reads = futures::stream::iter(names.into_iter().map(|n| {
        let s3 = s3.clone();
        let reads = &p.reads;
        async move {
            reads.acquire().await;
            read(&s3, &n).await.map_err(|e| format!("bucket {n}: {e}"))
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    let mut out: Vec<LiveResource> = reads.into_iter().collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn bool_at(spec: &Value, path: &str) -> Option<bool> {
    spec.pointer(path).and_then(Value::as_bool)
}

fn tagging(spec: &Value, live: &[(String, String)]) -> Result<Tagging, String> {
    // S3 replaces the whole tag set: keep live tags tend does not manage.
    let declared = spec
        .get("tags")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut all: Vec<(String, String)> = live
        .iter()
        .filter(|(k, _)| !declared.contains_key(k))
        .cloned()
        .collect();
    all.extend(
        declared
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())),
    );
    let tags = all
        .into_iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Tagging::builder()
        .set_tag_set(Some(tags))
        .build()
        .map_err(|e| e.to_string())
}

pub(super) async fn apply(
    s3: &aws_sdk_s3::Client,
    region: &str,
    action: &Action,
    spec: &Value,
) -> Result<String, String> {
    let name = spec
        .get("bucketName")
        .and_then(Value::as_str)
        .unwrap_or(&action.target.name)
        .to_string();
    let existing = match s3.head_bucket().bucket(&name).send().await {
        Ok(_) => Some(read(s3, &name).await?),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
        Err(e) => return Err(sdk_error(&e)),
    };
    let mut did = Vec::new();
    match action.action_type {
        ActionType::Delete => {
            let Some(live) = existing else {
                return Ok("already gone".into());
            };
            if !live.owned {
                return Err("tend does not own this bucket; refusing to delete it".into());
            }
            s3.delete_bucket()
                .bucket(&name)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            return Ok(format!("deleted {name}"));
        }
        ActionType::Create | ActionType::Update => {}
        other => return Err(format!("a bucket has no {} action", other.as_str())),
    }
    let live = match existing {
        Some(l) => l,
        None => {
            let mut req = s3.create_bucket().bucket(&name);
            if region != "us-east-1" {
                req = req.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region))
                        .build(),
                );
            }
            req.send().await.map_err(|e| sdk_error(&e))?;
            did.push(format!("created {name} in {region}"));
            read(s3, &name).await?
        }
    };
    let have = &live.spec;
    if let Some(want) = spec.get("region").and_then(Value::as_str) {
        if have.get("region").and_then(Value::as_str) != Some(want) {
            return Err(format!(
                "the bucket is in {}, not {want}; a bucket cannot move between regions",
                have["region"]
            ));
        }
    }
    if let Some(v) = spec.get("versioning").and_then(Value::as_bool) {
        if have.get("versioning").and_then(Value::as_bool) != Some(v) {
            let status = if v {
                BucketVersioningStatus::Enabled
            } else {
                BucketVersioningStatus::Suspended
            };
            s3.put_bucket_versioning()
                .bucket(&name)
                .versioning_configuration(VersioningConfiguration::builder().status(status).build())
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            did.push(format!("versioning {}", if v { "on" } else { "suspended" }));
        }
    }
    if let Some(want) = spec.get("publicAccessBlock").and_then(Value::as_object) {
        let differs = want
            .iter()
            .any(|(k, v)| have.pointer(&format!("/publicAccessBlock/{k}")) != Some(v));
        if differs {
            let get = |k: &str| {
                bool_at(spec, &format!("/publicAccessBlock/{k}"))
                    .or(bool_at(have, &format!("/publicAccessBlock/{k}")))
            };
            s3.put_public_access_block()
                .bucket(&name)
                .public_access_block_configuration(
                    PublicAccessBlockConfiguration::builder()
                        .set_block_public_acls(get("blockPublicAcls"))
                        .set_ignore_public_acls(get("ignorePublicAcls"))
                        .set_block_public_policy(get("blockPublicPolicy"))
                        .set_restrict_public_buckets(get("restrictPublicBuckets"))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            did.push("public access block set".into());
        }
    }
    if let Some(want) = spec.get("encryption").filter(|v| v.is_object()) {
        if have.get("encryption") != Some(want) {
            let algorithm = want
                .get("algorithm")
                .and_then(Value::as_str)
                .unwrap_or("AES256");
            let default = ServerSideEncryptionByDefault::builder()
                .sse_algorithm(ServerSideEncryption::from(algorithm))
                .set_kms_master_key_id(
                    want.get("kmsKeyId")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                )
                .build()
                .map_err(|e| e.to_string())?;
            let conf = ServerSideEncryptionConfiguration::builder()
                .rules(
                    ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(default)
                        .build(),
                )
                .build()
                .map_err(|e| e.to_string())?;
            s3.put_bucket_encryption()
                .bucket(&name)
                .server_side_encryption_configuration(conf)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            did.push(format!("encryption {algorithm}"));
        }
    }
    let live_tags: Vec<(String, String)> = have
        .get("tags")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let tags_differ = spec
        .get("tags")
        .and_then(Value::as_object)
        .is_some_and(|want| {
            want.iter().any(|(k, v)| {
                have.pointer(&format!(
                    "/tags/{}",
                    k.replace('~', "~0").replace('/', "~1")
                )) != Some(v)
            })
        });
    if tags_differ {
        s3.put_bucket_tagging()
            .bucket(&name)
            .tagging(tagging(spec, &live_tags)?)
            .send()
            .await
            .map_err(|e| sdk_error(&e))?;
        did.push("tags set".into());
    }
    if did.is_empty() {
        did.push(format!("{name} already as declared"));
    }
    Ok(did.join("; "))
}
