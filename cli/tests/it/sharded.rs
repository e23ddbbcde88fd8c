//! A model cut into stages, end to end in local mode: the fixture transformer
//! (shape-inferred) cut by `webaccel shard` into 2 and into 3 stages, both deployed with
//! `stages` on a pool of three real Chromium browsers; the stock `tritonclient` (HTTP at
//! its defaults, HTTP with JSON outputs, gRPC) through the gateway gets what native
//! onnxruntime computes with the whole model, and every agent holds only stages, never
//! two of the same deployment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use webaccel_testkit::fixtures::{fixture, repo};
use webaccel_testkit::up::{Up, browser_names, degraded, loaded, model, pool_yaml};

use crate::common::run;
use serde_json::Value;
use webaccel_api::agent::{ModelList, ModelState};
/// `webaccel shard MODEL --stages N --out DIR`; the stage files with their digests.
fn shard(model: &Path, stages: usize, out: &Path) -> Vec<(PathBuf, String)> {
    run(
        Command::new(env!("CARGO_BIN_EXE_webaccel"))
            .arg("shard")
            .arg(model)
            .args(["--stages", &stages.to_string(), "--out"])
            .arg(out)
            .env("RUST_LOG", "warn"),
        "webaccel shard",
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("stages.json")).unwrap()).unwrap();
    index["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                out.join(s["file"].as_str().unwrap()),
                s["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A ModelDeployment of `stages` (file, sha256) on the wasm backend.
fn staged_yaml(name: &str, pool: &str, stages: &[(PathBuf, String)]) -> String {
    let list: Vec<String> = stages
        .iter()
        .map(|(file, sha)| {
            format!(
                "  - uri: file://{}\n    sha256: {sha}\n    task: text-embedding\n",
                file.display()
            )
        })
        .collect();
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n  poolRef: {{name: {pool}}}\n  stages:\n{}  backends: [wasm]\n  replicas: 1\n",
        list.concat()
    )
}

/// What each agent of the pool holds: browser name → (model, bytes) of its loaded models.
async fn holdings(up: &Up, status: &Value) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut out = BTreeMap::new();
    for name in browser_names(status, "trio") {
        let list: ModelList = up.agent_get(status, &name, "/v1/repository/models").await;
        let held = list
            .models
            .iter()
            .filter_map(|m| match &m.status {
                ModelState::Loaded(l) => Some((m.name.clone(), l.bytes)),
                _ => None,
            })
            .collect();
        out.insert(name, held);
    }
    out
}

#[tokio::test]
async fn a_model_cut_in_two_and_in_three_is_served_as_one_through_the_gateway() {
    let _machine = webaccel_testkit::alone().await;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("transformer.onnx");
    run(
        Command::new("python3")
            .arg(repo().join("onnx/tests/run_stages.py"))
            .arg("infer")
            .arg(fixture("transformer.onnx"))
            .arg(&whole),
        "shape inference",
    );
    let whole_bytes = std::fs::metadata(&whole).unwrap().len();
    let two = shard(&whole, 2, &dir.path().join("two"));
    let three = shard(&whole, 3, &dir.path().join("three"));

    let up = Up::start(
        Path::new(env!("CARGO_BIN_EXE_webaccel")),
        &[
            ("pool.yaml", pool_yaml("trio", "  replicas: 3\n")),
            ("tf2.yaml", staged_yaml("tf2", "trio", &two)),
            ("tf3.yaml", staged_yaml("tf3", "trio", &three)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let status = up
        .until("every stage loaded", Duration::from_secs(75), |s| {
            loaded(s, "tf2", 1) && loaded(s, "tf3", 1)
        })
        .await;
    println!("loaded after {:?}", started.elapsed());
    // Per-stage status: each stage on one browser, the pipeline not degraded.
    for (name, n) in [("tf2", 2), ("tf3", 3)] {
        let m = model(&status, name);
        let stages = m["status"]["stages"].as_array().unwrap();
        assert_eq!(stages.len(), n, "{m}");
        for (i, s) in stages.iter().enumerate() {
            assert_eq!(s["model"], format!("{name}.stage{i}"));
            assert_eq!(s["loadedReplicas"], 1, "{m}");
        }
        assert!(!degraded(m), "{m}");
    }
    let (ok, text, err) = up.webaccel(&["status"]);
    assert!(ok, "{err}");
    println!("{text}");
    assert!(
        text.contains("stage0[") && text.contains("stage2["),
        "the stages in `webaccel status`:\n{text}"
    );

    // Each agent holds stages only, each smaller than the whole model, and never two
    // stages of one deployment.
    let held = holdings(&up, &status).await;
    assert_eq!(held.len(), 3, "{held:?}");
    let mut stages_seen = 0;
    for (browser, models) in &held {
        for deployment in ["tf2", "tf3"] {
            let mine: Vec<&(String, u64)> = models
                .iter()
                .filter(|(m, _)| m.starts_with(&format!("{deployment}.stage")))
                .collect();
            assert!(mine.len() <= 1, "{browser} holds {mine:?}");
            stages_seen += mine.len();
        }
        for (m, bytes) in models {
            assert!(m.contains(".stage"), "{browser} holds {m}");
            assert!(
                *bytes < whole_bytes,
                "{browser}: {m} is {bytes} bytes, the whole model {whole_bytes}"
            );
        }
    }
    assert_eq!(stages_seen, 5, "{held:?}");

    // The stock client through the gateway, against onnxruntime on the whole model.
    let out = run(
        Command::new("python3")
            .arg(repo().join("cli/tests/sharded_http.py"))
            .arg(&up.http)
            .arg(&up.grpc)
            .arg(&whole)
            .arg(fixture("transformer.json"))
            .args(["tf2", "tf3"]),
        "sharded_http.py",
    );
    println!("{out}");
    for line in out.lines() {
        let report: Value = serde_json::from_str(line).unwrap();
        let p = &report["parameters"];
        let stages = if report["model"] == "tf2" { 2 } else { 3 };
        assert_eq!(p["stages"], stages, "{report}");
        let browsers: Vec<&str> = p["browser"].as_str().unwrap().split(',').collect();
        assert_eq!(browsers.len(), stages, "one browser per stage: {report}");
        let mut distinct = browsers.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            stages,
            "each stage on its own browser: {report}"
        );
    }
    assert_eq!(out.lines().count(), 2);
    println!("done after {:?}", started.elapsed());
}
