//! A small client for QEMU's machine protocol (QMP) over its unix socket: what bangerd uses to
//! drive a QEMU VMM (`-qmp unix:PATH,server=on,wait=off`).
//!
//! QMP is newline-delimited JSON. A connection begins with QEMU's greeting; the client must
//! negotiate capabilities before any command:
//!
//! ```text
//!  client                                   QEMU
//!    | <-- {"QMP": {"version": …}} ---------- |  greeting
//!    | -- {"execute": "qmp_capabilities"} --> |
//!    | <-- {"return": {}} ------------------- |
//!    | -- {"execute": "query-status"} ------> |
//!    | <-- {"event": "RESUME", …} ----------- |  events may come at any time: skipped
//!    | <-- {"return": {"status": "running"}}  |  or {"error": {"class", "desc"}}
//! ```
//!
//! Each call opens its own connection and closes it after the answer: QEMU's monitor serves
//! one client at a time (a second waits in the listen backlog until the first leaves), so a
//! connection held open would stall the supervisor's and the operations' calls. Every call is
//! bounded by a deadline, and every line read by [`MAX_LINE_BYTES`], so a wedged or hostile
//! VMM can neither hang nor balloon bangerd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one QMP exchange (connect, greeting, negotiation, command, answer) may take.
pub const DEFAULT_QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest line QEMU may send. Real answers here are a few hundred bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why a QMP call failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP did not answer {command} within {timeout_ms} ms")]
    Timeout { command: String, timeout_ms: u64 },
    #[error("QMP answered something unreadable: {0}")]
    Protocol(String),
    #[error("QEMU refused {command}: {desc} [{class}]")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// What `query-status` says. QEMU's run states, of which banger tells a few apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`, never run yet.
    Prelaunch,
    Paused,
    Running,
    /// The guest shut down (QEMU exits right after, unless told not to).
    Shutdown,
    /// Anything else QEMU reports (`internal-error`, `guest-panicked`, …).
    Other(String),
}

impl RunState {
    fn parse(status: &str) -> RunState {
        match status {
            "prelaunch" => RunState::Prelaunch,
            "paused" => RunState::Paused,
            "running" => RunState::Running,
            "shutdown" => RunState::Shutdown,
            other => RunState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Paused => "paused",
            RunState::Running => "running",
            RunState::Shutdown => "shutdown",
            RunState::Other(other) => other,
        }
    }
}

/// A QMP client for one socket. Cheap: it holds the path and a deadline, and connects per
/// call.
#[derive(Clone, Debug)]
pub struct QmpClient {
    socket: PathBuf,
    timeout: Duration,
}

impl QmpClient {
    pub fn new(socket: impl Into<PathBuf>) -> QmpClient {
        QmpClient {
            socket: socket.into(),
            timeout: DEFAULT_QMP_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> QmpClient {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<RunState, QmpError> {
        let answer = self.execute("query-status", None).await?;
        let status = answer
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| QmpError::Protocol(format!("query-status answered {answer}")))?;
        Ok(RunState::parse(status))
    }

    /// `cont`: runs a VM started with `-S` (or paused).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button. Returns at once; the guest decides
    /// what to do (a Debian guest powers off, and QEMU exits with it).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once, without asking the guest. QEMU may close the connection
    /// before its answer arrives, which counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(QmpError::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// Runs one command on a fresh connection and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let exchange = self.exchange(command, arguments);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(QmpError::Timeout {
                command: command.to_owned(),
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    async fn exchange(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| QmpError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        let greeting = read_message(&mut reader).await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {greeting}"
            )));
        }
        send(&mut writer, &json!({"execute": "qmp_capabilities"})).await?;
        answer(&mut reader, "qmp_capabilities").await?;
        let mut request = json!({"execute": command});
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        send(&mut writer, &request).await?;
        answer(&mut reader, command).await
    }
}

async fn send(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    message: &Value,
) -> Result<(), QmpError> {
    let mut line = message.to_string().into_bytes();
    line.push(b'\n');
    writer.write_all(&line).await?;
    Ok(())
}

/// Reads until the answer to `command` (skipping asynchronous events).
async fn answer<R>(reader: &mut R, command: &str) -> Result<Value, QmpError>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    loop {
        let message = read_message(reader).await?;
        if let Some(value) = message.get("return") {
            return Ok(value.clone());
        }
        if let Some(error) = message.get("error") {
            let field = |name| {
                error
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            return Err(QmpError::Command {
                command: command.to_owned(),
                class: field("class"),
                desc: field("desc"),
            });
        }
        if message.get("event").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected an answer to {command}, got {message}"
            )));
        }
    }
}

/// One JSON line, at most [`MAX_LINE_BYTES`] long.
async fn read_message<R>(reader: &mut R) -> Result<Value, QmpError>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    let read = reader
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Err(QmpError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "QEMU closed the QMP connection",
        )));
    }
    if !line.ends_with(b"\n") {
        return Err(if line.len() > MAX_LINE_BYTES {
            QmpError::Protocol(format!("a line longer than {MAX_LINE_BYTES} bytes"))
        } else {
            QmpError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "QEMU closed the QMP connection mid-line",
            ))
        });
    }
    serde_json::from_slice(&line)
        .map_err(|e| QmpError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&line))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: answers each line with the next canned reply.
    async fn fake_qemu(
        path: &Path,
        replies: Vec<&'static str>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, mut writer) = stream.into_split();
            let mut reader = BufReader::new(reader);
            writer
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut received = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                received.push(line.trim().to_owned());
                writer.write_all(reply.as_bytes()).await.unwrap();
            }
            received
        })
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_reads_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let peer = fake_qemu(
            &path,
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n",
            ],
        )
        .await;
        let state = QmpClient::new(&path).query_status().await.unwrap();
        assert_eq!(state, RunState::Running);
        assert_eq!(
            peer.await.unwrap(),
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"query-status"}"#
            ]
        );
    }

    #[tokio::test]
    async fn errors_name_the_command_and_qemus_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _peer = fake_qemu(
            &path,
            vec![
                "{\"return\": {}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n",
            ],
        )
        .await;
        let err = QmpClient::new(&path).cont().await.unwrap_err();
        assert_eq!(err.to_string(), "QEMU refused cont: no [GenericError]");
    }

    #[tokio::test]
    async fn a_silent_or_absent_qemu_fails_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        assert!(matches!(
            QmpClient::new(&path).query_status().await,
            Err(QmpError::Connect { .. })
        ));
        // Accepts and never greets.
        let _listener = UnixListener::bind(&path).unwrap();
        let err = QmpClient::new(&path)
            .with_timeout(Duration::from_millis(50))
            .query_status()
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_endless_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let chunk = vec![b'x'; 8192];
            while stream.write_all(&chunk).await.is_ok() {}
        });
        let err = QmpClient::new(&path).query_status().await.unwrap_err();
        assert!(
            matches!(err, QmpError::Protocol(ref why) if why.contains("longer")),
            "{err}"
        );
    }
}
