#!/usr/bin/env bash
# `make lint`: the build without tests (`cargo build --workspace`) and the
# build with them (`cargo test --workspace`) must resolve every dependency
# with the same features, or each command compiles the shared dependencies
# again. A dev-dependency that adds a crate or a feature the normal graph
# lacks breaks that: name it in test-support/Cargo.toml too.
set -euo pipefail
cd "$(dirname "$0")/.."
features() { cargo tree --workspace --prefix none -f '{p} {f}' -e "$1" | sed 's/ (\*)$//' | sort -u; }
if ! diff <(features normal,build) <(features normal,build,dev) >&2; then
    echo "check-features: the dev-dependencies change the feature set above ('<' without them, '>' with); add them to test-support/Cargo.toml" >&2
    exit 1
fi
echo "check-features: one feature set for test and non-test builds"
