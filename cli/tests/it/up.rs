//! Local mode end to end: `webaccel up` with real agents and Chromium, the gateway in
//! front, ClickHouse behind; driven by stock clients and by `webaccel apply`/`status`.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use webaccel_analytics::local::LocalClickHouse;
use webaccel_testkit::fixtures::{fixture, python_client, python_client_with, repo};
use webaccel_testkit::procs::mentioning as processes_mentioning;
use webaccel_testkit::up::{
    self as driver, Load, Up, browser_names, browsers, loaded, pool, pool_yaml,
};

fn model_yaml(name: &str, pool: &str, file: &str, replicas: i32) -> String {
    driver::model_yaml(name, pool, &fixture(file), replicas)
}

/// `webaccel up` (this build) over `manifests`, recording into `clickhouse` or nowhere.
fn start(manifests: &[(&str, String)], clickhouse: Option<&str>) -> Up {
    let extra: Vec<String> = match clickhouse {
        Some(url) => ["--clickhouse-url", url, "--clickhouse-database", "up_test"]
            .map(str::to_owned)
            .to_vec(),
        None => vec!["--no-clickhouse".to_owned()],
    };
    Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_webaccel")),
        manifests,
        &extra,
    )
}

fn mlp_load(up: &Up, clients: usize) -> Load {
    Load::start(&up.http, "mlp", &mlp_body(), clients)
}
fn mlp_body() -> Value {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mlp.json")).unwrap()).unwrap();
    serde_json::json!({"inputs": fixture["inputs"]})
}

#[tokio::test]
async fn up_serves_every_model_through_the_gateway_and_records_rows() {
    let _machine = webaccel_testkit::alone().await;
    let ch = LocalClickHouse::start().await.unwrap();
    let manifests = [
        ("pool.yaml", pool_yaml("cpu", "  replicas: 1\n")),
        ("mlp.yaml", model_yaml("mlp", "cpu", "mlp.onnx", 1)),
        ("cnn.yaml", model_yaml("cnn", "cpu", "cnn.onnx", 1)),
        (
            "transformer.yaml",
            model_yaml("transformer", "cpu", "transformer.onnx", 1),
        ),
        ("types.yaml", model_yaml("types", "cpu", "types.onnx", 1)),
    ];
    let up = start(&manifests, Some(&ch.url()));
    up.until("every model loaded", Duration::from_secs(120), |s| {
        ["mlp", "cnn", "transformer", "types"]
            .iter()
            .all(|m| loaded(s, m, 1))
    })
    .await;
    up.until_gateway_ready(
        &["mlp", "cnn", "transformer", "types"],
        Duration::from_secs(30),
    )
    .await;
    let (ok, out, _) = up.webaccel(&["status"]);
    assert!(
        ok && out.contains("BROWSERPOOL") && out.contains("cpu"),
        "{out}"
    );
    let out = python_client("triton_http.py", &up.http).await;
    assert!(out.contains("ok types mixed"), "{out}");
    let out = python_client("triton_grpc.py", &up.grpc).await;
    assert!(out.contains("ok types defaults"), "{out}");
    // Asked for, the answer's stages: the gateway's around the agent's and the page's,
    // all inside what the client waited.
    let out = python_client_with("triton_stages.py", &up.http, &["mlp", "20"]).await;
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let params = &v["parameters"];
        let mut total = 0.0;
        for stage in webaccel_api::timing::Stage::ALL {
            if stage == webaccel_api::timing::Stage::Send {
                continue;
            }
            let ms = params[format!("stage_{}_ms", stage.as_str())].as_f64();
            let ms = ms.unwrap_or_else(|| panic!("no {} in {params}", stage.as_str()));
            assert!(ms >= 0.0, "{params}");
            total += ms;
        }
        assert!(params["stage_bridge_ms"].as_f64() > Some(0.0), "{params}");
        assert!(total < v["client_ms"].as_f64().unwrap(), "{v}");
    }
    // Rows landed: the agents' per-request rows and the gateway's.
    let started = Instant::now();
    loop {
        let agent_rows = ch
            .query("SELECT count() FROM up_test.inference_performance")
            .await
            .unwrap_or_default();
        let gateway_rows = ch
            .query("SELECT count() FROM up_test.gateway_requests WHERE outcome = 'ok'")
            .await
            .unwrap_or_default();
        let n = |t: &str| t.trim().parse::<u64>().unwrap_or(0);
        if n(&agent_rows) > 10 && n(&gateway_rows) > 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rows: agents {agent_rows}, gateway {gateway_rows}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The gateway's rows carry the whole path: its stages and the agent's tile the
    // latency it measured (from the decoded request; `receive` is before it). The page's
    // clock ticks in 5 µs steps, so its shortest stages may read 0 on one request.
    let tiled = ch
        .query(
            "SELECT min(bridge_ms) > 0, min(route_ms) > 0, max(decode_ms) > 0, \
             max(abs(route_ms + bridge_ms + agent_queue_ms + page_link_ms + page_queue_ms \
                 + decode_ms + compute_ms + encode_ms + agent_reply_ms + gateway_reply_ms \
                 - latency_ms)) < 0.05 \
             FROM up_test.gateway_requests WHERE outcome = 'ok'",
        )
        .await
        .unwrap();
    let worst = ch
        .query(
            "SELECT model, attempts, latency_ms, route_ms, bridge_ms, agent_queue_ms, \
             page_link_ms, page_queue_ms, decode_ms, compute_ms, encode_ms, agent_reply_ms, \
             gateway_reply_ms FROM up_test.gateway_requests WHERE outcome = 'ok' \
             ORDER BY abs(route_ms + bridge_ms + agent_queue_ms + page_link_ms + page_queue_ms \
                 + decode_ms + compute_ms + encode_ms + agent_reply_ms + gateway_reply_ms \
                 - latency_ms) DESC LIMIT 3",
        )
        .await
        .unwrap_or_default();
    assert_eq!(
        tiled.trim(),
        "1\t1\t1\t1",
        "rows furthest from adding up:\n{worst}"
    );
}

