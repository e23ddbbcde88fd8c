#!/usr/bin/env bash
# The main job, locally: starts webaccel-agent with two example models in a headless
# Chromium, shows what the browser can do and which backend each model got, runs one
# inference over the KServe v2 HTTP API, then stops the agent with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p webaccel-node-agent
target=${CARGO_TARGET_DIR:-target}
port=${PORT:-8700}
models=$PWD/node-agent/tests/fixtures/models
"$target/release/webaccel-agent" --listen "127.0.0.1:$port" \
  --model "mlp=file://$models/mlp.onnx" \
  --model "transformer=file://$models/transformer.onnx,backend=wasm" &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent' EXIT
base=http://127.0.0.1:$port
for _ in $(seq 600); do
  curl -sf "$base/readyz" >/dev/null && break
  kill -0 $agent 2>/dev/null || { echo "the agent exited"; exit 1; }
  sleep 0.1
done
curl -sf "$base/readyz" >/dev/null || { echo "the agent did not become ready"; exit 1; }

echo; echo "== what this browser can run (GET /v1/capabilities)"
curl -s "$base/v1/capabilities" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("browser:", c["browser"]["version"])
g = c["webgpu"]
print("webgpu: ", "%s adapter %s/%s" % (g["adapter"]["kind"], g["adapter"]["vendor"], g["adapter"]["architecture"]) if g["available"] else "unavailable: " + g["reason"])
for d, s in c["webnn"].items():
    print("webnn %s:" % d, "available" if s["available"] else "unavailable: " + s["reason"])
print("wasm:   ", "simd=%s threads=%s" % (c["wasm"]["simd"], c["wasm"]["threads"]))'

echo; echo "== models (GET /v1/models)"
curl -s "$base/v1/models" | python3 -c '
import json, sys
for m in json.load(sys.stdin)["models"]:
    s = m["status"]
    print("%-12s backend=%-7s init=%.1f ms warm-up=%.1f ms steady=%.2f ms" % (m["name"], s["backend"], s["create_ms"], s["warmup_ms"], s["steady_ms"]))
    for c in s.get("candidates") or []:
        print("    candidate %-10s %s" % (c["backend"], "%.2f ms" % c["steady_ms"] if c["ok"] else c["error"]))'

echo; echo "== POST /v2/models/mlp/infer"
python3 -c 'import json; print(json.dumps({"inputs": json.load(open("'"$models"'/mlp.json"))["inputs"]}))' \
  | curl -s -H 'content-type: application/json' --data @- "$base/v2/models/mlp/infer" | python3 -m json.tool
