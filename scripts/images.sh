#!/usr/bin/env bash
# Container images of webaccel, built and run with Debian's podman/buildah from a local
# debootstrap base (no registry needed). See browser-images/README.md.
#
#   scripts/images.sh build [IMAGE...] [-- PODMAN-BUILD-ARGS...]
#       release-builds the binaries, stages a minimal context, builds the base if needed,
#       then the images (default: chromium operator; also: firefox, Debian's Firefox ESR,
#       left out of the default build to keep CI short; chrome edge, which need the
#       vendors' apt repositories); prints each image's size and the build time.
#   scripts/images.sh test [IMAGE...]   runs built images read-only and non-root
#                               (default: chromium operator): one real inference through
#                               each browser image, compared with onnxruntime; the
#                               operator image's --help and --version.
#   scripts/images.sh base [--force]    only the debootstrap base image.
#   scripts/images.sh names     the image names the build tags, one a line.
#   scripts/images.sh env       `export` lines for running podman by hand on this host.
#   scripts/images.sh podman ARGS...    podman with this host's configuration.
#
# Environment: CARGO_TARGET_DIR (cargo's, default target/), WEBACCEL_IMAGE_REGISTRY
# (default ghcr.io/webaccel), WEBACCEL_IMAGE_TAG (default the chart's appVersion),
# WEBACCEL_TEST_WAIT (seconds to wait for the agent to be ready, default 180).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=browser-images/podman-env.sh
source browser-images/podman-env.sh

# The binaries of the control-plane image. Add webaccel-gateway here once it exists; the
# operator Containerfile copies whatever is listed.
control_plane_bins=(webaccel-operator webaccel-gateway)

default_images=(chromium operator)
registry=${WEBACCEL_IMAGE_REGISTRY:-ghcr.io/webaccel}
version=${WEBACCEL_IMAGE_TAG:-$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/webaccel/Chart.yaml)}
[[ -n $version ]] || { echo "images: no appVersion in charts/webaccel/Chart.yaml" >&2; exit 1; }
suite=bookworm
base_image=localhost/webaccel-debian-base:$suite
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# operator -> webaccel-operator; chromium -> browser-chromium, firefox -> browser-firefox
# (the chart's and the BrowserPool's default names).
repo_name() { if [[ $1 == operator ]]; then echo webaccel-operator; else echo "browser-$1"; fi; }
image_ref() { echo "$registry/$(repo_name "$1"):$version"; }
local_ref() { echo "localhost/webaccel/$(repo_name "$1"):$version"; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0fs", b - a }'; }
mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }

# Cargo `-p PKG --bin BIN` for each binary, the package found by `cargo metadata`.
cargo_selection() {
  cargo metadata --no-deps --locked --format-version 1 | python3 -c '
import json, sys
bins = sys.argv[1:]
owner = {t["name"]: p["name"] for p in json.load(sys.stdin)["packages"]
         for t in p["targets"] if "bin" in t["kind"]}
missing = [b for b in bins if b not in owner]
if missing:
    sys.exit("images: no workspace package has the binary " + ", ".join(missing))
for b in bins:
    print("-p", owner[b], "--bin", b, sep="\n")
' "$@"
}

