#!/usr/bin/env bash
# The main job. Until the lab exists (see the issues), the most useful thing
# Switchyard does on one machine is load its modules: this builds the agent
# and every module, then inspects each one and validates it against its role,
# exactly as the agent does before it binds a NetworkModule.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
"$here/scripts/setup.sh"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

say "building the agent and the modules"
cargo build --release --locked -p switchyard
target="${CARGO_TARGET_DIR:-$here/target}"
bin="$target/release/switchyard"
modules="$target/wasm-modules/wasm32-wasip2/wasm"

for m in proxy_nftables:service-proxy example_scheduler:scheduler; do
  file="$modules/${m%%:*}.wasm"
  role="${m##*:}"
  say "switchyard module inspect $file"
  "$bin" module inspect "$file"
  say "switchyard module validate $file --role $role"
  "$bin" module validate "$file" --role "$role"
done
say "the hostile test modules are refused or contained; see host/tests/hostile.rs"
