"""The plugin contracts (what a plugin implements) and the plugin manager that loads them."""