# The runtime the agent serves: web/src and, of onnxruntime-web, only ort.all.min.mjs,
# the wasm module script(s) it names and their .wasm files, and its package.json (version,
# licence: MIT; a LICENSE file is copied too if a release ships one).
stage_web() {
  local out=$1 web=node-agent/web
  local dist=$web/node_modules/onnxruntime-web/dist
  if [[ ! -f $dist/ort.all.min.mjs ]]; then
    echo "images: $dist/ort.all.min.mjs missing: run scripts/setup.sh (npm ci in $web)" >&2
    return 1
  fi
  mkdir -p "$out/web/node_modules/onnxruntime-web/dist"
  cp -r "$web/src" "$out/web/src"
  # The two builds the page imports (sessions.js) and the wasm each of them names.
  local -a files=(ort.all.min.mjs ort.wasm.min.mjs)
  local m bundle
  for bundle in ort.all.min.mjs ort.wasm.min.mjs; do
    while read -r m; do
      files+=("$m" "${m%.mjs}.wasm")
    done < <(grep -o 'ort-wasm-simd-threaded[a-z.]*\.mjs' "$dist/$bundle" | sort -u)
  done
  for m in "${files[@]}"; do
    [[ -f $dist/$m ]] || { echo "images: $dist/$m (named by the page's onnxruntime-web builds) missing" >&2; return 1; }
    cp "$dist/$m" "$out/web/node_modules/onnxruntime-web/dist/"
  done
  cp "$web/node_modules/onnxruntime-web/package.json" "$out/web/node_modules/onnxruntime-web/"
  [[ -f $web/node_modules/onnxruntime-web/LICENSE ]] &&
    cp "$web/node_modules/onnxruntime-web/LICENSE" "$out/web/node_modules/onnxruntime-web/"
  find "$out/web" -name '*.map' -delete
  chmod -R a+rX,go-w "$out/web"
  [[ -f $out/web/src/runtime.js ]] || { echo "images: $web/src/runtime.js missing" >&2; return 1; }
}

# A release binary without its DWARF (the release profile keeps line tables: ~170 MB a
# binary); the symbol table stays, so backtraces still name functions.
stage_bin() {
  local src=$target_dir/release/$1
  [[ -x $src ]] || { echo "images: $src missing after cargo build" >&2; return 1; }
  objcopy --strip-debug "$src" "$2"
  chmod 755 "$2"
}

# The build context of one image, staged under $2.
stage_context() {
  local image=$1 dir=$2
  mkdir -p "$dir"
  case $image in
    operator)
      mkdir -p "$dir/bin"
      local b
      for b in "${control_plane_bins[@]}"; do stage_bin "$b" "$dir/bin/$b"; done
      ;;
    *)
      stage_bin webaccel-agent "$dir/webaccel-agent"
      stage_web "$dir"
      ;;
  esac
}

bins_for() {
  local image
  for image in "$@"; do
    if [[ $image == operator ]]; then printf '%s\n' "${control_plane_bins[@]}"; else echo webaccel-agent; fi
  done | sort -u
}

# The Containerfile of an image: chrome and edge share vendor/Containerfile (a
# Chromium-family browser from its vendor's apt repository).
containerfile_of() {
  case $1 in
    chrome | edge) echo browser-images/vendor/Containerfile ;;
    *) echo "browser-images/$1/Containerfile" ;;
  esac
}

# The build arguments an image's defaults file gives (vendor/<image>.args), one
# --build-arg each; the caller's own arguments come after and win.
default_build_args() {
  local f=browser-images/vendor/$1.args line
  [[ -f $f ]] || return 0
  while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] || printf '%s\n' --build-arg "$line"
  done <"$f"
}

