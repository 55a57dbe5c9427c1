# tend's default policy pack: how tend decides what it may do on its own.
#
# Every action tend plans (create, update, delete, restart, scale, ...) is
# evaluated against the rules in package `tend`. Each rule adds a reason to
# one of three sets, and the strongest set wins:
#
#   deny    - never do this, not even with a human's approval through tend
#   review  - propose it; a human decides
#   auto    - tend may do it by itself
#
# An action no rule speaks for goes to review. A repository can add its own
# rules to package `tend` (Settings spec.policies.dirs); they add reasons to
# the same three sets, so they can make tend stricter or allow more.
# Built-in safety gates (action budget, prune guard, cooldown, fight
# detection, circuit breaker) apply on top and no policy can switch them off.
package tend

decision := {"decision": "deny", "reasons": sort(deny)} if {
	count(deny) > 0
} else := {"decision": "review", "reasons": sort(review)} if {
	count(review) > 0
} else := {"decision": "auto", "reasons": sort(auto)} if {
	count(auto) > 0
} else := {"decision": "review", "reasons": ["no policy allows this action automatically"]}
