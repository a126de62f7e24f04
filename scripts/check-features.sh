#!/usr/bin/env bash
# `make lint`: the build without tests (`cargo build --workspace`) and the
# build with them (`cargo test --workspace`) must resolve every dependency
# with the same features, or each command compiles the shared dependencies
# again. A dev-dependency that adds a crate or a feature the normal graph
# lacks breaks that: name it in test-support/Cargo.toml too.
set -euo pipefail
cd "$(dirname "$0")/.."
features() { cargo tree --workspace --prefix none -f '{p} {f}' -e "$1" | sed 's/ (\*)$//' | sort -u; }
# What the test build resolves that the non-test build does not: a crate,
# or a crate with other features. (The reverse, a line only without the
# dev-dependencies, is cargo tree showing a build script's host copy apart
# that the dev graph shows merged, e.g. utoipa-swagger-ui's build-time
# `regex`: `cargo build -v` and `cargo test --no-run -v` both compile one
# regex-automata. It adds no compile.)
added=$(comm -13 <(features normal,build) <(features normal,build,dev))
if [ -n "$added" ]; then
    echo "$added" >&2
    echo "check-features: the dev-dependencies add the crates or features above; add them to test-support/Cargo.toml" >&2
    exit 1
fi
echo "check-features: one feature set for test and non-test builds"
