"""Bundled generators plugins."""
