//! Rego policies evaluated by regorus.
//!
//! Policies are parsed and compiled once per pass, then evaluated for every
//! action with the input contract of ARCHITECTURE.md. Evaluation fails closed: a
//! runtime error, an undefined decision or a malformed result is `deny` with
//! the error as the reason, never `auto`.

use std::sync::{Arc, Mutex};

use regorus::Engine;
use serde_json::Value;

use crate::model::diagnostic::Diagnostic;
use crate::model::yaml::Pos;

/// The rule every policy pack must define.
pub const ENTRY_POINT: &str = "data.tend.decision";

/// One Rego file: its display path and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    pub path: String,
    pub text: String,
}

impl PolicyFile {
    pub fn is_test(&self) -> bool {
        self.path.ends_with("_test.rego")
    }
}

macro_rules! pack {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../policies/", $name)))),*]
    };
}

/// The default pack compiled into tend, tests included.
const DEFAULT_PACK: &[(&str, &str)] = pack![
    "decision.rego",
    "host.rego",
    "delete.rego",
    "scale.rego",
    "maintenance.rego",
    "critical.rego",
    "network.rego",
    "healing.rego",
    "aws.rego",
    "host_test.rego",
    "delete_test.rego",
    "scale_test.rego",
    "maintenance_test.rego",
    "critical_test.rego",
    "network_test.rego",
    "healing_test.rego",
    "aws_test.rego",
];

pub fn default_pack() -> Vec<PolicyFile> {
    DEFAULT_PACK
        .iter()
        .map(|(name, text)| PolicyFile {
            path: format!("policies/{name}"),
            text: text.to_string(),
        })
        .collect()
}

/// What a policy decided for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub decision: Verdict,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Auto,
    Review,
    Deny,
}

/// Turns a regorus error (`--> path:line:col`, a source excerpt, then
/// `error: message`) into a located diagnostic.
pub fn rego_diagnostic(err: &str, files: &[PolicyFile]) -> Diagnostic {
    let message = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(str::trim)
        .unwrap_or_else(|| first_line(err));
    let located = err.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("-->")?.trim();
        let (path, nums) = files
            .iter()
            .find_map(|f| Some((f.path.as_str(), rest.strip_prefix(&format!("{}:", f.path))?)))?;
        let mut parts = nums.split(':');
        let line = parts.next()?.trim().parse::<u32>().ok()?;
        let col = parts.next()?.trim().parse::<u32>().ok()?;
        Some((path.to_string(), Pos::new(line, col, 1)))
    });
    match located {
        Some((path, pos)) => Diagnostic::new(path, Some(pos), format!("invalid policy: {message}")),
        None => Diagnostic::new(
            files.first().map(|f| f.path.clone()).unwrap_or_default(),
            None,
            format!("invalid policy: {message}"),
        ),
    }
}

/// A compiled policy set, ready to decide, shared by every worker.
///
/// Evaluation uses regorus's interpreter with strict builtin errors. Its
/// register VM is faster but turns runtime errors inside rules into
/// "undefined", which would let a broken deny rule silently allow; tend
/// must fail closed, so it does not use the VM.
///
/// An engine holds the input of the evaluation under way, so each worker
/// takes its own: a copy of the compiled engine from a pool, returned
/// after use. Deciding needs only `&self`, so a plan's actions are decided
/// in parallel.
pub struct Policies {
    compiled: Engine,
    idle: Mutex<Vec<Engine>>,
}

