//! The `aws` provider end to end: the real binary and the AWS SDK against a
//! real moto server on 127.0.0.1 (the endpoint override), changes made
//! behind tend's back with boto3.

use super::*;

use std::time::Duration;

fn aws_workspace(moto: &Moto) -> Workspace {
    let ws = Workspace::new();
    ws.write("settings.yaml", &aws_settings(&moto.url()));
    ws
}

fn aws_settings(endpoint: &str) -> String {
    format!(
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  providers: [aws]\n  aws:\n    regions: [us-east-1]\n    endpointUrl: {endpoint}\n"
    )
}

/// tend with credentials for moto and nothing that could reach a real
/// AWS endpoint (no shared config, no instance metadata).
fn run(ws: &Workspace, args: &[&str]) -> Run {
    let mut c = ws.cmd();
    c.args(args)
        .arg(ws.desired())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", ws.path().join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            ws.path().join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    Run::from(c.output().expect("run tend"))
}

const WEB_SG: &str = "apiVersion: tend.dev/v1
kind: aws.ec2.SecurityGroup
metadata: {name: web}
spec:
  description: web tier
  ingress:
    - {protocol: tcp, fromPort: 443, toPort: 443, cidr: 0.0.0.0/0}
    - {protocol: tcp, fromPort: 22, toPort: 22, cidr: 10.0.0.0/8}
  tags: {team: web}
";

const LOG_BUCKET: &str = "apiVersion: tend.dev/v1
kind: aws.s3.Bucket
metadata: {name: tend-logs}
spec:
  versioning: true
  publicAccessBlock: {blockPublicAcls: true, ignorePublicAcls: true, blockPublicPolicy: true, restrictPublicBuckets: true}
  encryption: {algorithm: AES256}
  tags: {team: data}
";

/// `tend plan --format json`, which must succeed.
fn plan_json(ws: &Workspace) -> serde_json::Value {
    let plan = run(ws, &["plan", "--format", "json"]);
    plan.ok();
    plan.json()
}

/// The next plan has nothing to do.
fn assert_clean(ws: &Workspace) {
    let j = plan_json(ws);
    assert_eq!(j["summary"]["pending"], 0, "{j:#}");
}

