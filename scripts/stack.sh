#!/usr/bin/env bash
# Local no-Docker stack: MongoDB-compatible SecantusDB, LocalStack SQS (host
# mode) and MailDev, installed pinned into .stack/ and bound to 127.0.0.1.
# Also installs (never starts) the MailTrap-like SMTP server that tests run
# themselves.
#
# Usage: scripts/stack.sh COMMAND [SERVICE...]
#   up     [svc...]  install (first use / changed pins) and start; waits until
#                    each service really answers; already-running ones are kept
#   down   [svc...]  stop what `up` started (by recorded PID), remove pid files
#   start  svc...    same as up for the named services
#   stop   svc...    same as down for the named services (data is kept)
#   restart [svc...] down then up
#   status           one line per service; always exits 0
#   logs   svc       last 50 lines of the service's log
#   install [svc...] only install
# Services: mongo (SecantusDB, 27017), sqs (LocalStack, 4566),
#           smtp (MailDev, SMTP 1025, web/API 1080)
# Test tools (not services: nothing here starts, stops or lists them): the
#   MailTrap-like SMTP server (aiosmtpd; STARTTLS, AUTH, MailTrap's limits and
#   replies, a control API), which tests start on free ports as
#   `.stack/venv-mailtrap/bin/python scripts/stack/mailtrap_like.py`; and
#   schemathesis (.stack/venv-schemathesis), which scripts/schemathesis.sh
#   runs against the served OpenAPI document.
#   Every up/start/restart/install installs them, whichever services are named.
#
# Environment: STACK_MONGO_PORT, STACK_SQS_PORT, STACK_SMTP_PORT,
#   STACK_MAIL_WEB_PORT (ports); STACK_MONGO_TIMEOUT (60), STACK_SQS_TIMEOUT
#   (120), STACK_SMTP_TIMEOUT (30), STACK_STOP_TIMEOUT (15) in seconds;
#   STACK_PYTHON (>= 3.11, default python3; SecantusDB and the MailTrap-like
#   server), STACK_PYTHON313 (for LocalStack);
#   ORDER_QUEUE_NAME / ORDER_DLQ_NAME (queues created and checked).
#
# Layout (.stack/ is git-ignored): venv-secantus/, venv-localstack/ (also has
# bin/aws), venv-mailtrap/, venv-schemathesis/, maildev/node_modules/, logs/<svc>.log,
# logs/install-<svc|mailtrap|schemathesis>.log, pids/<svc>.pid,
# data/mongo/ (kept across restarts), localstack/ (FILESYSTEM_ROOT; LocalStack
# keeps no state: queues are recreated by localstack-init/ready.d on every
# start), tmp/maildev/ (inbox, emptied on every start).
# Each install is marked done by a .stack-installed stamp holding a hash of its
# pinned files (scripts/stack/*), written last: a changed pin or an interrupted
# install is redone from scratch on the next up/start.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR="$ROOT/.stack"
CONF_DIR="$ROOT/scripts/stack"
INIT_SRC="$ROOT/localstack-init/ready.d"
PROBE="$CONF_DIR/probe.py"

HOST=127.0.0.1
MONGO_PORT=${STACK_MONGO_PORT:-27017}
SQS_PORT=${STACK_SQS_PORT:-4566}
SMTP_PORT=${STACK_SMTP_PORT:-1025}
MAIL_WEB_PORT=${STACK_MAIL_WEB_PORT:-1080}
MONGO_TIMEOUT=${STACK_MONGO_TIMEOUT:-60}
SQS_TIMEOUT=${STACK_SQS_TIMEOUT:-120}
SMTP_TIMEOUT=${STACK_SMTP_TIMEOUT:-30}
STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-15}
QUEUE_NAME=${ORDER_QUEUE_NAME:-order-processing-queue}
DLQ_NAME=${ORDER_DLQ_NAME:-order-processing-dlq}

VENV_SECANTUS="$STACK_DIR/venv-secantus"
VENV_LOCALSTACK="$STACK_DIR/venv-localstack"
# The MailTrap-like test server: test-support/src/mailtrap.rs runs
# $VENV_MAILTRAP/bin/python $MAILTRAP_SCRIPT (keep both paths in step).
VENV_MAILTRAP="$STACK_DIR/venv-mailtrap"
MAILTRAP_SCRIPT="$CONF_DIR/mailtrap_like.py"
VENV_SCHEMATHESIS="$STACK_DIR/venv-schemathesis"
MAILDEV_DIR="$STACK_DIR/maildev"
LOG_DIR="$STACK_DIR/logs"
PID_DIR="$STACK_DIR/pids"
MONGO_DATA="$STACK_DIR/data/mongo"
MAIL_DIR="$STACK_DIR/tmp/maildev"
LOCALSTACK_ROOT="$STACK_DIR/localstack"
STAMP=.stack-installed

