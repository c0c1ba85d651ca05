"""Grids of trials: requests, budgets, the runner and the compute estimate."""
