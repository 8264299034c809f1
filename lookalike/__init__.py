"""CLI and process wiring: the embedded stack, the demo, and the entry points of each service."""
