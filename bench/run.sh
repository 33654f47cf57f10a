#!/usr/bin/env bash
# bench/run.sh — builds erply-sessiond, runs it against the fake Erply and
# measures it next to a bare net/http server returning the same bytes:
# throughput and p50/p99 latency per route (h2load over the Unix socket,
# HTTP/1.1, rounds alternating daemon/bare), time from start to ready, idle
# RSS with 1, 10 and 100 credentials, and upstream logins per credential.
# Prints a closing table with the targets marked met / not met.
#
# Exits non-zero only for a missing tool or an error (a build failure, a
# daemon that does not get ready, a failed request), never for slow numbers.
#
# Settings (environment):
#   BENCH_REQUESTS   requests per h2load run                  [100000]
#   BENCH_CONNS      concurrent connections                   [16]
#   BENCH_ROUNDS     measured rounds per server and route     [3]
#   BENCH_CREDS      credentials during the throughput phase  [2: pos + cashier]
#   BENCH_RSS_CREDS  credential counts for the RSS phase      ["1 10 100"]
#   BENCH_SETTLE     seconds to settle before reading RSS     [3]
#   BENCH_DAEMON_ENV extra KEY=VALUE words for the daemon only, e.g. "GOMAXPROCS=1"
#   GOMAXPROCS, GOGC, GOMEMLIMIT, GODEBUG, when set, go to the daemon and the
#   bare server alike (the ratio then compares code under equal settings).
set -euo pipefail

REQUESTS=${BENCH_REQUESTS:-100000}
CONNS=${BENCH_CONNS:-16}
ROUNDS=${BENCH_ROUNDS:-3}
LOAD_CREDS=${BENCH_CREDS:-2}
RSS_CREDS=${BENCH_RSS_CREDS:-"1 10 100"}
SETTLE=${BENCH_SETTLE:-3}
read -r -a DAEMON_ENV <<<"${BENCH_DAEMON_ENV:-}"

# Targets (reported, never enforced).
TARGET_RATIO=1.0    # key route req/s, daemon / bare
TARGET_P99_MS=2     # key route p99 at BENCH_CONNS connections
TARGET_RSS_MIB=20   # idle RSS with 100 credentials

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "bench: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
missing=0
need() { # tool, how to install
	if ! command -v "$1" >/dev/null 2>&1; then
		echo "bench: $1 not found; install it: $2" >&2
		missing=1
	fi
}
need go "https://go.dev/dl/ (the version in go.mod)"
need h2load "Debian/Ubuntu: sudo apt-get install nghttp2-client; Fedora: sudo dnf install nghttp2; Alpine: apk add nghttp2"
need curl "Debian/Ubuntu: sudo apt-get install curl"
for t in awk sort cmp mktemp getconf; do need "$t" "your distribution's coreutils / diffutils / gawk or mawk package"; done
[ -r /proc/self/status ] || { echo "bench: /proc is needed to read VmRSS (Linux only)" >&2; missing=1; }
((BASH_VERSINFO[0] >= 5)) || { echo "bench: bash 5 or later is needed (EPOCHREALTIME)" >&2; missing=1; }
((missing == 0)) || exit 1
H2HELP=$(h2load --help 2>&1 || true) # not piped into grep -q: SIGPIPE would fail the pipeline
[[ $H2HELP == *--h1* ]] || die "this h2load has no --h1 flag; nghttp2 1.29 or later is needed"
[[ $H2HELP == *unix:* ]] || die "this h2load cannot connect to Unix sockets (-B unix:PATH)"

# --- processes and cleanup ---------------------------------------------------
TMP=$(mktemp -d /tmp/sdbench.XXXXXX) # short: Unix socket paths are limited to ~108 bytes
DAEMON_PID= FAKE_PID= BARE_PID=
ERRORS=0

# stop_pid PID: SIGTERM, wait; sets STOP_RC to its exit status. (No command
# substitution: a subshell cannot wait for its parent's children.)
stop_pid() {
	STOP_RC=0
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || STOP_RC=$?
}
cleanup() {
	trap - EXIT INT TERM
	local p
	for p in $DAEMON_PID $BARE_PID $FAKE_PID; do kill -TERM "$p" 2>/dev/null || true; done
	for p in $DAEMON_PID $BARE_PID $FAKE_PID; do wait "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }
fmt_ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
vm() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; } # pid, VmRSS|VmHWM → KiB

