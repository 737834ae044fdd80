"""SASL transcripts for both halves of the handshake, without sockets.

ServerAuth plays the bus towards a connecting client; ClientAuth plays the
client towards the real bus. The transcripts are what sd-bus, libdbus and
GDBus really send (pipelined or step by step).
"""

from __future__ import annotations

import pytest

from ipcproxy.dbus.auth import MAX_LINE, MAX_LINES, AuthError, ClientAuth, ServerAuth

GUID = "0123456789abcdef0123456789abcdef"
UID = 1000
HEX_UID = b"31303030"  # "1000" in hex, as EXTERNAL wants it
FIRST_MESSAGE = bytes.fromhex(
    "6c01000100000000010000006d00000001016f00150000002f6f72672f667265656465736b746f702f44427573000000"
)


def server(uid: int | None = UID, unix_fd_possible: bool = True, ready: bool = True, fds: bool = True) -> ServerAuth:
    auth = ServerAuth(uid, unix_fd_possible=unix_fd_possible)
    if ready:
        auth.upstream_ready(GUID, fds)
    return auth


def say(auth: ServerAuth, data: bytes) -> bytes:
    auth.feed(data)
    return auth.output()


# ---------------------------------------------------------------- ServerAuth: clients as they really are


def test_sd_bus_pipelines_everything_and_its_first_message_in_one_write() -> None:
    auth = server()
    out = say(auth, b"\0AUTH EXTERNAL " + HEX_UID + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n" + FIRST_MESSAGE)
    assert out == f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode()
    assert auth.done and auth.unix_fd
    assert auth.leftover == FIRST_MESSAGE
    assert auth.claimed_uid == UID


def test_pipelined_client_waits_for_the_upstream_guid_before_ok() -> None:
    auth = server(ready=False)
    out = say(auth, b"\0AUTH EXTERNAL " + HEX_UID + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n" + FIRST_MESSAGE)
    assert out == b""
    assert not auth.done
    auth.upstream_ready(GUID, True)
    assert auth.output() == f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode()
    assert auth.done and auth.unix_fd and auth.leftover == FIRST_MESSAGE


def test_pipelined_handshake_fed_one_byte_at_a_time() -> None:
    auth = server(ready=False)
    data = b"\0AUTH EXTERNAL " + HEX_UID + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"
    out = b""
    for i in range(len(data)):
        out += say(auth, data[i : i + 1])
        if i == len(data) // 2:
            auth.upstream_ready(GUID, True)
            out += auth.output()
    assert out == f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode()
    assert auth.done and auth.leftover == b""


def test_libdbus_step_by_step() -> None:
    auth = server()
    assert say(auth, b"\0") == b""
    assert say(auth, b"AUTH EXTERNAL " + HEX_UID + b"\r\n") == f"OK {GUID}\r\n".encode()
    assert not auth.done
    assert say(auth, b"NEGOTIATE_UNIX_FD\r\n") == b"AGREE_UNIX_FD\r\n"
    assert say(auth, b"BEGIN\r\n") == b""
    assert auth.done and auth.unix_fd and auth.leftover == b""


def test_auth_external_then_data() -> None:
    auth = server()
    assert say(auth, b"\0AUTH EXTERNAL\r\n") == b"DATA\r\n"
    assert say(auth, b"DATA " + HEX_UID + b"\r\n") == f"OK {GUID}\r\n".encode()
    assert say(auth, b"BEGIN\r\n") == b""
    assert auth.done and not auth.unix_fd


def test_empty_data_means_the_socket_credentials() -> None:
    auth = server()
    assert say(auth, b"\0AUTH EXTERNAL\r\n") == b"DATA\r\n"
    assert say(auth, b"DATA\r\n") == f"OK {GUID}\r\n".encode()
    assert auth.claimed_uid == UID


def test_trailing_space_is_an_empty_initial_response() -> None:
    auth = server(uid=0)
    assert say(auth, b"\0AUTH EXTERNAL \r\n") == b"DATA\r\n"
    assert say(auth, b"DATA\r\n") == f"OK {GUID}\r\n".encode()
    assert auth.claimed_uid == 0


def test_wrong_uid_is_rejected_and_the_client_may_retry() -> None:
    auth = server()
    assert say(auth, b"\0AUTH EXTERNAL 30\r\n") == b"REJECTED EXTERNAL\r\n"  # claims root
    assert not auth.done and auth.claimed_uid is None
    assert say(auth, b"BEGIN\r\n").startswith(b"ERROR")
    assert not auth.done
    assert say(auth, b"AUTH EXTERNAL " + HEX_UID + b"\r\nBEGIN\r\n") == f"OK {GUID}\r\n".encode()
    assert auth.done


def test_wrong_uid_through_data_is_rejected() -> None:
    auth = server()
    assert say(auth, b"\0AUTH EXTERNAL\r\n") == b"DATA\r\n"
    assert say(auth, b"DATA 31\r\n") == b"REJECTED EXTERNAL\r\n"


@pytest.mark.parametrize("identity", [b"zz", b"3", b"ffff", b"2d31", b"31 30"])
def test_undecodable_identity_is_rejected(identity: bytes) -> None:
    auth = server()
    assert say(auth, b"\0AUTH EXTERNAL " + identity + b"\r\n") == b"REJECTED EXTERNAL\r\n"


def test_other_mechanisms_and_bare_auth_list_external() -> None:
    auth = server()
    assert say(auth, b"\0AUTH\r\n") == b"REJECTED EXTERNAL\r\n"
    assert say(auth, b"AUTH DBUS_COOKIE_SHA1 31303030\r\n") == b"REJECTED EXTERNAL\r\n"
    assert say(auth, b"AUTH ANONYMOUS\r\n") == b"REJECTED EXTERNAL\r\n"
    assert say(auth, b"AUTH EXTERNAL " + HEX_UID + b"\r\n") == f"OK {GUID}\r\n".encode()


def test_cancel_while_waiting_for_data() -> None:
    auth = server()
    assert say(auth, b"\0AUTH EXTERNAL\r\n") == b"DATA\r\n"
    assert say(auth, b"CANCEL\r\n") == b"REJECTED EXTERNAL\r\n"
    assert say(auth, b"AUTH EXTERNAL " + HEX_UID + b"\r\n") == f"OK {GUID}\r\n".encode()


def test_commands_out_of_order_get_errors_not_success() -> None:
    auth = server()
    assert say(auth, b"\0BEGIN\r\n").startswith(b"ERROR")
    assert say(auth, b"NEGOTIATE_UNIX_FD\r\n").startswith(b"ERROR")
    assert say(auth, b"DATA 31\r\n").startswith(b"ERROR")
    assert say(auth, b"HELLO\r\n") == b'ERROR "Unknown command"\r\n'
    assert not auth.done and not auth.unix_fd


@pytest.mark.parametrize(("possible", "upstream"), [(False, True), (True, False)])
def test_unix_fds_are_refused_when_either_side_cannot_carry_them(possible: bool, upstream: bool) -> None:
    auth = server(unix_fd_possible=possible, fds=upstream)
    out = say(auth, b"\0AUTH EXTERNAL " + HEX_UID + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n")
    assert out.startswith(f"OK {GUID}\r\nERROR".encode())
    assert auth.done and not auth.unix_fd


def test_tcp_client_without_credentials_may_claim_a_uid() -> None:
    auth = server(uid=None, unix_fd_possible=False)
    assert say(auth, b"\0AUTH EXTERNAL " + HEX_UID + b"\r\n") == f"OK {GUID}\r\n".encode()
    assert auth.claimed_uid == UID
    anonymous = server(uid=None)
    assert say(anonymous, b"\0AUTH EXTERNAL\r\n") == b"DATA\r\n"
    assert say(anonymous, b"DATA\r\n") == b"REJECTED EXTERNAL\r\n"


# ---------------------------------------------------------------- ServerAuth: garbage


@pytest.mark.parametrize(
    "data",
    [
        b"AUTH EXTERNAL 31\r\n",  # no leading NUL
        b"\x01AUTH EXTERNAL\r\n",
        b"GET / HTTP/1.1\r\n",
        b"\0AUTH EXTERNAL \xff\xfe\r\n",  # not ASCII
        b"\0" + b"A" * (MAX_LINE + 1),  # overlong, no end of line in sight
        b"\0" + b"A" * (MAX_LINE + 1) + b"\r\n",  # overlong even though it ends
        b"\0" + b"HELLO\r\n" * (MAX_LINES + 1),  # never-ending chatter
    ],
)
def test_garbage_raises_auth_error(data: bytes) -> None:
    with pytest.raises(AuthError):
        say(server(), data)


def test_overlong_line_in_pieces_raises_auth_error() -> None:
    auth = server()
    auth.feed(b"\0AUTH EXTERNAL ")
    with pytest.raises(AuthError):
        for _ in range(MAX_LINE // 1024 + 2):
            auth.feed(b"3" * 1024)


def test_garbage_buffered_while_waiting_for_upstream_raises_when_it_is_ready() -> None:
    auth = server(ready=False)
    auth.feed(b"\0AUTH EXTERNAL " + HEX_UID + b"\r\n\xff\xff\r\n")
    with pytest.raises(AuthError):
        auth.upstream_ready(GUID, True)


def test_nothing_is_read_past_begin() -> None:
    auth = server()
    crlf_in_message = FIRST_MESSAGE + b"\r\nBEGIN\r\n"
    auth.feed(b"\0AUTH EXTERNAL " + HEX_UID + b"\r\nBEGIN\r\n" + crlf_in_message)
    assert auth.done and auth.leftover == crlf_in_message


# ---------------------------------------------------------------- ClientAuth, towards the bus


def test_client_pipelines_its_whole_handshake() -> None:
    auth = ClientAuth(UID)
    assert auth.start() == b"\0AUTH EXTERNAL " + HEX_UID + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"
    assert ClientAuth(0, unix_fd=False).start() == b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n"


def test_client_success_with_fds_and_early_bus_bytes() -> None:
    auth = ClientAuth(UID)
    auth.start()
    auth.feed(f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode() + FIRST_MESSAGE)
    assert auth.done and auth.unix_fd and auth.guid == GUID and auth.leftover == FIRST_MESSAGE


def test_client_answers_split_anywhere() -> None:
    data = f"OK {GUID}\r\nAGREE_UNIX_FD\r\n".encode()
    for cut in range(1, len(data)):
        auth = ClientAuth(UID)
        auth.feed(data[:cut])
        auth.feed(data[cut:])
        assert auth.done and auth.unix_fd and auth.guid == GUID and auth.leftover == b""


def test_client_without_fd_passing_is_done_after_ok() -> None:
    auth = ClientAuth(UID, unix_fd=False)
    auth.feed(f"OK {GUID}\r\n".encode())
    assert auth.done and not auth.unix_fd and auth.guid == GUID


def test_client_bus_refuses_fds() -> None:
    auth = ClientAuth(UID)
    auth.feed(f'OK {GUID}\r\nERROR "no"\r\n'.encode())
    assert auth.done and not auth.unix_fd


@pytest.mark.parametrize(
    "answer",
    [
        b"REJECTED EXTERNAL DBUS_COOKIE_SHA1\r\n",
        b"DATA\r\n",
        b"AGREE_UNIX_FD\r\n",
        b"OK " + GUID.encode() + b"\r\nBOGUS\r\n",
    ],
)
def test_client_unexpected_answers_raise(answer: bytes) -> None:
    with pytest.raises(AuthError):
        ClientAuth(UID).feed(answer)


def test_client_overlong_answer_raises() -> None:
    with pytest.raises(AuthError):
        ClientAuth(UID).feed(b"O" * (MAX_LINE + 1))


# ---------------------------------------------------------------- both halves against each other


@pytest.mark.parametrize("fds", [True, False])
def test_client_auth_against_server_auth(fds: bool) -> None:
    client = ClientAuth(UID, unix_fd=fds)
    srv = server()
    srv.feed(client.start() + FIRST_MESSAGE)
    client.feed(srv.output())
    assert client.done and srv.done
    assert client.guid == GUID
    assert client.unix_fd == srv.unix_fd == fds
    assert srv.leftover == FIRST_MESSAGE


def test_server_auth_bounds_what_a_client_sends_ahead_of_the_bus() -> None:
    """A client cannot make the proxy buffer without limit while the bus has not answered yet."""
    from ipcproxy.dbus.auth import MAX_PIPELINED

    auth = ServerAuth(peer_uid=0)
    auth.feed(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n")
    with pytest.raises(AuthError):
        for _ in range(MAX_PIPELINED // 65536 + 2):
            auth.feed(b"x" * 65536)
