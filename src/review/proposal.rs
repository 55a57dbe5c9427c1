//! What to ask a human, as data: one proposal per resource with `review`
//! actions, the hidden markers that tie a pull request or an issue to what
//! it proposes, and the approval document a merge adds. Pure: no I/O.

use chrono::{DateTime, Utc};

use crate::model::Approval;
use crate::plan::Plan;
use crate::vocab::{change_fingerprint, Action, Decision, ResourceKey};

/// A resource's pending review.
#[derive(Debug, Clone)]
pub struct Proposal<'a> {
    pub key: ResourceKey,
    pub fingerprint: String,
    pub actions: Vec<&'a Action>,
}

impl Proposal<'_> {
    pub fn branch(&self) -> String {
        branch_of(&self.key)
    }
}

pub const BRANCH_PREFIX: &str = "tend/review/";

pub fn branch_of(key: &ResourceKey) -> String {
    format!("{BRANCH_PREFIX}{}/{}", key.kind, key.name)
}

/// The proposals of a plan, in resource order.
pub fn proposals(plan: &Plan) -> Vec<Proposal<'_>> {
    let mut by_key: std::collections::BTreeMap<&ResourceKey, Vec<&Action>> = Default::default();
    for a in plan
        .actions
        .iter()
        .filter(|a| a.decision == Decision::Review)
    {
        by_key.entry(&a.target).or_default().push(a);
    }
    by_key
        .into_iter()
        .map(|(key, actions)| Proposal {
            key: key.clone(),
            fingerprint: change_fingerprint(actions.iter().map(|a| a.fingerprint.as_str())),
            actions,
        })
        .collect()
}

/// What a pull request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Merge to approve the change.
    Approve,
    /// Merge to write the live values into Git.
    KeepLive,
}

impl Ask {
    pub fn as_str(self) -> &'static str {
        match self {
            Ask::Approve => "approve",
            Ask::KeepLive => "keep-live",
        }
    }
}

/// The hidden marker of a pull request tend opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub key: String,
    pub fingerprint: String,
    pub ask: Ask,
    /// tend closed it itself because the change was gone: not a human's
    /// "no".
    pub withdrawn: bool,
}

/// The body of a pull request tend closes itself, marked so that closing
/// is not read as a human declining the change.
pub fn withdrawn_body(body: &str) -> String {
    body.replacen("<!-- tend:review ", "<!-- tend:review withdrawn=yes ", 1)
}

pub fn marker(key: &ResourceKey, fingerprint: &str, ask: Ask) -> String {
    format!(
        "<!-- tend:review key={key} fingerprint={fingerprint} ask={} -->",
        ask.as_str()
    )
}

