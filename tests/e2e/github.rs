//! A stateful fake of GitHub's REST API with Prism, in proxy mode, in front
//! of it: every request tend sends and every answer it gets is checked
//! against GitHub's own OpenAPI description. One fake serves a whole test
//! binary ([`github`]); tests use repositories of their own names, so they
//! can run in parallel against it.
//!
//! The chain, all on 127.0.0.1: client → recorder → Prism → fake. Prism
//! tells what was wrong with an exchange only in the `sl-violations` header
//! of its answer (its log lines do not say which request they belong to),
//! so the recorder reads that header and keeps each violation with the
//! request's method and path. It also notices answers Prism made up itself
//! (a body it could not parse, an upstream answer it could not read) and
//! Prism not answering at all, and keeps those as violations too.
//!
//! Answers are built from the description's own examples, with what the
//! fake's state decides written over them, so they carry every field the
//! schemas require, including the ones tend does not read. Prism gets a
//! copy of the description in which the schemas its validator cannot
//! compile are said another way ([`make_nullable_compile`]); it would skip
//! them unchecked otherwise.
//!
//! Prism and the description are installed by `scripts/prism.sh` into
//! `$TEND_TEST_NPM` (by default `${XDG_CACHE_HOME:-$HOME/.cache}/tend-test-npm`).

// Each test module uses its own part of this API.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The user the token belongs to: the author of what tend creates.
pub const BOT: &str = "github-actions[bot]";
/// The person who merges, closes and edits in the test-side helpers.
pub const HUMAN: &str = "octocat";

/// How long Prism may take to load the description (about 10 s alone on
/// two cores; much longer while a build runs beside it).
const PRISM_STARTUP: Duration = Duration::from_secs(240);
/// How long one exchange through Prism may take. Its first validation of
/// an operation compiles that operation's schemas.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Marks every answer of the fake, so the recorder can tell Prism's own.
const FAKE_HEADER: &str = "x-fake-github";
/// Marks answers that GitHub gives but its description does not list
/// (injected failures, 401 without a token, 404 for a missing repository):
/// Prism's findings about them are not the fake's mistakes.
const UNSPECIFIED_HEADER: &str = "x-fake-github-unspecified";

/// A pull request as the fake holds it.
#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    /// Empty when the pull request has no body.
    pub body: String,
    pub head_ref: String,
    pub base_ref: String,
    /// `open` or `closed`.
    pub state: String,
    pub merged: bool,
    pub draft: bool,
    pub labels: Vec<String>,
    /// Comment bodies, oldest first.
    pub comments: Vec<String>,
    pub head_sha: String,
}

/// An issue that is not a pull request.
#[derive(Debug, Clone)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    /// Empty when the issue has no body.
    pub body: String,
    /// `open` or `closed`.
    pub state: String,
    pub state_reason: Option<String>,
    pub labels: Vec<String>,
    /// Comment bodies, oldest first.
    pub comments: Vec<String>,
}

/// One request that reached the fake (after Prism, which re-serializes
/// JSON bodies).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// As sent, percent-encoding intact: `/repos/o/r/git/ref/heads%2Fmain`.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub body: String,
    /// The token of the `Authorization` header, without its scheme.
    pub token: Option<String>,
}

/// The fake, Prism and the recorder, running until the test binary exits.
pub struct GitHub {
    url: String,
    prism_url: String,
    prism_log: PathBuf,
    state: Arc<Mutex<State>>,
    // Serves the fake and the recorder on its worker threads.
    _runtime: tokio::runtime::Runtime,
}

/// The fake GitHub of this test binary, started on first use. Panics when
/// Prism is not installed or does not start.
pub fn github() -> &'static GitHub {
    static GITHUB: OnceLock<Result<GitHub, String>> = OnceLock::new();
    match GITHUB.get_or_init(start) {
        Ok(github) => github,
        Err(e) => panic!("the fake GitHub did not start: {e}"),
    }
}

impl GitHub {
    /// The URL to give tend as GitHub's API URL.
    pub fn api_url(&self) -> String {
        self.url.clone()
    }

    /// Prism's own URL, behind the recorder; what it reports there is not
    /// recorded.
    pub fn prism_url(&self) -> String {
        self.prism_url.clone()
    }

    /// Creates (or replaces) `owner/name` with branch `main` holding these
    /// files in one commit.
    pub fn create_repo(&self, full_name: &str, files: &[(&str, &str)]) {
        assert!(
            full_name.split('/').count() == 2,
            "a repository is owner/name, not `{full_name}`"
        );
        let mut repo = Repo {
            id: next_id(),
            ..Repo::default()
        };
        let tree = files
            .iter()
            .map(|(path, text)| (path.to_string(), repo.file_entry(text.as_bytes())))
            .collect();
        let tree = repo.store_tree(tree);
        let commit = repo.store_commit(Commit {
            tree,
            parents: vec![],
            message: "Initial commit".into(),
            author: Person::human(HUMAN),
            committer: Person::human(HUMAN),
        });
        repo.refs.insert("heads/main".into(), commit);
        let mut st = self.st();
        st.repos.insert(full_name.to_string(), repo);
        st.requests.remove(full_name);
    }

    /// Every pull request of `repo`, by number.
    pub fn pulls(&self, repo: &str) -> Vec<Pull> {
        let st = self.st();
        let r = st.repo(repo);
        r.items
            .values()
            .filter_map(|item| {
                let pr = item.pr.as_ref()?;
                Some(Pull {
                    number: item.number,
                    title: item.title.clone(),
                    body: item.body.clone().unwrap_or_default(),
                    head_ref: pr.head.clone(),
                    base_ref: pr.base.clone(),
                    state: item.state.clone(),
                    merged: pr.merged_at.is_some(),
                    draft: pr.draft,
                    labels: item.labels.clone(),
                    comments: r.comment_bodies(item.number),
                    head_sha: r.head_sha(pr),
                })
            })
            .collect()
    }

    /// Every issue of `repo` that is not a pull request, by number.
    pub fn issues(&self, repo: &str) -> Vec<Issue> {
        let st = self.st();
        let r = st.repo(repo);
        r.items
            .values()
            .filter(|item| item.pr.is_none())
            .map(|item| Issue {
                number: item.number,
                title: item.title.clone(),
                body: item.body.clone().unwrap_or_default(),
                state: item.state.clone(),
                state_reason: item.state_reason.clone(),
                labels: item.labels.clone(),
                comments: r.comment_bodies(item.number),
            })
            .collect()
    }

    /// The text of `path` at a branch, tag or commit; `None` when the file
    /// or the ref does not exist.
    pub fn file(&self, repo: &str, git_ref: &str, path: &str) -> Option<String> {
        let st = self.st();
        let r = st.repo(repo);
        let tree = r.tree_at(git_ref)?;
        let entry = tree.get(path)?;
        Some(String::from_utf8_lossy(&r.blobs[&entry.sha]).into_owned())
    }

    /// Every file at a branch, tag or commit, by path; empty when the ref
    /// does not exist.
    pub fn files(&self, repo: &str, git_ref: &str) -> Vec<(String, String)> {
        let st = self.st();
        let r = st.repo(repo);
        let Some(tree) = r.tree_at(git_ref) else {
            return vec![];
        };
        tree.iter()
            .map(|(path, e)| {
                let text = String::from_utf8_lossy(&r.blobs[&e.sha]).into_owned();
                (path.clone(), text)
            })
            .collect()
    }

    pub fn branch_exists(&self, repo: &str, branch: &str) -> bool {
        self.st()
            .repo(repo)
            .refs
            .contains_key(&format!("heads/{branch}"))
    }

    /// The merge button: the base branch gets a merge commit holding the
    /// head's tree, and the pull request is closed as merged.
    pub fn merge(&self, repo: &str, number: u64) {
        let mut st = self.st();
        let r = st.repo_mut(repo);
        let (base, head_sha, title, head) = {
            let item = r
                .items
                .get(&number)
                .unwrap_or_else(|| panic!("{repo} has no #{number}"));
            let pr = item
                .pr
                .as_ref()
                .unwrap_or_else(|| panic!("{repo}#{number} is an issue"));
            assert_eq!(item.state, "open", "{repo}#{number} is not open");
            (
                pr.base.clone(),
                r.head_sha(pr),
                item.title.clone(),
                pr.head.clone(),
            )
        };
        let base_sha = r.refs[&format!("heads/{base}")].clone();
        let tree = r.commits[&head_sha].tree.clone();
        let owner = repo.split('/').next().unwrap_or_default();
        let merge = r.store_commit(Commit {
            tree,
            parents: vec![base_sha.clone(), head_sha.clone()],
            message: format!("Merge pull request #{number} from {owner}/{head}\n\n{title}"),
            author: Person::human(HUMAN),
            committer: Person::human("GitHub"),
        });
        r.refs.insert(format!("heads/{base}"), merge.clone());
        let item = r.items.get_mut(&number).expect("checked above");
        let now = now();
        item.state = "closed".into();
        item.closed_at = Some(now.clone());
        item.closed_by = Some(HUMAN.into());
        item.updated_at = now.clone();
        let pr = item.pr.as_mut().expect("checked above");
        pr.merged_at = Some(now);
        pr.merged_by = Some(HUMAN.into());
        pr.merge_commit_sha = Some(merge);
        pr.head_sha = head_sha;
        pr.base_sha_at_merge = Some(base_sha);
    }

    /// A person closes the pull request (or issue) without merging.
    pub fn close(&self, repo: &str, number: u64) {
        let mut st = self.st();
        let item = st.repo_mut(repo).item_mut(number);
        let now = now();
        item.state = "closed".into();
        // GitHub keeps no reason for pull requests.
        item.state_reason = item.pr.is_none().then(|| "completed".to_string());
        item.closed_at = Some(now.clone());
        item.closed_by = Some(HUMAN.into());
        item.updated_at = now;
    }

    /// A person edits the body (ticks a checkbox, say).
    pub fn set_body(&self, repo: &str, number: u64, body: &str) {
        let mut st = self.st();
        let item = st.repo_mut(repo).item_mut(number);
        item.body = Some(body.to_string());
        item.updated_at = now();
    }

    /// A person opens a pull request from a new branch `branch` (one
    /// commit on top of `main`) into `main`; returns its number.
    pub fn open_pull(&self, repo: &str, branch: &str, title: &str) -> u64 {
        {
            let mut st = self.st();
            let r = st.repo_mut(repo);
            let main = r.refs["heads/main"].clone();
            r.refs.insert(format!("heads/{branch}"), main);
        }
        self.push_commit(repo, branch, HUMAN, &[("NOTES.md", "a change\n")]);
        let mut st = self.st();
        let r = st.repo_mut(repo);
        let head_sha = r.refs[&format!("heads/{branch}")].clone();
        r.open_pull_item(title, "", HUMAN, (branch, "main", head_sha), (false, true))
    }

    /// A person pushes a commit to `branch` that writes these files.
    pub fn push_commit(&self, repo: &str, branch: &str, author: &str, files: &[(&str, &str)]) {
        let mut st = self.st();
        let r = st.repo_mut(repo);
        let key = format!("heads/{branch}");
        let parent = r
            .refs
            .get(&key)
            .unwrap_or_else(|| panic!("{repo} has no branch {branch}"))
            .clone();
        let mut tree = r.trees[&r.commits[&parent].tree].clone();
        for (path, text) in files {
            let entry = r.file_entry(text.as_bytes());
            tree.insert(path.to_string(), entry);
        }
        let tree = r.store_tree(tree);
        let commit = r.store_commit(Commit {
            tree,
            parents: vec![parent],
            message: format!(
                "Edit {}",
                files.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
            ),
            author: Person::human(author),
            committer: Person::human(author),
        });
        r.refs.insert(key, commit);
    }

    /// A person opens an issue; returns its number.
    pub fn issue_as(
        &self,
        repo: &str,
        login: &str,
        title: &str,
        body: &str,
        labels: &[&str],
    ) -> u64 {
        let mut st = self.st();
        let labels = labels.iter().map(|l| l.to_string()).collect();
        st.repo_mut(repo)
            .add_issue(title, Some(body.to_string()), labels, login)
    }

