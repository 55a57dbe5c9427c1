# Resources labelled tier: critical only get restarts automatically; any
# other change to them is reviewed by a human.
package tend

review contains "the resource is labelled tier: critical" if {
	input.resource.desired.metadata.labels.tier == "critical"
	input.action.type != "restart"
}