build_one() {
  local image=$1 ctx=$2
  shift 2
  local file
  file=$(containerfile_of "$image")
  [[ -f $file ]] || { echo "images: no $file" >&2; return 1; }
  local -a defaults
  mapfile -t defaults < <(default_build_args "$image")
  local log=$ctx.log start old
  start=$(now)
  old=$(podman image inspect --format '{{.Id}}' "$(image_ref "$image")" 2>/dev/null || true)
  echo "images: building $(image_ref "$image")"
  # Named build stages (FROM ... AS NAME) are built and tagged first: untagged, they would
  # look dangling once the build is over, and the prune below would drop their cache.
  local stage
  local -a targets=()
  while read -r stage; do
    targets+=("$stage")
  done < <(sed -n 's/^FROM[[:space:]].*[[:space:]][Aa][Ss][[:space:]]\{1,\}\([A-Za-z0-9_.-]*\).*/\1/p' "$file")
  : >"$log"
  for stage in "${targets[@]}" ""; do
    local -a tags=(-t "$(image_ref "$image")" -t "$(local_ref "$image")")
    [[ -n $stage ]] && tags=(--target "$stage" -t "localhost/webaccel/$(repo_name "$image")-stage-$stage:cache")
    if ! timeout 1800 podman build --layers --pull=never --network host \
      --build-arg BASE="$base_image" "${defaults[@]}" -f "$file" "${tags[@]}" "$@" "$ctx" >>"$log" 2>&1; then
      echo "images: building $image${stage:+ (stage $stage)} failed; the end of podman's output:" >&2
      tail -n 60 "$log" >&2
      return 1
    fi
  done
  # Steps run (not FROM, not taken from the layer cache) out of all steps of the last build.
  local steps cached
  steps=$(awk '/^(\[[0-9]+\/[0-9]+\] )?STEP [0-9]/ && !/: FROM / { n++ } END { print n + 0 }' "$log")
  cached=$(grep -c -- '--> Using cache' "$log" || true)
  local id
  id=$(podman image inspect --format '{{.Id}}' "$(image_ref "$image")")
  # The image this build replaced, and its layers no other image uses, are removed.
  if [[ -n $old && $old != "$id" ]]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
  printf 'images: %-45s %8s  built in %s (%s of %s steps from the layer cache)\n' \
    "$(image_ref "$image")" "$(mb "$id")" "$(since "$start")" "$cached" "$steps"
}