# --- build -------------------------------------------------------------------
echo "== build"
(cd "$ROOT" && go build -trimpath -ldflags "-X main.version=bench" -o "$TMP/erply-sessiond" . &&
	go build -trimpath -o "$TMP/fakeerply" ./bench/fakeerply &&
	go build -trimpath -o "$TMP/bare" ./bench/bare) || die "build failed"
echo "go $(go env GOVERSION), $(nproc) CPUs, $(h2load --version | head -1)"
# runtime_env: the Go runtime settings given to both servers.
RUNTIME_ENV=()
for v in GOMAXPROCS GOGC GOMEMLIMIT GODEBUG; do
	if [ -n "${!v:-}" ]; then RUNTIME_ENV+=("$v=${!v}"); fi
done
echo "runtime settings: both servers: ${RUNTIME_ENV[*]:-defaults}; daemon only: ${DAEMON_ENV[*]:-none}"
CLK_TCK=$(getconf CLK_TCK)

# start_fake N TAG: starts the fake Erply with N credentials; sets FAKE_PID.
start_fake() {
	local n=$1 tag=$2
	rm -f "$TMP/env.$tag" "$TMP/counts.$tag"
	"$TMP/fakeerply" -creds "$n" -env "$TMP/env.$tag" -counts "$TMP/counts.$tag" >"$TMP/fake.$tag.out" 2>&1 &
	FAKE_PID=$!
	local i
	for ((i = 0; i < 1000; i++)); do
		grep -q '^url ' "$TMP/fake.$tag.out" 2>/dev/null && return 0
		kill -0 "$FAKE_PID" 2>/dev/null || { cat "$TMP/fake.$tag.out" >&2; die "the fake Erply exited"; }
		sleep 0.01
	done
	die "the fake Erply did not start"
}

# stop_fake TAG: stops the fake; its counts file is then final.
stop_fake() {
	stop_pid "$FAKE_PID"
	FAKE_PID=
	[ "$STOP_RC" = 0 ] || die "the fake Erply exited with status $STOP_RC"
	[ -s "$TMP/counts.$1" ] || die "the fake Erply wrote no counts"
}

# start_daemon TAG: starts the daemon on the fake's env file and waits until
# /readyz says ready; sets DAEMON_PID, SOCK and READY_MS.
start_daemon() {
	local tag=$1 t0 t1
	SOCK="$TMP/d.sock"
	local -a envs=(PATH="$PATH" SESSIOND_ENV_FILE="$TMP/env.$tag" SESSIOND_SOCKET="$SOCK" SESSIOND_LOG_LEVEL=info
		${RUNTIME_ENV[@]+"${RUNTIME_ENV[@]}"} ${DAEMON_ENV[@]+"${DAEMON_ENV[@]}"})
	t0=$(now_us)
	env -i "${envs[@]}" "$TMP/erply-sessiond" serve >"$TMP/daemon.$tag.log" 2>&1 &
	DAEMON_PID=$!
	local deadline=$((t0 + 30000000))
	while :; do
		if curl -fs -o /dev/null --unix-socket "$SOCK" http://localhost/readyz 2>/dev/null; then
			t1=$(now_us)
			break
		fi
		if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
			tail -20 "$TMP/daemon.$tag.log" >&2
			die "the daemon exited before it was ready"
		fi
		(($(now_us) < deadline)) || { tail -20 "$TMP/daemon.$tag.log" >&2; die "the daemon was not ready after 30 s"; }
		sleep 0.002
	done
	READY_MS=$(fmt_ms $((t1 - t0)))
}

stop_daemon() {
	stop_pid "$DAEMON_PID"
	DAEMON_PID=
	if [ "$STOP_RC" != 0 ]; then
		echo "bench: ERROR: the daemon exited with status $STOP_RC on SIGTERM (want 0)" >&2
		ERRORS=$((ERRORS + 1))
	fi
	if [ -e "$SOCK" ]; then
		echo "bench: ERROR: the daemon left its socket behind" >&2
		ERRORS=$((ERRORS + 1))
	fi
}

# logins_summary TAG: "min max credentials total-upstream-calls" from the counts file.
logins_summary() {
	awk -F'\t' 'NR > 1 && !/^#/ { n++; if (n == 1 || $4 < min) min = $4; if ($4 > max) max = $4 }
		/^# total upstream calls:/ { sub(/.*: */, ""); total = $0 }
		END { print min + 0, max + 0, n + 0, total + 0 }' "$TMP/counts.$1"
}

