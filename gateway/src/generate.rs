//! The gateway as a text-generation server: the OpenAI API and Triton's generate
//! extension (`webaccel_kserve::openai`, `webaccel_kserve::generate`) over the fleet.
//!
//! A generation is routed like a request (a browser holding the model chosen by power
//! of two choices on its latency estimate, the bounded wait queue, circuit breakers,
//! the deadline), and retried on another browser on a retryable failure only until its
//! first token: after that the client has text it cannot take back, so a failure ends
//! the stream with an error event. Its time to first token is what the browser's
//! latency estimate learns. Tokens pass through as they come, never buffered; the
//! browser's lease is held until the stream ends, and a client that goes away cancels
//! the generation in the page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tower::retry::budget::Budget as _;
use webaccel_api::generate::{GenerateRequest, GenerationEvent};
use webaccel_api::{Backoff, ErrorCategory};
use webaccel_kserve::generate::{GenerationApi, GenerationModel, GenerationStream};
use webaccel_kserve::{ApiError, CallOptions};

use crate::backend::Lease;
use crate::backend::conn::Generating;
use crate::service::{Gateway, api_error};

/// A generation that has started on a browser: its first event, the rest, and the
/// lease that counts it there.
struct Started {
    lease: Lease,
    first: GenerationEvent,
    rest: Generating,
}

impl Gateway {
    /// Starts `request` on a browser holding its model and waits for its first event,
    /// retrying elsewhere on a retryable failure as the budget and deadline allow.
    async fn start_generation(
        &self,
        request: &GenerateRequest,
        deadline: Instant,
    ) -> Result<Started, ApiError> {
        if self.pipeline(&request.model).is_some() {
            return Err(ApiError::new(
                ErrorCategory::BadRequest,
                format!(
                    "model '{}' is cut into stages: a pipeline does not generate text",
                    request.model
                ),
            ));
        }
        self.budget.deposit();
        let mut tried: Vec<String> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let lease = self
                .acquire(&request.model, &request.model, &tried, deadline)
                .await?;
            attempt += 1;
            let browser = lease.backend().id();
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lease.generate(request.clone(), remaining).await {
                Ok((first, rest)) => return Ok(Started { lease, first, rest }),
                Err(e) => {
                    drop(lease);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !e.retryable() || attempt >= self.policy.max_attempts || left.is_zero() {
                        return Err(api_error(e));
                    }
                    if !self.budget.withdraw() {
                        self.metrics.retry_refused(&request.model, "budget");
                        return Err(api_error(e));
                    }
                    self.metrics.retry(&request.model, e.category.as_str());
                    tracing::debug!(model = %request.model, %browser, error = %e.message, attempt, "generation retried on another browser");
                    tried.push(browser);
                    let pause = Backoff::new(self.policy.backoff_base, self.policy.backoff_cap)
                        .full_jitter(attempt - 1)
                        .min(left);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// A stream being relayed to its client; dropped (the stream ended, or the client went
/// away), it is counted once.
struct Relay {
    gateway: Arc<Gateway>,
    model: String,
    arrived: Instant,
    lease: Lease,
    first: Option<GenerationEvent>,
    rest: Generating,
    first_token: Option<Duration>,
    tokens: u64,
    /// How it ended, once it has.
    outcome: Option<&'static str>,
}

impl Relay {
    async fn next(&mut self) -> Option<Result<GenerationEvent, ApiError>> {
        if self.outcome.is_some() {
            return None;
        }
        let event = match self.first.take() {
            Some(first) => Some(Ok(first)),
            None => self.rest.next().await,
        };
        match event {
            Some(Ok(event)) => {
                self.lease.heard();
                match &event {
                    GenerationEvent::Tokens(chunk) => {
                        self.first_token
                            .get_or_insert_with(|| self.arrived.elapsed());
                        self.tokens += chunk.tokens.len() as u64;
                    }
                    GenerationEvent::End(_) => self.outcome = Some("ok"),
                }
                Some(Ok(event))
            }
            Some(Err(e)) => {
                self.lease.stream_failed(&e);
                self.outcome = Some(e.category.as_str());
                Some(Err(api_error(e)))
            }
            None => {
                self.outcome = Some("ok");
                None
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.gateway.metrics.generation_finished(
            &self.model,
            self.outcome.unwrap_or("cancelled"),
            self.first_token,
            self.tokens,
        );
    }
}

impl GenerationApi for Gateway {
    async fn generate(
        self: &Arc<Self>,
        mut request: GenerateRequest,
        options: CallOptions,
    ) -> Result<GenerationStream, ApiError> {
        let arrived = Instant::now();
        request.request_id = Some(options.request_id.clone());
        let deadline = arrived + options.timeout_within(self.policy.generation_timeout);
        let started = match self.start_generation(&request, deadline).await {
            Ok(started) => started,
            Err(e) => {
                self.metrics
                    .generation_finished(&request.model, e.category.as_str(), None, 0);
                return Err(e);
            }
        };
        let relay = Relay {
            gateway: self.clone(),
            model: request.model,
            arrived,
            lease: started.lease,
            first: Some(started.first),
            rest: started.rest,
            first_token: None,
            tokens: 0,
            outcome: None,
        };
        Ok(futures::stream::unfold(relay, |mut relay| async move {
            relay.next().await.map(|event| (event, relay))
        })
        .boxed())
    }

    /// The models that generate text, as the browsers holding them list them (each
    /// serving browser asked at once; one that does not answer in 5 s is left out).
    async fn generation_models(&self) -> Vec<GenerationModel> {
        let endpoints: Vec<_> = self
            .backends
            .all()
            .iter()
            .map(|b| b.endpoint())
            .filter(|e| e.serving && !e.models.is_empty())
            .collect();
        let asked = endpoints.iter().map(|ep| {
            let agent = webaccel_agent_client::Endpoint {
                pod: ep.id.clone(),
                base_url: ep.url.clone(),
                token: ep.token.clone(),
            };
            async move {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    self.metadata.generation_models(&agent),
                )
                .await
            }
        });
        let mut models = BTreeMap::new();
        for list in futures::future::join_all(asked).await {
            let Ok(Ok(list)) = list else { continue };
            for card in list.data {
                models.entry(card.id).or_insert(card.max_model_len);
            }
        }
        models
            .into_iter()
            .map(|(name, context_length)| GenerationModel {
                name,
                context_length,
            })
            .collect()
    }

    fn refused(&self, error: &ApiError) {
        self.metrics
            .generation_finished("", error.category.as_str(), None, 0);
    }
}
