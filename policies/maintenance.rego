# During a maintenance window people are working on the system: tend proposes
# instead of acting, unless a critical incident needs healing now.
package tend

review contains "a maintenance window is open" if {
	input.context.in_maintenance_window
	not critical_incident
}

critical_incident if input.incident.severity == "critical"