fn paths(action: &serde_json::Value) -> Vec<String> {
    action["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_security_group_is_created_corrected_after_console_changes_and_clean_after() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);

    let j = plan_json(&ws);
    assert_eq!(j["actions"][0]["type"], "create");
    assert_eq!(j["actions"][0]["decision"], "auto");
    run(&ws, &["apply"]).ok();
    let j = plan_json(&ws);
    assert_eq!(j["summary"]["pending"], 0, "{j:#}");
    assert!(
        j["unmanaged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "default" && u["reason"] == "not owned by tend"),
        "the default group is listed as unmanaged: {j:#}"
    );

    // Behind tend's back: ssh opened to the world, a tag changed.
    moto.boto(
        "g = ec2.describe_security_groups(Filters=[{'Name': 'tag:tend.dev/name', 'Values': ['aws.ec2.SecurityGroup/web']}])['SecurityGroups'][0]\n\
         ec2.authorize_security_group_ingress(GroupId=g['GroupId'], IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 22, 'ToPort': 22, 'IpRanges': [{'CidrIp': '0.0.0.0/0'}]}])\n\
         ec2.create_tags(Resources=[g['GroupId']], Tags=[{'Key': 'team', 'Value': 'someone-else'}])\n",
    );
    let j = plan_json(&ws);
    let action = &j["actions"][0];
    assert_eq!(action["type"], "update");
    assert_eq!(paths(action), ["/spec/ingress", "/spec/tags/team"]);
    assert_eq!(action["changes"][1]["from"], "someone-else");
    assert_eq!(action["decision"], "auto", "{action:#}");
    assert!(action["reasons"].to_string().contains("closes port 22"));

    let applied = run(&ws, &["apply", "--format", "json"]);
    applied.ok();
    assert_eq!(applied.json()["results"]["applied"], 1);
    let open = moto.boto(
        "g = ec2.describe_security_groups(Filters=[{'Name': 'tag:tend.dev/name', 'Values': ['aws.ec2.SecurityGroup/web']}])['SecurityGroups'][0]\n\
         print(any(r.get('CidrIp') == '0.0.0.0/0' and p.get('FromPort') == 22 for p in g['IpPermissions'] for r in p['IpRanges']))\n",
    );
    assert_eq!(open.trim(), "False");
    assert_clean(&ws);
}

/// M1: tags on a group tend does not manage choose nothing tend masks:
/// words such as `web`, `review` or `null` stay in the plan, which stays
/// valid JSON, and `--github` registers no mask for them.
#[test]
fn m1_tags_on_an_unmanaged_group_choose_nothing_tend_masks() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);
    run(&ws, &["apply"]).ok();
    moto.boto(
        "g = ec2.create_security_group(GroupName='someone-elses', Description='not tend')\n\
         ec2.create_tags(Resources=[g['GroupId']], Tags=[{'Key': 'api_token', 'Value': 'null'}, {'Key': 'db_password', 'Value': 'review'}, {'Key': 'x_secret', 'Value': 'web tier'}])\n",
    );
    let plan = run(&ws, &["plan", "--format", "json"]);
    plan.ok();
    let j: serde_json::Value = serde_json::from_str(&plan.stdout)
        .unwrap_or_else(|e| panic!("the plan is not JSON ({e}):\n{}", plan.stdout));
    assert!(!plan.stdout.contains("***"), "{}", plan.stdout);
    assert!(
        j["unmanaged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "someone-elses"),
        "{j:#}"
    );
    let github = run(&ws, &["--github", "plan"]);
    for word in ["null", "review", "web tier"] {
        assert!(
            !github.stdout.contains(&format!("::add-mask::{word}")),
            "{word} masked:\n{}",
            github.stdout
        );
    }
}

#[test]
fn an_unrelated_rule_change_goes_to_review_and_is_not_applied() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);
    run(&ws, &["apply"]).ok();
    moto.boto(
        "g = ec2.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['web']}])['SecurityGroups'][0]\n\
         ec2.authorize_security_group_ingress(GroupId=g['GroupId'], IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 8080, 'ToPort': 8080, 'IpRanges': [{'CidrIp': '10.1.0.0/16'}]}])\n",
    );
    let out = run(&ws, &["apply", "--format", "json"]);
    out.ok();
    let j = out.json();
    assert_eq!(j["actions"][0]["decision"], "review", "{j:#}");
    assert_eq!(j["results"]["applied"], 0);
    let still = moto.boto(
        "g = ec2.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['web']}])['SecurityGroups'][0]\n\
         print(any(p.get('FromPort') == 8080 for p in g['IpPermissions']))\n",
    );
    assert_eq!(still.trim(), "True", "a review decision changes nothing");
}

#[test]
fn opening_ssh_to_the_world_in_git_is_denied() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);
    run(&ws, &["apply"]).ok();
    ws.write(
        "sg.yaml",
        &WEB_SG.replace("cidr: 10.0.0.0/8", "cidr: 0.0.0.0/0"),
    );
    let out = run(&ws, &["apply", "--format", "json"]);
    out.ok();
    let a = &out.json()["actions"][0];
    assert_eq!(a["decision"], "deny");
    assert!(a["reasons"]
        .to_string()
        .contains("opens port 22 to the internet"));
}

