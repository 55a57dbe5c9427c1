//! Static checks of a policy set, run when it is compiled: what regorus
//! parses and compiles but tend could not evaluate, or not safely.
//!
//! - Recursion: a function or rule that depends on itself. regorus evaluates
//!   a recursive function until the thread's stack overflows, which aborts
//!   the whole process (a stack overflow cannot be caught), so recursion is
//!   rejected here, as OPA rejects it.
//! - Dependency chains deeper than [`MAX_DEPTH`] rules and functions, for
//!   the same reason: every level of a chain is a level of the interpreter's
//!   stack.
//! - Unknown functions, such as `http.send` or `opa.runtime`: tend's Rego
//!   has no builtin that reaches the network or the host, so a decision
//!   depends only on its input.
//! - Conflicting rules: one name defined as a function and as a rule, or
//!   as a value and as a set or object; a value rule that always produces a
//!   value defined again elsewhere.
//! - `numbers.range` / `numbers.range_step` with constant bounds past
//!   [`super::limits::MAX_RANGE`].
//!
//! Every finding is a located diagnostic. This module never evaluates.

use std::collections::{BTreeMap, HashMap, HashSet};

use regorus::unstable::{
    AssignOp, Expr, Literal, Module, Query, Ref, Rule, RuleHead, Span, BUILTINS,
};

use super::limits::{range_len, MAX_DEPTH, MAX_RANGE};
use crate::model::diagnostic::Diagnostic;
use crate::model::yaml::Pos;

/// Functions of OPA that tend's Rego does not have on purpose, and why.
fn unavailable(name: &str) -> Option<&'static str> {
    match name.split('.').next().unwrap_or_default() {
        "http" | "net" => Some("policies cannot reach the network"),
        "opa" => Some("policies cannot read tend's runtime or environment"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    Set,
    Object,
    Function(usize),
}

impl Kind {
    fn describe(self) -> String {
        match self {
            Kind::Value => "a value rule".into(),
            Kind::Set => "a set rule (contains)".into(),
            Kind::Object => "an object rule".into(),
            Kind::Function(n) => format!("a function of {n} argument(s)"),
        }
    }
}

/// One rule definition (a rule may be defined in several places).
struct Def<'m> {
    path: String,
    kind: Kind,
    at: Loc,
    rule: &'m Rule,
    module: usize,
    /// It always produces a value: no condition, or an unconditional `else`.
    total: bool,
    /// The text of its value, to tell a harmless repeat from a conflict.
    value: Option<String>,
}

#[derive(Debug, Clone)]
struct Loc {
    file: String,
    line: u32,
    col: u32,
}

impl Loc {
    fn of(span: &Span) -> Loc {
        Loc {
            file: span.source.get_path().to_string(),
            line: span.line,
            col: span.col,
        }
    }

    fn pos(&self) -> Pos {
        Pos::new(self.line, self.col, 1)
    }

    fn diagnostic(&self, message: String) -> Diagnostic {
        Diagnostic::new(
            self.file.clone(),
            Some(self.pos()),
            format!("invalid policy: {message}"),
        )
    }
}

