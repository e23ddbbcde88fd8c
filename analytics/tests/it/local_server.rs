//! The local ClickHouse server's start: a server that cannot bind its port (another
//! process took it between the look for a free port and the server's bind) exits at
//! once, and that is reported at once, not after the whole start bound.

use std::time::{Duration, Instant};

use webaccel_analytics::local::{LocalClickHouse, LocalError};

#[tokio::test]
async fn a_port_taken_meanwhile_is_reported_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let started = Instant::now();
    let err = LocalClickHouse::start_on(port).await.unwrap_err();
    assert!(matches!(err, LocalError::Exited { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "reported after {:?}",
        started.elapsed()
    );
    // On free ports it starts (a collision there is retried on other ports).
    let ch = LocalClickHouse::start().await.unwrap();
    assert_eq!(ch.query("SELECT 1").await.unwrap(), "1");
}