#[tokio::test]
async fn load_grows_the_pool_idle_shrinks_it_and_no_request_fails() {
    let _machine = webaccel_testkit::alone().await;
    let spec = "  autoscaling:\n    enabled: true\n    minReplicas: 1\n    maxReplicas: 2\n    targetInFlightPerBrowser: 2\n    scaleUpStabilizationSeconds: 0\n    scaleDownStabilizationSeconds: 5\n";
    let up = start(
        &[
            ("pool.yaml", pool_yaml("auto", spec)),
            ("mlp.yaml", model_yaml("mlp", "auto", "mlp.onnx", 1)),
        ],
        None,
    );
    up.until("mlp loaded", Duration::from_secs(90), |s| {
        loaded(s, "mlp", 1)
    })
    .await;
    let run = mlp_load(&up, 8);
    let s = up
        .until("the pool at its maximum", Duration::from_secs(60), |s| {
            pool(s, "auto")["status"]["desiredReplicas"] == 2
                && pool(s, "auto")["status"]["readyReplicas"] == 2
        })
        .await;
    println!("grown: {}", pool(&s, "auto")["status"]["lastScaleReason"]);
    run.finish_clean("while the pool grew").await;
    // Idle: back to one browser, the other drained first.
    let light = mlp_load(&up, 1);
    up.until(
        "the pool back at its minimum",
        Duration::from_secs(60),
        |s| pool(s, "auto")["status"]["desiredReplicas"] == 1 && browsers(s, "auto").len() == 1,
    )
    .await;
    light.finish_clean("while the pool shrank").await;
}

