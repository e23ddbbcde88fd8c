//! The OpenAI API over [`GenerationApi`]: `POST /v1/completions` and
//! `POST /v1/chat/completions` (whole, or streamed as server-sent events ending with
//! `data: [DONE]`, with `usage` at the end when `stream_options.include_usage` asks),
//! and `GET /v1/models`. Errors are OpenAI's `{"error": {...}}` with the status of
//! their category, so the `openai` package raises its own exception types; an error
//! after the first token ends the stream with an error event.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};
use webaccel_api::ErrorCategory;
use webaccel_api::generate::{GeneratedToken, GenerationEvent};
use webaccel_api::openai::{
    AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatLogprobs, ChatRequest,
    ChatResponse, ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionRequest,
    CompletionResponse, Delta, ErrorBody, ErrorDetail, ModelCard, ModelList, RequestError,
    TranscriptionForm, TranscriptionResponse, UsageBody, finish_reason,
};

use crate::api::ApiError;
use crate::generate::{Collected, GenerationApi, collect, sse, start};
use crate::http::call_options;

/// The OpenAI routes.
pub fn routes<A: GenerationApi>() -> Router<Arc<A>> {
    Router::new()
        .route("/v1/completions", post(completions::<A>))
        .route("/v1/chat/completions", post(chat::<A>))
        .route("/v1/models", get(models::<A>))
        .route("/v1/audio/transcriptions", post(transcriptions::<A>))
        .layer(axum::middleware::map_response(|resp: Response| {
            crate::api::plain_errors_as(resp, |e| OpenAiError::from(e).into_response())
        }))
}

/// An [`ApiError`] answered in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError(ApiError, Option<String>);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        Self(e, None)
    }
}

impl From<RequestError> for OpenAiError {
    fn from(e: RequestError) -> Self {
        Self(
            ApiError::new(ErrorCategory::BadRequest, e.message),
            e.param.map(str::to_owned),
        )
    }
}

fn error_body(e: &ApiError, param: Option<String>) -> ErrorBody {
    let kind = match e.category {
        ErrorCategory::BadRequest | ErrorCategory::PayloadTooLarge => "invalid_request_error",
        ErrorCategory::ModelNotFound => "not_found_error",
        ErrorCategory::Unauthorized => "authentication_error",
        ErrorCategory::Overloaded => "rate_limit_error",
        _ => "server_error",
    };
    ErrorBody {
        error: ErrorDetail {
            message: e.message.clone(),
            kind: kind.to_owned(),
            param,
            code: Some(e.category.as_str().to_owned()),
        },
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut resp = self.0.clone().into_response();
        let status = resp.status();
        let body = Json(error_body(&self.0, self.1)).into_response();
        // Keep the status and headers (Retry-After, WWW-Authenticate), swap the body.
        *resp.body_mut() = body.into_body();
        debug_assert_eq!(resp.status(), status);
        resp
    }
}

/// An error in the middle of a stream, as vLLM writes it: `data: {"error": {...}}`.
fn stream_error(e: &ApiError) -> Event {
    Event::default().data(serde_json::to_string(&error_body(e, None)).unwrap_or_default())
}

