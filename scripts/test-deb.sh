#!/usr/bin/env bash
# Tests the Debian package on this machine, for real: lintian, then
#   install (apt-get install ./…deb)  files, modes, owners, the conffile, the
#                                     user and group, systemd-analyze verify on
#                                     the installed units, `erply-sessiond
#                                     version`, the daemon's user can read the
#                                     env file and others cannot
#   systemctl enable (offline)        the README's step, as far as it goes
#                                     without systemd running
#   reinstall                         a local edit of the env file survives
#   remove                            the program and units go, the env file stays
#   purge                             nothing of the package is left: files,
#                                     /etc/erply-sessiond, the state and runtime
#                                     directories, the enable links
# The system user and group stay after a purge, as Debian packages leave
# theirs; this script deletes them at the end if it created them.
#
# usage: scripts/test-deb.sh [DEB]
#   DEB   the package to test (default: build one with scripts/build-deb.sh)
# Needs root and a Debian-like system; refuses to run where erply-sessiond is
# installed already. On failure it purges what it installed.
# Exit status: 0 ok, 1 a check failed, 2 cannot run here.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
pkg=erply-sessiond
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
	echo "test-deb: must run as root (it installs and purges $pkg)" >&2
	exit 2
fi
for tool in dpkg apt-get runuser; do
	if ! command -v "$tool" >/dev/null; then
		echo "test-deb: $tool not found: not a Debian-like system" >&2
		exit 2
	fi
done
if dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$'; then
	echo "test-deb: $pkg is installed on this machine already ($(dpkg-query -W -f='${Version} ${db:Status-Status}' $pkg)); not touching it" >&2
	exit 2
fi