/// The static path of a reference: `a.b["c"]` is `[a, b, c]`; it stops at
/// the first component that is not a constant.
fn static_path(e: &Expr, out: &mut Vec<String>) -> bool {
    match e {
        Expr::Var { span, .. } => {
            out.push(span.text().to_string());
            true
        }
        Expr::RefDot { refr, field, .. } => {
            static_path(refr, out) && {
                out.push(field.0.text().to_string());
                true
            }
        }
        Expr::RefBrack { refr, index, .. } => {
            if !static_path(refr, out) {
                return false;
            }
            match index.as_ref() {
                Expr::String { value, .. } | Expr::RawString { value, .. } => {
                    match value.as_string() {
                        Ok(s) => {
                            out.push(s.to_string());
                            true
                        }
                        Err(_) => false,
                    }
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// The span of the first component of a reference (`a` of `a.b[c]`).
fn root(e: &Expr) -> &Span {
    match e {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => root(refr),
        other => other.span(),
    }
}

fn path_string(e: &Expr) -> Vec<String> {
    let mut out = Vec::new();
    static_path(e, &mut out);
    out
}

/// What one rule refers to.
#[derive(Default)]
struct Refs {
    /// Function calls: name as written, where, constant numeric arguments.
    calls: Vec<(String, Loc, Vec<Option<f64>>)>,
    /// References: the static path as written, where.
    refs: Vec<(Vec<String>, Loc)>,
    /// Names the rule declares (arguments, `:=`, `some`, `every`).
    locals: HashSet<String>,
}

impl Refs {
    fn declare(&mut self, e: &Expr) {
        match e {
            Expr::Var { span, .. } => {
                self.locals.insert(span.text().to_string());
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().for_each(|i| self.declare(i))
            }
            Expr::Object { fields, .. } => fields.iter().for_each(|(_, _, v)| self.declare(v)),
            _ => {}
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { span, .. } => self
                .refs
                .push((vec![span.text().to_string()], Loc::of(span))),
            Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                self.refs.push((path_string(e), Loc::of(root(e))));
                self.ref_indexes(e);
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().for_each(|i| self.expr(i))
            }
            Expr::Object { fields, .. } => fields.iter().for_each(|(_, k, v)| {
                self.expr(k);
                self.expr(v);
            }),
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.query(query);
                self.expr(term);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.query(query);
                self.expr(key);
                self.expr(value);
            }
            Expr::Call { fcn, params, .. } => {
                let constants = params
                    .iter()
                    .map(|p| match p.as_ref() {
                        Expr::Number { value, .. } => value.as_f64().ok(),
                        _ => None,
                    })
                    .collect();
                // At the function's name, where a reader looks for it.
                self.calls
                    .push((path_string(fcn).join("."), Loc::of(root(fcn)), constants));
                self.ref_indexes(fcn);
                params.iter().for_each(|p| self.expr(p));
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::AssignExpr { op, lhs, rhs, .. } => {
                if *op == AssignOp::ColEq {
                    self.declare(lhs);
                } else {
                    self.expr(lhs);
                }
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k);
                }
                self.expr(value);
                self.expr(collection);
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// The non-constant indexes of a reference (`a[x].b`: `x`).
    fn ref_indexes(&mut self, e: &Expr) {
        match e {
            Expr::RefDot { refr, .. } => self.ref_indexes(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.ref_indexes(refr);
                self.expr(index);
            }
            Expr::Var { .. } => {}
            other => self.expr(other),
        }
    }

    fn query(&mut self, q: &Query) {
        for stmt in &q.stmts {
            match &stmt.literal {
                Literal::SomeVars { vars, .. } => {
                    for v in vars {
                        self.locals.insert(v.text().to_string());
                    }
                }
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        self.declare(k);
                    }
                    self.declare(value);
                    self.expr(collection);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    if let Some(k) = key {
                        self.locals.insert(k.text().to_string());
                    }
                    self.locals.insert(value.text().to_string());
                    self.expr(domain);
                    self.query(query);
                }
            }
            for w in &stmt.with_mods {
                self.expr(&w.r#as);
            }
        }
    }

    fn rule(rule: &Rule) -> Refs {
        let mut r = Refs::default();
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        r.ref_indexes(refr);
                        if let Some(a) = assign {
                            r.expr(&a.value);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        r.ref_indexes(refr);
                        if let Some(k) = key {
                            r.expr(k);
                        }
                    }
                    RuleHead::Func { args, assign, .. } => {
                        args.iter().for_each(|a| r.declare(a));
                        if let Some(a) = assign {
                            r.expr(&a.value);
                        }
                    }
                }
                for b in bodies {
                    r.query(&b.query);
                    if let Some(a) = &b.assign {
                        r.expr(&a.value);
                    }
                }
            }
            Rule::Default { args, value, .. } => {
                args.iter().for_each(|a| r.declare(a));
                r.expr(value);
            }
        }
        // A local shadows a rule of the same name only where it is declared;
        // dropping the name everywhere in the rule errs towards no edge.
        let locals = std::mem::take(&mut r.locals);
        r.refs
            .retain(|(p, _)| !p.first().is_some_and(|n| locals.contains(n)));
        r.locals = locals;
        r
    }
}

fn definition<'m>(module: usize, package: &str, rule: &'m Rule) -> Option<Def<'m>> {
    let (refr, kind, total, value) = match rule {
        Rule::Spec { head, bodies, .. } => {
            let total = bodies.is_empty()
                || bodies
                    .last()
                    .is_some_and(|b| b.is_else && b.query.stmts.is_empty());
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    let mut p = Vec::new();
                    let kind = if static_path(refr, &mut p) {
                        Kind::Value
                    } else {
                        Kind::Object
                    };
                    let value = assign.as_ref().map(|a| a.value.span().text().to_string());
                    (refr, kind, total, value)
                }
                RuleHead::Set { refr, .. } => (refr, Kind::Set, false, None),
                RuleHead::Func { refr, args, .. } => {
                    (refr, Kind::Function(args.len()), false, None)
                }
            }
        }
        Rule::Default { refr, args, .. } if !args.is_empty() => {
            (refr, Kind::Function(args.len()), false, None)
        }
        Rule::Default { .. } => return None,
    };
    let mut p = vec![package.to_string()];
    static_path(refr, &mut p);
    Some(Def {
        path: p.join("."),
        kind,
        at: Loc::of(rule.span()),
        rule,
        module,
        total,
        value,
    })
}