#[test]
fn a_bucket_is_created_corrected_after_console_changes_and_clean_after() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("bucket.yaml", LOG_BUCKET);
    moto.boto("s3.create_bucket(Bucket='someone-elses')\n");
    run(&ws, &["apply"]).ok();
    let j = plan_json(&ws);
    assert_eq!(j["summary"]["pending"], 0, "{j:#}");
    assert!(j["unmanaged"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "someone-elses"));

    moto.boto(
        "s3.put_bucket_versioning(Bucket='tend-logs', VersioningConfiguration={'Status': 'Suspended'})\n\
         s3.put_public_access_block(Bucket='tend-logs', PublicAccessBlockConfiguration={'BlockPublicAcls': False, 'IgnorePublicAcls': True, 'BlockPublicPolicy': True, 'RestrictPublicBuckets': True})\n",
    );
    let drift = plan_json(&ws);
    let a = &drift["actions"][0];
    assert_eq!(
        paths(a),
        [
            "/spec/versioning",
            "/spec/publicAccessBlock/blockPublicAcls"
        ]
    );
    assert_eq!(a["decision"], "auto");
    run(&ws, &["apply"]).ok();
    assert_clean(&ws);
    let untouched = moto.boto("print(len(s3.list_buckets()['Buckets']))\n");
    assert_eq!(untouched.trim(), "2", "the unmanaged bucket is untouched");
}

#[test]
fn an_unreachable_server_is_an_error_and_nothing_changes() {
    let mut moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);
    moto.stop();
    let out = run(&ws, &["apply"]);
    out.code(1);
    assert!(
        out.stderr
            .contains("failed to read live state, so nothing was changed"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_server_stopped_mid_inventory_is_an_error_and_nothing_changes() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);
    ws.write("bucket.yaml", LOG_BUCKET);
    run(&ws, &["apply"]).ok();
    // Drift that tend would correct on its own: ssh opened to the world and
    // versioning suspended.
    moto.boto(
        "g = ec2.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['web']}])['SecurityGroups'][0]\n\
         ec2.authorize_security_group_ingress(GroupId=g['GroupId'], IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 22, 'ToPort': 22, 'IpRanges': [{'CidrIp': '0.0.0.0/0'}]}])\n\
         s3.put_bucket_versioning(Bucket='tend-logs', VersioningConfiguration={'Status': 'Suspended'})\n",
    );
    let drifted = "g = ec2.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['web']}])['SecurityGroups'][0]\n\
         print(any(r.get('CidrIp') == '0.0.0.0/0' and p.get('FromPort') == 22 for p in g['IpPermissions'] for r in p['IpRanges']))\n\
         print(s3.get_bucket_versioning(Bucket='tend-logs').get('Status'))\n";
    assert_eq!(moto.boto(drifted), "True\nSuspended\n");

    // The server answers the first inventory call, then goes away: the
    // other listings (and every retry) fail.
    let proxy = CutoffProxy::start(moto.port, 1);
    ws.write("settings.yaml", &aws_settings(&proxy.url()));
    let out = run(&ws, &["apply", "--format", "json"]);
    out.code(1);
    assert!(
        out.stderr
            .contains("failed to read live state, so nothing was changed"),
        "{}",
        out.stderr
    );
    assert!(
        proxy.stopped_midway(),
        "one answer, then cut: {:?}",
        proxy.counts()
    );
    assert_eq!(
        moto.boto(drifted),
        "True\nSuspended\n",
        "a partial inventory changes nothing"
    );

    // With the server whole again the same drift is planned for correction.
    ws.write("settings.yaml", &aws_settings(&moto.url()));
    let j = plan_json(&ws);
    assert_eq!(j["summary"]["pending"], 2, "{j:#}");
}

#[test]
fn an_aws_kind_needs_the_aws_provider() {
    let ws = Workspace::new();
    ws.write("sg.yaml", WEB_SG);
    let out = run(&ws, &["validate"]);
    out.code(1);
    assert!(out
        .stderr
        .contains("aws.ec2.SecurityGroup needs the aws provider"));
    assert!(out.stderr.contains("add `aws` to Settings spec.providers"));
}

