//! The client-facing WebSocket bridge (`/v1/bridge`): binary wire frames (see
//! `webaccel_api::wire`), requests multiplexed by id and answered as they complete.
//!
//! Backpressure: a connection may have `--bridge-window` requests outstanding; past
//! that the agent stops reading its socket, so a fast client is slowed by TCP rather
//! than buffered without bound.
//!
//! A generate frame (kind 5) is answered by generation events (kind 6) under its id as
//! its tokens come, the last an end, or by an error frame that ends it; a cancel frame
//! under its id stops it at the page's next step. It holds its window place until then.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use webaccel_api::ErrorCategory;
use webaccel_api::generate::{GenerateRequest, GenerationEvent};
use webaccel_api::timing::{Stage, ms};
use webaccel_api::wire::{self, ErrorFrame, Message};

use crate::agent::Agent;

pub fn routes(shutdown: CancellationToken) -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/bridge", get(upgrade))
        .layer(Extension(shutdown))
}

async fn upgrade(
    State(agent): State<Arc<Agent>>,
    Extension(shutdown): Extension<CancellationToken>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(agent.args.max_body_bytes)
        .on_upgrade(move |socket| serve(agent, socket, shutdown))
}

fn lock(m: &Mutex<HashMap<u64, AbortHandle>>) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
    m.lock()
}

fn error_frame(id: u64, category: ErrorCategory, message: impl Into<String>) -> WsMessage {
    WsMessage::Binary(wire::encode(id, &Message::Error(ErrorFrame::new(category, message))).into())
}

async fn serve(agent: Arc<Agent>, socket: WebSocket, shutdown: CancellationToken) {
    let (mut sink, mut stream) = socket.split();
    let window = agent.args.bridge_window.max(1);
    let (tx, mut rx) = mpsc::channel::<WsMessage>(window + 4);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                return;
            }
        }
        let _ = sink.send(WsMessage::Close(None)).await;
    });
    let slots = Arc::new(Semaphore::new(window));
    // Requests still running, by id, so a cancel frame can drop one.
    let running: Arc<Mutex<HashMap<u64, AbortHandle>>> = Arc::default();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let msg = tokio::select! {
            m = stream.next() => m,
            () = shutdown.cancelled() => break,
        };
        let arrived = Instant::now();
        let buf = match msg {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
            Some(Ok(WsMessage::Binary(buf))) => buf,
            Some(Ok(WsMessage::Text(_))) => {
                agent.stats.error(ErrorCategory::BadRequest);
                let _ = tx
                    .send(error_frame(
                        0,
                        ErrorCategory::BadRequest,
                        "text messages are not part of the bridge protocol; send binary frames",
                    ))
                    .await;
                continue;
            }
            // Pings are answered by the WebSocket layer.
            Some(Ok(_)) => continue,
        };
        match wire::decode(buf) {
            Ok((id, Message::Request(req))) => {
                let agent = agent.clone();
                let tx = tx.clone();
                let finished = running.clone();
                let task = tokio::spawn(async move {
                    // The sender's deadline, never longer than the agent's own.
                    let timeout = req
                        .timeout_ms
                        .map(Duration::from_millis)
                        .map_or(agent.args.request_timeout, |t| {
                            t.min(agent.args.request_timeout)
                        });
                    let model = req.model.clone();
                    let request_id = req.request_id.clone().unwrap_or_default();
                    let result = if req.model == wire::ECHO_MODEL {
                        agent.echo(req, timeout).await
                    } else {
                        agent.infer(req, timeout, arrived).await
                    };
                    let encoding = Instant::now();
                    let (reply, stages) = match result {
                        Ok(resp) => {
                            let stages = resp.stages;
                            (Message::Response(resp), Some(stages))
                        }
                        Err(e) => (Message::Error(e.to_frame()), None),
                    };
                    let frame = wire::encode(id, &reply);
                    if let Some(mut stages) = stages.filter(|_| model != wire::ECHO_MODEL) {
                        stages.set(Stage::Send, ms(encoding.elapsed()));
                        agent.answered(&model, &request_id, &stages, ms(arrived.elapsed()));
                    }
                    lock(&finished).remove(&id);
                    let _ = tx.send(WsMessage::Binary(frame.into())).await;
                    drop(permit);
                });
                lock(&running).insert(id, task.abort_handle());
            }
            Ok((id, Message::Generate(req))) => {
                let task = tokio::spawn(relay_generation(
                    agent.clone(),
                    id,
                    req,
                    tx.clone(),
                    running.clone(),
                    permit,
                ));
                lock(&running).insert(id, task.abort_handle());
            }
            Ok((id, Message::Cancel)) => {
                // Dropping the task releases its queue place (work already in the page
                // finishes there, and its answer is discarded). No reply.
                if let Some(task) = lock(&running).remove(&id) {
                    task.abort();
                }
                drop(permit);
            }
            Ok((id, _)) => {
                agent.stats.error(ErrorCategory::BadRequest);
                let _ = tx
                    .send(error_frame(
                        id,
                        ErrorCategory::BadRequest,
                        "clients may only send request (kind 1), cancel (kind 4) and generate (kind 5) frames",
                    ))
                    .await;
            }
            Err(e) => {
                agent.stats.error(ErrorCategory::BadRequest);
                let _ = tx
                    .send(error_frame(
                        e.id.unwrap_or(0),
                        ErrorCategory::BadRequest,
                        e.to_string(),
                    ))
                    .await;
            }
        }
    }
    // Let outstanding requests answer before closing.
    let _ = slots
        .acquire_many(u32::try_from(window).unwrap_or(u32::MAX))
        .await;
    drop(tx);
    let _ = writer.await;
}

/// Runs generation `id` and sends its events as they come; aborted (a cancel frame, or
/// the connection gone), it drops the agent's channel, which stops the generation.
async fn relay_generation(
    agent: Arc<Agent>,
    id: u64,
    req: GenerateRequest,
    tx: mpsc::Sender<WsMessage>,
    running: Arc<Mutex<HashMap<u64, AbortHandle>>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let frame = |msg: &Message| WsMessage::Binary(wire::encode(id, msg).into());
    match agent.generate(req, agent.args.generation_timeout) {
        Err(e) => {
            let _ = tx.send(frame(&Message::Error(e.to_frame()))).await;
        }
        Ok(mut events) => {
            while let Some(event) = events.recv().await {
                let (msg, last) = match event {
                    Ok(e) => {
                        let last = matches!(e, GenerationEvent::End(_));
                        (Message::Generation(e), last)
                    }
                    Err(e) => (Message::Error(e.to_frame()), true),
                };
                if tx.send(frame(&msg)).await.is_err() || last {
                    break;
                }
            }
        }
    }
    lock(&running).remove(&id);
    drop(permit);
}
