#!/usr/bin/env bash
# Checks the monitoring files in deploy/ with Prometheus's own tool:
#   promtool check rules   deploy/prometheus/erply-sessiond.rules.yml parses
#   promtool test rules    every alert fires on its firing cases and stays quiet
#                          on the others (deploy/prometheus/erply-sessiond.rules.test.yml)
#   the Grafana dashboard  deploy/grafana/erply-sessiond.json is JSON, its panel ids
#                          are unique, every panel and variable queries the
#                          ${datasource} variable, and every PromQL expression in it
#                          parses (promtool check rules on them, Grafana's variables
#                          replaced by plain values)
# Whether the metrics they name exist is scripts/check-metric-names.sh's job.
#
# usage: scripts/test-rules.sh
# Exit status: 0 ok, 1 a check failed, 2 promtool or jq is missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
rules="$root/deploy/prometheus/erply-sessiond.rules.yml"
tests="$root/deploy/prometheus/erply-sessiond.rules.test.yml"
dash="$root/deploy/grafana/erply-sessiond.json"

for tool in promtool jq; do
	if ! command -v "$tool" >/dev/null; then
		echo "test-rules: $tool not found (Debian: apt-get install prometheus jq)" >&2
		exit 2
	fi
done

echo "== promtool check rules"
promtool check rules "$rules"
echo "== promtool test rules"
promtool test rules "$tests"

echo "== Grafana dashboard"
fail=0
if ! jq -e '.uid and .title and (.panels | length > 0)' "$dash" >/dev/null; then
	echo "test-rules: $dash is not a dashboard (uid, title, panels)" >&2
	exit 1
fi
dups="$(jq -r '[.panels[].id] | group_by(.) | map(select(length > 1) | .[0]) | .[]' "$dash")"
if [ -n "$dups" ]; then
	echo "test-rules: panel ids used twice: $dups" >&2
	fail=1
fi
# Every panel but rows, every target and every query variable names the
# data source through the variable, so the dashboard imports anywhere.
bad="$(jq -r '
	[.panels[] | select(.type != "row") | (., .targets[]) | select(.datasource.uid != "${datasource}") | (.title // .refId)]
	+ [.templating.list[] | select(.type == "query" and .datasource.uid != "${datasource}") | .name] | .[]' "$dash")"
if [ -n "$bad" ]; then
	echo "test-rules: not on the \${datasource} variable: $bad" >&2
	fail=1
fi

# Each expression becomes a recording rule, so that promtool parses it.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
{
	echo "groups:"
	echo "  - name: dashboard"
	echo "    rules:"
	jq -r '.panels[] | select(.type != "row") | .title as $t | .targets[] | [$t + " / " + .refId, .expr] | @json' "$dash" |
		while IFS= read -r pair; do
			where="$(jq -r '.[0]' <<<"$pair")"
			expr="$(jq -r '.[1]' <<<"$pair" | sed -E 's/\$__(rate_interval|interval|range)/5m/g; s/\$\{?[A-Za-z_]+\}?/.*/g')"
			echo "      # $where"
			echo "      - record: dashboard:expr"
			echo "        expr: $(jq -Rs . <<<"$expr")"
		done
} >"$tmp/dashboard.rules.yml"
n="$(grep -c 'record:' "$tmp/dashboard.rules.yml")"
if ! out="$(promtool check rules "$tmp/dashboard.rules.yml" 2>&1)"; then
	echo "$out" >&2
	echo "test-rules: a dashboard expression does not parse; they were, as rules:" >&2
	cat -n "$tmp/dashboard.rules.yml" >&2
	fail=1
else
	echo "$n dashboard expressions parse"
fi

if [ "$fail" -ne 0 ]; then
	echo "test-rules: FAILED" >&2
	exit 1
fi
echo "test-rules: OK"
