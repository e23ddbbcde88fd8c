//! The analysis queries on a real ClickHouse server, on synthetic data with known
//! answers: the known-best browser and backend is recommended, an injected slowdown is
//! found with the right severity, noise alone raises nothing, trends bucket correctly;
//! the overview figures behind reports and charts count and filter exactly.

use std::time::Duration;

use webaccel_analytics::overview;
use webaccel_analytics::queries::{self, Measure, RegressionParams, Scope, Severity};
use webaccel_analytics::rows::{GenerationRow, InferenceRow, now_ms};
use webaccel_analytics::schema::migrate;
use webaccel_analytics::server;

const DB: &str = "webaccel_queries_test";

/// Deterministic noise in [-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// `n` rows of one series around `center` ms, `ago_s` seconds ago.
#[allow(clippy::too_many_arguments)] // a table of test data reads best as one call per series
fn rows(
    model: &str,
    browser: &str,
    backend: &str,
    ago_s: i64,
    n: usize,
    center: f64,
    spread: f64,
    rng: &mut Lcg,
) -> Vec<InferenceRow> {
    (0..n)
        .map(|k| {
            // Spread over one minute ending `ago_s` seconds ago.
            let at = now_ms() - ago_s * 1000 - (k as i64 % 60) * 1000;
            InferenceRow::synthetic(model, browser, backend, at, center + spread * rng.next())
        })
        .collect()
}

