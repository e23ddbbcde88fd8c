//! Latency samples and their percentiles.

use std::time::Duration;

use serde_json::{Value, json};
pub use webaccel_bench::pct;
#[derive(Default)]
pub struct Samples {
    e2e_ms: Vec<f64>,
    compute_ms: Vec<f64>,
    overhead_ms: Vec<f64>,
    /// End to end minus the page's whole handling: agent and transport only.
    outside_page_ms: Vec<f64>,
    pub errors: usize,
}

impl Samples {
    pub fn push(&mut self, e2e: f64, compute: f64, page: Option<f64>) {
        self.e2e_ms.push(e2e);
        self.compute_ms.push(compute);
        self.overhead_ms.push(e2e - compute);
        if let Some(p) = page {
            self.outside_page_ms.push(e2e - p);
        }
    }

    pub fn summary(mut self, transport: &str, concurrency: usize, wall: Duration) -> Value {
        for v in [
            &mut self.e2e_ms,
            &mut self.compute_ms,
            &mut self.overhead_ms,
            &mut self.outside_page_ms,
        ] {
            v.sort_by(f64::total_cmp);
        }
        #[allow(clippy::cast_precision_loss)]
        let throughput = self.e2e_ms.len() as f64 / wall.as_secs_f64();
        json!({
            "transport": transport,
            "concurrency": concurrency,
            "requests": self.e2e_ms.len(),
            "errors": self.errors,
            "e2e_p50_ms": pct(&self.e2e_ms, 0.5),
            "e2e_p99_ms": pct(&self.e2e_ms, 0.99),
            "compute_p50_ms": pct(&self.compute_ms, 0.5),
            "compute_p99_ms": pct(&self.compute_ms, 0.99),
            "overhead_p50_ms": pct(&self.overhead_ms, 0.5),
            "overhead_p99_ms": pct(&self.overhead_ms, 0.99),
            "outside_page_p50_ms": pct(&self.outside_page_ms, 0.5),
            "outside_page_p99_ms": pct(&self.outside_page_ms, 0.99),
            "throughput_rps": throughput,
        })
    }
}