fn package_path(m: &Module) -> String {
    let mut p = vec!["data".to_string()];
    static_path(&m.package.refr, &mut p);
    p.join(".")
}

/// Import aliases of a module: alias → imported path.
fn imports(m: &Module) -> HashMap<String, Vec<String>> {
    m.imports
        .iter()
        .filter_map(|i| {
            let path = path_string(&i.refr);
            let alias = match &i.r#as {
                Some(a) => a.text().to_string(),
                None => path.last()?.clone(),
            };
            Some((alias, path))
        })
        .collect()
}

/// Runs every check over the modules of a policy set.
pub fn check(modules: &[Ref<Module>]) -> Vec<Diagnostic> {
    let packages: Vec<String> = modules.iter().map(|m| package_path(m)).collect();
    let defs: Vec<Def<'_>> = modules
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            let pkg = &packages[i];
            m.policy.iter().filter_map(move |r| definition(i, pkg, r))
        })
        .collect();
    let mut by_path: BTreeMap<&str, Vec<&Def<'_>>> = BTreeMap::new();
    for d in &defs {
        by_path.entry(d.path.as_str()).or_default().push(d);
    }
    let mut diags = conflicts(&by_path);
    let graph = Graph::build(modules, &packages, &defs, &by_path, &mut diags);
    diags.extend(graph.cycles_and_depth());
    diags
}

