#!/usr/bin/env bash
# `make bench` / `make bench-smoke`: the local stack, both services on a fresh
# database and fresh queues, and order-bench's standard scenarios against them.
#
# Usage: scripts/bench.sh [--smoke] [-- extra order-bench run arguments]
#   (default)  release binaries; spread, hot, steady, mixed, BENCH_DURATION each
#   --smoke    debug binaries, about a second per scenario: checks only that the
#              tool works and produces numbers (never a timing), for CI
# Environment: BENCH_DURATION (20s), BENCH_SCENARIOS (spread,hot,steady,mixed),
#   BENCH_CONCURRENCY (16), BENCH_BIN_DIR (use the order-api, order-processor
#   and order-bench already built there instead of building; for comparing
#   builds), STACK_MONGO_PORT / STACK_SQS_PORT / STACK_SMTP_PORT
#   as for scripts/stack.sh.
# Output: the table on stdout; JSON and the services' logs in
# <target>/bench/<run id>/. Stops only the two services it started, by PID.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

smoke=0
if [[ ${1:-} == --smoke ]]; then
    smoke=1
    shift
fi
[[ ${1:-} == -- ]] && shift

MONGO_PORT=${STACK_MONGO_PORT:-27017}
SQS_PORT=${STACK_SQS_PORT:-4566}
SMTP_PORT=${STACK_SMTP_PORT:-1025}

info() { printf 'bench: %s\n' "$*" >&2; }
die() {
    printf 'bench: error: %s\n' "$*" >&2
    exit 1
}
command -v jq >/dev/null || die "jq is needed (see README: what the machine needs)"