#[tokio::test]
async fn recommendations_regressions_and_trends_have_the_known_answers() {
    let ch = crate::common::start().await;
    let settings = ch.settings(DB);
    let report = migrate(&settings).await.unwrap();
    let client = settings.client(true);
    let features = server::detect(&client).await.unwrap();
    assert_eq!(features, report.features);

    let mut rng = Lcg(42);
    let mut all = Vec::new();
    // m1: webgpu in Chromium is clearly the fastest.
    all.extend(rows(
        "m1", "chromium", "webgpu", 300, 300, 3.0, 0.3, &mut rng,
    ));
    all.extend(rows("m1", "chromium", "wasm", 300, 300, 5.0, 0.5, &mut rng));
    all.extend(rows("m1", "edge", "wasm", 300, 300, 8.0, 0.5, &mut rng));
    // m2 got 30 % slower in the last half hour; m3 only jitters.
    all.extend(rows(
        "m2", "chromium", "wasm", 7200, 500, 10.0, 1.0, &mut rng,
    ));
    all.extend(rows(
        "m2", "chromium", "wasm", 600, 200, 13.0, 1.0, &mut rng,
    ));
    all.extend(rows(
        "m3", "chromium", "wasm", 7200, 500, 10.0, 1.0, &mut rng,
    ));
    all.extend(rows(
        "m3", "chromium", "wasm", 600, 200, 10.0, 1.0, &mut rng,
    ));
    // m4: Firefox is 20 % faster at the median but one request in ten takes 60 ms (a long
    // tail): the tail must not hide a clear difference of medians.
    let mut tailed = rows("m4", "firefox", "wasm", 300, 200, 2.0, 0.2, &mut rng);
    for r in tailed.iter_mut().step_by(10) {
        r.latency_ms = 60.0;
    }
    all.extend(tailed);
    all.extend(rows("m4", "chromium", "wasm", 300, 200, 2.5, 0.2, &mut rng));
    crate::common::insert_rows(&client, &all).await;

    let recs = queries::recommend(
        &client,
        features,
        Scope::Model,
        Duration::from_secs(3600),
        30,
    )
    .await
    .unwrap();
    let m1 = recs.iter().find(|r| r.key == "m1").unwrap();
    assert_eq!(
        (m1.browser.as_str(), m1.backend.as_str(), m1.samples),
        ("chromium", "webgpu", 300),
        "{recs:?}"
    );
    assert!((m1.p50_ms - 3.0).abs() < 0.1, "{m1:?}");
    assert!(m1.confidence > 0.999, "{m1:?}");
    assert_eq!(m1.runner_up.as_ref().map(|r| r.1.as_str()), Some("wasm"));
    let m4 = recs.iter().find(|r| r.key == "m4").unwrap();
    assert_eq!(m4.browser, "firefox", "{m4:?}");
    assert!(
        m4.confidence > 0.99,
        "a long tail swamped the medians' difference: {m4:?}"
    );
    let by_task = queries::recommend(
        &client,
        features,
        Scope::Task,
        Duration::from_secs(3600),
        30,
    )
    .await
    .unwrap();
    assert_eq!(by_task.len(), 1);
    assert_eq!(by_task[0].key, "vision");

    let params = RegressionParams {
        recent: Duration::from_secs(1800),
        baseline: Duration::from_secs(3 * 3600),
        min_samples: 30,
        alpha: 0.01,
    };
    let found = queries::detect_regressions(&client, features, params)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let r = &found[0];
    assert_eq!(
        (r.model.as_str(), r.severity),
        ("m2", Severity::Major),
        "{r:?}"
    );
    assert!((r.change_pct - 30.0).abs() < 5.0, "{r:?}");
    assert!(r.p_value < 1e-6, "{r:?}");
    queries::record_regressions(&client, &found).await.unwrap();
    let stored = crate::common::query(
        &ch,
        &format!("SELECT model, severity FROM {DB}.regressions"),
    )
    .await;
    assert_eq!(stored, "m2\tmajor");

    let points = queries::trends(
        &client,
        features,
        Duration::from_secs(3 * 3600),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let m2: Vec<_> = points.iter().filter(|p| p.model == "m2").collect();
    assert!(m2.len() >= 2, "{m2:?}");
    assert_eq!(m2.iter().map(|p| p.requests).sum::<u64>(), 700);
    let last = m2.last().unwrap();
    assert!(
        (last.p50 - 13.0).abs() < 0.3 && last.p95 >= last.p50 && last.p99 >= last.p95,
        "{last:?}"
    );
    assert!(m2.windows(2).all(|w| w[0].bucket < w[1].bucket));
}

#[tokio::test]
async fn overview_figures_have_the_known_answers() {
    const DB: &str = "webaccel_overview_test";
    let ch = crate::common::start().await;
    let settings = ch.settings(DB);
    migrate(&settings).await.unwrap();
    let client = settings.client(true);
    let features = server::detect(&client).await.unwrap();
    // A quote in the name: the model filter must travel as a bound value.
    let tricky = "m'1\\";
    // The rows lie 60 to 170 s before `now` and the latency check wants them in one
    // hourly bucket: in the first 200 s of an hour, `now` moves back to the hour's start.
    let real_now = now_ms() / 1000 * 1000;
    let into_hour = real_now % 3_600_000;
    let now = if into_hour < 200_000 {
        real_now - into_hour
    } else {
        real_now
    };
    let mut all = Vec::new();
    // 100 successes over exactly 50 distinct seconds (2 per second), latency 1..=100.
    for k in 0..100i64 {
        let at = now - 120_000 - (k % 50) * 1000;
        all.push(InferenceRow::synthetic(
            tricky,
            "chromium",
            "wasm",
            at,
            (k + 1) as f64,
        ));
    }
    for k in 0..10i64 {
        all.push(InferenceRow {
            outcome: "error".into(),
            ..InferenceRow::synthetic(tricky, "chromium", "wasm", now - 120_000 - k * 1000, 999.0)
        });
    }
    all.push(InferenceRow::synthetic(
        "m2",
        "edge",
        "webgpu",
        now - 60_000,
        5.0,
    ));
    let mut insert = client
        .insert::<InferenceRow>("inference_performance")
        .await
        .unwrap();
    for r in &all {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
    let hour = Duration::from_secs(3600);

    let s = overview::summary(&client, features, hour).await.unwrap();
    assert_eq!(
        (s.requests, s.errors, s.models, s.browsers),
        (111, 10, 2, 2)
    );
    assert!(s.first_s > 0 && s.last_s >= s.first_s, "{s:?}");
    let empty = overview::summary(&client, features, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((empty.requests, empty.first_s), (0, 0));

    let bars = overview::throughput(&client, features, hour, None)
        .await
        .unwrap();
    assert_eq!(bars.len(), 2, "{bars:?}");
    let b = &bars[0];
    assert_eq!(
        (b.browser.as_str(), b.requests, b.errors),
        ("chromium", 100, 10),
        "{bars:?}"
    );
    assert!((b.rps - 2.0).abs() < 1e-9, "{b:?}");
    assert!(
        (b.p50 - 50.5).abs() < 0.6,
        "errors (999 ms) left out: {b:?}"
    );
    let only = overview::throughput(&client, features, hour, Some("m2"))
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].backend, "webgpu");

    let pts = overview::latency(&client, features, hour, hour, Some(tricky))
        .await
        .unwrap();
    assert_eq!(pts.len(), 1, "{pts:?}");
    let p = &pts[0];
    assert_eq!((p.model.as_str(), p.requests), (tricky, 100));
    assert!(
        (p.p50 - 50.5).abs() < 0.6 && (p.p90 - 90.0).abs() < 1.1,
        "{p:?}"
    );
    assert!(p.p99 >= 99.0 && p.p99 <= 100.0, "{p:?}");
    assert!(
        overview::latency(&client, features, hour, hour, Some("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A successful generation of `model` on `backend`, `ago_s` seconds ago (spread over a
/// minute), with the given time to first token and inter-token time.
fn generation(
    model: &str,
    backend: &str,
    ago_s: i64,
    k: usize,
    ttft: f64,
    inter: f64,
) -> GenerationRow {
    GenerationRow {
        event_time: now_ms() - ago_s * 1000 - (k as i64 % 60) * 1000,
        row_id: rand_id(k as u64, ago_s as u64),
        pool: "p".into(),
        pod: "a".into(),
        browser: "chromium".into(),
        browser_version: "Chrome/156".into(),
        model: model.into(),
        backend: backend.into(),
        adapter: String::new(),
        adapter_kind: "none".into(),
        kv_cache: "fp32".into(),
        prompt_tokens: 16,
        completion_tokens: 64,
        queue_ms: 0.0,
        prefill_ms: ttft / 2.0,
        ttft_ms: ttft,
        inter_token_p50_ms: inter,
        inter_token_p99_ms: inter * 3.0,
        tokens_per_s: 1000.0 / inter,
        max_batch: 1,
        kv_bytes: 64 * 512,
        finish_reason: "length".into(),
        outcome: "ok".into(),
        error_category: String::new(),
    }
}

fn rand_id(a: u64, b: u64) -> u64 {
    a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

#[tokio::test]
async fn generations_are_recommended_by_first_token_and_their_slowdowns_found() {
    let ch = crate::common::start().await;
    let settings = ch.settings("webaccel_generation_test");
    migrate(&settings).await.unwrap();
    let client = settings.client(true);
    let features = server::detect(&client).await.unwrap();
    let mut rng = Lcg(7);
    let mut rows = Vec::new();
    for k in 0..100 {
        // llm: WebGPU's first token comes sooner.
        rows.push(generation("llm", "webgpu", 300, k, 20.0 + rng.next(), 2.0));
        rows.push(generation("llm", "wasm", 300, k, 40.0 + rng.next(), 1.0));
    }
    for k in 0..300 {
        // chat: its tokens came 50 % slower in the last half hour; its first ones did not.
        rows.push(generation(
            "chat",
            "wasm",
            7200,
            k,
            30.0 + rng.next(),
            2.0 + 0.1 * rng.next(),
        ));
    }
    for k in 0..200 {
        rows.push(generation(
            "chat",
            "wasm",
            600,
            k,
            30.0 + rng.next(),
            3.0 + 0.1 * rng.next(),
        ));
    }
    crate::common::insert_rows(&client, &rows).await;

    let recs = queries::recommend(
        &client,
        features,
        Scope::Model,
        Duration::from_secs(3600),
        30,
    )
    .await
    .unwrap();
    let llm = recs.iter().find(|r| r.key == "llm").unwrap();
    assert_eq!(llm.measure, Measure::TimeToFirstToken, "{recs:?}");
    assert_eq!(llm.backend, "webgpu", "{recs:?}");
    assert!((llm.p50_ms - 20.0).abs() < 1.0, "{llm:?}");
    assert!((llm.tokens_per_s.unwrap() - 500.0).abs() < 1.0, "{llm:?}");
    assert!(llm.confidence > 0.999, "{llm:?}");
    let by_task = queries::recommend(
        &client,
        features,
        Scope::Task,
        Duration::from_secs(3600),
        30,
    )
    .await
    .unwrap();
    assert_eq!(by_task.len(), 1, "{by_task:?}");
    assert_eq!(by_task[0].key, "text-generation");

    let params = RegressionParams {
        recent: Duration::from_secs(1800),
        baseline: Duration::from_secs(3 * 3600),
        min_samples: 30,
        alpha: 0.01,
    };
    let found = queries::detect_regressions(&client, features, params)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].model.as_str(), found[0].measure, found[0].severity),
        ("chat", Measure::InterToken, Severity::Critical),
        "{found:?}"
    );
    queries::record_regressions(&client, &found).await.unwrap();
    assert_eq!(
        crate::common::query(
            &ch,
            "SELECT model, metric FROM webaccel_generation_test.regressions"
        )
        .await,
        "chat\tinter_token_p50_ms"
    );
}