#[test]
fn an_instance_is_launched_corrected_after_console_changes_and_clean_after() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);
    ws.write(
        "instance.yaml",
        "apiVersion: tend.dev/v1\nkind: aws.ec2.Instance\nmetadata: {name: web-1}\nspec:\n  instanceType: t3.micro\n  imageId: ami-12c6146b\n  securityGroups: [web]\n  tags: {team: web}\n",
    );
    run(&ws, &["apply"]).ok();
    assert_clean(&ws);

    // Behind tend's back: stopped, resized, re-tagged.
    moto.boto(
        "i = ec2.describe_instances(Filters=[{'Name': 'tag:tend.dev/name', 'Values': ['aws.ec2.Instance/web-1']}])['Reservations'][0]['Instances'][0]['InstanceId']\n\
         ec2.stop_instances(InstanceIds=[i])\n\
         ec2.modify_instance_attribute(InstanceId=i, InstanceType={'Value': 't3.large'})\n\
         ec2.create_tags(Resources=[i], Tags=[{'Key': 'team', 'Value': 'ops'}])\n",
    );
    let drift = plan_json(&ws);
    let a = &drift["actions"][0];
    assert_eq!(
        paths(a),
        ["/spec/instanceType", "/spec/tags/team", "/spec/state"],
        "{a:#}"
    );
    assert_eq!(a["decision"], "auto");
    run(&ws, &["apply"]).ok();
    let state = moto.boto(
        "i = ec2.describe_instances(Filters=[{'Name': 'tag:tend.dev/name', 'Values': ['aws.ec2.Instance/web-1']}])['Reservations'][0]['Instances'][0]\n\
         print(i['State']['Name'], i['InstanceType'], len(ec2.describe_instances()['Reservations']))\n",
    );
    assert_eq!(
        state.trim(),
        "running t3.micro 1",
        "corrected in place, nothing launched"
    );
    assert_clean(&ws);
}

#[test]
fn an_auto_scaling_group_is_created_corrected_after_console_changes_and_clean_after() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    launch_template(&moto, "web");
    ws.write(
        "asg.yaml",
        "apiVersion: tend.dev/v1\nkind: aws.autoscaling.Group\nmetadata: {name: web}\nspec:\n  minSize: 1\n  maxSize: 6\n  desiredCapacity: 2\n  launchTemplate: {name: web, version: \"1\"}\n  availabilityZones: [us-east-1a]\n  healthCheckType: EC2\n  healthCheckGracePeriod: 300\n  tags: {team: web}\n",
    );
    run(&ws, &["apply"]).ok();
    assert_clean(&ws);

    let asg = "import boto3\nasg = boto3.client('autoscaling', **kw)\n";
    moto.boto(&format!(
        "{asg}asg.update_auto_scaling_group(AutoScalingGroupName='web', DesiredCapacity=3, HealthCheckGracePeriod=60)\n"
    ));
    let drift = plan_json(&ws);
    let a = &drift["actions"][0];
    assert_eq!(
        paths(a),
        ["/spec/desiredCapacity", "/spec/healthCheckGracePeriod"],
        "{a:#}"
    );
    assert_eq!(a["decision"], "auto", "3 → 2 is within 50%: {a:#}");
    run(&ws, &["apply"]).ok();
    let now = moto.boto(&format!(
        "{asg}g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=['web'])['AutoScalingGroups'][0]\nprint(g['DesiredCapacity'], g['HealthCheckGracePeriod'])\n"
    ));
    assert_eq!(now.trim(), "2 300");
    assert_clean(&ws);

    // Someone sets the desired capacity far above the declared one: putting
    // it back is a big capacity change, so a human decides.
    moto.boto(&format!(
        "{asg}asg.update_auto_scaling_group(AutoScalingGroupName='web', DesiredCapacity=6)\n"
    ));
    assert_eq!(plan_json(&ws)["actions"][0]["decision"], "review");
}

