"""Bundled executor plugins: where and how trial jobs run."""
