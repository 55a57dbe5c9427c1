//! The incident lifecycle as one pure state machine: every change to an
//! incident is an [`Event`], and [`next`] says where it moves (its status,
//! next step, and its current state and recommended action in words,
//! derived from the typed event) or that the move is illegal. The store
//! only applies what `next` answers, so no call site writes an incident's
//! status or text by hand. No I/O, no clock: the time is passed in.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::model::health::StepAction;
use crate::state::{Diagnosis, IncidentUpdate};
use crate::vocab::{Decision, IncidentStatus, ResourceKey};

/// Something that happened to an incident.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A step was carried out and is verified until `until`.
    StepStarted {
        step: usize,
        action: StepAction,
        until: DateTime<Utc>,
    },
    /// A step held healthy for its hold time.
    StepVerified { step: usize, action: StepAction },
    /// A step waits for a human: its decision was not `auto`.
    StepHeld {
        step: usize,
        action: StepAction,
        decision: Decision,
        runbook: &'a str,
        reasons: &'a [String],
    },
    /// tend stopped before carrying out `step`.
    StoppedBefore { step: usize },
    /// tend stopped while `step` was verified.
    StoppedDuring { step: usize },
    /// A stop of tend cut `step` short (found by a later pass).
    CutShort { step: usize },
    /// The runbook is exhausted: a human must act.
    Exhausted {
        runbook_len: usize,
        cause: &'a str,
        target: &'a ResourceKey,
        tried: &'a [String],
        /// What the signals say now.
        state: &'a str,
    },
    /// The same problem recurs: escalated as it opens; the declared state
    /// is restored with backoff.
    CrashLoop {
        cause: &'a str,
        target: &'a ResourceKey,
        why: &'a str,
        next_attempt: Option<DateTime<Utc>>,
    },
    /// Every signal of the problem is healthy again, without a step.
    Recovered,
    /// A more specific cause was found for an open incident: it takes the
    /// new cause, signature and runbook. `next_step` is where that runbook
    /// goes on (its first step when the runbook changed); `in_flight` when
    /// a step under verification finishes first.
    Diagnosed {
        diagnosis: &'a Diagnosis,
        next_step: usize,
        in_flight: bool,
    },
}

/// Where an incident moves.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub status: IncidentStatus,
    pub next_step: u32,
    /// The resource's current state, in words.
    pub state: String,
    pub recommendation: String,
    /// The incident's new cause, signature and runbook.
    pub diagnosis: Option<Diagnosis>,
}

impl Transition {
    /// What the store writes.
    pub fn update(&self) -> IncidentUpdate<'_> {
        IncidentUpdate {
            status: self.status,
            next_step: self.next_step,
            state: &self.state,
            recommendation: &self.recommendation,
            diagnosis: self.diagnosis.as_ref(),
        }
    }
}

/// A move the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an incident that is {from} cannot move on `{event}`")]
pub struct Illegal {
    pub from: IncidentStatus,
    pub event: &'static str,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::StepStarted { .. } => "step started",
            Event::StepVerified { .. } => "step verified",
            Event::StepHeld { .. } => "step held",
            Event::StoppedBefore { .. } => "stopped before a step",
            Event::StoppedDuring { .. } => "stopped during verification",
            Event::CutShort { .. } => "step cut short",
            Event::Exhausted { .. } => "runbook exhausted",
            Event::CrashLoop { .. } => "crash loop",
            Event::Recovered => "recovered",
            Event::Diagnosed { .. } => "diagnosed",
        }
    }
}

fn n(step: usize) -> u32 {
    u32::try_from(step).unwrap_or(u32::MAX)
}

const CONTINUES: &str = "the next pass reads the signals again and continues the runbook";

