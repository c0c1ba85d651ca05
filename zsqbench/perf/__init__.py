"""Speed: compute settings, the step benchmark, the op profile and the compute estimate."""
