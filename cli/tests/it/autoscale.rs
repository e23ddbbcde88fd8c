//! Per-model autoscaling end to end in `webaccel up`, with real agents and Chromium: a
//! model at zero replicas on a pool at zero browsers is woken by its first request (held
//! at the gateway meanwhile), grows with its own load, and the browsers follow; idle, it
//! goes back to zero and so do the browsers.

use std::time::{Duration, Instant};

use serde_json::Value;
use webaccel_testkit::fixtures::fixture;
use webaccel_testkit::triton::TritonLoad;
use webaccel_testkit::up::{Load, Up, browsers, model, pool, pool_yaml};

fn model_status(s: &Value) -> &Value {
    &model(s, "mlp")["status"]
}

/// One request through the gateway; how long its answer took.
async fn one_request(up: &Up, body: &Value) -> Duration {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/mlp/infer", up.http))
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    started.elapsed()
}

#[tokio::test]
async fn a_model_scales_from_zero_with_its_demand_and_the_browsers_follow() {
    let _machine = webaccel_testkit::alone().await;
    let ch = webaccel_analytics::local::LocalClickHouse::start()
        .await
        .unwrap();
    let pool_spec = "  autoscaling:\n    enabled: true\n    minReplicas: 0\n    maxReplicas: 2\n    targetInFlightPerBrowser: 4\n    scaleUpStabilizationSeconds: 0\n    scaleDownStabilizationSeconds: 20\n";
    let model = format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: mlp\nspec:\n  poolRef: {{name: auto}}\n  model:\n    uri: file://{}\n    task: vision\n  backends: [wasm]\n  autoscaling:\n    minReplicas: 0\n    maxReplicas: 2\n    targetPerReplica: 2\n    stableWindowSeconds: 6\n    panicWindowSeconds: 2\n    scaleToZeroGraceSeconds: 2\n",
        fixture("mlp.onnx").display()
    );
    let up = Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_webaccel")),
        &[
            ("pool.yaml", pool_yaml("auto", pool_spec)),
            ("mlp.yaml", model),
        ],
        &[
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            "up_fleet",
        ]
        .map(str::to_owned),
    );
    // At rest: no replica, no browser, and the deployment is fine with that.
    up.until("the model at zero", Duration::from_secs(30), |s| {
        model_status(s)["desiredReplicas"] == 0 && model_status(s)["autoscaler"].is_object()
    })
    .await;
    let s = up.status().await;
    assert!(browsers(&s, "auto").is_empty(), "{s:#}");
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mlp.json")).unwrap()).unwrap();
    let body = serde_json::json!({"inputs": fixture["inputs"]});

    // The first request waits at the gateway while a browser starts and loads the model.
    let cold = one_request(&up, &body).await;
    let s = up.status().await;
    assert_eq!(model_status(&s)["desiredReplicas"], 1, "{s:#}");
    let reason = model_status(&s)["autoscaler"]["lastScaleReason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("from zero, no browser running: first answer after {cold:?} ({reason})");
    assert!(reason.contains("requests waiting"), "{reason}");

    // Its own load grows the model to two replicas; the pool follows with a second browser.
    let run = Load::start(&up.http, "mlp", &body, 8);
    let s = up
        .until(
            "two replicas on two browsers",
            Duration::from_secs(90),
            |s| model_status(s)["loadedReplicas"] == 2 && browsers(s, "auto").len() == 2,
        )
        .await;
    println!(
        "grown: model {}; pool {}",
        model_status(&s)["autoscaler"]["lastScaleReason"],
        pool(&s, "auto")["status"]["lastScaleReason"]
    );
    run.finish_clean("while the model grew").await;

    // Idle: the model goes to zero (6 s window, 2 s grace) while the browsers stay a while
    // (the pool's 20 s down window); a request then loads it on a running browser.
    up.until("the model back at zero", Duration::from_secs(60), |s| {
        model_status(s)["desiredReplicas"] == 0 && model_status(s)["loadedReplicas"] == 0
    })
    .await;
    let s = up.status().await;
    if !browsers(&s, "auto").is_empty() {
        let warm = one_request(&up, &body).await;
        println!("from zero, a browser running: first answer after {warm:?}");
    }
    // And idle again, the browsers go too.
    up.until("no browser left", Duration::from_secs(120), |s| {
        model_status(s)["desiredReplicas"] == 0
            && pool(s, "auto")["status"]["desiredReplicas"] == 0
            && browsers(s, "auto").is_empty()
    })
    .await;

    // Every decision landed in pool_events, as the operator writes them, and `webaccel
    // chart --kind fleet` draws the browsers and the replicas from them.
    let started = Instant::now();
    let rows = loop {
        let rows = ch
            .query(
                "SELECT event, pool, model, from_replicas, to_replicas FROM up_fleet.pool_events \
                 FINAL WHERE event IN ('scale', 'model_scale') ORDER BY event_time, row_id FORMAT TSV",
            )
            .await
            .unwrap_or_default();
        let ends_at_zero = |event: &str| {
            rows.lines()
                .rfind(|l| l.starts_with(event))
                .is_some_and(|l| l.ends_with("\t0"))
        };
        if ends_at_zero("scale\t") && ends_at_zero("model_scale\t") {
            break rows;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{rows}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("pool_events:\n{rows}");
    assert!(
        rows.lines().any(|l| l == "model_scale\tauto\tmlp\t0\t1"),
        "{rows}"
    );
    assert!(
        rows.lines().any(|l| l == "model_scale\tauto\tmlp\t1\t2"),
        "{rows}"
    );
    assert!(
        rows.lines().any(|l| l.starts_with("scale\tauto\t\t1\t2")),
        "{rows}"
    );
    let svg = up.dir.path().join("fleet.svg");
    let svg_path = svg.to_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webaccel"))
        .args([
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            "up_fleet",
        ])
        .args(["chart", "--kind", "fleet", "-o", svg_path, "--window", "1h"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("2 pools and models"), "{said}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.contains("auto browsers") && drawn.contains("mlp replicas"));
    // Kept as the test's artifact (the README shows one).
    let _ = std::fs::copy(&svg, std::env::temp_dir().join("webaccel-fleet.svg"));
}

fn autoscaled_model(name: &str, min: i32) -> String {
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n  poolRef: {{name: shared}}\n  model:\n    uri: file://{}\n    task: vision\n  backends: [wasm]\n  autoscaling:\n    minReplicas: {min}\n    maxReplicas: 3\n    targetPerReplica: 4\n    stableWindowSeconds: 6\n    panicWindowSeconds: 2\n    scaleToZeroGraceSeconds: 2\n",
        fixture(&format!("{name}.onnx")).display()
    )
}

#[tokio::test]
async fn two_models_share_a_pool_and_the_replicas_follow_the_load_as_it_moves() {
    let _machine = webaccel_testkit::alone().await;
    let pool_spec = "  autoscaling:\n    enabled: true\n    minReplicas: 1\n    maxReplicas: 3\n    targetInFlightPerBrowser: 8\n    scaleUpStabilizationSeconds: 0\n    scaleDownStabilizationSeconds: 10\n";
    let up = Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_webaccel")),
        &[
            ("pool.yaml", pool_yaml("shared", pool_spec)),
            ("mlp.yaml", autoscaled_model("mlp", 1)),
            ("cnn.yaml", autoscaled_model("cnn", 0)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let desired = |s: &Value, m: &str| model(s, m)["status"]["desiredReplicas"].as_i64();
    let loaded = |s: &Value, m: &str| model(s, m)["status"]["loadedReplicas"].as_i64();
    up.until(
        "mlp at its minimum, cnn at zero",
        Duration::from_secs(90),
        |s| loaded(s, "mlp") == Some(1) && desired(s, "cnn") == Some(0),
    )
    .await;

    // 16 clients on mlp: its replicas and the pool's browsers grow; cnn stays at zero.
    let mut load = TritonLoad::start(&up.http, 16);
    load.send("mlp").await;
    let s = up
        .until("mlp on several browsers", Duration::from_secs(120), |s| {
            loaded(s, "mlp").unwrap_or(0) >= 2 && browsers(s, "shared").len() >= 2
        })
        .await;
    println!(
        "hot mlp: {}; pool: {}",
        model(&s, "mlp")["status"]["autoscaler"]["lastScaleReason"],
        pool(&s, "shared")["status"]["lastScaleReason"]
    );
    assert_eq!(desired(&s, "cnn"), Some(0), "the idle model stays at zero");

    // The load moves to cnn: it wakes from zero and grows; mlp goes back to its minimum.
    load.send("cnn").await;
    let s = up
        .until(
            "the replicas followed the load",
            Duration::from_secs(120),
            |s| loaded(s, "cnn").unwrap_or(0) >= 2 && desired(s, "mlp") == Some(1),
        )
        .await;
    println!(
        "hot cnn: {}; idle mlp: {}",
        model(&s, "cnn")["status"]["autoscaler"]["lastScaleReason"],
        model(&s, "mlp")["status"]["autoscaler"]["lastScaleReason"]
    );
    let result = load.finish().await;
    println!("answers: {}", result["ok"]);
    let failed = result["failed"].as_array().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(result["ok"]["mlp"].as_u64().unwrap_or(0) > 0);
    assert!(result["ok"]["cnn"].as_u64().unwrap_or(0) > 0);
}

/// Scale-down loads elsewhere first: two models of one replica each sit on two browsers;
/// the pool shrinks to one, so the browser that goes holds a model's only copy. It is
/// cordoned (serves on, takes nothing new) until that model is loaded on the browser that
/// stays, then drained; no request to either model fails.
#[tokio::test]
async fn a_browser_that_goes_is_cordoned_until_its_model_is_loaded_on_the_one_that_stays() {
    let _machine = webaccel_testkit::alone().await;
    let fixed = |name: &str| {
        webaccel_testkit::up::model_yaml(name, "duo", &fixture(&format!("{name}.onnx")), 1)
    };
    let up = Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_webaccel")),
        &[
            ("pool.yaml", pool_yaml("duo", "  replicas: 2\n")),
            ("mlp.yaml", fixed("mlp")),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let on = |s: &Value, m: &str| -> Vec<String> {
        model(s, m)["status"]["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] == "Loaded")
            .map(|r| r["pod"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // cnn comes once both browsers are up, so it goes to the one without mlp.
    up.until(
        "mlp loaded, both browsers ready",
        Duration::from_secs(120),
        |s| {
            on(s, "mlp").len() == 1
                && browsers(s, "duo")
                    .iter()
                    .filter(|b| b["state"] == "ready")
                    .count()
                    == 2
        },
    )
    .await;
    let cnn_yaml = up.manifests().join("cnn.yaml");
    std::fs::write(&cnn_yaml, fixed("cnn")).unwrap();
    let (ok, out, err) = up.webaccel(&["apply", "-f", cnn_yaml.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let s = up
        .until(
            "each model on a browser of its own",
            Duration::from_secs(120),
            |s| {
                let (a, b) = (on(s, "mlp"), on(s, "cnn"));
                a.len() == 1 && b.len() == 1 && a != b
            },
        )
        .await;
    assert_eq!(browsers(&s, "duo").len(), 2);
    let body = |name: &str| -> Value {
        let f: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        serde_json::json!({"inputs": f["inputs"]})
    };
    let mlp = Load::start(&up.http, "mlp", &body("mlp"), 2);
    let cnn = Load::start(&up.http, "cnn", &body("cnn"), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changed = up.manifests().join("smaller.yaml");
    std::fs::write(&changed, pool_yaml("duo", "  replicas: 1\n")).unwrap();
    let (ok, out, err) = up.webaccel(&["apply", "-f", changed.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let seen_cordoned = std::sync::atomic::AtomicBool::new(false);
    let s = up
        .until("one browser holding both", Duration::from_secs(120), |s| {
            if browsers(s, "duo").iter().any(|b| b["state"] == "cordoned") {
                seen_cordoned.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            browsers(s, "duo").len() == 1 && on(s, "mlp") == on(s, "cnn") && on(s, "mlp").len() == 1
        })
        .await;
    assert!(
        seen_cordoned.load(std::sync::atomic::Ordering::Relaxed),
        "the browser that went was never cordoned: {s:#}"
    );
    let mlp_ok = mlp.finish_clean("to mlp during the scale-down").await;
    let cnn_ok = cnn.finish_clean("to cnn during the scale-down").await;
    println!("served during the scale-down: mlp {mlp_ok}, cnn {cnn_ok}");
}
