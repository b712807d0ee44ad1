#!/usr/bin/env bash
# Installs what building and testing Switchyard needs, if it is missing:
# Debian packages, the pinned Rust toolchain with the wasm32-wasip2 target,
# and the lab's Kubernetes control plane (built from the Go modules pinned in
# host/controlplane by scripts/controlplane.sh). Safe to run again; it only
# installs or builds what is absent. Sourced by run.sh and test.sh, which get
# its exports: build caches live outside the clone, so CI and every clone on
# a machine reuse them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages the build, the tests and the lab use: iproute2 and
# nftables for the datapath and the lab, the reference CNI plugins as a peer
# (the libcni test's driver builds against the libcni pinned in
# host/tests/libcni/go.mod, fetched below), chromium for the console test,
# docker-registry (the CNCF distribution) as the OCI registry of
# host/tests/oci.rs and image.rs, debootstrap and jq for the agent's image
# (deploy/image/build.sh), dnsmasq as the lab's upstream DNS server on its
# external host and the DNS tests' upstream (dnsmasq-base: the program
# without the service that would serve the machine itself), dig
# (bind9-dnsutils) for the DNS tests, dnsperf for the DNS benchmark (its
# peer unbound is not installed here: its package may start a service).
PACKAGES=(gcc ca-certificates curl iproute2 iputils-ping iptables nftables conntrack containernetworking-plugins chromium docker-registry debootstrap jq dnsmasq-base bind9-dnsutils dnsperf)
# Node.js and npm build the console (web/); a machine may have its own.
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)
# kubectl (kubernetes-client) renders deploy/'s kustomization (host/tests/manifests.rs);
# a machine may have its own (another package's /usr/bin/kubectl would conflict).
command -v kubectl >/dev/null 2>&1 || PACKAGES+=(kubernetes-client)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} must be installed and this is not root; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Build caches outside the clone: cargo's target directory and Go's module and
# build caches (Go keeps its own in $HOME by default).
export SWITCHYARD_CACHE="${SWITCHYARD_CACHE:-/var/cache/switchyard}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SWITCHYARD_CACHE/target}"
mkdir -p "$SWITCHYARD_CACHE"
# The machine's Go (1.26 or later) first on the PATH: Debian's golang-go,
# if something installed it, is Go 1.19.
if [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi

# The libcni test's driver (host/tests/libcni): libcni v1.3.0 (it has GC and
# STATUS; Debian's 1.1 has neither) and what it needs, as go.mod and go.sum
# pin them, into Go's module cache. Only the first run on a machine fetches.
if [ -x /usr/local/go/bin/go ]; then
  (cd "$here/host/tests/libcni" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly /usr/local/go/bin/go mod download) ||
    { echo "error: fetching the libcni driver's Go modules failed (is the Go module proxy reachable? GOPROXY=$(/usr/local/go/bin/go env GOPROXY))" >&2; exit 1; }
fi

if ! command -v rustup >/dev/null 2>&1; then
  echo "error: rustup is required (https://rustup.rs); it installs the toolchain pinned in rust-toolchain.toml" >&2
  exit 1
fi
toolchain="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
if ! rustup toolchain list | grep -q "^${toolchain}"; then
  say "installing Rust ${toolchain}"
  rustup toolchain install "${toolchain}" --profile minimal --component rustfmt,clippy
fi
for c in rustfmt clippy; do
  rustup component list --toolchain "${toolchain}" --installed | grep -q "^${c}" || rustup component add --toolchain "${toolchain}" "${c}"
done
if ! rustup target list --toolchain "${toolchain}" --installed | grep -qx wasm32-wasip2; then
  say "adding the wasm32-wasip2 target"
  rustup target add --toolchain "${toolchain}" wasm32-wasip2
fi

# The lab's control plane (about 10 minutes the first time on 2 cores).
SWITCHYARD_K8S_BIN="$("$here/scripts/controlplane.sh")"
export SWITCHYARD_K8S_BIN
