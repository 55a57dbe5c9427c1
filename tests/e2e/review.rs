//! Review through GitHub: the real binary against a stateful GitHub fake
//! behind Prism, which checks every request and response against GitHub's
//! OpenAPI description. Each test has a repository of its own.

use std::time::Duration;

use super::github::{github, GitHub, Pull, BOT, HUMAN};
use super::{file_doc, free_port, process_doc, wait_http, Workspace};

const TOKEN: &str = "ghp_test-token-never-printed";

/// A repository policy that asks a human before a managed file is changed.
const REVIEW_FILES: &str = "package tend\n\nreview contains \"a change to a managed file needs a human\" if {\n\tinput.action.target.kind == \"host.File\"\n\tinput.action.type == \"update\"\n}\n";

fn settings(repo: &str, extra: &str) -> String {
    format!(
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata:\n  name: settings\nspec:\n  policies:\n    dirs: [policies]\n  review:\n    github:\n      repository: {repo}\n      baseBranch: main\n      apiUrl: {}\n      labels: [tend]\n{extra}",
        github().api_url()
    )
}

/// A workspace whose desired state is also the fake repository's `main`.
struct Review {
    ws: Workspace,
    repo: String,
}

impl Review {
    fn new(name: &str, files: &[(&str, String)], extra: &str) -> Review {
        let ws = Workspace::new();
        let repo = format!("tend-e2e/{name}");
        let mut all: Vec<(String, String)> = vec![
            ("settings.yaml".into(), settings(&repo, extra)),
            ("policies/review.rego".into(), REVIEW_FILES.into()),
        ];
        all.extend(files.iter().map(|(p, t)| (p.to_string(), t.clone())));
        for (p, t) in &all {
            ws.write(p, t);
        }
        let refs: Vec<(&str, &str)> = all.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        github().create_repo(&repo, &refs);
        Review { ws, repo }
    }

    fn gh(&self) -> &'static GitHub {
        github()
    }

    fn apply(&self) -> super::Run {
        let mut c = self.ws.cmd();
        c.env("TEND_GITHUB_TOKEN", TOKEN)
            .env_remove("GITHUB_TOKEN")
            .args(["apply", "--format", "json"])
            .arg(self.ws.desired());
        super::Run::from(c.output().expect("run tend"))
    }

    fn pulls(&self) -> Vec<Pull> {
        self.gh().pulls(&self.repo)
    }

    fn open_pulls(&self) -> Vec<Pull> {
        self.pulls()
            .into_iter()
            .filter(|p| p.state == "open")
            .collect()
    }

    /// Brings what was merged on `main` into the local desired state, as a
    /// Git source would.
    fn pull_main(&self) {
        for (path, text) in self.gh().files(&self.repo, "main") {
            self.ws.write(&path, &text);
        }
    }

    fn drift(&self, text: &str) {
        std::fs::write(self.ws.path().join("www/motd.txt"), text).unwrap();
    }
}

impl Drop for Review {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.gh().assert_no_violations(&self.repo);
        }
    }
}

fn motd() -> (&'static str, String) {
    ("motd.yaml", file_doc("motd", "www/motd.txt", "hello\n"))
}

