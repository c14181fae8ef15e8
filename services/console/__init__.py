"""The operations console: a server-rendered web app that calls billing, clearing and
settlement as the signed-in person and holds no data of its own (docs/console.md)."""
