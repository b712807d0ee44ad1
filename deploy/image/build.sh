#!/usr/bin/env bash
# Builds the agent's container image, ghcr.io/switchyard-dev/switchyard, as an
# OCI image layout (a directory: oci-layout, index.json, blobs/sha256/...)
# without a container engine: debootstrap, tar, gzip, sha256sum, jq and curl.
#
#   deploy/image/build.sh --bin-dir DIR [--out DIR] [--tag TAG]
#                         [--push HOST:PORT/REPOSITORY] [--pin]
#
# Two layers: a minimal Debian root file system with the tools the agent and
# its init containers run or load (nft and libnftables, ip, conntrack,
# modprobe, sysctl, sh), made once with `debootstrap --variant=minbase` and
# cached under $SWITCHYARD_IMAGE_CACHE; then /usr/local/bin/switchyard and
# /usr/local/bin/switchyard-cni from --bin-dir. Layers are reproducible (sorted
# entries, every mtime SOURCE_DATE_EPOCH, numeric owners, `gzip -n`): the same
# cached root file system and binaries give the same digest.
#
# Prints the image manifest's digest (sha256:...) on stdout; progress goes to
# stderr. Needs root (debootstrap, and the root file system's owners).
set -Eeuo pipefail
trap 'echo "error: $0, line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

IMAGE_NAME=ghcr.io/switchyard-dev/switchyard
SUITE=bookworm
# What the agent and its init containers exec or load: nft and libnftables
# (nftables), ip (iproute2), conntrack, modprobe (kmod), sysctl (procps).
PACKAGES=(nftables iproute2 conntrack kmod procps)
MANIFEST_TYPE=application/vnd.oci.image.manifest.v1+json
CONFIG_TYPE=application/vnd.oci.image.config.v1+json
LAYER_TYPE=application/vnd.oci.image.layer.v1.tar+gzip

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $0 --bin-dir DIR [--out DIR] [--tag TAG] [--push HOST:PORT/REPOSITORY] [--pin]

  --bin-dir DIR    holds the switchyard and switchyard-cni binaries to ship
                   (env SWITCHYARD_BIN_DIR)
  --out DIR        where the OCI image layout goes
                   (default \$SWITCHYARD_IMAGE_CACHE/layout)
  --tag TAG        the tag in index.json and of a push (default v<workspace version>)
  --push TARGET    push to a registry with the OCI distribution API, e.g.
                   127.0.0.1:5000/switchyard (http for loopback, https otherwise)
  --pin            rewrite the image references in deploy/kubernetes to
                   $IMAGE_NAME@<digest>
  --mirror URL     the Debian mirror for debootstrap (env DEBIAN_MIRROR;
                   default: the one apt uses for $SUITE)

Environment: SWITCHYARD_IMAGE_CACHE (default /var/cache/switchyard/image) holds
the cached root file system; SOURCE_DATE_EPOCH (default 0) is every file's mtime
and the image's creation time.
EOF
}

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")"
[ -n "$version" ] || die "no [workspace.package] version in $repo/Cargo.toml"
bin_dir="${SWITCHYARD_BIN_DIR:-}"
cache="${SWITCHYARD_IMAGE_CACHE:-/var/cache/switchyard/image}"
out=""
tag="v$version"
push=""
pin=0
mirror="${DEBIAN_MIRROR:-}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"

while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a tag}"; shift 2 ;;
    --push) push="${2:?--push needs HOST:PORT/REPOSITORY}"; shift 2 ;;
    --pin) pin=1; shift ;;
    --mirror) mirror="${2:?--mirror needs a URL}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done
out="${out:-$cache/layout}"