fn fingerprint_of(run: &super::Run, kind: &str, name: &str) -> String {
    run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"]["kind"] == kind && a["target"]["name"] == name)
        .unwrap_or_else(|| panic!("no action on {kind}/{name}: {}", run.stdout))["fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn drift_needing_review_opens_one_pull_request_and_the_next_pass_writes_nothing() {
    let r = Review::new("one-pr", &[motd()], "");
    r.apply().ok();
    assert!(r.pulls().is_empty(), "a create needs no review");
    r.drift("edited by hand\n");
    let run = r.apply();
    run.ok();
    let fp = fingerprint_of(&run, "host.File", "motd");
    let pulls = r.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let pr = &pulls[0];
    assert_eq!(pr.head_ref, "tend/review/host.File/motd");
    assert_eq!(pr.base_ref, "main");
    assert_eq!(pr.labels, ["tend"]);
    assert!(
        pr.body.contains(&format!("fingerprint={fp}")),
        "{}",
        pr.body
    );
    assert!(
        pr.body.contains("| update | low | **review** |"),
        "{}",
        pr.body
    );
    assert!(pr.body.contains("- [ ] keep the live value in Git instead"));
    let approval = r
        .gh()
        .file(&r.repo, &pr.head_ref, "approvals/host.File/motd.yaml")
        .expect("the approval document on the branch");
    assert!(
        approval.contains(&format!("fingerprint: \"{fp}\"")),
        "{approval}"
    );
    assert!(approval.contains("kind: Approval"));

    let writes = r.gh().writes(&r.repo);
    r.apply().ok();
    r.apply().ok();
    assert_eq!(
        r.gh().writes(&r.repo),
        writes,
        "an unchanged proposal writes nothing"
    );
    assert_eq!(r.pulls().len(), 1);

    // `tend review list` and the log of every GitHub operation.
    let list = r.ws.run_raw(&["review", "list"]);
    list.ok();
    assert!(
        list.stdout.contains(&format!("host.File/motd  {fp}  open")),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains(&format!("/pull/{}", pr.number)),
        "{}",
        list.stdout
    );
    let log = r.ws.run_raw(&["review", "log"]);
    log.ok();
    for op in [
        "create-blob",
        "create-tree",
        "create-commit",
        "create-branch",
        "open-pull-request",
        "label",
    ] {
        assert!(log.stdout.contains(op), "{op}: {}", log.stdout);
    }
}

#[test]
fn live_state_that_changes_again_updates_the_same_pull_request() {
    let r = Review::new("update-pr", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    let first = fingerprint_of(&r.apply(), "host.File", "motd");
    r.drift("edited again\n");
    let run = r.apply();
    run.ok();
    let second = fingerprint_of(&run, "host.File", "motd");
    assert_ne!(first, second);
    let pulls = r.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(pulls[0].body.contains(&format!("fingerprint={second}")));
    assert_eq!(
        pulls[0].comments.len(),
        1,
        "one status comment: {:#?}",
        pulls[0].comments
    );
    assert!(pulls[0].comments[0].contains(&first) && pulls[0].comments[0].contains(&second));
    let approval = r
        .gh()
        .file(&r.repo, &pulls[0].head_ref, "approvals/host.File/motd.yaml")
        .unwrap();
    assert!(approval.contains(&second), "{approval}");

    // A third change edits the same comment, never a new one.
    r.drift("and again\n");
    r.apply().ok();
    let pulls = r.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].comments.len(), 1, "{:#?}", pulls[0].comments);
}

