#!/usr/bin/env python3
"""Runs webaccel's modern-server DDL and analysis queries in chdb (current ClickHouse,
in process), to prove the SQL generated for modern servers is valid there too.

Reads {"ddl": [...], "queries": [...]} as JSON on stdin; prints {"rows": [n, ...]}
(rows each query returned) and exits non-zero on the first failing statement.

Or reads {"migrations": [{"sql": ..., "exists": ...}, ...]}: runs each migration twice,
its `exists` query before, between and after, and prints {"outcomes": [[before, after
first, after second, second failed], ...]}: what a migrator that lost a race sees."""

import json
import sys

from chdb import session


def count(s, sql) -> int:
    out = s.query(sql, "JSONCompact")
    return int(json.loads(out.bytes())["data"][0][0])


def outcomes(spec) -> int:
    s = session.Session()
    s.query("CREATE DATABASE IF NOT EXISTS webaccel_outcomes")
    s.query("USE webaccel_outcomes")
    seen = []
    for m in spec["migrations"]:
        before = count(s, m["exists"])
        s.query(m["sql"])
        first = count(s, m["exists"])
        try:
            s.query(m["sql"])
            failed = False
        except Exception:  # noqa: BLE001 - a second ADD COLUMN is refused; that is the point
            failed = True
        seen.append([before, first, count(s, m["exists"]), failed])
    print(json.dumps({"outcomes": seen}))
    return 0


def main() -> int:
    spec = json.load(sys.stdin)
    if "migrations" in spec:
        return outcomes(spec)
    s = session.Session()
    s.query("CREATE DATABASE IF NOT EXISTS webaccel")
    s.query("USE webaccel")
    for sql in spec["ddl"]:
        try:
            s.query(sql)
        except Exception as e:  # noqa: BLE001 - report any engine error with its SQL
            print(f"DDL failed: {e}\n{sql}", file=sys.stderr)
            return 1
    values = ",".join(
        f"(now64(3) - INTERVAL {k} SECOND, {k + 1}, 'm{(k // 2) % 2}', 'vision', 'chromium', '{b}', {1.0 + k / 10}, 1, 'ok')"
        for k, b in enumerate(["wasm", "webgpu"] * 20)
    )
    s.query(
        "INSERT INTO inference_performance "
        "(event_time, row_id, model, task, browser, backend, latency_ms, batch_size, outcome) VALUES " + values
    )
    generations = ",".join(
        f"(now64(3) - INTERVAL {k} SECOND, {k + 1}, 'g{k % 2}', 'wasm', 'fp32', 16, 64, {10.0 + k}, 2.0, 500.0, 'ok')"
        for k in range(20)
    )
    s.query(
        "INSERT INTO generation_performance (event_time, row_id, model, backend, kv_cache, "
        "prompt_tokens, completion_tokens, ttft_ms, inter_token_p50_ms, tokens_per_s, outcome) VALUES "
        + generations
    )
    counts = []
    for sql in spec["queries"]:
        try:
            out = s.query(sql, "JSONCompact")
        except Exception as e:  # noqa: BLE001
            print(f"query failed: {e}\n{sql}", file=sys.stderr)
            return 1
        counts.append(len(json.loads(out.bytes() or b'{"data": []}')["data"]))
    print(json.dumps({"rows": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
