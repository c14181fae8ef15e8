"""`make chaos`: seeded fault injection against the services as separate processes."""
