//! Review: asking a human through GitHub, after a pass.
//!
//! Every resource with `review` actions gets one pull request on branch
//! `tend/review/<kind>/<name>`, whose commit adds an `Approval` document:
//! merging it approves exactly that change, once (`policy::approve`). A
//! ticked "keep the live value" box turns the commit into an in-place edit
//! of the declaration to the live values (`model::edit`). Escalated
//! incidents get one issue each. Everything is written through GitHub's
//! API (blobs, trees, commits, refs), so no clone or push credentials are
//! needed.
//!
//! Quiet by construction: an unchanged proposal writes nothing; a changed
//! one updates its pull request in place and edits one status comment; a
//! change that is gone closes its pull request only after a full pass (a
//! complete inventory). A pull request a human closed unmerged declines
//! that fingerprint. This stage runs from `publish`, after a pass, so a
//! failure here never changes what the pass did; it must never write a
//! secret. See ARCHITECTURE.md.

pub mod github;
pub mod proposal;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::model::{Approval, GithubReview};
use crate::plan::Plan;
use crate::publish::{PublishError, Published, Sink};
use crate::report::review as text;
use crate::state::{
    Incident, ProposalRow, ProposalState, ReviewEvent, ReviewOperation, ReviewOutcome, StateError,
    Store,
};
use crate::vocab::{ActionType, IncidentStatus, ResourceKey, Secrets};
use github::{enc, query, Client, GitHubError, Method};
use proposal::{Ask, Proposal};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(
        "Settings spec.review.github is set, but neither TEND_GITHUB_TOKEN nor GITHUB_TOKEN is"
    )]
    NoToken,
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    #[error("failed to record the review: {0}")]
    State(#[from] StateError),
    #[error("failed to edit the declaration: {0}")]
    Edit(String),
}

/// Where the files of the desired state live in the repository.
#[derive(Debug, Clone, Default)]
pub struct RepoPaths {
    /// The prefix of shown file paths that is not part of the repository
    /// (a local directory source's path).
    pub strip: String,
    /// What the stripped paths are under in the repository.
    pub under: String,
    /// The directory of the desired state inside the repository, where
    /// approvals go.
    pub desired: String,
}

impl RepoPaths {
    /// The repository path of a file as the source shows it.
    pub fn of(&self, shown: &str) -> String {
        let rel = if self.strip.is_empty() {
            Path::new(shown)
        } else {
            Path::new(shown)
                .strip_prefix(&self.strip)
                .unwrap_or(Path::new(shown))
        };
        under(&self.under, &rel.to_string_lossy())
    }

    /// A path in the desired-state directory (an approval's).
    pub fn join(&self, rel: &str) -> String {
        under(&self.desired, rel)
    }
}

fn under(dir: &str, rel: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() || dir == "." {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    }
}

/// Where a pass's desired state came from, for its paths in the repository.
#[derive(Debug, Clone)]
pub enum SourcePaths {
    /// A local directory: its files are shown under the directory's path,
    /// and sit under `Settings spec.review.github.path` in the repository.
    Dir(String),
    /// A Git source: its files are shown with their repository paths; the
    /// desired state is under `--path`.
    Git(Option<String>),
}

/// What one publication did, for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub opened: usize,
    pub updated: usize,
    pub closed: usize,
    pub unchanged: usize,
    pub waiting: usize,
    pub declined: usize,
    pub issues_opened: usize,
    pub issues_updated: usize,
    pub issues_closed: usize,
}

pub use crate::report::review::Nodes;

/// What a pass hands to review.
pub struct Input<'a> {
    pub plan: &'a Plan,
    /// In a fleet, the nodes that found each proposal, by resource.
    pub nodes: &'a HashMap<ResourceKey, Nodes>,
    pub incidents: &'a [Incident],
    pub approvals: &'a [Approval],
    pub secrets: &'a Secrets,
    /// A full pass: every declared resource was inventoried, so a
    /// proposal that is gone may be closed.
    pub full: bool,
}

/// A pull request as GitHub reports it.
#[derive(Debug, Clone)]
struct Pull {
    number: i64,
    body: String,
    head_ref: String,
    /// The repository the head branch is in (a fork's, for a fork's).
    head_repo: String,
    url: String,
    merged: bool,
    /// The commit at the head of its branch.
    head_sha: String,
    /// Who opened it.
    author: String,
}

impl Pull {
    fn of(v: &Value) -> Pull {
        Pull {
            number: v["number"].as_i64().unwrap_or(0),
            body: v["body"].as_str().unwrap_or("").to_string(),
            head_ref: v["head"]["ref"].as_str().unwrap_or("").to_string(),
            head_sha: v["head"]["sha"].as_str().unwrap_or("").to_string(),
            author: v["user"]["login"].as_str().unwrap_or("").to_string(),
            head_repo: v["head"]["repo"]["full_name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            url: v["html_url"].as_str().unwrap_or("").to_string(),
            merged: !v["merged_at"].is_null(),
        }
    }
}

/// The base branch as this pass found it.
struct Base {
    branch: String,
    sha: String,
    tree: String,
    /// The expiry of every approval this publication proposes: the one
    /// the commit carries and the body shows.
    expires: DateTime<Utc>,
}

const AUTHOR: &str = "tend";
const AUTHOR_EMAIL: &str = "tend@users.noreply.github.com";
/// The trailer on every commit tend makes: a branch whose commits all
/// carry it may be deleted.
const TRAILER: &str = "Proposed-by: tend";

pub struct Reviewer {
    client: Client,
    cfg: GithubReview,
    store: Box<dyn Store>,
    paths: RepoPaths,
    /// The secrets of the publication under way: scrubbed from the review
    /// log too.
    secrets: std::sync::RwLock<Secrets>,
}

/// The token for GitHub: `TEND_GITHUB_TOKEN`, else `GITHUB_TOKEN`.
pub fn token_from_env() -> Option<String> {
    ["TEND_GITHUB_TOKEN", "GITHUB_TOKEN"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|t| !t.trim().is_empty())
}

impl Reviewer {
    pub fn new(
        cfg: &GithubReview,
        token: &str,
        store: Box<dyn Store>,
        paths: RepoPaths,
    ) -> Result<Reviewer, ReviewError> {
        Ok(Reviewer {
            client: Client::new(&cfg.api_url, &cfg.repository, token)?,
            cfg: cfg.clone(),
            store,
            paths,
            secrets: std::sync::RwLock::new(Secrets::default()),
        })
    }