# --- phase 1: throughput and latency, alternating daemon / bare --------------
echo
echo "== throughput: $LOAD_CREDS credentials, $ROUNDS rounds x $REQUESTS requests, $CONNS connections, h2load -t 1 --h1"
start_fake "$LOAD_CREDS" load
start_daemon load
LOAD_READY_MS=$READY_MS
echo "daemon ready in $READY_MS ms (pid $DAEMON_PID)"

ROUTE_NAMES=(key json readyz)
declare -A ROUTE_PATH=([key]=/v1/sessions/pos/key [json]=/v1/sessions/pos [readyz]=/readyz)
bare_args=()
for r in "${ROUTE_NAMES[@]}"; do
	ct=$(curl -fsS --unix-socket "$SOCK" -o "$TMP/body.$r" -w '%{content_type}' "http://localhost${ROUTE_PATH[$r]}") ||
		die "cannot read ${ROUTE_PATH[$r]} from the daemon"
	[ -n "$ct" ] || die "${ROUTE_PATH[$r]}: no Content-Type"
	bare_args+=(-route "${ROUTE_PATH[$r]},$TMP/body.$r,$ct")
	printf '  %-22s %4d bytes, %s\n' "${ROUTE_PATH[$r]}" "$(wc -c <"$TMP/body.$r")" "$ct"
done
BARE_SOCK="$TMP/b.sock"
env -i PATH="$PATH" ${RUNTIME_ENV[@]+"${RUNTIME_ENV[@]}"} "$TMP/bare" -socket "$BARE_SOCK" "${bare_args[@]}" >"$TMP/bare.log" 2>&1 &
BARE_PID=$!
for ((i = 0; ; i++)); do
	curl -fs -o "$TMP/check.key" --unix-socket "$BARE_SOCK" "http://localhost${ROUTE_PATH[key]}" 2>/dev/null && break
	kill -0 "$BARE_PID" 2>/dev/null || { cat "$TMP/bare.log" >&2; die "the bare server exited"; }
	((i < 1000)) || die "the bare server did not start"
	sleep 0.01
done
cmp -s "$TMP/check.key" "$TMP/body.key" || die "the bare server's key differs from the daemon's"

declare -A SOCK_OF=([daemon]="$SOCK" [bare]="$BARE_SOCK") PID_OF=([daemon]="$DAEMON_PID" [bare]="$BARE_PID")
declare -A RPS P50 P99 PMAX RPS_LIST RATIO SPREAD TICKS CPU_US

# cpu_ticks PID: user + system CPU time of the process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# h2run SERVER ROUTE N LOGFILE: one h2load run; sets H2_RPS to its req/s and
# H2_TICKS to the CPU ticks the server spent. Failed or non-2xx requests are
# errors.
h2run() {
	local srv=$1 route=$2 n=$3 log=$4 out="$TMP/h2load.out" t0
	t0=$(cpu_ticks "${PID_OF[$srv]}")
	if ! h2load -B "unix:${SOCK_OF[$srv]}" --h1 -n "$n" -c "$CONNS" -t 1 ${log:+--log-file "$log"} \
		"http://localhost${ROUTE_PATH[$route]}" >"$out" 2>&1; then
		cat "$out" >&2
		die "h2load failed against $srv ${ROUTE_PATH[$route]}"
	fi
	local ok2xx failed
	ok2xx=$(awk '/^status codes:/ { print $3 }' "$out")
	failed=$(awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($i ~ /^(failed|errored|timeout),?$/) s += $(i - 1); print s + 0 }' "$out")
	if [ "$ok2xx" != "$n" ] || [ "$failed" != 0 ]; then
		echo "bench: ERROR: $srv ${ROUTE_PATH[$route]}: $ok2xx of $n answered 2xx, $failed failed" >&2
		grep -E '^(requests|status codes):' "$out" >&2
		ERRORS=$((ERRORS + 1))
	fi
	H2_TICKS=$(($(cpu_ticks "${PID_OF[$srv]}") - t0))
	H2_RPS=$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^req\/s/) print $i + 0 }' "$out")
	[ -n "$H2_RPS" ] || die "no req/s in h2load's output"
}

