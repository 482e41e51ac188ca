#!/usr/bin/env bash
# Fails when a test left a test bed server running: a process whose executable is in the
# test bed's bin directory, a Prometheus the harness started (its TSDB lives in a
# weir-prometheus-* directory), or an nginx master or worker the harness started (its
# logs live in a weir-nginx-* directory), or a chromium the dashboard's test started (its
# profile lives in a weir-chromium-* directory). Run after the tests.
set -euo pipefail

bin="$("$(dirname "${BASH_SOURCE[0]}")/setup.sh" --dir)/bin/"
found=0
for proc in /proc/[0-9]*; do
    # A process can exit while we look; zombies have no executable and are not running.
    exe=$(readlink "$proc/exe" 2>/dev/null) || continue
    cmdline=$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null) || continue
    # nginx workers rename themselves; they give themselves away by the log files they
    # hold open in a weir-nginx-* directory.
    nginx_files=""
    if [[ "$exe" == */nginx ]]; then
        nginx_files=$(ls -l "$proc/fd" 2>/dev/null | grep -c 'weir-nginx-' || true)
    fi
    if [[ "$exe" == "$bin"* || ("$exe" == */prometheus && "$cmdline" == *weir-prometheus-*) || "${nginx_files:-0}" -gt 0 || "$cmdline" == *--user-data-dir=*weir-chromium-* ]]; then
        echo "left running: pid ${proc#/proc/}: $cmdline" >&2
        found=1
    fi
done
if ((found)); then
    echo "testbed: a test left servers running (see above): every ControlPlane and Prometheus must be dropped" >&2
    exit 1
fi
echo "testbed: no test bed server left running"
