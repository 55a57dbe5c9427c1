//! tend against Cloud Custodian on the same AWS-compatible inventory: 1,000
//! instances and 1,000 security groups (`TEND_BENCH_AWS_N` of each) on a
//! moto server on 127.0.0.1.
//!
//! Both tools read the same resources: `tend plan` inventories and plans
//! every declared instance and security group; `custodian run` runs two
//! policies, one over `aws.ec2` (instances not of the declared type) and
//! one over `aws.security-group` (port 22 open to 0.0.0.0/0). Both run end
//! to end as processes, as a user would run them. A third measurement,
//! the floor, makes every listing tend's inventory makes (the instances
//! and groups, and the empty listings of the other AWS kinds) from boto3 in
//! one process: the time the server itself needs to answer them.
//! `scripts/bench-aws.sh` reports each tool's time as a multiple of that
//! floor.
//! Needs `moto_server`, `python3` with boto3 and `custodian` on PATH
//! (`scripts/bench-aws.sh` provides them).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

/// Instances and security groups seeded (each).
fn n() -> usize {
    std::env::var("TEND_BENCH_AWS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

struct Moto(std::process::Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (scripts/bench-aws.sh installs it)"),
        port,
    );
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return moto;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not start");
}

/// `n` instances and `n` groups as tend would have created them (with its
/// ownership tags); every tenth group has ssh open to the world.
fn seed(url: &str, n: usize) {
    let script = format!(
        "import boto3\n\
         ec2 = boto3.client('ec2', endpoint_url='{url}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         for i in range({n}):\n\
         \x20   g = ec2.create_security_group(GroupName=f'sg-{{i}}', Description='bench', TagSpecifications=[{{'ResourceType': 'security-group', 'Tags': [{{'Key': 'tend.dev/name', 'Value': f'aws.ec2.SecurityGroup/sg-{{i}}'}}]}}])['GroupId']\n\
         \x20   port = 22 if i % 10 == 0 else 443\n\
         \x20   ec2.authorize_security_group_ingress(GroupId=g, IpPermissions=[{{'IpProtocol': 'tcp', 'FromPort': port, 'ToPort': port, 'IpRanges': [{{'CidrIp': '0.0.0.0/0'}}]}}])\n\
         ids = [i['InstanceId'] for i in ec2.run_instances(ImageId='ami-12c6146b', InstanceType='t3.micro', MinCount={n}, MaxCount={n})['Instances']]\n\
         for n, i in enumerate(ids):\n\
         \x20   ec2.create_tags(Resources=[i], Tags=[{{'Key': 'tend.dev/name', 'Value': f'aws.ec2.Instance/vm-{{n}}'}}])\n"
    );
    let ok = Command::new("python3")
        .arg("-c")
        .arg(script)
        .status()
        .expect("python3 with boto3");
    assert!(ok.success(), "seeding moto failed");
}

fn desired(dir: &Path, url: &str, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("settings.yaml"),
        format!("apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  providers: [aws]\n  aws: {{regions: [us-east-1], endpointUrl: \"{url}\"}}\n"),
    )
    .unwrap();
    let mut text = String::new();
    for i in 0..n {
        let port = if i % 10 == 0 { 22 } else { 443 };
        text.push_str(&format!(
            "apiVersion: tend.dev/v1\nkind: aws.ec2.SecurityGroup\nmetadata: {{name: sg-{i}}}\nspec:\n  description: bench\n  ingress: [{{protocol: tcp, fromPort: {port}, toPort: {port}, cidr: 0.0.0.0/0}}]\n---\n\
             apiVersion: tend.dev/v1\nkind: aws.ec2.Instance\nmetadata: {{name: vm-{i}}}\nspec:\n  instanceType: t3.micro\n  imageId: ami-12c6146b\n---\n"
        ));
    }
    std::fs::write(dir.join("fleet.yaml"), text).unwrap();
}

