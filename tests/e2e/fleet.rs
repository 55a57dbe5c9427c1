//! Several watchers on one shared PostgreSQL (the tests' own server).

use std::time::{Duration, Instant};

use crate::{file_doc, pg, Workspace};

/// `tend` of a workspace on the shared database `db`, as node `node`.
fn on(ws: &Workspace, db: &pg::Database, node: &str, args: &[&str]) -> crate::Run {
    let mut c = ws.cmd();
    c.env("TEND_STATE_URL", db.url())
        .env("TEND_STATE_PASSWORD", pg::PASSWORD)
        .env("TEND_NODE", node)
        .args(args);
    crate::Run::from(c.output().expect("run tend"))
}

#[test]
fn apply_and_history_use_the_shared_database_and_keep_nothing_local() {
    let db = pg::database();
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let desired = ws.desired().display().to_string();
    on(&ws, &db, "n1", &["apply", &desired]).ok();
    assert_eq!(
        std::fs::read_to_string(ws.path().join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert!(
        !ws.state().join("tend.db").exists(),
        "the journal is in the shared database"
    );
    let json = on(&ws, &db, "n1", &["history", "--format", "json"])
        .ok()
        .json();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{json}");
    assert_eq!(
        db.sql("SELECT count(*) FROM journal WHERE phase = 'outcome'"),
        "1"
    );
    // Without the URL the embedded store is read: nothing was applied there.
    ws.run_raw(&["history"]).code(1);
}

#[test]
fn a_password_in_git_or_on_the_command_line_is_refused_and_nothing_changes() {
    let db = pg::database();
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let run = ws.run_raw(&[
        "apply",
        "--state",
        &db.url_with_password(),
        &ws.desired().display().to_string(),
    ]);
    run.code(1);
    assert!(
        run.stderr.contains("--state carries a password")
            && run.stderr.contains("TEND_STATE_PASSWORD"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(pg::PASSWORD), "{}", run.stderr);
    ws.write(
        "settings.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  state: {{url: \"{}\"}}\n",
            db.url_with_password()
        ),
    );
    let run = ws.run(&["apply"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("Settings spec.state.url carries a password"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(pg::PASSWORD), "{}", run.stderr);
    assert!(!ws.path().join("etc/motd").exists(), "nothing was applied");

    // The URL from Settings, the password from the environment: applied.
    ws.write(
        "settings.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  state: {{url: \"{}\"}}\n",
            db.url()
        ),
    );
    let mut c = ws.cmd();
    c.env("TEND_STATE_PASSWORD", pg::PASSWORD)
        .arg("apply")
        .arg(ws.desired());
    crate::Run::from(c.output().unwrap()).ok();
    assert_eq!(db.sql("SELECT count(*) FROM runs"), "1");
}

#[test]
fn an_unreachable_database_is_an_error_and_nothing_changes() {
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = ws.cmd();
    c.env(
        "TEND_STATE_URL",
        format!("postgres://tend@127.0.0.1:{port}/x"),
    )
    .arg("apply")
    .arg(ws.desired());
    let run = crate::Run::from(c.output().unwrap());
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains(&format!("postgres://tend@127.0.0.1:{port}/x")),
        "{}",
        run.stderr
    );
    assert!(!ws.path().join("etc/motd").exists(), "nothing was applied");
}

/// A member: `tend watch` in its own working directory (its host root)
/// with its own state directory, on the shared database, as `node`.
fn watch(
    member: &Workspace,
    repo: &Workspace,
    db: &pg::Database,
    node: &str,
    extra: &[&str],
) -> std::process::Child {
    let mut c = watch_cmd(member, db, node);
    c.args(extra).arg(repo.desired());
    c.spawn().expect("start tend watch")
}

/// `tend watch` as `node` on the shared database, its arguments to come.
fn watch_cmd(member: &Workspace, db: &pg::Database, node: &str) -> std::process::Command {
    let mut c = member.cmd();
    c.env("TEND_STATE_URL", db.url())
        .env("TEND_STATE_PASSWORD", pg::PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", member.path().join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            member.path().join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("TEND_GITHUB_TOKEN", "ghp_fleet-test-token")
        .env_remove("GITHUB_TOKEN")
        .args(["watch", "--node", node, "--jitter", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(member.path().join("watch.log")).unwrap());
    c
}

/// Members a test started, killed when the test ends, passed or not.
struct Running(Vec<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `child` to exit by itself; its status.
fn wait(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tend watch did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` until it holds; how long that took.
fn until(within: Duration, what: &str, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

#[test]
fn three_watchers_reconcile_their_own_host_files_and_share_one_journal() {
    let db = pg::database();
    let repo = Workspace::new();
    repo.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let members: Vec<Workspace> = (0..3).map(|_| Workspace::new()).collect();
    let mut children = Running(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                watch(
                    m,
                    &repo,
                    &db,
                    &format!("n{}", i + 1),
                    &["--interval", "1s", "--max-passes", "2"],
                )
            })
            .collect(),
    );
    for (i, c) in children.0.iter_mut().enumerate() {
        let status = wait(c, Duration::from_secs(120));
        assert!(
            status.success(),
            "n{}: {}",
            i + 1,
            std::fs::read_to_string(members[i].path().join("watch.log")).unwrap_or_default()
        );
    }
    for m in &members {
        assert_eq!(
            std::fs::read_to_string(m.path().join("etc/motd")).unwrap(),
            "hello\n",
            "each node writes its own file"
        );
    }
    let synced = |node: &str| {
        db.sql(&format!(
            "SELECT count(*) FROM journal WHERE node = '{node}' AND phase = 'outcome' AND outcome = 'synced' AND name = 'motd'"
        ))
    };
    for node in ["n1", "n2", "n3"] {
        assert_eq!(synced(node), "1", "{node} created its own motd once");
    }
    let history = on(&repo, &db, "n1", &["history", "--format", "json"])
        .ok()
        .json();
    let nodes: std::collections::BTreeSet<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["node"].as_str())
        .collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    let only = on(
        &repo,
        &db,
        "n1",
        &["history", "--node", "n2", "--format", "json"],
    )
    .ok()
    .json();
    let entries = only["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["node"] == "n2"), "{only}");

    // Drift on n2's host only: n2 corrects it, nobody else acts.
    std::fs::write(members[1].path().join("etc/motd"), "bye\n").unwrap();
    let mut c = members[1].cmd();
    c.env("TEND_STATE_URL", db.url())
        .env("TEND_STATE_PASSWORD", pg::PASSWORD)
        .args(["apply", "--node", "n2"])
        .arg(repo.desired());
    crate::Run::from(c.output().unwrap()).ok();
    assert_eq!(synced("n2"), "2");
    assert_eq!(synced("n1"), "1");
    assert_eq!(synced("n3"), "1");
}

fn buckets(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: tend.dev/v1\nkind: aws.s3.Bucket\nmetadata: {{name: fleet-{i:03}}}\nspec:\n  tags: {{team: data}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn fleet_repo(moto: &crate::Moto, resources: usize) -> Workspace {
    let repo = Workspace::new();
    repo.write(
        "settings.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  providers: [aws]\n  aws:\n    regions: [us-east-1]\n    endpointUrl: {}\n  state:\n    lease: 3s\n  safety:\n    maxActionsPerRun: 1000\n",
            moto.url()
        ),
    );
    repo.write("buckets.yaml", &buckets(resources));
    repo
}

/// SQL: how many outcomes of `action` were journaled, and the names acted
/// on more than once.
fn acted(db: &pg::Database, action: &str) -> (usize, String) {
    let n = db.sql(&format!(
        "SELECT count(*) FROM journal WHERE phase = 'outcome' AND outcome = 'synced' AND action = '{action}'"
    ));
    let twice = db.sql(&format!(
        "SELECT string_agg(name, ',') FROM (SELECT name FROM journal WHERE phase = 'outcome' AND outcome = 'synced' AND action = '{action}' GROUP BY name HAVING count(*) > 1) AS t"
    ));
    (n.parse().unwrap(), twice)
}

/// Buckets whose team tag is not the declared one.
fn drifted(moto: &crate::Moto) -> usize {
    moto.boto(
        "n = 0\nfor b in s3.list_buckets()['Buckets']:\n    t = {x['Key']: x['Value'] for x in s3.get_bucket_tagging(Bucket=b['Name']).get('TagSet', [])}\n    n += t.get('team') != 'data'\nprint(n)\n",
    )
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn shared_resources_are_sharded_and_a_killed_members_are_taken_over_once() {
    let moto = crate::Moto::start();
    let db = pg::database();
    let repo = fleet_repo(&moto, 300);
    let members: Vec<Workspace> = (0..3).map(|_| Workspace::new()).collect();
    let mut children = Running(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| watch(m, &repo, &db, &format!("n{}", i + 1), &["--interval", "2s"]))
            .collect(),
    );
    let created = until(Duration::from_secs(240), "300 buckets created", || {
        db.try_sql("SELECT count(*) FROM journal WHERE phase = 'outcome' AND action = 'create'")
            .is_ok_and(|n| n.parse::<usize>().unwrap_or(0) >= 300)
    });
    let (n, twice) = acted(&db, "create");
    assert_eq!((n, twice.as_str()), (300, ""), "each bucket created once");
    let per_node = db.sql(
        "SELECT string_agg(node || '=' || c, ',' ORDER BY node) FROM (SELECT node, count(*) AS c FROM journal WHERE phase = 'outcome' AND action = 'create' GROUP BY node) AS t",
    );
    eprintln!("created 300 buckets in {created:?}: {per_node}");
    assert_eq!(
        per_node.split(',').count(),
        3,
        "all three members acted: {per_node}"
    );

    let status = on(
        &repo,
        &db,
        "n1",
        &["fleet", "status", "--format", "json", "--lease", "3s"],
    )
    .ok()
    .json();
    let live = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["live"] == true)
        .count();
    assert_eq!(live, 3, "{status:#}");
    assert_eq!(status["shared"]["held"], 300, "{status:#}");
    assert!(status["publisher"].is_string(), "{status:#}");
    let human = on(&repo, &db, "n1", &["fleet", "status", "--lease", "3s"])
        .ok()
        .stdout
        .clone();
    assert!(human.contains(": 3 of 3 members live"), "{human}");
    assert!(human.contains("Shared resources: 300 held"), "{human}");
    for node in ["n1", "n2", "n3"] {
        assert!(human.lines().any(|l| l.starts_with(node)), "{human}");
    }

    // n3 stops answering (SIGSTOP) and never comes back (SIGKILL); every
    // bucket drifts, n3's first.
    let n3_keys = db.sql(
        "SELECT string_agg(name, ',') FROM leases WHERE holder = 'n3' AND expires_at > clock_timestamp()",
    );
    assert!(!n3_keys.is_empty());
    unsafe { libc::kill(children.0[2].id() as i32, libc::SIGSTOP) };
    let killed = chrono::Utc::now();
    moto.boto(&format!(
        "first = '{n3_keys}'.split(',')\nrest = [b['Name'] for b in s3.list_buckets()['Buckets'] if b['Name'] not in first]\nfor b in first + rest:\n    s3.put_bucket_tagging(Bucket=b, Tagging={{'TagSet': [{{'Key': 'team', 'Value': 'drift'}}]}})\n"
    ));
    children.0[2].kill().unwrap();
    children.0[2].wait().unwrap();
    until(
        Duration::from_secs(180),
        "every drifted bucket corrected",
        || drifted(&moto) == 0,
    );
    let at = |sql: &str| {
        chrono::DateTime::parse_from_rfc3339(&db.sql(sql))
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let first = at(&format!(
        "SELECT min(at) FROM journal WHERE phase = 'intent' AND node <> 'n3' AND name = ANY (string_to_array('{n3_keys}', ','))"
    ));
    let last = at("SELECT max(at) FROM journal WHERE phase = 'outcome' AND action = 'update'");
    eprintln!(
        "failover: first action on a dead member's bucket {} ms after it stopped (lease 3s, interval 2s); all 300 corrected {} ms after it",
        (first - killed).num_milliseconds(),
        (last - killed).num_milliseconds()
    );
    assert!(
        first > killed,
        "nobody acted on n3's buckets while its lease lasted"
    );
    // Settle: nothing more is done.
    std::thread::sleep(Duration::from_secs(3));
    let (n, twice) = acted(&db, "update");
    assert_eq!(twice, "", "no bucket corrected twice");
    assert_eq!(n, 300, "each drift corrected exactly once");
    let by_dead = db.sql("SELECT count(*) FROM journal WHERE node = 'n3' AND action = 'update'");
    assert_eq!(by_dead, "0");
    for c in &mut children.0[..2] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

/// A TCP relay on 127.0.0.1 the test can cut (every connection closed,
/// new ones refused) and restore: a member cut off from PostgreSQL while
/// the database and the other members go on.
struct Gate {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Gate {
    fn start(upstream: u16) -> Gate {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gate = Gate {
            port,
            down: Default::default(),
            open: Default::default(),
        };
        let (down, open) = (gate.down.clone(), gate.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut open = open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        gate
    }

    fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_member_cut_off_from_the_database_stops_acting_and_acts_on_nothing_it_lost() {
    let moto = crate::Moto::start();
    let db = pg::database();
    let repo = fleet_repo(&moto, 30);
    let members: Vec<Workspace> = (0..3).map(|_| Workspace::new()).collect();
    let gate = Gate::start(db.port());
    let cut_off = pg::Database::on_port(&db, gate.port);
    let mut children = Running(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let via = if i == 2 { &cut_off } else { &db };
                watch(m, &repo, via, &format!("n{}", i + 1), &["--interval", "2s"])
            })
            .collect(),
    );
    until(Duration::from_secs(120), "30 buckets created", || {
        db.try_sql("SELECT count(*) FROM journal WHERE phase = 'outcome' AND action = 'create'")
            .is_ok_and(|n| n.parse::<usize>().unwrap_or(0) >= 30)
    });
    let n3_keys = db.sql(
        "SELECT string_agg(name, ',') FROM leases WHERE holder = 'n3' AND expires_at > clock_timestamp()",
    );
    assert!(!n3_keys.is_empty(), "n3 holds a share");

    gate.cut();
    let drift = "for b in s3.list_buckets()['Buckets']:\n    s3.put_bucket_tagging(Bucket=b['Name'], Tagging={'TagSet': [{'Key': 'team', 'Value': 'drift'}]})\n";
    moto.boto(drift);
    until(
        Duration::from_secs(120),
        "the others corrected every bucket",
        || drifted(&moto) == 0,
    );
    let (n, twice) = acted(&db, "update");
    assert_eq!((n, twice.as_str()), (30, ""), "each drift corrected once");
    assert_eq!(
        db.sql("SELECT count(*) FROM journal WHERE node = 'n3' AND action = 'update'"),
        "0",
        "the member cut off acted on nothing"
    );
    assert!(children.0[2].try_wait().unwrap().is_none(), "n3 still runs");

    // n3 comes back: it takes back a share, and a second drift is again
    // corrected once per bucket, under one holder per lease epoch.
    gate.restore();
    until(Duration::from_secs(60), "n3 holds leases again", || {
        db.sql("SELECT count(*) FROM leases WHERE holder = 'n3' AND expires_at > clock_timestamp()")
            != "0"
    });
    moto.boto(drift);
    until(
        Duration::from_secs(120),
        "every bucket corrected again",
        || drifted(&moto) == 0,
    );
    std::thread::sleep(Duration::from_secs(3));
    let twice = db.sql(
        "SELECT string_agg(name, ',') FROM (SELECT name FROM journal WHERE phase = 'outcome' AND outcome = 'synced' AND action = 'update' GROUP BY name HAVING count(*) > 2) AS t",
    );
    assert_eq!(twice, "", "no bucket corrected twice for one drift");
    assert_eq!(acted(&db, "update").0, 60);
    let shared_epochs = db.sql(
        "SELECT count(*) FROM (SELECT kind, name, epoch FROM journal WHERE phase = 'intent' AND epoch IS NOT NULL GROUP BY kind, name, epoch HAVING count(DISTINCT node) > 1) AS t",
    );
    assert_eq!(shared_epochs, "0", "one node per lease epoch");
    for c in &mut children.0 {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

/// The database's run lock is per node name; one machine's state
/// directory is locked too, so two tends on one machine under different
/// names never act on the same host files at once.
#[test]
fn two_node_names_on_one_machine_never_act_at_once() {
    let db = pg::database();
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let mut watcher = Running(vec![watch(&ws, &ws, &db, "web-1", &["--interval", "1s"])]);
    until(Duration::from_secs(60), "the watcher applied", || {
        ws.path().join("etc/motd").exists()
    });
    let run = on(
        &ws,
        &db,
        "vm-hostname",
        &[
            "apply",
            "--node",
            "vm-hostname",
            &ws.desired().display().to_string(),
        ],
    );
    watcher.0[0].kill().unwrap();
    watcher.0[0].wait().unwrap();
    run.code(1);
    assert!(
        run.stderr.contains("run.lock") && run.stderr.contains("tend watch"),
        "{}",
        run.stderr
    );
}

/// A repository of two `tier: web` processes every node runs, healed by a
/// quick restart, under the fleet budget `web` with `budget` (its YAML).
fn web_repo(budget: &str, spec: &str) -> Workspace {
    let repo = Workspace::new();
    repo.write(
        "settings.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n{spec}  safety:\n    fleet:\n      - name: web\n        selector: {{labels: {{tier: web}}}}\n        {budget}\n"
        ),
    );
    repo.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: quick}\nspec:\n  steps:\n    - {action: restart, within: 10s, hold: 1s}\n    - {action: escalate}\n",
    );
    for name in ["w1", "w2"] {
        repo.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: {name}\n  labels: {{tier: web}}\nspec:\n  command: sleep\n  args: [\"300\"]\nremediation: {{runbook: quick}}\n"
            ),
        );
    }
    repo
}

/// Three watchers on `repo`, once each has started both processes.
fn web_fleet(repo: &Workspace, db: &pg::Database) -> (Vec<Workspace>, Running) {
    let members: Vec<Workspace> = (0..3).map(|_| Workspace::new()).collect();
    let children = Running(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| watch(m, repo, db, &format!("n{}", i + 1), &["--interval", "1s"]))
            .collect(),
    );
    until(Duration::from_secs(60), "six processes started", || {
        members.iter().all(|m| {
            ["w1", "w2"].iter().all(|n| {
                m.state().join(format!("host/processes/{n}.json")).exists()
                    && crate::alive(m.pid(n))
            })
        })
    });
    (members, children)
}

/// `maxConcurrent: 1`: six processes killed at once on three nodes are
/// restarted one at a time across the fleet, each restart in flight from
/// its intent until its verification ends.
#[test]
fn max_concurrent_one_lets_one_restart_fly_at_a_time_across_the_fleet() {
    let db = pg::database();
    let repo = web_repo("maxConcurrent: 1", "");
    let (members, children) = web_fleet(&repo, &db);
    let before: Vec<i32> = members
        .iter()
        .flat_map(|m| ["w1", "w2"].map(|n| m.pid(n)))
        .collect();
    for pid in &before {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    // `tend fleet status` shows the one restart in flight, never more.
    let seen = std::cell::Cell::new(0);
    until(Duration::from_secs(120), "six processes restarted", || {
        let status = on(&repo, &db, "n1", &["fleet", "status", "--format", "json"])
            .ok()
            .json();
        let flying = status["inFlight"].as_array().map_or(0, Vec::len);
        assert!(flying <= 1, "{status:#}");
        seen.set(seen.get().max(flying));
        members.iter().all(|m| {
            ["w1", "w2"]
                .iter()
                .all(|n| !before.contains(&m.pid(n)) && crate::alive(m.pid(n)))
        }) && db.sql("SELECT count(*) FROM journal WHERE action = 'verify' AND phase = 'outcome'")
            == "6"
    });
    assert_eq!(seen.get(), 1, "a restart was seen in flight");
    // Each restart from its intent to its verdict.
    let spans = db.sql(
        "SELECT string_agg(i.node || ' ' || i.name || ' ' || i.at || ' ' || v.at, ';' ORDER BY i.at)
         FROM journal i JOIN journal v ON v.node = i.node AND v.name = i.name AND v.fingerprint = i.fingerprint
           AND v.action = 'verify' AND v.phase = 'outcome' AND v.id > i.id
         WHERE i.action = 'restart' AND i.phase = 'intent'",
    );
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let mut spans: Vec<(String, _, _)> = spans
        .split(';')
        .map(|s| {
            let f: Vec<&str> = s.split(' ').collect();
            (format!("{} {}", f[0], f[1]), at(f[2]), at(f[3]))
        })
        .collect();
    spans.sort_by_key(|s| s.1);
    assert_eq!(spans.len(), 6, "{spans:?}");
    for pair in spans.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "{} started before {} was verified: {spans:?}",
            pair[1].0,
            pair[0].0
        );
    }
    let nodes: std::collections::BTreeSet<&str> = spans.iter().map(|s| &s.0[..2]).collect();
    assert_eq!(nodes.len(), 3, "every node restarted its own: {spans:?}");
    drop(children);
}

/// `minHealthy: 50%`: four of six processes die together on two nodes; no
/// node restarts anything, and one incident in the whole fleet names the
/// budget.
#[test]
fn min_healthy_stops_every_node_and_one_incident_names_the_budget() {
    let db = pg::database();
    // Escalations reach GitHub through the one publisher, whichever node
    // escalated.
    let gh = crate::github::github();
    let repo_name = format!("tend-e2e/fleet-budget-{}", db.name);
    let review = format!(
        "  review:\n    github:\n      repository: {repo_name}\n      baseBranch: main\n      apiUrl: {}\n",
        gh.api_url()
    );
    let repo = web_repo("minHealthy: 50%", &review);
    gh.create_repo(&repo_name, &[("README.md", "fleet\n")]);
    let (members, children) = web_fleet(&repo, &db);
    // Every member has reported all six healthy.
    until(Duration::from_secs(30), "six healthy reports", || {
        db.sql("SELECT count(*) FROM budget_health WHERE healthy = 1") == "6"
    });
    let killed: Vec<i32> = members[..2]
        .iter()
        .flat_map(|m| ["w1", "w2"].map(|n| m.pid(n)))
        .collect();
    for pid in &killed {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    until(Duration::from_secs(60), "an escalation", || {
        db.sql("SELECT count(*) FROM incidents WHERE status = 'escalated'") != "0"
    });
    // Several passes of every member later, still nothing acted.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        db.sql("SELECT count(*) FROM journal WHERE action = 'restart' AND phase = 'intent'"),
        "0",
        "no restart anywhere"
    );
    for m in &members[..2] {
        for n in ["w1", "w2"] {
            assert!(!crate::alive(m.pid(n)), "{n} was left down");
        }
    }
    assert_eq!(
        db.sql("SELECT count(*) FROM incidents"),
        "1",
        "one incident: {}",
        db.sql("SELECT string_agg(node || ' ' || name || ' ' || cause, '; ') FROM incidents")
    );
    assert_eq!(
        db.sql("SELECT node || ' ' || name FROM incidents"),
        "n1 w1",
        "on the fleet's first unhealthy resource"
    );
    let shown = on(&repo, &db, "n1", &["incidents", "--format", "json"])
        .ok()
        .json();
    let text = shown.to_string();
    assert!(
        text.contains("fleet budget `web`")
            && text.contains("2 of the 6 resources it selects are healthy"),
        "{shown:#}"
    );
    until(Duration::from_secs(30), "the escalation's issue", || {
        gh.issues(&repo_name)
            .iter()
            .any(|i| i.title.contains("fleet budget `web`"))
    });
    let issues = gh.issues(&repo_name);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    drop(children);
    gh.assert_no_violations(&repo_name);
}

/// `maxErrors`: one machine is a fleet of one. After two failed actions
/// on what the budget selects, tend stops acting on it and says why;
/// what it does not select goes on.
#[test]
fn max_errors_stops_acting_on_what_the_budget_selects() {
    let ws = Workspace::new();
    ws.write(
        "settings.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  safety:\n    circuitBreaker: {failures: 10}\n    fleet:\n      - {name: motd, selector: {labels: {team: a}}, maxErrors: 2, window: 1h}\n",
    );
    ws.write(
        "bad.yaml",
        "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: bad\n  labels: {team: a}\nspec:\n  command: \"false\"\n",
    );
    ws.run(&["apply"]).code(1);
    ws.run(&["apply"]).code(1);
    let plan = ws.run(&["plan"]);
    plan.ok();
    assert!(
        plan.stdout
            .contains("fleet budget `motd`: 2 actions on the resources it selects failed"),
        "{}",
        plan.stdout
    );
    let third = ws.run(&["apply", "--format", "json"]);
    let j = third.json();
    assert_eq!(j["actions"][0]["decision"], "deferred", "{j:#}");
    let failed = ws.run_raw(&["history", "--format", "json"]).json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "failed")
        .count();
    assert_eq!(failed, 2, "nothing more was tried");
    ws.write("other.yaml", &file_doc("other", "etc/other", "hi\n"));
    ws.run(&["apply"]);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("etc/other")).unwrap(),
        "hi\n",
        "what the budget does not select goes on"
    );
}

/// A hook one member receives reaches every member at once (PostgreSQL
/// `LISTEN`/`NOTIFY`): a pause posted to n1 makes n2, an hour from its
/// next pass, reconcile now, and a member's own announcement wakes only
/// the others.
#[test]
fn a_hook_received_by_one_member_wakes_the_others_at_once() {
    let db = pg::database();
    let repo = Workspace::new();
    repo.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let members: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    let port = crate::free_port();
    let children = Running(vec![
        {
            let mut c = watch_cmd(&members[0], &db, "n1");
            c.env("TEND_PAUSE_TOKEN", "t0ken")
                .args(["--interval", "1h", "--listen", &format!("127.0.0.1:{port}")])
                .arg(repo.desired());
            c.spawn().unwrap()
        },
        {
            let mut c = watch_cmd(&members[1], &db, "n2");
            c.args(["--interval", "1h"]).arg(repo.desired());
            c.spawn().unwrap()
        },
    ]);
    let motd = |i: usize| std::fs::read_to_string(members[i].path().join("etc/motd")).ok();
    until(
        Duration::from_secs(60),
        "both members wrote their motd",
        || motd(0).is_some() && motd(1).is_some(),
    );
    crate::wait_http(port);
    // Listening by now: a member listens as it joins, before its first pass.
    std::fs::write(members[1].path().join("etc/motd"), "drifted\n").unwrap();
    let bearer = [("Authorization", "Bearer t0ken".to_string())];
    let (status, text) = crate::service::post(
        port,
        "/pause",
        &bearer,
        r#"{"selector": "host.File/nothing-here", "reason": "a drill", "for": "1m"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let took = until(Duration::from_secs(15), "n2 corrected its motd", || {
        motd(1).as_deref() == Some("hello\n")
    });
    eprintln!("n2 reconciled {took:?} after n1 received the pause");
    assert_eq!(
        db.sql("SELECT count(*) FROM journal WHERE node = 'n2' AND phase = 'outcome' AND outcome = 'synced'"),
        "2"
    );
    drop(children);
}

/// One publisher for the fleet: the same drift needing review on three
/// nodes is one pull request (Prism-checked fake GitHub) that lists the
/// three nodes, whichever member publishes.
#[test]
fn the_same_drift_on_three_nodes_is_one_pull_request_listing_them() {
    let gh = crate::github::github();
    let db = pg::database();
    let repo_name = format!("tend-e2e/fleet-review-{}", db.name);
    let repo = Workspace::new();
    let files = [
        (
            "settings.yaml".to_string(),
            format!(
                "apiVersion: tend.dev/v1\nkind: Settings\nmetadata:\n  name: settings\nspec:\n  policies:\n    dirs: [policies]\n  review:\n    github:\n      repository: {repo_name}\n      baseBranch: main\n      apiUrl: {}\n",
                gh.api_url()
            ),
        ),
        (
            "policies/review.rego".to_string(),
            "package tend\n\nreview contains \"a change to a managed file needs a human\" if {\n\tinput.action.target.kind == \"host.File\"\n\tinput.action.type == \"update\"\n}\n".to_string(),
        ),
        ("motd.yaml".to_string(), file_doc("motd", "www/motd.txt", "hello\n")),
    ];
    for (p, t) in &files {
        repo.write(p, t);
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    gh.create_repo(&repo_name, &refs);
    let members: Vec<Workspace> = (0..3).map(|_| Workspace::new()).collect();
    let children = Running(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut c = watch_cmd(m, &db, &format!("n{}", i + 1));
                c.env("TEND_GITHUB_TOKEN", "ghp_fleet-test-token")
                    .env_remove("GITHUB_TOKEN")
                    .args(["--interval", "1s"])
                    .arg(repo.desired());
                c.spawn().unwrap()
            })
            .collect(),
    );
    let motd = |m: &Workspace| std::fs::read_to_string(m.path().join("www/motd.txt")).ok();
    until(Duration::from_secs(60), "three motd files created", || {
        members.iter().all(|m| motd(m).is_some())
    });
    for m in &members {
        std::fs::write(m.path().join("www/motd.txt"), "edited by hand\n").unwrap();
    }
    until(
        Duration::from_secs(60),
        "a pull request listing three nodes",
        || {
            gh.pulls(&repo_name)
                .iter()
                .any(|p| p.body.contains("Found on nodes `n1`, `n2`, `n3`."))
        },
    );
    // A few passes of every member later, still one.
    std::thread::sleep(Duration::from_secs(4));
    let pulls = gh.pulls(&repo_name);
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].state, "open");
    assert_eq!(pulls[0].head_ref, "tend/review/host.File/motd");
    for m in &members {
        assert_eq!(
            motd(m).as_deref(),
            Some("edited by hand\n"),
            "nothing applied"
        );
    }
    // The publisher's own file is put back: the others' findings keep the
    // pull request open, its body now listing only them.
    let publisher = db.sql(
        "SELECT holder FROM leases WHERE kind || '/' || name = 'tend.Fleet/publisher' AND expires_at > clock_timestamp()",
    );
    let i: usize = publisher[1..].parse::<usize>().unwrap() - 1;
    std::fs::write(members[i].path().join("www/motd.txt"), "hello\n").unwrap();
    let others: Vec<String> = (1..=3)
        .filter(|n| *n != i + 1)
        .map(|n| format!("`n{n}`"))
        .collect();
    let listed = format!("Found on nodes {}.", others.join(", "));
    until(
        Duration::from_secs(30),
        "the pull request lists the other two",
        || {
            gh.pulls(&repo_name)
                .iter()
                .any(|p| p.body.contains(&listed))
        },
    );
    let pulls = gh.pulls(&repo_name);
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(
        pulls[0].state, "open",
        "{publisher} publishes the others' findings"
    );
    drop(children);
    gh.assert_no_violations(&repo_name);
}

/// Waves across nodes: a change to a `tier: web` file every node keeps
/// goes out first on the first wave's node (`n1`); the other nodes change
/// theirs only once its change passed verification, read in the database.
#[test]
fn a_change_goes_out_in_waves_across_the_nodes() {
    let db = pg::database();
    let repo = Workspace::new();
    repo.write(
        "settings.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  changes:\n    window: 3s\n    waves:\n      - selector: {labels: {tier: web}}\n        steps: [{count: 1}, {percent: 100}]\n",
    );
    let doc = |content: &str| {
        format!(
            "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: motd\n  labels: {{tier: web}}\nspec:\n  path: etc/motd\n  content: \"{content}\"\nhealth: {{}}\n"
        )
    };
    repo.write("motd.yaml", &doc("v1"));
    let members: Vec<Workspace> = (0..3).map(|_| Workspace::new()).collect();
    let children = Running(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| watch(m, &repo, &db, &format!("n{}", i + 1), &["--interval", "1s"]))
            .collect(),
    );
    until(
        Duration::from_secs(60),
        "v1 known good on every node",
        || {
            db.try_sql("SELECT count(*) FROM last_good WHERE name = 'motd'")
                .is_ok_and(|n| n == "3")
        },
    );
    repo.write("motd.yaml", &doc("v2"));
    let content = |m: &Workspace| std::fs::read_to_string(m.path().join("etc/motd")).ok();
    until(Duration::from_secs(60), "v2 on every node", || {
        members.iter().all(|m| content(m).as_deref() == Some("v2"))
    });
    let rows = db.sql(
        "SELECT string_agg(node || ' ' || wave || ' ' || applied_at || ' ' || COALESCE(settled_at, '-'), ';' ORDER BY node) FROM changes WHERE name = 'motd'",
    );
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let rows: Vec<Vec<&str>> = rows.split(';').map(|r| r.split(' ').collect()).collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!((rows[0][0], rows[0][1]), ("n1", "1"), "{rows:?}");
    let first_verified = at(rows[0][3]);
    for r in &rows[1..] {
        assert_eq!(r[1], "2", "{rows:?}");
        assert!(
            at(r[2]) >= first_verified,
            "{} changed before n1's change passed verification: {rows:?}",
            r[0]
        );
    }
    drop(children);
}
