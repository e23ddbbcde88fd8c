//! `tail`'s report as tables.

use serde_json::Value;
use webaccel_api::timing::Stage;

fn f(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

/// The report as tables.
#[allow(clippy::print_stdout)]
pub fn print(report: &Value) {
    println!(
        "tail: {} blocks of {} requests per target, model and concurrency; {}",
        report["blocks"], report["requests_per_block"], report["browser"]
    );
    println!(
        "{:<12} {:>4} {:<8} {:>9} {:>9} {:>9} {:>12} {:>9}",
        "model", "conc", "target", "p50 ms", "p99 ms", "p99.9 ms", "1st blk p99", "vs kserve"
    );
    for line in report["hedges"].as_array().into_iter().flatten() {
        println!("{}", line.as_str().unwrap_or(""));
    }
    let cpu = &report["cpu_per_request"];
    println!(
        "CPU per request: agent and its browser {} ms, gateway {} ms, KServe {} ms",
        f(&cpu["agent_and_browser_ms"]),
        f(&cpu["gateway_ms"]),
        f(&cpu["kserve_ms"])
    );
    if let Some(by) = cpu["agent_by_process_ms"].as_object() {
        let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {}", f(v))).collect();
        println!(
            "  agent and browser by process (ms per request): {}",
            parts.join(", ")
        );
    }
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    for r in &rows {
        for target in ["kserve", "agent", "gateway", "agent_b", "gateway_hedged"] {
            let t = &r[target];
            if t.is_null() {
                continue;
            }
            let vs = if target == "kserve" {
                String::new()
            } else {
                format!(
                    "{:.2}x",
                    t["p99_ms"].as_f64().unwrap_or(f64::NAN)
                        / r["kserve"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
                )
            };
            println!(
                "{:<12} {:>4} {:<8} {:>9} {:>9} {:>9} {:>12} {:>9}",
                r["model"].as_str().unwrap_or(""),
                r["concurrency"],
                target,
                f(&t["p50_ms"]),
                f(&t["p99_ms"]),
                f(&t["p999_ms"]),
                f(&t["first_block"]["p99_ms"]),
                vs
            );
        }
    }
    for r in &rows {
        for target in ["agent", "gateway", "agent_b", "gateway_hedged"] {
            let Some(stages) = r[target]["stages"].as_object() else {
                continue;
            };
            println!(
                "\n{} c={} via {target}: stage p50 / p99 / p99.9 / mean of the slowest 1% (ms)",
                r["model"].as_str().unwrap_or(""),
                r["concurrency"]
            );
            let order = Stage::ALL.iter().map(|s| s.as_str()).chain(["outside"]);
            for name in order {
                let Some(s) = stages.get(name) else { continue };
                println!(
                    "  {:<14} {:>8} {:>8} {:>8} {:>8}",
                    name,
                    f(&s["p50_ms"]),
                    f(&s["p99_ms"]),
                    f(&s["p999_ms"]),
                    f(&s["tail_mean_ms"])
                );
            }
            println!(
                "  {:<14} {:>8} {:>8} {:>8} {:>8}",
                "(client wait)",
                f(&r[target]["p50_ms"]),
                f(&r[target]["p99_ms"]),
                f(&r[target]["p999_ms"]),
                f(&r[target]["tail_mean_ms"])
            );
        }
    }
}
