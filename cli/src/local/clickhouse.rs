//! The ClickHouse server `webaccel up` started, kept running like a browser's agent: a
//! server that exits (killed, crashed, OOM) is started again on the same data and ports
//! after a backoff, so the agents' and the gateway's writers, which spool rows while it is
//! gone, replay them into it; `webaccel status` shows its state. Before, a server killed
//! once never came back and every row from then on waited in spools.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webaccel_analytics::local::LocalClickHouse;
use webaccel_api::Backoff;

use super::Shared;
use super::status::LocalServer;

/// How often the server's process is looked at.
const CHECK: Duration = Duration::from_millis(500);
/// Restart backoff: from one second, doubling, to half a minute.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// A server that ran this long before it exited restarts without the backoff it built up.
const STABLE: Duration = Duration::from_secs(60);

fn publish(shared: &Shared, server: &LocalServer) {
    shared.status.send_modify(|s| {
        let mut next = (**s).clone();
        next.clickhouse_server = Some(server.clone());
        *s = Arc::new(next);
    });
}

/// Keeps `ch` running until `stop`; then stops it.
pub async fn supervise(mut ch: LocalClickHouse, shared: Arc<Shared>, stop: CancellationToken) {
    let backoff = Backoff::new(BACKOFF.0, BACKOFF.1);
    let mut server = LocalServer {
        state: "running".into(),
        pid: ch.pid(),
        ..LocalServer::default()
    };
    publish(&shared, &server);
    let mut failures = 0;
    let mut started = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK) => {}
        }
        let Some(exit) = ch.exited() else { continue };
        if started.elapsed() >= STABLE {
            failures = 0;
        }
        tracing::warn!(%exit, "the local ClickHouse server exited; starting it again on the same data (rows spool meanwhile)");
        server.state = "restarting".into();
        server.pid = None;
        server.last_exit = Some(exit.to_string());
        publish(&shared, &server);
        loop {
            let wait = backoff.delay(failures);
            failures += 1;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match ch.restart().await {
                Ok(()) => {
                    started = Instant::now();
                    server.state = "running".into();
                    server.pid = ch.pid();
                    server.restarts += 1;
                    tracing::info!(url = %ch.url(), restarts = server.restarts, "the local ClickHouse server is back");
                    publish(&shared, &server);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the local ClickHouse server did not start; trying again");
                    server.state = "down".into();
                    server.last_exit = Some(e.to_string());
                    publish(&shared, &server);
                }
            }
        }
    }
}
