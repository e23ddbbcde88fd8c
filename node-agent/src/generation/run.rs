//! One generation from start to end: a place among the model's sequences, the page's
//! generation, its tokens turned into text and events as they come, stop strings, the
//! client going away (the page is told to stop at its next step, which frees the
//! sequence's cache), the deadline, and the figures at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use webaccel_api::ErrorCategory;
use webaccel_api::generate::{
    FinishReason, GeneratedToken, GenerationEnd, GenerationEvent, GenerationTimings, TokenChunk,
    TokenLogprob, Usage,
};

use super::stop::StopMatcher;
use super::text::TextStream;
use super::{Generator, Prepared};
use crate::error::AgentError;
use crate::page::PageLink;
use crate::page::link::{PageGeneration, PageStep};
use crate::page::protocol::{Cancel, GenerateReply, PromptLogprob};

/// Where a generation's events go: tokens, then its end, or an error that ends it.
pub type Events = mpsc::Sender<Result<GenerationEvent, AgentError>>;

/// How long a cancelled generation may take to leave the page before it is given up on.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// What a finished generation leaves behind, for stats and ClickHouse.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub end: Option<GenerationEnd>,
    pub error: Option<ErrorCategory>,
    /// The client left before the end.
    pub abandoned: bool,
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The state of one sequence's output while it streams.
struct Output<'a> {
    generator: &'a Generator,
    text: TextStream,
    stops: StopMatcher,
    started: Instant,
    arrivals: Vec<Instant>,
    completion: u32,
    /// With `echo`, until the first token: the prompt's text and ids.
    echo: Option<(String, Vec<u32>)>,
}

impl Output<'_> {
    /// The event for one token from the page; `true` when a stop string ended the text.
    fn token(&mut self, step: PageStep) -> Result<(TokenChunk, bool), AgentError> {
        let codec = &self.generator.codec;
        let token = step.token;
        self.arrivals.push(Instant::now());
        self.completion += 1;
        let special = codec.is_special(token.id);
        let piece = if special {
            String::new()
        } else {
            codec
                .step(&mut self.text, token.id)
                .map_err(|e| AgentError::Internal(e.to_string()))?
        };
        let (text, stopped) = self.stops.push(&piece);
        let top_logprobs = self.alternatives(token.top);
        let (echo, prompt) = match self.echo.take() {
            Some((text, ids)) => {
                let prompt = self.scored_prompt(&ids, token.prompt.unwrap_or_default());
                (Some(text), prompt)
            }
            None => (None, Vec::new()),
        };
        let chunk = TokenChunk {
            text,
            tokens: vec![GeneratedToken {
                id: token.id,
                text: codec.token_text(token.id),
                special,
                logprob: token.logprob,
                top_logprobs,
            }],
            produced_at_ms: step.t,
            step_ms: step.step_ms,
            batch: step.batch,
            echo,
            prompt,
        };
        Ok((chunk, stopped))
    }

    /// The prompt's tokens with the page's scores (one per token after the first;
    /// none when they were not asked for).
    fn scored_prompt(&self, ids: &[u32], scores: Vec<PromptLogprob>) -> Vec<GeneratedToken> {
        if scores.is_empty() {
            return Vec::new();
        }
        let codec = &self.generator.codec;
        let first = std::iter::once(None);
        ids.iter()
            .zip(first.chain(scores.into_iter().map(Some)))
            .map(|(&id, score)| GeneratedToken {
                id,
                text: codec.token_text(id),
                special: codec.is_special(id),
                logprob: score.as_ref().map(|s| s.logprob),
                top_logprobs: self.alternatives(score.and_then(|s| s.top)),
            })
            .collect()
    }

    fn alternatives(&self, top: Option<Vec<(u32, f64)>>) -> Vec<TokenLogprob> {
        let codec = &self.generator.codec;
        top.unwrap_or_default()
            .into_iter()
            .map(|(id, logprob)| TokenLogprob {
                id,
                text: codec.token_text(id),
                logprob,
            })
            .collect()
    }

    fn end(
        &self,
        finish_reason: FinishReason,
        prompt_tokens: u32,
        reply: Option<&GenerateReply>,
    ) -> GenerationEnd {
        let ttft_ms = self
            .arrivals
            .first()
            .map_or(0.0, |t| (*t - self.started).as_secs_f64() * 1e3);
        let mut gaps: Vec<f64> = self
            .arrivals
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .collect();
        gaps.sort_by(f64::total_cmp);
        let decoding = match (self.arrivals.first(), self.arrivals.last()) {
            (Some(a), Some(b)) => (*b - *a).as_secs_f64(),
            _ => 0.0,
        };
        let tokens_per_s = if decoding > 0.0 {
            f64::from(self.completion.saturating_sub(1)) / decoding
        } else {
            0.0
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        GenerationEnd {
            finish_reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens: self.completion,
            },
            timings: GenerationTimings {
                backend: reply.map(|r| r.backend.clone()).unwrap_or_default(),
                queue_ms: reply.map_or(0.0, |r| r.queue_ms),
                prefill_ms: reply.map_or(0.0, |r| r.prefill_ms),
                ttft_ms,
                inter_token_p50_ms: percentile(&gaps, 0.5),
                inter_token_p99_ms: percentile(&gaps, 0.99),
                tokens_per_s,
                kv_cache: Some(self.generator.spec.settings.kv_cache),
                kv_bytes: reply.map_or(0, |r| r.kv_bytes as u64),
                kv_bytes_per_token: reply.map_or(0.0, |r| r.kv_bytes_per_token),
                max_batch: reply.map_or(0, |r| r.max_batch),
            },
        }
    }
}