fn aws_env<'a>(c: &'a mut Command, url: &str) -> &'a mut Command {
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", url)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The same resources for Custodian: instances not of the declared type
/// (none) and groups with ssh open to the world (every tenth).
const POLICIES: &str = "policies:
  - name: instances-not-t3-micro
    resource: aws.ec2
    filters:
      - type: value
        key: InstanceType
        op: ne
        value: t3.micro
  - name: ssh-open-to-the-world
    resource: aws.security-group
    filters:
      - type: ingress
        Ports: [22]
        Cidr: {value: 0.0.0.0/0}
";

/// The listings tend's inventory makes when no health is watched, from
/// boto3 in one process: what the server needs to answer them, the floor
/// under any client.
fn floor_script(url: &str) -> String {
    format!(
        "import boto3\n\
         kw = dict(endpoint_url='{url}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         ec2 = boto3.client('ec2', **kw)\n\
         for p in ec2.get_paginator('describe_instances').paginate(MaxResults=1000): pass\n\
         for p in ec2.get_paginator('describe_security_groups').paginate(MaxResults=1000): pass\n\
         for p in ec2.get_paginator('describe_launch_templates').paginate(MaxResults=200): pass\n\
         for p in boto3.client('autoscaling', **kw).get_paginator('describe_auto_scaling_groups').paginate(MaxRecords=100): pass\n\
         boto3.client('s3', **kw).list_buckets()\n"
    )
}

fn bench(c: &mut Criterion) {
    if !on_path("moto_server") || !on_path("custodian") {
        eprintln!(
            "aws: skipped, moto_server and custodian are not on PATH (scripts/bench-aws.sh installs them and runs this benchmark)"
        );
        return;
    }
    let n = n();
    let moto = start_moto();
    let url = format!("http://127.0.0.1:{}", moto.1);
    seed(&url, n);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("desired");
    desired(&repo, &url, n);
    let policy = work.path().join("custodian.yml");
    std::fs::write(&policy, POLICIES).unwrap();
    let tend = env!("CARGO_BIN_EXE_tend");

    let state = work.path().join("state");
    let out = work.path().join("c7n");
    let tend_plan = || {
        aws_env(
            Command::new(tend)
                .args(["plan", "--detailed-exitcode"])
                .arg(&repo),
            &url,
        )
        .env("TEND_STATE_DIR", &state)
        .status()
        .expect("tend plan")
    };
    let listings = floor_script(&url);
    let boto_listings = || {
        Command::new("python3")
            .arg("-c")
            .arg(&listings)
            .status()
            .expect("python3 with boto3")
    };
    let custodian_run = || {
        aws_env(
            Command::new("custodian")
                .args(["run", "--cache-period", "0", "-s"])
                .arg(&out)
                .arg(&policy),
            &url,
        )
        .status()
        .expect("custodian on PATH")
    };

    // Both tools must succeed on this inventory before they are timed; the
    // plan must find everything in sync, and Custodian must have read every
    // group.
    assert_eq!(
        tend_plan().code(),
        Some(0),
        "tend plan on the seeded inventory"
    );
    assert!(custodian_run().success(), "custodian run");
    let found = |policy: &str| -> Option<usize> {
        let text = std::fs::read(out.join(policy).join("resources.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        v.as_array().map(Vec::len)
    };
    assert_eq!(found("ssh-open-to-the-world"), Some(n.div_ceil(10)));
    assert_eq!(found("instances-not-t3-micro"), Some(0));

    // Short ids: scripts/bench-aws.sh reads criterion's estimates by them.
    let mut g = c.benchmark_group(format!("aws-{n}"));
    g.sample_size(10).measurement_time(Duration::from_secs(60));
    g.bench_function("tend", |b| {
        b.iter(|| assert_eq!(tend_plan().code(), Some(0)))
    });
    g.bench_function("custodian", |b| {
        b.iter(|| assert!(custodian_run().success()))
    });
    g.bench_function("floor", |b| b.iter(|| assert!(boto_listings().success())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