ALL_SERVICES=(mongo sqs smtp)

# Bump to force every install to be redone when the recipe below changes.
RECIPE_VERSION=1

info() { printf 'stack: %s\n' "$*" >&2; }
die() {
    printf 'stack: error: %s\n' "$*" >&2
    exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# ---------------------------------------------------------------- services

check_service() {
    case $1 in
        mongo | sqs | smtp) ;;
        *) die "unknown service '$1' (expected: ${ALL_SERVICES[*]})" ;;
    esac
}

# Ports a service binds (the first one is its main port).
service_ports() {
    case $1 in
        mongo) echo "$MONGO_PORT" ;;
        sqs) echo "$SQS_PORT" ;;
        smtp) echo "$SMTP_PORT $MAIL_WEB_PORT" ;;
    esac
}

port_var() { # port_var SERVICE PORT: the variable that overrides it
    case $1:$2 in
        mongo:*) echo STACK_MONGO_PORT ;;
        sqs:*) echo STACK_SQS_PORT ;;
        smtp:"$SMTP_PORT") echo STACK_SMTP_PORT ;;
        smtp:*) echo STACK_MAIL_WEB_PORT ;;
    esac
}

service_label() {
    case $1 in
        mongo) echo "SecantusDB (MongoDB) mongodb://$HOST:$MONGO_PORT/?replicaSet=secantus" ;;
        sqs) echo "LocalStack SQS http://$HOST:$SQS_PORT" ;;
        smtp) echo "MailDev smtp://$HOST:$SMTP_PORT web http://$HOST:$MAIL_WEB_PORT" ;;
    esac
}

# A process is ours only if its command line runs from our install dir, so a
# recycled PID never gets signalled.
service_marker() {
    case $1 in
        mongo) echo "$VENV_SECANTUS/" ;;
        sqs) echo "$VENV_LOCALSTACK/" ;;
        smtp) echo "$MAILDEV_DIR/" ;;
    esac
}

pid_file() { echo "$PID_DIR/$1.pid"; }
log_file() { echo "$LOG_DIR/$1.log"; }

process_alive() {
    local pid=$1 stat
    [[ -r /proc/$pid/stat ]] || return 1
    stat=$(</proc/"$pid"/stat) 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != [ZX] ]]
}

# Prints the PID of the service if it is running and was started by us.
running_pid() {
    local name=$1 pidf pid cmdline
    pidf=$(pid_file "$name")
    [[ -f $pidf ]] || return 1
    pid=$(<"$pidf")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    process_alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$(service_marker "$name")"* ]] || return 1
    echo "$pid"
}

# Listener on the port, any address (a bind to 127.0.0.1 would conflict).
port_listeners() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "sport = :$1" 2>/dev/null || true
    elif (: <"/dev/tcp/$HOST/$1") 2>/dev/null; then
        echo "something answers on $HOST:$1"
    fi
}

# ---------------------------------------------------------------- installs

file_hash() { cat -- "$@" | sha256sum | cut -d' ' -f1; }

stamp_ok() { [[ -f $1/$STAMP && "$(<"$1/$STAMP")" == "$2" ]]; }

write_stamp() {
    printf '%s\n' "$2" >"$1/$STAMP.tmp"
    mv -f -- "$1/$STAMP.tmp" "$1/$STAMP"
}

python_ok() { # python_ok PY MIN_MINOR [EXACT]
    local cond="sys.version_info[:2] >= (3, $2)"
    [[ ${3:-} == exact ]] && cond="sys.version_info[:2] == (3, $2)"
    "$1" -c "import sys; sys.exit(0 if $cond else 1)" >/dev/null 2>&1
}

find_python311() { # find_python311 [WHAT]: WHAT names who needs it in errors
    local py=${STACK_PYTHON:-python3} what=${1:-SecantusDB}
    command -v "$py" >/dev/null 2>&1 || die "$what needs Python >= 3.11: '$py' not found (set STACK_PYTHON)"
    python_ok "$py" 11 || die "$what needs Python >= 3.11: '$py' is $("$py" -V 2>&1) (set STACK_PYTHON)"
    command -v "$py"
}