#[test]
fn a_merged_approval_applies_the_change_once_and_the_journal_names_it() {
    let r = Review::new("merge", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    let fp = fingerprint_of(&r.apply(), "host.File", "motd");
    let pr = r.pulls()[0].clone();
    r.gh().merge(&r.repo, pr.number);
    r.pull_main();

    let run = r.apply();
    run.ok();
    let action = &run.json()["actions"][0];
    assert_eq!(action["decision"], "auto", "{action:#}");
    assert!(action["reasons"]
        .to_string()
        .contains("approved by a merged pull request"));
    assert_eq!(run.json()["results"]["actions"][0]["outcome"], "synced");
    assert_eq!(
        std::fs::read_to_string(r.ws.path().join("www/motd.txt")).unwrap(),
        "hello\n"
    );
    let history = r.ws.run_raw(&["history"]);
    assert!(
        history.stdout.contains("approved by")
            && history.stdout.contains("approvals/host.File/motd.yaml"),
        "{}",
        history.stdout
    );

    // The same drift again: the used approval authorises nothing more.
    r.drift("edited by hand\n");
    let again = r.apply();
    again.ok();
    assert_eq!(fingerprint_of(&again, "host.File", "motd"), fp);
    assert_eq!(
        again.json()["actions"][0]["decision"],
        "review",
        "{}",
        again.stdout
    );
    assert_eq!(
        std::fs::read_to_string(r.ws.path().join("www/motd.txt")).unwrap(),
        "edited by hand\n"
    );
    // A new pull request asks again, and its commit removes the used
    // approval's document in favour of a new one.
    let open = r.open_pulls();
    assert_eq!(open.len(), 1, "{:#?}", r.pulls());
    assert_ne!(open[0].number, pr.number);
    let doc = r
        .gh()
        .file(&r.repo, &open[0].head_ref, "approvals/host.File/motd.yaml")
        .unwrap();
    let old = r
        .gh()
        .file(&r.repo, "main", "approvals/host.File/motd.yaml")
        .unwrap();
    assert_ne!(doc, old, "a new approval (new expiry)");
}

#[test]
fn keep_live_makes_the_pull_request_a_minimal_edit_of_the_declaration() {
    let text = "# the message of the day\napiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: motd   # shown at login\nspec:\n  path: www/motd.txt\n  content: \"hello\\n\"   # keep it short\n  mode: '0644'\n";
    let r = Review::new("keep-live", &[("motd.yaml", text.to_string())], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.apply().ok();
    let pr = r.pulls()[0].clone();
    r.gh().set_body(
        &r.repo,
        pr.number,
        &pr.body
            .replace("- [ ] keep the live value", "- [x] keep the live value"),
    );
    r.apply().ok();
    let pr = r.pulls()[0].clone();
    assert!(pr.title.contains("keep the live state"), "{}", pr.title);
    let edited = r.gh().file(&r.repo, &pr.head_ref, "motd.yaml").unwrap();
    assert_eq!(
        edited,
        text.replace("\"hello\\n\"", "\"edited by hand\\n\""),
        "only the value changes"
    );
    assert!(
        r.gh()
            .file(&r.repo, &pr.head_ref, "approvals/host.File/motd.yaml")
            .is_none(),
        "keeping live approves nothing"
    );
    // Merged: Git now says what is live, and tend has nothing to do.
    r.gh().merge(&r.repo, pr.number);
    r.pull_main();
    let run = r.apply();
    run.ok();
    assert_eq!(
        run.json()["actions"].as_array().unwrap().len(),
        0,
        "{}",
        run.stdout
    );
}

#[test]
fn a_change_that_is_gone_closes_its_pull_request_but_a_failed_inventory_closes_nothing() {
    let r = Review::new("gone", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.apply().ok();
    let pr = r.pulls()[0].clone();
    // Fixed by hand, but this pass cannot read live state: nothing closes.
    r.drift("hello\n");
    let broken = settings(
        &r.repo,
        "  providers: [host, aws]\n  aws:\n    regions: [us-east-1]\n    endpointUrl: http://127.0.0.1:9\n",
    );
    r.ws.write("settings.yaml", &broken);
    r.ws.write(
        "bucket.yaml",
        "apiVersion: tend.dev/v1\nkind: aws.s3.Bucket\nmetadata:\n  name: logs\nspec: {}\n",
    );
    let mut c = r.ws.cmd();
    c.env("TEND_GITHUB_TOKEN", TOKEN)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .args(["apply"])
        .arg(r.ws.desired());
    let failed = super::Run::from(c.output().unwrap());
    failed.code(1);
    assert_eq!(
        r.open_pulls().len(),
        1,
        "an inventory failure closes nothing"
    );

    r.ws.remove("bucket.yaml");
    r.ws.write("settings.yaml", &settings(&r.repo, ""));
    r.apply().ok();
    let closed = &r.pulls()[0];
    assert_eq!(closed.state, "closed");
    assert!(!closed.merged);
    assert!(
        !r.gh().branch_exists(&r.repo, &pr.head_ref),
        "tend's branch is deleted"
    );
    assert_eq!(closed.comments.len(), 1, "{:#?}", closed.comments);

    // The drift comes back: tend withdrew the earlier one, so it asks again.
    r.drift("edited by hand\n");
    r.apply().ok();
    assert_eq!(r.open_pulls().len(), 1);
}

#[test]
fn a_pull_request_closed_unmerged_declines_the_change_until_it_differs() {
    let r = Review::new("declined", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.apply().ok();
    let pr = r.pulls()[0].clone();
    r.gh().close(&r.repo, pr.number);
    let writes = r.gh().writes(&r.repo);
    r.apply().ok();
    assert_eq!(r.pulls().len(), 1, "not reopened");
    assert_eq!(r.gh().writes(&r.repo), writes);
    assert!(r
        .ws
        .run_raw(&["review", "list"])
        .stdout
        .contains("declined"));
    // A different change is a new question.
    r.drift("something else\n");
    r.apply().ok();
    assert_eq!(r.open_pulls().len(), 1);
    assert_eq!(r.pulls().len(), 2);
}

/// M9: a comment that carries tend's hidden marker but is someone else's
/// is never edited; tend keeps its own comment.
#[test]
fn m9_a_comment_with_tends_marker_from_someone_else_is_never_edited() {
    let r = Review::new("m9-foreign-comment", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.apply().ok();
    let pr = r.pulls()[0].clone();
    let fake = "<!-- tend:status -->\nAll clear: nothing left to review.";
    let foreign = r.gh().comment_as(&r.repo, pr.number, HUMAN, fake);
    r.drift("edited again\n");
    let second = fingerprint_of(&r.apply(), "host.File", "motd");
    let comments = r.gh().comments_by(&r.repo, pr.number);
    assert!(
        comments.contains(&(HUMAN.to_string(), fake.to_string())),
        "{comments:#?}"
    );
    assert!(
        comments
            .iter()
            .any(|(who, body)| who == BOT && body.contains(&second)),
        "tend's own status comment: {comments:#?}"
    );
    let edited =
        r.gh().requests(&r.repo).iter().any(|q| {
            q.method == "PATCH" && q.path.ends_with(&format!("/issues/comments/{foreign}"))
        });
    assert!(!edited, "the foreign comment was edited");
}

/// M10: a commit pushed to tend's branch is noticed on the next pass even
/// while the pending change (its fingerprint) is unchanged, whatever author
/// name it claims: the proposal is blocked and the pull request says so.
#[test]
fn m10_a_push_to_tends_branch_is_noticed_while_the_change_is_unchanged() {
    let r = Review::new("m10-foreign-push", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.apply().ok();
    let pr = r.pulls()[0].clone();
    r.gh().push_commit(
        &r.repo,
        &pr.head_ref,
        "tend",
        &[("approvals/host.File/other.yaml", "# slipped in\n")],
    );
    r.apply().ok();
    let list = r.ws.run_raw(&["review", "list"]);
    assert!(list.stdout.contains("blocked"), "{}", list.stdout);
    let pr = &r.pulls()[0];
    assert!(
        pr.comments
            .iter()
            .any(|c| c.contains("commits that are not tend's")),
        "{:#?}",
        pr.comments
    );
}

#[test]
fn a_branch_with_a_human_commit_is_left_in_place_when_closing() {
    let r = Review::new("human-commit", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.apply().ok();
    let pr = r.pulls()[0].clone();
    r.gh()
        .push_commit(&r.repo, &pr.head_ref, "a human", &[("notes.txt", "mine\n")]);
    r.drift("hello\n");
    r.apply().ok();
    let closed = &r.pulls()[0];
    assert_eq!(closed.state, "closed");
    assert!(r.gh().branch_exists(&r.repo, &pr.head_ref));
    assert!(
        closed.comments[0].contains("left in place"),
        "{:#?}",
        closed.comments
    );
}

#[test]
fn limits_bound_how_many_pull_requests_open() {
    let files: Vec<(String, String)> = (0..30)
        .map(|i| {
            (
                format!("f{i:02}.yaml"),
                file_doc(&format!("f{i:02}"), &format!("www/f{i:02}.txt"), "x\n"),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let r = Review::new("limits", &refs, "      maxNewPerRun: 2\n      maxOpen: 3\n");
    r.apply().ok();
    for i in 0..30 {
        std::fs::write(r.ws.path().join(format!("www/f{i:02}.txt")), "y\n").unwrap();
    }
    r.apply().ok();
    assert_eq!(r.pulls().len(), 2, "maxNewPerRun");
    r.apply().ok();
    assert_eq!(r.pulls().len(), 3, "maxOpen");
    let list = r.ws.run_raw(&["review", "list"]);
    assert_eq!(
        list.stdout.matches("waiting").count(),
        27,
        "{}",
        list.stdout
    );
}

#[test]
fn a_huge_plan_fits_in_a_pull_request_body() {
    let big: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    let r = Review::new(
        "huge",
        &[("big.yaml", file_doc("big", "www/big.txt", &big))],
        "",
    );
    r.apply().ok();
    let drifted: String = (0..5000).map(|i| format!("changed {i}\n")).collect();
    std::fs::write(r.ws.path().join("www/big.txt"), drifted).unwrap();
    r.apply().ok();
    let pr = &r.pulls()[0];
    assert!(pr.body.chars().count() < 65_536, "{}", pr.body.len());
    assert!(
        pr.body.contains("The plan was cut here"),
        "says what was cut"
    );
    assert!(
        pr.body.contains("#### How to approve"),
        "the end survives the cut"
    );
}

#[test]
fn a_secret_never_reaches_github() {
    const SECRET: &str = "hunter2-very-secret-token";
    let app = |port: &str| {
        format!(
            "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: app\nspec:\n  command: sleep\n  args: [\"300\"]\n  env:\n    API_TOKEN: {SECRET}\n    PORT: \"{port}\"\n"
        )
    };
    let policy = "package tend\n\nreview contains msg if {\n\tinput.action.target.kind == \"host.Process\"\n\tinput.action.type == \"update\"\n\tmsg := sprintf(\"token %v\", [input.resource.desired.spec.env.API_TOKEN])\n}\n";
    let r = Review::new(
        "secret",
        &[
            ("app.yaml", app("8080")),
            ("policies/process.rego", policy.into()),
        ],
        "",
    );
    r.apply().ok();
    r.ws.write("app.yaml", &app("9090"));
    r.apply().ok();
    assert_eq!(r.pulls().len(), 1);
    let requests = r.gh().requests(&r.repo);
    assert!(!requests.is_empty());
    for req in &requests {
        assert!(
            !req.body.contains(SECRET),
            "{} {}: {}",
            req.method,
            req.path,
            req.body
        );
        assert!(!req.body.contains(TOKEN));
    }
    assert!(
        r.pulls()[0].body.contains("token (redacted sha256:"),
        "the policy's reason, redacted"
    );
}

#[test]
fn rate_limits_are_waited_out_and_the_actions_setting_is_named() {
    let r = Review::new("limited", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.gh().fail_next(
        &r.repo,
        "POST",
        "/pulls",
        429,
        serde_json::json!({"message": "You have exceeded a secondary rate limit", "documentation_url": "https://docs.github.com/rest"}),
        &[("retry-after", "1")],
    );
    r.apply().ok();
    assert_eq!(r.pulls().len(), 1, "retried after the limit");

    let r = Review::new("actions-refused", &[motd()], "");
    r.apply().ok();
    r.drift("edited by hand\n");
    r.gh().fail_next(
        &r.repo,
        "POST",
        "/pulls",
        403,
        serde_json::json!({"message": "GitHub Actions is not permitted to create or approve pull requests.", "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"}),
        &[],
    );
    let run = r.apply();
    run.code(1);
    assert!(
        run.stderr
            .contains("Allow GitHub Actions to create and approve pull requests"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(TOKEN));
}

#[test]
fn without_a_token_apply_stops_before_changing_anything() {
    let r = Review::new("no-token", &[motd()], "");
    let mut c = r.ws.cmd();
    c.env_remove("TEND_GITHUB_TOKEN")
        .env_remove("GITHUB_TOKEN")
        .arg("apply")
        .arg(r.ws.desired());
    let run = super::Run::from(c.output().unwrap());
    run.code(1);
    assert!(run.stderr.contains("TEND_GITHUB_TOKEN"), "{}", run.stderr);
    assert!(
        !r.ws.path().join("www/motd.txt").exists(),
        "nothing applied"
    );
    // `tend plan` never writes to GitHub, token or not.
    let plan = r.ws.run(&["plan"]);
    plan.ok();
    assert_eq!(r.gh().writes(&r.repo), 0);
}

/// L8: an issue anyone opened with tend's incident marker (and tend's
/// label) is not tend's: tend opens its own issue for the incident and
/// never edits the other one.
#[test]
fn l8_an_issue_with_tends_marker_from_someone_else_is_not_tends() {
    let port = free_port();
    let tend = env!("CARGO_BIN_EXE_tend");
    let crashing = format!(
        "{}remediation: {{runbook: one-restart}}\n",
        process_doc(
            "web",
            tend,
            &[
                "sample-app",
                "--port",
                &port.to_string(),
                "--crash-after",
                "0.8"
            ]
        )
    );
    let runbook = "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: one-restart}\nspec:\n  steps:\n    - {action: restart, within: 3s, hold: 2s}\n    - {action: escalate}\n";
    let r = Review::new(
        "l8-foreign-issue",
        &[("app.yaml", crashing), ("runbook.yaml", runbook.into())],
        "",
    );
    let fake = "<!-- tend:incident id=1 -->\nAll good here, nothing to see.";
    let foreign = r
        .gh()
        .issue_as(&r.repo, HUMAN, "tend: incident #1", fake, &["tend"]);
    r.apply().ok();
    std::thread::sleep(Duration::from_millis(1500));
    r.apply().code(1);
    let issues = r.gh().issues(&r.repo);
    let theirs = issues.iter().find(|i| i.number == foreign).unwrap();
    assert_eq!(theirs.body, fake, "the foreign issue was edited");
    assert!(theirs.comments.is_empty(), "{:#?}", theirs.comments);
    assert!(
        issues
            .iter()
            .any(|i| i.number != foreign && i.body.contains("Probable cause")),
        "tend opened its own issue: {issues:#?}"
    );
}

#[test]
fn an_escalated_incident_opens_one_issue_that_closes_on_recovery() {
    let port = free_port();
    let tend = env!("CARGO_BIN_EXE_tend");
    let crashing = format!(
        "{}remediation: {{runbook: two-restarts}}\n",
        process_doc(
            "web",
            tend,
            &[
                "sample-app",
                "--port",
                &port.to_string(),
                "--crash-after",
                "0.8"
            ]
        )
    );
    let runbook = "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: two-restarts}\nspec:\n  steps:\n    - {action: restart, within: 4s, hold: 2s}\n    - {action: reapply, within: 4s, hold: 2s}\n    - {action: escalate}\n";
    let r = Review::new(
        "incident",
        &[("app.yaml", crashing), ("runbook.yaml", runbook.into())],
        "",
    );
    r.apply().ok();
    std::thread::sleep(Duration::from_millis(1500));
    r.apply().code(1);
    let issues = r.gh().issues(&r.repo);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let issue = &issues[0];
    assert!(issue.title.contains("web"), "{}", issue.title);
    assert!(issue.labels.contains(&"tend".to_string()));
    for part in [
        "Probable cause",
        "Symptoms",
        "Steps",
        "not-verified",
        "Recommended next action",
        "Current state",
    ] {
        assert!(issue.body.contains(part), "{part}: {}", issue.body);
    }
    r.apply().code(1);
    assert_eq!(r.gh().issues(&r.repo).len(), 1, "one issue per incident");
    assert!(r.gh().issues(&r.repo)[0].comments.len() <= 1);

    // A human fixes it; recovery closes the issue with the time to recover.
    r.ws.write(
        "app.yaml",
        &format!(
            "{}remediation: {{runbook: two-restarts}}\n",
            process_doc("web", tend, &["sample-app", "--port", &port.to_string()])
        ),
    );
    r.apply().code(1);
    wait_http(port);
    std::thread::sleep(Duration::from_millis(1200));
    r.apply().ok();
    let issue = &r.gh().issues(&r.repo)[0];
    assert_eq!(issue.state, "closed", "{issue:#?}");
    assert!(
        issue.comments.iter().any(|c| c.contains("Time to recover")),
        "{:#?}",
        issue.comments
    );
}

/// A held change is proposed as a revert: the pull request edits only the
/// changed field back to its last good value; closing it unmerged keeps
/// the hold, merging one clears it.
#[test]
fn a_held_change_is_proposed_as_a_minimal_revert() {
    let port = free_port();
    let app = |extra: &str| {
        format!(
            "# the web app\napiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: web   # serves the site\nspec:\n  command: {}\n  args: [sample-app, --port, \"{port}\"{extra}]   # keep the port\n  state: running\nhealth:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\", status: 200, timeout: 1s}}\n  slos:\n    - {{name: availability, signal: http, for: 2s, recovery: 5s}}\n",
            env!("CARGO_BIN_EXE_tend")
        )
    };
    let r = Review::new(
        "revert",
        &[("app.yaml", app(""))],
        "  changes: {window: 6s}\n",
    );
    r.apply().ok();
    wait_http(port);
    // Healthy and in sync: the spec is known good.
    r.apply().ok();
    let reverts = |r: &Review| -> Vec<Pull> {
        r.pulls()
            .into_iter()
            .filter(|p| p.head_ref.starts_with("tend/revert/"))
            .collect()
    };

    // A change that makes the app fail every request.
    let bad = app(", --error-ratio, \"1\"");
    r.gh()
        .push_commit(&r.repo, "main", HUMAN, &[("app.yaml", &bad)]);
    r.ws.write("app.yaml", &bad);
    let run = r.apply();
    run.code(1);
    assert_eq!(run.json()["summary"]["held"], 1, "{}", run.stdout);
    let pr = reverts(&r).pop().expect("a revert pull request");
    assert_eq!(
        pr.title,
        "tend: revert host.Process/web to its last good spec"
    );
    assert_eq!(pr.head_ref, "tend/revert/host.Process/web");
    // The changed value is written back (as JSON, like every edit tend
    // makes); every other byte of the file is as it was.
    assert_eq!(
        r.gh().file(&r.repo, &pr.head_ref, "app.yaml").unwrap(),
        bad.replace(
            &format!("[sample-app, --port, \"{port}\", --error-ratio, \"1\"]"),
            &format!("[\"sample-app\",\"--port\",\"{port}\"]")
        ),
        "only the changed value is edited back"
    );
    assert!(
        pr.body.contains("failed verification: **SLO"),
        "{}",
        pr.body
    );
    assert!(
        pr.body.contains("rolled back to the last good spec"),
        "{}",
        pr.body
    );
    assert!(pr.body.contains("`/spec/args`"), "{}", pr.body);

    // Closed unmerged: the hold stays, and the same revert is not proposed
    // again.
    r.gh().close(&r.repo, pr.number);
    let run = r.apply();
    run.code(1);
    assert_eq!(run.json()["summary"]["held"], 1);
    assert_eq!(reverts(&r).len(), 1, "not proposed again");

    // Another failing change: a new hold, a new revert; merged, the hold
    // ends and the app runs its last good spec.
    let slow = app(", --latency-ms, \"3000\"");
    r.gh()
        .push_commit(&r.repo, "main", HUMAN, &[("app.yaml", &slow)]);
    r.ws.write("app.yaml", &slow);
    r.apply().code(1);
    let open: Vec<Pull> = reverts(&r)
        .into_iter()
        .filter(|p| p.state == "open")
        .collect();
    assert_eq!(open.len(), 1, "{open:#?}");
    r.gh().merge(&r.repo, open[0].number);
    r.pull_main();
    let run = r.apply();
    run.ok();
    let j = run.json();
    assert_eq!(j["summary"]["held"], 0, "{j:#}");
    assert_eq!(j["summary"]["pending"], 0, "{j:#}");
    r.gh().assert_no_violations(&r.repo);
}
