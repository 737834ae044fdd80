"""Regenerate the captured half of the fuzz corpus from real traffic.

Runs real clients (busctl, gdbus, dbus-send) against real services
(systemd-hostnamed, python-dbusmock) on a private bus behind `ipcproxy run`,
writes the traffic as pcap, and stores each distinct message as one file:
``captured-NNN-<type>-<member>.bin``. The crafted half (``crafted-*.bin``)
comes from ``craft.py``. Run from the repository root:

    .venv/bin/python tests/corpus/capture.py
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MOCK = "org.example.Mock"
HOST = ("org.freedesktop.hostname1", "/org/freedesktop/hostname1")

WORKLOAD = f"""
set -u
/lib/systemd/systemd-hostnamed &
H=$!
/usr/bin/python3 -m dbusmock {MOCK} /org/example/Mock {MOCK} &
M=$!
for i in $(seq 100); do
  busctl --user status {HOST[0]} >/dev/null 2>&1 && busctl --user status {MOCK} >/dev/null 2>&1 && break
  sleep 0.1
done
busctl --user get-property {HOST[0]} {HOST[1]} {HOST[0]} Hostname
busctl --user introspect {HOST[0]} {HOST[1]} >/dev/null
busctl --user call {HOST[0]} {HOST[1]} org.freedesktop.DBus.Properties GetAll s {HOST[0]} >/dev/null
busctl --user call {HOST[0]} {HOST[1]} {HOST[0]} SetStaticHostname sb "" false || true
busctl --user call {HOST[0]} /nonexistent org.example.Nope Nope || true
gdbus call --session --dest {HOST[0]} --object-path {HOST[1]} --method org.freedesktop.DBus.Properties.Get {HOST[0]} KernelName
gdbus call --session --dest {MOCK} --object-path /org/example/Mock --method org.freedesktop.DBus.Mock.AddMethod \
  {MOCK} Echo 'a{{sv}}(ii)asxdbyn' 'a{{sv}}(ii)asxdbyn' 'ret = args'
busctl --user -- call {MOCK} /org/example/Mock {MOCK} Echo 'a{{sv}}(ii)asxdbyn' \
  2 one s un two u 2 3 4 2 a bb -5 2.5 true 255 -7
gdbus call --session --dest {MOCK} --object-path /org/example/Mock --method {MOCK}.Echo \
  "{{'k': <[1, 2]>, 'v': <<'nested'>>}}" "(1, -1)" "['x', '']" 9 0.5 false 0 32767
gdbus call --session --dest {MOCK} --object-path /org/example/Mock --method org.freedesktop.DBus.Mock.EmitSignal \
  {MOCK} Changed 'sav' "[<'x'>, <[<1>, <'two'>, <@ay [0x41, 0x00]>]>]"
dbus-send --session --print-reply --dest={MOCK} /org/example/Mock org.freedesktop.DBus.Introspectable.Introspect >/dev/null
dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.ListNames >/dev/null
dbus-send --session --type=signal /org/example/Sig org.example.Sig.Ping string:hi uint32:7 array:byte:1,2,3 dict:string:int32:a,1,b,2
dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner string:{MOCK} >/dev/null
kill $H $M
wait
"""


def packets(pcap: bytes) -> list[bytes]:
    magic = struct.unpack_from("<I", pcap)[0]
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    pos, out = 24, []
    while pos + 16 <= len(pcap):
        incl = struct.unpack_from(e + "IIII", pcap, pos)[2]
        out.append(pcap[pos + 16 : pos + 16 + incl])
        pos += 16 + incl
    return out


def main() -> int:
    sys.path.insert(0, str(HERE.parent.parent / "src"))
    from ipcproxy.dbus.wire import parse_message

    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "x.pcap"
        cmd = [
            sys.executable,
            "-m",
            "ipcproxy",
            "run",
            "--system-too",
            "-q",
            "-w",
            str(pcap),
            "--",
            "sh",
            "-c",
            WORKLOAD,
        ]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        data = pcap.read_bytes()
    for old in HERE.glob("captured-*.bin"):
        old.unlink()
    seen: set[bytes] = set()
    kinds: dict[tuple[object, ...], int] = {}
    n = 0
    for raw in packets(data):
        if raw in seen or len(raw) > 65536:
            continue
        seen.add(raw)
        m = parse_message(raw)
        kind = (m.type, m.member, m.signature, m.endian, len(raw).bit_length())
        if kinds.get(kind, 0) >= 2:  # variety, not volume
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
        n += 1
        name = f"captured-{n:03d}-{m.type.wire_name}-{m.member or m.error_name or 'reply'}.bin"
        (HERE / name.replace("/", "_")).write_bytes(raw)
    print(f"{n} messages written to {HERE}")
    return 0 if n else 1


if __name__ == "__main__":
    raise SystemExit(main())