find_python313() {
    local candidates=() py
    [[ -n ${STACK_PYTHON313:-} ]] && candidates+=("$STACK_PYTHON313")
    local glob
    for glob in "${HOME:-/root}"/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.13*/bin/python3; do
        [[ -x $glob ]] && candidates+=("$glob")
    done
    candidates+=(python3.13)
    for py in "${candidates[@]}"; do
        if command -v "$py" >/dev/null 2>&1 && python_ok "$py" 13 exact; then
            command -v "$py"
            return 0
        fi
    done
    die "LocalStack needs Python 3.13 (3.11/3.12 fail with misleading plugin errors) and none was found: tried ${candidates[*]}. Install it (e.g. 'pyenv install 3.13') or set STACK_PYTHON313."
}

# Each install_* prints the key ("" if up to date) or does the work.
venv_key() { # venv_key PYTHON NAME: a venv's key, from its python and pins
    local py=$1
    echo "$RECIPE_VERSION $STACK_DIR $("$py" -VV 2>&1 | head -n1) $py $(file_hash "$CONF_DIR/$2-requirements.txt")" | sha256sum | cut -d' ' -f1
}
maildev_key() {
    echo "$RECIPE_VERSION $STACK_DIR $(node --version) $(file_hash "$CONF_DIR/package.json" "$CONF_DIR/package-lock.json")" | sha256sum | cut -d' ' -f1
}

do_install_venv() { # do_install_venv DIR PYTHON KEY PIP_ARGS...
    local dir=$1 py=$2 key=$3
    shift 3
    rm -rf -- "$dir"
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install --disable-pip-version-check --no-input "$@"
    write_stamp "$dir" "$key"
}

do_install_maildev() { # do_install_maildev KEY
    rm -rf -- "$MAILDEV_DIR"
    mkdir -p -- "$MAILDEV_DIR"
    cp -- "$CONF_DIR/package.json" "$CONF_DIR/package-lock.json" "$MAILDEV_DIR/"
    npm ci --prefix "$MAILDEV_DIR" --omit=dev --no-audit --no-fund
    write_stamp "$MAILDEV_DIR" "$1"
}

