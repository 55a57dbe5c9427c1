//! Rego policies evaluated by regorus.
//!
//! Policies are parsed and compiled once per pass, then evaluated for every
//! action with the input contract of ARCHITECTURE.md. Evaluation fails closed: a
//! runtime error, an undefined decision or a malformed result is `deny` with
//! the error as the reason, never `auto`. Compiling also runs the static
//! checks of [`super::check`], and every evaluation runs under the bounds of
//! [`super::limits`]: a policy past a limit denies the action.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use regorus::Engine;
use serde_json::Value;

use super::{check, limits};
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
    /// The files not from the default pack, named when a limit stops an
    /// evaluation that regorus does not locate.
    authored: Vec<String>,
}

impl Policies {
    /// Parses and compiles every non-test file. Errors carry the Rego file,
    /// line and column.
    pub fn compile(files: &[PolicyFile]) -> Result<Policies, Vec<Diagnostic>> {
        let mut engine = Engine::new();
        // A builtin that fails (to_number("x")) is an error, not a silently
        // undefined expression: errors must surface so they can deny.
        engine.set_strict_builtin_errors(true);
        let sources: Vec<&PolicyFile> = files.iter().filter(|f| !f.is_test()).collect();
        load(&mut engine, &sources, files)?;
        limits::install(&mut engine, true);
        let entry: Arc<str> = ENTRY_POINT.into();
        // Compiling checks every rule reachable from the entry point once,
        // so later evaluations only run.
        engine
            .compile_with_entrypoint(&entry)
            .map_err(|e| vec![rego_diagnostic(&e.to_string(), files)])?;
        let pack = default_pack();
        let authored = sources
            .iter()
            .filter(|f| !pack.iter().any(|p| p.text == f.text))
            .map(|f| f.path.clone())
            .collect();
        Ok(Policies {
            compiled: engine,
            idle: Mutex::new(Vec::new()),
            authored,
        })
    }

