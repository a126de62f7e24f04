#!/usr/bin/env bash
# `make run`: the local stack plus both services, in the foreground.
# Ctrl-C (or SIGTERM) stops the two services by PID; the stack keeps running
# (`make stack-down` stops it).
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/stack.sh up
# --workspace: the feature set `make test` built with, so nothing compiles twice.
cargo build --workspace --bins
# Where cargo put them: CARGO_TARGET_DIR (or a config) may move target/.
bin="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug"

if [[ -f .env ]]; then
    export ENV_FILE=.env
else
    echo "run: no .env found; using the development defaults in .env.example"
    export ENV_FILE=.env.example
fi

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

"$bin/order-api" &
pids+=("$!")
"$bin/order-processor" &
pids+=("$!")
echo "run: order-api on http://127.0.0.1:8000 (pid ${pids[0]}), order-processor health on http://127.0.0.1:8001 (pid ${pids[1]})"
echo "run: metrics (Prometheus) on http://127.0.0.1:9100/metrics and :9101/metrics unless API_METRICS_ADDR / PROCESSOR_METRICS_ADDR say otherwise"
echo "run: mail inbox at http://127.0.0.1:1080; Ctrl-C stops both services"
# If either service exits, stop the other and report.
set +e
wait -n "${pids[@]}"
status=$?
if [[ $status -ne 0 ]]; then
    echo "run: a service exited with status $status; stopping the other" >&2
else
    echo "run: services stopped"
fi
exit "$status"
