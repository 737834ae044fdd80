"""Private buses for `run`, tests and campaigns: dbus-daemon, or dbus-broker without systemd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

from .. import proctree

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  {bus_type}
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  {activation}
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">134217728</limit>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_completed_connections">100000</limit>
  {extra}
</busconfig>
"""

# journald's part for dbus-broker: take its log entries and keep their messages in a file, so
# that what the broker says (a peer disconnected for exceeding a quota, ...) can be read after
# a failure instead of being lost.
# dbus-broker-launch reads four of the limits above and multiplies them into per-user totals,
# which dbus-broker counts in 32 bits: 100000 connections x 10^9 bytes arrived as 264 MiB (half
# the broker's own default), and the broker disconnected a sender once that much was queued.
# These come later, so they win there: each total is 65536 x 65535, the most it can count.
BROKER_LIMITS = """
  <limit name="max_connections_per_user">65536</limit>
  <limit name="max_outgoing_bytes">65535</limit>
  <limit name="max_outgoing_unix_fds">65535</limit>
  <limit name="max_match_rules_per_connection">65535</limit>
"""

JOURNAL_SINK = r"""
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(path), exist_ok=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
out = open(log, "ab", buffering=0)
sys.stdout.write("READY\n"); sys.stdout.flush()
while True:
    fields = s.recv(1 << 20).split(b"\n")
    out.write(b"".join(f[8:] + b"\n" for f in fields if f.startswith(b"MESSAGE=")))
"""

# systemd's part for dbus-broker: listen on the socket, then become the launcher with it as fd 3.
# The socket is made (world-connectable, like dbus-daemon's) and listening under a temporary name
# and only then renamed into place: whoever finds the path can connect at once (connections wait
# in the backlog until the broker runs). A path that appeared at bind() would refuse connections
# with ECONNREFUSED until listen(), a gap a busy machine sometimes stretches to milliseconds.
SOCKET_EXEC = r"""
import os, socket, sys
path, cmd = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path + ".new"); os.chmod(path + ".new", 0o777); s.listen(512)
os.rename(path + ".new", path)
fd = s.detach()
if fd != 3:
    os.dup2(fd, 3); os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"; os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(cmd[0], cmd)
"""


class BusError(RuntimeError):
    """The private bus could not be started."""


STANDARD_SERVICE_DIRS = {"session": "<standard_session_servicedirs/>", "system": "<standard_system_servicedirs/>"}


@dataclass(frozen=True, slots=True)
class Activation:
    """What the bus may start on demand (D-Bus activation), as the bus of dbus-run-session can.

    ``standard``: the standard service directories of a session bus ($XDG_DATA_HOME/dbus-1/services,
    each of $XDG_DATA_DIRS/dbus-1/services, ...) or of a system bus (/usr/share/dbus-1/system-services,
    ...), or none. ``service_dirs`` come first: a .service file there wins over one of the same
    name elsewhere.
    """

    standard: str | None = "session"
    service_dirs: tuple[str, ...] = ()

    def config(self) -> str:
        lines = [f"<servicedir>{escape(os.path.abspath(d))}</servicedir>" for d in self.service_dirs]
        if self.standard is not None:
            lines.append(STANDARD_SERVICE_DIRS[self.standard])
        return "\n  ".join(lines)