/// Reads the marker of a pull request body, if it is tend's.
pub fn parse_marker(body: &str) -> Option<Marker> {
    let start = body.find("<!-- tend:review ")?;
    let rest = &body[start + "<!-- tend:review ".len()..];
    let inner = &rest[..rest.find("-->")?];
    let field = |name: &str| {
        inner
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    Some(Marker {
        key: field("key")?,
        fingerprint: field("fingerprint")?,
        ask: match field("ask").as_deref() {
            Some("keep-live") => Ask::KeepLive,
            _ => Ask::Approve,
        },
        withdrawn: field("withdrawn").is_some(),
    })
}

/// The checkbox a reviewer ticks to keep the live value instead.
pub const KEEP_LIVE_BOX: &str = crate::report::review::KEEP_LIVE_LABEL;

/// Whether the keep-live box is ticked in a body: read only from the last
/// line that carries the box's marker (tend writes the box at the end of
/// the body, after the plan that quotes drifted content).
pub fn keep_live_ticked(body: &str) -> bool {
    let marker = crate::report::review::KEEP_LIVE_MARKER;
    body.lines()
        .rev()
        .find(|l| l.trim_end().ends_with(marker))
        .is_some_and(|l| {
            let l = l.trim_start();
            (l.starts_with("- [x] ") || l.starts_with("- [X] ")) && l.contains(KEEP_LIVE_BOX)
        })
}

/// Where tend proposes reverting a held resource's declaration.
pub const REVERT_PREFIX: &str = "tend/revert/";

pub fn revert_branch(key: &ResourceKey) -> String {
    format!("{REVERT_PREFIX}{}/{}", key.kind, key.name)
}

/// The hidden marker of a revert pull request: the resource and the
/// fingerprint of the failed spec it reverts.
pub fn revert_marker(key: &ResourceKey, fingerprint: &str) -> String {
    format!("<!-- tend:revert key={key} fingerprint={fingerprint} -->")
}

/// The fingerprint a revert pull request's body names, and whether tend
/// closed it itself.
pub fn parse_revert_marker(body: &str) -> Option<(String, bool)> {
    let start = body.find("<!-- tend:revert ")?;
    let rest = &body[start + "<!-- tend:revert ".len()..];
    let inner = &rest[..rest.find("-->")?];
    let fingerprint = inner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fingerprint="))?;
    Some((fingerprint.to_string(), inner.contains("withdrawn=yes")))
}

/// The body of a revert pull request tend closes itself.
pub fn withdrawn_revert_body(body: &str) -> String {
    body.replacen("<!-- tend:revert ", "<!-- tend:revert withdrawn=yes ", 1)
}

/// The marker of an incident's issue.
pub fn incident_marker(id: i64) -> String {
    format!("<!-- tend:incident id={id} -->")
}

pub fn parse_incident_marker(body: &str) -> Option<i64> {
    let start = body.find("<!-- tend:incident id=")?;
    let rest = &body[start + "<!-- tend:incident id=".len()..];
    rest[..rest.find(' ')?].parse().ok()
}

/// The marker of the one status comment tend keeps on a pull request or
/// issue.
pub const STATUS_MARKER: &str = "<!-- tend:status -->";

pub use crate::model::approval_path;

/// The approval document a merge adds.
pub fn approval_document(key: &ResourceKey, fingerprint: &str, expires: DateTime<Utc>) -> String {
    // Every value quoted: a name such as `123` or `null` stays a string.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let name = format!("{}.{}", key.kind.as_str().to_ascii_lowercase(), key.name);
    format!(
        "# Added by tend's pull request: merging it approves exactly this change, once.\n\
         apiVersion: tend.dev/v1\n\
         kind: Approval\n\
         metadata:\n  name: {}\n\
         spec:\n  target:\n    kind: {}\n    name: {}\n  fingerprint: {}\n  expires: {}\n",
        q(&name),
        q(key.kind.as_str()),
        q(&key.name),
        q(fingerprint),
        q(&expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    )
}

/// Whether a file holds nothing but approval `a`: then removing the file
/// removes only that approval.
pub fn only_this_approval(text: &str, a: &Approval) -> bool {
    let Ok(docs) = crate::model::yaml::parse_values(text) else {
        return false;
    };
    let expires = crate::policy::approve::expiry(a);
    !docs.is_empty()
        && docs.iter().all(|(d, _)| {
            d["kind"] == "Approval"
                && d["spec"]["fingerprint"] == a.fingerprint.as_str()
                && d["spec"]["target"]["kind"] == a.target.kind.as_str()
                && d["spec"]["target"]["name"] == a.target.name.as_str()
                && d["spec"]["expires"]
                    .as_str()
                    .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
                    .map(|e| chrono::SubsecRound::trunc_subsecs(e.with_timezone(&Utc), 3))
                    == Some(expires)
        })
}

/// Approvals a new commit removes: used ones and expired ones.
pub fn stale_approvals<'a>(
    approvals: &'a [Approval],
    used: &std::collections::HashSet<(ResourceKey, String, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Vec<&'a Approval> {
    approvals
        .iter()
        .filter(|a| a.expires <= now || used.contains(&crate::policy::approve::used_key(a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::review::{
        pull_request_body, PullRequestView, KEEP_LIVE_LABEL, KEEP_LIVE_MARKER,
    };
    use crate::vocab::{Action, ActionType, Decision, FieldChange, Risk};

    fn body_with_live(live: &str, keep_live: bool) -> String {
        let action = Action {
            fingerprint: "f".into(),
            action_type: ActionType::Update,
            target: ResourceKey::new(Kind::HostFile, "motd"),
            changes: vec![FieldChange {
                path: "/spec/content".into(),
                from: live.into(),
                to: "hello\n".into(),
            }],
            risk: Risk::Low,
            reversible: true,
            decision: Decision::Review,
            reasons: vec![],
            note: None,
            contested: false,
            declared_at: None,
            incident: None,
            approval: None,
            rollback: None,
            change: None,
        };
        let key = ResourceKey::new(Kind::HostFile, "motd");
        pull_request_body(&PullRequestView {
            key: &key,
            marker: "<!-- tend:proposal -->",
            fingerprint: "f",
            actions: &[&action],
            incident: None,
            approval_path: "approvals/host.File/motd.yaml",
            expires: "2026-12-10T00:00:00Z",
            declared: None,
            commit: None,
            keep_live,
            keep_live_offer: Ok(()),
            nodes: None,
        })
    }

    /// Regression (H2): a live line ` [x] keep the live value in Git
    /// instead` rendered as `- [x] …` in the plan's diff counted as the
    /// ticked box, so drifted content chose to write itself into Git.
    #[test]
    fn h2_drifted_content_cannot_tick_keep_live() {
        for injected in [
            format!("hello\n [x] {KEEP_LIVE_LABEL}\nattacker\n"),
            format!("hello\n [x] {KEEP_LIVE_LABEL} {KEEP_LIVE_MARKER}\nattacker\n"),
            format!("hello\n```\n- [x] {KEEP_LIVE_LABEL} {KEEP_LIVE_MARKER}\n```\n"),
        ] {
            let body = body_with_live(&injected, false);
            assert!(
                !keep_live_ticked(&body),
                "ticked by drifted content:\n{body}"
            );
        }
        let ticked = body_with_live("x\n", false).replace(
            &format!("- [ ] {KEEP_LIVE_LABEL} {KEEP_LIVE_MARKER}"),
            &format!("- [x] {KEEP_LIVE_LABEL} {KEEP_LIVE_MARKER}"),
        );
        assert!(keep_live_ticked(&ticked), "a human's tick counts");
        assert!(keep_live_ticked(&body_with_live("x\n", true)));
    }

    /// Drifted content cannot close the plan's code fence and put text of
    /// its own into the body's Markdown.
    #[test]
    fn drifted_content_cannot_close_the_diff_fence() {
        let body = body_with_live("a\n```\n````\nb\n", false);
        let fence = body
            .lines()
            .find(|l| l.starts_with("```") && l.ends_with("diff"))
            .unwrap();
        let ticks = fence.trim_end_matches("diff").len();
        assert!(ticks > 4, "{body}");
    }

    use crate::model::Kind;

    #[test]
    fn markers_read_back() {
        let key = ResourceKey::new(Kind::HostFile, "motd");
        let m = marker(&key, "0123456789abcdef", Ask::KeepLive);
        let body = format!("{m}\n## tend\n");
        assert_eq!(
            parse_marker(&body),
            Some(Marker {
                key: "host.File/motd".into(),
                fingerprint: "0123456789abcdef".into(),
                ask: Ask::KeepLive,
                withdrawn: false,
            })
        );
        assert!(parse_marker(&withdrawn_body(&body)).unwrap().withdrawn);
        assert_eq!(parse_marker("a human's pull request"), None);
        assert_eq!(parse_incident_marker(&incident_marker(42)), Some(42));
    }

    #[test]
    fn the_keep_live_box_is_read_only_when_ticked() {
        let m = crate::report::review::KEEP_LIVE_MARKER;
        assert!(!keep_live_ticked(&format!("- [ ] {KEEP_LIVE_BOX} {m}")));
        assert!(keep_live_ticked(&format!(
            "text\n- [x] {KEEP_LIVE_BOX} {m}\n"
        )));
        assert!(keep_live_ticked(&format!("- [X] **{KEEP_LIVE_BOX}** {m}")));
        assert!(
            !keep_live_ticked(&format!("- [x] {KEEP_LIVE_BOX}")),
            "only the box tend wrote, with its marker"
        );
    }

    #[test]
    fn the_approval_document_is_valid_desired_state() {
        let key = ResourceKey::new(Kind::HostProcess, "sample-app");
        let expires = Utc::now() + chrono::Duration::days(7);
        let text = approval_document(&key, "0123456789abcdef", expires);
        let files = [crate::model::SourceFile {
            path: "approvals/host.Process/sample-app.yaml".into(),
            text,
        }];
        let desired = crate::model::load(&files).unwrap();
        assert_eq!(desired.approvals.len(), 1);
        assert_eq!(desired.approvals[0].target, key);
        assert_eq!(desired.approvals[0].fingerprint, "0123456789abcdef");
        assert!(only_this_approval(&files[0].text, &desired.approvals[0]));
        let shared = format!(
            "{}---\napiVersion: tend.dev/v1\nkind: host.File\nmetadata: {{name: x}}\nspec: {{path: x}}\n",
            files[0].text
        );
        assert!(
            !only_this_approval(&shared, &desired.approvals[0]),
            "a file that declares more stays"
        );
    }

    /// Regression (M2): an approval is accepted only from its own file
    /// under `approvals/`, which CODEOWNERS guards; in any other file it
    /// is an error located at the document.
    #[test]
    fn m2_an_approval_outside_its_file_is_refused() {
        let key = ResourceKey::new(Kind::HostFile, "motd");
        let text = approval_document(&key, "0123456789abcdef", Utc::now());
        for path in [
            "web.yaml",
            "approvals/host.File/other.yaml",
            "team/approvals/host.File/motd.yaml",
        ] {
            let files = [crate::model::SourceFile {
                path: path.into(),
                text: text.clone(),
            }];
            let err = crate::model::load(&files).unwrap_err();
            let d = &err.diagnostics[0];
            assert_eq!(&*d.file, path);
            assert!(
                d.message
                    .contains("must be the file approvals/host.File/motd.yaml"),
                "{}",
                d.message
            );
        }
    }

    #[test]
    fn a_numeric_or_null_name_stays_a_string_in_the_approval() {
        for name in ["123", "null", "true"] {
            let key = ResourceKey::new(Kind::HostFile, name);
            let text = approval_document(&key, "0123456789abcdef", Utc::now());
            let files = [crate::model::SourceFile {
                path: approval_path(&key),
                text,
            }];
            let desired = crate::model::load(&files).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(desired.approvals[0].target.name, name);
        }
    }
}
