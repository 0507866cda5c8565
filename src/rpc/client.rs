//! An RPC client for bangerd's socket.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::protocol::{PROTOCOL_VERSION, Request, Response, RpcError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach bangerd at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to bangerd: {0}")]
    Io(#[from] std::io::Error),
    #[error("bangerd closed the connection before answering")]
    Closed,
    #[error("bangerd sent something this client cannot read: {0}")]
    Protocol(String),
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// One connection to bangerd. Calls on it are sequential.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Client {
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(read),
            writer,
            next_id: 1,
        })
    }

    /// Calls `method` and decodes its result.
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let id = self.send(method, params).await?;
        let response = self.receive(id).await?;
        if response.item.is_some() {
            return Err(ClientError::Protocol(format!(
                "{method} answered with a stream item to a plain call"
            )));
        }
        finish(response)
    }

    /// Starts a streaming call; read its items with [`Stream::next`].
    pub async fn stream<P: Serialize>(
        mut self,
        method: &str,
        params: &P,
    ) -> Result<Stream, ClientError> {
        let id = self.send(method, params).await?;
        Ok(Stream {
            reader: self.reader,
            writer: Some(self.writer),
            id,
            done: false,
        })
    }

    async fn send<P: Serialize>(&mut self, method: &str, params: &P) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let params =
            serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let request = Request {
            v: PROTOCOL_VERSION,
            id,
            method: method.to_owned(),
            params,
        };
        let mut line =
            serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(id)
    }

    async fn receive(&mut self, id: u64) -> Result<Response, ClientError> {
        receive(&mut self.reader, id).await
    }
}

async fn receive(reader: &mut BufReader<OwnedReadHalf>, id: u64) -> Result<Response, ClientError> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(ClientError::Closed);
    }
    let response: Response = serde_json::from_str(&line)
        .map_err(|e| ClientError::Protocol(format!("{e}: {}", line.trim_end())))?;
    if response.id != id && response.id != 0 {
        return Err(ClientError::Protocol(format!(
            "answer to request {} while waiting for {id}",
            response.id
        )));
    }
    Ok(response)
}

fn finish<R: DeserializeOwned>(response: Response) -> Result<R, ClientError> {
    if let Some(error) = response.error {
        return Err(ClientError::Rpc(error));
    }
    let result = response.result.unwrap_or(serde_json::Value::Null);
    serde_json::from_value(result)
        .map_err(|e| ClientError::Protocol(format!("unexpected result: {e}")))
}

/// The items of a streaming call.
pub struct Stream {
    reader: BufReader<OwnedReadHalf>,
    /// Kept (unused) while the stream runs: dropping it would half-close the connection, which
    /// bangerd takes for the client going away. `None` once [`Stream::take_input`] took it.
    writer: Option<OwnedWriteHalf>,
    id: u64,
    done: bool,
}

/// The sending side of a stream's connection, for a request that sends lines after itself
/// (`vm.exec` with `stdin`). Keep it until the stream ends: dropping it half-closes the
/// connection, and bangerd ends a stream whose client hung up.
pub struct StreamInput {
    writer: OwnedWriteHalf,
}

impl StreamInput {
    /// Writes `line` as one JSON line.
    pub async fn send<T: Serialize>(&mut self, line: &T) -> Result<(), ClientError> {
        let mut bytes =
            serde_json::to_vec(line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await?;
        Ok(())
    }
}

/// One step of a stream.
pub enum StreamEvent<T> {
    Item(T),
    /// The stream ended normally with this result.
    End(serde_json::Value),
}

impl Stream {
    /// The connection's sending side, once; see [`StreamInput`].
    pub fn take_input(&mut self) -> Option<StreamInput> {
        self.writer.take().map(|writer| StreamInput { writer })
    }

    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<StreamEvent<T>, ClientError> {
        if self.done {
            return Err(ClientError::Closed);
        }
        let response = receive(&mut self.reader, self.id).await?;
        if let Some(item) = response.item {
            let item = serde_json::from_value(item)
                .map_err(|e| ClientError::Protocol(format!("bad stream item: {e}")))?;
            return Ok(StreamEvent::Item(item));
        }
        self.done = true;
        finish::<serde_json::Value>(response).map(StreamEvent::End)
    }
}