# install_services SVC...: installs what is missing or outdated, in parallel;
# the test tools always (MailTrap-like server, schemathesis: no services, tests run them).
install_services() {
    local name py key log start
    local -A job=() logs=()
    start=$(now)
    for name in "$@" mailtrap schemathesis; do
        log="$LOG_DIR/install-$name.log"
        # Never rebuild an install under a running service.
        if [[ $name != mailtrap && $name != schemathesis ]] && running_pid "$name" >/dev/null; then
            info "$name: running, install left as is (stop it first to reinstall)"
            continue
        fi
        case $name in
            mongo)
                py=$(find_python311)
                key=$(venv_key "$py" secantus)
                stamp_ok "$VENV_SECANTUS" "$key" && continue
                info "installing SecantusDB into ${VENV_SECANTUS#"$ROOT"/} with $("$py" -V) (log: ${log#"$ROOT"/})"
                do_install_venv "$VENV_SECANTUS" "$py" "$key" --pre -r "$CONF_DIR/secantus-requirements.txt" >"$log" 2>&1 &
                ;;
            sqs)
                py=$(find_python313)
                key=$(venv_key "$py" localstack)
                stamp_ok "$VENV_LOCALSTACK" "$key" && continue
                info "installing LocalStack + awscli into ${VENV_LOCALSTACK#"$ROOT"/} with $("$py" -V) (log: ${log#"$ROOT"/})"
                do_install_venv "$VENV_LOCALSTACK" "$py" "$key" -r "$CONF_DIR/localstack-requirements.txt" >"$log" 2>&1 &
                ;;
            smtp)
                command -v npm >/dev/null 2>&1 || die "MailDev needs node and npm on PATH"
                key=$(maildev_key)
                stamp_ok "$MAILDEV_DIR" "$key" && continue
                info "installing MailDev into ${MAILDEV_DIR#"$ROOT"/}/node_modules (log: ${log#"$ROOT"/})"
                do_install_maildev "$key" >"$log" 2>&1 &
                ;;
            mailtrap)
                py=$(find_python311 "the MailTrap-like test SMTP server")
                key=$(venv_key "$py" mailtrap)
                stamp_ok "$VENV_MAILTRAP" "$key" && continue
                info "installing the MailTrap-like test SMTP server (aiosmtpd, for ${MAILTRAP_SCRIPT#"$ROOT"/}) into ${VENV_MAILTRAP#"$ROOT"/} with $("$py" -V) (log: ${log#"$ROOT"/})"
                do_install_venv "$VENV_MAILTRAP" "$py" "$key" -r "$CONF_DIR/mailtrap-requirements.txt" >"$log" 2>&1 &
                ;;
            schemathesis)
                py=$(find_python311 "schemathesis")
                key=$(venv_key "$py" schemathesis)
                stamp_ok "$VENV_SCHEMATHESIS" "$key" && continue
                info "installing schemathesis into ${VENV_SCHEMATHESIS#"$ROOT"/} with $("$py" -V) (log: ${log#"$ROOT"/})"
                do_install_venv "$VENV_SCHEMATHESIS" "$py" "$key" -r "$CONF_DIR/schemathesis-requirements.txt" >"$log" 2>&1 &
                ;;
        esac
        job[$name]=$!
        logs[$name]=$log
    done
    local failed=0
    for name in "${!job[@]}"; do
        if ! wait "${job[$name]}"; then
            printf 'stack: error: installing %s failed; last lines of %s:\n' "$name" "${logs[$name]}" >&2
            tail -n 20 -- "${logs[$name]}" | sed 's/^/    /' >&2
            failed=1
        fi
    done
    ((failed == 0)) || exit 1
    ((${#job[@]} == 0)) || info "installs done in $(elapsed "$start")"
}

# ---------------------------------------------------------------- start

# spawn NAME CMD...: runs CMD in its own session (so it survives the caller's
# terminal and can be signalled as a group), logs to .stack/logs/NAME.log.
spawn() {
    local name=$1 log pidf pid
    shift
    log=$(log_file "$name")
    pidf=$(pid_file "$name")
    [[ -f $log ]] && mv -f -- "$log" "$log.1"
    printf '==== %s: %s\n' "$(date '+%F %T')" "$*" >"$log"
    # fd 9 is the stack lock: the daemon must not keep holding it.
    setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$pidf"
    echo "$pid"
}

prepare_localstack_init() {
    local dir="$LOCALSTACK_ROOT/etc/localstack/init/ready.d" f
    rm -rf -- "$dir"
    mkdir -p -- "$dir"
    for f in "$INIT_SRC"/*; do
        [[ -f $f ]] || continue
        cp -p -- "$f" "$dir/"
        chmod +x -- "$dir/${f##*/}"
    done
}

launch() {
    local name=$1
    case $name in
        mongo)
            mkdir -p -- "$MONGO_DATA"
            # An explicit (empty) config so no stray secantusd.toml is picked up;
            # SecantusDB 0.7 rejects --config /dev/null (not a regular file).
            printf '# Empty on purpose: settings are passed as flags by scripts/stack.sh.\n' \
                >"$STACK_DIR/secantusd.toml"
            spawn mongo "$VENV_SECANTUS/bin/secantusd-py" --config "$STACK_DIR/secantusd.toml" \
                --host "$HOST" --port "$MONGO_PORT" --storage-path "$MONGO_DATA" \
                --enable-test-commands
            ;;
        sqs)
            mkdir -p -- "$LOCALSTACK_ROOT"
            prepare_localstack_init
            spawn sqs env \
                OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$LOCALSTACK_ROOT" SERVICES=sqs \
                EAGER_SERVICE_LOADING=1 GATEWAY_LISTEN="$HOST:$SQS_PORT" DNS_ADDRESS=0 \
                DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 SQS_ENDPOINT_STRATEGY=path \
                LOCALSTACK_HOST="$HOST:$SQS_PORT" \
                PATH="$VENV_LOCALSTACK/bin:$PATH" \
                AWS_ENDPOINT_URL="http://$HOST:$SQS_PORT" AWS_DEFAULT_REGION=us-east-1 \
                AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
                ORDER_QUEUE_NAME="$QUEUE_NAME" ORDER_DLQ_NAME="$DLQ_NAME" \
                "$VENV_LOCALSTACK/bin/python" "$CONF_DIR/localstack_host.py"
            ;;
        smtp)
            # The inbox is throwaway like LocalStack's queues: empty on every start.
            rm -rf -- "$MAIL_DIR"
            mkdir -p -- "$MAIL_DIR"
            spawn smtp "$MAILDEV_DIR/node_modules/.bin/maildev" \
                --ip "$HOST" --smtp "$SMTP_PORT" \
                --web-ip "$HOST" --web "$MAIL_WEB_PORT" \
                --mail-directory "$MAIL_DIR"
            ;;
    esac
}

