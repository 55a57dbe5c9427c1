//! `tend pause` and `tend resume`: the emergency switch. While a pause
//! lasts, tend plans, reports and notifies but takes no action (healing
//! included) on what it matches; a running `tend watch` honours it from
//! its next pass, and acts again the moment a pause ends by itself.

use super::{parse_duration, print, Global};
use crate::policy::gates::{check_pause_selector, pause_in_words};
use crate::state::NewPause;

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// What to pause: KIND/NAME, a KIND, a label key=value; nothing for
    /// everything.
    selector: Option<String>,
    /// How long the pause lasts; without it, until `tend resume`.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Why: shown in every plan and report while the pause lasts.
    #[arg(long)]
    reason: String,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The selector of the pause to end (as it was given); nothing ends
    /// every pause.
    selector: Option<String>,
}

/// Who is at the keyboard, for the record.
fn who() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "someone".into())
}

pub fn pause(args: PauseArgs, global: &Global) -> anyhow::Result<u8> {
    let selector = args.selector.unwrap_or_default();
    check_pause_selector(&selector).map_err(anyhow::Error::msg)?;
    if args.reason.trim().is_empty() {
        anyhow::bail!("--reason must say why: it is shown wherever the pause is");
    }
    let until = match args.duration {
        Some(d) => Some(
            chrono::Utc::now()
                + chrono::Duration::from_std(d)
                    .map_err(|_| anyhow::anyhow!("--for is too long"))?,
        ),
        None => None,
    };
    let store = crate::state::open(&global.state_dir()?, global.shared()?.as_deref())?;
    let who = who();
    store.pause(&NewPause {
        selector: &selector,
        reason: &args.reason,
        who: &who,
        until,
    })?;
    let now = chrono::Utc::now();
    let made = store
        .pauses(now)?
        .into_iter()
        .next_back()
        .map(|p| pause_in_words(&p))
        .unwrap_or_default();
    print(&format!("{made}\n"))?;
    Ok(0)
}

pub fn resume(args: ResumeArgs, global: &Global) -> anyhow::Result<u8> {
    let store = global.existing_store("state database")?;
    let ended = store.resume(args.selector.as_deref(), chrono::Utc::now())?;
    if ended.is_empty() {
        anyhow::bail!(
            "nothing to resume: no pause{} is in force",
            args.selector
                .map(|s| format!(" of `{s}`"))
                .unwrap_or_default()
        );
    }
    let mut out = String::new();
    for p in &ended {
        out.push_str(&format!("resumed: {}\n", pause_in_words(p)));
    }
    print(&out)?;
    Ok(0)
}
