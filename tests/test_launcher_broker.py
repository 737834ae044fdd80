"""The socket of a private dbus-broker: whoever finds its path can connect, from the first moment.

dbus-broker is started the way systemd starts it: a stand-in binds and
listens on the socket, then becomes dbus-broker-launch with the socket as
fd 3. ``PrivateBus.start`` returns as soon as the path exists, and clients
connect right away (connections wait in the backlog until the broker runs),
so a path that exists before the socket listens is refused with
ECONNREFUSED, and one that is not yet world-connectable refuses other users.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from conftest import wait_for
from ipcproxy.dbus.launcher import SOCKET_EXEC

# The stand-in as it runs, except that its listen() comes two seconds late: the ordering a busy
# machine produces now and then between bind() and listen(), made certain.
LATE_LISTEN = """
import socket, time
_listen = socket.socket.listen
def late_listen(self, backlog):
    time.sleep(2)
    return _listen(self, backlog)
socket.socket.listen = late_listen
"""


def test_the_socket_path_appears_only_once_it_accepts_connections(tmp_path: Path) -> None:
    path = tmp_path / "bus.sock"
    stand_in = subprocess.Popen([sys.executable, "-c", LATE_LISTEN + SOCKET_EXEC, str(path), "sleep", "60"])
    try:
        wait_for(path.exists, timeout=20, what="the bus socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # refused if the path was there before listen()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o777  # like dbus-daemon's socket
        assert stand_in.poll() is None  # it became the command, with the socket
        assert sorted(os.listdir(tmp_path)) == ["bus.sock"]
    finally:
        stand_in.kill()
        stand_in.wait()
