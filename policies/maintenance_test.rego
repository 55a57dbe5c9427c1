package tend_test

import data.tend

in_window := object.union(base, {"context": {"mode": "auto", "in_maintenance_window": true}})

test_actions_in_a_maintenance_window_are_review if {
	d := tend.decision with input as in_window
	d.decision == "review"
	"a maintenance window is open" in d.reasons
}

test_a_critical_incident_may_act_in_a_maintenance_window if {
	inp := object.union(in_window, {"incident": {"severity": "critical"}})
	tend.decision.decision == "auto" with input as inp
}
