"""The command groups of `clearhouse`, one module per area."""
