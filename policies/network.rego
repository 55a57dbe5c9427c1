# Administrative ports open to the whole internet are the most common way
# hosts get compromised. tend never opens one, and closes one at once.
package tend

admin_ports := {
	22, # ssh
	23, # telnet
	2375, # docker, unencrypted
	2376, # docker
	3389, # rdp
	5985, # winrm http
	5986, # winrm https
}

world := {"0.0.0.0/0", "::/0"}

deny contains msg if {
	some change in input.action.changes
	some rule in opened(change)
	some port in admin_ports
	world_open(rule)
	covers(rule, port)
	msg := sprintf("opens port %d to the internet (%s)", [port, rule_cidrs(rule)])
}

auto contains msg if {
	some change in input.action.changes
	some rule in closed(change)
	some port in admin_ports
	world_open(rule)
	covers(rule, port)
	msg := sprintf("closes port %d that was open to the internet", [port])
}

# Rules present after the change but not before.
opened(change) := {r | some r in rules(change.to); not r in rules(change.from)}

# Rules present before the change but not after.
closed(change) := {r | some r in rules(change.from); not r in rules(change.to)}

rules(v) := {r | some r in v; is_object(r)} if is_array(v)

rules(v) := {v} if is_object(v)

rules(v) := set() if {
	not is_array(v)
	not is_object(v)
}

rule_cidrs(rule) := concat(", ", sort([c | some c in cidrs(rule)]))

cidrs(rule) := {c | some c in array.concat(object.get(rule, "cidrBlocks", []), object.get(rule, "ipv6CidrBlocks", []))} | {c | c := rule.cidr}

world_open(rule) if {
	some c in cidrs(rule)
	c in world
}

covers(rule, _) if rule.protocol in {"-1", "all"}

covers(rule, port) if {
	rule.protocol in {"tcp", "6"}
	rule.fromPort <= port
	port <= rule.toPort
}
