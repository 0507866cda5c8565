//! The guest's side of a workspace, reached through the agent's tree tools (`tool_tree`): its
//! manifest, a tar stream into it, a tar stream out of it. Each call opens its own agent
//! connection and runs `/proc/self/exe --TOOL DIR` through the ordinary `exec` (pipes), so no
//! agent protocol change was needed; an agent older than the tools answers with its usage,
//! which becomes [`GuestTreeError::OldAgent`].
//!
//! Bytes flow through bounded channels both ways: a blocking thread writes (or reads) the tar
//! while this task feeds (or drains) the agent, so neither a 100 MB checkout nor a hostile
//! guest's export is ever held in memory whole.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use banger_agent::tool_tree::{ExtractOptions, ExtractSummary, TreeManifest};
use banger_events::VmId;
use tokio::sync::mpsc;

use super::vm_common::agent_endpoint;
use crate::agent::client::{AgentClient, AgentError, ExecEvent};
use crate::agent::protocol::{ExecRequest, ExitStatus, MIN_PROTOCOL_VERSION, StdinMode};
use crate::host::guest_agent::{AgentLinks, AgentStream};
use crate::host::vmm::AgentTransport;
use crate::paths::Layout;

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of a tool's stdout kept (a manifest of 2 million entries is about 300 MB; a
/// checkout that big is not a workspace).
const MAX_JSON_BYTES: usize = 256 << 20;

/// Most bytes of a tool's stderr kept for the error message.
const MAX_STDERR_BYTES: usize = 16 << 10;

/// Chunks in flight between the tar thread and the agent.
const CHANNEL_CHUNKS: usize = 16;
const CHUNK_BYTES: usize = 256 << 10;

/// Why the guest's side failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestTreeError {
    #[error("cannot reach the guest agent: {0}")]
    Connect(String),
    #[error("the guest agent failed: {0}")]
    Agent(#[from] AgentError),
    #[error(
        "this VM's agent is older than workspaces (it does not know {tool}); re-pull its image (banger image pull --force …) and create the VM again"
    )]
    OldAgent { tool: &'static str },
    #[error("{tool} in the guest failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("{tool} in the guest printed something unreadable: {detail}")]
    Output { tool: &'static str, detail: String },
    #[error("{0}")]
    Host(String),
}

/// Where a VM's agent is.
#[derive(Clone, Copy)]
pub struct GuestLink<'a> {
    pub agents: &'a AgentLinks,
    pub layout: &'a Layout,
    pub vm_id: VmId,
    pub transport: AgentTransport,
}

impl GuestLink<'_> {
    async fn connect(&self) -> Result<AgentClient<AgentStream>, GuestTreeError> {
        let endpoint = agent_endpoint(self.layout, self.vm_id, self.transport);
        let stream = self
            .agents
            .connect(&endpoint, CONNECT_TIMEOUT)
            .await
            .map_err(|e| GuestTreeError::Connect(e.to_string()))?;
        tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            AgentClient::handshake_as(stream, "bangerd", MIN_PROTOCOL_VERSION),
        )
        .await
        .map_err(|_| GuestTreeError::Connect("no hello from the agent".into()))?
        .map_err(GuestTreeError::Agent)
    }
}

fn argv(tool: &'static str, dir: &str, extra: &[&str]) -> Vec<String> {
    let mut argv = vec!["/proc/self/exe".to_owned(), tool.to_owned(), dir.to_owned()];
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    argv
}

fn tool_failed(tool: &'static str, status: ExitStatus, stderr: &[u8]) -> GuestTreeError {
    let text = String::from_utf8_lossy(stderr).trim().to_owned();
    if text.contains(&format!("unexpected argument \"{tool}\"")) {
        return GuestTreeError::OldAgent { tool };
    }
    GuestTreeError::Tool {
        tool,
        status: match status {
            ExitStatus::Code(code) => format!("exit code {code}"),
            ExitStatus::Signal(signal) => format!("signal {signal}"),
        },
        stderr: text,
    }
}

fn keep(buffer: &mut Vec<u8>, chunk: &[u8], max: usize) {
    let room = max.saturating_sub(buffer.len());
    buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// The guest's manifest of `dir`.
pub async fn manifest(link: GuestLink<'_>, dir: &str) -> Result<TreeManifest, GuestTreeError> {
    const TOOL: &str = "--tree-manifest";
    let mut client = link.connect().await?;
    let request = ExecRequest::new(argv(TOOL, dir, &[]));
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let status = client
        .exec_with(&request, None, |stream, chunk| match stream {
            crate::agent::OutputStream::Stdout => keep(&mut stdout, chunk, MAX_JSON_BYTES),
            crate::agent::OutputStream::Stderr => keep(&mut stderr, chunk, MAX_STDERR_BYTES),
        })
        .await?;
    if !status.success() {
        return Err(tool_failed(TOOL, status, &stderr));
    }
    serde_json::from_slice(&stdout).map_err(|e| GuestTreeError::Output {
        tool: TOOL,
        detail: e.to_string(),
    })
}

/// A `Write` that hands chunks to an async task through a bounded channel.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let chunk = std::mem::take(&mut self.buffer);
            self.tx.blocking_send(chunk).map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the guest stopped reading")
            })?;
        }
        Ok(())
    }
}

