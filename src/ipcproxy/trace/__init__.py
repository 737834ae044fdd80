"""Trace files: JSON Lines with a versioned header (docs/trace-format.md)."""
