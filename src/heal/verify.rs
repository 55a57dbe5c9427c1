//! Verification: after a step, the resource and the signals of the problem
//! are read again until they converge or the step's deadline passes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Healer;
use crate::health::Status;
use crate::model::health::Step;
use crate::model::Resource;
use crate::provider::Listing;
use crate::vocab::LiveResource;

/// How often verification re-reads the resource and its signals.
const POLL: Duration = Duration::from_millis(250);

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

/// Re-reads the resource and the signals of the problem until they have
/// all been healthy for the step's hold time, or the deadline passes.
pub(super) async fn verify(
    h: &Healer<'_>,
    r: &Resource,
    symptoms: &[String],
    step: &Step,
) -> Result<String, String> {
    let deadline = Instant::now() + step.within();
    let mut healthy_since: Option<Instant> = None;
    let mut last: String;
    loop {
        match read_live(h, r).await {
            Err(e) => {
                healthy_since = None;
                last = format!("failed to read live state: {e}");
            }
            Ok(live) => {
                let readings = h.prober.read(r, live.as_ref()).await;
                let relevant: Vec<_> = readings
                    .iter()
                    .filter(|rd| {
                        symptoms.contains(&rd.signal)
                            || matches!(rd.signal.as_str(), "liveness" | "status")
                    })
                    .collect();
                let bad: Vec<String> = relevant
                    .iter()
                    .filter(|rd| rd.status != Status::Healthy)
                    .map(|rd| format!("{} {}: {}", rd.signal, rd.status.as_str(), rd.detail))
                    .collect();
                if bad.is_empty() {
                    let since = *healthy_since.get_or_insert_with(Instant::now);
                    last = relevant
                        .iter()
                        .map(|rd| format!("{} {}", rd.signal, rd.detail))
                        .collect::<Vec<_>>()
                        .join("; ");
                    if since.elapsed() >= step.hold() {
                        return Ok(last);
                    }
                } else {
                    healthy_since = None;
                    last = bad.join("; ");
                }
            }
        }
        if Instant::now() >= deadline || h.stop.load(Ordering::SeqCst) {
            return Err(last);
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
