#!/bin/sh
# CTest fixture of the ASan/UBSan build (tools/sanitizers/sanitizers.cmake).
#   check_reports.sh --clear DIR   empties DIR (setup: before the integration tests)
#   check_reports.sh DIR           fails, printing them, if DIR holds any report (cleanup: after)
# Reports are DIR/<test name>.<pid>, written by whichever of our processes found something - a
# worker's report would otherwise only be in the supervisor's log in a deleted temp directory.
set -eu
if [ "$1" = "--clear" ]; then
  rm -rf "$2"
  mkdir -p "$2"
  chmod 1777 "$2"
  exit 0
fi
dir=$1
[ -d "$dir" ] || { echo "no $dir: did sanitizer.reports.clear run?"; exit 1; }
n=0
for f in "$dir"/*; do
  [ -e "$f" ] || continue
  n=$((n + 1))
  echo "=== $f"
  cat "$f"
done
if [ "$n" -gt 0 ]; then
  echo "$n sanitizer report(s) in $dir"
  exit 1
fi
echo "no sanitizer reports in $dir"