run_queue_script() {
    env PATH="$VENV_LOCALSTACK/bin:$PATH" AWS_ENDPOINT_URL="http://$HOST:$SQS_PORT" \
        AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
        ORDER_QUEUE_NAME="$QUEUE_NAME" ORDER_DLQ_NAME="$DLQ_NAME" \
        "$INIT_SRC/01-create-queues.sh"
}

# wait_ready NAME PID: 0 when answering; prints why not otherwise.
wait_ready() {
    local name=$1 pid=$2 py
    case $name in
        mongo)
            "$VENV_SECANTUS/bin/python" "$PROBE" mongo "$HOST" "$MONGO_PORT" \
                --pid "$pid" --timeout "$MONGO_TIMEOUT"
            ;;
        sqs)
            py="$VENV_LOCALSTACK/bin/python"
            "$py" "$PROBE" sqs "$HOST" "$SQS_PORT" --pid "$pid" --timeout "$SQS_TIMEOUT" || return 1
            if ! "$py" "$PROBE" sqs-queues "$HOST" "$SQS_PORT" "$DLQ_NAME" "$QUEUE_NAME" 2>/dev/null; then
                info "sqs: queues missing after the ready.d hooks ran; hook states:"
                "$py" "$PROBE" sqs-init "$HOST" "$SQS_PORT" || true
                info "sqs: running localstack-init/ready.d/01-create-queues.sh directly"
                run_queue_script || return 1
                "$py" "$PROBE" sqs-queues "$HOST" "$SQS_PORT" "$DLQ_NAME" "$QUEUE_NAME" || return 1
            fi
            ;;
        smtp)
            "$VENV_PROBE_PY" "$PROBE" http "http://$HOST:$MAIL_WEB_PORT/email" \
                --pid "$pid" --timeout "$SMTP_TIMEOUT"
            ;;
    esac
}

service_timeout() {
    case $1 in
        mongo) echo "$MONGO_TIMEOUT" ;;
        sqs) echo "$SQS_TIMEOUT" ;;
        smtp) echo "$SMTP_TIMEOUT" ;;
    esac
}

