//! `tend fleet status`: the members of a fleet sharing one state database,
//! their heartbeats, the leases each holds, who publishes, the actions in
//! flight under fleet budgets, and the open incidents of each node.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{parse_duration, print, Global, HistoryFormat};
use crate::state::{Lease, Member, Slot};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Members, heartbeats, leases and owners, open incidents per node.
    Status {
        /// The lease the fleet runs with (Settings spec.state.lease): a
        /// member whose last heartbeat is older is gone.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        lease: std::time::Duration,
        /// Also list every lease (human output; JSON always lists them).
        #[arg(long)]
        leases: bool,
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let Command::Status {
        lease,
        leases: list,
        format,
    } = args.command;
    let Some(target) = global.shared()? else {
        anyhow::bail!(
            "tend fleet status reads a shared state database: give --state postgres://USER@HOST:PORT/DATABASE or TEND_STATE_URL"
        );
    };
    let store = crate::state::open(&global.state_dir()?, Some(&target))?;
    let fleet = store
        .fleet()
        .ok_or_else(|| anyhow::anyhow!("{} is not shared by a fleet", target.shown()))?;
    let members = fleet.members(lease)?;
    let leases = fleet.leases()?;
    let now = chrono::Utc::now();
    let in_flight: Vec<Slot> = store
        .fleet_rows()
        .slots()?
        .into_iter()
        .filter(|s| s.until > now && members.iter().any(|m| m.live && m.node == s.node))
        .collect();
    let mut incidents: BTreeMap<String, usize> = BTreeMap::new();
    for i in store.fleet_incidents(false, 100_000, None)? {
        *incidents.entry(i.node.unwrap_or_default()).or_default() += 1;
    }
    let status = Status {
        url: target.shown(),
        lease,
        members: &members,
        leases: &leases,
        in_flight: &in_flight,
        incidents: &incidents,
    };
    print(&match format {
        HistoryFormat::Human => status.human(list),
        HistoryFormat::Json => format!("{:#}\n", status.json()),
    })?;
    Ok(0)
}

struct Status<'a> {
    url: &'a str,
    lease: std::time::Duration,
    members: &'a [Member],
    leases: &'a [Lease],
    /// Actions in flight under fleet budgets, by live members.
    in_flight: &'a [Slot],
    incidents: &'a BTreeMap<String, usize>,
}

impl Status<'_> {
    fn publisher(&self) -> Option<&str> {
        self.leases
            .iter()
            .find(|l| l.live && l.key == crate::fleet::PUBLISHER)
            .map(|l| l.holder.as_str())
    }

    /// Leases of resources (not the publisher's role): held and expired.
    fn resources(&self) -> (usize, usize) {
        let of_resources = self
            .leases
            .iter()
            .filter(|l| l.key != crate::fleet::PUBLISHER);
        let held = of_resources.clone().filter(|l| l.live).count();
        (held, of_resources.count() - held)
    }

    fn human(&self, list: bool) -> String {
        let mut out = String::new();
        let live = self.members.iter().filter(|m| m.live).count();
        let _ = writeln!(
            out,
            "Fleet on {} (lease {}): {live} of {} members live",
            self.url,
            humantime::format_duration(self.lease),
            self.members.len()
        );
        if self.members.is_empty() {
            out.push_str("No member has joined yet.\n");
        } else {
            let now = chrono::Utc::now();
            let width = self
                .members
                .iter()
                .map(|m| m.node.len())
                .max()
                .unwrap_or(4)
                .max(4);
            let _ = writeln!(
                out,
                "\n{:<width$}  {:<16}  {:>7}  {:<14}  {:>6}  {:>9}",
                "NODE", "HOST", "PID", "HEARTBEAT", "LEASES", "INCIDENTS"
            );
            for m in self.members {
                let age = (now - m.heartbeat_at).num_milliseconds().max(0) as f64 / 1000.0;
                let beat = if m.live {
                    format!("{age:.1}s ago")
                } else {
                    format!("{age:.0}s ago, gone")
                };
                let _ = writeln!(
                    out,
                    "{:<width$}  {:<16}  {:>7}  {:<14}  {:>6}  {:>9}",
                    m.node,
                    m.host,
                    m.pid,
                    beat,
                    m.leases,
                    self.incidents.get(&m.node).copied().unwrap_or(0)
                );
            }
        }
        let (held, expired) = self.resources();
        let _ = writeln!(
            out,
            "\nShared resources: {held} held, {expired} whose lease expired (taken over at the next round); publisher: {}",
            self.publisher().unwrap_or("none")
        );
        if let Some(n) = self.incidents.get("").filter(|n| **n > 0) {
            let _ = writeln!(out, "Open incidents of shared resources: {n}");
        }
        for s in self.in_flight {
            let _ = writeln!(
                out,
                "In flight under fleet budget {}: {} on {} since {}",
                s.budget,
                s.key,
                s.node,
                s.at.format("%H:%M:%S")
            );
        }
        if list {
            out.push('\n');
            for l in self.leases {
                let _ = writeln!(
                    out,
                    "{}  {}  epoch {}  {}",
                    l.key,
                    l.holder,
                    l.epoch,
                    if l.live { "held" } else { "expired" }
                );
            }
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let (held, expired) = self.resources();
        serde_json::json!({
            "url": self.url,
            "leaseSeconds": self.lease.as_secs_f64(),
            "members": self.members,
            "publisher": self.publisher(),
            "shared": {"held": held, "expired": expired},
            "openIncidents": self.incidents,
            "leases": self.leases,
            "inFlight": self.in_flight,
        })
    }
}