#[test]
fn a_failed_instance_is_replaced_by_its_runbook_and_verified() {
    let moto = Moto::start();
    let (ws, port, serving) = healing_workspace(
        &moto,
        "apiVersion: tend.dev/v1\nkind: aws.ec2.Instance\nmetadata: {name: api}\nspec:\n  instanceType: t3.micro\n  imageId: ami-12c6146b\n",
        "{action: replace, within: 60s, hold: 1s}",
    );
    let ids = "print(sorted((i['InstanceId'], i['State']['Name']) for r in ec2.describe_instances(Filters=[{'Name': 'tag:tend.dev/name', 'Values': ['aws.ec2.Instance/api']}])['Reservations'] for i in r['Instances']))\n";
    let first = moto.boto(ids);
    assert!(first.contains("'running'"), "{first}");
    let old = first.split('\'').nth(1).unwrap().to_string();

    // The service on the instance stops answering; it answers again once a
    // new instance has taken the old one's place.
    drop(serving);
    let (out, listener) =
        apply_until_fixed(&ws, &moto, port, ids, &format!("('{old}', 'terminated')"));
    assert!(listener.is_some(), "the old instance was terminated");
    out.ok();
    let j = out.json();
    let action = runbook_step(&j, "replace");
    assert_eq!(action["decision"], "auto", "{action:#}");
    assert!(action["reasons"]
        .to_string()
        .contains("a runbook step heals a failed instance"));

    let now = moto.boto(ids);
    assert!(now.contains(&format!("('{old}', 'terminated')")), "{now}");
    assert_eq!(
        now.matches("'running'").count(),
        1,
        "one new instance: {now}"
    );
    assert_healed_by(&ws, "replace");
    assert_clean(&ws);
    drop(listener);
}

