#!/usr/bin/env bash
# Builds the Debian package erply-sessiond_VERSION_ARCH.deb with dpkg-deb
# (no other tool, nothing downloaded but the Go modules the daemon already
# uses). Contents:
#   /usr/bin/erply-sessiond                    static (CGO_ENABLED=0), -trimpath, version stamped
#   /usr/lib/systemd/system/erply-sessiond.{service,socket}
#                                              from systemd/, ExecStart=/usr/bin/erply-sessiond
#   /usr/lib/sysusers.d/erply-sessiond.conf    the system user and group
#   /etc/erply-sessiond/env                    conffile, systemd/env.example (0640, group set by postinst)
#   /usr/share/doc/erply-sessiond/             copyright (with every linked module's license),
#                                              changelog, examples (alert rules, Grafana dashboard)
#   /usr/share/man/man1/erply-sessiond.1.gz    packaging/deb/erply-sessiond.1
# and the maintainer scripts in packaging/deb/.
#
# usage: scripts/build-deb.sh
#   VERSION=v1.2.3      version stamped into the binary (default: git describe, else dev);
#                       the package version is derived from it (v1.2.3-4-gabc → 1.2.3+4.gabc,
#                       a bare commit → 0.0~gitDATE.COMMIT)
#   GOARCH=arm64        target architecture (default: go env GOARCH)
#   OUT_DIR=dir         where the .deb goes (default: the repository's top directory)
#   MAINTAINER='Name <mail>'
#   SOURCE_DATE_EPOCH   file times in the package (default: the last commit's time), so that
#                       two builds of one commit are byte-identical
# Prints the path of the .deb on its last line.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
pkg=erply-sessiond
VERSION="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
GOARCH="${GOARCH:-$(go env GOARCH)}"
OUT_DIR="${OUT_DIR:-$root}"
MAINTAINER="${MAINTAINER:-erply-sessiond developers <erply-sessiond@users.noreply.github.com>}"
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

for tool in dpkg-deb dpkg gzip; do
	if ! command -v "$tool" >/dev/null; then
		echo "build-deb: $tool not found (Debian: apt-get install dpkg gzip)" >&2
		exit 2
	fi
done

case "$GOARCH" in
amd64 | arm64 | s390x | riscv64 | loong64) arch="$GOARCH" ;;
386) arch=i386 ;;
arm) arch=armhf && export GOARM="${GOARM:-7}" ;;
ppc64le) arch=ppc64el ;;
*)
	echo "build-deb: no Debian architecture known for GOARCH=$GOARCH" >&2
	exit 1
	;;
esac

# A Debian version starts with a digit and, for this native package, has no '-'.
v="${VERSION#v}"
if [[ "$v" =~ ^[0-9]+(\.[0-9]+)+ ]]; then
	debver="$(sed -E 's/-([0-9]+)-g([0-9a-f]+)/+\1.g\2/; s/-dirty$/+dirty/; s/-/~/g' <<<"$v")"
else
	debver="0.0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).${v//-/.}"
fi
if ! dpkg --validate-version "$debver" 2>/dev/null; then
	echo "build-deb: cannot make a Debian version of '$VERSION' (got '$debver')" >&2
	exit 1
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
umask 022
doc="$stage/usr/share/doc/$pkg"

echo "== go build (static, GOARCH=$GOARCH, version $VERSION)"
CGO_ENABLED=0 GOOS=linux GOARCH="$GOARCH" go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=$VERSION" -o "$stage/usr/bin/$pkg" .
if ! go version -m "$stage/usr/bin/$pkg" | grep -q 'CGO_ENABLED=0'; then
	echo "build-deb: $pkg is not a static (CGO_ENABLED=0) build" >&2
	exit 1
fi

