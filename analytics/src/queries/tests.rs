//! Recommendations and regressions on aggregates with known answers.

use super::*;

fn agg(browser: &str, backend: &str, p50: f64, sigma: f64, samples: u64) -> Aggregate {
    Aggregate {
        key: "m".into(),
        browser: browser.into(),
        backend: backend.into(),
        p50,
        sigma,
        samples,
        rows_per_s: 1.0,
        tokens_per_s: 0.0,
    }
}

#[test]
fn normal_cdf_matches_tables() {
    assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
    assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
    assert!((normal_cdf(-2.326) - 0.01).abs() < 1e-4);
}

#[test]
fn clear_winner_is_confident_and_close_race_is_not() {
    let picks = pick_best(
        vec![
            agg("chromium", "wasm", 5.0, 0.5, 500),
            agg("chromium", "webgpu", 3.0, 0.3, 500),
        ],
        10,
        Measure::Latency,
    );
    assert_eq!(
        (picks[0].backend.as_str(), picks[0].p50_ms),
        ("webgpu", 3.0)
    );
    assert!(picks[0].confidence > 0.999, "{picks:?}");
    let picks = pick_best(
        vec![
            agg("a", "wasm", 5.0, 2.0, 20),
            agg("b", "wasm", 5.1, 2.0, 20),
        ],
        10,
        Measure::Latency,
    );
    assert!(picks[0].confidence < 0.7, "{picks:?}");
    let picks = pick_best(
        vec![
            agg("a", "wasm", 1.0, 0.1, 5),
            agg("b", "wasm", 2.0, 0.1, 500),
        ],
        10,
        Measure::Latency,
    );
    assert_eq!(picks[0].browser, "b", "too few samples cannot win");
}

#[test]
fn severity_follows_change_and_significance() {
    let p = RegressionParams {
        min_samples: 10,
        ..RegressionParams::default()
    };
    let found = compare(
        &[agg("c", "wasm", 10.0, 1.0, 1000)],
        &[agg("c", "wasm", 16.0, 1.0, 200)],
        p,
        Measure::Latency,
    );
    assert_eq!(found[0].severity, Severity::Critical);
    let found = compare(
        &[agg("c", "wasm", 10.0, 1.0, 1000)],
        &[agg("c", "wasm", 12.5, 1.0, 200)],
        p,
        Measure::Latency,
    );
    assert_eq!(found[0].severity, Severity::Major);
    assert!(
        compare(
            &[agg("c", "wasm", 10.0, 1.0, 1000)],
            &[agg("c", "wasm", 10.05, 1.0, 200)],
            p,
            Measure::Latency
        )
        .is_empty()
    );
    // A big change on very noisy, small samples is not significant.
    assert!(
        compare(
            &[agg("c", "wasm", 10.0, 30.0, 12)],
            &[agg("c", "wasm", 16.0, 30.0, 12)],
            p,
            Measure::Latency
        )
        .is_empty()
    );
}
