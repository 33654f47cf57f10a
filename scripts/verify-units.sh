#!/usr/bin/env bash
# Checks the systemd units in systemd/ with systemd's own tools:
#   systemd-analyze verify            unknown keys, bad values, missing units or binaries
#   systemd-analyze security --offline  the service's exposure score stays at or under 2.0
#   systemd-sysusers --dry-run        the sysusers.d line parses
# Any message from verify counts as a failure: it reports unknown keys and
# unparsable values as warnings and still exits 0.
#
# usage: scripts/verify-units.sh [BINARY]
#   BINARY replaces ExecStart's /usr/local/bin/erply-sessiond, which verify
#   requires to exist and be executable (default: true(1), which is enough for
#   verify; pass a built erply-sessiond to check the real thing).
# Exit status: 0 ok, 1 a check failed, 2 systemd-analyze is missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
units="$root/systemd"

if ! command -v systemd-analyze >/dev/null; then
	echo "verify-units: systemd-analyze not found (Debian: apt-get install systemd)" >&2
	exit 2
fi
bin="${1:-$(type -P true)}"
case "$bin" in /*) ;; *) bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" ;; esac
if [ ! -x "$bin" ]; then
	echo "verify-units: $bin is not an executable file" >&2
	exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$units/erply-sessiond.service" "$units/erply-sessiond.socket" "$tmp/"
exec_start='ExecStart=/usr/local/bin/erply-sessiond'
if ! grep -qx "$exec_start" "$tmp/erply-sessiond.service"; then
	echo "verify-units: erply-sessiond.service has no line '$exec_start' to point at the test binary" >&2
	exit 1
fi
sed -i "s|^$exec_start\$|ExecStart=$bin|" "$tmp/erply-sessiond.service"

fail=0
version="$(systemd-analyze --version | awk 'NR==1 {print $2}')"
echo "== systemd-analyze verify (systemd $version, ExecStart=$bin)"
if ! out="$(systemd-analyze verify --man=no "$tmp/erply-sessiond.socket" "$tmp/erply-sessiond.service" 2>&1)"; then
	fail=1
fi
if [ -n "$out" ]; then
	# Paths in the messages point at the temporary copies; name the originals.
	printf '%s\n' "${out//$tmp/$units}"
	fail=1
fi

# --offline appeared in systemd 250.
if [ "${version%%[!0-9]*}" -ge 250 ]; then
	echo "== systemd-analyze security --offline (threshold 2.0)"
	if ! out="$(systemd-analyze security --offline=yes --threshold=20 --no-pager "$tmp/erply-sessiond.service" 2>&1)"; then
		printf '%s\n' "${out//$tmp/$units}" | grep -E '✗|Overall|rror' || true
		fail=1
	else
		printf '%s\n' "$out" | grep 'Overall exposure'
	fi
else
	echo "== systemd-analyze security: skipped (needs systemd 250 or later for --offline)"
fi

if command -v systemd-sysusers >/dev/null; then
	echo "== systemd-sysusers --dry-run"
	mkdir -p "$tmp/root/etc"
	if ! out="$(systemd-sysusers --dry-run --root="$tmp/root" - <"$units/erply-sessiond.sysusers" 2>&1)"; then
		fail=1
	fi
	printf '%s\n' "$out" | grep -v '^Would write'
	if ! grep -q "Creating user 'erply-sessiond'" <<<"$out"; then
		echo "verify-units: erply-sessiond.sysusers does not create user erply-sessiond" >&2
		fail=1
	fi
fi

if [ "$fail" -ne 0 ]; then
	echo "verify-units: FAILED" >&2
	exit 1
fi
echo "verify-units: OK"
