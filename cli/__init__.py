"""The ``fmpn`` console script: one entry point, one module per subcommand group."""