class PrivateBus:
    """A fresh bus in a temporary directory; ``address`` is where to connect."""

    def __init__(
        self,
        broker: bool = False,
        bus_type: str = "session",
        extra_config: str = "",
        activation: Activation | None = None,
    ) -> None:
        self.broker = broker
        self.activation = activation
        self.dir = tempfile.mkdtemp(prefix="ipcproxy-bus-")
        os.chmod(self.dir, 0o755)
        self.socket = os.path.join(self.dir, "bus.sock")
        self.address = f"unix:path={self.socket}"
        self.config = os.path.join(self.dir, "bus.conf")
        with open(self.config, "w") as f:
            f.write(
                BUS_CONFIG.format(
                    # with activation, no bus type: dbus-daemon would give the services it starts its own
                    # address as DBUS_SESSION_BUS_ADDRESS, over the one they are meant to use (the proxy)
                    bus_type="" if activation is not None else f"<type>{bus_type}</type>",
                    socket=self.socket,
                    activation=activation.config() if activation is not None else "",
                    extra=(BROKER_LIMITS if broker else "") + extra_config,
                )
            )
        self.env: Mapping[str, str] = os.environ
        self.process: subprocess.Popen[bytes] | None = None
        self._sink: subprocess.Popen[bytes] | None = None
        self._starter: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.dir, "broker.log")  # what dbus-broker logged

    def start(self, timeout: float = 10.0, env: Mapping[str, str] | None = None) -> PrivateBus:
        """``env``: the bus's environment, which the services it activates inherit. Its XDG_DATA_HOME
        and XDG_DATA_DIRS choose the standard session service directories; its DBUS_SESSION_BUS_ADDRESS
        (and DBUS_SYSTEM_BUS_ADDRESS) are where those services connect (the bus itself if unset)."""
        if env is not None:
            self.env = env
        if self.broker:
            self._start_broker()
        else:
            exe = shutil.which("dbus-daemon")
            if exe is None:
                raise BusError("dbus-daemon is not installed (apt-get install dbus-daemon)")
            self.process = subprocess.Popen(  # under a keeper: a SIGKILLed owner leaves no bus behind
                proctree.keeper_argv([exe, f"--config-file={self.config}", "--nofork", "--print-address=1"]),
                env=self._environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            if not line:
                raise BusError("dbus-daemon exited at start")
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                self.stop()
                raise BusError(f"the private bus did not come up at {self.socket}")
            time.sleep(0.01)
        if self.broker and self.activation is not None:
            self._start_unit_starter()
        return self

    def _start_unit_starter(self) -> None:
        """dbus-broker activates through systemd; where there is none, our stand-in takes its name."""
        assert self.activation is not None
        scope = "system" if self.activation.standard == "system" else "user"
        argv = [sys.executable, "-m", "ipcproxy.dbus.unitstarter", self.address, scope, *self.activation.service_dirs]
        self._starter = subprocess.Popen(
            proctree.keeper_argv(argv),
            env=self._environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._starter.stdout is not None
        if self._starter.stdout.readline().strip() != b"READY":
            self.stop()
            raise BusError("the activation helper for dbus-broker did not start")

    def _start_broker(self) -> None:
        """dbus-broker-launch without systemd: socket as fd 3, a stand-in journald socket."""
        launch = shutil.which("dbus-broker-launch")
        if launch is None:
            raise BusError("dbus-broker is not installed (apt-get install dbus-broker)")
        if os.geteuid() != 0:
            raise BusError("--broker needs root here (a private mount namespace for journald's socket)")
        journal = os.path.join(self.dir, "journal")
        os.makedirs(journal)
        self._sink = subprocess.Popen(
            proctree.keeper_argv([sys.executable, "-c", JOURNAL_SINK, os.path.join(journal, "socket"), self.log_path]),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._sink.stdout is not None
        self._sink.stdout.readline()
        script = (
            f"mount -t tmpfs tmpfs /run/systemd 2>/dev/null || (mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd);"
            f" mkdir -p /run/systemd/journal && mount --bind {journal} /run/systemd/journal &&"
            f" exec {sys.executable} -c '{SOCKET_EXEC}' {self.socket}"
            f" {launch} --scope user --config-file {self.config}"
        )
        # dbus-broker-launch connects to the bus it manages as a client too (sd_bus_open_user)
        env = dict(self._environment(), DBUS_SESSION_BUS_ADDRESS=self.address)
        self.process = subprocess.Popen(
            proctree.keeper_argv(["unshare", "-m", "--propagation", "private", "sh", "-c", script]),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def broker_log(self) -> str:
        """The messages dbus-broker and its launcher logged so far (empty for dbus-daemon)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    @property
    def daemon_pid(self) -> int | None:
        """The bus's own process, dbus-daemon or dbus-broker-launch (``process`` is the keeper above it)."""
        if self.process is None:
            return None
        below = proctree.children(self.process.pid)
        return below[0] if below else None

    def _environment(self) -> dict[str, str]:
        """The bus's environment: what the services it activates inherit."""
        env = dict(self.env)
        env.setdefault("DBUS_SESSION_BUS_ADDRESS", self.address)
        if self.activation is not None and self.activation.standard == "system":
            env.setdefault("DBUS_SYSTEM_BUS_ADDRESS", self.address)
        return env

    def stop(self) -> None:
        for proc in (self._starter, self.process, self._sink):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:  # a keeper: it gives its tree the grace period twice at most
                proc.wait(2 * proctree.GRACE_S + 5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in (self._starter, self.process, self._sink):
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
