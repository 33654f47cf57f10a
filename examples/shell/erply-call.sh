#!/bin/sh
# erply-call.sh — a shell job that makes one Erply call with erply-sessiond's
# session, using curl only (no jq).
#
#   erply-call.sh call|proxy CREDENTIAL REQUEST [name=value ...]
#
# "call" asks the daemon for the key, sends the request to Erply itself and,
# when Erply answers 1054/1055 (session expired or unknown), reports the key
# to the daemon (it logs in again only if that key is still current, once for
# all callers) and re-sends once with the new key, saying so on standard
# error. "proxy" hands the request to the daemon's /api route, which adds the
# key and does that re-send itself. Erply's reply goes to standard output
# unchanged. Exit status: 0 when a reply came (look at its errorCode), curl's
# when the daemon refused (22: an HTTP error; its message on standard error)
# or nothing answered.
#
# The session key is handed to curl on standard input, never on its command
# line (which any local user can read in ps) nor in a URL. The socket is
# $SESSIOND_SOCKET or /run/erply-sessiond/sessiond.sock.
set -eu

usage() { echo "usage: $0 call|proxy CREDENTIAL REQUEST [name=value ...]" >&2; exit 64; }
[ $# -ge 3 ] || usage
via=$1 name=$2 request=$3
shift 3
case $via in call | proxy) ;; *) usage ;; esac
S=${SESSIOND_SOCKET:-/run/erply-sessiond/sessiond.sock}

# daemon PATH [curl args...]: one request to the daemon, its answer on
# standard output; an error answer goes to standard error and fails with
# curl's status (22).
daemon() {
	path=$1
	shift
	if out=$(curl -sS --fail-with-body --unix-socket "$S" "$@" "http://localhost$path"); then
		printf '%s\n' "$out"
	else
		rc=$?
		printf '%s\n' "$out" >&2
		return "$rc"
	fi
}

# The call's parameters become curl's --data-urlencode arguments.
n=$#
for kv in "$@"; do set -- "$@" --data-urlencode "$kv"; done
shift "$n"
set -- --data-urlencode "request=$request" "$@"

if [ "$via" = proxy ]; then
	daemon "/v1/sessions/$name/api" "$@"
	exit
fi

# field NAME: a string field of the session JSON on standard input.
field() { sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p'; }
session=$(daemon "/v1/sessions/$name")
api=$(printf '%s' "$session" | field apiURL)
code=$(printf '%s' "$session" | field clientCode)
key=$(printf '%s' "$session" | field sessionKey)

# erply KEY: the call, with the key read by curl from standard input.
erply() {
	k=$1
	shift
	printf '%s' "$k" | curl -sS --fail "$api" -H 'Content-Type: application/x-www-form-urlencoded' \
		--data-urlencode "clientCode=$code" -d sendContentType=1 --data-urlencode sessionKey@- "$@"
}
errcode() { printf '%s' "$1" | grep -o '"errorCode":"\{0,1\}[0-9]*' | head -n 1 | tr -dc 0-9; }

reply=$(erply "$key" "$@")
case $(errcode "$reply") in
1054 | 1055)
	printf '%s' "$key" | daemon "/v1/sessions/$name/invalidate" --data-urlencode key@- >/dev/null
	key=$(daemon "/v1/sessions/$name/key")
	echo "erply-call: Erply refused the session; re-sent once with the daemon's new key" >&2
	reply=$(erply "$key" "$@")
	;;
esac
printf '%s\n' "$reply"
