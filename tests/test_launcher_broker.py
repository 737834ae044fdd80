"""The socket of a private dbus-broker: whoever finds its path can connect, from the first moment.

dbus-broker is started the way systemd starts it: a stand-in binds and
listens on the socket, then becomes dbus-broker-launch with the socket as
fd 3. ``PrivateBus.start`` returns as soon as the path exists, and clients
connect right away (connections wait in the backlog until the broker runs),
so a path that exists before the socket listens is refused with
ECONNREFUSED, and one that is not yet world-connectable refuses other users.

And what dbus-broker enforces and says: the limits it counts with, and its log.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from dbus_fast import Message as FastMessage
from dbus_fast.aio import MessageBus

from conftest import wait_for
from ipcproxy.dbus.launcher import SOCKET_EXEC, PrivateBus
from test_proxy_faithful import DRIVER, RawClient
from test_wire import call_fields, frame

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


def test_dbus_broker_counts_with_the_most_it_can_hold(broker: PrivateBus) -> None:
    async def user_maxima() -> dict[str, int]:
        bus = await MessageBus(bus_address=broker.address).connect()
        reply = await bus.call(
            FastMessage(
                destination=DRIVER,
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus.Debug.Stats",
                member="GetStats",
            )
        )
        bus.disconnect()
        users = reply.body[0]["org.bus1.DBus.Debug.Stats.UserAccounting"].value
        return {slot: most for uid, slots, _usage in users if uid == os.geteuid() for slot, _left, most in slots}

    maxima = asyncio.run(user_maxima())
    # per user: bytes queued, fds (each connection counts one) and match rules; 32-bit counters,
    # and never below dbus-broker's own defaults (512 MiB, 4096 fds, 16384 match rules)
    assert maxima["Bytes"] == maxima["Fds"] == maxima["Matches"] == 65536 * 65535


def test_what_dbus_broker_logs_is_kept(broker: PrivateBus) -> None:
    client = RawClient(broker.address)
    client.hello()
    # a header the broker refuses: it disconnects the sender and logs why
    client.send(frame("l", 1, 7, call_fields(member="1nvalid", destination=DRIVER)), parse=False)
    assert client.wait_closed()
    wait_for(lambda: "sent a message with an invalid header" in broker.broker_log(), what="the broker's warning")
    log = broker.broker_log()
    assert f"Peer {client.name} is being disconnected" in log
    assert "Ready" in log  # and its launcher's messages
