"""Trace files: JSON Lines with a versioned header (DESIGN §5)."""