    /// A person comments on issue or pull request `number`.
    pub fn comment_as(&self, repo: &str, number: u64, login: &str, body: &str) -> u64 {
        let mut st = self.st();
        let r = st.repo_mut(repo);
        let now = now();
        r.item_mut(number).updated_at = now.clone();
        let id = next_id();
        r.comments.insert(
            id,
            Comment {
                id,
                issue: number,
                body: body.to_string(),
                user: login.to_string(),
                created_at: now.clone(),
                updated_at: now,
            },
        );
        id
    }

    /// The comments on issue or pull request `number`: (author, body),
    /// oldest first.
    pub fn comments_by(&self, repo: &str, number: u64) -> Vec<(String, String)> {
        let st = self.st();
        st.repo(repo)
            .comments
            .values()
            .filter(|c| c.issue == number)
            .map(|c| (c.user.clone(), c.body.clone()))
            .collect()
    }

    /// Every request for `repo` that reached the fake, in order.
    pub fn requests(&self, repo: &str) -> Vec<Request> {
        self.st().requests.get(repo).cloned().unwrap_or_default()
    }

    /// How many requests for `repo` were not GETs.
    pub fn writes(&self, repo: &str) -> usize {
        self.requests(repo)
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    }

    /// The next request for `repo` with this method whose path contains
    /// `path_contains` (as sent or decoded) gets this answer instead, and
    /// changes nothing. A `Value::Null` body sends none. What Prism finds
    /// wrong with the answer is not recorded: GitHub sends such answers
    /// whether its description lists them or not.
    pub fn fail_next(
        &self,
        repo: &str,
        method: &str,
        path_contains: &str,
        status: u16,
        body: Value,
        headers: &[(&str, &str)],
    ) {
        self.answer_next(repo, method, path_contains, status, body, headers, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn answer_next(
        &self,
        repo: &str,
        method: &str,
        path_contains: &str,
        status: u16,
        body: Value,
        headers: &[(&str, &str)],
        checked: bool,
    ) {
        self.st().failures.push(Failure {
            repo: repo.to_string(),
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.to_string(),
            status,
            body,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            checked,
        });
    }

    /// Every violation Prism (or the recorder) found so far, each with its
    /// request's method and path.
    pub fn violations(&self) -> Vec<String> {
        self.st()
            .violations
            .iter()
            .map(Violation::to_string)
            .collect()
    }

    /// The violations found in requests for `repo`.
    pub fn violations_of(&self, repo: &str) -> Vec<String> {
        let prefix = format!("/repos/{repo}");
        self.st()
            .violations
            .iter()
            .filter(|v| v.path == prefix || v.path.starts_with(&format!("{prefix}/")))
            .map(Violation::to_string)
            .collect()
    }

    /// Panics listing every violation found in requests for `repo`.
    pub fn assert_no_violations(&self, repo: &str) {
        let found = self.violations_of(repo);
        assert!(
            found.is_empty(),
            "GitHub's description was violated in {repo} ({} violations; Prism's log: {}):\n  {}",
            found.len(),
            self.prism_log.display(),
            found.join("\n  ")
        );
    }

    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

// A test that panics while holding the lock must not take every other test
// down with it.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// State: a small git object store and the issues of each repository.

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    requests: HashMap<String, Vec<Request>>,
    failures: Vec<Failure>,
    violations: Vec<Violation>,
}

impl State {
    fn repo(&self, name: &str) -> &Repo {
        self.repos
            .get(name)
            .unwrap_or_else(|| panic!("the fake GitHub has no repository {name}"))
    }

    fn repo_mut(&mut self, name: &str) -> &mut Repo {
        self.repos
            .get_mut(name)
            .unwrap_or_else(|| panic!("the fake GitHub has no repository {name}"))
    }
}

struct Failure {
    repo: String,
    method: String,
    path_contains: String,
    status: u16,
    body: Value,
    headers: Vec<(String, String)>,
    /// Whether Prism's findings about the answer count.
    checked: bool,
}

struct Violation {
    method: String,
    path: String,
    message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.method, self.path, self.message)
    }
}

/// One entry of a tree: trees are kept flat, path → entry, and directories
/// exist only through the paths under them.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Entry {
    mode: String,
    /// `blob` or `commit` (a submodule).
    kind: String,
    sha: String,
}

type Tree = BTreeMap<String, Entry>;

#[derive(Clone)]
struct Person {
    name: String,
    email: String,
    date: String,
}

impl Person {
    fn human(login: &str) -> Person {
        Person {
            name: login.to_string(),
            email: format!("{login}@users.noreply.github.com"),
            date: now(),
        }
    }

    fn bot() -> Person {
        Person {
            name: BOT.to_string(),
            email: "41898282+github-actions[bot]@users.noreply.github.com".to_string(),
            date: now(),
        }
    }
}

#[derive(Clone)]
struct Commit {
    tree: String,
    parents: Vec<String>,
    message: String,
    author: Person,
    committer: Person,
}

/// An issue, or a pull request (which GitHub keeps as an issue too).
struct Item {
    number: u64,
    id: u64,
    pr_id: u64,
    title: String,
    body: Option<String>,
    state: String,
    state_reason: Option<String>,
    labels: Vec<String>,
    user: String,
    created_at: String,
    updated_at: String,
    closed_at: Option<String>,
    closed_by: Option<String>,
    pr: Option<Pr>,
}

struct Pr {
    head: String,
    base: String,
    /// The head's commit when the branch is gone (merged or deleted);
    /// while it exists, the branch decides.
    head_sha: String,
    base_sha_at_merge: Option<String>,
    draft: bool,
    merged_at: Option<String>,
    merged_by: Option<String>,
    merge_commit_sha: Option<String>,
    maintainer_can_modify: bool,
}

struct Comment {
    id: u64,
    issue: u64,
    body: String,
    user: String,
    created_at: String,
    updated_at: String,
}

#[derive(Default)]
struct Repo {
    id: u64,
    blobs: HashMap<String, Vec<u8>>,
    trees: HashMap<String, Tree>,
    commits: HashMap<String, Commit>,
    /// `heads/main` → commit.
    refs: BTreeMap<String, String>,
    items: BTreeMap<u64, Item>,
    comments: BTreeMap<u64, Comment>,
    /// Label name → id; GitHub creates a label the first time it is used.
    labels: BTreeMap<String, u64>,
}

impl Repo {
    /// A new open pull request: (head, base, head sha), (draft, maintainer
    /// can modify). Returns its number.
    fn open_pull_item(
        &mut self,
        title: &str,
        body: &str,
        user: &str,
        (head, base, head_sha): (&str, &str, String),
        (draft, maintainer_can_modify): (bool, bool),
    ) -> u64 {
        let number = self.next_number();
        let now = now();
        self.items.insert(
            number,
            Item {
                number,
                id: next_id(),
                pr_id: next_id(),
                title: title.to_string(),
                body: Some(body.to_string()),
                state: "open".into(),
                state_reason: None,
                labels: vec![],
                user: user.into(),
                created_at: now.clone(),
                updated_at: now,
                closed_at: None,
                closed_by: None,
                pr: Some(Pr {
                    head: head.to_string(),
                    base: base.to_string(),
                    head_sha,
                    base_sha_at_merge: None,
                    draft,
                    merged_at: None,
                    merged_by: None,
                    merge_commit_sha: None,
                    maintainer_can_modify,
                }),
            },
        );
        number
    }

    fn store_blob(&mut self, content: Vec<u8>) -> String {
        let sha = object_id("blob", &content);
        self.blobs.insert(sha.clone(), content);
        sha
    }

    fn file_entry(&mut self, content: &[u8]) -> Entry {
        Entry {
            mode: "100644".into(),
            kind: "blob".into(),
            sha: self.store_blob(content.to_vec()),
        }
    }

    /// Stores a tree and every directory in it as a tree of its own, so the
    /// shas of directories in listings can be read back, as in git.
    fn store_tree(&mut self, tree: Tree) -> String {
        let sha = tree_id(&tree);
        if !self.trees.contains_key(&sha) {
            for dir in top_dirs(&tree) {
                let sub = subtree(&tree, &dir);
                self.store_tree(sub);
            }
            self.trees.insert(sha.clone(), tree);
        }
        sha
    }

    fn store_commit(&mut self, commit: Commit) -> String {
        let mut text = format!("tree {}\n", commit.tree);
        for p in &commit.parents {
            text.push_str(&format!("parent {p}\n"));
        }
        for (role, who) in [("author", &commit.author), ("committer", &commit.committer)] {
            text.push_str(&format!(
                "{role} {} <{}> {}\n",
                who.name, who.email, who.date
            ));
        }
        text.push('\n');
        text.push_str(&commit.message);
        let sha = object_id("commit", text.as_bytes());
        self.commits.insert(sha.clone(), commit);
        sha
    }

    /// A branch, tag, `heads/x`, `refs/heads/x` or commit sha → commit sha.
    fn resolve(&self, name: &str) -> Option<String> {
        let name = name.strip_prefix("refs/").unwrap_or(name);
        for key in [
            name.to_string(),
            format!("heads/{name}"),
            format!("tags/{name}"),
        ] {
            if let Some(sha) = self.refs.get(&key) {
                return Some(sha.clone());
            }
        }
        self.commits.contains_key(name).then(|| name.to_string())
    }

    fn tree_at(&self, name: &str) -> Option<&Tree> {
        let commit = self.resolve(name)?;
        self.trees.get(&self.commits[&commit].tree)
    }

    fn head_sha(&self, pr: &Pr) -> String {
        self.refs
            .get(&format!("heads/{}", pr.head))
            .filter(|_| pr.merged_at.is_none())
            .cloned()
            .unwrap_or_else(|| pr.head_sha.clone())
    }

    fn base_sha(&self, pr: &Pr) -> String {
        pr.base_sha_at_merge
            .clone()
            .or_else(|| self.refs.get(&format!("heads/{}", pr.base)).cloned())
            .unwrap_or_default()
    }

    /// Every commit reachable from `sha`, itself included.
    fn ancestry(&self, sha: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![sha.to_string()];
        while let Some(s) = todo.pop() {
            if let Some(c) = self.commits.get(&s) {
                if seen.insert(s) {
                    todo.extend(c.parents.iter().cloned());
                }
            }
        }
        seen
    }

