"""Errors the library raises; the command layer turns them into exit statuses.

Library modules raise these and never know about exit statuses or the
command line: ``commands/`` maps ``InputError`` to status 2 and ``RunFailed``
to status 1, each printed as one line, never as a traceback.
"""

from __future__ import annotations


class IpcproxyError(Exception):
    """Base of every error ipcproxy reports to its user as one line."""


class InputError(IpcproxyError):
    """Bad input from the user: a file, an option, an address (exit status 2)."""


class RunFailed(IpcproxyError):
    """The input was fine but the run failed: the bus went away, a capture broke (exit status 1)."""
