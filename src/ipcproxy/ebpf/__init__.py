"""Transport 3 (`ipcproxy watch`): system-wide passive capture of IPC with eBPF (docs/commands-watch.md)."""
