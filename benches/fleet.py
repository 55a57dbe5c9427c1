#!/usr/bin/env python3
"""A fleet of `tend watch` members on one PostgreSQL, measured.

For 1, 2 and 3 members on one repository of HOST_FILES host.File
resources (each member has its own host root, so every member reconciles
all of them on its node) and CLOUD_RESOURCES S3 buckets on moto (shared,
sharded over the members):

- convergence: from empty until every member created its files and the
  buckets exist, and the resources reconciled per second across the fleet;
- pass latency: the median duration of the members' passes once converged;
- cloud correction: every bucket drifted at once, until all are corrected;
- failover (2 and 3 members): one member stopped (SIGSTOP, then SIGKILL)
  right before its buckets drift, until the first action on one of them by
  a new owner.

Needs PostgreSQL's server binaries (Debian `postgresql`), moto_server and
boto3, and a built tend (TEND_BIN, default the newer of target/release/tend
and target/debug/tend). Everything listens on 127.0.0.1 only.

    python3 benches/fleet.py [--members 1,2,3] [--files 3000] [--cloud 300]
"""

import argparse
import glob
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PASSWORD = "tend-fleet-bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout):
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            sys.exit(f"fleet bench: {what} did not happen within {timeout}s")
        time.sleep(0.2)
    return time.monotonic() - start


