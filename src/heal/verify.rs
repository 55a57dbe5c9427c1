//! Verification: after a step, the resource and the signals of the problem
//! are read again, one look at a time, until they have held healthy for the
//! step's hold time or its deadline passes (the looks are scheduled by the
//! controller; nothing here waits).

use super::Healer;
use crate::health::{Reading, Status};
use crate::model::Resource;
use crate::provider::Listing;
use crate::vocab::LiveResource;

pub(super) async fn read_live(
    h: &Healer<'_>,
    r: &Resource,
) -> Result<Option<LiveResource>, String> {
    let mut live = h
        .providers
        .inventory(std::slice::from_ref(r), Listing::Declared)
        .await
        .map_err(|e| e.to_string())?;
    Ok(live.remove(&r.key))
}

/// Reads the resource and all of its signals once.
pub(super) async fn read(h: &Healer<'_>, r: &Resource) -> Result<Vec<Reading>, String> {
    let live = read_live(h, r)
        .await
        .map_err(|e| format!("failed to read live state: {e}"))?;
    Ok(h.prober.read(r, live.as_ref()).await)
}

/// What the resource and the signals of the problem say when all of them
/// are healthy, else what is not.
pub(super) fn verdict(readings: &[Reading], symptoms: &[String]) -> Result<String, String> {
    let relevant: Vec<_> = readings
        .iter()
        .filter(|rd| {
            symptoms.contains(&rd.signal) || matches!(rd.signal.as_str(), "liveness" | "status")
        })
        .collect();
    let bad: Vec<String> = relevant
        .iter()
        .filter(|rd| rd.status != Status::Healthy)
        .map(|rd| format!("{} {}: {}", rd.signal, rd.status.as_str(), rd.detail))
        .collect();
    if bad.is_empty() {
        Ok(relevant
            .iter()
            .map(|rd| format!("{} {}", rd.signal, rd.detail))
            .collect::<Vec<_>>()
            .join("; "))
    } else {
        Err(bad.join("; "))
    }
}
