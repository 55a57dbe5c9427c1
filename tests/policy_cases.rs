//! Table-driven decisions of the default pack: `tests/policy/cases/*.yaml`,
//! through the same engine `tend plan` uses.

use serde::Deserialize;
use serde_json::Value;
use tend::policy::{default_pack, Policies, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    base: Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    input: Value,
    want: Want,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Want {
    decision: String,
    reasons: Option<Vec<String>>,
}

/// Deep merge: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[test]
fn default_pack_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy/cases");
    let policies = Policies::compile(&default_pack()).unwrap();
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file: File = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for case in file.cases {
            let mut input = file.base.clone();
            merge(&mut input, &case.input);
            let got = policies.decide(&input);
            let decision = match got.decision {
                Verdict::Auto => "auto",
                Verdict::Review => "review",
                Verdict::Deny => "deny",
            };
            assert_eq!(
                decision, case.want.decision,
                "{}: {:?}",
                case.name, got.reasons
            );
            if let Some(reasons) = case.want.reasons {
                assert_eq!(got.reasons, reasons, "{}", case.name);
            }
            ran += 1;
        }
    }
    assert!(ran >= 14, "only {ran} cases ran");
}
