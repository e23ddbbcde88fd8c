//! No control port another local user can reach. Chromium is driven over a pipe and
//! opens no port at all: the agent's processes listen on the agent's own port only.
//! Firefox's WebDriver BiDi needs a port on loopback; the agent holds its one session,
//! so a second client that finds the port gets no session to drive the browser with.

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use webaccel_testkit::procs;

use crate::common::{Agent, model_uri};

/// Every process the agent started (browsers, their children, the keeper), with the
/// ports each listens on.
fn their_ports(agent: &Agent) -> Vec<(i32, String, Vec<u16>)> {
    procs::descendants(agent.pid())
        .into_iter()
        .filter(|p| !p.is_zombie())
        .map(|p| (p.pid, procs::cmdline(p.pid), procs::listening_ports(p.pid)))
        .collect()
}

fn port_of(agent: &Agent) -> u16 {
    agent.base.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn chromium_is_driven_over_a_pipe_and_no_process_of_the_agent_opens_another_port() {
    let _machine = webaccel_testkit::beside().await;
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &[],
    )
    .await;
    // Driven all the same: it serves.
    assert_eq!(agent.infer_reference("mlp", "mlp").await.0, 200);

    let procs = their_ports(&agent);
    let main = agent.browser_pid().await;
    let cmd = procs::cmdline(main);
    assert!(cmd.contains("--remote-debugging-pipe"), "{cmd}");
    assert!(!cmd.contains("--remote-debugging-port"), "{cmd}");
    for (pid, cmd, ports) in &procs {
        assert!(
            ports.is_empty(),
            "process {pid} listens on {ports:?}: {cmd}"
        );
    }
    // The agent itself: its own port (HTTP, the page's bridge), and no other (the
    // DevTools relay's one-connection listener is closed once connected).
    assert_eq!(procs::listening_ports(agent.pid()), [port_of(&agent)]);
    println!("{} processes of the agent, none listening", procs.len());
}

#[tokio::test]
async fn firefox_s_bidi_port_gives_a_second_client_no_session() {
    let _machine = webaccel_testkit::beside().await;
    let binary = crate::common::firefox();
    let agent = Agent::start(
        &[format!("mlp={},backend=wasm", model_uri("mlp.onnx"))],
        &["--browser", "firefox", "--firefox", &binary],
    )
    .await;
    let listening: Vec<(i32, String, Vec<u16>)> = their_ports(&agent)
        .into_iter()
        .filter(|(_, _, ports)| !ports.is_empty())
        .collect();
    // Firefox's remote agent, on loopback, and nothing else.
    assert_eq!(listening.len(), 1, "{listening:?}");
    let port = listening[0].2[0];
    assert_eq!(listening[0].2.len(), 1, "{listening:?}");

    // Another local user finds the port and asks for a session.
    let refused =
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/session")).await {
            Err(e) => format!("connection refused: {e}"),
            Ok((mut ws, _)) => {
                let ask = json!({"id": 1, "method": "session.new", "params": {"capabilities": {}}});
                ws.send(Message::text(ask.to_string())).await.unwrap();
                let answer = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(&t).unwrap();
                            if v["id"] == 1 {
                                break v;
                            }
                        }
                        Some(Ok(_)) => {}
                        other => break json!({"type": "error", "closed": format!("{other:?}")}),
                    }
                };
                assert_eq!(
                    answer["type"], "error",
                    "a second session was made: {answer}"
                );
                answer.to_string()
            }
        };
    println!("second client: {refused}");
    // The agent's own session still drives the browser.
    assert_eq!(agent.infer_reference("mlp", "mlp").await.0, 200);
}
