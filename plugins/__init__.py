"""Bundled zsqbench plugins (installed as the import package ``zsqbench_plugins``)."""
