# AWS resources. Putting a bucket's settings back as declared, creating what
# is declared and restoring tags are routine; changing who may reach a
# security group needs a human, except closing an administrative port that
# someone opened to the whole internet (network.rego), which tend does at
# once.
package tend

aws_sg := "aws.ec2.SecurityGroup"

auto contains "restoring a bucket's declared settings is safe" if {
	input.action.type in {"create", "update"}
	input.action.target.kind == "aws.s3.Bucket"
}

auto contains "creating a declared security group is safe" if {
	input.action.type == "create"
	input.action.target.kind == aws_sg
}

auto contains "restoring a security group's declared tags is safe" if {
	input.action.type == "update"
	input.action.target.kind == aws_sg
	every change in input.action.changes {
		startswith(change.path, "/spec/tags/")
	}
}

review contains msg if {
	input.action.type == "update"
	input.action.target.kind == aws_sg
	some change in input.action.changes
	change.path in {"/spec/ingress", "/spec/egress"}
	some rule in opened(change) | closed(change)
	not admin_port_to_world(rule)
	msg := sprintf("%s rule %s %v-%v from %s changes who can reach this group", [
		trim_prefix(change.path, "/spec/"),
		rule.protocol, object.get(rule, "fromPort", "*"), object.get(rule, "toPort", "*"), rule.cidr,
	])
}

admin_port_to_world(rule) if {
	world_open(rule)
	some port in admin_ports
	covers(rule, port)
}

auto contains "restoring a declared instance is safe" if {
	input.action.type in {"create", "update"}
	input.action.target.kind == "aws.ec2.Instance"
}

# Replacing an instance loses whatever lives on it: a human decides, unless
# a runbook step heals a failed instance.
review contains "replacing an instance needs a human" if {
	input.action.type == "replace"
	input.action.target.kind == "aws.ec2.Instance"
	not input.incident.runbook
}

auto contains "a runbook step heals a failed instance" if {
	input.action.type in {"replace", "restart"}
	input.action.target.kind == "aws.ec2.Instance"
	input.incident.runbook
}

# Sizes within 50% of the live ones, the launch template, health checks and
# tags of a declared group (scale.rego sends bigger capacity changes to
# review).
auto contains "restoring a declared auto scaling group is safe" if {
	input.action.type in {"create", "update", "scale"}
	input.action.target.kind == "aws.autoscaling.Group"
}

# A new launch template, or a new version of one: nothing running changes
# until a group launches from it.
auto contains "restoring a declared launch template is safe" if {
	input.action.type in {"create", "update"}
	input.action.target.kind == "aws.ec2.LaunchTemplate"
}
