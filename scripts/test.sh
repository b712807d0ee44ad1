#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests of the whole
# workspace (the host, the SDK and every module, natively and as components).
# Installs what is missing first. CI runs exactly this (.ci/run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
"$here/scripts/setup.sh"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "cargo test"
cargo test --workspace --locked
say "all tests passed"
