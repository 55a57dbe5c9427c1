//! One suite for both state stores: the embedded SQLite and a shared
//! PostgreSQL (the tests' own server) answer every check alike.

use chrono::{Duration, Utc};
use tend::model::health::{Severity, StepAction};
use tend::state::{
    ChangeStatus, ChangeVerdict, IncidentStep, IncidentUpdate, JournalRecord, LastGood, NewChange,
    NewIncident, NewPause, NewRun, ProposalRow, ProposalState, SampleRow, SignalRow, StateError,
    Store, Target, UrlSource, MAX_SAMPLES, SAMPLE_DAYS,
};
use tend::{
    ActionType, IncidentStatus, JournalAction, JournalOutcome, Kind, ResourceKey, Status,
    StepOutcome,
};

use crate::pg;

/// A store of each backend, and a way to run raw SQL on it.
struct Backend {
    name: &'static str,
    store: Box<dyn Store>,
    raw: Box<dyn Fn(&str)>,
    _keep: Box<dyn std::any::Any>,
}

fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = tend::state::open(dir.path(), None).unwrap();
    let db_path = dir.path().join("tend.db");
    let db = pg::database();
    let target =
        Target::parse(&db.url_with_password(), UrlSource::Environment, None, "n1").unwrap();
    let postgres = tend::state::open(dir.path(), Some(&target)).unwrap();
    vec![
        Backend {
            name: "sqlite",
            store: sqlite,
            raw: Box::new(move |sql| {
                rusqlite::Connection::open(&db_path)
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap();
            }),
            _keep: Box::new(dir),
        },
        Backend {
            name: "postgres",
            store: postgres,
            raw: Box::new(move |sql| {
                db.sql(sql);
            }),
            _keep: Box::new(()),
        },
    ]
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::HostFile, name)
}

fn begin(s: &dyn Store) -> i64 {
    s.begin_run(&NewRun {
        command: "apply",
        origin: "x",
        commit: None,
        mode: tend::Mode::Auto,
    })
    .unwrap()
}

fn rec<'a>(run_id: i64, fp: &'a str, key: &'a ResourceKey) -> JournalRecord<'a> {
    JournalRecord {
        run_id,
        fingerprint: fp,
        action: JournalAction::Act(ActionType::Update),
        key,
        commit: Some("abc"),
        outcome: None,
        detail: "it's 'quoted' ?1",
    }
}