answers() { # answers PORT: something accepts TCP connections on 127.0.0.1:PORT
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if ((smoke)); then
    profile_flag=()
    profile_dir=debug
else
    profile_flag=(--release)
    profile_dir=release
fi
target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    bin=$BENCH_BIN_DIR
    info "using the binaries in $bin"
else
    info "building ($profile_dir)"
    # --workspace: one feature set for every build of a profile (Makefile).
    cargo build "${profile_flag[@]}" --workspace --bins
    bin="$target/$profile_dir"
fi

# A stack someone else started (another checkout's scripts/stack.sh) is used
# as it is; otherwise start ours.
if answers "$MONGO_PORT" && answers "$SQS_PORT" && answers "$SMTP_PORT"; then
    info "stack: already answering on $MONGO_PORT, $SQS_PORT, $SMTP_PORT"
else
    scripts/stack.sh up
fi

run_id="bench_$(date +%Y%m%d_%H%M%S)_$$"
queue="${run_id//_/-}"
out="$target/bench/$run_id"
mkdir -p -- "$out"
api_port=$(free_port)
processor_port=$(free_port)
api_metrics_port=$(free_port)
processor_metrics_port=$(free_port)
export AWS_ENDPOINT_URL="http://127.0.0.1:$SQS_PORT"
"$bin/order-bench" create-queues --name "$queue" --sqs-endpoint "$AWS_ENDPOINT_URL" >/dev/null

pids=()
stop_services() {
    local pid i
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 150; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            info "pid $pid still running after 15 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
cleanup() {
    trap - EXIT INT TERM
    stop_services
    "$bin/order-bench" delete-queues --name "$queue" --sqs-endpoint "$AWS_ENDPOINT_URL" \
        >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# .env.example supplies everything not set here; the environment wins.
export ENV_FILE=.env.example APP_ENV=development LOG_FORMAT=json \
    MONGODB_URI="mongodb://127.0.0.1:$MONGO_PORT/?replicaSet=secantus&maxIdleTimeMS=60000" \
    MONGODB_DATABASE="$run_id" SQS_QUEUE_NAME="$queue" SQS_DLQ_NAME="$queue-dlq" \
    API_HOST=127.0.0.1 API_PORT="$api_port" PROCESSOR_HOST=127.0.0.1 \
    PROCESSOR_PORT="$processor_port" API_METRICS_ADDR="127.0.0.1:$api_metrics_port" \
    PROCESSOR_METRICS_ADDR="127.0.0.1:$processor_metrics_port" SMTP_HOST=127.0.0.1 SMTP_PORT="$SMTP_PORT" \
    LOGIN_RATE_PER_MINUTE_PER_IP=1000000 LOGIN_RATE_PER_MINUTE_PER_ACCOUNT=1000000

"$bin/order-api" >"$out/order-api.log" 2>&1 &
pids+=("$!")
api_pid=$!
"$bin/order-processor" >"$out/order-processor.log" 2>&1 &
pids+=("$!")
processor_pid=$!
info "order-api pid $api_pid on :$api_port, order-processor pid $processor_pid on :$processor_port, database $run_id, logs in $out"

wait_healthy() { # wait_healthy NAME PID URL
    local i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$2" 2>/dev/null || die "$1 exited during start-up; see $out/$1.log"
        curl -fsS -o /dev/null "$3" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1 did not answer $3 within 60 s; see $out/$1.log"
}
wait_healthy order-api "$api_pid" "http://127.0.0.1:$api_port/api/ready"
wait_healthy order-processor "$processor_pid" "http://127.0.0.1:$processor_port/processor/api/ready"

if ((smoke)); then
    defaults=(--duration 1s --ceiling-duration 1s --concurrency 4 --products 8
        --scenario spread,hot,steady,mixed --drain-timeout 60s)
else
    defaults=(--duration "${BENCH_DURATION:-20s}" --concurrency "${BENCH_CONCURRENCY:-16}"
        --scenario "${BENCH_SCENARIOS:-spread,hot,steady,mixed}")
fi
# The database's CPU per order is counted when its PID is known: this
# checkout's stack.
db_pid=()
mongo_pid=$(cat .stack/pids/mongo.pid 2>/dev/null || true)
if [[ -n $mongo_pid ]] && kill -0 "$mongo_pid" 2>/dev/null; then
    db_pid=(--db-pid "$mongo_pid")
fi
# Each service's commands to MongoDB (mongodb_commands_total), before and
# after the run: which statements the database ops per order are.
snapshot_metrics() { # snapshot_metrics WHEN
    curl -fsS "http://127.0.0.1:$api_metrics_port/metrics" >"$out/metrics-api-$1.txt" 2>/dev/null || true
    curl -fsS "http://127.0.0.1:$processor_metrics_port/metrics" >"$out/metrics-processor-$1.txt" 2>/dev/null || true
}
snapshot_metrics before
"$bin/order-bench" run --api-url "http://127.0.0.1:$api_port" \
    --mongo-uri "$MONGODB_URI" --database "$run_id" \
    --api-pid "$api_pid" --processor-pid "$processor_pid" "${db_pid[@]}" \
    --api-metrics-url "http://127.0.0.1:$api_metrics_port" \
    --processor-metrics-url "http://127.0.0.1:$processor_metrics_port" \
    --admin-email admin@example.com --admin-password 'ChangeMe123!' \
    --json "$out/results.json" "${defaults[@]}" "$@"
snapshot_metrics after

for pid in "$api_pid" "$processor_pid"; do
    kill -0 "$pid" 2>/dev/null || die "a service (pid $pid) died during the run; see $out"
done

if ((smoke)); then
    # Numbers were produced; their size is not judged here.
    jq -e '
        (.scenarios | length) == 4
        and all(.scenarios[]; .accepted > 0 and .api_latency.count > 0
            and .end_to_end_processed.count == .accepted and .unfinished == 0
            and .api_rss.peak_sampled_kib > 0 and .processor_rss.peak_sampled_kib > 0
            and ([.statements[].service] | unique) == ["order-api", "order-processor"])
        and all(.scenarios[] | select(.name == "spread" or .name == "hot"); .ceiling.committed > 0)
        and ((.scenarios[] | select(.name == "mixed") | .mixed.logins.count) > 0)
    ' "$out/results.json" >/dev/null || die "the smoke run's numbers are incomplete; see $out/results.json"
    info "smoke: the tool ran every scenario and produced every figure"
fi
