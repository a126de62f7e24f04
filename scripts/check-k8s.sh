#!/usr/bin/env bash
# Checks deploy/k8s offline, without a cluster (called by `make test`):
#   * the base and every overlay render with `kubectl kustomize`;
#   * every rendered resource validates, strictly (no unknown fields), against
#     the Kubernetes schemas of K8S_VERSION (kubernetes-validate bundles them);
#   * KEDA's resources validate against the CRD schemas kept in
#     deploy/k8s/schemas/ (their source is named in its README);
#   * the rules in scripts/k8s/check_manifests.py: probes, limits, non-root,
#     grace periods against the services' drain, no AWS keys, the metrics
#     port reachable by the scraper only.
# The settings' names are checked by test-support/tests/deployment_settings.rs.
#
# Installs its tools into .stack/venv-k8s from scripts/stack/k8s-requirements.txt
# (pinned) the first time, and again when the pins change.
#
# Usage: scripts/check-k8s.sh [DIR...]   (default: deploy/k8s/base and
#        every deploy/k8s/overlays/*)
# Env:   K8S_VERSION (default 1.32.0), CHECK_K8S_PYTHON (default python3)
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.32.0}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$repo_root/scripts/stack/k8s-requirements.txt"
venv="$repo_root/.stack/venv-k8s"
python="${CHECK_K8S_PYTHON:-python3}"

fail() {
    printf 'check-k8s: FAILED: %s\n' "$*" >&2
    exit 1
}
say() { printf 'check-k8s: %s\n' "$*"; }

command -v kubectl >/dev/null 2>&1 || fail "kubectl is not on PATH (the machine image ships 1.32 with kustomize 5.5)"
command -v "$python" >/dev/null 2>&1 || fail "$python not found (set CHECK_K8S_PYTHON)"

key="$("$python" -VV 2>&1 | head -n1) $(sha256sum <"$requirements" | cut -d' ' -f1)"
if [[ ! -f $venv/.installed || "$(<"$venv/.installed")" != "$key" ]]; then
    say "installing kubernetes-validate and jsonschema into ${venv#"$repo_root"/}"
    rm -rf -- "$venv"
    mkdir -p -- "$(dirname "$venv")"
    log="$(mktemp)"
    if ! { "$python" -m venv "$venv" &&
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
            -r "$requirements"; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f -- "$log"
        fail "installing $requirements failed (see above)"
    fi
    rm -f -- "$log"
    printf '%s\n' "$key" >"$venv/.installed"
fi

dirs=("$@")
if ((${#dirs[@]} == 0)); then
    dirs=(deploy/k8s/base)
    for overlay in "$repo_root"/deploy/k8s/overlays/*/; do
        dirs+=("deploy/k8s/overlays/$(basename "$overlay")")
    done
fi

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT
rendered=()
for dir in "${dirs[@]}"; do
    out="$work_dir/$(printf '%s' "$dir" | tr '/' '_').yaml"
    kubectl kustomize "$repo_root/$dir" >"$out" 2>"$work_dir/err" || {
        cat "$work_dir/err" >&2
        fail "kubectl kustomize $dir failed (see above)"
    }
    rendered+=("$dir=$out")
done

"$venv/bin/python" "$repo_root/scripts/k8s/check_manifests.py" \
    --kubernetes-version "$K8S_VERSION" \
    --crds "$repo_root/deploy/k8s/schemas" \
    "${rendered[@]}" || fail "the manifests do not pass the checks above"
say "OK: ${dirs[*]} valid for Kubernetes $K8S_VERSION and KEDA's CRDs"
