package tend_test

import data.tend

scale(from, to) := with_action({
	"type": "update",
	"target": {"kind": "aws.autoscaling.Group", "name": "web"},
	"changes": [{"path": "/spec/desiredCapacity", "from": from, "to": to}],
})

test_doubling_capacity_is_review if {
	tend.decision.decision == "review" with input as scale(4, 8)
}

test_scaling_to_zero_is_review if {
	tend.decision.decision == "review" with input as scale(4, 0)
}

test_a_small_capacity_change_is_auto if {
	tend.decision.decision == "auto" with input as scale(4, 6)
}
