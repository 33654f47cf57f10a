#!/usr/bin/env bash
# Builds the static erply-sessiond binary and, where buildah is installed, the
# container image, without pulling anything: the image is the Dockerfile's
# final stage (FROM scratch) with its COPY --from=build sources replaced by
# the binary built here and this machine's CA bundle. Then it checks the
# image's user, entrypoint, health check, environment and volume, and runs
# `erply-sessiond version` inside it.
#
# usage: scripts/build-image.sh
#   VERSION=v1.2.3   version stamped into the binary (default: git describe, else dev)
#   IMAGE=name:tag   image name (default: localhost/erply-sessiond:$VERSION)
#   ARCHIVE=file.tar also write the image as a docker-archive (docker load -i file.tar)
# The binary is left in ./erply-sessiond. buildah uses the vfs storage driver,
# which needs no kernel overlay support.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
VERSION="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
IMAGE="${IMAGE:-localhost/erply-sessiond:$VERSION}"

echo "== go build (static, version $VERSION)"
CGO_ENABLED=0 go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=$VERSION" -o erply-sessiond .
if ! go version -m erply-sessiond | grep -q 'CGO_ENABLED=0'; then
	echo "build-image: erply-sessiond is not a static (CGO_ENABLED=0) build" >&2
	exit 1
fi
ls -l erply-sessiond

if ! command -v buildah >/dev/null; then
	echo "build-image: buildah not found (Debian: apt-get install buildah); built the binary only"
	exit 0
fi
bah() { buildah --storage-driver vfs "$@"; }

ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$ca" ]; then
	echo "build-image: $ca missing (Debian: apt-get install ca-certificates)" >&2
	exit 1
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp erply-sessiond "$ctx/erply-sessiond"
cp "$ca" "$ctx/ca-certificates.crt"
mkdir -p "$ctx/run/erply-sessiond"
chmod 0750 "$ctx/run/erply-sessiond"

# The final stage, from its FROM line on, with each
#   COPY --from=build [options] /path/to/NAME DEST
# turned into
#   COPY [options] NAME DEST
awk '
	/^FROM scratch AS final/ { on = 1 }
	!on { next }
	$1 == "COPY" && $2 == "--from=build" {
		line = "COPY"
		for (i = 3; i <= NF - 2; i++) line = line " " $i
		n = split($(NF - 1), parts, "/")
		print line " " parts[n] " " $NF
		next
	}
	{ print }
' Dockerfile >"$ctx/Containerfile"
if ! grep -q '^FROM scratch AS final' "$ctx/Containerfile" || grep -q -- '--from=' "$ctx/Containerfile"; then
	echo "build-image: could not derive the final stage from the Dockerfile" >&2
	exit 1
fi
echo "== Containerfile (from the Dockerfile's final stage)"
cat "$ctx/Containerfile"

echo "== buildah bud -> $IMAGE"
# Docker format: the OCI image format has no HEALTHCHECK.
bah bud --format docker --build-arg VERSION="$VERSION" -f "$ctx/Containerfile" -t "$IMAGE" "$ctx"

echo "== inspect"
fmt='{{.Docker.Config.User}}|{{.Docker.Config.Entrypoint}}|{{.Docker.Config.Healthcheck.Test}}|{{.Docker.Config.Env}}|{{.Docker.Config.Volumes}}'
info="$(bah inspect --type image --format "$fmt" "$IMAGE")"
IFS='|' read -r user entrypoint health env volumes <<<"$info"
printf 'User:        %s\nEntrypoint:  %s\nHealthcheck: %s\nEnv:         %s\nVolumes:     %s\n' \
	"$user" "$entrypoint" "$health" "$env" "$volumes"
bah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"
fail=0
check() { # what got want
	if [ "$2" != "$3" ]; then
		echo "build-image: $1 is $2, want $3" >&2
		fail=1
	fi
}
check User "$user" "65532:65532"
check Entrypoint "$entrypoint" '[/erply-sessiond]'
check Healthcheck "$health" '[CMD /erply-sessiond get --health]'
case " ${env#[} " in *' SESSIOND_SOCKET=/run/erply-sessiond/sessiond.sock '*) ;; *) check Env "$env" "with SESSIOND_SOCKET" ;; esac
case "$volumes" in *'/run/erply-sessiond:'*) ;; *) check Volumes "$volumes" "with /run/erply-sessiond" ;; esac

echo "== run: erply-sessiond version (inside the image)"
ctr="$(bah from "$IMAGE")"
if out="$(bah run --isolation chroot "$ctr" -- /erply-sessiond version 2>&1)"; then
	echo "$out"
	case "$out" in *"$VERSION"*) ;; *) check "version output" "$out" "containing $VERSION" ;; esac
else
	echo "build-image: could not run a container here (not an image fault):" >&2
	echo "$out" >&2
fi
# The daemon (user 65532) must be able to create its socket in the volume.
mnt="$(bah mount "$ctr")"
check "/run/erply-sessiond owner:group mode" "$(stat -c '%u:%g %a' "$mnt/run/erply-sessiond")" "65532:65532 750"
bah umount "$ctr" >/dev/null
bah rm "$ctr" >/dev/null

if [ -n "${ARCHIVE:-}" ]; then
	rm -f "$ARCHIVE"
	bah push "$IMAGE" "docker-archive:$ARCHIVE:$IMAGE"
	ls -l "$ARCHIVE"
fi
[ "$fail" -eq 0 ] || exit 1
echo "build-image: $IMAGE OK"