fn conflicts(by_path: &BTreeMap<&str, Vec<&Def<'_>>>) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for (path, defs) in by_path {
        let first = defs[0];
        if let Some(other) = defs.iter().find(|d| d.kind != first.kind) {
            diags.push(
                other
                    .at
                    .diagnostic(format!(
                        "conflicting rules: {path} is {} here and {} at {}:{}:{}",
                        other.kind.describe(),
                        first.kind.describe(),
                        first.at.file,
                        first.at.line,
                        first.at.col
                    ))
                    .with_note(first.at.file.clone(), first.at.pos(), "first defined here"),
            );
            continue;
        }
        if first.kind != Kind::Value || defs.len() < 2 {
            continue;
        }
        // A value rule that always produces a value conflicts with any other
        // definition producing a different one.
        if let Some(total) = defs.iter().find(|d| d.total) {
            if let Some(other) = defs
                .iter()
                .find(|d| !std::ptr::eq(**d, *total) && d.value != total.value)
            {
                let (a, b) = if other.at.line < total.at.line && other.at.file == total.at.file {
                    (other, total)
                } else {
                    (total, other)
                };
                diags.push(
                    b.at.diagnostic(format!(
                        "conflicting rules: {path} always has a value from {}:{}:{}, so this definition can only conflict with it (add reasons to deny, review or auto instead)",
                        a.at.file, a.at.line, a.at.col
                    ))
                    .with_note(a.at.file.clone(), a.at.pos(), "defined here"),
                );
            }
        }
    }
    diags
}

/// Dependencies between rules and functions, by path.
struct Graph {
    edges: BTreeMap<String, Vec<(String, Loc)>>,
}

