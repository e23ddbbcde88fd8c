#!/usr/bin/env bash
# Builds the local base image every webaccel image starts from: a minimal Debian rootfs
# made by `debootstrap --variant=minbase` (no registry needed, only a Debian mirror),
# brought up to date from the security and updates suites, imported as
#   localhost/webaccel-debian-base:<suite>        (default suite: bookworm)
# apt inside it (and so inside every image build) uses the Debian mirror this host uses,
# read from /etc/apt/sources.list*; override with DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR.
#
# Cached: the image carries a label with a key made of this script's content, the suite,
# the mirrors and the architecture; when an image with that key exists, nothing is done.
# `--force` rebuilds anyway. Needs root, debootstrap, podman and buildah
# (scripts/setup.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=browser-images/podman-env.sh
source "$here/../podman-env.sh"
webaccel_podman_env

suite=${WEBACCEL_DEBIAN_SUITE:-bookworm}
image=${WEBACCEL_BASE_IMAGE:-localhost/webaccel-debian-base:$suite}
arch=$(dpkg --print-architecture)
force=false
[[ ${1:-} == --force ]] && force=true

# "URI SUITE" for every enabled `deb` source of the host, one-line and deb822 formats.
host_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                       if (i + 1 <= NF) print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk 'function flush(   u, s, nu, ns, a, b) {
           if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false)$/) {
             nu = split(uris, a, " "); ns = split(suites, b, " ")
             for (u = 1; u <= nu; u++) for (s = 1; s <= ns; s++) print a[u], b[s]
           }
           types = uris = suites = ""; enabled = "yes"
         }
         BEGIN { enabled = "yes" }
         /^#/ { next }
         /^[ \t]*$/ { flush(); next }
         tolower($1) == "types:"   { $1 = ""; types = $0 }
         tolower($1) == "uris:"    { $1 = ""; uris = $0 }
         tolower($1) == "suites:"  { $1 = ""; suites = $0 }
         tolower($1) == "enabled:" { enabled = tolower($2) }
         END { flush() }' "$f"
  done
}
uri_for_suite() { host_sources | awk -v s="$1" '$2 == s { sub(/\/$/, "", $1); print $1; exit }'; }

mirror=${DEBIAN_MIRROR:-$(uri_for_suite "$suite")}
security=${DEBIAN_SECURITY_MIRROR:-$(uri_for_suite "$suite-security")}
updates=$(uri_for_suite "$suite-updates")
if [[ -z $mirror ]]; then
  mirror=http://deb.debian.org/debian
  echo "base: no '$suite' source in /etc/apt/sources.list*, using $mirror (set DEBIAN_MIRROR to change)" >&2
fi
[[ -n $updates ]] || updates=$mirror

key=$( { cat "$0"; echo "$suite $arch $mirror $security $updates"; } | sha256sum | cut -c1-32)
if ! $force && podman image exists "$image" &&
  [[ $(podman image inspect --format '{{index .Labels "dev.webaccel.base-key"}}' "$image") == "$key" ]]; then
  echo "base: $image is up to date (key $key)"
  exit 0
fi

echo "base: building $image from $mirror ($suite, $arch, minbase)"
start=$(date +%s)
work=$(mktemp -d /var/tmp/webaccel-base.XXXXXX)
raw=localhost/webaccel-debian-base-raw:$key
ctr=
cleanup() {
  if [[ -n $ctr ]]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  podman rmi -f "$raw" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

rootfs=$work/rootfs
mkdir -p "$rootfs" /var/cache/webaccel-debootstrap
if ! timeout 1200 debootstrap --variant=minbase --arch="$arch" \
  --cache-dir=/var/cache/webaccel-debootstrap \
  "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
  echo "base: debootstrap failed; the end of its log:" >&2
  tail -n 30 "$work/debootstrap.log" >&2
  tail -n 30 "$rootfs/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
  exit 1
fi

# apt: the host's mirrors, no recommends, retries, no package cache kept in layers.
rm -f "$rootfs/etc/apt/sources.list"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" "$suite"
  printf '\nTypes: deb\nURIs: %s\nSuites: %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$updates" "$suite"
  if [[ -n $security ]]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$security" "$suite"
  fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"
cat >"$rootfs/etc/apt/apt.conf.d/90webaccel" <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
Acquire::http::Timeout "30";
Acquire::https::Timeout "30";
Binary::apt::APT::Keep-Downloaded-Packages "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
CONF
# No documentation, manuals or translations in images (copyright files stay).
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90webaccel-nodoc" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CONF
# Package scripts must not start services during image builds.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/cache/apt/* \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs/debootstrap"
: >"$rootfs/etc/machine-id"

echo "base: importing the rootfs"
tar -C "$rootfs" --numeric-owner --xattrs --exclude='./dev/*' --exclude='./proc/*' \
  --exclude='./sys/*' --exclude='./tmp/*' --exclude='./run/*' -cf - . |
  podman import --quiet --message "debootstrap --variant=minbase $suite $mirror" - "$raw" >/dev/null
rm -rf "$rootfs"

echo "base: applying $suite-updates and $suite-security"
ctr=$(buildah from --quiet --pull=never "$raw")
timeout 900 buildah run --network host "$ctr" -- sh -euc '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get upgrade -y -qq >/tmp/upgrade.log 2>&1 || { cat /tmp/upgrade.log; exit 1; }
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/cache/debconf/*-old /tmp/*'
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd /bin/bash \
  --label dev.webaccel.managed=true \
  --label dev.webaccel.base-key="$key" \
  --label org.opencontainers.image.title=webaccel-debian-base \
  --label org.opencontainers.image.description="debootstrap --variant=minbase $suite from $mirror" \
  "$ctr"
# One squashed layer; the previous base (if any) loses its tag and is pruned by images.sh.
buildah commit --quiet --squash --rm "$ctr" "$image" >/dev/null
ctr=
echo "base: $image built in $(($(date +%s) - start))s, $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
