"""`make demo`: the whole stack doing its job on a synthetic month (see docs/cli.md)."""