    /// The commits of `head` that `base` lacks, oldest first, as GitHub
    /// lists a pull request's commits.
    fn commits_between(&self, base: &str, head: &str) -> Vec<String> {
        let known = self.ancestry(base);
        let mut out = vec![];
        let mut todo = vec![head.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(s) = todo.pop() {
            if known.contains(&s) || !seen.insert(s.clone()) {
                continue;
            }
            if let Some(c) = self.commits.get(&s) {
                out.push(s.clone());
                todo.extend(c.parents.iter().cloned());
            }
        }
        out.reverse();
        out
    }

    fn comment_bodies(&self, issue: u64) -> Vec<String> {
        self.comments
            .values()
            .filter(|c| c.issue == issue)
            .map(|c| c.body.clone())
            .collect()
    }

    fn item_mut(&mut self, number: u64) -> &mut Item {
        self.items
            .get_mut(&number)
            .unwrap_or_else(|| panic!("no issue or pull request #{number}"))
    }

    /// Opens an issue by `user`; returns its number.
    fn add_issue(
        &mut self,
        title: &str,
        body: Option<String>,
        labels: Vec<String>,
        user: &str,
    ) -> u64 {
        for l in &labels {
            self.labels.entry(l.clone()).or_insert_with(next_id);
        }
        let number = self.next_number();
        let now = now();
        self.items.insert(
            number,
            Item {
                number,
                id: next_id(),
                pr_id: 0,
                title: title.to_string(),
                body,
                state: "open".into(),
                state_reason: None,
                labels,
                user: user.to_string(),
                created_at: now.clone(),
                updated_at: now,
                closed_at: None,
                closed_by: None,
                pr: None,
            },
        );
        number
    }

    fn next_number(&self) -> u64 {
        self.items.keys().next_back().map_or(1, |n| n + 1)
    }
}

/// A 40-hex id unique to the content, like git's (which is SHA-1; any
/// stable digest does for a fake).
fn object_id(kind: &str, content: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(format!("{kind} {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())[..40].to_string()
}

fn tree_id(tree: &Tree) -> String {
    let mut text = String::new();
    for (path, e) in tree {
        text.push_str(&format!("{} {} {}\t{path}\n", e.mode, e.kind, e.sha));
    }
    object_id("tree", text.as_bytes())
}

/// The directories directly under the root of a flat tree.
fn top_dirs(tree: &Tree) -> BTreeSet<String> {
    tree.keys()
        .filter_map(|p| p.split_once('/').map(|(dir, _)| dir.to_string()))
        .collect()
}

/// The entries under `dir/`, relative to it.
fn subtree(tree: &Tree, dir: &str) -> Tree {
    let prefix = format!("{dir}/");
    tree.iter()
        .filter_map(|(p, e)| Some((p.strip_prefix(&prefix)?.to_string(), e.clone())))
        .collect()
}

/// Every directory of a flat tree, nested ones included.
fn all_dirs(tree: &Tree) -> BTreeSet<String> {
    let mut dirs = BTreeSet::new();
    for path in tree.keys() {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            dirs.insert(path[..at + i].to_string());
            at += i + 1;
        }
    }
    dirs
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---------------------------------------------------------------------------
// Starting Prism, the fake and the recorder.

fn npm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEND_TEST_NPM") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("tend-test-npm")
}

fn start() -> Result<GitHub, String> {
    let npm = npm_dir();
    let prism = npm.join("node_modules/.bin/prism");
    let description = npm.join("node_modules/@octokit/openapi/generated/api.github.com.json");
    if !prism.exists() || !description.exists() {
        return Err(format!(
            "Prism or GitHub's OpenAPI description is missing in {}: run scripts/prism.sh \
             (TEND_TEST_NPM chooses another directory)",
            npm.display()
        ));
    }
    let bind = || -> Result<TcpListener, String> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(l)
    };
    let fake_listener = bind()?;
    let recorder_listener = bind()?;
    let prism_port = bind()?.local_addr().map_err(|e| e.to_string())?.port();
    let fake_url = format!(
        "http://{}",
        fake_listener.local_addr().map_err(|e| e.to_string())?
    );
    let url = format!(
        "http://{}",
        recorder_listener.local_addr().map_err(|e| e.to_string())?
    );
    let prism_url = format!("http://127.0.0.1:{prism_port}");

    let dir = std::env::temp_dir().join(format!("tend-github-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let (templates, checked) = read_description(&description, &dir, &url)?;
    let prism_log = dir.join("prism.log");
    let prism_pid = spawn_prism(&prism, &checked, &fake_url, prism_port, &dir)?;

    let state = Arc::new(Mutex::new(State::default()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-github")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let fake = Arc::new(Fake {
        state: state.clone(),
        api: url.clone(),
        tpl: templates,
    });
    let recorder = Arc::new(Recorder {
        state: state.clone(),
        prism: prism_url.clone(),
        client: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(EXCHANGE_TIMEOUT)
            // Below the 5 s after which Prism (node) drops an idle
            // connection, so a request never races that close.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?,
    });
    serve(&runtime, fake_listener, move |req| {
        let fake = fake.clone();
        async move { fake.answer(req) }
    });
    serve(&runtime, recorder_listener, move |req| {
        let recorder = recorder.clone();
        async move { recorder.forward(req).await }
    });
    wait_for_prism(prism_port, prism_pid, &prism_log)?;
    Ok(GitHub {
        url,
        prism_url,
        prism_log,
        state,
        _runtime: runtime,
    })
}

/// The templates of answers, from the description's examples, and the copy
/// of the description Prism validates against (see
/// [`make_nullable_compile`]).
fn read_description(
    description: &Path,
    dir: &Path,
    api: &str,
) -> Result<(Templates, PathBuf), String> {
    let text =
        std::fs::read(description).map_err(|e| format!("read {}: {e}", description.display()))?;
    let mut doc: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("parse {}: {e}", description.display()))?;
    drop(text);
    let templates =
        Templates::load(&doc, api).map_err(|e| format!("{}: {e}", description.display()))?;
    make_nullable_compile(&mut doc);
    let checked = dir.join("api.github.com.json");
    std::fs::write(&checked, doc.to_string())
        .map_err(|e| format!("write {}: {e}", checked.display()))?;
    Ok((templates, checked))
}

/// Starts Prism under a shell that stops it, and removes its directory,
/// once this process is gone: statics are never dropped, and a test binary
/// may be killed. Returns Prism's pid.
fn spawn_prism(
    prism: &Path,
    description: &Path,
    upstream: &str,
    port: u16,
    dir: &Path,
) -> Result<u32, String> {
    // The shell stays Prism's parent and reaps it only after killing it,
    // so the pid it kills is never another process's.
    const WATCHDOG: &str = r#"
        "$0" proxy "$1" "$2" -h 127.0.0.1 -p "$3" >"$5/prism.log" 2>&1 </dev/null &
        prism=$!
        echo "$prism" >"$5/prism.pid"
        while kill -0 "$4" 2>/dev/null; do sleep 1; done
        kill "$prism" 2>/dev/null
        wait "$prism"
        rm -rf "$5"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg(prism)
        .arg(description)
        .arg(upstream)
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .arg(dir)
        // Plain log lines.
        .env("FORCE_COLOR", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start sh for Prism: {e}"))?;
    let pid_file = dir.join("prism.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err("the shell starting Prism wrote no pid".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` runs: not gone, and not a zombie its shell has yet to
/// reap.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn wait_for_prism(port: u16, pid: u32, log: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + PRISM_STARTUP;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        let tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        if !running(pid) {
            return Err(format!("Prism exited; its log ends:\n{}", tail()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "Prism did not listen on {addr} within {}s; its log ends:\n{}",
                PRISM_STARTUP.as_secs(),
                tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A request as the servers see it.
struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// Serves every request on `listener` with `handle`.
fn serve<F, Fut>(runtime: &tokio::runtime::Runtime, listener: TcpListener, handle: F)
where
    F: Fn(Incoming) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let handle = handle.clone();
            async move {
                handle(Incoming {
                    method,
                    uri,
                    headers,
                    body,
                })
                .await
            }
        },
    );
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        axum::serve(listener, app).await.expect("serve");
    });
}

// ---------------------------------------------------------------------------
// The recorder: passes each exchange through Prism and keeps what Prism
// reported about it.

struct Recorder {
    state: Arc<Mutex<State>>,
    prism: String,
    client: reqwest::Client,
}

/// Headers that belong to one connection, not to the exchange.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
            | "host"
            | "content-length"
    )
}

