"""`clearhouse`, the operations CLI: commands over the services' public gRPC contracts,
and the demo that drives the whole stack through the same client layer."""