[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and the root file system's owners need it"
[ -n "$bin_dir" ] || { usage; die "--bin-dir is required (a directory with switchyard and switchyard-cni)"; }
for b in switchyard switchyard-cni; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable (build it with cargo first)"
done
[[ "$SOURCE_DATE_EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, not $SOURCE_DATE_EPOCH"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "$tag is not a valid tag"
if [ -n "$push" ] && [[ ! "$push" =~ ^[^/]+/[a-z0-9]+([._/-][a-z0-9]+)*$ ]]; then
  die "--push wants HOST[:PORT]/REPOSITORY (lower case), not $push"
fi
for tool in debootstrap tar gzip sha256sum jq flock; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install debootstrap tar gzip coreutils jq util-linux"
done
[ -z "$push" ] || command -v curl >/dev/null || die "curl is missing (apt-get install curl); --push needs it"
if [ -e "$out" ] && [ ! -e "$out/oci-layout" ] && [ -n "$(ls -A "$out")" ]; then
  die "$out exists and is not an OCI image layout: refusing to replace it"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/switchyard-image.XXXXXX")"
cleanup() {
  # debootstrap mounts /proc and /sys in its target; never delete through them.
  local m
  for m in $(findmnt -rn -o TARGET | { grep -F "$work/" || true; } | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# The mirror apt uses for a suite: the first URI of a deb822 paragraph or a
# one-line "deb" entry naming it.
apt_mirror() {
  local suite="$1" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" 'BEGIN { RS = "" } {
      uri = ""; deb = 0; hit = 0
      n = split($0, line, "\n")
      for (i = 1; i <= n; i++) {
        l = line[i]
        if (l ~ /^Types:/ && l ~ /[ \t]deb([ \t]|$)/) deb = 1
        if (l ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", l); split(l, u, /[ \t]+/); uri = u[1] }
        if (l ~ /^Suites:/) { m = split(l, s, /[ \t]+/); for (j = 2; j <= m; j++) if (s[j] == suite) hit = 1 }
      }
      if (deb && hit && uri != "") { print uri; exit }
    }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed 's/\[[^]]*\]//' | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
}

# The root file system: Debian minbase and PACKAGES, with the stable
# updates applied, and without what a runtime image does not need. Its text
# is part of the cache key, so changing it rebuilds the cache.
make_rootfs() {
  local root="${1:?}"
  [ "$root" != / ] || die "make_rootfs: refusing to build into /"
  debootstrap --variant=minbase --components=main \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" "$SUITE" "$root" "$mirror" >&2
  cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
${security:+deb $security $SUITE-security main}
EOF
  chroot "$root" apt-get -qq update >&2
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -qq -y upgrade >&2
  chroot "$root" apt-get -qq clean
  # What apt and dpkg need at run time of the image stays; what only a
  # person reads or a build leaves behind goes. Copyright files stay.
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${root:?}"/usr/share/{man,info,lintian,linda,locale}/* \
    "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/*.bin "${root:?}"/var/cache/debconf/*-old \
    "${root:?}"/var/cache/ldconfig/aux-cache "${root:?}"/var/lib/dpkg/*-old \
    "${root:?}"/tmp/* "${root:?}"/var/tmp/* "${root:?}"/dev/* "${root:?}"/root/.[!.]* "${root:?}"/debootstrap
  find "$root/var/log" -type f -delete
  # The container runtime provides these; the build machine's must not leak.
  rm -f "$root"/etc/hostname "$root"/etc/resolv.conf "$root"/etc/machine-id
  : > "$root/etc/hosts"
  # The day the password database was written, which differs per build.
  sed -i 's/^\([^:]*:[^:]*:\)[0-9]*:/\1:/' "$root"/etc/shadow "$root"/etc/shadow- 2>/dev/null || true
  cat > "$root/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
}

# Tar DIR reproducibly into FILE: entries sorted, no atime/ctime, every mtime
# SOURCE_DATE_EPOCH, numeric owners; extra arguments go to tar.
repro_tar() {
  local dir="$1" file="$2"; shift 2
  (cd "$dir" && LC_ALL=C ls -A) | LC_ALL=C tar -C "$dir" --create --file "$file" \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --sort=name --mtime="@$SOURCE_DATE_EPOCH" --numeric-owner "$@" --files-from=-
}

# Store FILE in the layout's blobs; prints its sha256 hex.
add_blob() {
  local file="$1" hex
  hex="$(sha256sum "$file" | cut -d' ' -f1)"
  mv "$file" "$layout/blobs/sha256/$hex"
  echo "$hex"
}

# Gzip an uncompressed layer TAR into a blob; prints "diff_id_hex blob_hex".
add_layer() {
  local tarfile="$1" diff_id
  diff_id="$(sha256sum "$tarfile" | cut -d' ' -f1)"
  gzip -n -c "$tarfile" > "$tarfile.gz"
  rm -f "$tarfile"
  echo "$diff_id $(add_blob "$tarfile.gz")"
}

# --- the root file system, from the cache or debootstrap ---------------------

mkdir -p "$cache"
mirror="${mirror:-$(apt_mirror "$SUITE" | head -n1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
security="$(apt_mirror "$SUITE-security" | head -n1 || true)"
key="$( { echo "$SUITE ${PACKAGES[*]}"; declare -f make_rootfs; } | sha256sum | cut -c1-16)"
rootfs_tar="$cache/rootfs-$SUITE-$key.tar"
exec 9>"$cache/.lock"
flock 9
if [ -f "$rootfs_tar" ]; then
  say "root file system: cached $rootfs_tar"
else
  say "root file system: debootstrap $SUITE (minbase + ${PACKAGES[*]}) from $mirror; this takes a few minutes, once"
  start=$SECONDS
  make_rootfs "$work/debootstrap"
  tar -C "$work/debootstrap" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  rm -rf --one-file-system "$work/debootstrap"
  say "root file system cached as $rootfs_tar ($((SECONDS - start)) s)"
fi
flock -u 9

# --- layers, config, manifest ---------------------------------------------------

layout="$work/layout"
mkdir -p "$layout/blobs/sha256" "$work/rootfs" "$work/bin/usr/local/bin"

say "layer 1: the root file system"
tar -C "$work/rootfs" --numeric-owner -xf "$rootfs_tar"
repro_tar "$work/rootfs" "$work/base.tar"
layer="$(add_layer "$work/base.tar")"
read -r base_diff base_blob <<< "$layer"
rm -rf --one-file-system "$work/rootfs"

say "layer 2: switchyard and switchyard-cni from $bin_dir"
for b in switchyard switchyard-cni; do
  cp -L "$bin_dir/$b" "$work/bin/usr/local/bin/$b"
  chmod 0755 "$work/bin/usr/local/bin/$b"
done
chmod 0755 "$work/bin/usr" "$work/bin/usr/local" "$work/bin/usr/local/bin"
repro_tar "$work/bin" "$work/bin.tar" --owner=0 --group=0
layer="$(add_layer "$work/bin.tar")"
read -r bin_diff bin_blob <<< "$layer"

created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
arch="$(dpkg --print-architecture)"
case "$arch" in amd64 | arm64 | s390x | ppc64el | riscv64) ;; *) die "unsupported architecture $arch" ;; esac
[ "$arch" != ppc64el ] || arch=ppc64le
jq -c -S -n \
  --arg created "$created" --arg arch "$arch" --arg version "$version" \
  --arg base "sha256:$base_diff" --arg bin "sha256:$bin_diff" \
  --arg debootstrap "debootstrap --variant=minbase --include=$(IFS=,; echo "${PACKAGES[*]}") $SUITE" \
  '{
    created: $created, architecture: $arch, os: "linux",
    config: {
      Entrypoint: ["/usr/local/bin/switchyard"],
      Cmd: ["agent", "--kube"],
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      WorkingDir: "/",
      Labels: {
        "org.opencontainers.image.title": "switchyard",
        "org.opencontainers.image.description": "The Switchyard node agent and the switchyard-cni plugin",
        "org.opencontainers.image.version": $version,
        "org.opencontainers.image.source": "https://github.com/switchyard-dev/switchyard",
        "org.opencontainers.image.licenses": "Apache-2.0"
      }
    },
    rootfs: {type: "layers", diff_ids: [$base, $bin]},
    history: [
      {created: $created, created_by: $debootstrap},
      {created: $created, created_by: "deploy/image/build.sh: /usr/local/bin/switchyard, /usr/local/bin/switchyard-cni"}
    ]
  }' > "$work/config.json"
config_size="$(stat -c %s "$work/config.json")"
config_blob="$(add_blob "$work/config.json")"

blob_size() { stat -c %s "$layout/blobs/sha256/$1"; }
jq -c -n --arg mt "$MANIFEST_TYPE" --arg ct "$CONFIG_TYPE" --arg lt "$LAYER_TYPE" \
  --arg config "sha256:$config_blob" --argjson config_size "$config_size" \
  --arg base "sha256:$base_blob" --argjson base_size "$(blob_size "$base_blob")" \
  --arg bin "sha256:$bin_blob" --argjson bin_size "$(blob_size "$bin_blob")" \
  '{
    schemaVersion: 2, mediaType: $mt,
    config: {mediaType: $ct, digest: $config, size: $config_size},
    layers: [
      {mediaType: $lt, digest: $base, size: $base_size},
      {mediaType: $lt, digest: $bin, size: $bin_size}
    ]
  }' > "$work/manifest.json"
manifest_size="$(stat -c %s "$work/manifest.json")"
manifest_blob="$(add_blob "$work/manifest.json")"
digest="sha256:$manifest_blob"

echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
jq -c -n --arg mt "$MANIFEST_TYPE" --arg digest "$digest" --argjson size "$manifest_size" \
  --arg tag "$tag" --arg name "$IMAGE_NAME:$tag" \
  '{schemaVersion: 2, manifests: [{mediaType: $mt, digest: $digest, size: $size,
     annotations: {"org.opencontainers.image.ref.name": $tag, "io.containerd.image.name": $name}}]}' \
  > "$layout/index.json"

rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$layout" "$out"
layout="$out"
say "image $IMAGE_NAME:$tag in $out: $digest, $(du -sh --apparent-size "$out/blobs" | cut -f1) compressed" \
  "(layers $(blob_size "$base_blob") + $(blob_size "$bin_blob") bytes)"

# --- push -------------------------------------------------------------------------

# curl_expect CODE CURL_ARGS...: run curl; fail, showing the answer, unless
# the status is CODE. The answer's headers are left in $work/headers.
curl_expect() {
  local want="$1" code; shift
  code="$(curl -sS --max-time 600 -o "$work/body" -D "$work/headers" -w '%{http_code}' "$@")" ||
    die "curl ${*: -1} failed"
  [ "$code" = "$want" ] ||
    die "${*: -1} answered HTTP $code, not $want: $(head -c 2000 "$work/body" 2>/dev/null)"
}
header() { tr -d '\r' < "$work/headers" | awk -v h="$1:" 'tolower($1) == tolower(h) { print $2 }' | tail -n1; }

if [ -n "$push" ]; then
  host="${push%%/*}"
  name="${push#*/}"
  case "$host" in
    localhost | localhost:* | 127.* | '[::1]' | '[::1]:'*) scheme=http ;;
    *) scheme=https ;;
  esac
  api="$scheme://$host/v2/$name"
  say "pushing to $push ($api)"
  for hex in "$config_blob" "$base_blob" "$bin_blob"; do
    if [ "$(curl -sS --max-time 60 -o /dev/null -w '%{http_code}' -I "$api/blobs/sha256:$hex")" = 200 ]; then
      say "  blob sha256:$hex: already there"
      continue
    fi
    curl_expect 202 -X POST "$api/blobs/uploads/"
    location="$(header Location)"
    [ -n "$location" ] || die "the registry started an upload but sent no Location"
    case "$location" in /*) location="$scheme://$host$location" ;; esac
    case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl_expect 201 -X PUT -H 'Content-Type: application/octet-stream' \
      -T "$layout/blobs/sha256/$hex" "$location${sep}digest=sha256:$hex"
    say "  blob sha256:$hex: uploaded ($(blob_size "$hex") bytes)"
  done
  curl_expect 201 -X PUT -H "Content-Type: $MANIFEST_TYPE" \
    -T "$layout/blobs/sha256/$manifest_blob" "$api/manifests/$tag"
  answered="$(header Docker-Content-Digest)"
  [ "$answered" = "$digest" ] ||
    die "the registry answered digest ${answered:-(none)} for the manifest, not $digest"
  say "pushed $push:$tag; the registry answered Docker-Content-Digest: $answered"
fi

# --- pin ----------------------------------------------------------------------------

if ((pin)); then
  pattern="${IMAGE_NAME//./\\.}"
  files=()
  for f in "$repo"/deploy/kubernetes/*.yaml; do
    grep -Eq "^[[:space:]]*(- )?image:[[:space:]]*$pattern([:@]|[[:space:]]*$)" "$f" && files+=("$f")
  done
  ((${#files[@]})) || die "no image: $IMAGE_NAME in deploy/kubernetes to pin"
  sed -E -i "s#^([[:space:]]*(- )?image:[[:space:]]*)$pattern([:@][^[:space:]]*)?[[:space:]]*\$#\\1$IMAGE_NAME@$digest#" "${files[@]}"
  say "pinned ${files[*]#"$repo/"} to $IMAGE_NAME@$digest (update the digest and its binaries in deploy/README.md)"
fi

echo "$digest"
