//! Perplexity on a fixed text with each KV cache precision: the page scores the text
//! (the OpenAI API's `echo` with log-probabilities) fed 32 positions a run
//! (`prefill_chunk`), so every position after the first run attends to the cache as it
//! is kept, quantized or not; onnxruntime's reference (`decoder_reference.py`) scores
//! the same ids with the same chunks and the same quantization, beside it.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use webaccel_api::generate::{GenerateInput, GenerateParams, GenerateRequest};

use super::{generate_all, reference_job};
use crate::agent_process::AgentProcess;

/// The text scored: plain English prose, a little under 400 of the fixture's tokens.
const TEXT: &str = "The lighthouse stood at the end of a long stone pier, and every evening the keeper \
climbed its one hundred and twelve steps to light the lamp. From the gallery he could see the \
harbour, the fishing boats coming home, the road that wound up the hill to the village, and far \
out to sea the grey line where the weather came from. He kept a log of every ship that passed, \
the wind and the state of the sea, and in winter, when the storms came, he stayed up through the \
night to keep the glass clean and the light turning. People in the village said he knew the \
sea better than anyone alive, and when the young ones asked him what he had learned from it, he \
said only that it never does the same thing twice.";

/// The chunk the cache is filled in.
const CHUNK: u32 = 32;

fn perplexity(scores: &[f64]) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    (-mean).exp()
}

/// onnxruntime's scores of `ids` after the first, with `kv_dtype` and the chunk.
fn reference(script: &Path, model: &Path, ids: &[u32], kv_dtype: &str) -> anyhow::Result<Vec<f64>> {
    let job = json!({"model": model, "prompts": [ids], "max_new_tokens": 1, "kv_dtype": kv_dtype,
                     "prompt_logprobs": true, "prefill_chunk": CHUNK});
    let v = reference_job(script, &job)?;
    Ok(v[0]["prompt_logprobs"]
        .as_array()
        .context("prompt_logprobs")?
        .iter()
        .filter_map(Value::as_f64)
        .collect())
}

/// One row per precision: the page's perplexity, onnxruntime's with the same scheme,
/// the largest difference in a token's score, and the change from the fp32 cache.
pub async fn measure(agent: &AgentProcess, script: &Path, model: &Path) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    let mut fp32 = None;
    for (name, precision, kv_dtype) in [
        ("llm-chunked", "fp32", "float32"),
        ("llm-int8-chunked", "int8", "int8"),
        ("llm-int4-chunked", "int4", "int4"),
    ] {
        let req = GenerateRequest {
            model: name.to_owned(),
            input: GenerateInput::Text { text: TEXT.into() },
            params: GenerateParams {
                max_tokens: Some(1),
                temperature: Some(0.0),
                echo: true,
                logprobs: Some(0),
                ..GenerateParams::default()
            },
            timeout_ms: Some(120_000),
            request_id: None,
        };
        let (streams, _) = generate_all(agent, vec![req]).await?;
        let s = streams.first().context("no stream")?;
        if let Some(e) = &s.error {
            bail!("{name}: {e}");
        }
        let ids: Vec<u32> = s.prompt.iter().map(|(id, _)| *id).collect();
        let page: Vec<f64> = s.prompt.iter().skip(1).filter_map(|(_, lp)| *lp).collect();
        if page.len() + 1 != ids.len() || ids.is_empty() {
            bail!(
                "{name}: {} scores for {} prompt tokens",
                page.len(),
                ids.len()
            );
        }
        let want = reference(script, model, &ids, kv_dtype)?;
        let max_diff = page
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f64, f64::max);
        let ppl = perplexity(&page);
        let base = *fp32.get_or_insert(ppl);
        rows.push(json!({
            "kv_cache": precision,
            "tokens": ids.len(),
            "prefill_chunk": CHUNK,
            "perplexity": ppl,
            "onnxruntime_perplexity": perplexity(&want),
            "max_score_diff_vs_onnxruntime": max_diff,
            "change_vs_fp32": ppl / base - 1.0,
        }));
    }
    Ok(Value::Array(rows))
}
