"""The clearing service."""
