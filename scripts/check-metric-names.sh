#!/usr/bin/env bash
# Proves that every metric the alert rules and the Grafana dashboard use is
# exported by the real daemon: builds erply-sessiond, runs `erply-sessiond
# demo` (the embedded fake Erply) on a temporary socket, makes one key read
# and one proxied call so that the request counters have samples, scrapes
# /metrics with curl, and checks
#   - every metric name in the rules' expressions (deploy/prometheus/*.rules.yml)
#     and in the dashboard's queries (deploy/grafana/*.json) is a sample name
#     of the scrape, and
#   - every label a selector matches on (name{label=...}) is a label of that
#     metric in the scrape (job and instance come from Prometheus),
# except the metrics listed in deploy/prometheus/pending-metrics.txt, which are
# reported as PENDING. A pending metric that the daemon now exports, or that
# nothing uses any more, is a failure: the list must shrink as they land.
#
# usage: scripts/check-metric-names.sh
# Exit status: 0 ok, 1 a metric or label is missing, 2 go, curl or jq is missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
pending_file=deploy/prometheus/pending-metrics.txt

for tool in go curl jq; do
	if ! command -v "$tool" >/dev/null; then
		echo "check-metric-names: $tool not found (Debian: apt-get install curl jq)" >&2
		exit 2
	fi
done

tmp="$(mktemp -d)"
pid=
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

echo "== build and run erply-sessiond demo"
# The flags of scripts/build-image.sh and build-deb.sh, so that they share the build cache.
CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$tmp/erply-sessiond" .
sock="$tmp/sessiond.sock"
"$tmp/erply-sessiond" demo -socket "$sock" >"$tmp/demo.log" 2>&1 &
pid=$!
api() { curl -fsS --max-time 10 --unix-socket "$sock" "$@"; }
ready=
for _ in $(seq 1 200); do
	if api -o /dev/null http://localhost/readyz 2>/dev/null; then
		ready=1
		break
	fi
	if ! kill -0 "$pid" 2>/dev/null; then break; fi
	sleep 0.1
done
if [ -z "$ready" ]; then
	echo "check-metric-names: the demo daemon did not become ready in 20 s; its log:" >&2
	cat "$tmp/demo.log" >&2
	exit 1
fi
api -o /dev/null http://localhost/v1/sessions/pos/key
api -o /dev/null http://localhost/v1/sessions/pos/api -d request=getProducts -d recordsOnPage=1
api http://localhost/metrics >"$tmp/metrics"
# "name label" for every label of every sample, and "name" alone.
grep -v '^#' "$tmp/metrics" | sed -E 's/[ {].*//' | sort -u >"$tmp/exported"
grep -v '^#' "$tmp/metrics" | grep '{' | sed -E 's/^([^{]+)\{(.*)\}.*$/\1 \2/' |
	while read -r name labels; do
		grep -oE '[A-Za-z_][A-Za-z0-9_]*="' <<<"$labels" | sed "s/=\"\$//; s/^/$name /"
	done | sort -u >"$tmp/labels"
echo "$(wc -l <"$tmp/exported") metric names exported"

# The PromQL the rules and the dashboard run: the rules' expr: values (block
# or single line) and the dashboard's query strings, comments dropped.
for f in deploy/prometheus/*.rules.yml; do
	awk '
		block && (/^[[:space:]]*$/ || match($0, /[^ ]/) > ind) { print; next }
		{ block = 0 }
		/^[[:space:]]*expr:/ {
			ind = match($0, /[^ ]/)
			v = $0
			sub(/^[[:space:]]*expr:[[:space:]]*/, "", v)
			if (v ~ /^[|>]/) block = 1; else print v
		}
	' "$f"
done | sed 's/#.*//' >"$tmp/promql"
for f in deploy/grafana/*.json; do
	jq -r '.. | objects | (.expr?, .query?, .definition?) | strings' "$f"
done >>"$tmp/promql"
if [ "$(grep -c . "$tmp/promql")" -lt 10 ]; then
	echo "check-metric-names: found almost no PromQL in deploy/: the extraction broke" >&2
	exit 1
fi
metric_re='\b(erply_sessiond|process|go)_[A-Za-z0-9_]+'
grep -oE "$metric_re" "$tmp/promql" | sort -u >"$tmp/used"
grep -v '^[[:space:]]*\(#\|$\)' "$pending_file" | awk '{print $1}' | sort -u >"$tmp/pending"

fail=0
echo "== metric names used by the rules and the dashboard"
while read -r name; do
	if grep -qxF "$name" "$tmp/exported"; then
		if grep -qxF "$name" "$tmp/pending"; then
			echo "FAIL     $name: exported now; remove it from $pending_file"
			fail=1
		else
			echo "ok       $name"
		fi
	elif grep -qxF "$name" "$tmp/pending"; then
		why="$(awk -v n="$name" '$1 == n { $1 = ""; sub(/^ +/, ""); print }' "$pending_file")"
		echo "PENDING  $name: $why"
	else
		echo "MISSING  $name"
		fail=1
	fi
done <"$tmp/used"
while read -r name; do
	if ! grep -qxF "$name" "$tmp/used"; then
		echo "FAIL     $name is in $pending_file but no rule or panel uses it"
		fail=1
	fi
done <"$tmp/pending"

echo "== labels matched by selectors"
grep -oE "${metric_re}\{[^}]*\}" "$tmp/promql" | sort -u | while read -r sel; do
	name="${sel%%\{*}"
	grep -qxF "$name" "$tmp/exported" || continue # reported above
	for label in $(grep -oE '[A-Za-z_][A-Za-z0-9_]*[[:space:]]*(=~|!~|!=|=)[[:space:]]*"' <<<"${sel#*\{}" | grep -oE '^[A-Za-z_][A-Za-z0-9_]*'); do
		case "$label" in job | instance) continue ;; esac
		if ! grep -qxF "$name $label" "$tmp/labels"; then
			echo "MISSING  label $label of $name (in $sel)"
			echo fail >>"$tmp/label-fail"
		fi
	done
done
if [ -s "$tmp/label-fail" ]; then
	fail=1
else
	echo "ok       every selector's labels"
fi

if [ "$fail" -ne 0 ]; then
	echo "check-metric-names: FAILED. The daemon exports:" >&2
	sed 's/^/  /' "$tmp/exported" >&2
	exit 1
fi
echo "check-metric-names: OK ($(wc -l <"$tmp/used") names used, $(grep -c . "$tmp/pending" || true) pending)"
