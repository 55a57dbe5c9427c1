//! Table-driven diff cases: `tests/diff/cases/*.yaml`, each with `desired`,
//! `live` and `want`, run through the pure diff function.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use tend::model::{Origin, Resource, ResourceKey};
use tend::{DiffOptions, Kind, LiveResource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    prune: bool,
    desired: Vec<Desired>,
    live: Vec<Live>,
    want: Want,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Desired {
    kind: Kind,
    name: String,
    spec: Value,
    #[serde(default)]
    ignore: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Live {
    kind: Kind,
    name: String,
    owned: bool,
    spec: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Want {
    in_sync: usize,
    changes: Value,
}

#[test]
fn diff_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diff/cases");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 6, "cases are missing from {}", dir.display());
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let case: Case =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let desired: Vec<Resource> = case
            .desired
            .into_iter()
            .map(|d| Resource {
                key: ResourceKey::new(d.kind, d.name),
                labels: Vec::new(),
                mode: None,
                spec: d.spec,
                ignore: d.ignore,
                origin: Origin {
                    file: "case".into(),
                    line: 1,
                    col: 1,
                },
                health: None,
                remediation: None,
                changes: None,
            })
            .collect();
        let live: HashMap<ResourceKey, LiveResource> = case
            .live
            .into_iter()
            .map(|l| {
                let key = ResourceKey::new(l.kind, l.name);
                (
                    key.clone(),
                    LiveResource {
                        key,
                        spec: l.spec,
                        owned: l.owned,
                        id: String::new(),
                        note: None,
                    },
                )
            })
            .collect();
        let got = tend::diff(&desired, &live, DiffOptions { prune: case.prune });
        assert_eq!(got.in_sync, case.want.in_sync, "{}", path.display());
        assert_eq!(
            serde_json::to_value(&got.changes).unwrap(),
            case.want.changes,
            "{}",
            path.display()
        );
    }
}