tmp="$(mktemp -d)"
installed=
user_before=
getent passwd "$pkg" >/dev/null && user_before=1
cleanup() {
	if [ -n "$installed" ]; then
		echo "test-deb: purging $pkg after a failure" >&2
		apt-get -o DPkg::Lock::Timeout=300 purge -y -qq "$pkg" >/dev/null 2>&1 || dpkg --purge "$pkg" >/dev/null 2>&1 || true
	fi
	if [ -z "$user_before" ] && getent passwd "$pkg" >/dev/null; then
		userdel "$pkg" 2>/dev/null || true
	fi
	if [ -z "$user_before" ] && getent group "$pkg" >/dev/null; then
		groupdel "$pkg" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

version=
if [ $# -ge 1 ]; then
	deb="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
	version="$(cd "$root" && git describe --tags --always --dirty 2>/dev/null || echo dev)"
	deb="$(OUT_DIR="$tmp" VERSION="$version" "$root/scripts/build-deb.sh" | tail -n 1)"
fi

fail=0
bad() {
	echo "FAIL  $*"
	fail=1
}

echo "== contents (dpkg -c)"
dpkg -c "$deb"

echo "== lintian"
if command -v lintian >/dev/null; then
	# -I --pedantic: show every tag; only errors fail.
	set +e
	out="$(lintian --fail-on error -I --pedantic "$deb" 2>&1)"
	rc=$?
	set -e
	grep -v 'running with root privileges' <<<"$out" || true
	if [ "$rc" -ne 0 ]; then
		bad "lintian: exit status $rc (errors, or it could not run)"
	else
		echo "lintian: no errors"
	fi
else
	echo "WARNING: lintian is not installed (Debian: apt-get install lintian): package NOT linted" >&2
fi

echo "== install: apt-get install $deb"
installed=1
if ! apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$deb" </dev/null >"$tmp/apt.log" 2>&1; then
	cat "$tmp/apt.log" >&2
	bad "apt-get install failed"
	exit 1
fi
grep -E '^(Setting up|Creating)' "$tmp/apt.log" || true

echo "== files"
expected="/etc/$pkg/env
/usr/bin/$pkg
/usr/lib/systemd/system/$pkg.service
/usr/lib/systemd/system/$pkg.socket
/usr/lib/sysusers.d/$pkg.conf
/usr/share/doc/$pkg/changelog.gz
/usr/share/doc/$pkg/copyright
/usr/share/doc/$pkg/examples/$pkg.rules.yml
/usr/share/doc/$pkg/examples/grafana-dashboard.json.gz
/usr/share/lintian/overrides/$pkg
/usr/share/man/man1/$pkg.1.gz"
dpkg -L "$pkg" | sort >"$tmp/listed"
while read -r f; do [ -d "$f" ] || echo "$f"; done <"$tmp/listed" >"$tmp/files"
if ! diff -u <(echo "$expected") "$tmp/files"; then
	bad "the package's files differ from the expected list (- expected, + installed)"
fi
check_stat() { # PATH MODE OWNER GROUP
	local got
	got="$(stat -c '%a %U %G' "$1" 2>&1)" || true
	if [ "$got" != "$2 $3 $4" ]; then
		bad "$1: mode owner group $got, want $2 $3 $4"
	else
		echo "ok    $got  $1"
	fi
}
check_stat /usr/bin/$pkg 755 root root
check_stat /usr/lib/systemd/system/$pkg.service 644 root root
check_stat /usr/lib/systemd/system/$pkg.socket 644 root root
check_stat /usr/lib/sysusers.d/$pkg.conf 644 root root
check_stat /etc/$pkg 750 root $pkg
check_stat /etc/$pkg/env 640 root $pkg
check_stat /usr/share/man/man1/$pkg.1.gz 644 root root
if ! dpkg-query -W -f='${Conffiles}\n' "$pkg" | grep -q "^ /etc/$pkg/env "; then
	bad "/etc/$pkg/env is not a conffile"
else
	echo "ok    /etc/$pkg/env is a conffile"
fi
if ! cmp -s "$root/systemd/env.example" /etc/$pkg/env; then
	bad "/etc/$pkg/env is not systemd/env.example"
fi

echo "== user and group"
IFS=: read -r _ _ uid gid _ home shell <<<"$(getent passwd $pkg || true)"
group_gid="$(getent group $pkg | cut -d: -f3 || true)"
if [ -z "$uid" ] || [ -z "$group_gid" ]; then
	bad "user or group $pkg missing"
else
	echo "ok    user $pkg uid $uid gid $gid home $home shell $shell; group gid $group_gid"
	[ "$gid" = "$group_gid" ] || bad "user $pkg's primary group is $gid, not $pkg ($group_gid)"
	[ "$uid" -lt 1000 ] || bad "user $pkg (uid $uid) is not a system user"
	[ "$shell" = /usr/sbin/nologin ] || bad "user $pkg has shell $shell"
fi

echo "== units"
if [ "$(grep -c "^ExecStart=/usr/bin/$pkg\$" /usr/lib/systemd/system/$pkg.service)" != 1 ]; then
	bad "the installed service's ExecStart is not /usr/bin/$pkg"
fi
# The purge removes /var/lib/$pkg: that must be where the unit saves sessions.
if ! grep -qx "StateDirectory=$pkg" /usr/lib/systemd/system/$pkg.service ||
	! grep -qx "StateDirectoryMode=0700" /usr/lib/systemd/system/$pkg.service; then
	bad "the installed service does not keep its state in /var/lib/$pkg (StateDirectory=$pkg, StateDirectoryMode=0700)"
fi
if command -v systemd-analyze >/dev/null; then
	out="$(systemd-analyze verify --man=no /usr/lib/systemd/system/$pkg.socket /usr/lib/systemd/system/$pkg.service 2>&1)" || bad "systemd-analyze verify failed"
	if [ -n "$out" ]; then
		echo "$out"
		bad "systemd-analyze verify reports problems"
	else
		echo "ok    systemd-analyze verify (systemd $(systemd-analyze --version | awk 'NR==1 {print $2}'))"
	fi
else
	echo "WARNING: systemd-analyze is not installed: installed units NOT verified" >&2
fi

echo "== erply-sessiond version"
out="$(/usr/bin/$pkg version)"
echo "$out"
case "$out" in
"$pkg ${version:-}"*) [ "$out" != "$pkg dev" ] || bad "the binary's version is not stamped" ;;
*) bad "version printed '$out', want '$pkg $version'" ;;
esac
if [ "$(command -v $pkg)" != /usr/bin/$pkg ]; then
	bad "$pkg on PATH is $(command -v $pkg), not /usr/bin/$pkg"