impl Recorder {
    async fn forward(&self, req: Incoming) -> Response {
        let path = req.uri.path().to_string();
        let target = format!(
            "{}{}",
            self.prism,
            req.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut out = self.client.request(req.method.clone(), &target);
        for (name, value) in &req.headers {
            if !hop_by_hop(name) {
                out = out.header(name, value);
            }
        }
        if !req.body.is_empty() {
            out = out.body(req.body.clone());
        }
        let answer = async {
            let resp = out.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let (status, headers, body) = match answer.await {
            Ok(answer) => answer,
            Err(e) => {
                let message = format!("no answer from Prism: {e}");
                self.violation(&req.method, &path, message.clone());
                return plain(StatusCode::BAD_GATEWAY, &message);
            }
        };
        let from_fake = headers.contains_key(FAKE_HEADER);
        let unspecified = headers.contains_key(UNSPECIFIED_HEADER);
        if let Some(found) = headers.get("sl-violations") {
            for message in prism_violations(found.as_bytes(), unspecified) {
                self.violation(&req.method, &path, message);
            }
        }
        if !from_fake {
            // Prism answered by itself: the request never reached GitHub.
            let text = String::from_utf8_lossy(&body);
            self.violation(
                &req.method,
                &path,
                format!("Prism answered {status} itself: {}", truncate(&text, 500)),
            );
        }
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        for (name, value) in &headers {
            if !hop_by_hop(name) && name != FAKE_HEADER && name != UNSPECIFIED_HEADER {
                resp.headers_mut().append(name, value.clone());
            }
        }
        resp
    }

    fn violation(&self, method: &Method, path: &str, message: String) {
        lock(&self.state).violations.push(Violation {
            method: method.to_string(),
            path: path.to_string(),
            message,
        });
    }
}

/// The violations in an `sl-violations` header (a JSON array of `{location,
/// severity, message}`), worded `location: message (severity)`. Those about
/// the response are left out when GitHub's description does not describe
/// it; hints and information are left out always.
fn prism_violations(header: &[u8], unspecified_response: bool) -> Vec<String> {
    let text = String::from_utf8_lossy(header);
    let Ok(list) = serde_json::from_str::<Vec<Value>>(&text) else {
        // Past 8 kB Prism cuts the list and says so.
        return vec![format!("Prism: {}", truncate(&text, 1000))];
    };
    list.iter()
        .filter_map(|v| {
            let location: Vec<String> = v["location"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let severity = v["severity"].as_str().unwrap_or("Error");
            if !matches!(severity, "Error" | "Warning") {
                return None;
            }
            if unspecified_response && location.first().map(String::as_str) == Some("response") {
                return None;
            }
            let message = v["message"].as_str().unwrap_or("");
            Some(format!("{}: {message} ({severity})", location.join(".")))
        })
        .collect()
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut resp = Response::new(Body::from(text.to_string()));
    *resp.status_mut() = status;
    resp
}

/// Prism validates with ajv, which refuses to compile a schema that holds
/// `nullable` without `type`, and Prism then skips that validation without
/// a word. GitHub's description has such schemas (`commit.author`, issue
/// field values), so without this every issue answer, every commit list and
/// every issue request body would pass unchecked. Each becomes what it
/// means in JSON Schema: the schema, or null. Examples are left alone.
fn make_nullable_compile(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if !map.contains_key("type") {
                if let Some(Value::Bool(nullable)) = map.get("nullable").cloned() {
                    map.remove("nullable");
                    let constrained = ["anyOf", "oneOf", "allOf", "$ref", "enum"]
                        .iter()
                        .any(|k| map.contains_key(*k));
                    if nullable && constrained {
                        let schema = Value::Object(std::mem::take(map));
                        map.insert("anyOf".into(), json!([schema, {"type": "null"}]));
                    }
                }
            }
            for (k, x) in map.iter_mut() {
                if k != "example" && k != "examples" {
                    make_nullable_compile(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_nullable_compile),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Answers built from the description's examples.

/// The examples answers start from, by their name in
/// `components/examples`.
const EXAMPLES: &[&str] = &[
    "full-repository-default-response",
    "git-ref",
    "short-blob",
    "git-commit",
    "git-tree",
    "content-file-response-if-content-is-a-file",
    "content-file-response-if-content-is-a-directory",
    "pull-request",
    "pull-request-simple-items",
    "commit-items",
    "issue",
    "label-items",
    "issue-comment",
];

struct Templates(HashMap<String, Value>);

impl Templates {
    fn load(doc: &Value, api: &str) -> Result<Templates, String> {
        let mut map = HashMap::new();
        for name in EXAMPLES {
            let mut v = doc["components"]["examples"][*name]["value"].clone();
            // Lists give their first item.
            if let Value::Array(items) = v {
                v = items.into_iter().next().unwrap_or(Value::Null);
            }
            if !v.is_object() {
                return Err(format!("no example {name}"));
            }
            // Whatever a client follows leads back here, never to GitHub.
            rewrite(&mut v, "https://api.github.com", api);
            map.insert(name.to_string(), v);
        }
        // Parts of examples that answers embed.
        let pull = &map["pull-request"];
        let (user, repo) = (pull["user"].clone(), pull["head"]["repo"].clone());
        map.insert("user".into(), user);
        map.insert("repository".into(), repo);
        let mut t = Templates(map);
        t.fix_examples();
        Ok(t)
    }

    /// The examples miss a few fields the schemas require, and hold
    /// people, teams and milestones the fake has none of.
    fn fix_examples(&mut self) {
        let repo = self
            .0
            .get_mut("full-repository-default-response")
            .expect("loaded");
        repo["language"] = Value::Null;
        for gone in ["source", "parent", "template_repository", "organization"] {
            repo.as_object_mut().expect("object").remove(gone);
        }
        for name in ["pull-request", "pull-request-simple-items", "issue"] {
            let v = self.0.get_mut(name).expect("loaded");
            v["requested_reviewers"] = json!([]);
            v["requested_teams"] = json!([]);
            v["assignee"] = Value::Null;
            v["assignees"] = json!([]);
            v["milestone"] = Value::Null;
            v["locked"] = json!(false);
            v["active_lock_reason"] = Value::Null;
            if name == "issue" {
                let o = v.as_object_mut().expect("object");
                o.remove("requested_reviewers");
                o.remove("requested_teams");
            } else {
                v["auto_merge"] = Value::Null;
            }
        }
        let commit = self.0.get_mut("commit-items").expect("loaded");
        let o = commit.as_object_mut().expect("object");
        o.remove("stats");
        o.remove("files");
    }

    /// A fresh copy of an example, its sample repository renamed to
    /// `full_name`.
    fn get(&self, name: &str, full_name: &str) -> Value {
        let mut v = self.0[name].clone();
        rewrite(&mut v, "octocat/Hello-World", full_name);
        rewrite(&mut v, "octokit/octokit.rb", full_name);
        v
    }
}

/// Replaces `from` by `to` in every string of `v`.
fn rewrite(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite(i, from, to)),
        Value::Object(map) => map.values_mut().for_each(|i| rewrite(i, from, to)),
        _ => {}
    }
}

/// Writes `fields` over `v`.
fn set(v: &mut Value, fields: Value) {
    if let (Value::Object(target), Value::Object(fields)) = (v, fields) {
        for (k, x) in fields {
            target.insert(k, x);
        }
    }
}

static LAST_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

/// Ids unique across the fake, as GitHub's are across repositories.
fn next_id() -> u64 {
    LAST_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// A stable id for a login.
fn user_id(login: &str) -> u64 {
    let h = Sha256::digest(login.as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % 100_000_000 + 1
}

fn node_id(kind: &str, id: u64) -> String {
    base64_encode(format!("{kind}{id}").as_bytes())
}

/// What one request sees of the fake: its repository and the templates.
struct View<'a> {
    tpl: &'a Templates,
    api: &'a str,
    full: &'a str,
    repo: &'a Repo,
}

impl View<'_> {
    fn api_repo(&self) -> String {
        format!("{}/repos/{}", self.api, self.full)
    }

    fn html_repo(&self) -> String {
        format!("https://github.com/{}", self.full)
    }

    fn owner(&self) -> &str {
        self.full.split('/').next().unwrap_or_default()
    }

    fn user(&self, login: &str) -> Value {
        let mut v = self.tpl.get("user", self.full);
        rewrite(&mut v, "octocat", &encode(login));
        let id = user_id(login);
        let kind = if login.ends_with("[bot]") {
            "Bot"
        } else {
            "User"
        };
        set(
            &mut v,
            json!({"login": login, "id": id, "node_id": node_id("U_", id), "type": kind}),
        );
        v
    }

    fn label(&self, name: &str) -> Value {
        let mut v = self.tpl.get("label-items", self.full);
        let id = self.repo.labels.get(name).copied().unwrap_or(0);
        set(
            &mut v,
            json!({
                "id": id, "node_id": node_id("LA_", id), "name": name,
                "url": format!("{}/labels/{}", self.api_repo(), encode(name)),
                "description": "", "color": "ededed", "default": false,
            }),
        );
        v
    }

    fn repository(&self) -> Value {
        let mut v = self.tpl.get("full-repository-default-response", self.full);
        let name = self.full.split('/').nth(1).unwrap_or_default();
        let open = self
            .repo
            .items
            .values()
            .filter(|i| i.state == "open")
            .count();
        set(
            &mut v,
            json!({
                "id": self.repo.id, "node_id": node_id("R_", self.repo.id),
                "name": name, "full_name": self.full, "owner": self.user(self.owner()),
                "private": false, "fork": false, "default_branch": "main",
                "html_url": self.html_repo(), "url": self.api_repo(),
                "open_issues_count": open, "open_issues": open,
            }),
        );
        v
    }

    /// The repository as it appears in a pull request's head and base.
    fn short_repository(&self) -> Value {
        let full = self.repository();
        let mut v = self.tpl.get("repository", self.full);
        if let (Value::Object(target), Value::Object(source)) = (&mut v, full) {
            for (k, x) in source {
                if target.contains_key(&k) {
                    target.insert(k, x);
                }
            }
        }
        v
    }

    fn git_ref(&self, name: &str, sha: &str) -> Value {
        let mut v = self.tpl.get("git-ref", self.full);
        set(
            &mut v,
            json!({
                "ref": format!("refs/{name}"),
                "node_id": base64_encode(format!("REF_refs/{name}").as_bytes()),
                "url": format!("{}/git/refs/{name}", self.api_repo()),
                "object": {"type": "commit", "sha": sha,
                           "url": format!("{}/git/commits/{sha}", self.api_repo())},
            }),
        );
        v
    }

    fn person(p: &Person) -> Value {
        json!({"name": p.name, "email": p.email, "date": p.date})
    }

    fn parents(&self, c: &Commit) -> Value {
        c.parents
            .iter()
            .map(|p| {
                json!({"sha": p, "url": format!("{}/git/commits/{p}", self.api_repo()),
                       "html_url": format!("{}/commit/{p}", self.html_repo())})
            })
            .collect()
    }

    fn commit(&self, sha: &str) -> Value {
        let c = &self.repo.commits[sha];
        let mut v = self.tpl.get("git-commit", self.full);
        set(
            &mut v,
            json!({
                "sha": sha, "node_id": base64_encode(format!("C_{sha}").as_bytes()),
                "url": format!("{}/git/commits/{sha}", self.api_repo()),
                "html_url": format!("{}/commit/{sha}", self.html_repo()),
                "author": Self::person(&c.author), "committer": Self::person(&c.committer),
                "message": c.message,
                "tree": {"sha": c.tree, "url": format!("{}/git/trees/{}", self.api_repo(), c.tree)},
                "parents": self.parents(c),
            }),
        );
        v
    }

    /// A commit as a pull request's commit list shows it.
    fn listed_commit(&self, sha: &str) -> Value {
        let c = &self.repo.commits[sha];
        let mut v = self.tpl.get("commit-items", self.full);
        let mut inner = v["commit"].clone();
        set(
            &mut inner,
            json!({
                "url": format!("{}/git/commits/{sha}", self.api_repo()),
                "author": Self::person(&c.author), "committer": Self::person(&c.committer),
                "message": c.message, "comment_count": 0,
                "tree": {"sha": c.tree, "url": format!("{}/git/trees/{}", self.api_repo(), c.tree)},
            }),
        );
        set(
            &mut v,
            json!({
                "url": format!("{}/commits/{sha}", self.api_repo()), "sha": sha,
                "node_id": base64_encode(format!("C_{sha}").as_bytes()),
                "html_url": format!("{}/commit/{sha}", self.html_repo()),
                "comments_url": format!("{}/commits/{sha}/comments", self.api_repo()),
                "commit": inner,
                "author": self.user(&c.author.name), "committer": self.user(&c.committer.name),
                "parents": self.parents(c),
            }),
        );
        v
    }

    fn tree_entry(&self, path: &str, e: &Entry) -> Value {
        let mut v = json!({"path": path, "mode": e.mode, "type": e.kind, "sha": e.sha});
        if e.kind == "blob" {
            v["size"] = json!(self.repo.blobs.get(&e.sha).map_or(0, Vec::len));
            v["url"] = json!(format!("{}/git/blobs/{}", self.api_repo(), e.sha));
        }
        v
    }

    /// A tree's entries: the top level, or (`recursive`) every file and
    /// directory, as GitHub lists them.
    fn tree(&self, sha: &str, recursive: bool) -> Value {
        let tree = &self.repo.trees[sha];
        let mut entries: BTreeMap<String, Value> = BTreeMap::new();
        let dirs = if recursive {
            all_dirs(tree)
        } else {
            top_dirs(tree)
        };
        for dir in dirs {
            let sub = tree_id(&subtree(tree, &dir));
            let url = format!("{}/git/trees/{sub}", self.api_repo());
            entries.insert(
                dir.clone(),
                json!({"path": dir, "mode": "040000", "type": "tree", "sha": sub, "url": url}),
            );
        }
        for (path, e) in tree {
            if recursive || !path.contains('/') {
                entries.insert(path.clone(), self.tree_entry(path, e));
            }
        }
        let mut v = self.tpl.get("git-tree", self.full);
        set(
            &mut v,
            json!({
                "sha": sha, "url": format!("{}/git/trees/{sha}", self.api_repo()),
                "tree": entries.into_values().collect::<Vec<_>>(), "truncated": false,
            }),
        );
        v
    }

    fn content_links(&self, path: &str, git_ref: &str, kind: &str, sha: &str) -> Value {
        let api = self.api_repo();
        let html = format!("{}/{kind}/{git_ref}/{path}", self.html_repo());
        let git = format!(
            "{api}/git/{}/{sha}",
            if kind == "blob" { "blobs" } else { "trees" }
        );
        let own = format!(
            "{api}/contents/{}?ref={}",
            encode_path(path),
            encode(git_ref)
        );
        json!({
            "url": own, "git_url": git, "html_url": html,
            "_links": {"self": own, "git": git, "html": html},
        })
    }

    fn file_content(&self, path: &str, git_ref: &str, e: &Entry) -> Value {
        let data = &self.repo.blobs[&e.sha];
        let mut v = self
            .tpl
            .get("content-file-response-if-content-is-a-file", self.full);
        set(&mut v, self.content_links(path, git_ref, "blob", &e.sha));
        set(
            &mut v,
            json!({
                "type": "file", "encoding": "base64", "size": data.len(),
                "name": path.rsplit('/').next().unwrap_or(path), "path": path,
                "content": base64_lines(data), "sha": e.sha,
                "download_url": format!("https://raw.githubusercontent.com/{}/{git_ref}/{path}", self.full),
            }),
        );
        v
    }

    fn dir_content(&self, dir: &str, git_ref: &str, tree: &Tree) -> Value {
        let sub = if dir.is_empty() {
            tree.clone()
        } else {
            subtree(tree, dir)
        };
        let join = |name: &str| {
            if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            }
        };
        let mut out = vec![];
        for name in top_dirs(&sub) {
            let path = join(&name);
            let sha = tree_id(&subtree(&sub, &name));
            let mut v = self
                .tpl
                .get("content-file-response-if-content-is-a-directory", self.full);
            set(&mut v, self.content_links(&path, git_ref, "tree", &sha));
            set(
                &mut v,
                json!({"type": "dir", "size": 0, "name": name, "path": path, "sha": sha,
                       "download_url": null}),
            );
            out.push(v);
        }
        for (name, e) in sub.iter().filter(|(p, _)| !p.contains('/')) {
            let path = join(name);
            let mut v = self
                .tpl
                .get("content-file-response-if-content-is-a-directory", self.full);
            set(&mut v, self.content_links(&path, git_ref, "blob", &e.sha));
            set(
                &mut v,
                json!({
                    "type": "file", "size": self.repo.blobs.get(&e.sha).map_or(0, Vec::len),
                    "name": name, "path": path, "sha": e.sha,
                    "download_url": format!("https://raw.githubusercontent.com/{}/{git_ref}/{path}", self.full),
                }),
            );
            out.push(v);
        }
        Value::Array(out)
    }

    fn labels(&self, item: &Item) -> Value {
        item.labels.iter().map(|l| self.label(l)).collect()
    }

    fn comment_count(&self, number: u64) -> usize {
        self.repo
            .comments
            .values()
            .filter(|c| c.issue == number)
            .count()
    }

    fn branch(&self, name: &str, sha: &str) -> Value {
        json!({
            "label": format!("{}:{name}", self.owner()), "ref": name, "sha": sha,
            "user": self.user(self.owner()), "repo": self.short_repository(),
        })
    }

    fn pull(&self, item: &Item, full: bool) -> Value {
        let pr = item.pr.as_ref().expect("a pull request");
        let n = item.number;
        let api = self.api_repo();
        let html = format!("{}/pull/{n}", self.html_repo());
        let head_sha = self.repo.head_sha(pr);
        let mut v = self.tpl.get(
            if full {
                "pull-request"
            } else {
                "pull-request-simple-items"
            },
            self.full,
        );
        let link = |href: String| json!({ "href": href });
        set(
            &mut v,
            json!({
                "url": format!("{api}/pulls/{n}"), "id": item.pr_id,
                "node_id": node_id("PR_", item.pr_id), "html_url": html,
                "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"),
                "issue_url": format!("{api}/issues/{n}"),
                "commits_url": format!("{api}/pulls/{n}/commits"),
                "review_comments_url": format!("{api}/pulls/{n}/comments"),
                "review_comment_url": format!("{api}/pulls/comments{{/number}}"),
                "comments_url": format!("{api}/issues/{n}/comments"),
                "statuses_url": format!("{api}/statuses/{head_sha}"),
                "number": n, "state": item.state, "title": item.title,
                "user": self.user(&item.user), "body": item.body, "labels": self.labels(item),
                "created_at": item.created_at, "updated_at": item.updated_at,
                "closed_at": item.closed_at, "merged_at": pr.merged_at,
                "merge_commit_sha": pr.merge_commit_sha,
                "head": self.branch(&pr.head, &head_sha),
                "base": self.branch(&pr.base, &self.repo.base_sha(pr)),
                "_links": {
                    "self": link(format!("{api}/pulls/{n}")), "html": link(html.clone()),
                    "issue": link(format!("{api}/issues/{n}")),
                    "comments": link(format!("{api}/issues/{n}/comments")),
                    "review_comments": link(format!("{api}/pulls/{n}/comments")),
                    "review_comment": link(format!("{api}/pulls/comments{{/number}}")),
                    "commits": link(format!("{api}/pulls/{n}/commits")),
                    "statuses": link(format!("{api}/statuses/{head_sha}")),
                },
                "author_association": "CONTRIBUTOR", "draft": pr.draft,
            }),
        );
        if full {
            let commits = self
                .repo
                .commits_between(&self.repo.base_sha(pr), &head_sha);
            let open = item.state == "open";
            set(
                &mut v,
                json!({
                    "merged": pr.merged_at.is_some(),
                    "mergeable": if open { json!(true) } else { Value::Null },
                    "rebaseable": if open { json!(true) } else { Value::Null },
                    "mergeable_state": if open { "clean" } else { "unknown" },
                    "merged_by": pr.merged_by.as_deref().map(|u| self.user(u)),
                    "comments": self.comment_count(n), "review_comments": 0,
                    "maintainer_can_modify": pr.maintainer_can_modify,
                    "commits": commits.len(), "additions": 0, "deletions": 0,
                    "changed_files": self.changed_files(pr),
                }),
            );
        }
        v
    }

    fn changed_files(&self, pr: &Pr) -> usize {
        let tree = |sha: String| {
            self.repo
                .commits
                .get(&sha)
                .and_then(|c| self.repo.trees.get(&c.tree))
                .cloned()
                .unwrap_or_default()
        };
        let (base, head) = (tree(self.repo.base_sha(pr)), tree(self.repo.head_sha(pr)));
        let paths: BTreeSet<&String> = base.keys().chain(head.keys()).collect();
        paths
            .into_iter()
            .filter(|p| base.get(*p) != head.get(*p))
            .count()
    }

    fn issue(&self, item: &Item) -> Value {
        let n = item.number;
        let api = self.api_repo();
        let kind = if item.pr.is_some() { "pull" } else { "issues" };
        let mut v = self.tpl.get("issue", self.full);
        set(
            &mut v,
            json!({
                "id": item.id, "node_id": node_id("I_", item.id),
                "url": format!("{api}/issues/{n}"), "repository_url": api,
                "labels_url": format!("{api}/issues/{n}/labels{{/name}}"),
                "comments_url": format!("{api}/issues/{n}/comments"),
                "events_url": format!("{api}/issues/{n}/events"),
                "html_url": format!("{}/{kind}/{n}", self.html_repo()),
                "number": n, "state": item.state, "state_reason": item.state_reason,
                "title": item.title, "body": item.body, "user": self.user(&item.user),
                "labels": self.labels(item), "comments": self.comment_count(n),
                "closed_at": item.closed_at, "created_at": item.created_at,
                "updated_at": item.updated_at,
                "closed_by": item.closed_by.as_deref().map(|u| self.user(u)),
                "author_association": "CONTRIBUTOR",
            }),
        );
        let o = v.as_object_mut().expect("object");
        match &item.pr {
            Some(pr) => {
                let html = format!("{}/pull/{n}", self.html_repo());
                o.insert(
                    "pull_request".into(),
                    json!({
                        "url": format!("{api}/pulls/{n}"), "html_url": html,
                        "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"),
                        "merged_at": pr.merged_at,
                    }),
                );
                o.insert("draft".into(), json!(pr.draft));
            }
            None => {
                o.remove("pull_request");
            }
        }
        v
    }

    fn comment(&self, c: &Comment) -> Value {
        let api = self.api_repo();
        let mut v = self.tpl.get("issue-comment", self.full);
        set(
            &mut v,
            json!({
                "id": c.id, "node_id": node_id("IC_", c.id),
                "url": format!("{api}/issues/comments/{}", c.id),
                "html_url": format!("{}/issues/{}#issuecomment-{}", self.html_repo(), c.issue, c.id),
                "body": c.body, "user": self.user(&c.user),
                "created_at": c.created_at, "updated_at": c.updated_at,
                "issue_url": format!("{api}/issues/{}", c.issue),
                "author_association": "CONTRIBUTOR",
            }),
        );
        v
    }
}

// ---------------------------------------------------------------------------
// The fake's endpoints.

struct Fake {
    state: Arc<Mutex<State>>,
    api: String,
    tpl: Templates,
}

/// An answer before it becomes HTTP.
struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(String, String)>,
    /// GitHub answers so, but its description does not say it does.
    unspecified: bool,
}

