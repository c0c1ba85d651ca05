"""A trial's storage: its folder and lease, checkpoint, result file and record, provenance and environment."""
