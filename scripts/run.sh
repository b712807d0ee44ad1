#!/usr/bin/env bash
# The main job: the local lab with the console. Builds the agent, the CNI
# plugin and the modules (and, the first time, the Kubernetes control plane),
# then brings up a 3-node lab (flat model, IPv4 by default) on a real control
# plane with the example manifests in deploy/lab/, and prints the kubeconfig
# and where the console is. Arguments go to `switchyard lab up`, e.g.
#   ./scripts/run.sh --model overlay --ip-family dual --nodes 4
# If a lab is already up, it shows that lab instead of building another.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=setup.sh
source "$here/scripts/setup.sh"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "error: the lab makes network namespaces, links and nftables tables: run this as root" >&2
  exit 1
fi

say "building the agent, the CNI plugin and the modules"
cargo build --locked -p switchyard -p switchyard-cni
bin="$CARGO_TARGET_DIR/debug/switchyard"
dir="${SWITCHYARD_LAB_DIR:-/var/lib/switchyard-lab}"

if [ -f "$dir/lab.json" ]; then
  say "a lab is already up in $dir; here it is (take it down with: $bin lab down)"
  "$bin" lab --dir "$dir" status
  exit 0
fi

say "$bin lab up -f deploy/lab/ $*"
"$bin" lab --dir "$dir" up -f "$here/deploy/lab" "$@"
"$bin" lab --dir "$dir" status
cat >&2 <<EOF

Try:
  export KUBECONFIG=$dir/kubeconfig
  kubectl get nodes,pods -A -o wide                 # kubectl $SWITCHYARD_K8S_BIN/kubectl works too
  $bin lab matrix                                   # who reaches whom (TCP/80)
  $bin lab probe --from x/a --to external --port 80 -v
  $bin lab exec x/a -- ip addr                      # inside a pod's network namespace
  kubectl apply -f my-pods.yaml                     # or: $bin lab apply -f my-pods.yaml
  $bin lab down                                     # remove everything the lab made
EOF
