#!/usr/bin/env bash
# The main job, on one machine: `webaccel up` with its built-in example (a Chromium
# BrowserPool of one to two browsers serving a small MLP, examples/local/), then one
# inference through the gateway's KServe v2 HTTP API, `webaccel status`, and a stop with
# SIGTERM (browsers drained, nothing left running). The machine must be set up first:
# scripts/setup.sh installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null && [[ -d node-agent/web/node_modules ]] ||
  { echo "demo: run scripts/setup.sh first (chromium and the in-page runtime's packages are missing)" >&2; exit 1; }
cargo build --release --locked -p webaccel-cli -p webaccel-node-agent
bin=${CARGO_TARGET_DIR:-target}/release
data=$(mktemp -d /tmp/webaccel-demo.XXXXXX)
"$bin/webaccel" up --data-dir "$data" &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up; rm -rf "$data"' EXIT

# Ready when the gateway has a browser holding the model.
for _ in $(seq 1200); do
  curl -sf http://127.0.0.1:8000/v2/models/mlp/ready >/dev/null && break
  kill -0 $up 2>/dev/null || { echo "webaccel up exited"; exit 1; }
  sleep 0.1
done
curl -sf http://127.0.0.1:8000/v2/models/mlp/ready >/dev/null || { echo "mlp did not become ready"; exit 1; }

echo; echo "== webaccel status"
"$bin/webaccel" status --data-dir "$data"

echo; echo "== POST http://127.0.0.1:8000/v2/models/mlp/infer (through the gateway)"
curl -sS -H 'content-type: application/json' --data @examples/local/request.json \
  http://127.0.0.1:8000/v2/models/mlp/infer | python3 -m json.tool