    /// Brings pull requests and issues in line with what the pass found.
    pub async fn publish(&self, input: &Input<'_>) -> Result<Summary, ReviewError> {
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = input.secrets.clone();
        let mut summary = Summary::default();
        let mut failed = None;
        let proposals = proposal::proposals(input.plan);
        let mut rows = Vec::new();
        let open = if proposals.is_empty() && !input.full {
            BTreeMap::new()
        } else {
            self.open_pulls().await?
        };
        if !proposals.is_empty() || !open.is_empty() {
            let base = self.base().await?;
            let used: HashSet<(ResourceKey, String, DateTime<Utc>)> = self
                .store
                .used_approvals()?
                .into_iter()
                .map(|u| (u.key, u.fingerprint, u.expires))
                .collect();
            let stale = proposal::stale_approvals(input.approvals, &used, Utc::now());
            let heads: HashMap<ResourceKey, String> = self
                .store
                .proposals()?
                .into_iter()
                .filter_map(|r| Some((r.key, r.head?)))
                .collect();
            let mut budget = Budget {
                open: open.len(),
                new: 0,
            };
            for p in &proposals {
                let pr = open.get(&p.branch());
                let ctx = Ctx {
                    base: &base,
                    input,
                    stale: &stale,
                    used: &used,
                    heads: &heads,
                };
                // One proposal GitHub refuses does not hold back the others,
                // unless what it refused holds for every one.
                match self.propose(p, pr, &ctx, &mut budget, &mut summary).await {
                    Ok(row) => rows.push(row),
                    Err(
                        e @ ReviewError::GitHub(
                            GitHubError::ActionsNotPermitted { .. }
                            | GitHubError::RateLimited { .. }
                            | GitHubError::Transport { .. },
                        ),
                    ) => return Err(e),
                    Err(e) => {
                        tracing::warn!(resource = %p.key, error = %e, "Proposing failed.");
                        failed.get_or_insert(e);
                    }
                }
            }
            if input.full {
                // A resource that still has any action (denied, deferred,
                // observed) keeps its pull request: only a change that is
                // gone is withdrawn.
                let wanted: HashSet<String> = input
                    .plan
                    .actions
                    .iter()
                    .map(|a| proposal::branch_of(&a.target))
                    .collect();
                let head_of: HashMap<String, &String> = heads
                    .iter()
                    .map(|(k, h)| (proposal::branch_of(k), h))
                    .collect();
                for pr in open.values().filter(|pr| !wanted.contains(&pr.head_ref)) {
                    let recorded = head_of.get(&pr.head_ref).copied();
                    self.withdraw(pr, recorded, input.secrets).await?;
                    summary.closed += 1;
                }
            }
        }
        let reverts = match self.reverts(input, &mut summary).await {
            Ok(links) => links,
            Err(
                e @ ReviewError::GitHub(
                    GitHubError::ActionsNotPermitted { .. }
                    | GitHubError::RateLimited { .. }
                    | GitHubError::Transport { .. },
                ),
            ) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "Proposing a revert failed.");
                failed.get_or_insert(e);
                HashMap::new()
            }
        };
        self.incidents(input, &reverts, &mut summary).await?;
        if input.full {
            self.store.save_proposals(&rows)?;
        } else {
            let mut all = self.store.proposals()?;
            for r in rows {
                all.retain(|o| o.key != r.key);
                all.push(r);
            }
            self.store.save_proposals(&all)?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    async fn base(&self) -> Result<Base, ReviewError> {
        let branch = match &self.cfg.base_branch {
            Some(b) => b.clone(),
            None => {
                let repo = self
                    .read("read the repository", &self.client.path(""))
                    .await?;
                repo["default_branch"]
                    .as_str()
                    .unwrap_or("main")
                    .to_string()
            }
        };
        let r = self
            .read(
                "read the base branch",
                &self
                    .client
                    .path(&format!("/git/ref/{}", enc(&format!("heads/{branch}")))),
            )
            .await?;
        let sha = r["object"]["sha"].as_str().unwrap_or_default().to_string();
        let c = self
            .read(
                "read the base commit",
                &self.client.path(&format!("/git/commits/{}", enc(&sha))),
            )
            .await?;
        Ok(Base {
            branch,
            sha,
            tree: c["tree"]["sha"].as_str().unwrap_or_default().to_string(),
            expires: self.expires(),
        })
    }

    /// tend's open pull requests, by branch.
    async fn open_pulls(&self) -> Result<BTreeMap<String, Pull>, ReviewError> {
        self.open_pulls_of(proposal::BRANCH_PREFIX, &|b| {
            proposal::parse_marker(b).is_some()
        })
        .await
    }

    /// tend's open pull requests whose branch starts with `prefix` and
    /// whose body carries the marker `marked` reads, by branch.
    async fn open_pulls_of(
        &self,
        prefix: &str,
        marked: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<BTreeMap<String, Pull>, ReviewError> {
        let login = self.client.login().await?.to_string();
        let mut out = BTreeMap::new();
        for page in 1..=50 {
            let list = self
                .read(
                    "list pull requests",
                    &self.client.path(&format!(
                        "/pulls{}",
                        query(&[
                            ("state", "open"),
                            ("per_page", "100"),
                            ("page", &page.to_string())
                        ])
                    )),
                )
                .await?;
            let items = list.as_array().cloned().unwrap_or_default();
            for v in &items {
                let pr = Pull::of(v);
                // tend's own: its branch in this repository (a fork's pull
                // request can copy the branch name and the marker).
                // request can copy the branch name and the marker), opened
                // by tend (anyone who can push can open one from it).
                if pr.head_ref.starts_with(prefix)
                    && pr.head_repo.eq_ignore_ascii_case(&self.client.full_name())
                    && pr.author == login
                    && marked(&pr.body)
                {
                    out.insert(pr.head_ref.clone(), pr);
                }
            }
            if items.len() < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// Pull requests of one branch that are closed.
    async fn closed_pulls(&self, branch: &str) -> Result<Vec<Pull>, ReviewError> {
        let head = format!("{}:{branch}", self.client.owner);
        let list = self
            .read(
                "list closed pull requests",
                &self.client.path(&format!(
                    "/pulls{}",
                    query(&[("state", "closed"), ("head", &head), ("per_page", "100")])
                )),
            )
            .await?;
        Ok(list
            .as_array()
            .map(|a| a.iter().map(Pull::of).collect())
            .unwrap_or_default())
    }

    async fn propose(
        &self,
        p: &Proposal<'_>,
        pr: Option<&Pull>,
        ctx: &Ctx<'_>,
        budget: &mut Budget,
        summary: &mut Summary,
    ) -> Result<ProposalRow, ReviewError> {
        let (base, input, stale) = (ctx.base, ctx.input, ctx.stale);
        let offer = keep_live_offer(&p.actions);
        let ticked = pr.is_some_and(|pr| proposal::keep_live_ticked(&pr.body));
        let mut ask = if ticked && offer.is_ok() {
            Ask::KeepLive
        } else {
            Ask::Approve
        };
        let row = |state: ProposalState, pr: Option<&Pull>| ProposalRow {
            key: p.key.clone(),
            fingerprint: p.fingerprint.clone(),
            number: pr.map(|pr| pr.number),
            url: pr.map(|pr| pr.url.clone()),
            state,
            updated_at: Utc::now(),
            head: pr.map(|pr| pr.head_sha.clone()).filter(|h| !h.is_empty()),
        };
        let Some(pr) = pr else {
            return self
                .open_new(p, ctx, budget, summary, offer)
                .await
                .map(|made| match made {
                    Made::Opened(pr) => row(ProposalState::Open, Some(&pr)),
                    Made::Declined(pr) => row(ProposalState::Declined, Some(&pr)),
                    Made::Merged(pr) => row(ProposalState::Merged, Some(&pr)),
                    Made::Waiting => row(ProposalState::Waiting, None),
                    Made::Blocked => row(ProposalState::Blocked, None),
                });
        };
        let was = proposal::parse_marker(&pr.body);
        let same = |ask: Ask| {
            was.as_ref()
                .is_some_and(|m| m.fingerprint == p.fingerprint && m.ask == ask)
        };
        // Someone else pushed to tend's branch: its head is not the commit
        // tend last put there (or, with no record of it, a commit on it is
        // not tend's). Checked on every pass, whatever the fingerprint: the
        // pull request must never merge more than it says.
        let recorded = ctx.heads.get(&p.key);
        let foreign = match recorded {
            Some(head) => *head != pr.head_sha,
            None => !self.pull_is_tends(pr.number).await?,
        };
        if foreign {
            let status = format!(
                "This branch has commits that are not tend's, so tend does not overwrite them, and merging it approves nothing tend proposed. The pending change is now `{}`: close this pull request to let tend propose it anew.",
                p.fingerprint
            );
            self.status(pr.number, &status, input.secrets).await?;
            summary.unchanged += 1;
            return Ok(ProposalRow {
                head: recorded.cloned(),
                ..row(ProposalState::Blocked, Some(pr))
            });
        }
        if same(ask) {
            // The same change; in a fleet, the nodes that found it may
            // have changed: then only the body is brought up to date.
            let nodes_moved = input
                .nodes
                .get(&p.key)
                .is_some_and(|n| !pr.body.contains(&text::nodes_line(n)));
            if let Some(n) = input.nodes.get(&p.key).filter(|_| nodes_moved) {
                // The rest of the body (the approval's expiry with it)
                // stays as the branch has it.
                let body = input.secrets.scrub(&text::with_nodes_line(&pr.body, n));
                self.write(
                    ReviewOperation::UpdatePullRequest,
                    &p.key.to_string(),
                    Some(pr.number),
                    Method::Patch,
                    &self.client.path(&format!("/pulls/{}", pr.number)),
                    &json!({"body": body}),
                )
                .await?;
                summary.updated += 1;
            } else {
                summary.unchanged += 1;
            }
            return Ok(row(state_of(ask), Some(pr)));
        }
        let mut note = None;
        let sha = match self.commit(p, ask, base, input, stale).await {
            Ok(sha) => sha,
            Err(Refusal::Edit(why)) => {
                // The box is ticked but the edit cannot be made: say why
                // once, and keep proposing the approval.
                ask = Ask::Approve;
                note = Some(format!(
                    "⚠️ The live value cannot be kept in Git: {why}. This pull request still approves the change."
                ));
                if same(ask) {
                    self.status(pr.number, note.as_deref().unwrap_or(""), input.secrets)
                        .await?;
                    summary.unchanged += 1;
                    return Ok(row(state_of(ask), Some(pr)));
                }
                self.commit(p, ask, base, input, stale)
                    .await
                    .map_err(Refusal::into_error)?
            }
            Err(e) => return Err(e.into_error()),
        };
        self.write(
            ReviewOperation::UpdateBranch,
            &p.key.to_string(),
            Some(pr.number),
            Method::Patch,
            &self.client.path(&format!(
                "/git/refs/{}",
                enc(&format!("heads/{}", p.branch()))
            )),
            &json!({"sha": sha, "force": true}),
        )
        .await?;
        let body = input
            .secrets
            .scrub(&self.body(p, ask, input, offer.clone(), base));
        self.write(
            ReviewOperation::UpdatePullRequest,
            &p.key.to_string(),
            Some(pr.number),
            Method::Patch,
            &self.client.path(&format!("/pulls/{}", pr.number)),
            &json!({"title": text::pull_request_title(&p.key, ask == Ask::KeepLive), "body": body}),
        )
        .await?;
        let status = note.unwrap_or_else(|| match &was {
            Some(m) if m.fingerprint != p.fingerprint => format!(
                "The live state changed since this was proposed: the pending change is now `{}` (was `{}`). The approval in this pull request names the new change.",
                p.fingerprint, m.fingerprint
            ),
            _ if ask == Ask::KeepLive => {
                "The box is ticked: this pull request now writes the live values into Git instead of approving the change.".to_string()
            }
            _ => "The box is unticked: this pull request approves the change again.".to_string(),
        });
        self.status(pr.number, &status, input.secrets).await?;
        summary.updated += 1;
        Ok(ProposalRow {
            head: Some(sha),
            ..row(state_of(ask), Some(pr))
        })
    }

    async fn open_new(
        &self,
        p: &Proposal<'_>,
        ctx: &Ctx<'_>,
        budget: &mut Budget,
        summary: &mut Summary,
        offer: Result<(), String>,
    ) -> Result<Made, ReviewError> {
        let (base, input, stale) = (ctx.base, ctx.input, ctx.stale);
        let branch = p.branch();
        // A merged approval of this change that was already used does not
        // stand for the change coming back: that needs a new approval.
        let used_before = ctx
            .used
            .iter()
            .any(|(k, f, _)| *k == p.key && *f == p.fingerprint);
        for old in self.closed_pulls(&branch).await? {
            let Some(m) = proposal::parse_marker(&old.body) else {
                continue;
            };
            if m.fingerprint != p.fingerprint || m.withdrawn {
                continue;
            }
            if old.merged {
                // Merged, but its approval is not (or no longer) one that
                // can apply: ask again.
                let valid = input.approvals.iter().any(|a| {
                    a.target == p.key && a.fingerprint == p.fingerprint && a.expires > Utc::now()
                });
                if used_before || !valid {
                    continue;
                }
                return Ok(Made::Merged(old));
            }
            summary.declined += 1;
            return Ok(Made::Declined(old));
        }
        if budget.open >= self.cfg.max_open || budget.new >= self.cfg.max_new_per_run {
            summary.waiting += 1;
            return Ok(Made::Waiting);
        }
        let sha = self
            .commit(p, Ask::Approve, base, input, stale)
            .await
            .map_err(Refusal::into_error)?;
        let subject = p.key.to_string();
        if !self.point_branch(&subject, &branch, &sha).await? {
            summary.waiting += 1;
            return Ok(Made::Blocked);
        }
        let title = text::pull_request_title(&p.key, false);
        let body = input
            .secrets
            .scrub(&self.body(p, Ask::Approve, input, offer, base));
        let made = self
            .write(
                ReviewOperation::OpenPullRequest,
                &subject,
                None,
                Method::Post,
                &self.client.path("/pulls"),
                &json!({"title": title, "head": branch, "base": base.branch, "body": body, "maintainer_can_modify": true}),
            )
            .await;
        let pr = match made {
            Ok(v) => Pull::of(&v),
            // Another run opened it a moment ago: take that one.
            Err(ReviewError::GitHub(e))
                if e.status() == Some(422) && e.message().contains("already exists") =>
            {
                let head = format!("{}:{branch}", self.client.owner);
                let list = self
                    .read(
                        "find the pull request",
                        &self.client.path(&format!(
                            "/pulls{}",
                            query(&[("state", "open"), ("head", &head)])
                        )),
                    )
                    .await?;
                let Some(v) = list.as_array().and_then(|a| a.first()) else {
                    return Err(ReviewError::GitHub(e));
                };
                let pr = Pull::of(v);
                self.write(
                    ReviewOperation::UpdatePullRequest,
                    &subject,
                    Some(pr.number),
                    Method::Patch,
                    &self.client.path(&format!("/pulls/{}", pr.number)),
                    &json!({"title": title, "body": body}),
                )
                .await?;
                pr
            }
            Err(e) => return Err(e),
        };
        self.label(&subject, pr.number).await?;
        budget.open += 1;
        budget.new += 1;
        summary.opened += 1;
        Ok(Made::Opened(pr))
    }

    /// Creates `branch` at `sha`, or points it there when an earlier pull
    /// request left it, unless someone else committed to it (`false`).
    async fn point_branch(
        &self,
        subject: &str,
        branch: &str,
        sha: &str,
    ) -> Result<bool, ReviewError> {
        let created = self
            .write(
                ReviewOperation::CreateBranch,
                subject,
                None,
                Method::Post,
                &self.client.path("/git/refs"),
                &json!({"ref": format!("refs/heads/{branch}"), "sha": sha}),
            )
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(ReviewError::GitHub(e))
                if e.status() == Some(422) && e.message().contains("already exists") =>
            {
                if !self.branch_is_tends(branch).await? {
                    return Ok(false);
                }
                self.write(
                    ReviewOperation::UpdateBranch,
                    subject,
                    None,
                    Method::Patch,
                    &self
                        .client
                        .path(&format!("/git/refs/{}", enc(&format!("heads/{branch}")))),
                    &json!({"sha": sha, "force": true}),
                )
                .await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Labels a pull request with `Settings spec.review.github.labels`.
    async fn label(&self, subject: &str, number: i64) -> Result<(), ReviewError> {
        if self.cfg.labels.is_empty() {
            return Ok(());
        }
        self.write(
            ReviewOperation::Label,
            subject,
            Some(number),
            Method::Post,
            &self.client.path(&format!("/issues/{number}/labels")),
            &json!({"labels": self.cfg.labels}),
        )
        .await?;
        Ok(())
    }

    fn body(
        &self,
        p: &Proposal<'_>,
        ask: Ask,
        input: &Input<'_>,
        offer: Result<(), String>,
        base: &Base,
    ) -> String {
        let marker = proposal::marker(&p.key, &p.fingerprint, ask);
        let incident = input
            .incidents
            .iter()
            .find(|i| i.key == p.key && i.status != IncidentStatus::Resolved);
        let declared = p.actions.iter().find_map(|a| {
            a.declared_at
                .as_ref()
                .map(|o| format!("{}:{}", self.paths.of(&o.file), o.line))
        });
        let approval_path = self.paths.join(&proposal::approval_path(&p.key));
        text::pull_request_body(&text::PullRequestView {
            key: &p.key,
            marker: &marker,
            fingerprint: &p.fingerprint,
            actions: &p.actions,
            incident,
            approval_path: &approval_path,
            expires: &base
                .expires
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            declared,
            commit: input.plan.source.commit.as_deref().or(Some(&base.sha)),
            keep_live: ask == Ask::KeepLive,
            keep_live_offer: offer,
            nodes: input.nodes.get(&p.key),
        })
    }

    fn expires(&self) -> DateTime<Utc> {
        let now = Utc::now();
        chrono::Duration::from_std(self.cfg.approval_ttl.0)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now + chrono::Duration::days(7))
    }

    /// Makes the commit of a proposal on top of the base: the approval
    /// (or the edit to live values), and the removal of used and expired
    /// approvals. Returns its sha.
    async fn commit(
        &self,
        p: &Proposal<'_>,
        ask: Ask,
        base: &Base,
        input: &Input<'_>,
        stale: &[&Approval],
    ) -> Result<String, Refusal> {
        let mut entries = Vec::new();
        let approval_path = self.paths.join(&proposal::approval_path(&p.key));
        let message = match ask {
            Ask::Approve => {
                let doc = proposal::approval_document(&p.key, &p.fingerprint, base.expires);
                entries.push(json!({"path": approval_path, "mode": "100644", "type": "blob", "content": doc}));
                format!(
                    "tend: approve change {} to {}\n\nMerging this approves exactly this change, once.\n\n{TRAILER}\n",
                    p.fingerprint, p.key
                )
            }
            Ask::KeepLive => {
                for (path, content) in self.live_edits(p, base, input.secrets).await? {
                    entries.push(
                        json!({"path": path, "mode": "100644", "type": "blob", "content": content}),
                    );
                }
                format!(
                    "tend: keep the live state of {} in Git\n\nChange {} declined in favour of the live values.\n\n{TRAILER}\n",
                    p.key, p.fingerprint
                )
            }
        };
        for a in stale {
            let path = self.paths.of(&a.origin.file);
            if path == approval_path {
                continue;
            }
            // Only a file that holds nothing but this approval, as it is on
            // the base branch now (the source may be older than the base).
            let Some(text) = self.base_file(&path, &base.sha).await? else {
                continue;
            };
            if !proposal::only_this_approval(&text, a) {
                continue;
            }
            entries
                .push(json!({"path": path, "mode": "100644", "type": "blob", "sha": Value::Null}));
        }
        self.tree_commit(&p.key.to_string(), entries, &message, base, input.secrets)
            .await
            .map_err(Refusal::from)
    }

    /// A commit on top of the base whose tree changes `entries` (each a
    /// file's path with its content, or a deletion). Returns its sha.
    async fn tree_commit(
        &self,
        subject: &str,
        mut entries: Vec<Value>,
        message: &str,
        base: &Base,
        secrets: &Secrets,
    ) -> Result<String, ReviewError> {
        let subject = subject.to_string();
        // Each file is a blob of its own, then the tree names the blobs.
        for e in &mut entries {
            let Some(content) = e.get("content").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let blob = self
                .write(
                    ReviewOperation::CreateBlob,
                    &subject,
                    None,
                    Method::Post,
                    &self.client.path("/git/blobs"),
                    &json!({"content": secrets.scrub(&content), "encoding": "utf-8"}),
                )
                .await?;
            if let Some(map) = e.as_object_mut() {
                map.remove("content");
                map.insert("sha".into(), blob["sha"].clone());
            }
        }
        let tree = self
            .write(
                ReviewOperation::CreateTree,
                &subject,
                None,
                Method::Post,
                &self.client.path("/git/trees"),
                &json!({"base_tree": base.tree, "tree": entries}),
            )
            .await?;
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let commit = self
            .write(
                ReviewOperation::CreateCommit,
                &subject,
                None,
                Method::Post,
                &self.client.path("/git/commits"),
                &json!({
                    "message": secrets.scrub(message),
                    "tree": tree["sha"],
                    "parents": [base.sha],
                    "author": {"name": AUTHOR, "email": AUTHOR_EMAIL, "date": now},
                }),
            )
            .await?;
        Ok(commit["sha"].as_str().unwrap_or_default().to_string())
    }

    /// The declaration files of a proposal, edited to the live values.
    async fn live_edits(
        &self,
        p: &Proposal<'_>,
        base: &Base,
        secrets: &Secrets,
    ) -> Result<Vec<(String, String)>, Refusal> {
        keep_live_offer(&p.actions).map_err(Refusal::Edit)?;
        let Some(origin) = p.actions.iter().find_map(|a| a.declared_at.clone()) else {
            return Err(Refusal::Edit(
                "the resource is not declared in a file".into(),
            ));
        };
        let path = self.paths.of(&origin.file);
        let text = self
            .base_file(&path, &base.sha)
            .await?
            .ok_or_else(|| Refusal::Edit(format!("{path} is not on the base branch")))?;
        let edits: Vec<(String, Value)> = p
            .actions
            .iter()
            .flat_map(|a| a.changes.iter())
            .map(|c| (c.path.clone(), c.from.clone()))
            .collect();
        let edited =
            crate::model::edit::set_values_of(&text, p.key.kind.as_str(), &p.key.name, &edits)
                .map_err(|e| Refusal::Edit(format!("{path}: {e}")))?;
        // The file is sent whole: one that holds a secret is never sent.
        if secrets.scrub(&edited) != edited {
            return Err(Refusal::Edit(format!(
                "{path} holds a secret value, and tend never sends a secret to GitHub; run `tend adopt {}` where the repository is checked out instead",
                p.key
            )));
        }
        Ok(vec![(path, edited)])
    }

    /// A file's text at `sha`, or `None` when it is not there.
    async fn base_file(&self, path: &str, sha: &str) -> Result<Option<String>, ReviewError> {
        let file = match self
            .read(
                "read a file",
                &self.client.path(&format!(
                    "/contents/{}{}",
                    enc(path),
                    query(&[("ref", sha)])
                )),
            )
            .await
        {
            Ok(f) => f,
            Err(ReviewError::GitHub(e)) if e.status() == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        let encoded: String = file["content"]
            .as_str()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| ReviewError::Edit(format!("{path} could not be read: {e}")))?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Closes a pull request whose change is gone, and deletes its branch
    /// when every commit on it is tend's.
    async fn withdraw(
        &self,
        pr: &Pull,
        recorded: Option<&String>,
        secrets: &Secrets,
    ) -> Result<(), ReviewError> {
        let subject = proposal::parse_marker(&pr.body)
            .map(|m| m.key)
            .unwrap_or_else(|| pr.head_ref.clone());
        // The branch is deleted only at the commit tend last put there.
        let all_tends =
            recorded.is_none_or(|h| *h == pr.head_sha) && self.pull_is_tends(pr.number).await?;
        let mut status = "The change is no longer pending (the resource matches its declaration, or the change no longer needs a human), so tend closes this pull request.".to_string();
        if !all_tends {
            status.push_str(&format!(
                " The branch `{}` is left in place: it has commits that are not tend's.",
                pr.head_ref
            ));
        }
        self.status(pr.number, &status, secrets).await?;
        self.write(
            ReviewOperation::ClosePullRequest,
            &subject,
            Some(pr.number),
            Method::Patch,
            &self.client.path(&format!("/pulls/{}", pr.number)),
            &json!({"state": "closed", "body": secrets.scrub(&proposal::withdrawn_body(&pr.body))}),
        )
        .await?;
        if all_tends {
            self.write(
                ReviewOperation::DeleteBranch,
                &subject,
                Some(pr.number),
                Method::Delete,
                &self.client.path(&format!(
                    "/git/refs/{}",
                    enc(&format!("heads/{}", pr.head_ref))
                )),
                &Value::Null,
            )
            .await?;
        }
        Ok(())
    }

    /// Whether every commit of a pull request is tend's.
    async fn pull_is_tends(&self, number: i64) -> Result<bool, ReviewError> {
        let commits = self
            .read(
                "list the pull request's commits",
                &self
                    .client
                    .path(&format!("/pulls/{number}/commits?per_page=100")),
            )
            .await?;
        Ok(commits
            .as_array()
            .is_some_and(|list| list.iter().all(|c| is_tends(&c["commit"]))))
    }

    /// Whether the newest commit of a branch is tend's.
    async fn branch_is_tends(&self, branch: &str) -> Result<bool, ReviewError> {
        let r = self
            .read(
                "read the branch",
                &self
                    .client
                    .path(&format!("/git/ref/{}", enc(&format!("heads/{branch}")))),
            )
            .await?;
        let sha = r["object"]["sha"].as_str().unwrap_or_default();
        let c = self
            .read(
                "read the branch's commit",
                &self.client.path(&format!("/git/commits/{}", enc(sha))),
            )
            .await?;
        Ok(is_tends(&c))
    }

    /// One issue per escalated incident; new steps edit its status
    /// comment; recovery closes it.
    /// One pull request per held resource that edits its declaration back
    /// to the last good values (the minimal in-place edit of keep-live). A
    /// revert closed unmerged is not proposed again for the same failed
    /// spec; one whose hold is over is closed. Returns each open revert's
    /// address, by resource.
    async fn reverts(
        &self,
        input: &Input<'_>,
        summary: &mut Summary,
    ) -> Result<HashMap<ResourceKey, String>, ReviewError> {
        let held = &input.plan.held;
        let mut links = HashMap::new();
        if held.is_empty() && !input.full {
            return Ok(links);
        }
        let open = self
            .open_pulls_of(proposal::REVERT_PREFIX, &|b| {
                proposal::parse_revert_marker(b).is_some()
            })
            .await?;
        if !held.is_empty() {
            let base = self.base().await?;
            for h in held {
                let branch = proposal::revert_branch(&h.target);
                if let Some(pr) = open.get(&branch) {
                    let same = proposal::parse_revert_marker(&pr.body)
                        .is_some_and(|(f, _)| f == h.fingerprint);
                    if same {
                        links.insert(h.target.clone(), pr.url.clone());
                        summary.unchanged += 1;
                        continue;
                    }
                }
                let declined = self.closed_pulls(&branch).await?.into_iter().any(|old| {
                    proposal::parse_revert_marker(&old.body)
                        .is_some_and(|(f, withdrawn)| f == h.fingerprint && !withdrawn)
                });
                if declined {
                    summary.declined += 1;
                    continue;
                }
                let url = self
                    .revert(h, open.get(&branch), &base, input, summary)
                    .await?;
                if let Some(url) = url {
                    links.insert(h.target.clone(), url);
                }
            }
        }
        if input.full {
            let wanted: HashSet<String> = held
                .iter()
                .map(|h| proposal::revert_branch(&h.target))
                .collect();
            for pr in open.values().filter(|pr| !wanted.contains(&pr.head_ref)) {
                let subject = pr.head_ref.clone();
                self.status(
                    pr.number,
                    "The hold is over (the declaration changed, or a human released it): this revert is no longer needed.",
                    input.secrets,
                )
                .await?;
                self.write(
                    ReviewOperation::ClosePullRequest,
                    &subject,
                    Some(pr.number),
                    Method::Patch,
                    &self.client.path(&format!("/pulls/{}", pr.number)),
                    &json!({"state": "closed", "body": proposal::withdrawn_revert_body(&pr.body)}),
                )
                .await?;
                summary.closed += 1;
            }
        }
        Ok(links)
    }

    /// Opens (or brings up to date) the revert of one held resource.
    /// Returns its address; `None` when the edit cannot be made (logged
    /// with the reason).
    async fn revert(
        &self,
        h: &crate::plan::Held,
        pr: Option<&Pull>,
        base: &Base,
        input: &Input<'_>,
        summary: &mut Summary,
    ) -> Result<Option<String>, ReviewError> {
        let subject = h.target.to_string();
        let refuse = |why: String| {
            tracing::warn!(resource = %h.target, "No revert is proposed: {why}");
            Ok(None)
        };
        let edits = match &h.revert {
            Ok(e) => e,
            Err(why) => return refuse(why.clone()),
        };
        let Some(origin) = &h.declared_at else {
            return refuse("the resource is not declared in a file".into());
        };
        let path = self.paths.of(&origin.file);
        let Some(text) = self.base_file(&path, &base.sha).await? else {
            return refuse(format!("{path} is not on the base branch"));
        };
        let edited = match crate::model::edit::set_values_of(
            &text,
            h.target.kind.as_str(),
            &h.target.name,
            edits,
        ) {
            Ok(t) => t,
            Err(e) => return refuse(format!("{path}: {e}")),
        };
        if edited == text {
            return refuse(format!("{path} already declares the last good values"));
        }
        // The file is sent whole: one that holds a secret is never sent.
        if input.secrets.scrub(&edited) != edited {
            return refuse(format!(
                "{path} holds a secret value, and tend never sends a secret to GitHub"
            ));
        }
        let message = format!(
            "tend: revert {} to its last good spec\n\n{} failed verification ({}).\n\n{TRAILER}\n",
            h.target,
            h.failed_commit.as_deref().unwrap_or("The declared spec"),
            h.cause
        );
        let entries =
            vec![json!({"path": path, "mode": "100644", "type": "blob", "content": edited})];
        let sha = self
            .tree_commit(&subject, entries, &message, base, input.secrets)
            .await?;
        let branch = proposal::revert_branch(&h.target);
        let incident = h
            .incident
            .and_then(|id| input.incidents.iter().find(|i| i.id == id));
        let marker = proposal::revert_marker(&h.target, &h.fingerprint);
        let body = input.secrets.scrub(&text::revert_body(
            &marker,
            h,
            &format!("{path}:{}", origin.line),
            incident,
        ));
        let title = text::revert_title(&h.target);
        if let Some(pr) = pr {
            self.write(
                ReviewOperation::UpdateBranch,
                &subject,
                Some(pr.number),
                Method::Patch,
                &self
                    .client
                    .path(&format!("/git/refs/{}", enc(&format!("heads/{branch}")))),
                &json!({"sha": sha, "force": true}),
            )
            .await?;
            self.write(
                ReviewOperation::UpdatePullRequest,
                &subject,
                Some(pr.number),
                Method::Patch,
                &self.client.path(&format!("/pulls/{}", pr.number)),
                &json!({"title": title, "body": body}),
            )
            .await?;
            summary.updated += 1;
            return Ok(Some(pr.url.clone()));
        }
        if !self.point_branch(&subject, &branch, &sha).await? {
            return refuse(format!(
                "the branch {branch} has commits that are not tend's"
            ));
        }
        let made = self
            .write(
                ReviewOperation::OpenPullRequest,
                &subject,
                None,
                Method::Post,
                &self.client.path("/pulls"),
                &json!({"title": title, "head": branch, "base": base.branch, "body": body, "maintainer_can_modify": true}),
            )
            .await?;
        let pr = Pull::of(&made);
        self.label(&subject, pr.number).await?;
        summary.opened += 1;
        Ok(Some(pr.url))
    }

    async fn incidents(
        &self,
        input: &Input<'_>,
        reverts: &HashMap<ResourceKey, String>,
        summary: &mut Summary,
    ) -> Result<(), ReviewError> {
        let wanted: Vec<&Incident> = input
            .incidents
            .iter()
            .filter(|i| {
                matches!(
                    i.status,
                    IncidentStatus::Escalated | IncidentStatus::Resolved
                )
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let issues = self.incident_issues().await?;
        for i in wanted {
            let subject = format!("incident #{}", i.id);
            let mut body = text::incident_issue_body(&proposal::incident_marker(i.id), i);
            if let Some(url) = reverts.get(&i.key) {
                body.push_str(&format!(
                    "\n**Revert proposed:** {url} edits the declaration back to its last good values.\n"
                ));
            }
            let body = input.secrets.scrub(&body);
            match (i.status, issues.get(&i.id)) {
                (IncidentStatus::Escalated, None) => {
                    let mut labels = self.cfg.labels.clone();
                    labels.push(format!("severity:{}", i.severity));
                    self.write(
                        ReviewOperation::OpenIssue,
                        &subject,
                        None,
                        Method::Post,
                        &self.client.path("/issues"),
                        &json!({"title": input.secrets.scrub(&text::incident_issue_title(i)), "body": body, "labels": labels}),
                    )
                    .await?;
                    summary.issues_opened += 1;
                }
                (IncidentStatus::Escalated, Some(issue)) => {
                    if issue.body.trim_end() == body.trim_end() {
                        continue;
                    }
                    self.write(
                        ReviewOperation::UpdateIssue,
                        &subject,
                        Some(issue.number),
                        Method::Patch,
                        &self.client.path(&format!("/issues/{}", issue.number)),
                        &json!({"body": body}),
                    )
                    .await?;
                    if let Some(s) = i.steps.last() {
                        let step = format!(
                            "Latest step: {} → **{}** at {}: {}",
                            s.action_word(),
                            s.outcome,
                            crate::state::ts(s.finished_at),
                            s.detail
                        );
                        self.status(issue.number, &step, input.secrets).await?;
                    }
                    summary.issues_updated += 1;
                }
                (_, Some(issue)) => {
                    let recovered = i
                        .time_to_recover_ms
                        .map(|t| format!(" Time to recover: {:.1} s.", t as f64 / 1000.0))
                        .unwrap_or_default();
                    let note = format!(
                        "✅ Resolved at {}.{recovered}",
                        i.resolved_at
                            .map_or_else(|| "now".to_string(), crate::state::ts)
                    );
                    self.status(issue.number, &note, input.secrets).await?;
                    self.write(
                        ReviewOperation::CloseIssue,
                        &subject,
                        Some(issue.number),
                        Method::Patch,
                        &self.client.path(&format!("/issues/{}", issue.number)),
                        &json!({"state": "closed", "state_reason": "completed", "body": body}),
                    )
                    .await?;
                    summary.issues_closed += 1;
                }
                (_, None) => {}
            }
        }
        Ok(())
    }

    /// tend's open incident issues, by incident id: opened by tend, with
    /// its marker (anyone can open an issue that carries the marker).
    async fn incident_issues(&self) -> Result<BTreeMap<i64, Issue>, ReviewError> {
        let login = self.client.login().await?.to_string();
        let mut out = BTreeMap::new();
        let labels = self.cfg.labels.join(",");
        for page in 1..=20 {
            let page = page.to_string();
            let mut q = vec![
                ("state", "open"),
                ("per_page", "100"),
                ("page", page.as_str()),
            ];
            if !labels.is_empty() {
                q.push(("labels", labels.as_str()));
            }
            let list = self
                .read(
                    "list issues",
                    &self.client.path(&format!("/issues{}", query(&q))),
                )
                .await?;
            let items = list.as_array().cloned().unwrap_or_default();
            for v in items
                .iter()
                .filter(|v| v.get("pull_request").is_none())
                .filter(|v| v["user"]["login"].as_str() == Some(login.as_str()))
            {
                let body = v["body"].as_str().unwrap_or("");
                if let Some(id) = proposal::parse_incident_marker(body) {
                    out.insert(
                        id,
                        Issue {
                            number: v["number"].as_i64().unwrap_or(0),
                            body: body.to_string(),
                        },
                    );
                }
            }
            if items.len() < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// Creates or edits the one status comment of a pull request or issue;
    /// the same text again writes nothing.
    async fn status(
        &self,
        number: i64,
        status: &str,
        secrets: &Secrets,
    ) -> Result<(), ReviewError> {
        let body = secrets.scrub(&text::status_comment(proposal::STATUS_MARKER, status));
        let kept = self
            .client
            .kept_comment(number, proposal::STATUS_MARKER, &body)
            .await?;
        let Some((op, method, path)) = kept.write() else {
            return Ok(());
        };
        self.write(
            op,
            &format!("#{number}"),
            Some(number),
            method,
            path,
            &json!({"body": body}),
        )
        .await
        .map(drop)
    }

    async fn read(&self, op: &str, path: &str) -> Result<Value, ReviewError> {
        Ok(self.client.call(op, Method::Get, path, None).await?)
    }

    /// A write to GitHub, logged with its outcome.
    async fn write(
        &self,
        op: ReviewOperation,
        subject: &str,
        number: Option<i64>,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, ReviewError> {
        let body = (!body.is_null()).then_some(body);
        let result = self.client.call(op.as_str(), method, path, body).await;
        let (outcome, detail, number, url) = match &result {
            Ok(v) => (
                ReviewOutcome::Ok,
                String::new(),
                number.or_else(|| v["number"].as_i64()),
                v["html_url"].as_str().map(str::to_string),
            ),
            Err(e) => {
                let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
                (
                    ReviewOutcome::Failed,
                    secrets.scrub(&e.to_string()),
                    number,
                    None,
                )
            }
        };
        self.store.log_review(&ReviewEvent {
            at: Utc::now(),
            operation: op,
            subject: subject.to_string(),
            number,
            url,
            outcome,
            detail,
        })?;
        Ok(result?)
    }
}

/// A proposal's state in `tend review list` while its pull request is open.
fn state_of(ask: Ask) -> ProposalState {
    match ask {
        Ask::Approve => ProposalState::Open,
        Ask::KeepLive => ProposalState::KeepLive,
    }
}

/// A commit (as the Git database API shows it) that tend made.
fn is_tends(c: &Value) -> bool {
    c["author"]["name"].as_str() == Some(AUTHOR)
        && c["message"].as_str().is_some_and(|m| m.contains(TRAILER))
}

/// What every proposal of one publication shares.
struct Ctx<'a> {
    base: &'a Base,
    input: &'a Input<'a>,
    stale: &'a [&'a Approval],
    used: &'a HashSet<(ResourceKey, String, DateTime<Utc>)>,
    /// The commit tend last put on each proposal's branch.
    heads: &'a HashMap<ResourceKey, String>,
}

struct Issue {
    number: i64,
    body: String,
}

struct Budget {
    open: usize,
    new: usize,
}

enum Made {
    Opened(Pull),
    Declined(Pull),
    Merged(Pull),
    Waiting,
    /// Its branch has someone else's commits: tend does not overwrite them.
    Blocked,
}

/// Why a commit was not made: the edit to live values is impossible (the
/// pull request says why), or GitHub failed.
enum Refusal {
    Edit(String),
    Failed(ReviewError),
}

impl Refusal {
    fn into_error(self) -> ReviewError {
        match self {
            Refusal::Failed(e) => e,
            Refusal::Edit(why) => ReviewError::Edit(why),
        }
    }
}

impl From<ReviewError> for Refusal {
    fn from(e: ReviewError) -> Refusal {
        Refusal::Failed(e)
    }
}

/// Whether "keep the live value in Git" can apply to a resource's
/// actions, and why not when it cannot.
pub fn keep_live_offer(actions: &[&crate::vocab::Action]) -> Result<(), String> {
    if !actions
        .iter()
        .any(|a| a.changes.iter().any(|c| !c.from.is_null()))
    {
        return Err("this change sets no field that exists live (a restart, a runbook step, or a resource that does not exist yet)".into());
    }
    for a in actions {
        if matches!(a.action_type, ActionType::Create | ActionType::Delete) {
            return Err(format!(
                "a {} has no live value to keep",
                a.action_type.as_str()
            ));
        }
        for c in &a.changes {
            if c.from.is_null() {
                return Err(format!("{} does not exist live", c.path));
            }
            if c.from == Value::String(crate::vocab::REDACTED.into()) {
                return Err(format!(
                    "{} is a secret, and tend never writes a secret to Git",
                    c.path
                ));
            }
        }
    }
    Ok(())
}

/// The publish sink that hands every `apply` or `watch` pass to a
/// [`Reviewer`], built from the pass's `Settings spec.review.github` (and
/// rebuilt when they change).
pub struct GitHubSink {
    source: SourcePaths,
    current: Option<(GithubReview, crate::state::Location, Reviewer)>,
    /// What the last publication did.
    pub last: Summary,
}

impl GitHubSink {
    pub fn new(source: SourcePaths) -> GitHubSink {
        GitHubSink {
            source,
            current: None,
            last: Summary::default(),
        }
    }

    fn reviewer(
        &mut self,
        cfg: &GithubReview,
        at: &crate::state::Location,
    ) -> Result<&Reviewer, ReviewError> {
        let stale = !matches!(&self.current, Some((c, d, _)) if c == cfg && d == at);
        if stale {
            let token = token_from_env().ok_or(ReviewError::NoToken)?;
            let paths = match &self.source {
                SourcePaths::Dir(dir) => RepoPaths {
                    strip: dir.clone(),
                    under: cfg.path.clone(),
                    desired: cfg.path.clone(),
                },
                SourcePaths::Git(sub) => RepoPaths {
                    strip: String::new(),
                    under: String::new(),
                    desired: sub.clone().unwrap_or_default(),
                },
            };
            let store = crate::state::open(&at.0, at.1.as_deref())?;
            let reviewer = Reviewer::new(cfg, &token, store, paths)?;
            self.current = Some((cfg.clone(), at.clone(), reviewer));
        }
        match &self.current {
            Some((_, _, r)) => Ok(r),
            None => Err(ReviewError::NoToken),
        }
    }
}

impl Sink for GitHubSink {
    fn publish<'a>(
        &'a mut self,
        what: &'a Published<'a>,
    ) -> futures::future::BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.send(what))
    }

    fn newest_only(&self) -> bool {
        true
    }
}

impl GitHubSink {
    async fn send(&mut self, what: &Published<'_>) -> Result<(), PublishError> {
        let Published::Pass { applied, full } = what else {
            return Ok(());
        };
        let Some(cfg) = &applied.review else {
            return Ok(());
        };
        // In a fleet, one member publishes: members publishing side by
        // side, each with a plan of only what it owns, would withdraw each
        // other's pull requests.
        if applied.shared.is_some() && !crate::fleet::seen().is_some_and(|s| s.publisher) {
            return Ok(());
        }
        let reviewer = self
            .reviewer(cfg, &(applied.state_dir.clone(), applied.shared.clone()))
            .map_err(|e| PublishError::Review(what.scrub(e.to_string())))?;
        let (plan, nodes) = match applied.shared {
            Some(_) => gather(&*reviewer.store, applied)
                .map_err(|e| PublishError::Review(what.scrub(e.to_string())))?,
            None => (applied.plan.clone(), HashMap::new()),
        };
        let incidents = match applied.shared {
            Some(_) => fleet_incidents(&*reviewer.store, applied)
                .map_err(|e| PublishError::Review(what.scrub(e.to_string())))?,
            None => applied.incidents.clone(),
        };
        let input = Input {
            plan: &plan,
            nodes: &nodes,
            incidents: &incidents,
            approvals: &applied.approvals,
            secrets: &applied.secrets,
            full: *full,
        };
        let result = reviewer.publish(&input).await;
        match result {
            Ok(summary) => {
                self.last = summary;
                Ok(())
            }
            Err(e) => Err(PublishError::Review(what.scrub(e.to_string()))),
        }
    }
}

/// In a fleet, the publisher's plan with what the other live members found
/// that needs a human, and which nodes found each proposal. A resource
/// the publisher has a proposal for keeps it; for one it has none for,
/// the change most nodes found is proposed (the first node's, on a tie),
/// from the actions of the first node that found it. The same drift seen
/// by many nodes is one proposal, listing them.
fn gather(
    store: &dyn Store,
    applied: &crate::reconcile::Applied,
) -> Result<(Plan, HashMap<ResourceKey, Nodes>), StateError> {
    let mut plan = applied.plan.clone();
    let Some(fleet) = store.fleet() else {
        return Ok((plan, HashMap::new()));
    };
    let me = fleet.node().to_string();
    let live: HashSet<String> = fleet.live_nodes(applied.lease)?.into_iter().collect();
    let proposes = |a: &crate::vocab::Action| {
        a.decision == crate::vocab::Decision::Review && a.incident.is_none()
    };
    // By resource, by node: the fingerprints of the actions found.
    let mut seen: BTreeMap<ResourceKey, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for a in plan.actions.iter().filter(|a| proposes(a)) {
        seen.entry(a.target.clone())
            .or_default()
            .entry(me.clone())
            .or_default()
            .push(a.fingerprint.clone());
    }
    let mut theirs: HashMap<(ResourceKey, String), Vec<crate::vocab::Action>> = HashMap::new();
    for f in store.fleet_rows().findings()? {
        if f.node == me || !live.contains(&f.node) {
            continue;
        }
        match serde_json::from_value::<crate::vocab::Action>(f.action) {
            Ok(a) if proposes(&a) && a.target == f.key => {
                seen.entry(f.key.clone())
                    .or_default()
                    .entry(f.node.clone())
                    .or_default()
                    .push(a.fingerprint.clone());
                theirs.entry((f.key, f.node)).or_default().push(a);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(node = %f.node, resource = %f.key, error = %e, "A finding this tend cannot read is left out.");
            }
        }
    }
    let change =
        |fps: &Vec<String>| crate::vocab::change_fingerprint(fps.iter().map(String::as_str));
    let mut nodes = HashMap::new();
    for (key, by_node) in &seen {
        let chosen = match by_node.get(&me) {
            Some(fps) => change(fps),
            None => {
                let mut counts: BTreeMap<String, (usize, &String)> = BTreeMap::new();
                for (node, fps) in by_node {
                    counts.entry(change(fps)).or_insert((0, node)).0 += 1;
                }
                let best = counts
                    .iter()
                    .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(a.1 .1)))
                    .map(|(c, (_, node))| (c.clone(), (*node).clone()));
                let Some((c, node)) = best else { continue };
                if let Some(actions) = theirs.remove(&(key.clone(), node)) {
                    plan.actions.extend(actions);
                }
                c
            }
        };
        let mut found = Nodes::default();
        for (node, fps) in by_node {
            if change(fps) == chosen {
                found.same.push(node.clone());
            } else {
                found.different.push(node.clone());
            }
        }
        nodes.insert(key.clone(), found);
    }
    Ok((plan, nodes))
}

/// In a fleet, the incidents the publisher's issues follow: its pass's,
/// and the most recent ones of every other node (scrubbed by the member
/// that wrote them), so an escalation anywhere gets its issue and a
/// resolution anywhere closes it.
fn fleet_incidents(
    store: &dyn Store,
    applied: &crate::reconcile::Applied,
) -> Result<Vec<Incident>, StateError> {
    let mut all = applied.incidents.clone();
    let known: HashSet<i64> = all.iter().map(|i| i.id).collect();
    for i in store.fleet_incidents(true, 200, None)? {
        if !known.contains(&i.id)
            && matches!(
                i.status,
                IncidentStatus::Escalated | IncidentStatus::Resolved
            )
        {
            all.push(i);
        }
    }
    Ok(all)
}
