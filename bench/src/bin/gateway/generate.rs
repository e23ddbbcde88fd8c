//! Text generation straight to an agent and through the gateway, side by side: the
//! same streamed OpenAI completions (the fixture decoder, greedy past end-of-sequence
//! tokens) as an HTTP client sees them, time to first token and time between tokens.

use std::time::Instant;

use serde_json::{Value, json};
use webaccel_bench::pct;

/// Client-side times of `streams` concurrent streams of `tokens` tokens, `rounds` times:
/// (TTFT ms, inter-token ms), each sorted, and the errors.
async fn stream_times(
    base: &str,
    token: Option<&str>,
    streams: usize,
    tokens: u32,
    rounds: usize,
) -> (Vec<f64>, Vec<f64>, usize) {
    let http = reqwest::Client::new();
    let (mut ttft, mut gaps, mut errors) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds {
        let runs = (0..streams).map(|_| {
            let http = http.clone();
            async move {
                let mut req = http.post(format!("{base}/v1/completions")).json(
                    &json!({"model": "llm", "prompt": "A browser is a program that",
                                  "max_tokens": tokens, "temperature": 0, "stream": true,
                                  "ignore_eos": true}),
                );
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let sent = Instant::now();
                let mut r = req.send().await.map_err(|e| e.to_string())?;
                if r.status() != 200 {
                    return Err(format!("status {}", r.status()));
                }
                let mut times = Vec::new();
                while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
                    // Each event ends with a blank line; a chunk may hold several.
                    let events = chunk.windows(2).filter(|w| w == b"\n\n").count();
                    let at = sent.elapsed().as_secs_f64() * 1e3;
                    times.extend(std::iter::repeat_n(at, events));
                }
                Ok::<_, String>(times)
            }
        });
        for result in futures::future::join_all(runs).await {
            match result {
                Ok(times) if !times.is_empty() => {
                    ttft.push(times[0]);
                    // The last events are the finish and [DONE]: not tokens.
                    let token_times = &times[..times.len().saturating_sub(2)];
                    gaps.extend(token_times.windows(2).map(|w| w[1] - w[0]));
                }
                _ => errors += 1,
            }
        }
    }
    ttft.sort_by(f64::total_cmp);
    gaps.sort_by(f64::total_cmp);
    (ttft, gaps, errors)
}

/// The comparison at each of `levels` concurrent streams, printed as it goes.
#[allow(clippy::print_stdout)]
pub async fn compare(direct: (&str, Option<&str>), gateway: &str, levels: &[usize]) -> Vec<Value> {
    println!(
        "\n{:<8} {:>22} {:>22} {:>24} {:>24}",
        "streams",
        "TTFT direct p50/p99",
        "TTFT gw p50/p99",
        "inter-token direct p50/p99",
        "inter-token gw p50/p99"
    );
    let mut rows = Vec::new();
    for &n in levels {
        let rounds = (40 / n).max(3);
        // Warm both paths first.
        let _ = stream_times(direct.0, direct.1, n, 16, 1).await;
        let _ = stream_times(gateway, None, n, 16, 1).await;
        let (dt, dg, de) = stream_times(direct.0, direct.1, n, 64, rounds).await;
        let (gt, gg, ge) = stream_times(gateway, None, n, 64, rounds).await;
        println!(
            "{:<8} {:>10.3} / {:<9.3} {:>10.3} / {:<9.3} {:>12.3} / {:<9.3} {:>12.3} / {:<9.3}",
            n,
            pct(&dt, 0.5),
            pct(&dt, 0.99),
            pct(&gt, 0.5),
            pct(&gt, 0.99),
            pct(&dg, 0.5),
            pct(&dg, 0.99),
            pct(&gg, 0.5),
            pct(&gg, 0.99),
        );
        rows.push(json!({
            "streams": n,
            "ttft_direct_p50_ms": pct(&dt, 0.5), "ttft_direct_p99_ms": pct(&dt, 0.99),
            "ttft_gateway_p50_ms": pct(&gt, 0.5), "ttft_gateway_p99_ms": pct(&gt, 0.99),
            "inter_token_direct_p50_ms": pct(&dg, 0.5), "inter_token_direct_p99_ms": pct(&dg, 0.99),
            "inter_token_gateway_p50_ms": pct(&gg, 0.5), "inter_token_gateway_p99_ms": pct(&gg, 0.99),
            "errors": de + ge,
        }));
    }
    rows
}