# Warm-up: one short unrecorded run per server and route.
for r in "${ROUTE_NAMES[@]}"; do
	for s in daemon bare; do h2run "$s" "$r" $((REQUESTS / 10 + CONNS)) ""; done
done

for ((round = 1; round <= ROUNDS; round++)); do
	order=(daemon bare)
	if ((round % 2 == 0)); then order=(bare daemon); fi # cancel drift: each goes first in turn
	line="round $round:"
	for r in "${ROUTE_NAMES[@]}"; do
		for s in "${order[@]}"; do
			h2run "$s" "$r" "$REQUESTS" "$TMP/lat.$s.$r.$round"
			RPS_LIST[$s.$r]+="$H2_RPS "
			TICKS[$s.$r]=$((${TICKS[$s.$r]:-0} + H2_TICKS))
			line+=$(printf ' %s/%s %.0f' "$r" "$s" "$H2_RPS")
		done
	done
	echo "$line req/s"
done

# Per server and route: mean req/s over the rounds, percentiles over every
# 2xx request of every round (h2load's log: start µs, status, duration µs).
for s in daemon bare; do
	for r in "${ROUTE_NAMES[@]}"; do
		RPS[$s.$r]=$(echo "${RPS_LIST[$s.$r]}" | awk '{ for (i = 1; i <= NF; i++) t += $i; printf "%.0f", t / NF }')
		CPU_US[$s.$r]=$(awk -v t="${TICKS[$s.$r]}" -v hz="$CLK_TCK" -v n=$((ROUNDS * REQUESTS)) 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
		read -r P50[$s.$r] P99[$s.$r] PMAX[$s.$r] < <(cat "$TMP"/lat."$s"."$r".* |
			awk -F'\t' '$2 >= 200 && $2 < 300 { print $3 }' | sort -n |
			awk '{ v[NR] = $1 } END {
				i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
				printf "%.3f %.3f %.3f\n", v[i50] / 1000, v[i99] / 1000, v[NR] / 1000 }')
	done
done
rm -f "$TMP"/lat.*

LOAD_RSS_KIB=$(vm "$DAEMON_PID" VmRSS)
LOAD_HWM_KIB=$(vm "$DAEMON_PID" VmHWM)
stop_pid "$BARE_PID"
BARE_PID=
stop_daemon
stop_fake load
read -r LOAD_LMIN LOAD_LMAX LOAD_NCRED LOAD_CALLS < <(logins_summary load)

echo
printf '%-8s %12s %12s %7s %22s %22s %16s\n' route "daemon req/s" "bare req/s" ratio "daemon p50/p99/max ms" "bare p50/p99/max ms" "CPU us/req d / b"
for r in "${ROUTE_NAMES[@]}"; do
	RATIO[$r]=$(awk -v d="${RPS[daemon.$r]}" -v b="${RPS[bare.$r]}" 'BEGIN { printf "%.2f", d / b }')
	# The per-round ratios show how much of the difference is noise.
	SPREAD[$r]=$(awk -v d="${RPS_LIST[daemon.$r]}" -v b="${RPS_LIST[bare.$r]}" 'BEGIN {
		n = split(d, dv, " "); split(b, bv, " ")
		for (i = 1; i <= n; i++) { q = dv[i] / bv[i]; if (i == 1 || q < lo) lo = q; if (q > hi) hi = q }
		printf "%.2f..%.2f", lo, hi }')
	printf '%-8s %12s %12s %6sx %22s %22s %16s\n' "$r" "${RPS[daemon.$r]}" "${RPS[bare.$r]}" "${RATIO[$r]}" \
		"${P50[daemon.$r]}/${P99[daemon.$r]}/${PMAX[daemon.$r]}" "${P50[bare.$r]}/${P99[bare.$r]}/${PMAX[bare.$r]}" \
		"${CPU_US[daemon.$r]} / ${CPU_US[bare.$r]}"
done
echo "daemon after load: VmRSS $(kib_to_mib "$LOAD_RSS_KIB") MiB, VmHWM $(kib_to_mib "$LOAD_HWM_KIB") MiB"
echo "upstream logins per credential: min $LOAD_LMIN, max $LOAD_LMAX over $LOAD_NCRED credentials ($LOAD_CALLS upstream calls in all)"

# --- phase 2: idle RSS and time to ready per credential count ----------------
echo
echo "== idle RSS (VmRSS ${SETTLE}s after ready) and time to ready"
declare -A RSS_KIB ANON_KIB FILE_KIB READY LMIN LMAX NCRED CALLS
for n in $RSS_CREDS; do
	start_fake "$n" "c$n"
	start_daemon "c$n"
	READY[$n]=$READY_MS
	sleep "$SETTLE"
	RSS_KIB[$n]=$(vm "$DAEMON_PID" VmRSS)
	ANON_KIB[$n]=$(vm "$DAEMON_PID" RssAnon) # heap, stacks, runtime
	FILE_KIB[$n]=$(vm "$DAEMON_PID" RssFile) # the binary's pages in use
	stop_daemon
	stop_fake "c$n"
	read -r LMIN[$n] LMAX[$n] NCRED[$n] CALLS[$n] < <(logins_summary "c$n")
	printf '%4d credentials: ready in %7s ms, VmRSS %5s MiB (anon %s, file %s), logins per credential %s..%s, %s upstream calls\n' \
		"$n" "${READY[$n]}" "$(kib_to_mib "${RSS_KIB[$n]}")" "$(kib_to_mib "${ANON_KIB[$n]}")" "$(kib_to_mib "${FILE_KIB[$n]}")" \
		"${LMIN[$n]}" "${LMAX[$n]}" "${CALLS[$n]}"
done

# --- closing table -----------------------------------------------------------
mark() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "NOT MET"; fi; }
row() { printf '%-46s %-30s %-14s %s\n' "$@"; }
echo
echo "== summary ($ROUNDS rounds x $REQUESTS requests, $CONNS connections; $(nproc) CPUs shared with the load generator)"
row figure value target status
row ---------------------------------------------- ------------------------------ -------------- -------
for r in "${ROUTE_NAMES[@]}"; do
	target=- status=-
	if [ "$r" = key ]; then target=">= ${TARGET_RATIO}x bare" status=$(mark "${RATIO[$r]} >= $TARGET_RATIO"); fi
	row "${ROUTE_PATH[$r]} req/s daemon / bare" "${RPS[daemon.$r]} / ${RPS[bare.$r]} = ${RATIO[$r]}x" "$target" "$status"
	row "${ROUTE_PATH[$r]} ratio per round" "${SPREAD[$r]}" - -
	target=- status=-
	if [ "$r" = key ]; then target="p99 <= ${TARGET_P99_MS} ms" status=$(mark "${P99[daemon.$r]} <= $TARGET_P99_MS"); fi
	row "${ROUTE_PATH[$r]} p50/p99 ms daemon" "${P50[daemon.$r]} / ${P99[daemon.$r]}" "$target" "$status"
	row "${ROUTE_PATH[$r]} p50/p99 ms bare" "${P50[bare.$r]} / ${P99[bare.$r]}" - -
	row "${ROUTE_PATH[$r]} CPU us/req daemon / bare" "${CPU_US[daemon.$r]} / ${CPU_US[bare.$r]}" - -
