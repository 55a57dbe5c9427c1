//! The JSON Schemas of tend's document kinds, compiled into the binary.
//!
//! The same files in `schemas/` serve editors (through a `$schema` comment);
//! here their shared definitions are inlined so validation never reaches for
//! the network or the file system.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, Validator};
use serde_json::Value;

use super::Kind;

const COMMON: &str = include_str!("../../schemas/common.schema.json");

fn schema_text(kind: Kind) -> &'static str {
    match kind {
        Kind::Settings => include_str!("../../schemas/settings.schema.json"),
        Kind::HostFile => include_str!("../../schemas/host.file.schema.json"),
        Kind::HostProcess => include_str!("../../schemas/host.process.schema.json"),
        Kind::Signature => include_str!("../../schemas/signature.schema.json"),
        Kind::Runbook => include_str!("../../schemas/runbook.schema.json"),
        Kind::AwsSecurityGroup => include_str!("../../schemas/aws.ec2.security-group.schema.json"),
        Kind::AwsBucket => include_str!("../../schemas/aws.s3.bucket.schema.json"),
        Kind::AwsInstance => include_str!("../../schemas/aws.ec2.instance.schema.json"),
        Kind::AwsLaunchTemplate => {
            include_str!("../../schemas/aws.ec2.launch-template.schema.json")
        }
        Kind::AwsAutoScalingGroup => {
            include_str!("../../schemas/aws.autoscaling.group.schema.json")
        }
        Kind::Approval => include_str!("../../schemas/approval.schema.json"),
    }
}

/// A compiled schema and its source (for listing allowed fields).
pub struct KindSchema {
    pub validator: Validator,
    pub schema: Value,
}

/// The schema of a kind with the shared `$defs` inlined. The embedded files
/// are part of the binary, so failing to parse them is a build defect that
/// the unit tests catch.
fn compile(kind: Kind) -> KindSchema {
    let common: Value = serde_json::from_str(COMMON).unwrap_or(Value::Null);
    let text = schema_text(kind).replace("common.schema.json#/$defs/", "#/$defs/");
    let mut schema: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if let (Some(obj), Some(defs)) = (schema.as_object_mut(), common.get("$defs")) {
        obj.insert("$defs".to_string(), defs.clone());
    }
    let validator = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(&schema)
        .unwrap_or_else(|e| panic!("embedded schema for {} is invalid: {e}", kind.as_str()));
    KindSchema { validator, schema }
}

/// The compiled schema of `kind`, built once per process.
pub fn for_kind(kind: Kind) -> &'static KindSchema {
    static CELLS: [OnceLock<KindSchema>; Kind::ALL.len()] =
        [const { OnceLock::new() }; Kind::ALL.len()];
    CELLS[kind as usize].get_or_init(|| compile(kind))
}

/// One schema violation in user terms: where (a JSON Pointer into the
/// document), whether to point at the key rather than the value, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub at_key: bool,
    pub message: String,
    pub help: Option<String>,
}

/// Validates a document; an empty result means valid.
pub fn validate(kind: Kind, doc: &Value) -> Vec<Violation> {
    let compiled = for_kind(kind);
    if compiled.validator.is_valid(doc) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for err in compiled.validator.iter_errors(doc) {
        let pointer = err.instance_path().as_str().to_string();
        match err.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_fields(&compiled.schema, &pointer);
                for field in unexpected {
                    out.push(Violation {
                        pointer: format!("{pointer}/{}", escape(field)),
                        at_key: true,
                        message: format!("unknown field `{field}`{}", place(kind, &pointer)),
                        help: (!allowed.is_empty())
                            .then(|| format!("expected one of: {}", allowed.join(", "))),
                    });
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                out.push(Violation {
                    pointer: pointer.clone(),
                    at_key: true,
                    message: format!("missing required field `{name}`{}", place(kind, &pointer)),
                    help: None,
                });
            }
            ValidationErrorKind::Type { kind: expected } => {
                let expected = match expected {
                    TypeKind::Single(t) => t.to_string(),
                    TypeKind::Multiple(ts) => ts
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(" or "),
                };
                out.push(Violation {
                    pointer: pointer.clone(),
                    at_key: false,
                    message: format!(
                        "wrong type at {}: expected {expected}, found {}",
                        display_pointer(&pointer),
                        type_name(err.instance())
                    ),
                    help: None,
                });
            }
            ValidationErrorKind::Enum { options } => {
                let opts = options
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                out.push(Violation {
                    pointer: pointer.clone(),
                    at_key: false,
                    message: format!(
                        "invalid value {} at {}",
                        err.instance(),
                        display_pointer(&pointer)
                    ),
                    help: Some(format!("expected one of: {opts}")),
                });
            }
            ValidationErrorKind::Constant { expected_value } => {
                out.push(Violation {
                    pointer: pointer.clone(),
                    at_key: false,
                    message: format!(
                        "invalid value {} at {}: expected {expected_value}",
                        err.instance(),
                        display_pointer(&pointer)
                    ),
                    help: None,
                });
            }
            _ => out.push(Violation {
                pointer: pointer.clone(),
                at_key: false,
                message: format!("invalid value at {}: {err}", display_pointer(&pointer)),
                help: None,
            }),
        }
    }
    out
}

fn escape(field: &str) -> String {
    field.replace('~', "~0").replace('/', "~1")
}

fn place(kind: Kind, pointer: &str) -> String {
    if pointer.is_empty() {
        format!(" in {} document", kind.as_str())
    } else {
        format!(" in {} {}", kind.as_str(), display_pointer(pointer))
    }
}

fn display_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        "the document".to_string()
    } else {
        pointer.trim_start_matches('/').replace('/', ".")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The property names the schema allows at a document location, following
/// `properties` and resolving local `$ref`s.
fn allowed_fields(schema: &Value, pointer: &str) -> Vec<String> {
    let mut node = resolve(schema, schema);
    if !pointer.is_empty() {
        for seg in pointer.trim_start_matches('/').split('/') {
            let next = node
                .get("properties")
                .and_then(|p| p.get(seg))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()));
            match next {
                Some(n) => node = resolve(schema, n),
                None => return Vec::new(),
            }
        }
    }
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..8 {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with("#/") => match root.pointer(&r[1..]) {
                Some(n) => node = n,
                None => break,
            },
            _ => break,
        }
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_embedded_schema_compiles() {
        for kind in Kind::ALL {
            let _ = for_kind(kind);
        }
    }

    #[test]
    fn unknown_field_lists_allowed_ones() {
        let doc = json!({"apiVersion": "tend.dev/v1", "kind": "host.File",
            "metadata": {"name": "a"}, "spec": {"path": "/x", "contnet": "y"}});
        let v = validate(Kind::HostFile, &doc);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pointer, "/spec/contnet");
        assert_eq!(
            v[0].help.as_deref(),
            Some("expected one of: path, content, mode, followSymlinks")
        );
    }

    #[test]
    fn unknown_metadata_field_follows_refs() {
        let doc = json!({"apiVersion": "tend.dev/v1", "kind": "host.File",
            "metadata": {"name": "a", "lables": {}}, "spec": {"path": "/x"}});
        let v = validate(Kind::HostFile, &doc);
        assert_eq!(
            v[0].help.as_deref(),
            Some("expected one of: name, labels, annotations, mode")
        );
    }
}
