package tend_test

import data.tend

sg_update(changes) := {
	"action": {"type": "update", "target": {"kind": "aws.ec2.SecurityGroup", "name": "web"}, "changes": changes, "risk": "low", "reversible": true},
	"resource": {"desired": {}, "live": {}},
	"incident": null,
	"context": {"mode": "auto", "in_maintenance_window": false},
}

ssh_world := {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "0.0.0.0/0"}

https_world := {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidr": "0.0.0.0/0"}

app_rule := {"protocol": "tcp", "fromPort": 8080, "toPort": 8080, "cidr": "10.1.0.0/16"}

test_closing_ssh_opened_to_the_world_is_auto if {
	d := tend.decision with input as sg_update([{"path": "/spec/ingress", "from": [ssh_world, https_world], "to": [https_world]}])
	d.decision == "auto"
}

test_closing_ssh_and_restoring_tags_is_auto if {
	d := tend.decision with input as sg_update([
		{"path": "/spec/ingress", "from": [ssh_world, https_world], "to": [https_world]},
		{"path": "/spec/tags/team", "from": "other", "to": "web"},
	])
	d.decision == "auto"
}

test_reverting_an_unrelated_rule_is_review if {
	d := tend.decision with input as sg_update([{"path": "/spec/ingress", "from": [app_rule, https_world], "to": [https_world]}])
	d.decision == "review"
}

test_opening_ssh_to_the_world_is_denied if {
	d := tend.decision with input as sg_update([{"path": "/spec/ingress", "from": [https_world], "to": [ssh_world, https_world]}])
	d.decision == "deny"
}

test_restoring_tags_only_is_auto if {
	d := tend.decision with input as sg_update([{"path": "/spec/tags/team", "from": "x", "to": "web"}])
	d.decision == "auto"
}

test_restoring_bucket_settings_is_auto if {
	inp := object.union(sg_update([{"path": "/spec/versioning", "from": false, "to": true}]), {"action": {"type": "update", "target": {"kind": "aws.s3.Bucket", "name": "logs"}, "changes": [], "risk": "low", "reversible": true}})
	tend.decision.decision == "auto" with input as inp
}

instance_action(type, incident) := {
	"action": {"type": type, "target": {"kind": "aws.ec2.Instance", "name": "web-1"}, "changes": [], "risk": "high", "reversible": false},
	"resource": {"desired": {}, "live": {}},
	"incident": incident,
	"context": {"mode": "auto", "in_maintenance_window": false},
}

test_replacing_an_instance_is_review if {
	tend.decision.decision == "review" with input as instance_action("replace", null)
}

test_terminating_an_instance_is_review if {
	tend.decision.decision == "review" with input as instance_action("delete", null)
}

test_a_runbook_replaces_a_failed_instance if {
	tend.decision.decision == "auto" with input as instance_action("replace", {"runbook": "replace-failed", "severity": "warning"})
}

template_action(type) := {
	"action": {"type": type, "target": {"kind": "aws.ec2.LaunchTemplate", "name": "web"}, "changes": [{"path": "/spec/instanceType", "from": "t3.micro", "to": "t3.small"}], "risk": "low", "reversible": true},
	"resource": {"desired": {}, "live": {}},
	"incident": null,
	"context": {"mode": "auto", "in_maintenance_window": false},
}

test_a_new_launch_template_version_is_auto if {
	tend.decision.decision == "auto" with input as template_action("update")
	tend.decision.decision == "auto" with input as template_action("create")
}

test_deleting_a_launch_template_is_not_auto if {
	tend.decision.decision != "auto" with input as template_action("delete")
}
