#!/usr/bin/env bash
# Builds the lab's Kubernetes control plane from the Go modules pinned in
# host/controlplane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy and kubectl), unless it is built already.
#
# The programs go to a cache outside the clone, keyed by the pins:
#   ${SWITCHYARD_CACHE:-/var/cache/switchyard}/controlplane/<kubernetes version>-<key>/bin
# where <key> is a hash of host/controlplane/go.mod and go.sum, which the
# `switchyard` binary computes the same way (host/build.rs), so `lab up` finds
# them. Only the first run on a machine pays (about 10 minutes on 2 cores);
# Go's module and build caches stay in their usual places, outside the clone.
#
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$here/host/controlplane"
cache="${SWITCHYARD_CACHE:-/var/cache/switchyard}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# The machine's Go (1.26 or later), never an older one first on the PATH
# (Debian's golang-go is 1.19).
for g in /usr/local/go/bin/go "$(command -v go 2>/dev/null || true)"; do
  [ -n "$g" ] && [ -x "$g" ] || continue
  v="$("$g" env GOVERSION 2>/dev/null || true)"
  minor="$(printf '%s' "$v" | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  if [ -n "$minor" ] && [ "$minor" -ge 26 ]; then
    GO="$g"
    break
  fi
done
[ -n "${GO:-}" ] || fail "building the control plane needs Go 1.26 or later (found: $(go version 2>/dev/null || echo none)); install it in /usr/local/go"

k8s="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")"
etcd="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")"
[ -n "$k8s" ] && [ -n "$etcd" ] || fail "$mod/go.mod does not pin k8s.io/kubernetes and go.etcd.io/etcd/server/v3"
key="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
out="$cache/controlplane/$k8s-$key"

if [ -f "$out/bin/.complete" ]; then
  printf '%s\n' "$out/bin"
  exit 0
fi

mkdir -p "$cache/controlplane"
# One build at a time (a test run and `run.sh` may start together).
exec 9>"$cache/controlplane/.lock"
flock 9
if [ -f "$out/bin/.complete" ]; then
  printf '%s\n' "$out/bin"
  exit 0
fi

say "building the control plane: Kubernetes $k8s and etcd $etcd with $("$GO" env GOVERSION) (first time on this machine; about 10 minutes on 2 cores)"
cd "$mod"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
say "downloading Go modules"
"$GO" mod download 2>&1 | sed 's/^/    /' >&2 || fail "downloading the modules of $mod failed (is the Go module proxy reachable? GOPROXY=$("$GO" env GOPROXY))"

# Kubernetes' version stamps, as its own build sets them (kubectl version,
# the API server's /version, skew checks).
minor="$(printf '%s' "$k8s" | cut -d. -f2)"
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  ldflags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
done

tmp="$out.partial"
rm -rf "$tmp"
mkdir -p "$tmp/bin"
# name:package, the biggest first: it compiles most of what the others share.
programs=(
  kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver
  kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager
  kube-scheduler:k8s.io/kubernetes/cmd/kube-scheduler
  kube-proxy:k8s.io/kubernetes/cmd/kube-proxy
  kubectl:k8s.io/kubernetes/cmd/kubectl
  etcd:go.etcd.io/etcd/server/v3
)
n=0
for entry in "${programs[@]}"; do
  n=$((n + 1))
  name="${entry%%:*}"
  pkg="${entry#*:}"
  total="$("$GO" list -deps "$pkg" | wc -l)"
  say "[$n/${#programs[@]}] $name ($pkg, $total packages at most)"
  started=$SECONDS
  # -v names every package as it is compiled (cached ones are not): a count
  # every 100 shows how far it is.
  log="$tmp/$name.log"
  set +o pipefail
  "$GO" build -v -trimpath -ldflags "$ldflags" -o "$tmp/bin/$name" "$pkg" 2>&1 |
    tee "$log" |
    awk -v name="$name" -v total="$total" \
      'NR % 100 == 0 { printf "    %s: %d packages compiled (of at most %d)\n", name, NR, total > "/dev/stderr"; fflush("/dev/stderr") }'
  status="${PIPESTATUS[0]}"
  set -o pipefail
  if [ "$status" -ne 0 ] || [ ! -x "$tmp/bin/$name" ]; then
    # The compiler's own messages name what failed (package names are the rest).
    grep -v '^[A-Za-z0-9._~-]*\(/[A-Za-z0-9._~/-]*\)\?$' "$log" | tail -20 >&2 || true
    fail "building $name ($pkg) failed; the whole log is $log. Fix the cause (a full disk, an unreachable Go module proxy) and run scripts/controlplane.sh again."
  fi
  compiled="$(grep -c . "$log" || true)"
  say "    $name built in $((SECONDS - started)) s ($compiled packages compiled, the rest from Go's build cache)"
  rm -f "$log"
done
"$tmp/bin/kube-apiserver" --version >&2
"$tmp/bin/etcd" --version | head -1 >&2
printf 'kubernetes %s\netcd %s\ngo %s\n' "$k8s" "$etcd" "$("$GO" env GOVERSION)" >"$tmp/bin/VERSIONS"
touch "$tmp/bin/.complete"
rm -rf "$out"
mv "$tmp" "$out"
say "control plane built in $out/bin"
printf '%s\n' "$out/bin"