/// `tend apply` while the service a probe watches on `port` is down; it
/// comes back once `check` (a boto3 script) prints `fixed`, which is what
/// the runbook step under test does. Returns the run and the listener of
/// the recovered service (None if the fix never came).
fn apply_until_fixed(
    ws: &Workspace,
    moto: &Moto,
    port: u16,
    check: &str,
    fixed: &str,
) -> (Run, Option<std::net::TcpListener>) {
    std::thread::scope(|s| {
        let recovered = s.spawn(|| {
            for _ in 0..120 {
                if moto.boto(check).contains(fixed) {
                    return Some(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            None
        });
        let out = run(ws, &["apply", "--format", "json"]);
        (out, recovered.join().unwrap())
    })
}

/// The planned action of a runbook step of this type.
fn runbook_step<'a>(plan: &'a serde_json::Value, step: &str) -> &'a serde_json::Value {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == step)
        .unwrap_or_else(|| panic!("a {step} step: {plan:#}"))
}

/// The one incident was resolved by a verified `step`, its first.
fn assert_healed_by(ws: &Workspace, step: &str) {
    let list = ws.run_raw(&["incidents", "--all", "--format", "json"]);
    list.ok();
    let inc = &list.json()["incidents"][0];
    assert_eq!(inc["status"], "resolved", "{inc:#}");
    assert_eq!(inc["steps"][0]["action"], step, "{inc:#}");
    assert_eq!(inc["steps"][0]["outcome"], "verified", "{inc:#}");
}

/// A workspace that declares `resource` (a document without health) with a
/// probe on a free port and a runbook of `step`, then escalate; applied
/// while the probed service answers. Returns the workspace, the port and
/// the service's listener.
fn healing_workspace(
    moto: &Moto,
    resource: &str,
    step: &str,
) -> (Workspace, u16, std::net::TcpListener) {
    let ws = aws_workspace(moto);
    let port = free_port();
    ws.write(
        "resource.yaml",
        &format!(
            "{resource}health:\n  probes:\n    - name: port\n      tcp: {{address: \"127.0.0.1:{port}\", timeout: 1s}}\n  slos:\n    - {{name: reachable, signal: port, for: 0s, recovery: 0s}}\nremediation: {{runbook: heal}}\n"
        ),
    );
    ws.write(
        "runbook.yaml",
        &format!("apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {{name: heal}}\nspec:\n  steps:\n    - {step}\n    - {{action: escalate}}\n"),
    );
    let serving = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    run(&ws, &["apply"]).ok();
    (ws, port, serving)
}

const API_GROUP: &str = "apiVersion: tend.dev/v1\nkind: aws.autoscaling.Group\nmetadata: {name: api}\nspec:\n  minSize: 1\n  maxSize: 6\n  desiredCapacity: 2\n  launchTemplate: {name: api}\n  availabilityZones: [us-east-1a]\n";

fn launch_template(moto: &Moto, name: &str) {
    moto.boto(&format!(
        "ec2.create_launch_template(LaunchTemplateName='{name}', LaunchTemplateData={{'ImageId': 'ami-12c6146b', 'InstanceType': 't3.micro'}})\n"
    ));
}

const ASG: &str = "import boto3\nasg = boto3.client('autoscaling', **kw)\n";

#[test]
fn a_runbook_scales_a_group_out_and_verifies_it() {
    let moto = Moto::start();
    launch_template(&moto, "api");
    let (ws, port, serving) = healing_workspace(
        &moto,
        API_GROUP,
        "{action: scale, by: 1, within: 60s, hold: 1s}",
    );
    let size = format!(
        "{ASG}g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=['api'])['AutoScalingGroups'][0]\nprint('desired', g['DesiredCapacity'], 'serving', sum(i['LifecycleState'] == 'InService' for i in g['Instances']))\n"
    );
    assert_eq!(moto.boto(&size).trim(), "desired 2 serving 2");

    // Overloaded: the service stops answering until a third instance
    // serves.
    drop(serving);
    let (out, listener) = apply_until_fixed(&ws, &moto, port, &size, "desired 3 serving 3");
    assert!(listener.is_some(), "the group was scaled out");
    out.ok();
    let j = out.json();
    let action = runbook_step(&j, "scale");
    assert_eq!(action["decision"], "auto", "{action:#}");
    assert_eq!(action["changes"][0]["from"], 2);
    assert_eq!(action["changes"][0]["to"], 3);
    assert_healed_by(&ws, "scale");
    drop(listener);
}

#[test]
fn a_group_with_unhealthy_instances_reads_unhealthy() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    launch_template(&moto, "api");
    ws.write(
        "asg.yaml",
        &format!("{API_GROUP}health:\n  slos:\n    - {{name: serving, signal: status, for: 1h}}\n"),
    );
    run(&ws, &["apply"]).ok();
    moto.boto(&format!(
        "{ASG}g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=['api'])['AutoScalingGroups'][0]\nasg.set_instance_health(InstanceId=g['Instances'][0]['InstanceId'], HealthStatus='Unhealthy')\n"
    ));
    let j = plan_json(&ws);
    let text = j["health"].to_string();
    assert!(
        text.contains("1 of 2 instances in service and healthy"),
        "{j:#}"
    );
    assert!(text.contains("unhealthy"), "{j:#}");
    assert_eq!(j["summary"]["pending"], 0, "inside `for`, nothing acts");
}

/// `examples/aws` in a workspace, pointed at `moto` the way its settings
/// file says to.
fn example_workspace(moto: &Moto) -> Workspace {
    let ws = Workspace::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aws");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if name == "settings.yaml" {
            let commented = "# endpointUrl: http://127.0.0.1:5000";
            assert!(text.contains(commented), "{text}");
            text = text.replace(commented, &format!("endpointUrl: {}", moto.url()));
        }
        ws.write(&name, &text);
    }
    ws
}

