"""One trial: its spec, its data and teacher, building its parts, the training loop, its folder."""