echo "== units (ExecStart=/usr/bin/$pkg)"
units="$stage/usr/lib/systemd/system"
mkdir -p "$units"
# systemd/erply-sessiond.service is written for a hand install in
# /usr/local/bin; the packaged copy runs /usr/bin/erply-sessiond, and its
# header comment's manual install steps become the package's two steps.
awk -v pkg="$pkg" '
	/^# Install \(as root\):/ {
		print "# Installed by the " pkg " package. Put the credentials in"
		print "# /etc/erply-sessiond/env (erply-sessiond check-config checks them), then:"
		print "#   systemctl enable --now erply-sessiond.socket erply-sessiond.service"
		print "#   usermod -aG erply-sessiond www-data  # each local user that may read keys"
		skip = 1
		next
	}
	skip && /usermod -aG/ { skip = 0; next }
	skip { next }
	$0 == "ExecStart=/usr/local/bin/" pkg { print "ExecStart=/usr/bin/" pkg; next }
	/^Description=/ { print; print "Documentation=man:" pkg "(1)"; next }
	{ print }
' systemd/$pkg.service >"$units/$pkg.service"
if [ "$(grep -c "^ExecStart=/usr/bin/$pkg\$" "$units/$pkg.service")" != 1 ] ||
	grep -q '/usr/local' "$units/$pkg.service" || ! grep -q '^# Installed by' "$units/$pkg.service"; then
	echo "build-deb: systemd/$pkg.service changed shape: cannot point its ExecStart and header at /usr/bin" >&2
	exit 1
fi
install -m 0644 systemd/$pkg.socket "$units/$pkg.socket"
install -D -m 0644 systemd/$pkg.sysusers "$stage/usr/lib/sysusers.d/$pkg.conf"

echo "== configuration, documentation"
install -d -m 0750 "$stage/etc/$pkg"
install -m 0640 systemd/env.example "$stage/etc/$pkg/env"
install -d -m 0755 "$doc/examples"
install -m 0644 deploy/prometheus/erply-sessiond.rules.yml "$doc/examples/"
install -m 0644 deploy/grafana/erply-sessiond.json "$doc/examples/grafana-dashboard.json"
gzip -9n "$doc/examples/grafana-dashboard.json"
install -D -m 0644 packaging/deb/lintian-overrides "$stage/usr/share/lintian/overrides/$pkg"
install -D -m 0644 packaging/deb/$pkg.1 "$stage/usr/share/man/man1/$pkg.1"
gzip -9n "$stage/usr/share/man/man1/$pkg.1"

# copyright: the project's notice, then the license of the Go standard library
# and of every module linked into the binary, as each ships it; Apache-2.0's
# text is not repeated (Debian policy 12.5: it is in /usr/share/common-licenses).
license() { # FILE
	if grep -q 'Apache License' "$1" && grep -q 'TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION' "$1"; then
		echo "Apache License, Version 2.0: see /usr/share/common-licenses/Apache-2.0."
	else
		cat "$1"
	fi
}
{
	cat packaging/deb/copyright.head
	printf '\n\n==== Go standard library %s\n\n' "$(go env GOVERSION)"
	cat "$(go env GOROOT)/LICENSE"
	CGO_ENABLED=0 GOOS=linux GOARCH="$GOARCH" go list -deps \
		-f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' . |
		sort -u | while read -r path version dir; do
		lic="$(find "$dir" -maxdepth 1 -type f -regextype egrep \
			-iregex '.*/(LICEN[CS]E|COPYING|NOTICE)(\.(md|txt))?' | sort)"
		if [ -z "$lic" ]; then
			echo "build-deb: module $path $version ships no license file" >&2
			exit 1
		fi
		for f in $lic; do
			printf '\n\n==== %s %s: %s\n\n' "$path" "$version" "$(basename "$f")"
			license "$f"
		done
	done
} >"$doc/copyright"
chmod 0644 "$doc/copyright"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
	printf '%s (%s) unstable; urgency=medium\n\n' "$pkg" "$debver"
	printf '  * Built from commit %s (%s).\n' "$commit" "$VERSION"
	printf '    The history is the repository'"'"'s git log.\n\n'
	printf ' -- %s  %s\n' "$MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

echo "== control files"
install -d -m 0755 "$stage/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "packaging/deb/$s" "$stage/DEBIAN/$s"
done
echo "/etc/$pkg/env" >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
	sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s|@VERSION@|$debver|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$MAINTAINER|" \
	-e "s|@INSTALLED_SIZE@|$size|" packaging/deb/control.in >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT_DIR"
deb="$(cd "$OUT_DIR" && pwd)/${pkg}_${debver}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "== $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
echo "$deb"
