#!/usr/bin/env bash
# Runs every check and test webaccel has: formatting, clippy, unit tests and the
# end-to-end tests that start real Chromium and Firefox processes and ClickHouse servers,
# the in-page runtime's tests (with node), then the container images (built with podman
# from a debootstrap base and run read-only). The machine must be set up first:
# scripts/setup.sh installs what these need.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for c in cargo chromium firefox-esr node python3 podman; do
  command -v "$c" >/dev/null || missing+=("$c")
done
[[ -x /usr/bin/clickhouse-server || -x /usr/sbin/clickhouse-server ]] || missing+=(clickhouse-server)
[[ -d node-agent/web/node_modules ]] || missing+=("node-agent/web/node_modules")
[[ -f node-agent/tests/fixtures/models/mlp.onnx ]] || missing+=("the test models")
if ((${#missing[@]})); then
  echo "test: missing ${missing[*]}: run scripts/setup.sh first" >&2
  exit 1
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The in-page runtime's own tests (frames, op handling), on the golden messages the
# agent's tests read too.
(cd node-agent/web && node --test test/)
scripts/images.sh build && scripts/images.sh test
