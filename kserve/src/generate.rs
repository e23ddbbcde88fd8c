//! Text generation's front ends over one trait, [`GenerationApi`], which the agent and
//! the gateway each implement once: Triton's generate extension here
//! (`/v2/models/{m}/generate`, `/generate_stream`) and the OpenAI API in
//! [`crate::openai`].
//!
//! A generation's first event is awaited before the response starts, so everything that
//! fails before the first token (a bad request, no browser, overload) is an HTTP error
//! with its status; an error after it ends the stream with an error event. A client that
//! goes away drops the stream, which stops the generation at its next step.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::stream::{self, BoxStream, StreamExt};
use webaccel_api::ErrorCategory;
use webaccel_api::generate::triton::{GenerateBody, GenerateResponse};
use webaccel_api::generate::{GenerateRequest, GenerationEnd, GenerationEvent};

use crate::api::{ApiError, CallOptions};
use crate::http::{VERSION, call_options};

/// A generation's events: tokens as they come, then its end; an error ends it.
pub type GenerationStream = BoxStream<'static, Result<GenerationEvent, ApiError>>;

/// A model that generates text, as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationModel {
    pub name: String,
    pub context_length: Option<u32>,
}

/// What the generation front ends need from the thing they front.
pub trait GenerationApi: Send + Sync + 'static {
    /// Starts a generation; its events follow on the stream (which may outlive the
    /// call: hence the `Arc`).
    fn generate(
        self: &Arc<Self>,
        request: GenerateRequest,
        options: CallOptions,
    ) -> impl Future<Output = Result<GenerationStream, ApiError>> + Send;
    /// The models that generate text.
    fn generation_models(&self) -> impl Future<Output = Vec<GenerationModel>> + Send;
    /// Told of every request refused before it reached [`GenerationApi::generate`].
    fn refused(&self, _error: &ApiError) {}
}

/// A started generation whose first event has come (so it did start).
pub struct Started {
    pub first: GenerationEvent,
    pub rest: GenerationStream,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

/// Starts `request` and waits for its first event: an error before it is the call's
/// error.
pub async fn start<A: GenerationApi>(
    api: &Arc<A>,
    request: GenerateRequest,
    options: CallOptions,
) -> Result<Started, ApiError> {
    let mut events = api.generate(request, options).await?;
    match events.next().await {
        Some(Ok(first)) => Ok(Started {
            first,
            rest: events,
        }),
        Some(Err(e)) => Err(e),
        None => Err(ApiError::new(
            ErrorCategory::Internal,
            "the generation ended before it began",
        )),
    }
}

/// A whole generation, collected.
#[derive(Debug)]
pub struct Collected {
    /// The completion's text, after the prompt's when it was echoed.
    pub text: String,
    pub tokens: Vec<webaccel_api::generate::GeneratedToken>,
    /// The prompt's scored tokens, when echoed with log-probabilities.
    pub prompt: Vec<webaccel_api::generate::GeneratedToken>,
    pub end: GenerationEnd,
}

/// The whole text of a generation and its end, collected.
pub async fn collect(started: Started) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut prompt = Vec::new();
    let mut events = stream::iter([Ok(started.first)]).chain(started.rest);
    while let Some(event) = events.next().await {
        match event? {
            GenerationEvent::Tokens(chunk) => {
                if let Some(echo) = &chunk.echo {
                    text.push_str(echo);
                }
                text.push_str(&chunk.text);
                tokens.extend(chunk.tokens);
                prompt.extend(chunk.prompt);
            }
            GenerationEvent::End(end) => {
                return Ok(Collected {
                    text,
                    tokens,
                    prompt,
                    end,
                });
            }
        }
    }
    Err(ApiError::new(
        ErrorCategory::Internal,
        "the generation ended without its end event",
    ))
}

