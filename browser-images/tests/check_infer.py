#!/usr/bin/env python3
"""One KServe v2 JSON inference against a running agent, compared with the onnxruntime
reference outputs of a fixture (node-agent/tests/fixtures/models/<model>.json).

usage: check_infer.py BASE_URL TOKEN_FILE FIXTURE_JSON
Exit status 0 when every output matches within abs 1e-5 + rel 1e-4, 1 otherwise.
"""
import json
import sys
import urllib.error
import urllib.request

import numpy as np

ABS_TOL, REL_TOL = 1e-5, 1e-4


def request(url, token, body=None, timeout=60):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def main():
    base, token_file, fixture_path = sys.argv[1:4]
    token = open(token_file).read().strip()
    fixture = json.load(open(fixture_path))
    model = fixture["model"]

    # The token is enforced: the same request without it is refused.
    try:
        urllib.request.urlopen(f"{base}/v2/models/{model}", timeout=10)
        print("check: /v2/models without the token was accepted", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as e:
        if e.code != 401:
            print(f"check: /v2/models without the token gave {e.code}, not 401", file=sys.stderr)
            return 1

    status, caps = request(f"{base}/v1/capabilities", token)
    if status == 200:
        print(f"check: browser {caps.get('browser', {}).get('version', '?')}")

    body = {"inputs": fixture["inputs"]}
    status, reply = request(f"{base}/v2/models/{model}/infer", token, body)
    if status != 200:
        print(f"check: POST /v2/models/{model}/infer gave {status}: {reply}", file=sys.stderr)
        return 1
    got = {o["name"]: o for o in reply.get("outputs", [])}
    ok = True
    for want in fixture["outputs"]:
        name = want["name"]
        if name not in got:
            print(f"check: output {name} missing from the reply {sorted(got)}", file=sys.stderr)
            ok = False
            continue
        out = got[name]
        if list(out["shape"]) != list(want["shape"]) or out["datatype"] != want["datatype"]:
            print(f"check: output {name} is {out['datatype']}{out['shape']}, want "
                  f"{want['datatype']}{want['shape']}", file=sys.stderr)
            ok = False
            continue
        a = np.asarray(out["data"], dtype=np.float64).reshape(want["shape"])
        b = np.asarray(want["data"], dtype=np.float64).reshape(want["shape"])
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        if not np.allclose(a, b, atol=ABS_TOL, rtol=REL_TOL):
            print(f"check: output {name} differs from onnxruntime: max abs error {err:.3g}", file=sys.stderr)
            ok = False
        else:
            print(f"check: output {name} {want['datatype']}{want['shape']} matches onnxruntime "
                  f"(max abs error {err:.3g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
