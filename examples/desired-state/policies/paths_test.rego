package paths_test

import data.tend

file(path) := {
	"action": {"type": "create", "target": {"kind": "host.File", "name": "f"}, "changes": []},
	"resource": {"desired": {"kind": "host.File", "metadata": {"name": "f", "labels": {}}, "spec": {"path": path}}, "live": null},
	"incident": null,
	"context": {"in_maintenance_window": false},
}

test_files_under_the_state_directory_are_managed if {
	tend.decision.decision == "auto" with input as file(".tend/www/motd.txt")
}

test_files_elsewhere_are_denied if {
	d := tend.decision with input as file("/etc/passwd")
	d.decision == "deny"
	d.reasons == ["this repository only manages files under .tend/, not /etc/passwd"]
}