    /// Decides one action. Never fails: any problem is a `deny`.
    pub fn decide(&self, input: &Value) -> PolicyDecision {
        let mut engine = self.take();
        engine.set_input(regorus::Value::from(input.clone()));
        // A panic inside the evaluator must deny this action, not stop the
        // pass; the engine it left behind is not reused.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            engine.eval_rule(ENTRY_POINT.to_string())
        }));
        match outcome {
            Ok(Ok(v)) => {
                self.give_back(engine);
                interpret(&v)
            }
            // An engine stopped by a limit may hold what it built so far;
            // it is dropped rather than kept in the pool.
            Ok(Err(e)) => deny(self.failure(&e)),
            Err(_) => deny("policy evaluation failed: the evaluator stopped unexpectedly".into()),
        }
    }

    /// Why an evaluation failed, naming the policy: where regorus located
    /// the error, else the repository's policy files.
    fn failure(&self, err: &anyhow::Error) -> String {
        match limits::exceeded(err) {
            Some(limit) => {
                let whose = if self.authored.is_empty() {
                    "tend's default policies".to_string()
                } else {
                    format!("policies {}", self.authored.join(", "))
                };
                format!("policy {limit} ({whose})")
            }
            None => format!("policy evaluation failed: {}", one_line(&err.to_string())),
        }
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

/// Parses `sources` into `engine` and runs the static checks over them.
/// Errors carry the Rego file, line and column.
pub(super) fn load(
    engine: &mut Engine,
    sources: &[&PolicyFile],
    files: &[PolicyFile],
) -> Result<(), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    for f in sources {
        if let Err(e) = engine.add_policy(f.path.clone(), f.text.clone()) {
            diags.push(rego_diagnostic(&e.to_string(), files));
        }
    }
    if diags.is_empty() {
        diags = check::check(engine.get_modules());
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(diags)
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

    fn rejected(files: &[PolicyFile]) -> Vec<Diagnostic> {
        match Policies::compile(files) {
            Ok(_) => panic!("compiled"),
            Err(diags) => diags,
        }
    }

    fn with_pack(path: &str, text: &str) -> Vec<PolicyFile> {
        let mut files = default_pack();
        files.push(PolicyFile {
            path: path.into(),
            text: text.into(),
        });
        files
    }

    /// Regression: a self-recursive function overflowed the stack and
    /// aborted tend when the policy was evaluated; it is rejected, located
    /// at the recursive call, when the policies are compiled.
    #[test]
    fn a_self_recursive_function_is_rejected_at_its_call() {
        let diags = rejected(&with_pack(
            "p/custom.rego",
            "package tend\n\nf(x) := y if {\n\ty := f(x)\n}\n\ndeny contains \"x\" if f(1)\n",
        ));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].location(), "p/custom.rego:4:10");
        assert_eq!(
            diags[0].message,
            "invalid policy: recursion: data.tend.f depends on itself (f -> f); Rego does not allow recursion"
        );
    }

    #[test]
    fn mutual_recursion_through_functions_rules_and_imports_is_rejected() {
        let diags = rejected(&[
            PolicyFile {
                path: "p/a.rego".into(),
                text: "package tend\n\nimport data.lib\n\nf(x) := lib.g(x)\n\ndecision := {\"decision\": \"auto\"} if f(1)\n".into(),
            },
            PolicyFile {
                path: "p/lib.rego".into(),
                text: "package lib\n\ng(x) := data.tend.f(x)\n".into(),
            },
        ]);
        assert!(diags[0].message.contains("recursion: data."), "{diags:?}");
        let diags = rejected(&one(
            "package tend\n\na := b\n\nb := c if a\n\nc := 1\n\ndecision := {\"decision\": \"auto\"} if b\n",
        ));
        assert_eq!(diags[0].location(), "p/custom.rego:5:11", "{diags:?}");
        assert!(
            diags[0].message.contains("(a -> b -> a)")
                || diags[0].message.contains("(b -> a -> b)"),
            "{diags:?}"
        );
    }

    #[test]
    fn names_that_only_look_recursive_compile() {
        Policies::compile(&with_pack(
            "p/ok.rego",
            "package tend\n\nimport data.lib.helpers as h\n\nlimit := 3\n\nf(limit) := limit + 1\n\ng(x) := y if {\n\tlimit := x * 2\n\ty := f(limit)\n}\n\nreview contains \"many\" if {\n\trecent := input.context.recent_actions\n\th.big(g(count(recent)))\n}\n",
        ).into_iter().chain([PolicyFile {
            path: "p/lib.rego".into(),
            text: "package lib.helpers\n\nbig(n) if n > data.tend.limit\n".into(),
        }]).collect::<Vec<_>>())
        .unwrap();
    }

    #[test]
    fn functions_tend_does_not_have_are_rejected_where_called() {
        let diags = rejected(&with_pack(
            "p/net.rego",
            "package tend\n\ndeny contains \"down\" if {\n\tresp := http.send({\"method\": \"GET\", \"url\": \"http://x\"})\n\tresp.status_code != 200\n}\n\nreview contains \"env\" if opa.runtime().env.X\n\nauto contains \"y\" if no_such_function(1)\n",
        ));
        let got: Vec<(String, String)> = diags
            .iter()
            .map(|d| (d.location(), d.message.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("p/net.rego:4:13".to_string(), "invalid policy: http.send is not available in tend: policies cannot reach the network".to_string()),
                ("p/net.rego:8:26".to_string(), "invalid policy: opa.runtime is not available in tend: policies cannot read tend's runtime or environment".to_string()),
                ("p/net.rego:10:22".to_string(), "invalid policy: unknown function no_such_function".to_string()),
            ]
        );
    }

    #[test]
    fn conflicting_rules_are_rejected() {
        let diags = rejected(&with_pack(
            "p/decision.rego",
            "package tend\n\ndecision := {\"decision\": \"auto\"}\n",
        ));
        assert_eq!(diags[0].location(), "p/decision.rego:3:1", "{diags:?}");
        assert!(diags[0].message.contains("conflicting rules: data.tend.decision always has a value from policies/decision.rego:18:1"), "{diags:?}");
        let diags = rejected(&with_pack(
            "p/set.rego",
            "package tend\n\ndeny := {\"no\"}\n",
        ));
        assert!(
            diags[0].message.contains(
                "conflicting rules: data.tend.deny is a value rule here and a set rule (contains)"
            ),
            "{diags:?}"
        );
        let diags = rejected(&with_pack("p/fn.rego", "package tend\n\nauto(x) := x\n"));
        assert!(
            diags[0]
                .message
                .contains("is a function of 1 argument(s) here"),
            "{diags:?}"
        );
    }

    #[test]
    fn dependency_chains_are_bounded_and_the_bound_fits_a_small_stack() {
        let chain = |n: usize| {
            let mut text = String::from("package tend\n\n");
            for i in 0..n {
                text.push_str(&format!("f{i}(x) := f{}(x)\n", i + 1));
            }
            text.push_str(&format!("f{n}(x) := x\n\ndecision := {{\"decision\": \"auto\", \"reasons\": [sprintf(\"%d\", [f0(1)])]}}\n"));
            one(&text)
        };
        let diags = rejected(&chain(super::limits::MAX_DEPTH + 1));
        assert!(
            diags[0].message.contains("more than tend's limit of 64"),
            "{diags:?}"
        );
        // The deepest chain allowed evaluates on a thread with Rust's
        // default 2 MiB stack, in a debug build.
        let p = Policies::compile(&chain(super::limits::MAX_DEPTH - 2)).unwrap();
        let d = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || p.decide(&json!({})))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(d.decision, Verdict::Auto, "{d:?}");
    }

    /// Regression: `numbers.range(1, 1e8)` ran for 22 s and took 3.9 GiB
    /// before tend aborted. Constant bounds are rejected when compiling;
    /// bounds from the input deny the action at once, naming the limit.
    #[test]
    fn a_range_past_the_limit_is_rejected_or_denied() {
        let diags = rejected(&with_pack(
            "p/range.rego",
            "package tend\n\ndeny contains \"big\" if count(numbers.range(1, 1e8)) > 0\n",
        ));
        assert_eq!(diags[0].location(), "p/range.rego:3:30");
        assert_eq!(diags[0].message, "invalid policy: numbers.range here would build 100000000 numbers, more than tend's limit of 1000000");
        let p = Policies::compile(&with_pack(
            "p/range.rego",
            "package tend\n\nreview contains \"big\" if count(numbers.range(1, input.n)) > 0\n",
        ))
        .unwrap();
        let started = std::time::Instant::now();
        let d = p.decide(&json!({"n": 100_000_000, "action": {"type": "restart", "target": {"kind": "host.Process", "name": "web"}}}));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(d.decision, Verdict::Deny, "{d:?}");
        assert_eq!(d.reasons, vec!["policy evaluation failed: numbers.range would build 100000000 numbers, more than tend's limit of 1000000 (at p/range.rego:3:45)"]);
        let d = p.decide(&json!({"n": 10, "action": {"type": "restart", "target": {"kind": "host.Process", "name": "web"}}}));
        assert_eq!(d.decision, Verdict::Review, "{d:?}");
    }

    /// Regression: a 5k x 5k comprehension ran for 35 s and took 5 GiB. It
    /// stops at the time limit and denies, from several threads at once.
    #[test]
    fn an_evaluation_past_the_time_limit_denies_naming_the_policy() {
        let p = Policies::compile(&with_pack(
            "p/slow.rego",
            "package tend\n\nreview contains \"slow\" if {\n\tx := [a | some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); a := i * j]\n\tcount(x) > 0\n}\n",
        ))
        .unwrap();
        let started = std::time::Instant::now();
        let inputs = vec![
            json!({"action": {"type": "restart", "target": {"kind": "host.Process", "name": "web"}}});
            2
        ];
        let decisions: Vec<PolicyDecision> = std::thread::scope(|s| {
            let workers: Vec<_> = inputs.iter().map(|i| s.spawn(|| p.decide(i))).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        for d in decisions {
            assert_eq!(d.decision, Verdict::Deny, "{d:?}");
            assert_eq!(d.reasons, vec!["policy evaluation exceeded the time limit of 500ms per decision (policies p/slow.rego)"]);
        }
    }
}