impl Reply {
    fn new(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: vec![],
            unspecified: false,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            body: None,
            ..Reply::new(status, Value::Null)
        }
    }

    fn unspecified(mut self) -> Reply {
        self.unspecified = true;
        self
    }
}

/// GitHub's error body.
fn error(status: u16, message: &str) -> Reply {
    Reply::new(
        status,
        json!({"message": message, "documentation_url": "https://docs.github.com/rest",
               "status": status.to_string()}),
    )
}

fn not_found() -> Reply {
    error(404, "Not Found")
}

/// GitHub's 422 with the errors it lists.
fn invalid(errors: Value) -> Reply {
    Reply::new(
        422,
        json!({"message": "Validation Failed", "errors": errors,
               "documentation_url": "https://docs.github.com/rest", "status": "422"}),
    )
}

fn missing(resource: &str, field: &str) -> Reply {
    invalid(json!([{"resource": resource, "field": field, "code": "missing_field"}]))
}

/// A query string's pairs, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (form_decode(k), form_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// The same query on another page.
    fn with_page(&self, page: usize) -> String {
        let mut pairs: Vec<String> = self
            .0
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        pairs.push(format!("page={page}"));
        pairs.join("&")
    }
}

/// What an endpoint gets of a request.
struct Call<'a> {
    full: &'a str,
    path: &'a str,
    query: Query,
    body: Value,
}

impl Call<'_> {
    fn str(&self, key: &str) -> Option<&str> {
        self.body.get(key).and_then(Value::as_str)
    }
}

