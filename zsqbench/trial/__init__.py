"""One trial: building its parts, the step, the training loop, evaluation and monitoring."""
