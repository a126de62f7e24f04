#!/usr/bin/env bash
# Validates the Docker route without a Docker engine (none runs on the
# project's machines):
#   * docker-compose.yml parses and is accepted by docker-compose's schema;
#   * every service declares a healthcheck (dependants wait on them);
#   * every Dockerfile a service builds from exists.
#
# Installs Debian's docker-compose (pinned) when it is missing: that needs root
# and apt-get, and the script fails with a message saying so otherwise.
#
# Usage: scripts/check-compose.sh            (called by `make test`)
# Env:   DOCKER_COMPOSE_APT_VERSION  Debian version to install (default below)
set -euo pipefail

# What `apt-cache policy docker-compose` offers on bookworm.
DOCKER_COMPOSE_APT_VERSION="${DOCKER_COMPOSE_APT_VERSION:-1.29.2-3}"
REQUIRED_DOCKERFILES=(order-api/Dockerfile order-processor/Dockerfile)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
compose_file="$repo_root/docker-compose.yml"

fail() {
    printf 'check-compose: FAILED: %s\n' "$*" >&2
    exit 1
}
say() { printf 'check-compose: %s\n' "$*"; }

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

apt_candidate() {
    apt-cache policy docker-compose 2>/dev/null | awk '/Candidate:/ { print $2 }'
}

install_docker_compose() {
    local pkg="docker-compose=$DOCKER_COMPOSE_APT_VERSION" log="$work_dir/apt.log"
    if [ "$(id -u)" -ne 0 ]; then
        fail "docker-compose is not installed and this is not root; install it with: sudo apt-get install -y $pkg"
    fi
    command -v apt-get >/dev/null 2>&1 ||
        fail "docker-compose is not installed and apt-get is not available; install docker-compose $DOCKER_COMPOSE_APT_VERSION by other means"

    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            -o DPkg::Lock::Timeout=300 --no-install-recommends "$pkg" >>"$log" 2>&1
    }

    say "installing $pkg"
    if ! apt_install; then
        # A fresh machine has empty package lists ("Unable to locate package");
        # stale ones may no longer offer the pinned version. Refresh once.
        local candidate
        candidate="$(apt_candidate)"
        if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] &&
            [ "$candidate" = "$DOCKER_COMPOSE_APT_VERSION" ]; then
            tail -n 20 "$log" >&2
            fail "apt-get install $pkg failed although the package lists offer it (see above)"
        fi
        say "package lists do not offer $pkg (candidate: ${candidate:-none}); running apt-get update"
        apt-get update -q >>"$log" 2>&1 || {
            tail -n 20 "$log" >&2
            fail "apt-get update failed (see above)"
        }
        if ! apt_install; then
            tail -n 20 "$log" >&2
            fail "apt-get install $pkg failed (apt-cache policy candidate: $(apt_candidate)); see above"
        fi
    fi
    command -v docker-compose >/dev/null 2>&1 ||
        fail "installed $pkg but docker-compose is still not on PATH"
}

[ -f "$compose_file" ] || fail "$compose_file not found"

if ! command -v docker-compose >/dev/null 2>&1; then
    install_docker_compose
fi
say "using $(docker-compose version --short 2>/dev/null || docker-compose version | head -n 1)"

# An empty env file: the check must not depend on a developer's .env.
: >"$work_dir/empty.env"
compose=(docker-compose --project-directory "$repo_root" --env-file "$work_dir/empty.env"
    -f "$compose_file")

if ! "${compose[@]}" config -q 2>"$work_dir/config.err"; then
    cat "$work_dir/config.err" >&2
    fail "docker-compose config rejected docker-compose.yml (see above)"
fi
"${compose[@]}" config >"$work_dir/resolved.yml" 2>"$work_dir/config.err" || {
    cat "$work_dir/config.err" >&2
    fail "docker-compose config could not render docker-compose.yml"
}

for dockerfile in "${REQUIRED_DOCKERFILES[@]}"; do
    [ -f "$repo_root/$dockerfile" ] || fail "$dockerfile is missing"
done

# Debian's docker-compose depends on python3-yaml, which belongs to the
# system Python; a pyenv or venv python3 earlier on PATH may lack it.
python=""
for candidate in /usr/bin/python3 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
[ -n "$python" ] || fail "no python3 with PyYAML found (apt-get install python3-yaml)"

REPO_ROOT="$repo_root" "$python" - "$work_dir/resolved.yml" <<'PY' || fail "docker-compose.yml does not meet the checks above"
import os
import sys

import yaml

with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)

services = config.get("services") or {}
problems = []
if not services:
    problems.append("no services defined")

for name, service in sorted(services.items()):
    check = service.get("healthcheck")
    if not check or check.get("disable") or check.get("test") in (None, [], ["NONE"], "NONE"):
        problems.append(f"service '{name}' has no healthcheck")

    build = service.get("build")
    if build:
        if isinstance(build, str):
            build = {"context": build}
        context = build.get("context", ".")
        dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            problems.append(f"service '{name}' builds from {dockerfile}, which does not exist")

    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        depends_on = {dependency: {} for dependency in depends_on}
    for dependency, options in depends_on.items():
        if isinstance(options, dict) and options.get("condition") == "service_healthy":
            if not (services.get(dependency) or {}).get("healthcheck"):
                problems.append(
                    f"service '{name}' waits for '{dependency}' to be healthy, "
                    "but it has no healthcheck"
                )

# Files the containers mount from the repository must exist.
for name, service in sorted(services.items()):
    for volume in service.get("volumes") or []:
        source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
        kind = volume.get("type") if isinstance(volume, dict) else "bind"
        is_path = source.startswith(("/", "."))
        if kind == "bind" and is_path and not os.path.exists(source):
            problems.append(f"service '{name}' mounts {source}, which does not exist")

# Prometheus must scrape the services where their metrics listen: the
# listener of its own (API_METRICS_ADDR, PROCESSOR_METRICS_ADDR), bound
# where the compose network reaches it, not loopback.
listening = {}
for name, service in services.items():
    env = service.get("environment") or {}
    if not isinstance(env, dict):
        continue
    address = env.get("API_METRICS_ADDR") or env.get("PROCESSOR_METRICS_ADDR")
    if address is None:
        if env.get("API_PORT") or env.get("PROCESSOR_PORT"):
            problems.append(f"service '{name}' sets no metrics address: its /metrics listens on loopback only")
        continue
    host, _, port = str(address).rpartition(":")
    if host.startswith("127.") or host in ("localhost", "[::1]"):
        problems.append(f"service '{name}' binds its metrics to {address}: Prometheus cannot reach it")
    listening[name] = port
prometheus_file = os.path.join(os.environ["REPO_ROOT"], "observability", "prometheus.yml")
if "prometheus" in services:
    with open(prometheus_file) as f:
        scrape = yaml.safe_load(f) or {}
    targets = [
        target
        for job in scrape.get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    ]
    for target in targets:
        host, _, port = target.partition(":")
        if listening.get(host) != port:
            problems.append(
                f"observability/prometheus.yml scrapes {target}, but {host} listens on "
                f"{listening.get(host, 'nothing')}"
            )
    for name in listening:
        if not any(t.startswith(f"{name}:") for t in targets):
            problems.append(f"observability/prometheus.yml does not scrape {name}")

for problem in problems:
    print(f"check-compose: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"check-compose: {len(services)} services, each with a healthcheck: "
      + ", ".join(sorted(services)))
PY

say "OK: docker-compose.yml is valid"
