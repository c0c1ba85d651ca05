"""Bundled quantizers plugins."""