cmd_up() {
    local name pid port listeners start
    local -a to_start=() problems=()
    local -A pids=() fresh=() waits=()
    start=$(now)
    for name in "$@"; do
        if pid=$(running_pid "$name"); then
            pids[$name]=$pid
            continue
        fi
        if [[ -f $(pid_file "$name") ]]; then
            info "$name: removing stale pid file (pid $(<"$(pid_file "$name")") is not running or not ours)"
            rm -f -- "$(pid_file "$name")"
        fi
        for port in $(service_ports "$name"); do
            listeners=$(port_listeners "$port")
            if [[ -n $listeners ]]; then
                problems+=("$name: port $HOST:$port is already in use by a process NOT started by scripts/stack.sh; stop it or set $(port_var "$name" "$port") (left untouched):
    ${listeners//$'\n'/$'\n    '}")
            fi
        done
        to_start+=("$name")
    done
    if ((${#problems[@]})); then
        printf 'stack: error: %s\n' "${problems[@]}" >&2
        exit 1
    fi

    # Also with nothing to start: the test server's install is checked on every up.
    install_services "${to_start[@]}"
    if ((${#to_start[@]})); then
        for name in "${to_start[@]}"; do
            pids[$name]=$(launch "$name")
            fresh[$name]=1
            info "$name: started (pid ${pids[$name]}), waiting for it to answer (timeout $(service_timeout "$name")s)"
        done
    fi

    # Wait for every service in parallel; an already-running one must answer too.
    for name in "$@"; do
        wait_ready "$name" "${pids[$name]}" >"$LOG_DIR/.probe-$name" 2>&1 &
        waits[$name]=$!
    done
    local failed=0 log
    for name in "$@"; do
        if wait "${waits[$name]}"; then
            sed 's/^/    /' "$LOG_DIR/.probe-$name" >&2
            if [[ -n ${fresh[$name]:-} ]]; then
                info "$name: ready (pid ${pids[$name]}) - $(service_label "$name")"
            else
                info "$name: already running (pid ${pids[$name]}) - $(service_label "$name")"
            fi
        else
            log=$(log_file "$name")
            printf 'stack: error: %s did not become ready (%s); last 20 lines of %s:\n' \
                "$name" "$(tail -n 3 "$LOG_DIR/.probe-$name" | tr '\n' ' ')" "$log" >&2
            tail -n 20 -- "$log" | sed 's/^/    /' >&2
            failed=1
            if [[ -n ${fresh[$name]:-} ]]; then
                stop_services "$name" >/dev/null 2>&1 || true
            fi
        fi
        rm -f -- "$LOG_DIR/.probe-$name"
    done
    ((failed == 0)) || exit 1
    info "up in $(elapsed "$start")"
}

# ---------------------------------------------------------------- stop

signal_service() { # signal_service SIG PID: the whole group if it leads one
    local sig=$1 pid=$2 pgid
    pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') || true
    if [[ $pgid == "$pid" ]]; then
        kill "-$sig" -- "-$pid" 2>/dev/null || true
    else
        kill "-$sig" "$pid" 2>/dev/null || true
    fi
}

stop_services() {
    local name pid deadline i
    local -A pids=()
    for name in "$@"; do
        if pid=$(running_pid "$name"); then
            pids[$name]=$pid
            signal_service TERM "$pid"
            info "$name: stopping (pid $pid)"
        elif [[ -f $(pid_file "$name") ]]; then
            info "$name: not running (removed stale pid file)"
            rm -f -- "$(pid_file "$name")"
        else
            info "$name: not running"
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    for name in "${!pids[@]}"; do
        pid=${pids[$name]}
        while process_alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if process_alive "$pid"; then
            info "$name: still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            signal_service KILL "$pid"
            for ((i = 0; i < 25; i++)); do
                process_alive "$pid" || break
                sleep 0.2
            done
        fi
        # Leftover children of the service's process group, if any.
        kill -KILL -- "-$pid" 2>/dev/null || true
        if process_alive "$pid"; then
            die "$name: pid $pid did not exit"
        fi
        # Give init a moment to reap it, so `ps -p PID` right after shows nothing.
        for ((i = 0; i < 20; i++)); do
            [[ -e /proc/$pid ]] || break
            sleep 0.1
        done
        rm -f -- "$(pid_file "$name")"
        info "$name: stopped"
    done
}

# ---------------------------------------------------------------- status

cmd_status() {
    local name pid port ports note listeners
    for name in "${ALL_SERVICES[@]}"; do
        ports=$(service_ports "$name")
        if pid=$(running_pid "$name"); then
            note=""
            for port in $ports; do
                [[ -n $(port_listeners "$port") ]] || note=" (port $port not listening yet)"
            done
            printf '%-6s running  pid %-7s %s:%s%s\n' "$name" "$pid" "$HOST" "${ports// /,}" "$note"
        else
            note=""
            [[ -f $(pid_file "$name") ]] && note=" (stale pid file)"
            for port in $ports; do
                listeners=$(port_listeners "$port")
                [[ -z $listeners ]] || note+=" (port $port in use by another process)"
            done
            printf '%-6s stopped%s\n' "$name" "$note"
        fi
    done
}

# ---------------------------------------------------------------- main

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || {
        usage >&2
        exit 2
    }
    shift
    local -a services=("$@")
    local s
    for s in "${services[@]}"; do check_service "$s"; done
    case $cmd in
        up | down | restart | install) ((${#services[@]})) || services=("${ALL_SERVICES[@]}") ;;
        start | stop | logs) ((${#services[@]})) || die "$cmd needs a service: ${ALL_SERVICES[*]}" ;;
        status) ;;
        -h | --help | help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac

    mkdir -p -- "$STACK_DIR" "$LOG_DIR" "$PID_DIR"
    VENV_PROBE_PY=$(command -v python3 || true)
    [[ -n $VENV_PROBE_PY ]] || die "python3 not found on PATH"

    case $cmd in
        status)
            cmd_status
            return 0
            ;;
        logs)
            for s in "${services[@]}"; do
                printf '==> %s <==\n' "$(log_file "$s")"
                tail -n 50 -- "$(log_file "$s")" 2>/dev/null || echo "(no log yet)"
            done
            return 0
            ;;
    esac

    # One stack.sh at a time changes the stack (installs, starts, stops).
    exec 9>"$STACK_DIR/.lock"
    if ! flock -n 9; then
        info "waiting for another scripts/stack.sh to finish"
        flock -w 900 9 || die "timed out waiting for the lock $STACK_DIR/.lock"
    fi

    case $cmd in
        up | start) cmd_up "${services[@]}" ;;
        down | stop) stop_services "${services[@]}" ;;
        restart)
            stop_services "${services[@]}"
            cmd_up "${services[@]}"
            ;;
        install) install_services "${services[@]}" ;;
    esac
}

main "$@"
