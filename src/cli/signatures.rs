//! `tend signatures`: the evidence to move a signature up the trust
//! ladder. For each declared signature: its trust, how often it matched,
//! for one in shadow the steps it would have run and how often the problem
//! went away on its own, and for one that acts its verified fix rate.

use std::path::PathBuf;

use serde_json::json;

use super::{print, Global, HistoryFormat};
use crate::reconcile;
use crate::source::Source;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The desired-state directory. Default: the working directory.
    dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
    format: HistoryFormat,
}

fn share(n: usize, of: usize) -> String {
    if of == 0 {
        "–".to_string()
    } else {
        format!("{n}/{of} ({:.0}%)", 100.0 * n as f64 / of as f64)
    }
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let loaded = reconcile::load(&Source::Dir(dir), &global.options(None))?;
    let store = crate::state::open_existing(&loaded.state_dir, loaded.shared.as_deref())?;
    let (shadow, incidents, stats) = match &store {
        Some(s) => (
            s.shadow_matches()?,
            s.incidents(true, 100_000)?,
            s.remediation_stats()?,
        ),
        None => Default::default(),
    };
    let mut rows = Vec::new();
    // (name, trust, matches, evidence), aligned under a header below.
    let mut lines: Vec<(String, &str, String, String)> = Vec::new();
    for sig in &loaded.desired.signatures {
        let trust = sig.spec.trust;
        let mine: Vec<&crate::state::ShadowRow> =
            shadow.iter().filter(|r| r.signature == sig.name).collect();
        let matched = if trust == crate::model::health::Trust::Shadow {
            mine.len()
        } else {
            incidents
                .iter()
                .filter(|i| i.signature.as_deref() == Some(sig.name.as_str()))
                .count()
        };
        let mut would: Vec<&str> = mine.iter().map(|r| r.step.as_str()).collect();
        would.sort_unstable();
        would.dedup();
        let ended = mine.iter().filter(|r| r.ended_at.is_some()).count();
        let own = mine.iter().filter(|r| r.on_its_own == Some(true)).count();
        let (ok, failed) = stats
            .iter()
            .filter(|s| s.cause == sig.name)
            .fold((0i64, 0i64), |(a, b), s| (a + s.successes, b + s.failures));
        let mut evidence = Vec::new();
        if !would.is_empty() {
            evidence.push(format!(
                "would have run {}; went away on its own {}",
                would.join(", "),
                share(own, ended)
            ));
        }
        if ok + failed > 0 {
            evidence.push(format!(
                "verified fixes {}",
                share(ok as usize, (ok + failed) as usize)
            ));
        }
        lines.push((
            sig.name.clone(),
            trust.as_str(),
            matched.to_string(),
            evidence.join("; "),
        ));
        rows.push(json!({
            "name": sig.name,
            "trust": trust.as_str(),
            "matches": matched,
            "wouldHaveRun": would,
            "resolvedOnItsOwn": {"ended": ended, "onItsOwn": own},
            "verifiedFixes": {"verified": ok, "failed": failed},
        }));
    }
    let mut text = String::new();
    if lines.is_empty() {
        text.push_str("no signatures are declared\n");
    } else {
        let widest =
            |cells: Vec<usize>, title: &str| cells.into_iter().max().unwrap_or(0).max(title.len());
        let (wn, wt, wm) = (
            widest(
                lines.iter().map(|l| l.0.chars().count()).collect(),
                "SIGNATURE",
            ),
            widest(lines.iter().map(|l| l.1.len()).collect(), "TRUST"),
            widest(lines.iter().map(|l| l.2.len()).collect(), "MATCHES"),
        );
        let row = |n: &str, t: &str, m: &str, e: &str| {
            format!("{n:<wn$}  {t:<wt$}  {m:>wm$}  {e}")
                .trim_end()
                .to_string()
                + "\n"
        };
        text.push_str(&row("SIGNATURE", "TRUST", "MATCHES", "EVIDENCE"));
        for (n, t, m, e) in &lines {
            text.push_str(&row(n, t, m, e));
        }
    }
    let out = match args.format {
        HistoryFormat::Human => text,
        HistoryFormat::Json => format!(
            "{:#}\n",
            json!({"apiVersion": "tend.dev/v1", "kind": "Signatures", "formatVersion": 1, "signatures": rows})
        ),
    };
    print(&out)?;
    Ok(0)
}
