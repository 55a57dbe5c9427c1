package tend_test

import data.tend

critical(action) := object.union(with_action(action), {"resource": {"desired": {"metadata": {"labels": {"tier": "critical"}}}}})

test_critical_resources_get_restarts_automatically if {
	tend.decision.decision == "auto" with input as critical({"type": "restart"})
}

test_critical_resources_get_other_changes_reviewed if {
	inp := critical({"type": "update", "target": {"kind": "host.File", "name": "conf"}})
	d := tend.decision with input as inp
	d.decision == "review"
	d.reasons == ["the resource is labelled tier: critical"]
}