/// `started`'s events as server-sent events: each event `render` makes `Some` of, and
/// errors as `error_event` writes them; `done` (when given) closes the stream.
pub fn sse(
    started: Started,
    mut render: impl FnMut(GenerationEvent) -> Vec<Event> + Send + 'static,
    error_event: fn(&ApiError) -> Event,
    done: Option<&'static str>,
) -> Response {
    let events = stream::iter([Ok(started.first)])
        .chain(started.rest)
        .flat_map(move |event| {
            let out: Vec<Event> = match event {
                Ok(e) => render(e),
                Err(e) => vec![error_event(&e)],
            };
            stream::iter(out)
        })
        .chain(stream::iter(done.map(|d| Event::default().data(d))))
        .map(Ok::<_, std::convert::Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Triton's generate routes.
pub fn routes<A: GenerationApi>() -> Router<Arc<A>> {
    Router::new()
        .route("/v2/models/{name}/generate", post(generate::<A>))
        .route(
            "/v2/models/{name}/generate_stream",
            post(generate_stream::<A>),
        )
        .route(
            "/v2/models/{name}/versions/{version}/generate",
            post(generate_v::<A>),
        )
        .route(
            "/v2/models/{name}/versions/{version}/generate_stream",
            post(generate_stream_v::<A>),
        )
        .layer(axum::middleware::map_response(
            crate::api::plain_errors_as_json,
        ))
}

/// Triton's error body, `{"error": "..."}` (with webaccel's category beside it).
fn triton_error(e: &ApiError) -> Event {
    Event::default().data(serde_json::to_string(&e.body()).unwrap_or_default())
}

fn parse(name: &str, body: &Bytes) -> Result<(GenerateRequest, bool), ApiError> {
    let body: GenerateBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCategory::BadRequest,
            format!("the body is not a generate request: {e}"),
        )
    })?;
    body.to_generate(name)
        .map_err(|e| ApiError::new(ErrorCategory::BadRequest, e.0))
}

fn chunk(model: &str, event: GenerationEvent) -> GenerateResponse {
    match event {
        GenerationEvent::Tokens(t) => GenerateResponse {
            model_name: model.to_owned(),
            model_version: VERSION.to_owned(),
            text_output: t.text,
            finish_reason: None,
            prompt_tokens: None,
            completion_tokens: None,
        },
        GenerationEvent::End(end) => GenerateResponse {
            model_name: model.to_owned(),
            model_version: VERSION.to_owned(),
            text_output: String::new(),
            finish_reason: Some(end.finish_reason.as_str().to_owned()),
            prompt_tokens: Some(end.usage.prompt_tokens),
            completion_tokens: Some(end.usage.completion_tokens),
        },
    }
}

async fn run<A: GenerationApi>(
    api: Arc<A>,
    name: String,
    headers: HeaderMap,
    body: Bytes,
    stream_url: bool,
) -> Result<Response, ApiError> {
    let (request, stream_asked) = parse(&name, &body).inspect_err(|e| api.refused(e))?;
    let options = call_options(&headers, None, None).inspect_err(|e| api.refused(e))?;
    let started = start(&api, request, options).await?;
    if stream_url || stream_asked {
        let model = name.clone();
        return Ok(sse(
            started,
            move |event| {
                let c = chunk(&model, event);
                if c.text_output.is_empty() && c.finish_reason.is_none() {
                    return Vec::new();
                }
                vec![Event::default().data(serde_json::to_string(&c).unwrap_or_default())]
            },
            triton_error,
            None,
        ));
    }
    let Collected { text, end, .. } = collect(started).await?;
    let mut response = chunk(&name, GenerationEvent::End(end));
    response.text_output = text;
    Ok(Json(response).into_response())
}

async fn generate<A: GenerationApi>(
    State(api): State<Arc<A>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    run(api, name, headers, body, false).await
}

async fn generate_stream<A: GenerationApi>(
    State(api): State<Arc<A>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    run(api, name, headers, body, true).await
}

async fn generate_v<A: GenerationApi>(
    State(api): State<Arc<A>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::http::check_version(&name, &version)?;
    run(api, name, headers, body, false).await
}

async fn generate_stream_v<A: GenerationApi>(
    State(api): State<Arc<A>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::http::check_version(&name, &version)?;
    run(api, name, headers, body, true).await
}