fn bad_json(what: &str, e: &serde_json::Error) -> OpenAiError {
    ApiError::new(
        ErrorCategory::BadRequest,
        format!("the body is not a {what} request: {e}"),
    )
    .into()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The completions API's log-probabilities of an echoed prompt's tokens (the first has
/// none: `null`) and of the generated ones, their text offsets counted from `offset`.
fn completion_logprobs(
    prompt: &[GeneratedToken],
    tokens: &[GeneratedToken],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let scored = prompt.iter().map(|t| (t, t.logprob)).chain(
        tokens
            .iter()
            .filter_map(|t| t.logprob.map(|lp| (t, Some(lp)))),
    );
    for (t, lp) in scored {
        out.tokens.push(t.text.clone());
        out.token_logprobs.push(lp);
        out.top_logprobs.push(
            t.top_logprobs
                .iter()
                .map(|a| (a.text.clone(), Value::from(a.logprob)))
                .collect::<Map<_, _>>(),
        );
        out.text_offset.push(*offset);
        *offset += t.text.len();
    }
    out
}

fn chat_logprobs(tokens: &[GeneratedToken]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .filter_map(|t| {
                t.logprob
                    .map(|lp| ChatTokenLogprob::new(&t.text, lp, &t.top_logprobs))
            })
            .collect(),
    }
}

async fn completions<A: GenerationApi>(
    State(api): State<Arc<A>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let req: CompletionRequest =
        serde_json::from_slice(&body).map_err(|e| bad_json("completion", &e))?;
    let generate = req.to_generate().map_err(OpenAiError::from)?;
    let options = call_options(&headers, None, None)?;
    let started = start(&api, generate, options).await?;
    let (id, created, model) = (id("cmpl"), now_s(), req.model.clone());
    let with_logprobs = req.logprobs.is_some();
    let response =
        move |choices: Vec<CompletionChoice>, usage: Option<UsageBody>| CompletionResponse {
            id: id.clone(),
            object: "text_completion".into(),
            created,
            model: model.clone(),
            choices,
            usage,
        };
    if !req.sampling.stream {
        let Collected {
            text,
            tokens,
            prompt,
            end,
        } = collect(started).await?;
        let logprobs = with_logprobs.then(|| completion_logprobs(&prompt, &tokens, &mut 0));
        let choice = CompletionChoice {
            index: 0,
            text,
            logprobs,
            finish_reason: Some(finish_reason(end.finish_reason).into()),
        };
        return Ok(Json(response(vec![choice], Some(end.usage.into()))).into_response());
    }
    let include_usage = req.sampling.include_usage();
    let mut offset = 0;
    let data = |v: &CompletionResponse| {
        Event::default().data(serde_json::to_string(v).unwrap_or_default())
    };
    Ok(sse(
        started,
        move |event| match event {
            GenerationEvent::Tokens(chunk) => {
                let text = chunk.echo.unwrap_or_default() + &chunk.text;
                if text.is_empty() && (!with_logprobs || chunk.tokens.is_empty()) {
                    return Vec::new();
                }
                let logprobs = with_logprobs
                    .then(|| completion_logprobs(&chunk.prompt, &chunk.tokens, &mut offset));
                let choice = CompletionChoice {
                    index: 0,
                    text,
                    logprobs,
                    finish_reason: None,
                };
                vec![data(&response(vec![choice], None))]
            }
            GenerationEvent::End(end) => {
                let last = CompletionChoice {
                    index: 0,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: Some(finish_reason(end.finish_reason).into()),
                };
                let mut out = vec![data(&response(vec![last], None))];
                if include_usage {
                    out.push(data(&response(Vec::new(), Some(end.usage.into()))));
                }
                out
            }
        },
        stream_error,
        Some("[DONE]"),
    ))
}

async fn chat<A: GenerationApi>(
    State(api): State<Arc<A>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let req: ChatRequest =
        serde_json::from_slice(&body).map_err(|e| bad_json("chat completion", &e))?;
    let generate = req.to_generate().map_err(OpenAiError::from)?;
    let options = call_options(&headers, None, None)?;
    let started = start(&api, generate, options).await?;
    let (id, created, model) = (id("chatcmpl"), now_s(), req.model.clone());
    let with_logprobs = req.logprobs;
    if !req.sampling.stream {
        let Collected {
            text, tokens, end, ..
        } = collect(started).await?;
        let choice = ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".into(),
                content: text,
            },
            logprobs: with_logprobs.then(|| chat_logprobs(&tokens)),
            finish_reason: Some(finish_reason(end.finish_reason).into()),
        };
        return Ok(Json(ChatResponse {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![choice],
            usage: end.usage.into(),
        })
        .into_response());
    }
    let include_usage = req.sampling.include_usage();
    let chunk = move |choices: Vec<ChatChunkChoice>, usage: Option<UsageBody>| {
        let c = ChatChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.clone(),
            choices,
            usage,
        };
        Event::default().data(serde_json::to_string(&c).unwrap_or_default())
    };
    let mut first = true;
    Ok(sse(
        started,
        move |event| {
            // OpenAI's first chunk names the role.
            let role = std::mem::take(&mut first).then(|| "assistant".to_owned());
            match event {
                GenerationEvent::Tokens(t) => {
                    if t.text.is_empty()
                        && role.is_none()
                        && (!with_logprobs || t.tokens.is_empty())
                    {
                        return Vec::new();
                    }
                    let choice = ChatChunkChoice {
                        index: 0,
                        delta: Delta {
                            role,
                            content: Some(t.text),
                        },
                        logprobs: with_logprobs.then(|| chat_logprobs(&t.tokens)),
                        finish_reason: None,
                    };
                    vec![chunk(vec![choice], None)]
                }
                GenerationEvent::End(end) => {
                    let last = ChatChunkChoice {
                        index: 0,
                        delta: Delta {
                            role,
                            content: None,
                        },
                        logprobs: None,
                        finish_reason: Some(finish_reason(end.finish_reason).into()),
                    };
                    let mut out = vec![chunk(vec![last], None)];
                    if include_usage {
                        out.push(chunk(Vec::new(), Some(end.usage.into())));
                    }
                    out
                }
            }
        },
        stream_error,
        Some("[DONE]"),
    ))
}

/// `POST /v1/audio/transcriptions`: the multipart form's audio transcribed by a
/// speech-to-text model, as `{"text": ...}` or plain text.
async fn transcriptions<A: GenerationApi>(
    State(api): State<Arc<A>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Response, OpenAiError> {
    let bad_form = |e: MultipartError| {
        OpenAiError::from(ApiError::new(
            ErrorCategory::BadRequest,
            format!("the body is not a multipart form: {e}"),
        ))
    };
    let mut fields = TranscriptionForm::default();
    while let Some(field) = form.next_field().await.map_err(bad_form)? {
        let name = field.name().unwrap_or_default().to_owned();
        let value = field.bytes().await.map_err(bad_form)?;
        fields.field(&name, value.to_vec())?;
    }
    let (generate, plain) = fields.to_generate()?;
    let options = call_options(&headers, None, None)?;
    let started = start(&api, generate, options).await?;
    let Collected { text, .. } = collect(started).await?;
    Ok(if plain {
        text.into_response()
    } else {
        Json(TranscriptionResponse { text }).into_response()
    })
}

async fn models<A: GenerationApi>(State(api): State<Arc<A>>) -> (StatusCode, Json<ModelList>) {
    let created = now_s();
    let data = api
        .generation_models()
        .await
        .into_iter()
        .map(|m| ModelCard {
            id: m.name,
            object: "model".into(),
            created,
            owned_by: "webaccel".into(),
            max_model_len: m.context_length,
        })
        .collect();
    (
        StatusCode::OK,
        Json(ModelList {
            object: "list".into(),
            data,
        }),
    )
}
