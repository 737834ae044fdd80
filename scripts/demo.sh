#!/usr/bin/env bash
# The README's first command: install everything (scripts/setup.sh), then show ipcproxy at work.
#
# A private bus with real services that are not part of this project (systemd-hostnamed,
# systemd-timedated, python-dbusmock's UPower template), real clients (busctl, gdbus,
# dbus-send) talking to them, and the proxy printing every message live while it writes
# a trace. Afterwards the trace is summarised with `ipcproxy show` and `ipcproxy stats`.
#
#   DEMO_TRACE=FILE   where to write the trace (default: out/demo-trace.jsonl)
#   DEMO_QUIET=1      do not print messages live (the trace is written all the same)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

IPCPROXY=.venv/bin/ipcproxy
trace=${DEMO_TRACE:-out/demo-trace.jsonl}
mkdir -p "$(dirname "$trace")"
rm -f "$trace"
live=()
[ -n "${DEMO_QUIET:-}" ] && live=(-q)

# Each client prints the command it runs first; `set -e` makes any failing call fail the demo.
clients='
set -e
run() { printf "\n\$ %s\n" "$*"; "$@"; }
HN="org.freedesktop.hostname1 /org/freedesktop/hostname1"
TD="org.freedesktop.timedate1 /org/freedesktop/timedate1"
run busctl get-property $HN org.freedesktop.hostname1 Hostname
run busctl introspect $HN org.freedesktop.hostname1
run gdbus call --system --dest org.freedesktop.hostname1 --object-path /org/freedesktop/hostname1 \
    --method org.freedesktop.DBus.Properties.Get org.freedesktop.hostname1 KernelName
run dbus-send --system --print-reply --dest=org.freedesktop.timedate1 /org/freedesktop/timedate1 \
    org.freedesktop.DBus.Properties.Get string:org.freedesktop.timedate1 string:Timezone
run busctl get-property $TD org.freedesktop.timedate1 LocalRTC
run gdbus call --system --dest org.freedesktop.UPower --object-path /org/freedesktop/UPower \
    --method org.freedesktop.DBus.Mock.AddDischargingBattery demo_battery "Demo Battery" 42.0 3600
run gdbus call --system --dest org.freedesktop.UPower --object-path /org/freedesktop/UPower \
    --method org.freedesktop.UPower.EnumerateDevices
run dbus-send --system --print-reply --dest=org.freedesktop.UPower \
    /org/freedesktop/UPower/devices/demo_battery org.freedesktop.DBus.Properties.Get \
    string:org.freedesktop.UPower.Device string:Percentage
'

echo "demo: private bus with systemd-hostnamed, systemd-timedated and a python-dbusmock UPower;"
echo "demo: every message is printed live (stderr, lines starting with #) and written to $trace"
"$IPCPROXY" run "${live[@]}" --system-too \
    --service /lib/systemd/systemd-hostnamed \
    --service /lib/systemd/systemd-timedated \
    --service "/usr/bin/python3 -m dbusmock --template upower --logfile /dev/null" \
    --wait-for org.freedesktop.hostname1 \
    --wait-for org.freedesktop.timedate1 \
    --wait-for org.freedesktop.UPower \
    -w "$trace" \
    -- sh -c "$clients"

# one full record per line after the header (the trace itself is compact: templates, raw bytes)
records=$(($("$IPCPROXY" show --json "$trace" | wc -l) - 1))
echo
echo "demo: $records records in $trace"

echo
echo "\$ ipcproxy show $trace --filter 'member=Get'"
"$IPCPROXY" show "$trace" --filter "member=Get"
echo
echo "\$ ipcproxy stats $trace"
"$IPCPROXY" stats "$trace"
echo
echo "demo: done. Explore the trace with: .venv/bin/ipcproxy show $trace --filter 'member=...'"