/// The latest and default version of the `web` template, the latest
/// version's instance type and user data, and the version the `web` group
/// launches from.
const TEMPLATE_STATE: &str = "import base64\n\
     asg = boto3.client('autoscaling', **kw)\n\
     t = ec2.describe_launch_templates(Filters=[{'Name': 'tag:tend.dev/name', 'Values': ['aws.ec2.LaunchTemplate/web']}])['LaunchTemplates'][0]\n\
     v = ec2.describe_launch_template_versions(LaunchTemplateId=t['LaunchTemplateId'], Versions=['$Latest'])['LaunchTemplateVersions'][0]['LaunchTemplateData']\n\
     sg = ec2.describe_security_groups(GroupIds=v['SecurityGroupIds'])['SecurityGroups'][0]['GroupName']\n\
     g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=['web'])['AutoScalingGroups'][0]\n\
     print(t['LatestVersionNumber'], t['DefaultVersionNumber'], v['InstanceType'], sg, repr(base64.b64decode(v['UserData']).decode()), g['LaunchTemplate']['LaunchTemplateName'], g['LaunchTemplate']['Version'])\n";

#[test]
fn the_aws_example_applies_from_empty_and_a_template_change_is_a_new_version_the_group_follows() {
    let moto = Moto::start();
    let ws = example_workspace(&moto);

    // From empty: the group names the template `web`, which tend creates
    // first in the same apply.
    let j = plan_json(&ws);
    let order: Vec<&str> = j["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["target"]["kind"].as_str().unwrap())
        .collect();
    let at = |kind: &str| order.iter().position(|k| *k == kind).unwrap();
    assert!(
        at("aws.ec2.SecurityGroup") < at("aws.ec2.LaunchTemplate")
            && at("aws.ec2.LaunchTemplate") < at("aws.autoscaling.Group"),
        "{order:?}"
    );
    let applied = run(&ws, &["apply", "--format", "json"]);
    applied.ok();
    let results = applied.json()["results"].clone();
    assert_eq!(results["applied"], 4, "{results:#}");
    assert_eq!(results["failed"], 0, "{results:#}");
    run(&ws, &["plan", "--detailed-exitcode"]).code(0);
    assert_eq!(
        moto.boto(TEMPLATE_STATE).trim(),
        "1 1 t3.micro web '#!/bin/sh\\nsystemctl enable --now nginx\\n' web $Latest"
    );

    // A new instance type in Git: a new version, made the default; the
    // group still follows $Latest, so it launches the new type.
    let web = ws.desired().join("web.yaml");
    let text = std::fs::read_to_string(&web).unwrap();
    assert!(text.contains("instanceType: t3.micro"));
    ws.write(
        "web.yaml",
        &text.replace("instanceType: t3.micro", "instanceType: t3.small"),
    );
    let j = plan_json(&ws);
    assert_eq!(j["summary"]["pending"], 1, "{j:#}");
    let a = &j["actions"][0];
    assert_eq!(a["target"]["kind"], "aws.ec2.LaunchTemplate");
    assert_eq!(a["type"], "update");
    assert_eq!(paths(a), ["/spec/instanceType"], "{a:#}");
    assert_eq!(a["decision"], "auto", "{a:#}");
    run(&ws, &["apply"]).ok();
    assert_eq!(
        moto.boto(TEMPLATE_STATE).trim(),
        "2 2 t3.small web '#!/bin/sh\\nsystemctl enable --now nginx\\n' web $Latest"
    );
    // (moto cannot launch from a version created with user data, so the
    // group's next launch is not exercised here.)
    run(&ws, &["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_template_changed_behind_tends_back_gets_a_new_version_and_a_pinned_group_keeps_its_own() {
    let moto = Moto::start();
    let ws = aws_workspace(&moto);
    ws.write("sg.yaml", WEB_SG);
    ws.write(
        "lt.yaml",
        "apiVersion: tend.dev/v1\nkind: aws.ec2.LaunchTemplate\nmetadata: {name: api}\nspec:\n  launchTemplateName: api-template\n  imageId: ami-12c6146b\n  instanceType: t3.micro\n  securityGroups: [web]\n  userData: \"echo hi\"\n",
    );
    ws.write(
        "asg.yaml",
        "apiVersion: tend.dev/v1\nkind: aws.autoscaling.Group\nmetadata: {name: api}\nspec:\n  minSize: 0\n  maxSize: 2\n  desiredCapacity: 1\n  launchTemplate: {name: api, version: \"1\"}\n  availabilityZones: [us-east-1a]\n",
    );
    // Someone else's template: listed as unmanaged, never touched.
    moto.boto("ec2.create_launch_template(LaunchTemplateName='theirs', LaunchTemplateData={'ImageId': 'ami-12c6146b'})\n");
    run(&ws, &["apply"]).ok();
    let j = plan_json(&ws);
    assert_eq!(j["summary"]["pending"], 0, "{j:#}");
    assert!(
        j["unmanaged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "theirs" && u["reason"] == "not owned by tend"),
        "{j:#}"
    );

    // Behind tend's back: a version with another security group (by id)
    // and other user data.
    moto.boto(
        "import base64\n\
         d = ec2.describe_security_groups(GroupNames=['default'])['SecurityGroups'][0]['GroupId']\n\
         ec2.create_launch_template_version(LaunchTemplateName='api-template', LaunchTemplateData={'ImageId': 'ami-12c6146b', 'InstanceType': 't3.micro', 'SecurityGroupIds': [d], 'UserData': base64.b64encode(b'rm -rf /').decode()})\n",
    );
    let j = plan_json(&ws);
    let a = &j["actions"][0];
    assert_eq!(
        paths(a),
        ["/spec/securityGroups", "/spec/userData"],
        "{a:#}"
    );
    assert_eq!(a["changes"][0]["from"], serde_json::json!(["default"]));
    assert_eq!(a["changes"][1]["from"], "rm -rf /");
    run(&ws, &["apply"]).ok();
    assert_clean(&ws);
    let now = moto.boto(
        "asg = boto3.client('autoscaling', **kw)\n\
         t = ec2.describe_launch_templates(LaunchTemplateNames=['api-template'])['LaunchTemplates'][0]\n\
         g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=['api'])['AutoScalingGroups'][0]\n\
         print(t['LatestVersionNumber'], t['DefaultVersionNumber'], g['LaunchTemplate']['Version'], len(ec2.describe_launch_templates()['LaunchTemplates']))\n",
    );
    assert_eq!(
        now.trim(),
        "3 3 1 2",
        "version 3 restores; the group stays pinned to 1"
    );
}

/// GitHub Actions' OIDC path: no keys, a role and a web identity token, as
/// `aws-actions/configure-aws-credentials` leaves them. The SDK's
/// web-identity chain assumes the role through STS (moto answers
/// `AssumeRoleWithWebIdentity`; the SDK's standard `AWS_ENDPOINT_URL_STS`
/// points it there) and tend plans the example with those credentials.
#[test]
fn web_identity_credentials_from_github_oidc_plan_the_aws_example() {
    let moto = Moto::start();
    let ws = example_workspace(&moto);
    // A JWT as GitHub's token service issues them (moto does not check
    // the signature).
    let token = ws.path().join("oidc-token");
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvaW5mcmE6cmVmOnJlZnMvaGVhZHMvbWFpbiIsImF1ZCI6InN0cy5hbWF6b25hd3MuY29tIn0.c2lnbmF0dXJl",
    )
    .unwrap();
    let mut c = ws.cmd();
    c.args(["plan", "--format", "json", "-v"])
        .arg(ws.desired())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/tend-drift")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
        .env("AWS_ROLE_SESSION_NAME", "tend-drift")
        .env("AWS_ENDPOINT_URL_STS", moto.url())
        .env("AWS_CONFIG_FILE", ws.path().join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            ws.path().join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let run = Run::from(c.output().unwrap());
    run.ok();
    let j = run.json();
    assert_eq!(j["summary"]["create"], 4, "{j:#}");
    assert!(
        !run.stderr
            .contains("provider failed to provide credentials"),
        "{}",
        run.stderr
    );
}