impl Fake {
    fn answer(&self, req: Incoming) -> Response {
        let reply = self.reply(&req);
        let mut resp = match &reply.body {
            Some(body) => {
                let mut r = Response::new(Body::from(body.to_string()));
                r.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                r
            }
            None => Response::new(Body::empty()),
        };
        *resp.status_mut() =
            StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = resp.headers_mut();
        headers.insert(FAKE_HEADER, HeaderValue::from_static("1"));
        if reply.unspecified {
            headers.insert(UNSPECIFIED_HEADER, HeaderValue::from_static("1"));
        }
        for (k, v) in &reply.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.append(k, v);
            }
        }
        resp
    }

    fn reply(&self, req: &Incoming) -> Reply {
        let path = req.uri.path();
        let segments: Vec<String> = path.split('/').skip(1).map(percent_decode).collect();
        let full = match segments.as_slice() {
            [first, owner, name, ..] if first == "repos" => format!("{owner}/{name}"),
            _ => String::new(),
        };
        let method = req.method.as_str();
        let token = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                let scheme = scheme.to_ascii_lowercase();
                (scheme == "token" || scheme == "bearer").then(|| token.trim().to_string())
            })
            .filter(|t| !t.is_empty());
        let mut st = lock(&self.state);
        st.requests.entry(full.clone()).or_default().push(Request {
            method: method.to_string(),
            path: path.to_string(),
            query: req.uri.query().unwrap_or("").to_string(),
            body: String::from_utf8_lossy(&req.body).into_owned(),
            token: token.clone(),
        });
        if token.is_none() {
            return error(401, "Requires authentication").unspecified();
        }
        let decoded = format!("/{}", segments.join("/"));
        if let Some(i) = st.failures.iter().position(|f| {
            f.repo == full
                && f.method == method
                && (path.contains(&f.path_contains) || decoded.contains(&f.path_contains))
        }) {
            let f = st.failures.remove(i);
            return Reply {
                status: f.status,
                body: (!f.body.is_null()).then_some(f.body),
                headers: f.headers,
                unspecified: !f.checked,
            };
        }
        let body = if req.body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(_) => return error(400, "Problems parsing JSON"),
            }
        };
        let call = Call {
            full: &full,
            path,
            query: Query::parse(req.uri.query().unwrap_or("")),
            body,
        };
        // A GitHub Actions token (an installation token) may not read who
        // it is: tend then acts as github-actions[bot].
        if method == "GET" && path == "/user" {
            return error(403, "Resource not accessible by integration");
        }
        let rest: Vec<&str> = segments.iter().skip(3).map(String::as_str).collect();
        let reply = match st.repos.get_mut(&full) {
            // GitHub answers 404 for a repository it does not have (or does
            // not show the token), whatever the endpoint.
            None if !full.is_empty() => return not_found().unspecified(),
            None => None,
            Some(repo) => self.route(method, &rest, &call, repo),
        };
        reply.unwrap_or_else(|| {
            let message = format!("{method} {path}: not an endpoint the fake GitHub implements");
            st.violations.push(Violation {
                method: method.to_string(),
                path: path.to_string(),
                message: "not an endpoint the fake GitHub implements".into(),
            });
            error(404, &message).unspecified()
        })
    }

    fn view<'a>(&'a self, full: &'a str, repo: &'a Repo) -> View<'a> {
        View {
            tpl: &self.tpl,
            api: &self.api,
            full,
            repo,
        }
    }

    fn route(&self, method: &str, rest: &[&str], c: &Call, r: &mut Repo) -> Option<Reply> {
        let number = |s: &str| s.parse::<u64>().ok();
        Some(match (method, rest) {
            ("GET", []) => Reply::new(200, self.view(c.full, r).repository()),
            ("GET", ["git", "ref", name @ ..]) if !name.is_empty() => {
                self.get_ref(c, r, &name.join("/"))
            }
            ("POST", ["git", "refs"]) => self.create_ref(c, r),
            ("PATCH", ["git", "refs", name @ ..]) if !name.is_empty() => {
                self.update_ref(c, r, &name.join("/"))
            }
            ("DELETE", ["git", "refs", name @ ..]) if !name.is_empty() => {
                delete_ref(r, &name.join("/"))
            }
            ("POST", ["git", "blobs"]) => self.create_blob(c, r),
            ("GET", ["git", "commits", sha]) => match r.commits.contains_key(*sha) {
                true => Reply::new(200, self.view(c.full, r).commit(sha)),
                false => not_found(),
            },
            ("POST", ["git", "commits"]) => self.create_commit(c, r),
            ("POST", ["git", "trees"]) => self.create_tree(c, r),
            ("GET", ["git", "trees", sha]) => self.get_tree(c, r, sha),
            ("GET", ["contents", path @ ..]) => self.get_content(c, r, &path.join("/")),
            ("GET", ["pulls"]) => self.list_pulls(c, r),
            ("POST", ["pulls"]) => self.create_pull(c, r),
            ("GET", ["pulls", n]) => match number(n).and_then(|n| r.items.get(&n)) {
                Some(item) if item.pr.is_some() => {
                    Reply::new(200, self.view(c.full, r).pull(item, true))
                }
                _ => not_found(),
            },
            ("PATCH", ["pulls", n]) => self.update_pull(c, r, number(n)?),
            ("GET", ["pulls", n, "commits"]) => self.pull_commits(c, r, number(n)?),
            ("GET", ["issues"]) => self.list_issues(c, r),
            ("POST", ["issues"]) => self.create_issue(c, r),
            ("PATCH", ["issues", "comments", id]) => self.update_comment(c, r, number(id)?),
            ("GET", ["issues", n]) => match number(n).and_then(|n| r.items.get(&n)) {
                Some(item) => Reply::new(200, self.view(c.full, r).issue(item)),
                None => not_found(),
            },
            ("PATCH", ["issues", n]) => self.update_issue(c, r, number(n)?),
            ("POST", ["issues", n, "labels"]) => self.add_labels(c, r, number(n)?),
            ("GET", ["issues", n, "comments"]) => self.list_comments(c, r, number(n)?),
            ("POST", ["issues", n, "comments"]) => self.create_comment(c, r, number(n)?),
            _ => return None,
        })
    }

    // -- git ------------------------------------------------------------------

    fn get_ref(&self, c: &Call, r: &Repo, name: &str) -> Reply {
        match r.refs.get(name) {
            Some(sha) => Reply::new(200, self.view(c.full, r).git_ref(name, sha)),
            None => not_found(),
        }
    }

    fn create_ref(&self, c: &Call, r: &mut Repo) -> Reply {
        let (Some(full_ref), Some(sha)) = (c.str("ref"), c.str("sha")) else {
            return missing(
                "Reference",
                if c.str("ref").is_none() { "ref" } else { "sha" },
            );
        };
        let Some(name) = full_ref.strip_prefix("refs/").filter(|n| n.contains('/')) else {
            return error(422, &format!("{full_ref} is not a valid ref name."));
        };
        if !r.commits.contains_key(sha) {
            return error(422, "Object does not exist");
        }
        if r.refs.contains_key(name) {
            return error(422, "Reference already exists");
        }
        r.refs.insert(name.to_string(), sha.to_string());
        Reply::new(201, self.view(c.full, r).git_ref(name, sha))
    }

    fn update_ref(&self, c: &Call, r: &mut Repo, name: &str) -> Reply {
        let Some(sha) = c.str("sha") else {
            return missing("Reference", "sha");
        };
        let Some(old) = r.refs.get(name).cloned() else {
            return error(422, "Reference does not exist");
        };
        if !r.commits.contains_key(sha) {
            return error(422, "Object does not exist");
        }
        let force = c
            .body
            .get("force")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !force && !r.ancestry(sha).contains(&old) {
            return error(422, "Update is not a fast forward");
        }
        r.refs.insert(name.to_string(), sha.to_string());
        Reply::new(200, self.view(c.full, r).git_ref(name, sha))
    }

    fn create_blob(&self, c: &Call, r: &mut Repo) -> Reply {
        let Some(content) = c.str("content") else {
            return missing("Blob", "content");
        };
        let data = match c.str("encoding").unwrap_or("utf-8") {
            "utf-8" | "utf8" => content.as_bytes().to_vec(),
            "base64" => match base64_decode(content) {
                Some(d) => d,
                None => return error(422, "Invalid base64 content"),
            },
            other => return error(422, &format!("encoding {other} is not supported")),
        };
        let sha = r.store_blob(data);
        Reply::new(
            201,
            json!({"url": format!("{}/repos/{}/git/blobs/{sha}", self.api, c.full), "sha": sha}),
        )
    }

    fn create_tree(&self, c: &Call, r: &mut Repo) -> Reply {
        let mut tree = match c.str("base_tree") {
            Some(base) => match r.trees.get(base) {
                Some(t) => t.clone(),
                None => return error(422, &format!("base_tree {base} is not a tree")),
            },
            None => Tree::new(),
        };
        let Some(entries) = c.body.get("tree").and_then(Value::as_array) else {
            return missing("Tree", "tree");
        };
        for e in entries {
            let Some(path) = e.get("path").and_then(Value::as_str) else {
                return missing("Tree", "tree.path");
            };
            let path = path.trim_matches('/').to_string();
            let mode = e.get("mode").and_then(Value::as_str).unwrap_or("100644");
            let kind = e.get("type").and_then(Value::as_str).unwrap_or("blob");
            let content = e.get("content").and_then(Value::as_str);
            let sha = e.get("sha");
            if content.is_some() && sha.is_some_and(|s| !s.is_null()) {
                return error(422, "tree.sha and tree.content cannot both be given");
            }
            if let Some(text) = content {
                let entry = r.file_entry(text.as_bytes());
                tree.insert(
                    path,
                    Entry {
                        mode: mode.into(),
                        ..entry
                    },
                );
                continue;
            }
            match sha.and_then(Value::as_str) {
                // A null sha deletes the path, and a directory with all in it.
                None => {
                    let prefix = format!("{path}/");
                    tree.retain(|p, _| *p != path && !p.starts_with(&prefix));
                }
                Some(sha) if kind == "tree" => {
                    let Some(sub) = r.trees.get(sha) else {
                        return error(422, &format!("tree.sha {sha} is not a valid tree"));
                    };
                    for (p, e) in sub {
                        tree.insert(format!("{path}/{p}"), e.clone());
                    }
                }
                Some(sha) => {
                    if kind == "blob" && !r.blobs.contains_key(sha) {
                        return error(422, &format!("tree.sha {sha} is not a valid blob"));
                    }
                    let entry = Entry {
                        mode: mode.into(),
                        kind: kind.into(),
                        sha: sha.into(),
                    };
                    tree.insert(path, entry);
                }
            }
        }
        let sha = r.store_tree(tree);
        Reply::new(201, self.view(c.full, r).tree(&sha, false))
    }

    fn get_tree(&self, c: &Call, r: &Repo, sha: &str) -> Reply {
        // Like GitHub, a commit or branch stands for its tree.
        let tree = if r.trees.contains_key(sha) {
            sha.to_string()
        } else {
            match r.resolve(sha) {
                Some(commit) => r.commits[&commit].tree.clone(),
                None => return not_found(),
            }
        };
        let recursive = c
            .query
            .get("recursive")
            .is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
        Reply::new(200, self.view(c.full, r).tree(&tree, recursive))
    }

    fn create_commit(&self, c: &Call, r: &mut Repo) -> Reply {
        let (Some(message), Some(tree)) = (c.str("message"), c.str("tree")) else {
            return missing(
                "Commit",
                if c.str("message").is_none() {
                    "message"
                } else {
                    "tree"
                },
            );
        };
        if !r.trees.contains_key(tree) {
            return error(422, "Tree SHA does not exist");
        }
        let parents: Vec<String> = c
            .body
            .get("parents")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if parents.iter().any(|p| !r.commits.contains_key(p)) {
            return error(422, "Parent SHA does not exist or is not a commit object");
        }
        let person = |key: &str| {
            let v = c.body.get(key)?;
            Some(Person {
                name: v.get("name")?.as_str()?.to_string(),
                email: v.get("email")?.as_str()?.to_string(),
                date: v
                    .get("date")
                    .and_then(Value::as_str)
                    .map_or_else(now, str::to_string),
            })
        };
        let author = person("author").unwrap_or_else(Person::bot);
        let committer = person("committer").unwrap_or_else(|| author.clone());
        let sha = r.store_commit(Commit {
            tree: tree.to_string(),
            parents,
            message: message.to_string(),
            author,
            committer,
        });
        Reply::new(201, self.view(c.full, r).commit(&sha))
    }

    fn get_content(&self, c: &Call, r: &Repo, path: &str) -> Reply {
        let git_ref = c.query.get("ref").unwrap_or("main");
        let Some(tree) = r.tree_at(git_ref) else {
            return error(404, &format!("No commit found for the ref {git_ref}"));
        };
        let path = path.trim_matches('/');
        let view = self.view(c.full, r);
        if let Some(e) = tree.get(path) {
            return Reply::new(200, view.file_content(path, git_ref, e));
        }
        let prefix = format!("{path}/");
        if path.is_empty() || tree.keys().any(|p| p.starts_with(&prefix)) {
            return Reply::new(200, view.dir_content(path, git_ref, tree));
        }
        not_found()
    }

    // -- pulls and issues -------------------------------------------------------

    /// One page of `items`, with GitHub's `Link` header when there are
    /// others.
    fn page(&self, c: &Call, items: Vec<Value>) -> Reply {
        let per_page = c.query.num("per_page").unwrap_or(30).clamp(1, 100);
        let page = c.query.num("page").unwrap_or(1).max(1);
        let last = items.len().div_ceil(per_page).max(1);
        let items: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        let url = |n: usize| format!("<{}{}?{}>", self.api, c.path, c.query.with_page(n));
        let mut links = vec![];
        if page < last {
            links.push(format!("{}; rel=\"next\"", url(page + 1)));
            links.push(format!("{}; rel=\"last\"", url(last)));
        }
        if page > 1 {
            links.push(format!("{}; rel=\"first\"", url(1)));
            links.push(format!("{}; rel=\"prev\"", url(page - 1)));
        }
        let mut reply = Reply::new(200, Value::Array(items));
        if !links.is_empty() {
            reply.headers.push(("link".into(), links.join(", ")));
        }
        reply
    }

    /// Items in the order `sort` and `direction` ask (newest first by
    /// default, as GitHub lists).
    fn sorted<'r>(c: &Call, mut items: Vec<&'r Item>) -> Vec<&'r Item> {
        match c.query.get("sort") {
            Some("updated") => {
                items.sort_by(|a, b| (&a.updated_at, a.number).cmp(&(&b.updated_at, b.number)))
            }
            _ => items.sort_by_key(|i| i.number),
        }
        if c.query.get("direction") != Some("asc") {
            items.reverse();
        }
        items
    }

    fn state_matches(c: &Call, item: &Item) -> bool {
        match c.query.get("state").unwrap_or("open") {
            "all" => true,
            state => item.state == state,
        }
    }

    fn list_pulls(&self, c: &Call, r: &Repo) -> Reply {
        let owner = c.full.split('/').next().unwrap_or_default();
        let head = c.query.get("head").map(|h| match h.split_once(':') {
            Some((o, branch)) => (o.to_string(), branch.to_string()),
            None => (owner.to_string(), h.to_string()),
        });
        let items = r.items.values().filter(|item| {
            let Some(pr) = &item.pr else { return false };
            Self::state_matches(c, item)
                && head
                    .as_ref()
                    .is_none_or(|(o, b)| o == owner && *b == pr.head)
                && c.query.get("base").is_none_or(|b| b == pr.base)
        });
        let view = self.view(c.full, r);
        let items = Self::sorted(c, items.collect())
            .into_iter()
            .map(|i| view.pull(i, false))
            .collect();
        self.page(c, items)
    }

    fn create_pull(&self, c: &Call, r: &mut Repo) -> Reply {
        let owner = c.full.split('/').next().unwrap_or_default().to_string();
        let (Some(title), Some(head), Some(base)) = (c.str("title"), c.str("head"), c.str("base"))
        else {
            let field = ["title", "head", "base"]
                .into_iter()
                .find(|f| c.str(f).is_none());
            return missing("PullRequest", field.unwrap_or("title"));
        };
        let head = match head.split_once(':') {
            Some((o, b)) if o == owner => b,
            Some(_) => {
                return invalid(
                    json!([{"resource": "PullRequest", "field": "head", "code": "invalid"}]),
                )
            }
            None => head,
        };
        let (Some(head_sha), Some(base_sha)) = (
            r.refs.get(&format!("heads/{head}")).cloned(),
            r.refs.get(&format!("heads/{base}")).cloned(),
        ) else {
            let field = if r.refs.contains_key(&format!("heads/{head}")) {
                "base"
            } else {
                "head"
            };
            return invalid(
                json!([{"resource": "PullRequest", "field": field, "code": "invalid"}]),
            );
        };
        let taken = r.items.values().any(|i| {
            i.state == "open"
                && i.pr
                    .as_ref()
                    .is_some_and(|p| p.head == head && p.base == base)
        });
        if taken {
            let message = format!("A pull request already exists for {owner}:{head}.");
            return invalid(
                json!([{"resource": "PullRequest", "code": "custom", "message": message}]),
            );
        }
        if r.commits_between(&base_sha, &head_sha).is_empty() {
            let message = format!("No commits between {base} and {head}");
            return invalid(
                json!([{"resource": "PullRequest", "code": "custom", "message": message}]),
            );
        }
        let draft = c
            .body
            .get("draft")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let maintainer_can_modify = c
            .body
            .get("maintainer_can_modify")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let number = r.open_pull_item(
            title,
            c.str("body").unwrap_or_default(),
            BOT,
            (head, base, head_sha),
            (draft, maintainer_can_modify),
        );
        Reply::new(201, self.view(c.full, r).pull(&r.items[&number], true))
    }

    fn update_pull(&self, c: &Call, r: &mut Repo, number: u64) -> Reply {
        if r.items.get(&number).is_none_or(|i| i.pr.is_none()) {
            return not_found();
        }
        if let Some(base) = c.str("base") {
            if !r.refs.contains_key(&format!("heads/{base}")) {
                return invalid(
                    json!([{"resource": "PullRequest", "field": "base", "code": "invalid"}]),
                );
            }
        }
        if c.str("state") == Some("open") {
            let pr = r.items[&number].pr.as_ref().expect("checked");
            if pr.merged_at.is_some() || !r.refs.contains_key(&format!("heads/{}", pr.head)) {
                return error(
                    422,
                    "state cannot be changed. The branch has been deleted or merged.",
                );
            }
        }
        let item = r.items.get_mut(&number).expect("checked");
        edit_item(item, c);
        if let Some(base) = c.str("base") {
            item.pr.as_mut().expect("checked").base = base.to_string();
        }
        Reply::new(200, self.view(c.full, r).pull(&r.items[&number], true))
    }

    fn pull_commits(&self, c: &Call, r: &Repo, number: u64) -> Reply {
        let Some(pr) = r.items.get(&number).and_then(|i| i.pr.as_ref()) else {
            return not_found();
        };
        let view = self.view(c.full, r);
        let commits = r.commits_between(&r.base_sha(pr), &r.head_sha(pr));
        let items = commits.iter().map(|sha| view.listed_commit(sha)).collect();
        self.page(c, items)
    }

    fn list_issues(&self, c: &Call, r: &Repo) -> Reply {
        let labels: Vec<&str> = c
            .query
            .get("labels")
            .map(|l| {
                l.split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let items = r.items.values().filter(|item| {
            Self::state_matches(c, item)
                && labels.iter().all(|l| item.labels.iter().any(|x| x == l))
                && c.query.get("creator").is_none_or(|u| u == item.user)
                && c.query
                    .get("since")
                    .is_none_or(|s| item.updated_at.as_str() >= s)
        });
        let view = self.view(c.full, r);
        let items = Self::sorted(c, items.collect())
            .into_iter()
            .map(|i| view.issue(i))
            .collect();
        self.page(c, items)
    }

    fn create_issue(&self, c: &Call, r: &mut Repo) -> Reply {
        let Some(title) = c.str("title") else {
            return missing("Issue", "title");
        };
        let labels = label_names(c.body.get("labels"));
        let number = r.add_issue(title, c.str("body").map(str::to_string), labels, BOT);
        Reply::new(201, self.view(c.full, r).issue(&r.items[&number]))
    }

    fn update_issue(&self, c: &Call, r: &mut Repo, number: u64) -> Reply {
        let labels = c.body.get("labels").map(|l| label_names(Some(l)));
        for l in labels.iter().flatten() {
            r.labels.entry(l.clone()).or_insert_with(next_id);
        }
        let Some(item) = r.items.get_mut(&number) else {
            return not_found();
        };
        edit_item(item, c);
        if let Some(labels) = labels {
            item.labels = labels;
        }
        Reply::new(200, self.view(c.full, r).issue(&r.items[&number]))
    }

    fn add_labels(&self, c: &Call, r: &mut Repo, number: u64) -> Reply {
        // Both `{"labels": [...]}` and a bare list are GitHub's.
        let given = match &c.body {
            Value::Array(_) => label_names(Some(&c.body)),
            body => label_names(body.get("labels")),
        };
        if given.is_empty() {
            return missing("Label", "labels");
        }
        for l in &given {
            r.labels.entry(l.clone()).or_insert_with(next_id);
        }
        let Some(item) = r.items.get_mut(&number) else {
            return not_found();
        };
        for l in given {
            if !item.labels.contains(&l) {
                item.labels.push(l);
            }
        }
        item.updated_at = now();
        let view = self.view(c.full, r);
        Reply::new(200, view.labels(&r.items[&number]))
    }

    fn list_comments(&self, c: &Call, r: &Repo, number: u64) -> Reply {
        if !r.items.contains_key(&number) {
            return not_found();
        }
        let view = self.view(c.full, r);
        let items = r
            .comments
            .values()
            .filter(|x| x.issue == number)
            .filter(|x| {
                c.query
                    .get("since")
                    .is_none_or(|s| x.updated_at.as_str() >= s)
            })
            .map(|x| view.comment(x))
            .collect();
        self.page(c, items)
    }

    fn create_comment(&self, c: &Call, r: &mut Repo, number: u64) -> Reply {
        let Some(body) = c.str("body") else {
            return missing("IssueComment", "body");
        };
        let Some(item) = r.items.get_mut(&number) else {
            return not_found();
        };
        let now = now();
        item.updated_at = now.clone();
        let id = next_id();
        r.comments.insert(
            id,
            Comment {
                id,
                issue: number,
                body: body.to_string(),
                user: BOT.into(),
                created_at: now.clone(),
                updated_at: now,
            },
        );
        Reply::new(201, self.view(c.full, r).comment(&r.comments[&id]))
    }

    fn update_comment(&self, c: &Call, r: &mut Repo, id: u64) -> Reply {
        let Some(body) = c.str("body") else {
            return missing("IssueComment", "body");
        };
        let Some(comment) = r.comments.get_mut(&id) else {
            return not_found();
        };
        comment.body = body.to_string();
        comment.updated_at = now();
        Reply::new(200, self.view(c.full, r).comment(&r.comments[&id]))
    }
}

fn delete_ref(r: &mut Repo, name: &str) -> Reply {
    let Some(sha) = r.refs.remove(name) else {
        return error(422, "Reference does not exist");
    };
    // GitHub closes the open pull requests of a deleted branch.
    if let Some(branch) = name.strip_prefix("heads/") {
        let now = now();
        for item in r.items.values_mut() {
            if let Some(pr) = item.pr.as_mut().filter(|p| p.head == branch) {
                pr.head_sha = sha.clone();
                if item.state == "open" {
                    item.state = "closed".into();
                    item.closed_at = Some(now.clone());
                    item.updated_at = now.clone();
                }
            }
        }
    }
    Reply::empty(204)
}

/// Title, body and state, as both PATCH endpoints take them.
fn edit_item(item: &mut Item, c: &Call) {
    if let Some(title) = c.str("title") {
        item.title = title.to_string();
    }
    if let Some(body) = c.body.get("body") {
        item.body = body.as_str().map(str::to_string);
    }
    let now = now();
    match c.str("state") {
        Some("closed") if item.state != "closed" => {
            item.state = "closed".into();
            item.closed_at = Some(now.clone());
            item.closed_by = Some(BOT.into());
            if item.pr.is_none() {
                item.state_reason = Some(c.str("state_reason").unwrap_or("completed").to_string());
            }
        }
        Some("open") if item.state != "open" => {
            item.state = "open".into();
            item.closed_at = None;
            item.closed_by = None;
            if item.pr.is_none() {
                item.state_reason = Some("reopened".into());
            }
        }
        _ => {
            if let Some(reason) = c.str("state_reason") {
                item.state_reason = Some(reason.to_string());
            }
        }
    }
    item.updated_at = now;
}

/// Label names from a list of names or of `{name}` objects.
fn label_names(v: Option<&Value>) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    for l in v.and_then(Value::as_array).into_iter().flatten() {
        let name = l.as_str().or_else(|| l.get("name").and_then(Value::as_str));
        if let Some(name) = name.filter(|n| !names.iter().any(|x| x == n)) {
            names.push(name.to_string());
        }
    }
    names
}

