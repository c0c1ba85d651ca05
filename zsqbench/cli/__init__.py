"""The zsqbench command line: one module per subcommand, each thin."""
