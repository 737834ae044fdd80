"""ipcproxy: intercept, log and manipulate the IPC messages of a Linux system."""

__version__ = "0.1.0"