// ---------------------------------------------------------------------------
// Encodings.

/// Percent-encodes everything but unreserved characters, as GitHub's own
/// URLs do for one path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Encodes each segment of a path, keeping its slashes.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A query string's encoding, where `+` is a space.
fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(BASE64[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 in lines of 60 characters, each ending in a newline, as GitHub
/// sends file contents.
fn base64_lines(data: &[u8]) -> String {
    let text = base64_encode(data);
    let mut out = String::with_capacity(text.len() + text.len() / 60 + 1);
    for line in text.as_bytes().chunks(60) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out
}

/// Decodes base64, ignoring whitespace (GitHub's line breaks); `None` when
/// it is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = vec![];
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// The fake checked against the description, through Prism.

mod tests {
    use super::*;

    /// A blocking client of the fake, for the tests of the fake itself.
    struct Client {
        http: reqwest::Client,
        runtime: tokio::runtime::Runtime,
        base: String,
        token: Option<&'static str>,
    }

    struct Answer {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: Value,
    }

    impl Client {
        fn new(github: &GitHub) -> Client {
            Client {
                http: reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(90))
                    .build()
                    .unwrap(),
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
                base: github.api_url(),
                token: Some("t0ken"),
            }
        }

        /// `body` is sent as it is, JSON or not.
        fn raw(&self, method: &str, path: &str, body: Option<String>) -> Answer {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let mut req = self
                .http
                .request(method, format!("{}{path}", self.base))
                .header("accept", "application/vnd.github+json")
                .header("user-agent", "tend-tests");
            if let Some(token) = self.token {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            if let Some(body) = body {
                req = req.header("content-type", "application/json").body(body);
            }
            self.runtime.block_on(async {
                let resp = req.send().await.expect("an answer");
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let text = resp.text().await.unwrap();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                Answer {
                    status,
                    headers,
                    body,
                }
            })
        }

        fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
            self.raw(method, path, body.map(|b| b.to_string()))
        }

        /// A call that must answer `status`; its body.
        fn expect(&self, status: u16, method: &str, path: &str, body: Option<Value>) -> Value {
            let a = self.call(method, path, body);
            assert_eq!(a.status, status, "{method} {path}: {:#}", a.body);
            a.body
        }
    }

    #[test]
    fn the_github_fake_answers_as_github_describes() {
        let gh = github();
        let repo = "fake/self-test";
        gh.create_repo(
            repo,
            &[
                ("README.md", "hello\n"),
                ("approvals/host.File/motd.yaml", "approved: []\n"),
            ],
        );
        let c = Client::new(gh);
        let r = format!("/repos/{repo}");

        let v = c.expect(200, "GET", &r, None);
        assert_eq!(v["full_name"], repo);
        assert_eq!(v["default_branch"], "main");

        // Git data.
        let main = c.expect(200, "GET", &format!("{r}/git/ref/heads%2Fmain"), None);
        let main_sha = main["object"]["sha"].as_str().unwrap().to_string();
        c.expect(404, "GET", &format!("{r}/git/ref/heads%2Fnone"), None);
        let commit = c.expect(200, "GET", &format!("{r}/git/commits/{main_sha}"), None);
        let tree_sha = commit["tree"]["sha"].as_str().unwrap().to_string();
        let tree = c.expect(
            200,
            "GET",
            &format!("{r}/git/trees/{tree_sha}?recursive=1"),
            None,
        );
        let paths: Vec<&str> = tree["tree"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "README.md",
                "approvals",
                "approvals/host.File",
                "approvals/host.File/motd.yaml"
            ]
        );
        let top = c.expect(200, "GET", &format!("{r}/git/trees/{tree_sha}"), None);
        assert_eq!(top["tree"].as_array().unwrap().len(), 2);
        let blob = c.expect(
            201,
            "POST",
            &format!("{r}/git/blobs"),
            Some(json!({"content": "kind: File\n", "encoding": "utf-8"})),
        );
        let blob64 = c.expect(
            201,
            "POST",
            &format!("{r}/git/blobs"),
            Some(json!({"content": base64_encode("zürich\n".as_bytes()), "encoding": "base64"})),
        );
        let new_tree = c.expect(
            201,
            "POST",
            &format!("{r}/git/trees"),
            Some(json!({"base_tree": tree_sha, "tree": [
                {"path": "desired/motd.yaml", "mode": "100644", "type": "blob", "sha": blob["sha"]},
                {"path": "desired/city.txt", "mode": "100644", "type": "blob", "sha": blob64["sha"]},
                {"path": "approvals/host.File/motd.yaml", "mode": "100644", "type": "blob",
                 "content": "approved: [motd]\n"},
                {"path": "README.md", "mode": "100644", "type": "blob", "sha": null},
            ]})),
        );
        let new_commit = c.expect(
            201,
            "POST",
            &format!("{r}/git/commits"),
            Some(json!({"message": "tend: review host.File/motd", "tree": new_tree["sha"],
                        "parents": [main_sha], "author": {"name": "tend", "email": "tend@example.com"}})),
        );
        let sha = new_commit["sha"].as_str().unwrap().to_string();
        let branch = "tend/review/host.File/motd";
        let encoded = "heads%2Ftend%2Freview%2Fhost.File%2Fmotd";
        let create = json!({"ref": format!("refs/heads/{branch}"), "sha": main_sha});
        c.expect(201, "POST", &format!("{r}/git/refs"), Some(create.clone()));
        let again = c.expect(422, "POST", &format!("{r}/git/refs"), Some(create));
        assert_eq!(again["message"], "Reference already exists");
        let moved = c.expect(
            200,
            "PATCH",
            &format!("{r}/git/refs/{encoded}"),
            Some(json!({"sha": sha, "force": true})),
        );
        assert_eq!(moved["object"]["sha"], sha.as_str());
        let file = c.expect(
            200,
            "GET",
            &format!("{r}/contents/desired%2Fcity.txt?ref={}", encode(branch)),
            None,
        );
        assert_eq!(
            base64_decode(file["content"].as_str().unwrap()).unwrap(),
            "zürich\n".as_bytes()
        );
        let dir = c.expect(
            200,
            "GET",
            &format!("{r}/contents/desired?ref={}", encode(branch)),
            None,
        );
        assert_eq!(dir.as_array().unwrap().len(), 2);
        c.expect(
            404,
            "GET",
            &format!("{r}/contents/README.md?ref={}", encode(branch)),
            None,
        );
        assert_eq!(
            gh.file(repo, branch, "desired/motd.yaml").as_deref(),
            Some("kind: File\n")
        );
        assert_eq!(gh.files(repo, "main").len(), 2);

        // Pull requests.
        let open = json!({"title": "tend: host.File/motd", "head": branch, "base": "main",
                          "body": "- [ ] approve"});
        let pr = c.expect(201, "POST", &format!("{r}/pulls"), Some(open.clone()));
        let n = pr["number"].as_u64().unwrap();
        assert_eq!(pr["head"]["sha"], sha.as_str());
        let dup = c.expect(422, "POST", &format!("{r}/pulls"), Some(open));
        assert_eq!(
            dup["errors"][0]["message"],
            format!("A pull request already exists for fake:{branch}.")
        );
        let list = c.expect(
            200,
            "GET",
            &format!(
                "{r}/pulls?state=open&head={}&base=main&per_page=100",
                encode(&format!("fake:{branch}"))
            ),
            None,
        );
        assert_eq!(list.as_array().unwrap().len(), 1);
        let got = c.expect(200, "GET", &format!("{r}/pulls/{n}"), None);
        assert_eq!(got["body"], "- [ ] approve");
        let edited = c.expect(
            200,
            "PATCH",
            &format!("{r}/pulls/{n}"),
            Some(json!({"title": "tend: host.File/motd (2)", "body": "- [x] approve"})),
        );
        assert_eq!(edited["title"], "tend: host.File/motd (2)");
        let commits = c.expect(200, "GET", &format!("{r}/pulls/{n}/commits"), None);
        assert_eq!(commits.as_array().unwrap().len(), 1);
        assert_eq!(commits[0]["sha"], sha.as_str());

        // Issues, labels and comments.
        let issue = c.expect(
            201,
            "POST",
            &format!("{r}/issues"),
            Some(json!({"title": "tend: stuck", "body": "details", "labels": ["tend", "stuck"]})),
        );
        let i = issue["number"].as_u64().unwrap();
        let labelled = c.expect(
            200,
            "GET",
            &format!("{r}/issues?state=open&labels=tend&per_page=50&page=1"),
            None,
        );
        assert_eq!(labelled.as_array().unwrap().len(), 1);
        let all = c.expect(200, "GET", &format!("{r}/issues?state=all"), None);
        assert_eq!(all.as_array().unwrap().len(), 2);
        assert!(all
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["pull_request"].is_object()));
        c.expect(200, "GET", &format!("{r}/issues/{i}"), None);
        let added = c.expect(
            200,
            "POST",
            &format!("{r}/issues/{n}/labels"),
            Some(json!({"labels": ["tend"]})),
        );
        assert_eq!(added[0]["name"], "tend");
        let comment = c.expect(
            201,
            "POST",
            &format!("{r}/issues/{n}/comments"),
            Some(json!({"body": "plan: 1 change"})),
        );
        let id = comment["id"].as_u64().unwrap();
        c.expect(
            200,
            "PATCH",
            &format!("{r}/issues/comments/{id}"),
            Some(json!({"body": "plan: 2 changes"})),
        );
        let comments = c.expect(200, "GET", &format!("{r}/issues/{n}/comments"), None);
        assert_eq!(comments[0]["body"], "plan: 2 changes");
        let closed = c.expect(
            200,
            "PATCH",
            &format!("{r}/issues/{i}"),
            Some(json!({"state": "closed", "state_reason": "not_planned", "labels": ["tend"]})),
        );
        assert_eq!(closed["state"], "closed");
        for k in 0..3 {
            c.expect(
                201,
                "POST",
                &format!("{r}/issues"),
                Some(json!({"title": format!("more {k}")})),
            );
        }
        let page = c.call(
            "GET",
            &format!("{r}/issues?state=all&per_page=2&page=2"),
            None,
        );
        assert_eq!(page.status, 200);
        let link = page.headers["link"].to_str().unwrap();
        assert!(
            link.contains("page=3>; rel=\"next\"") && link.contains("rel=\"prev\""),
            "{link}"
        );

        // The test side sees what the client did, and acts as people do.
        let pulls = gh.pulls(repo);
        assert_eq!(pulls.len(), 1);
        assert_eq!(
            (pulls[0].body.as_str(), pulls[0].comments.len()),
            ("- [x] approve", 1)
        );
        assert_eq!(gh.issues(repo).len(), 4);
        gh.push_commit(repo, branch, "alice", &[("desired/extra.yaml", "x: 1\n")]);
        assert_eq!(
            c.expect(200, "GET", &format!("{r}/pulls/{n}/commits"), None)
                .as_array()
                .unwrap()
                .len(),
            2
        );
        gh.set_body(repo, n, "- [x] approve\n- [x] really");
        gh.merge(repo, n);
        let merged = c.expect(200, "GET", &format!("{r}/pulls/{n}"), None);
        assert_eq!(
            (merged["merged"].as_bool(), merged["state"].as_str()),
            (Some(true), Some("closed"))
        );
        assert_eq!(
            gh.file(repo, "main", "desired/extra.yaml").as_deref(),
            Some("x: 1\n")
        );
        c.expect(204, "DELETE", &format!("{r}/git/refs/{encoded}"), None);
        assert!(!gh.branch_exists(repo, branch));
        c.expect(422, "DELETE", &format!("{r}/git/refs/{encoded}"), None);

        // What GitHub answers beyond its description is not held against
        // the fake.
        gh.fail_next(
            repo,
            "GET",
            "/pulls",
            403,
            json!({"message": "API rate limit exceeded", "documentation_url": "https://docs.github.com/rest"}),
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")],
        );
        let limited = c.call("GET", &format!("{r}/pulls?state=all"), None);
        assert_eq!(limited.status, 403);
        assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
        let anonymous = Client {
            token: None,
            ..Client::new(gh)
        };
        assert_eq!(anonymous.call("GET", &r, None).status, 401);
        c.expect(404, "GET", "/repos/fake/none", None);

        assert_eq!(
            gh.requests(repo)
                .iter()
                .filter(|q| q.token.as_deref() == Some("t0ken"))
                .count(),
            gh.requests(repo).len() - 1
        );
        assert!(gh.writes(repo) >= 20);
        gh.assert_no_violations(repo);
    }

    #[test]
    fn prism_reports_what_breaks_githubs_description() {
        let gh = github();
        let repo = "fake/broken";
        gh.create_repo(repo, &[("README.md", "hi\n")]);
        let c = Client::new(gh);
        let r = format!("/repos/{repo}");
        // An answer missing what the schema requires.
        gh.answer_next(
            repo,
            "GET",
            "/pulls/7",
            200,
            json!({"number": 7}),
            &[],
            true,
        );
        c.call("GET", &format!("{r}/pulls/7"), None);
        // A request missing what the schema requires, and one of a type it
        // does not allow.
        c.call(
            "POST",
            &format!("{r}/pulls"),
            Some(json!({"title": "t", "base": "main"})),
        );
        c.call("GET", &format!("{r}/issues?per_page=many"), None);
        // An endpoint GitHub does not have.
        c.call("GET", &format!("{r}/no-such-thing"), None);
        // A body that is not JSON never reaches GitHub.
        c.raw("POST", &format!("{r}/git/refs"), Some("{\"ref\":".into()));

        // Every endpoint's answers are checked: an empty one never passes.
        // (Prism skips a schema it cannot compile without saying so.)
        let sha = "a".repeat(40);
        let endpoints: &[(&str, &str, u16, Option<Value>)] = &[
            ("GET", "", 200, None),
            ("GET", "/git/ref/heads%2Fmain", 200, None),
            (
                "POST",
                "/git/refs",
                201,
                Some(json!({"ref": "refs/heads/x", "sha": sha})),
            ),
            (
                "PATCH",
                "/git/refs/heads%2Fx",
                200,
                Some(json!({"sha": sha})),
            ),
            ("POST", "/git/blobs", 201, Some(json!({"content": "x"}))),
            ("GET", &format!("/git/commits/{sha}"), 200, None),
            ("POST", "/git/trees", 201, Some(json!({"tree": []}))),
            ("GET", &format!("/git/trees/{sha}?recursive=1"), 200, None),
            (
                "POST",
                "/git/commits",
                201,
                Some(json!({"message": "m", "tree": sha})),
            ),
            ("GET", "/contents/a%2Fb?ref=main", 200, None),
            ("GET", "/pulls?state=all", 200, None),
            (
                "POST",
                "/pulls",
                201,
                Some(json!({"title": "t", "head": "x", "base": "main"})),
            ),
            ("GET", "/pulls/1", 200, None),
            ("PATCH", "/pulls/1", 200, Some(json!({"body": "b"}))),
            ("GET", "/pulls/1/commits", 200, None),
            ("GET", "/issues", 200, None),
            ("POST", "/issues", 201, Some(json!({"title": "t"}))),
            ("GET", "/issues/1", 200, None),
            ("PATCH", "/issues/1", 200, Some(json!({"body": "b"}))),
            (
                "POST",
                "/issues/1/labels",
                200,
                Some(json!({"labels": ["a"]})),
            ),
            ("GET", "/issues/1/comments", 200, None),
            (
                "POST",
                "/issues/1/comments",
                201,
                Some(json!({"body": "b"})),
            ),
            (
                "PATCH",
                "/issues/comments/1",
                200,
                Some(json!({"body": "b"})),
            ),
        ];
        let mut unchecked = vec![];
        for (method, rest, status, body) in endpoints {
            let path = format!("{r}{}", rest.split('?').next().unwrap());
            let before = gh.violations_of(repo).len();
            gh.answer_next(repo, method, &path, *status, json!([{}]), &[], true);
            c.call(method, &format!("{r}{rest}"), body.clone());
            if gh.violations_of(repo).len() == before {
                unchecked.push(format!("{method} {path}"));
            }
        }
        assert!(
            unchecked.is_empty(),
            "answers Prism did not check: {unchecked:?}"
        );

        let found = gh.violations_of(repo).join("\n");
        for expected in [
            "GET /repos/fake/broken/pulls/7: response.body: Response body must have required property 'title' (Error)",
            "POST /repos/fake/broken/pulls: request.body: Request body must have required property 'head' (Error)",
            "GET /repos/fake/broken/issues: request.query.per_page: Request query parameter per_page must be integer (Error)",
            "GET /repos/fake/broken/no-such-thing: request: Selected route not found (Warning)",
            "GET /repos/fake/broken/no-such-thing: not an endpoint the fake GitHub implements",
            "POST /repos/fake/broken/git/refs: Prism answered 400 Bad Request itself",
        ] {
            assert!(found.contains(expected), "missing `{expected}` in:\n{found}");
        }
        let panic = std::panic::catch_unwind(|| gh.assert_no_violations(repo));
        assert!(panic.is_err());
    }
}