fi

echo "== the daemon's user reads /etc/$pkg/env, others cannot"
# The example names /etc/erply-sessiond/pos.password, which does not exist:
# check-config must get that far, which it cannot without reading the file.
set +e
out="$(runuser -u $pkg -- env -i SESSIOND_ENV_FILE=/etc/$pkg/env /usr/bin/$pkg check-config 2>&1)"
rc=$?
set -e
printf '    %s\n' "${out//$'\n'/$'\n'    }"
# A secret file that cannot be read is a configuration problem naming its
# variable: exit 78, as for any invalid configuration.
if [ "$rc" != 78 ] || ! grep -q 'SESSIOND_POS_PASSWORD_FILE: .*pos.password' <<<"$out" || grep -qi 'permission denied' <<<"$out"; then
	bad "check-config as $pkg: exit $rc; want 78 naming the missing pos.password, not a permission error"
fi
if runuser -u nobody -- cat /etc/$pkg/env >/dev/null 2>&1; then
	bad "user nobody can read /etc/$pkg/env"
else
	echo "ok    nobody cannot read /etc/$pkg/env"
fi

echo "== systemctl enable (offline), then a reinstall keeps a local edit"
enabled=
if command -v systemctl >/dev/null && systemctl enable $pkg.service >/dev/null 2>&1; then
	enabled="$(find /etc/systemd/system -type l -name "$pkg.*" | sort)"
	echo "enabled: ${enabled//$'\n'/ }"
	[ -n "$enabled" ] || bad "systemctl enable made no links"
else
	echo "WARNING: systemctl enable did not work here: enable links NOT tested" >&2
fi
echo '# local edit' >>/etc/$pkg/env
apt-get -o DPkg::Lock::Timeout=300 install --reinstall -y -qq "$deb" </dev/null >/dev/null
tail -n 1 /etc/$pkg/env | grep -qx '# local edit' || bad "a reinstall lost the local edit of /etc/$pkg/env"
check_stat /etc/$pkg/env 640 root $pkg

echo "== remove"
apt-get -o DPkg::Lock::Timeout=300 remove -y -qq "$pkg" </dev/null >/dev/null
for f in /usr/bin/$pkg /usr/lib/systemd/system/$pkg.service /usr/lib/systemd/system/$pkg.socket; do
	[ ! -e "$f" ] || bad "$f left after remove"
done
[ -f /etc/$pkg/env ] || bad "remove deleted the conffile /etc/$pkg/env (only purge may)"
status="$(dpkg-query -W -f='${db:Status-Abbrev}' $pkg)"
[ "$status" = "rc " ] || bad "status after remove is '$status', want 'rc'"

echo "== purge (with saved sessions and a runtime directory in place)"
mkdir -p /var/lib/$pkg /run/$pkg
echo '{}' >/var/lib/$pkg/state.json
touch /run/$pkg/pos.key
apt-get -o DPkg::Lock::Timeout=300 purge -y -qq "$pkg" </dev/null >/dev/null
installed=
if dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$'; then
	bad "dpkg still knows $pkg after purge"
fi
while read -r f; do
	# Shared directories (/usr/bin, …) stay; everything named after the package goes.
	case "$f" in
	*$pkg*) if [ -e "$f" ] || [ -L "$f" ]; then bad "$f left after purge"; fi ;;
	esac
done <"$tmp/listed"
for d in /etc/$pkg /var/lib/$pkg /run/$pkg; do
	[ ! -e "$d" ] || bad "$d left after purge"
done
left="$(find /etc/systemd/system -name "$pkg.*" 2>/dev/null || true)"
[ -z "$left" ] || bad "left after purge: $left"
if [ "$fail" -eq 0 ]; then
	echo "ok    nothing of $pkg is left$(getent passwd $pkg >/dev/null && echo " but its system user and group (kept, as Debian packages do)")"
fi

if [ "$fail" -ne 0 ]; then
	echo "test-deb: FAILED" >&2
	exit 1
fi
echo "test-deb: OK ($(basename "$deb"))"
