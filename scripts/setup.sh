#!/usr/bin/env bash
# Installs everything ipcproxy and its tests need; idempotent and quick when all is there.
#   system packages (apt-get): buses, real services and clients, tshark, a C compiler and Python's headers
#   (the compiled data plane, the benchmark's load generators), socat and a 32-bit cross compiler (the
#   syscall tracer's tests: a socket server and client, a 32-bit program the filter must let run), fio and pv
#   (io_uring and splice: opaque channels), an aarch64 cross compiler (the tracer's aarch64 syscall table),
#   Chromium and its WebDriver (the HTML report's browser tests), clang, libbpf-dev and bpftool (the eBPF
#   watcher, compiled against this kernel's BTF), bpftrace (its benchmark)
#   Python packages: into .venv, from pyproject.toml (pinned)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(dbus-daemon dbus-bin dbus-broker systemd xdg-dbus-proxy tshark python3-dbusmock python3-gi
          libglib2.0-bin libsystemd-dev libdbus-1-dev pkg-config gcc python3-dev util-linux strace procps apparmor
          socat gcc-i686-linux-gnu libc6-dev-i386-cross dconf-service dconf-cli polkitd
          fio pv gcc-aarch64-linux-gnu libc6-dev-arm64-cross chromium chromium-driver
          clang libbpf-dev bpftool bpftrace)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpftrace (a baseline of bench/watch_speed.py) attaches through tracefs; ipcproxy watch does not need it
if [ "$(id -u)" -eq 0 ] && [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing || echo "setup: cannot mount tracefs: bpftrace will not work" >&2
fi

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.ipcproxy-installed
# the package and its compiled parts (the D-Bus data plane, the syscall stop loop, the eBPF watcher) are rebuilt when their
# declaration or C sources change
want=$(cat pyproject.toml setup.py src/ipcproxy/dbus/*.c src/ipcproxy/dbus/*.h src/ipcproxy/syscall/*.c src/ipcproxy/ebpf/*.c | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import ipcproxy.dbus._plane, ipcproxy.syscall._tracer, ipcproxy.ebpf._ring" 2>/dev/null \
        || { [ ! -f src/ipcproxy/ebpf/watch.bpf.o ] && [ ! -f src/ipcproxy/ebpf/watch.bpf.missing ]; }; then
    echo "setup: installing Python packages into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$stamp"
fi