class Postgres:
    def __init__(self, work):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            sys.exit("fleet bench: no PostgreSQL server (apt-get install postgresql)")
        self.bin = os.path.dirname(bins[-1])
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        root = os.geteuid() == 0
        self.prefix = ["runuser", "-u", "postgres", "--"] if root else []
        pw = os.path.join(self.dir, "pw")
        with open(pw, "w") as f:
            f.write(PASSWORD)
        if root:
            subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        data = os.path.join(self.dir, "data")
        subprocess.run(
            self.prefix
            + [f"{self.bin}/initdb", "-D", data, "-U", "tend", "-E", "UTF8", "--no-sync",
               "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pw}"],
            check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
                "-c fsync=off -c synchronous_commit=off -c max_connections=300")
        subprocess.run(
            self.prefix + [f"{self.bin}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"),
                           "-o", opts, "-w", "start"],
            check=True, stdout=subprocess.DEVNULL)
        self.data = data

    def sql(self, db, query):
        out = subprocess.run(
            [f"{self.bin}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "tend", "-d", db, "-c", query],
            env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    def count(self, db, query):
        v = self.sql(db, query)
        return int(v) if v and v.isdigit() else 0

    def stop(self):
        subprocess.run(self.prefix + [f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Moto:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("moto", self.up, 60)
        import boto3
        self.s3 = boto3.client("s3", endpoint_url=self.url(), region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def up(self):
        try:
            urllib.request.urlopen(self.url() + "/moto-api/data.json", timeout=1)
            return True
        except OSError:
            return False

    def reset(self):
        urllib.request.urlopen(urllib.request.Request(self.url() + "/moto-api/reset", method="POST"))

    def drift(self, names):
        for n in names:
            self.s3.put_bucket_tagging(Bucket=n, Tagging={"TagSet": [{"Key": "team", "Value": "drift"}]})

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def repo(work, moto, files, cloud):
    d = os.path.join(work, "repo")
    os.makedirs(d)
    with open(os.path.join(d, "settings.yaml"), "w") as f:
        f.write("apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n"
                "  providers: [host, aws]\n"
                f"  aws:\n    regions: [us-east-1]\n    endpointUrl: {moto.url()}\n"
                "  state:\n    lease: 3s\n"
                "  safety:\n    maxActionsPerRun: 100000\n")
    per_file = 500
    for start in range(0, files, per_file):
        with open(os.path.join(d, f"files-{start // per_file:02}.yaml"), "w") as f:
            f.write("---\n".join(
                f"apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {{name: f{i:05}}}\n"
                f"spec:\n  path: files/f{i:05}\n  mode: \"0644\"\n  content: \"file {i}\\n\"\n"
                for i in range(start, min(files, start + per_file))))
    with open(os.path.join(d, "buckets.yaml"), "w") as f:
        f.write("---\n".join(
            f"apiVersion: tend.dev/v1\nkind: aws.s3.Bucket\nmetadata: {{name: bench-{i:04}}}\n"
            "spec:\n  tags: {team: data}\n"
            for i in range(cloud)))
    return d


def tend_bin():
    if os.environ.get("TEND_BIN"):
        return os.environ["TEND_BIN"]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    built = [p for p in (os.path.join(here, "target", profile, "tend") for profile in ("release", "debug"))
             if os.path.exists(p)]
    if not built:
        sys.exit("fleet bench: build tend first (cargo build --release)")
    # The one built last: a release build left from an older tree is not used.
    return max(built, key=os.path.getmtime)


def start_member(work, name, repo_dir, url, interval):
    home = os.path.join(work, name)
    os.makedirs(home, exist_ok=True)
    env = {**os.environ, "TEND_STATE_URL": url, "TEND_STATE_PASSWORD": PASSWORD,
           "TEND_STATE_DIR": os.path.join(home, "state"), "NO_COLOR": "1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": os.path.join(home, "none"),
           "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "none")}
    env.pop("AWS_PROFILE", None)
    log = open(os.path.join(home, "watch.log"), "w")
    return subprocess.Popen([tend_bin(), "watch", "--node", name, "--interval", interval,
                             "--jitter", "0", repo_dir],
                            cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=log)


def run(members, files, cloud, interval):
    work = tempfile.mkdtemp(prefix="tend-fleet-bench-")
    os.chmod(work, 0o755)  # the server's user reaches its directory inside
    pg = Postgres(work)
    moto = Moto()
    rows = []
    try:
        repo_dir = repo(work, moto, files, cloud)
        for m in members:
            db = f"m{m}"
            pg.sql("postgres", f"CREATE DATABASE {db}")
            moto.reset()
            url = f"postgres://tend@127.0.0.1:{pg.port}/{db}"
            names = [f"n{i + 1}" for i in range(m)]
            procs = {n: start_member(os.path.join(work, db), n, repo_dir, url, interval) for n in names}
            total = files * m + cloud
            created = "SELECT count(*) FROM journal WHERE phase = 'outcome' AND outcome = 'synced' AND action = 'create'"
            converge = wait_for("convergence", lambda: pg.count(db, created) >= total, 1800)
            # Passes once converged: a few intervals more.
            mark = pg.sql(db, "SELECT max(id) FROM runs")
            passes = ("SELECT extract(epoch FROM CAST(finished_at AS timestamptz) - CAST(started_at AS timestamptz)) "
                      f"FROM runs WHERE id > {mark} AND finished_at IS NOT NULL AND command = 'tend watch'")
            # At least three full passes per member, or five minutes.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and len((pg.sql(db, passes) or "").split()) < 3 * m:
                time.sleep(1)
            durations = [float(x) for x in (pg.sql(db, passes) or "").split()]
            latency = statistics.median(durations) if durations else float("nan")
            updated = ("SELECT count(*) FROM journal WHERE phase = 'outcome' AND outcome = 'synced' "
                       "AND action = 'update' AND kind = 'aws.s3.Bucket'")
            buckets = [f"bench-{i:04}" for i in range(cloud)]
            before = pg.count(db, updated)
            t0 = time.monotonic()
            moto.drift(buckets)
            drifted = time.monotonic() - t0
            corrected = wait_for("cloud correction", lambda: pg.count(db, updated) >= before + cloud, 900)
            failover = None
            if m > 1:
                victim = names[-1]
                held = pg.sql(db, f"SELECT string_agg(name, ',') FROM leases WHERE holder = '{victim}' "
                                  "AND kind = 'aws.s3.Bucket' AND expires_at > clock_timestamp()") or ""
                mine = [b for b in held.split(",") if b]
                procs[victim].send_signal(signal.SIGSTOP)
                stopped = pg.sql(db, "SELECT clock_timestamp()")
                moto.drift(mine)
                procs[victim].kill()
                procs[victim].wait()
                first = ("SELECT count(*) FROM journal WHERE phase = 'intent' AND node <> '" + victim +
                         "' AND name IN (" + ",".join(f"'{b}'" for b in mine) + ")" +
                         f" AND CAST(at AS timestamptz) > CAST('{stopped}' AS timestamptz)")
                wait_for("failover", lambda: pg.count(db, first) > 0, 300)
                failover = float(pg.sql(db, (
                    "SELECT extract(epoch FROM min(CAST(at AS timestamptz)) - CAST('" + stopped +
                    "' AS timestamptz)) FROM journal WHERE phase = 'intent' AND node <> '" + victim +
                    "' AND name IN (" + ",".join(f"'{b}'" for b in mine) + ")" +
                    f" AND CAST(at AS timestamptz) > CAST('{stopped}' AS timestamptz)")))
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            rows.append((m, total, converge, total / converge, latency, len(durations), corrected,
                         drifted, failover))
    finally:
        moto.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", default="1,2,3")
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--cloud", type=int, default=300)
    ap.add_argument("--interval", default="5s")
    a = ap.parse_args()
    members = [int(x) for x in a.members.split(",")]
    rows = run(members, a.files, a.cloud, a.interval)
    print(f"\n{a.files} host files per node, {a.cloud} S3 buckets on moto, lease 3s, interval {a.interval}\n")
    print("| members | resources | converged in | reconciled/s | pass latency (median, passes) "
          "| every bucket drifted, all corrected in | failover (stop → first action by the new owner) |")
    print("|---|---|---|---|---|---|---|")
    for m, total, conv, rate, lat, n, corr, drift, fo in rows:
        print(f"| {m} | {total} | {conv:.1f} s | {rate:.0f} | {lat:.2f} s ({n}) | {corr:.1f} s "
              f"(the drift itself took {drift:.1f} s) | {'—' if fo is None else f'{fo:.1f} s'} |")


if __name__ == "__main__":
    main()