impl Policies {
    /// Parses and compiles every non-test file. Errors carry the Rego file,
    /// line and column.
    pub fn compile(files: &[PolicyFile]) -> Result<Policies, Vec<Diagnostic>> {
        let mut engine = Engine::new();
        // A builtin that fails (to_number("x")) is an error, not a silently
        // undefined expression: errors must surface so they can deny.
        engine.set_strict_builtin_errors(true);
        let mut diags = Vec::new();
        for f in files.iter().filter(|f| !f.is_test()) {
            if let Err(e) = engine.add_policy(f.path.clone(), f.text.clone()) {
                diags.push(rego_diagnostic(&e.to_string(), files));
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let entry: Arc<str> = ENTRY_POINT.into();
        // Compiling checks every rule reachable from the entry point once,
        // so later evaluations only run.
        engine
            .compile_with_entrypoint(&entry)
            .map_err(|e| vec![rego_diagnostic(&e.to_string(), files)])?;
        Ok(Policies {
            compiled: engine,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Decides one action. Never fails: any problem is a `deny`.
    pub fn decide(&self, input: &Value) -> PolicyDecision {
        let mut engine = self.take();
        engine.set_input(regorus::Value::from(input.clone()));
        let decision = match engine.eval_rule(ENTRY_POINT.to_string()) {
            Ok(v) => interpret(&v),
            Err(e) => deny(format!(
                "policy evaluation failed: {}",
                one_line(&e.to_string())
            )),
        };
        self.give_back(engine);
        decision
    }

    fn take(&self) -> Engine {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        idle.unwrap_or_else(|| self.compiled.clone())
    }

    fn give_back(&self, engine: Engine) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(engine);
        }
    }
}

/// A regorus error on one line: `message (at path:line:col)`.
fn one_line(err: &str) -> String {
    let message = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(str::trim)
        .unwrap_or_else(|| first_line(err));
    match err.lines().find_map(|l| l.trim().strip_prefix("-->")) {
        Some(at) => format!("{message} (at {})", at.trim()),
        None => message.to_string(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

fn deny(reason: String) -> PolicyDecision {
    PolicyDecision {
        decision: Verdict::Deny,
        reasons: vec![reason],
    }
}

/// Checks the shape of `data.tend.decision`.
fn interpret(v: &regorus::Value) -> PolicyDecision {
    if *v == regorus::Value::Undefined {
        return deny(format!(
            "policy produced no decision ({ENTRY_POINT} is undefined)"
        ));
    }
    let json: Value = match v
        .to_json_str()
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
    {
        Some(j) => j,
        None => return deny("policy result is not JSON".into()),
    };
    let decision = match json.get("decision").and_then(Value::as_str) {
        Some("auto") => Verdict::Auto,
        Some("review") => Verdict::Review,
        Some("deny") => Verdict::Deny,
        _ => {
            return deny(format!(
                "malformed policy result {json}: `decision` must be auto, review or deny"
            ))
        }
    };
    let reasons = match json.get("reasons") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(other) => {
            return deny(format!(
                "malformed policy result: `reasons` must be a list of strings, got {other}"
            ))
        }
    };
    PolicyDecision { decision, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Vec<PolicyFile> {
        vec![PolicyFile {
            path: "p/custom.rego".into(),
            text: text.into(),
        }]
    }

    #[test]
    fn default_pack_compiles_and_decides() {
        let p = Policies::compile(&default_pack()).unwrap();
        let d = p.decide(&json!({"action": {"type": "delete", "target": {"kind": "host.File", "name": "a"}, "changes": []},
            "resource": {"desired": null, "live": {}}, "incident": null, "context": {"in_maintenance_window": false}}));
        assert_eq!(d.decision, Verdict::Review);
        assert_eq!(d.reasons, vec!["deleting a resource needs a human"]);
    }

    #[test]
    fn a_syntax_error_is_located() {
        let err = Policies::compile(&one("package tend\n\ndecision := {\"decision\": \n"))
            .err()
            .unwrap();
        assert_eq!(err[0].location(), "p/custom.rego:4:1");
        assert_eq!(err[0].message, "invalid policy: expecting expression");
    }

    #[test]
    fn an_undefined_decision_is_deny() {
        let p = Policies::compile(&one(
            "package tend\n\ndecision := {\"decision\": \"auto\"} if input.never\n",
        ))
        .unwrap();
        let d = p.decide(&json!({}));
        assert_eq!(d.decision, Verdict::Deny);
        assert!(d.reasons[0].contains("undefined"), "{d:?}");
    }

    #[test]
    fn a_malformed_decision_is_deny() {
        let p = Policies::compile(&one(
            "package tend\n\ndecision := {\"decision\": \"yes please\"}\n",
        ))
        .unwrap();
        assert_eq!(p.decide(&json!({})).decision, Verdict::Deny);
        let p = Policies::compile(&one(
            "package tend\n\ndecision := {\"decision\": \"auto\", \"reasons\": [1]}\n",
        ))
        .unwrap();
        assert_eq!(p.decide(&json!({})).decision, Verdict::Deny);
    }

    /// Regression: regorus's register VM turns an error inside a rule body
    /// into "undefined", so a failing review rule let the action through as
    /// auto. The interpreter with strict builtin errors must deny instead.
    #[test]
    fn a_runtime_error_inside_one_rule_denies_the_action() {
        let mut files = default_pack();
        files.push(PolicyFile {
            path: "p/broken.rego".into(),
            text: "package tend\n\nreview contains \"never\" if {\n\tinput.n / 0 > 1\n}\n".into(),
        });
        let p = Policies::compile(&files).unwrap();
        let d = p.decide(&json!({"n": 1, "action": {"type": "restart", "target": {"kind": "host.Process", "name": "web"}, "changes": []}, "context": {}}));
        assert_eq!(d.decision, Verdict::Deny, "{d:?}");
        assert!(d.reasons[0].contains("divide by zero"), "{d:?}");
    }

    #[test]
    fn a_runtime_error_is_deny() {
        let p = Policies::compile(&one(
            "package tend\n\ndecision := {\"decision\": \"auto\", \"reasons\": [sprintf(\"%d\", [to_number(input.x)])]}\n",
        ))
        .unwrap();
        let d = p.decide(&json!({"x": "not a number"}));
        assert_eq!(d.decision, Verdict::Deny, "{d:?}");
    }
}
