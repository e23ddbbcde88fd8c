//! DevTools over a pipe, not a port. Chromium started with `--remote-debugging-pipe`
//! reads protocol messages from its fd 3 and writes them to its fd 4, each ended by a
//! NUL byte, and opens no DevTools port at all: nothing another local user (or another
//! container on the pod's network) can connect to and drive the browser through.
//!
//! chromiumoxide speaks DevTools over a WebSocket only, so the agent's end of the pipes
//! is offered to it as a WebSocket: a listener on loopback that takes one connection, at
//! a path with a random secret, and is closed as soon as that connection is made (the
//! agent makes it at once). What goes on after is the same messages as on Chromium's
//! own port, relayed.

use std::os::fd::OwnedFd;

use command_fds::{CommandFdExt as _, FdMapping};
use futures::{SinkExt as _, StreamExt as _};
use nix::fcntl::OFlag;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::LaunchError;

/// The file descriptors Chromium's `--remote-debugging-pipe` reads from and writes to.
const BROWSER_READS: i32 = 3;
const BROWSER_WRITES: i32 = 4;

/// The agent's ends of a browser's DevTools pipes, before the browser has started.
#[derive(Debug)]
pub(super) struct DevtoolsPipes {
    to_browser: OwnedFd,
    from_browser: OwnedFd,
}

impl DevtoolsPipes {
    /// Makes the two pipes and gives the browser's ends to `cmd` as its fds 3 and 4,
    /// with the switch that makes it use them. Both ends are close-on-exec in this
    /// process: no other child (the standby browser, the keeper) holds them, so the
    /// agent sees the pipe close when this browser dies.
    pub(super) fn attach(cmd: &mut std::process::Command) -> Result<Self, LaunchError> {
        let pipes = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from);
        let (browser_reads, to_browser) = pipes().map_err(LaunchError::DevtoolsPipe)?;
        let (from_browser, browser_writes) = pipes().map_err(LaunchError::DevtoolsPipe)?;
        cmd.arg("--remote-debugging-pipe")
            .fd_mappings(vec![
                FdMapping {
                    parent_fd: browser_reads,
                    child_fd: BROWSER_READS,
                },
                FdMapping {
                    parent_fd: browser_writes,
                    child_fd: BROWSER_WRITES,
                },
            ])
            .map_err(|e| LaunchError::DevtoolsPipe(std::io::Error::other(e)))?;
        Ok(Self {
            to_browser,
            from_browser,
        })
    }

    /// Offers the pipes as a one-connection WebSocket on loopback; returns its URL and
    /// the task relaying (it ends when either side closes).
    pub(super) async fn serve(self) -> Result<(String, JoinHandle<()>), LaunchError> {
        let to_browser =
            pipe::Sender::from_owned_fd(self.to_browser).map_err(LaunchError::DevtoolsPipe)?;
        let from_browser =
            pipe::Receiver::from_owned_fd(self.from_browser).map_err(LaunchError::DevtoolsPipe)?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(LaunchError::DevtoolsPipe)?;
        let port = listener
            .local_addr()
            .map_err(LaunchError::DevtoolsPipe)?
            .port();
        let path = format!("/devtools/browser/{:032x}", rand::random::<u128>());
        let url = format!("ws://127.0.0.1:{port}{path}");
        let task = tokio::spawn(async move {
            let Some(ws) = accept_one(listener, &path).await else {
                return;
            };
            relay(ws, to_browser, from_browser).await;
        });
        Ok((url, task))
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Takes connections until one asks for `path`, then closes the listener. A connection
/// with any other path is refused with 404 and dropped.
// The handshake callback's error type is tungstenite's, large as it is.
#[allow(clippy::result_large_err)]
async fn accept_one(listener: TcpListener, path: &str) -> Option<Socket> {
    loop {
        let (stream, _) = listener.accept().await.ok()?;
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            if req.uri().path() == path {
                Ok(resp)
            } else {
                let mut refused = ErrorResponse::new(None);
                *refused.status_mut() = StatusCode::NOT_FOUND;
                Err(refused)
            }
        };
        if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await {
            return Some(ws);
        }
    }
}

/// WebSocket text messages to the browser, each followed by NUL; NUL-ended messages
/// from the browser to the WebSocket.
async fn relay(ws: Socket, mut to_browser: pipe::Sender, mut from_browser: pipe::Receiver) {
    let (mut ws_out, mut ws_in) = ws.split();
    let outbound = async {
        while let Some(Ok(msg)) = ws_in.next().await {
            let bytes = match msg {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if to_browser.write_all(&bytes).await.is_err()
                || to_browser.write_all(&[0]).await.is_err()
            {
                break;
            }
        }
    };
    let inbound = async {
        let mut pending: Vec<u8> = Vec::new();
        // How much of `pending` is known to hold no NUL: a message of megabytes arriving
        // in many reads is scanned once, not again from its start after each read.
        let mut scanned = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_browser.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(at) = pending[scanned..].iter().position(|b| *b == 0) {
                let end = scanned + at;
                scanned = 0;
                let message: Vec<u8> = pending.drain(..=end).take(end).collect();
                let Ok(text) = String::from_utf8(message) else {
                    tracing::warn!("the browser sent a DevTools message that is not UTF-8");
                    continue;
                };
                if ws_out.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            scanned = pending.len();
        }
        // The browser is gone: the DevTools connection ends with it.
        let _ = ws_out.close().await;
    };
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
    }
}
