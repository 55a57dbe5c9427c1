# Capacity changes of more than half the current size need a human: a typo
# in Git (10 instead of 1) must not scale a fleet on its own.
package tend

capacity_fields := {"/spec/desiredCapacity", "/spec/minSize", "/spec/maxSize", "/spec/replicas"}

review contains msg if {
	some change in input.action.changes
	change.path in capacity_fields
	is_number(change.from)
	is_number(change.to)
	ratio := abs(change.to - change.from) / max([change.from, 1])
	ratio > 0.5
	msg := sprintf("%s changes from %v to %v, more than 50%%", [change.path, change.from, change.to])
}

auto contains "a capacity change within 50% is routine" if {
	some change in input.action.changes
	change.path in capacity_fields
	is_number(change.from)
	is_number(change.to)
	abs(change.to - change.from) / max([change.from, 1]) <= 0.5
}
