"""HTTP routes, one small module per concern."""
