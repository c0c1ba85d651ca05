"""The leaderboard: per-trial and aggregated tables, their schema, views, comparisons and plots."""
