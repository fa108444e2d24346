"""Tables as CSV or JSONL, streamed a batch of rows at a time."""