#[test]
fn the_journal_reads_back_in_order_and_finds_dangling_intents() {
    for b in backends() {
        let s = b.store.as_ref();
        let k = key("a");
        let run = begin(s);
        s.intent(&rec(run, "a", &k)).unwrap();
        s.outcome(&JournalRecord {
            outcome: Some(JournalOutcome::Synced),
            ..rec(run, "a", &k)
        })
        .unwrap();
        s.intent(&rec(run, "b", &k)).unwrap();
        let d = s.dangling_intents().unwrap();
        assert_eq!(d.len(), 1, "{}", b.name);
        assert_eq!(d[0].fingerprint, "b", "{}", b.name);
        let all = s.history(None, 100, None).unwrap();
        assert_eq!(all.len(), 3, "{}", b.name);
        assert_eq!(all[0].detail, "it's 'quoted' ?1", "{}", b.name);
        assert_eq!(all[0].commit.as_deref(), Some("abc"));
        let last = s.history(None, 2, None).unwrap();
        assert_eq!(
            last.iter()
                .map(|e| e.fingerprint.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"],
            "the newest, oldest first ({})",
            b.name
        );
        assert_eq!(
            s.outcomes_since(Utc::now() - Duration::hours(1))
                .unwrap()
                .len(),
            1
        );
        s.record_corrections(&k, &["spec.mode", "spec.content"])
            .unwrap();
        let c = s
            .corrections_since(Utc::now() - Duration::hours(1))
            .unwrap();
        assert_eq!(c.len(), 2, "{}", b.name);
        s.finish_run(run, tend::state::RunStatus::Ok).unwrap();
    }
}

/// A row that cannot be read back is an error naming the column and the
/// value, never a row silently dropped or a default made up.
#[test]
fn an_unreadable_row_is_an_error_naming_column_and_value() {
    for b in backends() {
        let s = b.store.as_ref();
        let k = key("a");
        let run = begin(s);
        s.intent(&rec(run, "a", &k)).unwrap();
        (b.raw)("UPDATE journal SET action = 'teleport'");
        let err = s.history(None, 10, None).unwrap_err().to_string();
        assert!(
            err.contains("`action`") && err.contains("`teleport`"),
            "{}: {err}",
            b.name
        );
        (b.raw)("UPDATE journal SET action = 'update', at = 'yesterday'");
        let err = s.history(None, 10, None).unwrap_err().to_string();
        assert!(err.contains("`at`") && err.contains("`yesterday`"), "{err}");
    }
}

fn step(outcome: StepOutcome, step: Option<u32>) -> IncidentStep {
    let now = Utc::now();
    IncidentStep {
        step,
        action: Some(StepAction::Restart),
        decision: Some(tend::Decision::Auto),
        outcome,
        detail: "restarted".into(),
        started_at: now,
        finished_at: now,
        duration_ms: 0,
    }
}

#[test]
fn incidents_steps_and_statistics_round_trip() {
    for b in backends() {
        let s = b.store.as_ref();
        let k = key("web");
        let now = Utc::now();
        let id = s
            .open_incident(&NewIncident {
                key: &k,
                cause: "crashloop",
                signature: Some("crashloop"),
                why: Some("it restarts"),
                runbook: Some("restart"),
                severity: Severity::Critical,
                symptoms: serde_json::json!({"up": 0}),
                change: None,
                onset: now - Duration::seconds(5),
                detected: now,
            })
            .unwrap();
        s.add_step(id, &step(StepOutcome::Running, Some(0)))
            .unwrap();
        assert_eq!(s.running_steps().unwrap().len(), 1, "{}", b.name);
        assert!(s
            .update_last_step(
                id,
                StepOutcome::Running,
                &step(StepOutcome::Verified, Some(0))
            )
            .unwrap());
        assert!(
            !s.update_last_step(
                id,
                StepOutcome::Running,
                &step(StepOutcome::Failed, Some(0))
            )
            .unwrap(),
            "only a running step is settled ({})",
            b.name
        );
        let open = s.active_incident(&k).unwrap().unwrap();
        assert_eq!(open.steps.len(), 1);
        assert_eq!(open.steps[0].outcome, StepOutcome::Verified);
        assert_eq!(open.symptoms, serde_json::json!({"up": 0}));
        assert_eq!(open.time_to_detect_ms, 5000, "{}", b.name);
        s.update_incident(
            id,
            &IncidentUpdate {
                status: IncidentStatus::Resolved,
                next_step: 1,
                state: "healthy",
                recommendation: "",
                diagnosis: None,
            },
        )
        .unwrap();
        assert!(s.active_incident(&k).unwrap().is_none());
        let i = s.incident(id).unwrap().unwrap();
        assert_eq!(i.status, IncidentStatus::Resolved);
        assert!(i.resolved_at.is_some());
        assert_eq!(s.incidents(true, 10).unwrap().len(), 1);
        assert_eq!(s.incidents(false, 10).unwrap().len(), 0);
        assert_eq!(
            s.incidents_of(&k, now - Duration::hours(1)).unwrap().len(),
            1
        );
        for success in [false, false, true, false] {
            s.record_step_result(&tend::state::StepResult {
                cause: "crashloop",
                runbook: "restart",
                step: 0,
                action: StepAction::Restart,
                success,
            })
            .unwrap();
        }
        let stats = s.remediation_stats().unwrap();
        assert_eq!(
            (
                stats[0].successes,
                stats[0].failures,
                stats[0].consecutive_failures
            ),
            (1, 3, 1),
            "{}",
            b.name
        );
        assert_eq!(
            s.consecutive_failures("crashloop", "restart", 0).unwrap(),
            1
        );
        s.remember(
            &k,
            &[SignalRow {
                signal: "up".into(),
                status: Status::Unhealthy,
                since: now,
                last_healthy: None,
                value: Some(0.5),
                detail: "down".into(),
            }],
        )
        .unwrap();
        s.remember(
            &k,
            &[SignalRow {
                signal: "up".into(),
                status: Status::Healthy,
                since: now,
                last_healthy: Some(now),
                value: None,
                detail: "up".into(),
            }],
        )
        .unwrap();
        let r = s.remembered(&k).unwrap();
        assert_eq!(r["up"].status, Status::Healthy, "{}", b.name);
    }
}

#[test]
fn changes_pauses_proposals_and_last_good_round_trip() {
    for b in backends() {
        let s = b.store.as_ref();
        let k = key("cfg");
        let now = Utc::now();
        let good = LastGood {
            commit: Some("c1".into()),
            spec: serde_json::json!({"content": "a"}),
        };
        s.set_last_good(&k, good.commit.as_deref(), &good.spec)
            .unwrap();
        s.set_last_good(&k, Some("c2"), &good.spec).unwrap();
        assert_eq!(
            s.last_good(&k).unwrap().unwrap().commit.as_deref(),
            Some("c2")
        );
        let id = s
            .record_change(&NewChange {
                key: &k,
                digest: "d",
                commit: Some("c3"),
                fields: serde_json::json!(["spec.content"]),
                applied_at: now,
                until: now + Duration::minutes(5),
                wave: Some(1),
                good: Some(&good),
            })
            .unwrap();
        s.settle_change(
            id,
            &ChangeVerdict {
                status: ChangeStatus::Failed,
                cause: Some("regressed"),
                incident: None,
                rolled_back: true,
            },
        )
        .unwrap();
        s.settle_change(
            id,
            &ChangeVerdict {
                status: ChangeStatus::Failed,
                cause: None,
                incident: Some(7),
                rolled_back: false,
            },
        )
        .unwrap();
        let c = &s.changes(now - Duration::hours(1)).unwrap()[0];
        assert_eq!(c.status, ChangeStatus::Failed);
        assert!(c.rolled_back, "a rollback stays recorded ({})", b.name);
        assert_eq!(c.cause.as_deref(), Some("regressed"));
        assert_eq!((c.incident, c.wave), (Some(7), Some(1)));
        assert_eq!(c.good.as_ref().unwrap().commit.as_deref(), Some("c1"));
        let p = s
            .pause(&NewPause {
                selector: "tier=web",
                reason: "incident",
                who: "alice",
                until: None,
            })
            .unwrap();
        assert_eq!(s.pauses(now).unwrap()[0].id, p);
        assert_eq!(s.resume(None, Utc::now()).unwrap().len(), 1);
        assert!(s.pauses(Utc::now()).unwrap().is_empty(), "{}", b.name);
        let row = |name: &str, state| ProposalRow {
            key: key(name),
            fingerprint: "f".into(),
            number: Some(3),
            url: None,
            state,
            updated_at: now,
            head: Some("tend/x".into()),
        };
        s.save_proposals(&[
            row("a", ProposalState::Open),
            row("b", ProposalState::Waiting),
        ])
        .unwrap();
        s.save_proposals(&[row("b", ProposalState::Declined)])
            .unwrap();
        let saved = s.proposals().unwrap();
        assert_eq!(saved.len(), 1, "{}", b.name);
        assert_eq!(saved[0].state, ProposalState::Declined);
        assert_eq!(saved[0].head.as_deref(), Some("tend/x"));
        let shadow = tend::state::ShadowRow {
            signature: "sig".into(),
            key: k.clone(),
            cause: "c".into(),
            step: StepAction::Restart,
            started_at: now,
            ended_at: None,
            on_its_own: None,
        };
        s.shadow_match(&shadow).unwrap();
        s.shadow_match(&shadow).unwrap();
        s.shadow_end("sig", &k, now, true).unwrap();
        let m = s.shadow_matches().unwrap();
        assert_eq!(m.len(), 1, "one match while it lasts ({})", b.name);
        assert_eq!(m[0].on_its_own, Some(true));
    }
}

#[test]
fn samples_are_kept_per_series_capped_and_aged_out() {
    for b in backends() {
        let s = b.store.as_ref();
        let now = Utc::now();
        let row = |signal: &str, secs_ago: i64, value: f64| SampleRow {
            key: key("a"),
            signal: signal.into(),
            at: now - Duration::seconds(secs_ago),
            value,
        };
        let mut rows: Vec<SampleRow> = (0..MAX_SAMPLES as i64 + 10)
            .map(|i| row("disk", i, i as f64))
            .collect();
        // Older than the days kept, of a series not written again.
        rows.push(row("gone", (SAMPLE_DAYS + 1) * 86_400, 1.0));
        rows.push(row("nan", 5, f64::NAN));
        s.add_samples(&rows).unwrap();
        let since = now - Duration::days(SAMPLE_DAYS + 2);
        let disk = s.samples(&key("a"), "disk", since).unwrap();
        assert_eq!(disk.len(), MAX_SAMPLES, "capped to the newest ({})", b.name);
        assert_eq!(disk.last().unwrap().1, 0.0, "oldest first, newest last");
        assert_eq!(disk[0].1, (MAX_SAMPLES - 1) as f64);
        assert!(s.samples(&key("a"), "gone", since).unwrap().is_empty());
        assert!(s.samples(&key("a"), "nan", since).unwrap().is_empty());
        let recent = s
            .samples(&key("a"), "disk", now - Duration::seconds(9))
            .unwrap();
        assert_eq!(recent.len(), 10, "{}", b.name);
    }
}

/// On the shared store the run lock is per node: a second process of the
/// same node is refused while the first lives, and a process whose
/// connection ended (it died) leaves the lock to the next.
#[test]
fn the_shared_run_lock_is_per_node_and_ends_with_its_holder() {
    let db = pg::database();
    let dirs = tempfile::tempdir().unwrap();
    let open = |node: &str| {
        let t = Target::parse(&db.url_with_password(), UrlSource::Environment, None, node).unwrap();
        // A machine of its own each (the machine's lock is tested apart).
        let dir = tempfile::tempdir_in(dirs.path()).unwrap().keep();
        tend::state::open(&dir, Some(&t)).unwrap()
    };
    let first = open("n1");
    first.lock("tend watch").unwrap();
    let same_node = open("n1");
    match same_node.lock("tend apply") {
        Err(StateError::Locked { command, path, .. }) => {
            assert_eq!(command, "tend watch");
            assert!(
                path.contains("node n1") && !path.contains(pg::PASSWORD),
                "{path}"
            );
        }
        other => panic!("expected the lock to be held: {other:?}"),
    }
    open("n2").lock("tend watch").unwrap();
    drop(first);
    // The server lets go of a closed session's lock within moments.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = same_node.lock("tend apply") {
        assert!(std::time::Instant::now() < deadline, "{e}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    same_node.unlock().unwrap();
}

/// A database written by a newer tend is refused, never half-understood;
/// a URL that is not PostgreSQL's is a clear error.
#[test]
fn a_newer_schema_and_a_bad_url_are_refused() {
    let db = pg::database();
    let t = Target::parse(&db.url_with_password(), UrlSource::Environment, None, "n").unwrap();
    drop(tend::state::open(std::path::Path::new("/nonexistent"), Some(&t)).unwrap());
    db.sql("UPDATE meta SET value = '99' WHERE name = 'schema_version'");
    let err = tend::state::open(std::path::Path::new("/nonexistent"), Some(&t))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("schema version 99"), "{err}");
    assert!(!err.contains(pg::PASSWORD), "{err}");
}

/// The intent of an action on a shared resource is written only under
/// this member's unexpired lease, with its epoch; what nobody declared
/// (no lease at all) only by the publisher.
#[test]
fn an_intent_on_a_shared_resource_needs_the_lease() {
    use std::time::Duration;
    let db = pg::database();
    let open = |node: &str| {
        let t = Target::parse(&db.url_with_password(), UrlSource::Environment, None, node).unwrap();
        tend::state::open(std::path::Path::new("/nonexistent"), Some(&t)).unwrap()
    };
    let (a, b) = (open("n1"), open("n2"));
    let bucket = ResourceKey::new(Kind::AwsBucket, "x");
    let lease = vec!["aws.s3.Bucket/x".to_string()];
    let short = Duration::from_millis(1500);
    let run = begin(a.as_ref());
    let fenced = |s: &dyn Store, key: &ResourceKey| {
        matches!(
            s.intent(&rec(run, "f", key)),
            Err(StateError::Fenced { .. })
        )
    };
    assert!(fenced(a.as_ref(), &bucket), "no lease, no intent");
    let (fa, fb) = (a.fleet().unwrap(), b.fleet().unwrap());
    assert_eq!(fa.hold(&lease, short).unwrap(), lease);
    a.intent(&rec(run, "f", &bucket)).unwrap();
    assert!(fb.hold(&lease, short).unwrap().is_empty(), "held by n1");
    std::thread::sleep(short + Duration::from_millis(300));
    assert_eq!(fb.hold(&lease, short).unwrap(), lease, "taken once expired");
    assert!(fenced(a.as_ref(), &bucket), "n1 lost it");
    assert_eq!(
        db.sql("SELECT string_agg(node || ':' || epoch, ',') FROM journal WHERE phase = 'intent'"),
        "n1:1"
    );
    let unmanaged = ResourceKey::new(Kind::AwsBucket, "nobodys");
    assert!(fenced(a.as_ref(), &unmanaged), "not the publisher");
    fa.hold(&[tend::state::PUBLISHER.to_string()], short)
        .unwrap();
    a.intent(&rec(run, "f", &unmanaged)).unwrap();
    assert!(
        fenced(a.as_ref(), &bucket),
        "the publisher does not act on a held key"
    );
    // A host resource is this node's own: no lease.
    a.intent(&rec(run, "f", &key("motd"))).unwrap();
}

/// A fleet budget's slots: at most `max` at once, given back by their
/// holder, lapsed at their expiry, and those of members that left not
/// counted; health reports replace the member's own.
#[test]
fn budget_slots_and_health_reports_round_trip() {
    use tend::state::{Health, NewSlot};
    for b in backends() {
        let s = b.store.as_ref();
        let run = begin(s);
        let slot = |k: &ResourceKey, max: usize, secs: i64, live: Option<&[String]>| {
            s.fleet_rows()
                .take_slot(&NewSlot {
                    budget: "web",
                    key: k,
                    max,
                    run_id: run,
                    until: Utc::now() + Duration::seconds(secs),
                    live,
                })
                .unwrap()
        };
        let (a, c) = (key("a"), key("c"));
        assert!(slot(&a, 1, 60, None).is_empty(), "{}: taken", b.name);
        assert!(
            slot(&a, 1, 60, None).is_empty(),
            "{}: its own again",
            b.name
        );
        let full = slot(&c, 1, 60, None);
        assert_eq!(full.len(), 1, "{}", b.name);
        assert_eq!(full[0].key, a, "{}", b.name);
        s.fleet_rows().release_slots(&a).unwrap();
        assert!(slot(&c, 1, 60, None).is_empty(), "{}: given back", b.name);
        assert_eq!(s.fleet_rows().slots().unwrap().len(), 1, "{}", b.name);
        // Lapsed: counted no more.
        (b.raw)("UPDATE budget_slots SET expires_at = '2000-01-01T00:00:00.000Z'");
        assert!(slot(&a, 1, 60, None).is_empty(), "{}: lapsed", b.name);
        // Only the live members' slots count.
        let nobody: Vec<String> = vec!["elsewhere".into()];
        (b.raw)("UPDATE budget_slots SET node = 'gone'");
        assert!(slot(&c, 1, 60, Some(&nobody)).is_empty(), "{}", b.name);
        s.fleet_rows().release_all_slots().unwrap();
        assert_eq!(
            s.fleet_rows().slots().unwrap().len(),
            1,
            "{}: only the other node's is left",
            b.name
        );

        s.fleet_rows()
            .report_health(
                "web",
                &[(a.clone(), Health::Healthy), (c.clone(), Health::Unwell)],
            )
            .unwrap();
        s.fleet_rows()
            .report_health("web", &[(a.clone(), Health::Problem)])
            .unwrap();
        let rows = s.fleet_rows().fleet_health("web").unwrap();
        let keyed: Vec<_> = rows.iter().filter(|r| r.key.is_some()).collect();
        assert_eq!(keyed.len(), 1, "{}: replaced, {rows:?}", b.name);
        assert!(!keyed[0].healthy && keyed[0].problem, "{}", b.name);
        assert_eq!(rows.len(), 2, "{}: and the row that says it looked", b.name);

        s.intent(&rec(run, "f", &a)).unwrap();
        s.outcome(&JournalRecord {
            outcome: Some(JournalOutcome::Failed),
            ..rec(run, "f", &a)
        })
        .unwrap();
        let errors = s
            .fleet_rows()
            .fleet_errors(Utc::now() - Duration::minutes(1))
            .unwrap();
        assert_eq!(errors.len(), 1, "{}", b.name);
        assert_eq!(errors[0].key, a, "{}", b.name);
    }
}

/// Members asking one budget at the same moment queue on it: with room
/// for one, exactly one of them gets it.
#[test]
fn a_budget_slot_goes_to_one_member_when_many_ask_at_once() {
    let db = pg::database();
    let stores: Vec<Box<dyn Store>> = (0..6)
        .map(|i| {
            let t = Target::parse(
                &db.url_with_password(),
                UrlSource::Environment,
                None,
                &format!("n{i}"),
            )
            .unwrap();
            tend::state::open(std::path::Path::new("/nonexistent"), Some(&t)).unwrap()
        })
        .collect();
    let run = begin(stores[0].as_ref());
    for round in 0..5 {
        let barrier = std::sync::Barrier::new(stores.len());
        let won: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let k = key(&format!("r{round}-{i}"));
                        barrier.wait();
                        s.fleet_rows()
                            .take_slot(&tend::state::NewSlot {
                                budget: "web",
                                key: &k,
                                max: 1,
                                run_id: run,
                                until: Utc::now() + Duration::seconds(60),
                                live: None,
                            })
                            .unwrap()
                            .is_empty() as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(won, 1, "round {round}");
        assert_eq!(db.sql("SELECT count(*) FROM budget_slots"), "1");
        db.sql("DELETE FROM budget_slots");
    }
}

/// TLS as the URL asks: `sslmode=verify-full` (or `require`) with the
/// server's authority in `sslrootcert` encrypts and verifies; an
/// authority tend does not trust is refused, saying so; `sslrootcert`
/// without a mode that uses it is an error, not a silent plain link.
#[test]
fn tls_is_used_and_verified_when_the_url_asks_for_it() {
    let db = pg::database();
    let nowhere = std::path::Path::new("/nonexistent");
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url_with_password(),
        db.ca().display()
    );
    let t = Target::parse(&url, UrlSource::Environment, None, "tls1").unwrap();
    let s = tend::state::open(nowhere, Some(&t)).unwrap();
    begin(s.as_ref());
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE s.ssl AND a.application_name = 'tend tls1'"
        ),
        "1",
        "tend's connection is encrypted"
    );

    let untrusted = format!("{}?sslmode=require", db.url_with_password());
    let t = Target::parse(&untrusted, UrlSource::Environment, None, "tls2").unwrap();
    let err = tend::state::open(nowhere, Some(&t))
        .err()
        .expect("an unknown authority is refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains(pg::PASSWORD), "{err}");

    let unused = format!("{}?sslrootcert={}", db.url(), db.ca().display());
    let err = Target::parse(&unused, UrlSource::Environment, None, "tls3")
        .expect_err("sslrootcert alone is refused")
        .to_string();
    assert!(err.contains("sslmode=require"), "{err}");
}