#[tokio::test]
async fn a_killed_agent_is_replaced_and_a_changed_pool_rolls_without_failures() {
    let _machine = webaccel_testkit::alone().await;
    let up = start(
        &[
            (
                "pool.yaml",
                pool_yaml("roll", "  replicas: 2\n  maxInFlightPerBrowser: 32\n"),
            ),
            ("mlp.yaml", model_yaml("mlp", "roll", "mlp.onnx", 2)),
        ],
        None,
    );
    let s = up
        .until("mlp on both", Duration::from_secs(120), |s| {
            loaded(s, "mlp", 2)
        })
        .await;
    // SIGKILL one agent: it is replaced and the model placed again.
    let victim = browsers(&s, "roll")[0].clone();
    let pid = i32::try_from(victim["pid"].as_i64().unwrap()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = up
        .until(
            "the killed browser replaced",
            Duration::from_secs(90),
            |s| {
                let names = browser_names(s, "roll");
                !names.iter().any(|n| n == victim["name"].as_str().unwrap()) && loaded(s, "mlp", 2)
            },
        )
        .await;
    // Its browsers went with it (they name the agent's own cache folder).
    let victim_cache = format!("/{}/cache", victim["name"].as_str().unwrap());
    let started = Instant::now();
    while !processes_mentioning(&victim_cache).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the killed agent's browsers outlived it: {:?}",
            processes_mentioning(&victim_cache)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before: Vec<String> = browser_names(&s, "roll");
    // A changed pool (what a browser is built from) rolls, one browser at a time, under load.
    let run = mlp_load(&up, 4);
    let changed = up.manifests().join("changed.yaml");
    std::fs::write(
        &changed,
        pool_yaml("roll", "  replicas: 2\n  maxInFlightPerBrowser: 48\n"),
    )
    .unwrap();
    let (ok, out, err) = up.webaccel(&["apply", "-f", changed.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("browserpool.webaccel.dev/roll configured"),
        "{out}"
    );
    up.until("the pool rolled", Duration::from_secs(180), |s| {
        let names = browser_names(s, "roll");
        names.len() == 2
            && names.iter().all(|n| !before.iter().any(|b| b == n))
            && loaded(s, "mlp", 2)
    })
    .await;
    run.finish_clean("during the roll").await;
}

#[tokio::test]
async fn bad_manifests_are_refused_with_the_api_servers_messages() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        pool_yaml("bad", "  replicas: 2000\n  autoscaling:\n    enabled: true\n    minReplicas: 3\n    maxReplicas: 2\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_webaccel"))
        .args(["up", "--no-clickhouse", "-f"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("The BrowserPool \"bad\" is invalid"), "{err}");
    assert!(err.contains("spec.replicas"), "{err}");
    assert!(
        err.contains("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"),
        "{err}"
    );
}

#[tokio::test]
async fn nothing_outlives_a_killed_up() {
    let _machine = webaccel_testkit::alone().await;
    let mut up = start(
        &[
            ("pool.yaml", pool_yaml("p", "  replicas: 1\n")),
            ("mlp.yaml", model_yaml("mlp", "p", "mlp.onnx", 1)),
        ],
        None,
    );
    up.until("mlp loaded", Duration::from_secs(90), |s| {
        loaded(s, "mlp", 1)
    })
    .await;
    let data = up.dir.path().join("data").display().to_string();
    let before = processes_mentioning(&data);
    assert!(before.len() >= 3, "an agent and its browsers: {before:?}");
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    let started = Instant::now();
    loop {
        let left = processes_mentioning(&data);
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "left behind by a killed `webaccel up`: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} processes gone {:?} after SIGKILL of webaccel up",
        before.len(),
        started.elapsed()
    );
}

/// `make_quantized.py` into `dir`: the fixture transformer in fp32 and int8 (its
/// `quantized.json` says which precision each file has).
fn make_quantized(dir: &std::path::Path) {
    let out = Command::new("python3")
        .arg(repo().join("node-agent/tests/fixtures/make_quantized.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_quantized.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The digest `/v1/repository/models` reports for `model` on every browser of `pool` that holds it
/// loaded.
async fn loaded_digests(up: &Up, s: &Value, pool: &str, model: &str) -> Vec<String> {
    let mut out = Vec::new();
    for browser in browser_names(s, pool) {
        let list: webaccel_api::agent::ModelList =
            up.agent_get(s, &browser, "/v1/repository/models").await;
        for m in list.models.iter().filter(|m| m.name == model) {
            if let webaccel_api::agent::ModelState::Loaded(l) = &m.status {
                out.push(l.sha256.clone());
            }
        }
    }
    out
}

#[tokio::test]
async fn up_reports_the_operators_status_reloads_a_changed_file_and_unloads_a_deleted_model() {
    let _machine = webaccel_testkit::alone().await;
    let files = tempfile::tempdir().unwrap();
    make_quantized(files.path());
    let tx = files.path().join("tx.onnx");
    std::fs::copy(files.path().join("transformer_fp32.onnx"), &tx).unwrap();
    let up = start(
        &[
            ("pool.yaml", pool_yaml("life", "  replicas: 2\n")),
            ("tx.yaml", driver::model_yaml("tx", "life", &tx, 1)),
            (
                "q8.yaml",
                driver::model_yaml(
                    "q8",
                    "life",
                    &files.path().join("transformer_int8_dynamic.onnx"),
                    1,
                ),
            ),
        ],
        None,
    );
    let s = up
        .until("both models loaded", Duration::from_secs(120), |s| {
            loaded(s, "tx", 1) && loaded(s, "q8", 1)
        })
        .await;
    // The statuses the operator writes: the precision the agents detected, per replica
    // and for the deployment; the pool's counts and conditions.
    let q8 = &driver::model(&s, "q8")["status"];
    assert_eq!(q8["precision"], "int8", "{q8:#}");
    assert_eq!(q8["replicas"][0]["precision"], "int8", "{q8:#}");
    assert_eq!(q8["observedGeneration"], 1, "{q8:#}");
    assert_eq!(driver::model(&s, "tx")["status"]["precision"], "fp32");
    let life = &pool(&s, "life")["status"];
    assert_eq!(
        (
            life["desiredReplicas"].as_i64(),
            life["readyReplicas"].as_i64()
        ),
        (Some(2), Some(2)),
        "{life:#}"
    );
    assert!(
        life["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{life:#}"
    );
    let (ok, text, err) = up.webaccel(&["status"]);
    assert!(
        ok && text.contains("q8") && text.contains("Loaded/wasm"),
        "{text}{err}"
    );

    // The file under tx changes (same name, same manifest): a copy of the new file is
    // loaded on the other browser while the old one serves, then the old one goes.
    let before = loaded_digests(&up, &s, "life", "tx").await;
    assert_eq!(before.len(), 1, "{before:?}");
    let body: Value = {
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(files.path().join("transformer_fp32.json")).unwrap(),
        )
        .unwrap();
        serde_json::json!({"inputs": reference["inputs"]})
    };
    let run = Load::start(&up.http, "tx", &body, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let int8 = files.path().join("transformer_int8_dynamic.onnx");
    std::fs::copy(&int8, files.path().join("tx.next")).unwrap();
    std::fs::rename(files.path().join("tx.next"), &tx).unwrap();
    let s = up
        .until(
            "tx reloaded from the new file",
            Duration::from_secs(90),
            |s| {
                let tx = &driver::model(s, "tx")["status"];
                tx["precision"] == "int8"
                    && tx["loadedReplicas"] == 1
                    && tx["replicas"].as_array().is_some_and(|r| r.len() == 1)
            },
        )
        .await;
    run.finish_clean("during the reload").await;
    let after = loaded_digests(&up, &s, "life", "tx").await;
    let want = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&int8).unwrap()))
    };
    assert_eq!(after, [want], "one copy, of the new file");

    // Deleting a deployment unloads it everywhere, and the gateway stops serving it.
    let q8_yaml = up.manifests().join("q8.yaml");
    let (ok, out, err) = up.webaccel(&["delete", "-f", q8_yaml.to_str().unwrap()]);
    assert!(
        ok && out.contains("modeldeployment.webaccel.dev \"q8\" deleted"),
        "{out}{err}"
    );
    let s = up
        .until("q8 gone from the status", Duration::from_secs(10), |s| {
            driver::model(s, "q8").is_null()
        })
        .await;
    let started = Instant::now();
    loop {
        let held = loaded_digests(&up, &s, "life", "q8").await;
        let ready = reqwest::get(format!("{}/v2/models/q8/ready", up.http))
            .await
            .unwrap()
            .status();
        if held.is_empty() && ready != 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "q8 still held {held:?} or ready ({ready}) after its deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let infer = reqwest::Client::new()
        .post(format!("{}/v2/models/q8/infer", up.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        infer.status(),
        404,
        "a deleted model is unknown to the gateway"
    );
}

/// The generation example's ModelDeployment, with its files at their absolute paths.
fn llm_yaml() -> String {
    let example = std::fs::read_to_string(repo().join("examples/generation/llm.yaml")).unwrap();
    example.replace(
        "file://../../node-agent/tests/fixtures/models/decoder/",
        &format!("file://{}/", fixture("decoder").display()),
    )
}

#[tokio::test]
async fn up_serves_text_generation_to_the_openai_client_and_records_each_generation() {
    let _machine = webaccel_testkit::alone().await;
    let ch = LocalClickHouse::start().await.unwrap();
    let pool = std::fs::read_to_string(repo().join("examples/generation/pool.yaml")).unwrap();
    let up = start(
        &[("pool.yaml", pool), ("llm.yaml", llm_yaml())],
        Some(&ch.url()),
    );
    up.until("llm loaded", Duration::from_secs(120), |s| {
        loaded(s, "llm", 1)
    })
    .await;
    // The stock OpenAI client on the gateway, beside KServe v2, against onnxruntime.
    let out = python_client("openai_generate.py", &up.http).await;
    assert!(out.contains("all checks passed"), "{out}");
    // One row per generation landed, with its figures.
    let started = Instant::now();
    loop {
        let rows = ch
            .query(
                "SELECT count(), sum(completion_tokens), min(ttft_ms) > 0, any(kv_cache) \
                 FROM up_test.generation_performance \
                 WHERE model = 'llm' AND outcome = 'ok' AND finish_reason = 'length' FORMAT TSV",
            )
            .await
            .unwrap_or_default();
        let fields: Vec<&str> = rows.split_whitespace().collect();
        if fields.first().and_then(|n| n.parse::<u64>().ok()) >= Some(10) {
            assert_eq!(fields[2], "1", "{rows}");
            assert_eq!(fields[3], "fp32", "{rows}");
            // Each ran to its max_tokens (24, or 4 for the log-probability checks).
            let (count, tokens) = (
                fields[0].parse::<u64>().unwrap(),
                fields[1].parse::<u64>().unwrap(),
            );
            assert!(tokens >= 4 * count, "{rows}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "generation rows: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
