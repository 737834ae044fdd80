"""Sans-IO SASL for D-Bus: the server side towards a client, the client side upstream.

The proxy terminates authentication on both sides instead of relaying it, so
that it always knows where the byte stream turns into messages, can accept
clients that pipeline the whole handshake and their first message in one
write (as sd-bus does), and hands the client the real bus's GUID.
"""

from __future__ import annotations

import enum

MAX_LINE = 16 * 1024
MAX_LINES = 64
# What a client may send ahead (pipelined BEGIN and first messages) while the bus has not yet
# answered our own handshake; sd-bus sends only its Hello there, so this is generous.
MAX_PIPELINED = 1024 * 1024


class AuthError(ValueError):
    """The peer broke the handshake; the connection must close."""


def _hex_uid(uid: int) -> str:
    return str(uid).encode("ascii").hex()


class _State(enum.Enum):
    WAIT_NUL = 0
    WAIT_AUTH = 1
    WAIT_DATA = 2
    AUTHENTICATED = 3
    DONE = 4


class ServerAuth:
    """The bus's half of the handshake, played towards a connecting client.

    ``feed`` consumes bytes; ``output`` collects what to send back; after
    BEGIN, ``done`` is true and ``leftover`` holds the first message bytes.
    Success waits for ``upstream_ready`` so the client gets the real GUID.
    """

    def __init__(self, peer_uid: int | None, unix_fd_possible: bool = True) -> None:
        self.peer_uid = peer_uid
        self.unix_fd_possible = unix_fd_possible
        self.unix_fd = False
        self.guid: str | None = None
        self.upstream_unix_fd = False
        self.done = False
        self.leftover = b""
        self.claimed_uid: int | None = None
        self._state = _State.WAIT_NUL
        self._buf = bytearray()
        self._out = bytearray()
        self._lines = 0
        self._pending_ok = False

    @property
    def awaiting_upstream(self) -> bool:
        """The client's identity is accepted; only the bus's GUID is missing to say OK.

        This is when the proxy opens the upstream connection: a client that
        never gets this far costs no connection to the bus.
        """
        return self._pending_ok

    def upstream_ready(self, guid: str, unix_fd: bool) -> None:
        self.guid = guid
        self.upstream_unix_fd = unix_fd
        if self._pending_ok:
            self._pending_ok = False
            self._say(f"OK {guid}")
            self._state = _State.AUTHENTICATED
            self._run()

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > MAX_PIPELINED:
            raise AuthError("too much data sent before authentication completed")
        self._run()

    def output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _say(self, line: str) -> None:
        self._out += line.encode("ascii") + b"\r\n"

    def _run(self) -> None:
        if self._state is _State.WAIT_NUL and self._buf:
            if self._buf[0] != 0:
                raise AuthError("client did not start with a NUL byte")
            del self._buf[0]
            self._state = _State.WAIT_AUTH
        while not self.done and not self._pending_ok and self._state is not _State.WAIT_NUL:
            end = self._buf.find(b"\r\n")
            if end < 0 or end > MAX_LINE:
                if len(self._buf) > MAX_LINE:
                    raise AuthError("authentication line too long")
                return
            line = bytes(self._buf[:end])
            del self._buf[: end + 2]
            self._lines += 1
            if self._lines > MAX_LINES:
                raise AuthError("too many authentication lines")
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                raise AuthError("authentication line is not ASCII") from None
            self._command(text)
        if self.done:
            self.leftover = bytes(self._buf)
            self._buf.clear()

    def _command(self, text: str) -> None:
        verb, _, rest = text.partition(" ")
        state = self._state
        if verb == "AUTH" and state is _State.WAIT_AUTH:
            mech, _, initial = rest.partition(" ")
            if mech != "EXTERNAL":
                self._say("REJECTED EXTERNAL")
            elif initial:
                self._external(initial)
            else:
                self._state = _State.WAIT_DATA
                self._say("DATA")
        elif verb == "DATA" and state is _State.WAIT_DATA:
            self._external(rest)
        elif (
            verb == "CANCEL"
            and state in (_State.WAIT_AUTH, _State.WAIT_DATA)
            or verb == "ERROR"
            and state in (_State.WAIT_AUTH, _State.WAIT_DATA)
        ):
            self._state = _State.WAIT_AUTH
            self._say("REJECTED EXTERNAL")
        elif verb == "NEGOTIATE_UNIX_FD" and state is _State.AUTHENTICATED:
            if self.unix_fd_possible and self.upstream_unix_fd:
                self.unix_fd = True
                self._say("AGREE_UNIX_FD")
            else:
                self._say('ERROR "Unix fd passing is not available on this connection"')
        elif verb == "BEGIN" and state is _State.AUTHENTICATED:
            self._state = _State.DONE
            self.done = True
        elif verb in ("AUTH", "DATA", "BEGIN", "NEGOTIATE_UNIX_FD", "CANCEL", "ERROR"):
            self._say(f'ERROR "{verb} not expected now"')
        else:
            self._say('ERROR "Unknown command"')

    def _external(self, hex_identity: str) -> None:
        claimed: int | None
        if not hex_identity:
            claimed = self.peer_uid
        else:
            try:
                claimed = int(bytes.fromhex(hex_identity).decode("ascii"))
            except ValueError:
                claimed = -1
        if claimed is None or (self.peer_uid is not None and claimed != self.peer_uid):
            self._state = _State.WAIT_AUTH
            self._say("REJECTED EXTERNAL")
            return
        self.claimed_uid = claimed
        if self.guid is None:
            self._pending_ok = True
            return
        self._say(f"OK {self.guid}")
        self._state = _State.AUTHENTICATED


class ClientAuth:
    """The client's half of the handshake, played towards the real bus.

    Everything is sent at once (AUTH, NEGOTIATE_UNIX_FD, BEGIN), as sd-bus
    does, so connecting costs one round trip.
    """

    def __init__(self, uid: int, unix_fd: bool = True) -> None:
        self.uid = uid
        self.want_unix_fd = unix_fd
        self.guid: str | None = None
        self.unix_fd = False
        self.done = False
        self.leftover = b""
        self._buf = bytearray()
        self._awaiting_fd_answer = unix_fd

    def start(self) -> bytes:
        lines = [f"AUTH EXTERNAL {_hex_uid(self.uid)}"]
        if self.want_unix_fd:
            lines.append("NEGOTIATE_UNIX_FD")
        lines.append("BEGIN")
        return b"\0" + "".join(line + "\r\n" for line in lines).encode("ascii")

    def feed(self, data: bytes) -> None:
        self._buf += data
        while not self.done:
            end = self._buf.find(b"\r\n")
            if end < 0 or end > MAX_LINE:
                if len(self._buf) > MAX_LINE:
                    raise AuthError("bus sent an overlong authentication line")
                return
            line = bytes(self._buf[:end]).decode("ascii", "replace")
            del self._buf[: end + 2]
            verb, _, rest = line.partition(" ")
            if self.guid is None:
                if verb == "OK":
                    self.guid = rest.strip()
                elif verb == "REJECTED":
                    raise AuthError(f"bus rejected EXTERNAL authentication (it offers: {rest or 'nothing'})")
                else:
                    raise AuthError(f"unexpected answer from bus during authentication: {line!r}")
                if not self._awaiting_fd_answer:
                    self.done = True
            else:
                if verb == "AGREE_UNIX_FD":
                    self.unix_fd = True
                elif verb != "ERROR":
                    raise AuthError(f"unexpected answer from bus to NEGOTIATE_UNIX_FD: {line!r}")
                self.done = True
        self.leftover = bytes(self._buf)
        self._buf.clear()
