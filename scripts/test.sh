#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests of the whole
# workspace (the host, the SDK and every module, natively and as components),
# the lab's on a real Kubernetes control plane. Installs and builds what is
# missing first. CI runs exactly this (.ci/run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=setup.sh
source "$here/scripts/setup.sh"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

say "cargo fmt --check"
cargo fmt --all -- --check
say "the console's built assets match its TypeScript (web/dist)"
(cd web && npm ci --no-audit --no-fund --loglevel=error && npx tsc -p tsconfig.json)
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- web/dist; then
  git diff --stat -- web/dist >&2
  echo "error: web/dist is stale: run (cd web && npm ci && npx tsc -p .) and commit web/dist" >&2
  exit 1
fi
say "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "cargo test"
cargo test --workspace --locked
say "all tests passed"
