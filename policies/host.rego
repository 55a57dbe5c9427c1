# Host resources: putting a declared file or process back is what tend is for.
package tend

# Restarting a process tend manages (it died, or its pid was reused).
auto contains "restarting a managed process is safe" if {
	input.action.type == "restart"
	input.action.target.kind == "host.Process"
}

# Restoring a managed file's content or mode to what Git declares.
auto contains "restoring a managed file to its declared state is safe" if {
	input.action.type in {"create", "update"}
	input.action.target.kind == "host.File"
}

# Starting a declared process, or restarting it with its new declared command.
auto contains "starting a declared process is safe" if {
	input.action.type in {"create", "update"}
	input.action.target.kind == "host.Process"
}

# Stopping a process because Git says it should be stopped.
auto contains "stopping a process declared as stopped" if {
	input.action.type == "stop"
	input.action.target.kind == "host.Process"
}
