//! Desired versus live: a pure comparison keyed by `ResourceKey`.
//!
//! Only fields set in desired state are compared (managed fields); fields a
//! provider adds to live state are never drift. Ignore rules are JSON
//! Pointers into the document. This module does no I/O and reads no clock.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::model::{Resource, ResourceKey};
pub use crate::vocab::FieldChange;
use crate::vocab::LiveResource;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "camelCase")]
pub enum Change {
    /// Declared, absent from live state; `fields` is every declared field.
    Create {
        key: ResourceKey,
        fields: Vec<FieldChange>,
    },
    /// Declared and present, with managed fields that differ.
    Update {
        key: ResourceKey,
        fields: Vec<FieldChange>,
    },
    /// Owned by tend, no longer declared, and prune is on.
    Delete { key: ResourceKey },
    /// Present but not to be touched: reported only.
    Unmanaged { key: ResourceKey, reason: String },
}

impl Change {
    pub fn key(&self) -> &ResourceKey {
        match self {
            Change::Create { key, .. }
            | Change::Update { key, .. }
            | Change::Delete { key }
            | Change::Unmanaged { key, .. } => key,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// Sorted by resource key.
    pub changes: Vec<Change>,
    pub in_sync: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    pub prune: bool,
}

/// Compares declared resources with the live inventory. Both sides must be
/// normalised by their provider first.
pub fn diff(
    desired: &[Resource],
    live: &HashMap<ResourceKey, LiveResource>,
    opts: DiffOptions,
) -> Diff {
    let mut changes = Vec::new();
    let mut in_sync = 0;
    let mut declared = std::collections::HashSet::with_capacity(desired.len());
    for res in desired {
        declared.insert(&res.key);
        match live.get(&res.key) {
            None => {
                let mut fields = Vec::new();
                compare("/spec", &res.spec, &Value::Null, &[], &mut fields);
                changes.push(Change::Create {
                    key: res.key.clone(),
                    fields,
                })
            }
            Some(l) => {
                let mut fields = Vec::new();
                compare("/spec", &res.spec, &l.spec, &res.ignore, &mut fields);
                if fields.is_empty() {
                    in_sync += 1;
                } else {
                    changes.push(Change::Update {
                        key: res.key.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for (key, l) in live {
        if declared.contains(key) {
            continue;
        }
        let change = if !l.owned {
            Change::Unmanaged {
                key: key.clone(),
                reason: "not owned by tend".into(),
            }
        } else if opts.prune {
            Change::Delete { key: key.clone() }
        } else {
            Change::Unmanaged {
                key: key.clone(),
                reason: "no longer declared; prune is disabled".into(),
            }
        };
        changes.push(change);
    }
    changes.sort_by(|a, b| a.key().cmp(b.key()));
    Diff { changes, in_sync }
}

/// The declared fields that differ from live state.
pub fn drift_of(r: &Resource, live: Option<&LiveResource>) -> Vec<FieldChange> {
    let mut map = std::collections::HashMap::new();
    if let Some(l) = live {
        map.insert(r.key.clone(), l.clone());
    }
    let d = diff(std::slice::from_ref(r), &map, DiffOptions { prune: false });
    d.changes
        .into_iter()
        .flat_map(|c| match c {
            Change::Create { fields, .. } | Change::Update { fields, .. } => fields,
            _ => Vec::new(),
        })
        .collect()
}

fn ignored(path: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|p| {
        path == p || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
    })
}

/// Walks the desired value; objects recurse, everything else (scalars and
/// arrays, which providers normalise as wholes) is compared as a leaf.
fn compare(
    path: &str,
    desired: &Value,
    live: &Value,
    ignore: &[String],
    out: &mut Vec<FieldChange>,
) {
    if ignored(path, ignore) {
        return;
    }
    match desired {
        Value::Object(d) => {
            for (k, dv) in d {
                let child = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                let lv = live.get(k).unwrap_or(&Value::Null);
                compare(&child, dv, lv, ignore, out);
            }
        }
        _ => {
            if desired != live {
                out.push(FieldChange {
                    path: path.to_string(),
                    from: live.clone(),
                    to: desired.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Origin};
    use serde_json::json;

    fn res(name: &str, spec: Value, ignore: &[&str]) -> Resource {
        Resource {
            key: ResourceKey::new(Kind::HostFile, name),
            labels: Vec::new(),
            mode: None,
            spec,
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
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

    fn live(name: &str, spec: Value, owned: bool) -> (ResourceKey, LiveResource) {
        let key = ResourceKey::new(Kind::HostFile, name);
        (
            key.clone(),
            LiveResource {
                key,
                spec,
                owned,
                id: name.into(),
                note: None,
            },
        )
    }

    #[test]
    fn only_managed_fields_are_compared() {
        let d = [res("a", json!({"path": "/a", "content": "x"}), &[])];
        let l = HashMap::from([live(
            "a",
            json!({"path": "/a", "content": "x", "mode": "0600"}),
            true,
        )]);
        let out = diff(&d, &l, DiffOptions::default());
        assert_eq!(out.in_sync, 1);
        assert!(out.changes.is_empty());
    }

    #[test]
    fn ignore_pointers_skip_fields_and_children() {
        let d = [res(
            "a",
            json!({"path": "/a", "content": "x", "mode": "0644"}),
            &["/spec/mode"],
        )];
        let l = HashMap::from([live(
            "a",
            json!({"path": "/a", "content": "y", "mode": "0600"}),
            true,
        )]);
        let out = diff(&d, &l, DiffOptions::default());
        assert_eq!(
            out.changes,
            vec![Change::Update {
                key: ResourceKey::new(Kind::HostFile, "a"),
                fields: vec![FieldChange {
                    path: "/spec/content".into(),
                    from: json!("y"),
                    to: json!("x")
                }]
            }]
        );
    }

    #[test]
    fn prune_only_touches_owned_resources() {
        let l = HashMap::from([
            live("mine", json!({}), true),
            live("theirs", json!({}), false),
        ]);
        let out = diff(&[], &l, DiffOptions { prune: true });
        assert!(matches!(out.changes[0], Change::Delete { .. }));
        assert!(matches!(out.changes[1], Change::Unmanaged { .. }));
        let out = diff(&[], &l, DiffOptions { prune: false });
        assert!(matches!(out.changes[0], Change::Unmanaged { .. }));
    }
}
