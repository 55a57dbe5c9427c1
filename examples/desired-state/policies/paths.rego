# A repository policy, added to tend's default pack (Settings
# spec.policies.dirs). This repository keeps everything it manages under
# .tend/, so tend refuses to touch a file anywhere else, even if someone
# declares one by mistake.
package tend

deny contains msg if {
	input.action.target.kind == "host.File"
	path := input.resource.desired.spec.path
	not startswith(path, ".tend/")
	msg := sprintf("this repository only manages files under .tend/, not %s", [path])
}
