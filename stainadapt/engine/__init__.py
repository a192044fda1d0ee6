"""Training engine and run-folder files (checkpoints, atomic writes)."""
