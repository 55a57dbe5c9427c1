package tend_test

import data.tend

ssh_world := {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "0.0.0.0/0"}

https_world := {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidr": "0.0.0.0/0"}

ssh_office := {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "203.0.113.0/24"}

ingress(from, to) := with_action({
	"type": "update",
	"target": {"kind": "aws.ec2.SecurityGroup", "name": "web"},
	"changes": [{"path": "/spec/ingress", "from": from, "to": to}],
})

test_opening_ssh_to_the_world_is_denied if {
	d := tend.decision with input as ingress([https_world], [https_world, ssh_world])
	d.decision == "deny"
	d.reasons == ["opens port 22 to the internet (0.0.0.0/0)"]
}

test_opening_all_ports_to_ipv6_world_is_denied if {
	all_v6 := {"protocol": "-1", "fromPort": 0, "toPort": 0, "ipv6CidrBlocks": ["::/0"]}
	tend.decision.decision == "deny" with input as ingress([], [all_v6])
}

test_a_port_range_covering_rdp_is_denied if {
	wide := {"protocol": "tcp", "fromPort": 3000, "toPort": 4000, "cidrBlocks": ["0.0.0.0/0"]}
	tend.decision.decision == "deny" with input as ingress([], [wide])
}

test_reverting_ssh_open_to_the_world_is_auto if {
	d := tend.decision with input as ingress([https_world, ssh_world], [https_world])
	d.decision == "auto"
	d.reasons == ["closes port 22 that was open to the internet"]
}

test_ssh_from_an_office_range_is_not_denied if {
	d := tend.decision with input as ingress([], [ssh_office])
	d.decision != "deny"
}

test_opening_https_to_the_world_is_not_denied if {
	d := tend.decision with input as ingress([], [https_world])
	d.decision == "review"
}
