"""Sans-IO D-Bus framing: bytes (+fds) in, Messages out; Messages in, bytes out.

The header is parsed by hand (it is on the hot path and small); bodies are
decoded lazily with dbus-fast's compiled unmarshaller. An announced size is
never trusted beyond the spec's limits, and the raw bytes of every frame are
kept so an unmodified message is forwarded exactly as it arrived.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections import deque
from collections.abc import Generator, Iterator
from typing import Any

from dbus_fast import Message as FastMessage
from dbus_fast import MessageFlag, Variant
from dbus_fast import MessageType as FastType
from dbus_fast._private.marshaller import Marshaller
from dbus_fast._private.unmarshaller import Unmarshaller
from dbus_fast.signature import SignatureType, get_signature_tree

from ..model import BUS_DRIVER_NAME, Message, MessageType

MAX_MESSAGE_SIZE = 1 << 27  # 128 MiB, the spec's maximum message size
MAX_HEADER_FIELDS = 1 << 26  # the spec's maximum array length
MAX_UNIX_FDS = 253  # what the kernel lets one sendmsg carry (SCM_MAX_FD)
FIXED_HEADER = 16

_U32 = {ord("l"): struct.Struct("<I"), ord("B"): struct.Struct(">I")}
_FIXED = {ord("l"): struct.Struct("<III"), ord("B"): struct.Struct(">III")}

# header field codes
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE, UNIX_FDS = range(1, 10)
_FIELD_TYPES = {
    PATH: "o",
    INTERFACE: "s",
    MEMBER: "s",
    ERROR_NAME: "s",
    REPLY_SERIAL: "u",
    DESTINATION: "s",
    SENDER: "s",
    SIGNATURE: "g",
    UNIX_FDS: "u",
}
_FIXED_SIZES = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "h": 4, "x": 8, "t": 8, "d": 8}


def _unmarshal(raw: bytes) -> FastMessage | None:
    stream: Any = io.BytesIO(raw)
    return Unmarshaller(stream, None, False).unmarshall()


class FrameError(ValueError):
    """A frame that is not a valid D-Bus message; the connection that sent it must close."""


def frame_size(head: bytes | bytearray | memoryview) -> int:
    """Total size of the message whose first 16 bytes are ``head``; raises on anything implausible."""
    endian = head[0]
    fixed = _FIXED.get(endian)
    if fixed is None:
        raise FrameError(f"bad endianness byte 0x{endian:02x}")
    if not 1 <= head[1] <= 4:
        raise FrameError(f"unknown message type {head[1]}")
    if head[3] != 1:
        raise FrameError(f"unknown protocol version {head[3]}")
    body_len, _serial, fields_len = fixed.unpack_from(head, 4)
    if fields_len > MAX_HEADER_FIELDS:
        raise FrameError(f"header fields of {fields_len} bytes exceed the limit")
    total = FIXED_HEADER + fields_len + (-fields_len & 7) + body_len
    if total > MAX_MESSAGE_SIZE:
        raise FrameError(f"message of {total} bytes exceeds the 128 MiB limit")
    return total


class FrameParser:
    """Accumulates bytes and fds from one direction of a connection and yields whole frames."""

    __slots__ = ("_buf", "_fds", "_need", "max_size", "_window")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        self._need = 0
        self.max_size = max_size
        # ``scan`` reads whole frames straight out of the data just fed, when nothing is
        # buffered before it (no copy into the buffer); the caller's memory is only borrowed
        # until the next scan, frames, raw_frames or feed, which copy what is left of it.
        self._window: memoryview | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) + (len(self._window) if self._window is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview, fds: list[int] | None = None) -> None:
        if self._window is not None:
            self._settle()
        if not self._buf and type(data) is memoryview:
            self._window = data
        else:
            self._buf += data
        if fds:
            self._fds.extend(fds)

    def _settle(self) -> None:
        """Copy borrowed data into the buffer."""
        if self._window is not None:
            self._buf += self._window
            self._window = None

    def frames(self) -> Iterator[Message]:
        """Yield every complete message in the buffer; raise FrameError on a malformed one."""
        with contextlib.closing(self.raw_frames()) as raws:  # consumed bytes leave the buffer even on error
            for raw in raws:
                yield self.message(raw)

    def raw_frames(self) -> Generator[bytes, None, None]:
        """Yield the bytes of every complete frame, checking only its size (see ``message``)."""
        self._settle()
        buf = self._buf
        pos = 0
        size = len(buf)
        max_size = self.max_size
        try:
            while size - pos >= FIXED_HEADER:
                # a copy, not a memoryview: a view kept alive by a FrameError's traceback
                # would make the buffer impossible to resize in the finally clause (BufferError)
                total = frame_size(buf[pos : pos + FIXED_HEADER])
                if total > max_size:
                    raise FrameError(f"message of {total} bytes exceeds the configured limit")
                if size - pos < total:
                    break
                raw = bytes(buf[pos : pos + total])
                pos += total
                yield raw
        finally:
            if pos:
                del buf[:pos]

    def scan(self, heads: HeaderCache | None) -> Iterator[tuple[bytes, Header | None, int, int]]:
        """``raw_frames`` and ``HeaderCache.lookup`` in one pass: (frame, header or None, serial, reply serial).

        The header is None when the frame must be parsed strictly (``message``);
        the reply serial is 0 for frames without one.
        """
        window = self._window
        buf: bytearray | memoryview
        if window is not None and not self._buf:
            self._window = None
            buf = view = window  # frames are copied straight out of the caller's data
        else:
            self._settle()
            buf = self._buf
            view = memoryview(buf)  # one copy per frame (a bytearray slice would be two)
        pos = 0
        size = len(buf)
        max_size = self.max_size
        cache = heads._heads if heads is not None else None
        try:
            while size - pos >= FIXED_HEADER:
                fixed = _FIXED.get(buf[pos])
                if fixed is None or not 1 <= buf[pos + 1] <= 4 or buf[pos + 3] != 1:
                    frame_size(bytes(buf[pos : pos + FIXED_HEADER]))  # raises the precise error
                    raise FrameError("malformed fixed header")  # not reached
                body_len, serial, fields_len = fixed.unpack_from(buf, pos + 4)
                end = FIXED_HEADER + fields_len
                total = end + (-fields_len & 7) + body_len
                if fields_len > MAX_HEADER_FIELDS or total > MAX_MESSAGE_SIZE:
                    frame_size(bytes(buf[pos : pos + FIXED_HEADER]))
                if total > max_size:
                    raise FrameError(f"message of {total} bytes exceeds the configured limit")
                if size - pos < total:
                    break
                raw = bytes(view[pos : pos + total])
                pos += total
                if cache is None or not serial:
                    yield raw, None, serial, 0
                    continue
                at = raw.find(_REPLY_SERIAL_FIELD, FIXED_HEADER, end)
                if at >= 0:
                    at += 4
                    head = cache.get(raw[:4] + raw[FIXED_HEADER:at] + raw[at + 4 : end])
                    if head is None or head.reply_at != at:
                        yield raw, None, serial, 0
                        continue
                    reply_serial = _U32[raw[0]].unpack_from(raw, at)[0]
                    if not reply_serial:
                        yield raw, None, serial, 0
                        continue
                else:
                    head = cache.get(raw[:4] + raw[FIXED_HEADER:end])
                    if head is None or head.reply_at != -1:
                        yield raw, None, serial, 0
                        continue
                    reply_serial = 0
                if head.body == BODY_BYTES:
                    if body_len < 4:
                        head = None
                    else:
                        length = _U32[raw[0]].unpack_from(raw, head.body_at)[0]
                        if length + 4 != body_len or length > MAX_ARRAY_LENGTH:
                            head = None
                elif body_len:
                    head = None
                yield raw, head, serial, reply_serial
        finally:
            if buf is window:
                if pos < size:
                    self._buf += window[pos:]
            else:
                view.release()
                if pos:
                    del self._buf[:pos]

    def message(self, raw: bytes) -> Message:
        """Parse a frame from ``raw_frames`` fully, handing it the fds it announces."""
        message = parse_message(raw)
        if message.unix_fds:
            if message.unix_fds > len(self._fds):
                raise FrameError(f"message announces {message.unix_fds} fds, {len(self._fds)} arrived")
            message.fds = [self._fds.popleft() for _ in range(message.unix_fds)]
        return message

    def take_buffer(self) -> bytes:
        """Hand over the bytes not yet framed (the compiled plane carries on from them)."""
        self._settle()
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def take_fds(self) -> list[int]:
        """Hand back fds that no message claimed (to close them)."""
        fds = list(self._fds)
        self._fds.clear()
        return fds


def _align(pos: int, n: int) -> int:
    return pos + (-pos & (n - 1))


_UNIX_FDS_FIELD = b"\x09\x01u\x00"
_TYPES = {t.value: t for t in MessageType}


def parse_message(raw: bytes) -> Message:
    """Parse one complete frame: header fields, and the body with dbus-fast's compiled decoder.

    Decoding the body here costs about a microsecond and validates the frame
    the way the bus will; the slower hand-written header walk runs only when
    the header may carry a UNIX_FDS field (dbus-fast does not report it).
    """
    if len(raw) < FIXED_HEADER:
        raise FrameError("frame shorter than the fixed header")
    total = frame_size(raw)
    if total != len(raw):
        raise FrameError("frame length does not match its header")
    fields_len = _U32[raw[0]].unpack_from(raw, 12)[0]
    # dbus-fast's compiled decoder crashes on two things (see _guard_lengths): a variant with
    # an empty signature (possible only where a signature, in or just past the header, has a
    # "v"), and a length of 0xF7000000 or more (the top byte of an aligned u32; scanning for
    # it costs more than walking a large frame)
    if (
        len(raw) > _SCAN_LIMIT
        or raw.find(b"v", FIXED_HEADER, FIXED_HEADER + fields_len + 264) >= 0
        or len((raw[19::4] if raw[0] == 108 else raw[16::4]).translate(None, _LOW_BYTES))
    ):
        _guard_lengths(raw)
    try:
        fast = _unmarshal(raw)
    except Exception as exc:  # dbus-fast raises several unrelated types on bad input
        raise FrameError(f"malformed message: {type(exc).__name__}: {exc}") from None
    if fast is None:
        raise FrameError("frame is truncated")
    if fast.serial == 0:
        raise FrameError("serial 0 is not allowed")
    unix_fds = 0
    if raw.find(_UNIX_FDS_FIELD, FIXED_HEADER, FIXED_HEADER + fields_len) >= 0:
        unix_fds = parse_header_fields(raw).get(UNIX_FDS, 0)
        if unix_fds > MAX_UNIX_FDS:
            raise FrameError(f"message announces {unix_fds} fds")
    message = Message(
        type=_TYPES[raw[1]],
        serial=fast.serial,
        flags=raw[2],
        reply_serial=fast.reply_serial or None,
        path=fast.path,
        interface=fast.interface,
        member=fast.member,
        error_name=fast.error_name,
        destination=fast.destination,
        sender=fast.sender,
        signature=fast.signature,
        unix_fds=unix_fds,
        endian="l" if raw[0] == 108 else "B",
        raw=raw,
        body_decoder=decode_body,
        _args=fast.body,
    )
    body_len = len(raw) - FIXED_HEADER - fields_len - (-fields_len & 7)
    _check_required(message, body_len)
    if body_len:
        # dbus-fast stops where the signature ends; bytes left over make the frame invalid
        start = len(raw) - body_len
        end = start
        u32 = _U32[raw[0]]
        try:
            for t in get_signature_tree(fast.signature).types:
                end = _skip(raw, end, t, u32)
        except (IndexError, struct.error, UnicodeDecodeError, KeyError, ValueError) as exc:
            raise FrameError(f"body does not match signature {fast.signature!r}: {exc}") from None
        if end != len(raw):
            raise FrameError(f"body of {body_len} bytes does not match signature {fast.signature!r}")
    elif raw.find(_SIGNATURE_FIELD, FIXED_HEADER, FIXED_HEADER + fields_len) >= 0 and parse_header_fields(raw).get(
        SIGNATURE
    ):
        raise FrameError("signature header field but no body")
    return message


_SIGNATURE_FIELD = b"\x08\x01g\x00"
_LOW_BYTES = bytes(range(0xF7))
_SCAN_LIMIT = 4096
_MAX_DEPTH = 64  # dbus-fast's container depth limit


def _guard_lengths(raw: bytes) -> None:
    """Reject a frame that would crash dbus-fast's compiled decoder (a segfault, not an exception).

    dbus-fast keeps its read position in a 32-bit unsigned int: a string or byte
    array whose length is close to 2**32 wraps it around, its bounds check
    passes, and it reads gigabytes past the frame. And a variant with an empty
    signature makes it look up a reader for a NULL type. This walks the frame
    along the same path dbus-fast takes (its header walk included) with Python
    integers, and raises FrameError where dbus-fast would crash (or fail). It
    runs only for frames that hold such a large u32 or may hold a variant.
    """
    u32 = _U32[raw[0]]
    end = len(raw)
    body_len, _serial, header_len = _FIXED[raw[0]].unpack_from(raw, 4)
    pos = 12  # dbus-fast counts the header array from its length field
    signature: Any = None
    try:
        while pos - 12 < header_len:
            pos += (-pos & 7) + 1
            code = raw[pos - 1]
            sig_len = raw[pos]
            start = pos + 1
            pos += sig_len + 2
            if code == UNIX_FDS:
                continue  # dbus-fast skips its value by the next field's alignment
            token = raw[start]
            value: Any = None
            if token == 0x6F or token == 0x73:  # o, s
                pos, value = _guard_string(raw, pos, u32, end)
            elif token == 0x67:  # g
                value = raw[pos + 1 : pos + 1 + raw[pos]].decode()
                pos += raw[pos] + 2
            else:
                text = raw[start : start + sig_len].decode()
                if len(text) != 1:
                    raise FrameError(f"header field {code} has unsupported type {text!r}")
                pos = _guard_value(raw, pos, _root(text), u32, end, 0)
            if pos > end:
                raise FrameError("header field overruns the frame")
            if code == SIGNATURE:
                signature = value
        if not body_len:
            return
        if type(signature) is not str or not signature:
            raise FrameError("message has a body but no signature")
        pos += -pos & 7
        for t in get_signature_tree(signature).types:
            pos = _guard_value(raw, pos, t, u32, end, 0)
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"malformed message: {type(exc).__name__}: {exc}") from None


def _guard_string(raw: bytes, pos: int, u32: struct.Struct, end: int) -> tuple[int, str | None]:
    pos += -pos & 3
    length = u32.unpack_from(raw, pos)[0]
    pos += 5 + length
    if pos > end:
        raise FrameError(f"string of {length} bytes overruns the frame")
    return pos, raw[pos - 1 - length : pos - 1].decode(errors="replace")


_WIDTHS = {ord(c): w for c, w in _FIXED_SIZES.items()}


def _root(signature: str) -> SignatureType:
    root = get_signature_tree(signature).root_type
    if root is None:
        raise FrameError("empty signature")
    return root


def _guard_value(raw: bytes, pos: int, t: SignatureType, u32: struct.Struct, end: int, depth: int) -> int:
    """dbus-fast's reader for ``t``, positions only; returns where it stops."""
    tok = t.token
    if tok == "s" or tok == "o":
        pos += -pos & 3
        length = u32.unpack_from(raw, pos)[0]
        pos += 5 + length
        if pos > end:
            raise FrameError(f"string of {length} bytes overruns the frame")
        return pos
    if tok == "g":
        return pos + 2 + raw[pos]
    if tok in _FIXED_SIZES:
        width = _FIXED_SIZES[tok]
        return pos + (-pos & (width - 1)) + width
    depth += 1
    if depth > _MAX_DEPTH:
        raise FrameError("containers nested too deeply")
    if tok == "v":
        sig_len = raw[pos]
        if sig_len == 1:
            code = raw[pos + 1]
            pos += 3
            if code == 0x73 or code == 0x6F:  # s, o: the common case, inline
                pos += -pos & 3
                length = u32.unpack_from(raw, pos)[0]
                pos += 5 + length
                if pos > end:
                    raise FrameError(f"string of {length} bytes overruns the frame")
                return pos
            basic = _WIDTHS.get(code)
            if basic:
                return pos + (-pos & (basic - 1)) + basic
            inner = chr(code)
        elif sig_len == 0:
            raise FrameError("variant with an empty signature")
        else:
            inner = raw[pos + 1 : pos + 1 + sig_len].decode()
            pos += sig_len + 2
        if pos > end:
            raise FrameError("variant signature overruns the frame")
        return _guard_value(raw, pos, _root(inner), u32, end, depth)
    if tok == "(" or tok == "{":
        pos += -pos & 7
        for child in t.children:
            pos = _guard_value(raw, pos, child, u32, end, depth)
        return pos
    # an array
    pos += -pos & 3
    length = u32.unpack_from(raw, pos)[0]
    pos += 4
    child = t.children[0]
    ctok = child.token
    if ctok in ("x", "t", "d", "{", "("):
        pos += -pos & 7
    if length > end - pos:
        raise FrameError(f"array of {length} bytes overruns the frame")
    if ctok in _FIXED_SIZES:  # read element by element, each one bounds-checked
        width = _FIXED_SIZES[ctok]
        return pos + -(-length // width) * width
    begin = pos
    if ctok == "{":
        key, value = child.children
        string_keys = key.token == "s" or key.token == "o"
        while pos - begin < length:
            pos += -pos & 7
            if string_keys:  # a{sv} and the like: the common case, inline
                size = u32.unpack_from(raw, pos)[0]
                pos += 5 + size
                if pos > end:
                    raise FrameError(f"string of {size} bytes overruns the frame")
            else:
                pos = _guard_value(raw, pos, key, u32, end, depth)
            pos = _guard_value(raw, pos, value, u32, end, depth)
        return pos
    while pos - begin < length:
        pos = _guard_value(raw, pos, child, u32, end, depth)
    return pos


_ALIGNMENT = {**_FIXED_SIZES, "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}


def _skip(raw: bytes, pos: int, t: SignatureType, u32: struct.Struct) -> int:
    """Where a value of type ``t`` starting at ``pos`` ends: arrays are skipped by their length, not walked."""
    tok = t.token
    if tok == "s" or tok == "o":
        pos += -pos & 3
        return pos + 5 + u32.unpack_from(raw, pos)[0]
    if tok == "g":
        return pos + 2 + raw[pos]
    if tok == "a":
        pos += -pos & 3
        length = u32.unpack_from(raw, pos)[0]
        pos += 4
        pos += -pos & (_ALIGNMENT[t.children[0].token] - 1)
        return pos + length
    if tok == "(" or tok == "{":
        pos += -pos & 7
        for child in t.children:
            pos = _skip(raw, pos, child, u32)
        return pos
    if tok == "v":
        length = raw[pos]
        inner = raw[pos + 1 : pos + 1 + length].decode("ascii")
        return _skip(raw, pos + 2 + length, get_signature_tree(inner).types[0], u32)
    width = _FIXED_SIZES[tok]
    pos += -pos & (width - 1)
    return pos + width


def parse_header_fields(raw: bytes) -> dict[int, Any]:
    """Walk the header fields by hand (strict: every known field must have its spec type)."""
    endian = raw[0]
    u32 = _U32[endian]
    fields_len = u32.unpack_from(raw, 12)[0]
    fields: dict[int, Any] = {}
    pos = FIXED_HEADER
    end = FIXED_HEADER + fields_len
    try:
        while pos < end:
            pos = _align(pos, 8)
            if pos >= end:
                break
            code = raw[pos]
            sig_len = raw[pos + 1]
            sig = raw[pos + 2 : pos + 2 + sig_len].decode("ascii")
            if raw[pos + 2 + sig_len] != 0:
                raise FrameError("header field signature not terminated")
            pos += 3 + sig_len
            expected = _FIELD_TYPES.get(code)
            if expected is not None and sig != expected:
                raise FrameError(f"header field {code} has type {sig!r}, expected {expected!r}")
            if sig in ("s", "o"):
                pos = _align(pos, 4)
                (length,) = u32.unpack_from(raw, pos)
                pos += 4
                if pos + length >= end or raw[pos + length] != 0:
                    raise FrameError(f"header field {code} string overruns the header")
                value: Any = raw[pos : pos + length].decode("utf-8")
                pos += length + 1
            elif sig == "g":
                length = raw[pos]
                if raw[pos + 1 + length] != 0:
                    raise FrameError("header signature not terminated")
                value = raw[pos + 1 : pos + 1 + length].decode("ascii")
                pos += length + 2
            elif sig in _FIXED_SIZES:
                width = _FIXED_SIZES[sig]
                pos = _align(pos, width)
                value = u32.unpack_from(raw, pos)[0] if sig in ("u", "h", "i", "b") else None
                pos += width
            else:
                raise FrameError(f"header field {code} has unsupported type {sig!r}")
            if pos > end:
                raise FrameError("header field overruns the header")
            if code in _FIELD_TYPES:
                fields[code] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise FrameError(f"malformed header fields: {exc}") from None
    return fields


def _check_required(message: Message, body_len: int) -> None:
    t = message.type
    if t is MessageType.METHOD_CALL and (message.path is None or message.member is None):
        raise FrameError("method call without path or member")
    if t is MessageType.SIGNAL and (message.path is None or message.interface is None or message.member is None):
        raise FrameError("signal without path, interface or member")
    if t is MessageType.ERROR and (message.error_name is None or message.reply_serial is None):
        raise FrameError("error without error name or reply serial")
    if t is MessageType.METHOD_RETURN and message.reply_serial is None:
        raise FrameError("method return without reply serial")
    if body_len and not message.signature:
        raise FrameError("message has a body but no signature")
    if message.reply_serial is not None and type(message.reply_serial) is not int:
        raise FrameError("reply serial header field is not a UINT32")
    for value in (
        message.path,
        message.interface,
        message.member,
        message.error_name,
        message.destination,
        message.sender,
    ):
        if value is not None and type(value) is not str:
            raise FrameError("a string header field has a non-string type")


def decode_body(message: Message) -> list[Any]:
    """Decode the body with dbus-fast; raises FrameError if it does not match the signature."""
    if not message.signature:
        return []
    try:
        fast = _unmarshal(message.raw)
    except Exception as exc:  # dbus-fast raises several unrelated types on bad input
        raise FrameError(f"body does not match signature {message.signature!r}: {exc}") from None
    if fast is None:
        raise FrameError("body is truncated")
    return list(fast.body)


def to_fast(message: Message, body: list[Any] | None = None) -> FastMessage:
    """Decode into a dbus-fast Message (variants kept), e.g. to rewrite and re-marshal it."""
    fast = _unmarshal(message.raw)
    if fast is None:
        raise FrameError("body is truncated")
    if body is not None:
        fast.body = body
    return fast


def marshal(fast: FastMessage, unix_fds: int | None = None) -> bytes:
    """Marshal with every header field, SENDER included (dbus-fast's own marshaller omits it)."""
    body = Marshaller(fast.signature, fast.body).marshall()
    fields: list[tuple[int, Variant]] = []
    for code, value, sig in (
        (PATH, fast.path, "o"),
        (INTERFACE, fast.interface, "s"),
        (MEMBER, fast.member, "s"),
        (ERROR_NAME, fast.error_name, "s"),
        (REPLY_SERIAL, fast.reply_serial, "u"),
        (DESTINATION, fast.destination, "s"),
        (SENDER, fast.sender, "s"),
        (SIGNATURE, fast.signature, "g"),
    ):
        if value:
            fields.append((code, Variant(sig, value)))
    nfds = len(fast.unix_fds) if unix_fds is None else unix_fds
    if nfds:
        fields.append((UNIX_FDS, Variant("u", nfds)))
    header = Marshaller(
        "yyyyuua(yv)",
        [ord("l"), fast.message_type.value, int(fast.flags), 1, len(body), fast.serial, fields],
    )
    head = bytes(header.marshall())
    raw = head + b"\0" * (-len(head) & 7) + bytes(body)
    if len(raw) > MAX_MESSAGE_SIZE:
        raise FrameError(f"message of {len(raw)} bytes exceeds the 128 MiB limit")
    return raw


def build(
    mtype: MessageType,
    *,
    serial: int,
    path: str | None = None,
    interface: str | None = None,
    member: str | None = None,
    error_name: str | None = None,
    reply_serial: int | None = None,
    destination: str | None = None,
    sender: str | None = None,
    signature: str = "",
    body: list[Any] | None = None,
    flags: int = 0,
) -> Message:
    """Marshal a new message (for replies the proxy answers itself) and parse it back."""
    fast = FastMessage(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        message_type=FastType(int(mtype)),
        flags=MessageFlag(flags),
        error_name=error_name,
        reply_serial=reply_serial,
        sender=sender,
        signature=signature,
        body=body or [],
        serial=serial,
    )
    return parse_message(marshal(fast))


def error_reply(
    call: Message, *, serial: int, error_name: str, text: str, sender: str | None = BUS_DRIVER_NAME
) -> Message:
    """An error answering ``call``, addressed to its sender, as the bus driver would send it."""
    return build(
        MessageType.ERROR,
        serial=serial,
        error_name=error_name,
        reply_serial=call.serial,
        destination=call.sender,
        sender=sender,
        signature="s",
        body=[text],
    )


def with_serial(message: Message, serial: int) -> Message:
    """Copy of ``message`` with another serial (duplicates must not reuse one)."""
    raw = bytearray(message.raw)
    _U32[raw[0]].pack_into(raw, 8, serial)
    return parse_message(bytes(raw))


def jsonable(value: Any) -> Any:
    """Decoded D-Bus values as JSON-safe data: bytes as hex, variants unwrapped, keys as strings."""
    t = type(value)
    if t is str or t is int or t is bool or t is float or value is None:
        return value
    if t is Variant:
        return jsonable(value.value)
    if t is bytes or t is bytearray:
        return value.hex()
    if t is list or t is tuple:
        return [jsonable(v) for v in value]
    if t is dict:
        return {str(k) if not isinstance(k, str) else k: jsonable(v) for k, v in value.items()}
    return str(value)


# ---------------------------------------------------------------- fast path
#
# Under load most frames repeat the header fields of an earlier one: the same
# call to the same object, the same kind of reply to the same client; only the
# serials differ. ``HeaderCache`` remembers, per distinct header, the facts the
# strict ``parse_message`` established, so such a frame is handled without
# building a Message. Only headers whose body can be checked without decoding
# it (no body, or a single byte array) are remembered; every other frame, and
# the first of each header, takes the strict path.

BODY_NONE = 0
BODY_BYTES = 1  # signature "ay"
_REPLY_SERIAL_FIELD = b"\x05\x01u\x00"
MAX_ARRAY_LENGTH = 1 << 26


class Header:
    """The facts shared by every frame with these header fields (all but the serials)."""

    __slots__ = (
        "type",
        "flags",
        "path",
        "interface",
        "member",
        "error_name",
        "destination",
        "sender",
        "signature",
        "body",
        "body_at",
        "reply_at",
        "no_reply",
        "driver",
    )

    def __init__(self, message: Message, body: int, body_at: int, reply_at: int) -> None:
        self.type = message.type
        self.flags = message.flags
        self.path = message.path
        self.interface = message.interface
        self.member = message.member
        self.error_name = message.error_name
        self.destination = message.destination
        self.sender = message.sender
        self.signature = message.signature
        self.body = body
        self.body_at = body_at  # offset of the body in the frame
        self.reply_at = reply_at  # offset of the REPLY_SERIAL value in the frame, or -1
        self.no_reply = bool(message.flags & 1)
        self.driver = BUS_DRIVER_NAME in (message.sender, message.destination)


def _reply_serial_at(raw: bytes) -> int:
    """Offset of the REPLY_SERIAL field's value in a frame already parsed strictly, or -1."""
    u32 = _U32[raw[0]]
    end = FIXED_HEADER + u32.unpack_from(raw, 12)[0]
    pos = FIXED_HEADER
    while pos < end:
        pos = _align(pos, 8)
        if pos >= end:
            break
        code = raw[pos]
        sig_len = raw[pos + 1]
        sig = raw[pos + 2 : pos + 2 + sig_len]
        pos += 3 + sig_len
        if sig in (b"s", b"o"):
            pos = _align(pos, 4)
            pos += 5 + u32.unpack_from(raw, pos)[0]
        elif sig == b"g":
            pos += 2 + raw[pos]
        elif len(sig) == 1 and chr(sig[0]) in _FIXED_SIZES:
            width = _FIXED_SIZES[chr(sig[0])]
            pos = _align(pos, width)
            if code == REPLY_SERIAL:
                return pos
            pos += width
        else:
            return -2  # a variant we do not walk: not cacheable
    return -1


class HeaderCache:
    """Header facts by header bytes (the REPLY_SERIAL value masked out)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._heads: dict[bytes, Header] = {}

    def __len__(self) -> int:
        return len(self._heads)

    def lookup(self, raw: bytes) -> Header | None:
        """The facts for a frame (from ``FrameParser.raw_frames``), or None: parse it strictly."""
        u32 = _U32[raw[0]]
        end = FIXED_HEADER + u32.unpack_from(raw, 12)[0]
        at = raw.find(_REPLY_SERIAL_FIELD, FIXED_HEADER, end)
        if at >= 0:
            at += 4
            head = self._heads.get(raw[:4] + raw[FIXED_HEADER:at] + raw[at + 4 : end])
            if head is None or head.reply_at != at or not u32.unpack_from(raw, at)[0]:
                return None
        else:
            head = self._heads.get(raw[:4] + raw[FIXED_HEADER:end])
            if head is None or head.reply_at != -1:
                return None
        if not u32.unpack_from(raw, 8)[0]:
            return None  # serial 0: let the strict parser reject it
        body_len = len(raw) - head.body_at
        if head.body == BODY_BYTES:
            if body_len < 4:
                return None
            length = u32.unpack_from(raw, head.body_at)[0]
            if length + 4 != body_len or length > MAX_ARRAY_LENGTH:
                return None
        elif body_len:
            return None
        return head

    def learn(self, message: Message) -> Header | None:
        """Remember the header of a frame that ``parse_message`` accepted, if it can be checked cheaply."""
        if message.unix_fds or message.signature not in ("", "ay") or message.transport != "dbus":
            return None
        keyed = header_key(message.raw)
        if keyed is None:
            return None
        key, reply_at, body_at = keyed
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= self.limit:
                self._heads.clear()
            body = BODY_BYTES if message.signature == "ay" else BODY_NONE
            head = self._heads[key] = Header(message, body, body_at, reply_at)
        return head


def header_key(raw: bytes) -> tuple[bytes, int, int] | None:
    """What identifies the header of a strictly parsed frame, serials aside: (key, reply_at, body_at).

    The key is the first four bytes and the header fields with the REPLY_SERIAL
    value cut out; ``reply_at`` is that value's offset (-1 without one),
    ``body_at`` where the body starts. None when the header cannot be keyed
    reliably (a field this walk does not follow, or the reply-serial field's
    bytes also inside a string): such frames always take the strict path.
    """
    fields_len = _U32[raw[0]].unpack_from(raw, 12)[0]
    end = FIXED_HEADER + fields_len
    reply_at = _reply_serial_at(raw)
    if reply_at == -2:
        return None
    at = raw.find(_REPLY_SERIAL_FIELD, FIXED_HEADER, end)
    if at >= 0:
        if at + 4 != reply_at:
            return None
        key = raw[:4] + raw[FIXED_HEADER:reply_at] + raw[reply_at + 4 : end]
    elif reply_at != -1:
        return None
    else:
        key = raw[:4] + raw[FIXED_HEADER:end]
    return key, reply_at, end + (-fields_len & 7)
