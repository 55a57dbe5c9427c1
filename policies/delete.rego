# Deleting is never automatic: a human confirms every deletion.
package tend

review contains "deleting a resource needs a human" if {
	input.action.type == "delete"
}
