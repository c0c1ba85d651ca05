"""Bundled losses plugins."""
