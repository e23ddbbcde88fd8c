//! Load from the stock `tritonclient.http` (PyPI, default settings): the
//! `triton_load.py` driver, one client per thread, every answer checked against native
//! onnxruntime; its stdin moves the load between fixture models.

use serde_json::Value;

use crate::fixtures::{fixture, repo};

/// A running `triton_load.py`.
#[derive(Debug)]
pub struct TritonLoad {
    child: tokio::process::Child,
}

impl TritonLoad {
    /// `clients` clients against the KServe v2 HTTP endpoint `url`, idle until told a
    /// model with [`Self::send`].
    pub fn start(url: &str, clients: usize) -> Self {
        let child = tokio::process::Command::new("python3")
            .arg(repo().join("node-agent/tests/clients/triton_load.py"))
            .arg(url)
            .arg(fixture(""))
            .arg(clients.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with the test requirements");
        Self { child }
    }

    /// A model name (the load goes to it from now on) or `stop`.
    pub async fn send(&mut self, command: &str) {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("triton_load.py reads its stdin");
        stdin.flush().await.expect("triton_load.py reads its stdin");
    }

    /// Stops it: `{"ok": {model: answers}, "failed": [reasons]}`.
    pub async fn finish(mut self) -> Value {
        self.send("stop").await;
        let out = self
            .child
            .wait_with_output()
            .await
            .expect("triton_load.py ends");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("triton_load.py: {e}: {text}"))
    }
}
