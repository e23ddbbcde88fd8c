//! The `generate` suite's report as tables on stdout.

use serde_json::Value;

use super::CONTEXT;

#[allow(clippy::print_stdout)]
pub fn print(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.3}"));
    println!("Text generation (fixture decoder, {} positions)\n", CONTEXT);
    println!(
        "streams  batching  tokens/s   inter-token p50/p99 ms   page step p50  overhead p50  page→client p50/p99  max batch"
    );
    for row in r["continuous_batching"].as_array().into_iter().flatten() {
        println!(
            "{:>7}  {:>8}  {:>8.1}   {:>9} / {:<9}   {:>12}  {:>12}  {:>8} / {:<8}  {:>4}",
            row["streams"],
            if row["model"] == "llm" { "on" } else { "off" },
            row["tokens_per_s"].as_f64().unwrap_or(0.0),
            f(&row["inter_token_p50_ms"]),
            f(&row["inter_token_p99_ms"]),
            f(&row["page_step_p50_ms"]),
            f(&row["per_token_overhead_p50_ms"]),
            f(&row["page_to_client_p50_ms"]),
            f(&row["page_to_client_p99_ms"]),
            row["max_batch"],
        );
    }
    println!("\nprompt tokens   TTFT p50 / p99 ms (client)   agent TTFT p50   prefill p50");
    for row in r["ttft"].as_array().into_iter().flatten() {
        println!(
            "{:>13}   {:>9} / {:<9}          {:>9}        {:>9}",
            row["prompt_tokens"],
            f(&row["ttft_p50_ms"]),
            f(&row["ttft_p99_ms"]),
            f(&row["agent_ttft_p50_ms"]),
            f(&row["prefill_p50_ms"]),
        );
    }
    let d = &r["decode_step"];
    println!(
        "\ndecode step p50: page {} ms, native onnxruntime {} ms at {} thread(s): {}x",
        f(&d["page_p50_ms"]),
        f(&d["native_p50_ms"]),
        d["threads"],
        f(&d["ratio"])
    );
    println!(
        "\nKV cache   bytes/token   tokens per GiB   greedy agreement (128 tokens)   max |Δ logprob|   parted at (step, fp32 top-2 margin)"
    );
    for row in r["kv_cache"].as_array().into_iter().flatten() {
        let parted: Vec<String> = row["parted"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("({}, {})", p["step"], f(&p["fp32_margin"])))
            .collect();
        println!(
            "{:>8}   {:>11}   {:>14.0}   {:>29}   {:>14}   {}",
            row["kv_cache"].as_str().unwrap_or("-"),
            f(&row["bytes_per_token"]),
            row["tokens_per_gib"].as_f64().unwrap_or(0.0),
            f(&row["greedy_agreement"]),
            f(&row["max_logprob_diff"]),
            parted.join(" "),
        );
    }
    println!(
        "\nKV cache   perplexity (fixed text, 32-position prefill chunks)   onnxruntime, same scheme   max |Δ score|   vs fp32"
    );
    for row in r["perplexity"].as_array().into_iter().flatten() {
        println!(
            "{:>8}   {:>52.4}   {:>24.4}   {:>13}   {:>+6.3}%",
            row["kv_cache"].as_str().unwrap_or("-"),
            row["perplexity"].as_f64().unwrap_or(f64::NAN),
            row["onnxruntime_perplexity"].as_f64().unwrap_or(f64::NAN),
            f(&row["max_score_diff_vs_onnxruntime"]),
            row["change_vs_fp32"].as_f64().unwrap_or(f64::NAN) * 100.0,
        );
    }
    let s = &r["openai_sse"];
    println!(
        "\nOpenAI SSE (HTTP client) inter-token p50/p99: {} / {} ms",
        f(&s["inter_token_p50_ms"]),
        f(&s["inter_token_p99_ms"])
    );
    let adapter = &r["webgpu"]["adapter"];
    let row = &r["webgpu"]["row"];
    match row["error"].as_str() {
        Some(e) => println!(
            "WebGPU ({} {}): not measured: {e}",
            adapter["vendor"], adapter["architecture"]
        ),
        None => println!(
            "WebGPU ({} {}, {}): 1 stream {:.1} tokens/s, page step p50 {} ms, inter-token p50/p99 {} / {} ms",
            adapter["vendor"].as_str().unwrap_or("-"),
            adapter["architecture"].as_str().unwrap_or("-"),
            adapter["kind"].as_str().unwrap_or("-"),
            row["tokens_per_s"].as_f64().unwrap_or(0.0),
            f(&row["page_step_p50_ms"]),
            f(&row["inter_token_p50_ms"]),
            f(&row["inter_token_p99_ms"]),
        ),
    }
}
