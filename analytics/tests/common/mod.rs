//! A real ClickHouse server for tests: Debian's `clickhouse-server`, started on free
//! loopback ports with its data in a temporary directory, stoppable and restartable
//! on the same ports and data (for outage tests).

#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use webaccel_analytics::ClickHouseSettings;

pub struct ClickHouse {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub http_port: u16,
    tcp_port: u16,
    interserver_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_binary() -> &'static str {
    for p in ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("clickhouse-server is not installed (scripts/setup.sh installs it)")
}

impl ClickHouse {
    pub async fn start() -> Self {
        let mut ch = Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            http_port: free_port(),
            tcp_port: free_port(),
            interserver_port: free_port(),
        };
        ch.spawn().await;
        ch
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn settings(&self, database: &str) -> ClickHouseSettings {
        ClickHouseSettings::new(&self.url(), database, "test").unwrap()
    }

    async fn spawn(&mut self) {
        let d = self.dir.path().display();
        let child = Command::new(server_binary())
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--path={d}/data/"))
            .arg(format!("--tmp_path={d}/tmp/"))
            .arg(format!("--user_files_path={d}/user_files/"))
            .arg(format!("--format_schema_path={d}/format_schemas/"))
            .arg(format!("--http_port={}", self.http_port))
            .arg(format!("--tcp_port={}", self.tcp_port))
            .arg(format!("--interserver_http_port={}", self.interserver_port))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--logger.log={d}/server.log"))
            .arg(format!("--logger.errorlog={d}/server.err.log"))
            .arg("--logger.console=0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = http
                .get(format!("{}/?query=SELECT%201", self.url()))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "ClickHouse did not start; see {d}/server.err.log"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Runs a query over HTTP and returns the text.
    pub async fn query(&self, sql: &str) -> String {
        let r = reqwest::Client::new()
            .post(self.url())
            .body(sql.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{sql}: {text}");
        text.trim().to_owned()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}
