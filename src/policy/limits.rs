//! The bounds every policy evaluation runs under, so that one policy can
//! neither stall a pass nor take the process down.
//!
//! - Time: regorus's cooperative execution timer, checked as the
//!   interpreter steps through rules, loops and comprehensions. An
//!   evaluation past [`TIME_LIMIT`] stops with an error, and the action is
//!   denied.
//! - Size: `numbers.range`, `numbers.range_step` and `net.cidr_expand`
//!   build their whole list in one builtin call, which the timer cannot
//!   interrupt; tend replaces them with versions that refuse lists of more
//!   than [`MAX_RANGE`] items.
//! - Depth: recursion and dependency chains deeper than
//!   [`MAX_DEPTH`] are rejected when the policies are compiled by
//!   `check` (a stack overflow cannot be caught at run time).
//!
//! Memory is bounded through time and size: regorus's allocator budget
//! needs its own global allocator (cargo feature `allocator-memory-limits`),
//! which tend does not use.

use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::bail;
use regorus::unstable::{Expr, Ref, Source, Span, BUILTINS};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};

/// How long one decision (or one `policy test` rule) may evaluate.
pub const TIME_LIMIT: Duration = Duration::from_millis(500);

/// Interpreter steps between two reads of the clock.
const CHECK_INTERVAL: u32 = 32;

/// The most numbers one `numbers.range` or `numbers.range_step` may build.
pub const MAX_RANGE: usize = 1_000_000;

/// How many rules and functions deep one evaluation may go.
pub const MAX_DEPTH: usize = 64;

/// Puts an engine under the limits. `strict` is the engine's builtin error
/// mode: a bad operand is an error when strict, else undefined.
pub fn install(engine: &mut Engine, strict: bool) {
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: TIME_LIMIT,
        check_interval: NonZeroU32::new(CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    });
    // Both names are builtins, so adding them cannot collide; an extension
    // is looked up before the builtin of the same name.
    let _ = engine.add_extension(
        "numbers.range".into(),
        2,
        Box::new(move |args: Vec<Value>| range("numbers.range", &args, strict)),
    );
    let _ = engine.add_extension(
        "numbers.range_step".into(),
        3,
        Box::new(move |args: Vec<Value>| range("numbers.range_step", &args, strict)),
    );
    let _ = engine.add_extension(
        "net.cidr_expand".into(),
        1,
        Box::new(move |args: Vec<Value>| cidr_expand(&args, strict)),
    );
}

/// `net.cidr_expand`, refusing networks of more than [`MAX_RANGE`]
/// addresses (`10.0.0.0/8` has 16 million, `::/0` 2^128).
fn cidr_expand(args: &[Value], strict: bool) -> anyhow::Result<Value> {
    let name = "net.cidr_expand";
    if let Some(cidr) = args.first().and_then(|a| a.as_string().ok()) {
        let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, ""));
        let bits: u32 = if addr.contains(':') { 128 } else { 32 };
        if let Ok(prefix) = prefix.parse::<u32>() {
            let n = 2f64.powi(bits.saturating_sub(prefix) as i32);
            if prefix <= bits && n > MAX_RANGE as f64 {
                bail!("{name} would build {n:.0} addresses, more than tend's limit of {MAX_RANGE}");
            }
        }
    }
    builtin(name, args, strict)
}

/// Calls regorus's own builtin `name`, which an extension of the same name
/// hides from policies.
fn builtin(name: &str, args: &[Value], strict: bool) -> anyhow::Result<Value> {
    let Some((f, _)) = BUILTINS.get(name) else {
        bail!("{name} is not available");
    };
    let source = Source::from_contents(name.to_string(), name.to_string())?;
    let span = Span {
        source,
        line: 1,
        col: 1,
        start: 0,
        end: name.len() as u32,
    };
    let params: Vec<Ref<Expr>> = args
        .iter()
        .map(|_| {
            Ref::new(Expr::Null {
                span: span.clone(),
                value: Value::Null,
                eidx: 0,
            })
        })
        .collect();
    f(&span, &params, args, strict)
}

/// How many numbers a range from `a` to `b` by `step` holds.
pub fn range_len(a: f64, b: f64, step: f64) -> f64 {
    if step <= 0.0 {
        return 0.0;
    }
    ((b - a).abs() / step).floor() + 1.0
}

