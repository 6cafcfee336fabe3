"""Top-level `mirec` commands of this subsystem. COMMANDS: [{"fn": callable, "kwargs": {...}}]."""

COMMANDS: list[dict] = []