/// Where an incident that is `from` moves on `event`. A resolved incident
/// never moves again (a new problem opens a new incident); an escalated
/// one runs no runbook step, and moves only when it recovers (or a stop
/// cut a restore short): a human is on it, and a new diagnosis would not
/// run a step. Only an open incident is diagnosed again.
pub fn next(from: IncidentStatus, event: &Event<'_>) -> Result<Transition, Illegal> {
    use IncidentStatus::{Escalated, Open, Resolved};
    let legal = match (from, event) {
        (Resolved, _) => false,
        (Escalated, Event::Recovered | Event::CutShort { .. }) => true,
        (Escalated, _) => false,
        (Open, _) => true,
    };
    if !legal {
        return Err(Illegal {
            from,
            event: event.name(),
        });
    }
    let t = |status, next_step, state: String, recommendation: String| Transition {
        status,
        next_step,
        state,
        recommendation,
        diagnosis: None,
    };
    Ok(match event {
        Event::StepStarted {
            step,
            action,
            until,
        } => t(
            Open,
            n(*step),
            format!(
                "verifying step {} ({action}) until {}",
                step + 1,
                until.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            "none: tend verifies the step".into(),
        ),
        Event::StepVerified { step, action } => t(
            Resolved,
            n(*step) + 1,
            format!("healthy, verified after step {} ({action})", step + 1),
            "none".into(),
        ),
        Event::StepHeld {
            step,
            action,
            decision,
            runbook,
            reasons,
        } => t(
            Open,
            n(*step),
            format!("unhealthy; step {} ({action}) is held: {decision}", step + 1),
            format!(
                "approve or carry out step {} ({action}) of runbook `{runbook}`: {}",
                step + 1,
                reasons.join("; ")
            ),
        ),
        Event::StoppedBefore { step } => t(
            Open,
            n(*step),
            "unhealthy".into(),
            "tend stopped before this step; the next pass continues".into(),
        ),
        Event::StoppedDuring { step } => t(
            Open,
            n(*step) + 1,
            "unknown: verification was cut short".into(),
            CONTINUES.into(),
        ),
        Event::CutShort { step } => t(
            from,
            n(*step),
            "unknown: the step was cut short".into(),
            CONTINUES.into(),
        ),
        Event::Exhausted {
            runbook_len,
            cause,
            target,
            tried,
            state,
        } => t(
            Escalated,
            n(*runbook_len),
            (*state).to_string(),
            format!(
                "a human should investigate {cause} on {target}: tried {}; when it is fixed, tend resolves the incident on the next healthy pass",
                if tried.is_empty() { "nothing".to_string() } else { tried.join(", ") }
            ),
        ),
        Event::CrashLoop {
            cause,
            target,
            why,
            next_attempt,
        } => t(
            Escalated,
            0,
            format!("unhealthy: {cause}"),
            format!(
                "a human should find why {target} keeps failing ({why}); tend restores the declared state with backoff (next attempt {}) and resolves the incident once it is healthy",
                next_attempt.map_or_else(
                    || "now".to_string(),
                    |t| t.to_rfc3339_opts(SecondsFormat::Secs, true)
                )
            ),
        ),
        Event::Recovered => t(Resolved, 0, "healthy".into(), "none".into()),
        Event::Diagnosed {
            diagnosis,
            next_step,
            in_flight,
        } => {
            let runbook = diagnosis.runbook.as_deref().unwrap_or("built-in");
            let named = diagnosis
                .signature
                .as_deref()
                .map_or_else(String::new, |s| format!("`{s}`: "));
            Transition {
                diagnosis: Some((*diagnosis).clone()),
                ..t(
                    Open,
                    n(*next_step),
                    format!("unhealthy; diagnosed as {named}{}", diagnosis.cause),
                    if *in_flight {
                        format!(
                            "none: tend verifies the step in flight, then goes on with runbook `{runbook}`"
                        )
                    } else {
                        format!(
                            "none: tend goes on with step {} of runbook `{runbook}`",
                            next_step + 1
                        )
                    },
                )
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use IncidentStatus::{Escalated, Open, Resolved};

    /// Every event from every status: the status it moves to, or `None`
    /// when the move is illegal.
    #[test]
    fn transitions_table() {
        let key = ResourceKey::new(Kind::HostProcess, "web");
        let until = DateTime::parse_from_rfc3339("2026-12-03T12:00:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let reasons = vec!["policy asks for review".to_string()];
        let tried = vec!["restart (not-verified)".to_string()];
        let diagnosis = Diagnosis {
            cause: "the service is failing requests".into(),
            signature: Some("error-storm".into()),
            why: None,
            runbook: Some("restart-then-escalate".into()),
            severity: crate::model::health::Severity::Warning,
            symptoms: serde_json::json!([]),
        };
        let events = [
            Event::StepStarted {
                step: 1,
                action: StepAction::Restart,
                until,
            },
            Event::StepVerified {
                step: 1,
                action: StepAction::Restart,
            },
            Event::StepHeld {
                step: 0,
                action: StepAction::Replace,
                decision: Decision::Review,
                runbook: "rb",
                reasons: &reasons,
            },
            Event::StoppedBefore { step: 1 },
            Event::StoppedDuring { step: 1 },
            Event::CutShort { step: 1 },
            Event::Exhausted {
                runbook_len: 3,
                cause: "dead",
                target: &key,
                tried: &tried,
                state: "unhealthy: liveness",
            },
            Event::CrashLoop {
                cause: "dead",
                target: &key,
                why: "crash loop",
                next_attempt: None,
            },
            Event::Recovered,
            Event::Diagnosed {
                diagnosis: &diagnosis,
                next_step: 0,
                in_flight: true,
            },
        ];
        // (from, event index) → (to, next step), or illegal.
        type Row = (IncidentStatus, usize, Option<(IncidentStatus, u32)>);
        let table: &[Row] = &[
            (Open, 0, Some((Open, 1))),
            (Open, 1, Some((Resolved, 2))),
            (Open, 2, Some((Open, 0))),
            (Open, 3, Some((Open, 1))),
            (Open, 4, Some((Open, 2))),
            (Open, 5, Some((Open, 1))),
            (Open, 6, Some((Escalated, 3))),
            (Open, 7, Some((Escalated, 0))),
            (Open, 8, Some((Resolved, 0))),
            (Open, 9, Some((Open, 0))),
            (Escalated, 0, None),
            (Escalated, 1, None),
            (Escalated, 2, None),
            (Escalated, 3, None),
            (Escalated, 4, None),
            (Escalated, 5, Some((Escalated, 1))),
            (Escalated, 6, None),
            (Escalated, 7, None),
            (Escalated, 8, Some((Resolved, 0))),
            (Escalated, 9, None),
        ];
        for (from, i, want) in table {
            let got = next(*from, &events[*i])
                .ok()
                .map(|t| (t.status, t.next_step));
            assert_eq!(got, *want, "{from} on {:?}", events[*i]);
        }
        for e in &events {
            assert!(
                next(Resolved, e).is_err(),
                "a resolved incident never moves: {e:?}"
            );
        }
    }

    #[test]
    fn the_words_come_from_the_typed_state() {
        let reasons = vec!["maintenance window".to_string()];
        let t = next(
            Open,
            &Event::StepHeld {
                step: 1,
                action: StepAction::Replace,
                decision: Decision::Review,
                runbook: "restart-then-replace",
                reasons: &reasons,
            },
        )
        .unwrap();
        assert_eq!(t.state, "unhealthy; step 2 (replace) is held: review");
        assert_eq!(
            t.recommendation,
            "approve or carry out step 2 (replace) of runbook `restart-then-replace`: maintenance window"
        );
        let diagnosis = Diagnosis {
            cause: "the service is failing requests".into(),
            signature: Some("error-storm".into()),
            why: None,
            runbook: Some("restart-then-escalate".into()),
            severity: crate::model::health::Severity::Warning,
            symptoms: serde_json::json!([]),
        };
        let t = next(
            Open,
            &Event::Diagnosed {
                diagnosis: &diagnosis,
                next_step: 0,
                in_flight: true,
            },
        )
        .unwrap();
        assert_eq!(
            t.state,
            "unhealthy; diagnosed as `error-storm`: the service is failing requests"
        );
        assert_eq!(
            t.recommendation,
            "none: tend verifies the step in flight, then goes on with runbook `restart-then-escalate`"
        );
        assert_eq!(t.update().diagnosis, Some(&diagnosis));
        let err = next(Resolved, &Event::Recovered).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an incident that is resolved cannot move on `recovered`"
        );
    }
}