/// Tells the page to stop `generation` and waits (a little) for it to leave, so the
/// sequence's place is free when this returns.
async fn cancel(link: &PageLink, generation: &mut PageGeneration) {
    let _ = tokio::time::timeout(
        CANCEL_GRACE,
        link.call(Cancel {
            generation: generation.id,
        }),
    )
    .await;
    while tokio::time::timeout(CANCEL_GRACE, generation.steps.recv())
        .await
        .is_ok_and(|s| s.is_some())
    {}
    let _ = tokio::time::timeout(CANCEL_GRACE, generation.finished()).await;
}

/// Runs `prepared` on `generator`'s model in the page behind `link`, sending events to
/// `events` until the end, an error, the client leaving or `deadline`.
pub async fn stream(
    generator: Arc<Generator>,
    link: Arc<PageLink>,
    prepared: Prepared,
    started: Instant,
    deadline: tokio::time::Instant,
    events: &Events,
) -> Outcome {
    let prompt_tokens = u32::try_from(prepared.call.prompt.len()).unwrap_or(u32::MAX);
    let mut out = Output {
        generator: &generator,
        text: generator.codec.stream(&prepared.call.prompt),
        stops: StopMatcher::new(&prepared.stop),
        started,
        arrivals: Vec::new(),
        completion: 0,
        echo: prepared
            .echo
            .map(|text| (text, prepared.call.prompt.clone())),
    };
    let failed = |e: AgentError| Outcome {
        end: None,
        error: Some(e.category()),
        abandoned: false,
    };
    let mut generation = match link.generate(prepared.call) {
        Ok(g) => g,
        Err(e) => {
            let outcome = failed(e.clone());
            let _ = events.send(Err(e)).await;
            return outcome;
        }
    };
    let mut stopped_by_string = false;
    loop {
        let step = tokio::select! {
            step = generation.steps.recv() => step,
            () = events.closed() => {
                cancel(&link, &mut generation).await;
                return Outcome { end: None, error: None, abandoned: true };
            }
            () = tokio::time::sleep_until(deadline) => {
                cancel(&link, &mut generation).await;
                let e = AgentError::Deadline(deadline - tokio::time::Instant::from_std(started));
                let outcome = failed(e.clone());
                let _ = events.send(Err(e)).await;
                return outcome;
            }
        };
        let Some(step) = step else { break };
        let (chunk, stopped) = match out.token(step) {
            Ok(t) => t,
            Err(e) => {
                cancel(&link, &mut generation).await;
                let outcome = failed(e.clone());
                let _ = events.send(Err(e)).await;
                return outcome;
            }
        };
        if events
            .send(Ok(GenerationEvent::Tokens(chunk)))
            .await
            .is_err()
        {
            cancel(&link, &mut generation).await;
            return Outcome {
                end: None,
                error: None,
                abandoned: true,
            };
        }
        if stopped {
            stopped_by_string = true;
            cancel(&link, &mut generation).await;
            break;
        }
    }
    let reply = if stopped_by_string {
        None
    } else {
        match generation.finished().await {
            Ok(r) => Some(r),
            Err(e) => {
                let e = match e {
                    crate::page::protocol::CallError::Refused(reason) => {
                        AgentError::Inference(reason)
                    }
                    crate::page::protocol::CallError::Failed(e) => e,
                };
                let outcome = failed(e.clone());
                let _ = events.send(Err(e)).await;
                return outcome;
            }
        }
    };
    let finish = if stopped_by_string {
        FinishReason::Stop
    } else {
        reply
            .as_ref()
            .map_or(FinishReason::Stop, |r| r.finish_reason)
    };
    if !stopped_by_string {
        let rest = out.stops.flush();
        if !rest.is_empty() {
            let chunk = TokenChunk {
                text: rest,
                tokens: Vec::new(),
                produced_at_ms: 0.0,
                step_ms: 0.0,
                batch: 0,
                echo: None,
                prompt: Vec::new(),
            };
            let _ = events.send(Ok(GenerationEvent::Tokens(chunk))).await;
        }
    }
    let end = out.end(finish, prompt_tokens, reply.as_ref());
    let _ = events.send(Ok(GenerationEvent::End(end.clone()))).await;
    Outcome {
        end: Some(end),
        error: None,
        abandoned: false,
    }
}
