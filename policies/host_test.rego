package tend_test

import data.tend

base := {
	"action": {"type": "restart", "target": {"kind": "host.Process", "name": "web"}, "changes": [], "risk": "low", "reversible": true},
	"resource": {"desired": {"kind": "host.Process", "metadata": {"name": "web", "labels": {}}, "spec": {}}, "live": {}},
	"incident": null,
	"context": {"mode": "auto", "in_maintenance_window": false},
}

with_action(overrides) := object.union(base, {"action": object.union(base.action, overrides)})

test_restart_of_a_managed_process_is_auto if {
	tend.decision.decision == "auto" with input as base
}

test_restoring_a_file_is_auto if {
	inp := with_action({"type": "update", "target": {"kind": "host.File", "name": "motd"}, "changes": [{"path": "/spec/content", "from": "x", "to": "y"}]})
	tend.decision.decision == "auto" with input as inp
}

test_creating_a_file_is_auto if {
	inp := with_action({"type": "create", "target": {"kind": "host.File", "name": "motd"}})
	tend.decision.decision == "auto" with input as inp
}

test_an_unknown_action_goes_to_review if {
	inp := with_action({"type": "reboot", "target": {"kind": "x.Thing", "name": "a"}})
	d := tend.decision with input as inp
	d.decision == "review"
	d.reasons == ["no policy allows this action automatically"]
}