cmd_build() {
  local images=() extra=()
  while (($#)); do
    if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
    images+=("$1"); shift
  done
  ((${#images[@]})) || images=("${default_images[@]}")
  webaccel_podman_env
  local t0 t
  t0=$(now)

  t=$(now)
  local bins sel
  mapfile -t bins < <(bins_for "${images[@]}")
  mapfile -t sel < <(cargo_selection "${bins[@]}")
  echo "images: cargo build --release --locked ${sel[*]}"
  cargo build --release --locked "${sel[@]}"
  echo "images: binaries ready in $(since "$t")"

  t=$(now)
  browser-images/base/build-base.sh
  echo "images: base ready in $(since "$t")"

  local ctx
  ctx=$(mktemp -d /var/tmp/webaccel-images.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx' '$ctx'.*" EXIT
  local image
  for image in "${images[@]}"; do
    stage_context "$image" "$ctx/$image"
    build_one "$image" "$ctx/$image" "${extra[@]}"
  done
  # Leftovers of interrupted builds (untagged, labelled by us) go too.
  podman image prune -f --filter label=dev.webaccel.managed=true >/dev/null 2>&1 || true
  echo "images: all built in $(since "$t0")"
  for image in "${images[@]}"; do
    printf 'images:   %-45s %8s  (also %s)\n' "$(image_ref "$image")" "$(mb "$(image_ref "$image")")" "$(local_ref "$image")"
  done
}

# Waits until URL answers 200, the container keeps running, at most $3 seconds.
wait_ready() {
  local url=$1 name=$2 limit=$3 start=$SECONDS
  while ((SECONDS - start < limit)); do
    if [[ $(podman container inspect --format '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
      echo "images: container $name stopped before it was ready" >&2
      return 1
    fi
    if curl -fsS --max-time 5 -o /dev/null "$url" 2>/dev/null; then
      echo "images: $url ready after $((SECONDS - start))s"
      return 0
    fi
    sleep 1
  done
  echo "images: $url not ready within ${limit}s; it says:" >&2
  curl -sS --max-time 5 "$url" >&2 || true
  echo >&2
  return 1
}

# Runs browser image $1 the way a restricted pod runs it and sends it one inference.
test_browser() {
  local image=$1 fixtures=node-agent/tests/fixtures/models ref work name port
  ref=$(image_ref "$image")
  work=$(mktemp -d /var/tmp/webaccel-images-test.XXXXXX)
  name=webaccel-image-test-$image-$$
  local cleanup="podman rm -f -t 5 '$name' >/dev/null 2>&1 || true; rm -rf '$work'"
  # shellcheck disable=SC2064
  trap "$cleanup" EXIT
  python3 -c 'import secrets; print(secrets.token_hex(16))' >"$work/token"
  chmod 644 "$work/token"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

  # As in a restricted pod: UID 1000, read-only root, writable only /tmp and /dev/shm,
  # no capabilities, no privilege escalation, models and token mounted read-only.
  echo "images: test: $ref (read-only, UID 1000, port $port)"
  timeout 120 podman run -d --name "$name" --network host \
    --read-only --read-only-tmpfs=false --user 1000:1000 \
    --tmpfs /tmp:rw,nosuid,nodev,size=1g,mode=1777 --shm-size=1g \
    --cap-drop=ALL --security-opt=no-new-privileges \
    -v "$repo/$fixtures:/models:ro" -v "$work/token:/etc/webaccel/token:ro" \
    -e WEBACCEL_LISTEN="127.0.0.1:$port" \
    "$ref" \
    --model mlp=file:///models/mlp.onnx,backend=wasm \
    --token-file /etc/webaccel/token >/dev/null

  local ok=true
  if ! wait_ready "http://127.0.0.1:$port/readyz" "$name" "${WEBACCEL_TEST_WAIT:-180}"; then
    ok=false
  elif ! timeout 120 python3 browser-images/tests/check_infer.py "http://127.0.0.1:$port" \
    "$work/token" "$fixtures/mlp.json"; then
    echo "images: inference through $ref failed" >&2
    ok=false
  fi
  if ! $ok; then
    echo "images: the agent's log:" >&2
    podman logs --tail 80 "$name" >&2 || true
    return 1
  fi
  podman rm -f -t 10 "$name" >/dev/null
  eval "$cleanup"
  trap - EXIT
}

cmd_test() {
  local images=("$@")
  ((${#images[@]})) || images=("${default_images[@]}")
  webaccel_podman_env
  local t0 fixtures=node-agent/tests/fixtures/models image
  t0=$(now)
  for image in "${images[@]}"; do
    [[ -f $(containerfile_of "$image") ]] || { echo "images: no image $image" >&2; return 1; }
    podman image exists "$(image_ref "$image")" ||
      { echo "images: $(image_ref "$image") missing: run scripts/images.sh build $image" >&2; return 1; }
  done
  [[ -f $fixtures/mlp.onnx && -f $fixtures/mlp.json ]] ||
    { echo "images: $fixtures/mlp.{onnx,json} missing: run scripts/setup.sh" >&2; return 1; }

  for image in "${images[@]}"; do
    [[ $image == operator ]] || test_browser "$image"
  done
  if [[ " ${images[*]} " == *" operator "* ]]; then
    test_operator "$(image_ref operator)"
  fi
  echo "images: tests passed in $(since "$t0")"
}

# The operator image answers --help and --version, read-only, as UID 65532.
test_operator() {
  local operator=$1 out
  echo "images: test: $operator --help (read-only, UID 65532)"
  if ! out=$(timeout 60 podman run --rm --network none --read-only --read-only-tmpfs=false \
    --user 65532:65532 --cap-drop=ALL --security-opt=no-new-privileges \
    "$operator" --help 2>&1) || [[ $out != *Usage* ]]; then
    echo "images: $operator --help failed:" >&2
    echo "$out" >&2
    return 1
  fi
  if ! out=$(timeout 60 podman run --rm --network none --read-only --read-only-tmpfs=false \
    --user 65532:65532 "$operator" --version 2>&1); then
    echo "images: $operator --version failed: $out" >&2
    return 1
  fi
  echo "images: test: $out"
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  test) shift; cmd_test "$@" ;;
  base) shift; browser-images/base/build-base.sh "$@" ;;
  names) for i in "${default_images[@]}" firefox chrome edge; do image_ref "$i"; done ;;
  env)
    webaccel_podman_env
    echo "export CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
    ;;
  podman) shift; webaccel_podman_env; exec podman "$@" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