impl Graph {
    fn build(
        modules: &[Ref<Module>],
        packages: &[String],
        defs: &[Def<'_>],
        by_path: &BTreeMap<&str, Vec<&Def<'_>>>,
        diags: &mut Vec<Diagnostic>,
    ) -> Graph {
        let aliases: Vec<HashMap<String, Vec<String>>> =
            modules.iter().map(|m| imports(m)).collect();
        let is_fn = |p: &str| {
            by_path
                .get(p)
                .is_some_and(|d| matches!(d[0].kind, Kind::Function(_)))
        };
        let is_rule = |p: &str| {
            by_path
                .get(p)
                .is_some_and(|d| !matches!(d[0].kind, Kind::Function(_)))
        };
        let mut edges: BTreeMap<String, Vec<(String, Loc)>> = BTreeMap::new();
        for d in defs {
            let refs = Refs::rule(d.rule);
            let pkg = &packages[d.module];
            let alias = &aliases[d.module];
            // Where a path written in this module may point: the data path
            // itself, the import it starts with, or the module's package.
            let candidates = |written: &[String]| -> Vec<Vec<String>> {
                let Some(root) = written.first() else {
                    return vec![];
                };
                if root == "data" {
                    return vec![written.to_vec()];
                }
                if root == "input" {
                    return vec![];
                }
                let mut out = Vec::new();
                if let Some(target) = alias.get(root) {
                    let mut p = target.clone();
                    p.extend_from_slice(&written[1..]);
                    out.push(p);
                }
                let mut p: Vec<String> = pkg.split('.').map(str::to_string).collect();
                p.extend_from_slice(written);
                out.push(p);
                out
            };
            let out = edges.entry(d.path.clone()).or_default();
            for (name, at, constants) in &refs.calls {
                let written: Vec<String> = name.split('.').map(str::to_string).collect();
                let targets: Vec<String> = candidates(&written)
                    .into_iter()
                    .map(|c| c.join("."))
                    .filter(|c| is_fn(c))
                    .collect();
                if !targets.is_empty() {
                    out.extend(targets.into_iter().map(|t| (t, at.clone())));
                    continue;
                }
                if name == "print" || BUILTINS.contains_key(name.as_str()) {
                    if let Some(d) = constant_range(name, constants) {
                        diags.push(at.diagnostic(d));
                    }
                    continue;
                }
                let message = match unavailable(name) {
                    Some(why) => format!("{name} is not available in tend: {why}"),
                    None => format!("unknown function {name}"),
                };
                diags.push(at.diagnostic(message));
            }
            for (written, at) in &refs.refs {
                for c in candidates(written) {
                    // The longest prefix that is a rule, or every rule under
                    // the path when it names a whole package.
                    let hit = (2..=c.len())
                        .rev()
                        .map(|n| c[..n].join("."))
                        .find(|p| is_rule(p));
                    match hit {
                        Some(p) => out.push((p, at.clone())),
                        None => {
                            let prefix = format!("{}.", c.join("."));
                            for p in by_path.keys().filter(|p| p.starts_with(&prefix)) {
                                if is_rule(p) {
                                    out.push((p.to_string(), at.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
        for targets in edges.values_mut() {
            let mut seen = HashSet::new();
            targets.retain(|(t, _)| seen.insert(t.clone()));
        }
        Graph { edges }
    }

    /// Recursion anywhere, then, when there is none, chains deeper than
    /// [`MAX_DEPTH`].
    fn cycles_and_depth(&self) -> Vec<Diagnostic> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Active,
            Done(usize),
        }
        let mut marks: HashMap<&str, Mark> = HashMap::new();
        let mut diags = Vec::new();
        let mut reported = HashSet::new();
        // Iterative depth-first search: the check itself must not recurse
        // as deep as the policy does.
        for start in self.edges.keys() {
            if marks.contains_key(start.as_str()) {
                continue;
            }
            let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
            marks.insert(start, Mark::Active);
            while let Some(&(node, next)) = stack.last() {
                let targets = self.edges.get(node).map(Vec::as_slice).unwrap_or(&[]);
                if let Some((target, at)) = targets.get(next) {
                    if let Some(top) = stack.last_mut() {
                        top.1 += 1;
                    }
                    match marks.get(target.as_str()) {
                        None => {
                            marks.insert(target, Mark::Active);
                            stack.push((target, 0));
                        }
                        Some(Mark::Active) => {
                            let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[from..].iter().map(|(n, _)| *n).collect();
                            cycle.push(target);
                            let mut key: Vec<&str> = cycle[..cycle.len() - 1].to_vec();
                            key.sort();
                            if reported.insert(key) {
                                let short: Vec<&str> = cycle
                                    .iter()
                                    .map(|p| p.rsplit('.').next().unwrap_or(p))
                                    .collect();
                                diags.push(at.diagnostic(format!(
                                    "recursion: {target} depends on itself ({}); Rego does not allow recursion",
                                    short.join(" -> ")
                                )));
                            }
                        }
                        Some(Mark::Done(_)) => {}
                    }
                } else {
                    let depth = 1 + targets
                        .iter()
                        .filter_map(|(t, _)| match marks.get(t.as_str()) {
                            Some(Mark::Done(d)) => Some(*d),
                            _ => None,
                        })
                        .max()
                        .unwrap_or(0);
                    marks.insert(node, Mark::Done(depth));
                    stack.pop();
                }
            }
        }
        if !diags.is_empty() {
            return diags;
        }
        if let Some((path, depth)) = marks
            .iter()
            .filter_map(|(p, m)| match m {
                Mark::Done(d) if *d > MAX_DEPTH => Some((*p, *d)),
                _ => None,
            })
            .max_by_key(|(_, d)| *d)
        {
            let at = self
                .edges
                .get(path)
                .and_then(|t| t.first())
                .map(|(_, at)| at.clone());
            let message = format!(
                "{path} depends on a chain of {depth} rules and functions, more than tend's limit of {MAX_DEPTH}"
            );
            diags.push(match at {
                Some(at) => at.diagnostic(message),
                None => Diagnostic::new("", None, format!("invalid policy: {message}")),
            });
        }
        diags
    }
}

/// A `numbers.range` whose constant bounds already exceed the limit.
fn constant_range(name: &str, constants: &[Option<f64>]) -> Option<String> {
    let n = match (name, constants) {
        ("numbers.range", [Some(a), Some(b)]) => range_len(*a, *b, 1.0),
        ("numbers.range_step", [Some(a), Some(b), Some(s)]) => range_len(*a, *b, *s),
        _ => return None,
    };
    (n > MAX_RANGE as f64).then(|| {
        format!("{name} here would build {n:.0} numbers, more than tend's limit of {MAX_RANGE}")
    })
}