done
row "RSS after load ($LOAD_CREDS credentials)" "$(kib_to_mib "$LOAD_RSS_KIB") MiB (peak $(kib_to_mib "$LOAD_HWM_KIB"))" - -
row "time to ready ($LOAD_CREDS credentials)" "$LOAD_READY_MS ms" - -
for n in $RSS_CREDS; do
	target=- status=-
	if [ "$n" = 100 ]; then target="<= ${TARGET_RSS_MIB} MiB" status=$(mark "${RSS_KIB[$n]} <= $TARGET_RSS_MIB * 1024"); fi
	row "idle RSS, $n credentials" "$(kib_to_mib "${RSS_KIB[$n]}") MiB" "$target" "$status"
done
for n in $RSS_CREDS; do
	row "time to ready, $n credentials" "${READY[$n]} ms" - -
done
row "logins per credential (load run)" "${LOAD_LMIN}..${LOAD_LMAX} over $LOAD_NCRED" "1 each" "$(mark "$LOAD_LMIN == 1 && $LOAD_LMAX == 1")"
for n in $RSS_CREDS; do
	row "logins per credential ($n credentials)" "${LMIN[$n]}..${LMAX[$n]} over ${NCRED[$n]}" "1 each" "$(mark "${LMIN[$n]} == 1 && ${LMAX[$n]} == 1")"
done

if ((ERRORS > 0)); then
	echo "bench: $ERRORS error(s) above" >&2
	exit 1
fi
