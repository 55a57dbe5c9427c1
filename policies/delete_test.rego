package tend_test

import data.tend

test_deleting_anything_is_review if {
	inp := with_action({"type": "delete", "target": {"kind": "host.File", "name": "old"}})
	d := tend.decision with input as inp
	d.decision == "review"
	"deleting a resource needs a human" in d.reasons
}