/// A `Read` over chunks an async task receives.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Streams the tar that `produce` writes (on a blocking thread) into `--tar-receive DIR`.
/// Returns what `produce` returned and the guest's summary.
pub async fn receive<T: Send + 'static>(
    link: GuestLink<'_>,
    dir: &str,
    produce: impl FnOnce(&mut dyn Write) -> Result<T, String> + Send + 'static,
) -> Result<(T, ExtractSummary), GuestTreeError> {
    const TOOL: &str = "--tar-receive";
    let mut client = link.connect().await?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    let producer = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx,
            buffer: Vec::with_capacity(CHUNK_BYTES),
        };
        let result = produce(&mut writer);
        result.and_then(|value| writer.flush().map(|()| value).map_err(|e| e.to_string()))
    });
    let request = ExecRequest::new(argv(TOOL, dir, &[])).stdin(StdinMode::Pipe);
    let mut exec = client.exec(&request).await?;
    let (mut stdin, mut outputs) = exec.split();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut feeding = true;
    let status = loop {
        tokio::select! {
            chunk = rx.recv(), if feeding => match chunk {
                Some(chunk) => stdin.write(&chunk).await?,
                None => {
                    stdin.close().await?;
                    feeding = false;
                }
            },
            event = outputs.next() => match event? {
                ExecEvent::Stdout(chunk) => keep(&mut stdout, &chunk, MAX_JSON_BYTES),
                ExecEvent::Stderr(chunk) => keep(&mut stderr, &chunk, MAX_STDERR_BYTES),
                ExecEvent::Exited(status) => break status,
            },
        }
    };
    drop(rx);
    let produced = producer
        .await
        .map_err(|e| GuestTreeError::Host(format!("the tar writer did not finish: {e}")))?;
    if !status.success() {
        return Err(tool_failed(TOOL, status, &stderr));
    }
    let produced = produced.map_err(GuestTreeError::Host)?;
    let summary = serde_json::from_slice(&stdout).map_err(|e| GuestTreeError::Output {
        tool: TOOL,
        detail: e.to_string(),
    })?;
    Ok((produced, summary))
}

/// Fetches `paths` of the guest's `dir` with `--tar-send DIR --paths-from-stdin` and extracts
/// them under `into` (on the host) with `options`: the hardened reader, on a blocking thread.
pub async fn fetch(
    link: GuestLink<'_>,
    dir: &str,
    paths: &[String],
    into: &Path,
    options: ExtractOptions,
) -> Result<ExtractSummary, GuestTreeError> {
    const TOOL: &str = "--tar-send";
    let mut client = link.connect().await?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    let into = into.to_path_buf();
    let consumer = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        banger_agent::tool_tree::extract(reader, &into, &options).map_err(|e| e.to_string())
    });
    let mut list = Vec::new();
    for path in paths {
        list.extend_from_slice(path.as_bytes());
        list.push(0);
    }
    let request = ExecRequest::new(argv(TOOL, dir, &["--paths-from-stdin"])).stdin(StdinMode::Pipe);
    let mut exec = client.exec(&request).await?;
    let (mut stdin, mut outputs) = exec.split();
    let mut stderr = Vec::new();
    // The tool reads the whole list before it writes anything, so the list can go first.
    for chunk in list.chunks(64 << 10) {
        stdin.write(chunk).await?;
    }
    stdin.close().await?;
    let mut tx = Some(tx);
    let status = loop {
        match outputs.next().await? {
            ExecEvent::Stdout(chunk) => {
                // A consumer that stopped (it refused the stream) drops the rest.
                if let Some(sender) = &tx
                    && sender.send(chunk).await.is_err()
                {
                    tx = None;
                }
            }
            ExecEvent::Stderr(chunk) => keep(&mut stderr, &chunk, MAX_STDERR_BYTES),
            ExecEvent::Exited(status) => break status,
        }
    };
    drop(tx);
    let extracted = consumer
        .await
        .map_err(|e| GuestTreeError::Host(format!("the tar reader did not finish: {e}")))?;
    if !status.success() {
        return Err(tool_failed(TOOL, status, &stderr));
    }
    extracted.map_err(|e| GuestTreeError::Host(format!("the guest's export was refused: {e}")))
}
