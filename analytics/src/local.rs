//! A ClickHouse server of webaccel's own: Debian's `clickhouse-server` started on
//! loopback ports with its data in a temporary directory. Local mode uses it when no
//! server is configured, and the tests use it (they also stop and restart it on the
//! same ports and data to stage outages).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ClickHouseSettings;

#[derive(Debug)]
pub struct LocalClickHouse {
    child: Option<Child>,
    dir: DataDir,
    pub http_port: u16,
    tcp_port: u16,
    interserver_port: u16,
}

/// Why a local server could not be started, or could not run a query.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("clickhouse-server is not installed (scripts/setup.sh installs Debian's package)")]
    NotInstalled,
    #[error("starting clickhouse-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("clickhouse-server did not answer within {secs} s; its log is {0}", secs = START_LIMIT.as_secs())]
    NoAnswer(String),
    #[error("clickhouse-server exited while starting ({status}); its log is {log}")]
    Exited { status: String, log: String },
    /// A query got no answer over HTTP.
    #[error(transparent)]
    Query(#[from] reqwest::Error),
    /// The server refused a query: the query and the server's words.
    #[error("{sql}: {answer}")]
    Refused { sql: String, answer: String },
}

/// Where the server keeps its data: a temporary directory (tests) or one that outlives
/// the process (local mode's `--data-dir`).
#[derive(Debug)]
enum DataDir {
    Temporary(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl DataDir {
    fn path(&self) -> &std::path::Path {
        match self {
            Self::Temporary(t) => t.path(),
            Self::Kept(p) => p,
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

const SETPRIV: &str = "/usr/bin/setpriv";

/// How long a starting server may take to answer. 18.16 answers in 1-3 s on an idle
/// machine, but a starved 2-core CI running browsers beside it once took past a minute;
/// a server that answers late is still a server.
const START_LIMIT: Duration = Duration::from_secs(180);

/// The installed server binary, if any.
pub fn server_binary() -> Option<&'static str> {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

impl LocalClickHouse {
    /// Starts a server on free ports.
    pub async fn start() -> Result<Self, LocalError> {
        Self::start_with(DataDir::Temporary(tempfile::tempdir()?), None).await
    }

    /// Starts a server whose HTTP interface listens on `http_port`.
    pub async fn start_on(http_port: u16) -> Result<Self, LocalError> {
        Self::start_with(DataDir::Temporary(tempfile::tempdir()?), Some(http_port)).await
    }

    /// Starts a server on a free port with its data kept in `dir` (created if missing),
    /// so metrics survive restarts.
    pub async fn start_in(dir: std::path::PathBuf) -> Result<Self, LocalError> {
        std::fs::create_dir_all(&dir)?;
        Self::start_with(DataDir::Kept(dir), None).await
    }

    /// Starts on `http_port` (else a free one). A free port is only free when it was
    /// looked at: another process (a test beside this one starting its own server) may
    /// bind it before the server does, and the server then exits at once. So a server
    /// that exits while starting is started again on other free ports, a few times.
    async fn start_with(dir: DataDir, http_port: Option<u16>) -> Result<Self, LocalError> {
        let mut ch = Self {
            child: None,
            dir,
            http_port: http_port.map_or_else(free_port, Ok)?,
            tcp_port: free_port()?,
            interserver_port: free_port()?,
        };
        let mut tries = 0;
        loop {
            match ch.spawn().await {
                Err(LocalError::Exited { .. }) if tries < 3 => {
                    tries += 1;
                    if http_port.is_none() {
                        ch.http_port = free_port()?;
                    }
                    ch.tcp_port = free_port()?;
                    ch.interserver_port = free_port()?;
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(ch),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn settings(&self, database: &str) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.url(),
            database: database.to_owned(),
            user: None,
            password: None,
        }
    }

    async fn spawn(&mut self) -> Result<(), LocalError> {
        let binary = server_binary().ok_or(LocalError::NotInstalled)?;
        let d = self.dir.path().display().to_string();
        // The server must not outlive whoever started it (a test, `webaccel up`), even
        // when that is SIGKILLed: util-linux's setpriv asks the kernel to kill it then.
        let mut cmd = if std::path::Path::new(SETPRIV).exists() {
            let mut c = Command::new(SETPRIV);
            c.args(["--pdeathsig", "KILL", "--", binary]);
            c
        } else {
            Command::new(binary)
        };
        let child = cmd
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
            .spawn()?;
        self.child = Some(child);
        // Bounded: whatever holds the port when the server could not bind it may accept
        // the connection and never answer.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let start = Instant::now();
        loop {
            if let Ok(r) = http
                .get(format!("{}/?query=SELECT%201", self.url()))
                .send()
                .await
                && r.status() == 200
            {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(LocalError::Exited {
                    status: status.to_string(),
                    log: format!("{d}/server.err.log"),
                });
            }
            if start.elapsed() > START_LIMIT {
                self.kill();
                return Err(LocalError::NoAnswer(format!("{d}/server.err.log")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the server ended, if it has (and collects it): a supervisor's check.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) -> Result<(), LocalError> {
        self.kill();
        self.spawn().await
    }

    /// Runs a query over HTTP and returns its text output, or the server's error.
    pub async fn query(&self, sql: &str) -> Result<String, LocalError> {
        let r = reqwest::Client::new()
            .post(self.url())
            .body(sql.to_owned())
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        if status.is_success() {
            Ok(text.trim().to_owned())
        } else {
            Err(LocalError::Refused {
                sql: sql.to_owned(),
                answer: text,
            })
        }
    }
}

impl Drop for LocalClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}
