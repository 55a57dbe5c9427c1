package tend_test

import data.tend

step(kind, type) := {
	"action": {"type": type, "target": {"kind": kind, "name": "x"}, "changes": [], "risk": "medium", "reversible": false},
	"resource": {"desired": {}, "live": {}},
	"incident": {"cause": "memory leak", "runbook": "restart-then-escalate", "step": 1, "stepAction": type, "severity": "warning"},
	"context": {"mode": "auto", "in_maintenance_window": false, "recent_actions": [], "run": {"actions_planned": 1, "resources_total": 1}},
}

test_runbook_command_is_auto if {
	tend.decision.decision == "auto" with input as step("host.File", "command")
}

test_command_outside_a_runbook_is_not_auto if {
	tend.decision.decision == "review" with input as object.union(step("host.File", "command"), {"incident": null})
}

test_runbook_replace_of_host_resource_is_auto if {
	tend.decision.decision == "auto" with input as step("host.Process", "replace")
}

test_runbook_step_in_maintenance_window_is_review if {
	inp := object.union(step("host.Process", "replace"), {"context": {"mode": "auto", "in_maintenance_window": true, "recent_actions": [], "run": {"actions_planned": 1, "resources_total": 1}}})
	tend.decision.decision == "review" with input as inp
}

test_critical_incident_heals_in_maintenance_window if {
	inp := object.union(step("host.Process", "replace"), {
		"incident": {"runbook": "r", "severity": "critical"},
		"context": {"mode": "auto", "in_maintenance_window": true, "recent_actions": [], "run": {"actions_planned": 1, "resources_total": 1}},
	})
	tend.decision.decision == "auto" with input as inp
}
