# Runbook steps: approved procedures that heal an incident. Each step still
# passes every other rule (a maintenance window, a repository deny) and the
# built-in safety gates.
package tend

# Replacing a host resource during an incident: stop and start a process
# afresh, or write a file anew.
auto contains "replacing a managed host resource is part of its runbook" if {
	input.incident.runbook
	input.action.type == "replace"
	startswith(input.action.target.kind, "host.")
}

# Commands are checked against Settings spec.healing.commands when desired
# state loads; one that is listed there was approved for runbooks.
auto contains "running an allowlisted runbook command" if {
	input.incident.runbook
	input.action.type == "command"
}