/// `numbers.range(a, b)` and `numbers.range_step(a, b, step)`, as OPA
/// defines them, refusing ranges past [`MAX_RANGE`].
fn range(name: &str, args: &[Value], strict: bool) -> anyhow::Result<Value> {
    let int = |v: &Value, what: &str| -> anyhow::Result<Option<i64>> {
        match v.as_number().ok() {
            Some(n) if n.is_integer() => Ok(n.as_i64()),
            Some(_) if !strict => Ok(None),
            Some(_) => bail!("{name}: {what} must be an integer"),
            None => bail!("{name}: {what} must be a number"),
        }
    };
    let (Some(a), Some(b)) = (int(&args[0], "operand")?, int(&args[1], "operand")?) else {
        return Ok(Value::Undefined);
    };
    let step = match args.get(2) {
        None => 1,
        Some(s) => match int(s, "step")? {
            Some(s) if s > 0 => s,
            Some(_) if !strict => return Ok(Value::Undefined),
            Some(_) => bail!("{name}: step must be a positive integer"),
            None => return Ok(Value::Undefined),
        },
    };
    let len = range_len(a as f64, b as f64, step as f64);
    if len > MAX_RANGE as f64 {
        bail!("{name} would build {len:.0} numbers, more than tend's limit of {MAX_RANGE}");
    }
    let dir = if b >= a { step } else { -step };
    let items: Vec<Value> = (0..len as i64).map(|i| Value::from(a + i * dir)).collect();
    Ok(Value::from(items))
}

/// A limit's error as a reason, or `None` when the error is no limit.
pub fn exceeded(err: &anyhow::Error) -> Option<String> {
    match err.downcast_ref::<LimitError>() {
        Some(LimitError::TimeLimitExceeded { limit, .. }) => Some(format!(
            "evaluation exceeded the time limit of {} per decision",
            humantime::format_duration(*limit)
        )),
        Some(LimitError::MemoryLimitExceeded { limit, .. }) => Some(format!(
            "evaluation exceeded the memory limit of {limit} bytes"
        )),
        Some(LimitError::RegexSizeLimitExceeded { limit }) => Some(format!(
            "a regular expression exceeded the size limit of {limit} bytes"
        )),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: i64) -> Value {
        Value::from(i)
    }

    fn numbers(v: &Value) -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_i64().unwrap())
            .collect()
    }

    #[test]
    fn ranges_match_opa_within_the_limit() {
        let r = |args: Vec<Value>| range("numbers.range", &args, true).unwrap();
        assert_eq!(numbers(&r(vec![n(1), n(4)])), vec![1, 2, 3, 4]);
        assert_eq!(numbers(&r(vec![n(3), n(1)])), vec![3, 2, 1]);
        assert_eq!(numbers(&r(vec![n(2), n(2)])), vec![2]);
        let s = range("numbers.range_step", &[n(0), n(7), n(3)], true).unwrap();
        assert_eq!(numbers(&s), vec![0, 3, 6]);
        let s = range("numbers.range_step", &[n(7), n(0), n(3)], true).unwrap();
        assert_eq!(numbers(&s), vec![7, 4, 1]);
        assert!(range("numbers.range", &[Value::from(1.5), n(2)], true).is_err());
        assert_eq!(
            range("numbers.range", &[Value::from(1.5), n(2)], false).unwrap(),
            Value::Undefined
        );
    }

    #[test]
    fn cidr_expand_is_capped_and_otherwise_regorus_s_own() {
        let s = |x: &str| Value::from(x);
        let small = cidr_expand(&[s("10.0.0.0/30")], true).unwrap();
        assert_eq!(small.as_array().unwrap().len(), 4);
        let err = cidr_expand(&[s("::/0")], true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "net.cidr_expand would build 340282366920938463463374607431768211456 addresses, more than tend's limit of 1000000"
        );
        assert!(cidr_expand(&[s("10.0.0.0/8")], true).is_err());
        assert!(cidr_expand(&[s("not a cidr")], true).is_err());
    }

    #[test]
    fn a_range_past_the_limit_is_an_error() {
        let err = range("numbers.range", &[n(1), n(100_000_000)], true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "numbers.range would build 100000000 numbers, more than tend's limit of 1000000"
        );
    }
}
