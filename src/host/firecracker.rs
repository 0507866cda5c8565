//! A client for Firecracker's HTTP API over its unix socket, and the host side of its vsock
//! handshake.
//!
//! This module owns the wire format banger speaks to a Firecracker process: the request
//! bodies (typed structs that mirror the v1.x swagger, `src/firecracker/swagger/firecracker.yaml`
//! in the Firecracker repository; optional fields are left out of the JSON when `None`, so a
//! body never carries a field an older Firecracker would reject), the status codes, and the
//! `{"fault_message": "..."}` errors. It does not know which calls are allowed before or after
//! `InstanceStart`: Firecracker enforces that and answers 400, which arrives here as
//! [`FirecrackerError::Api`].
//!
//! The HTTP/1.1 client is written here rather than pulled in: Firecracker's server
//! (`micro_http`) speaks a small, fixed subset — one request per exchange, `Content-Length`
//! bodies, no chunked encoding — and a strict client that refuses anything else turns a
//! confused peer into a clear [`FirecrackerError::Protocol`] instead of a hang.
//!
//! Invariants:
//! - one connection per request: no state survives between calls, so a client value is cheap
//!   to clone and safe to share, and a Firecracker restart needs no reconnect logic;
//! - every exchange (connect, write, read) runs under one deadline
//!   ([`FirecrackerClient::with_timeout`]);
//! - a response is read to exactly its `Content-Length`; anything else is a protocol error.
//!
//! Host-initiated vsock ([`vsock_connect`]): the host connects to the vsock device's
//! `uds_path`, writes `CONNECT <port>\n`, and Firecracker answers `OK <host_port>\n` once a
//! guest listener accepted; when nothing listens on that guest port Firecracker closes the
//! connection instead.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long one API exchange may take by default. Firecracker answers configuration calls
/// in microseconds and `InstanceStart` in tens of milliseconds; the margin is for a loaded
/// 2-core machine.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the vsock handshake may take by default.
pub const DEFAULT_VSOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Response heads beyond this are refused: Firecracker's are about 100 bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Response bodies beyond this are refused: the largest banger asks for (`GET /vm/config`)
/// is a few KiB.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Firecracker reads at most 32 bytes of a `CONNECT` line; its answer is as short.
const MAX_VSOCK_LINE_BYTES: usize = 32;

// ---------------------------------------------------------------------------------------------
// Request and response bodies (swagger definitions).
// ---------------------------------------------------------------------------------------------

/// `MachineConfiguration`: `PUT /machine-config`, `GET /machine-config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// 1 to 32; with SMT, 1 or an even number.
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfig {
    /// A configuration with only the two required fields.
    pub fn new(vcpu_count: u8, mem_size_mib: u32) -> MachineConfig {
        MachineConfig {
            vcpu_count,
            mem_size_mib,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
        }
    }
}

/// `MachineConfiguration.huge_pages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `BootSource`: `PUT /boot-source`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `Drive` (virtio-block flavour): `PUT /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Also the last path segment; letters, digits and `_` only.
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
}

/// `Drive.cache_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    Unsafe,
    Writeback,
}

/// `Drive.io_engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    Sync,
    Async,
}

/// `NetworkInterface`: `PUT /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Also the last path segment; letters, digits and `_` only.
    pub iface_id: String,
    /// The host tap device.
    pub host_dev_name: String,
    /// `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `Vsock`: `PUT /vsock`. The deprecated `vsock_id` is never sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// At least 3 (0–2 are reserved).
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// `Logger`: `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
}

/// `Logger.level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

/// `InstanceActionInfo.action_type`: `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Serialize)]
struct InstanceActionInfo {
    action_type: ActionType,
}

/// `Vm.state`: `PATCH /vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateRequest {
    Paused,
    Resumed,
}

#[derive(Serialize)]
struct VmPatch {
    state: VmStateRequest,
}

/// `InstanceInfo`: `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
    pub app_name: String,
}

/// `InstanceInfo.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

#[derive(Deserialize)]
struct FirecrackerVersion {
    firecracker_version: String,
}

#[derive(Deserialize)]
struct Fault {
    fault_message: String,
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    /// Firecracker understood the request and refused it (HTTP 400 and friends).
    #[error("firecracker refused {endpoint} (HTTP {status}): {fault_message}")]
    Api {
        endpoint: String,
        status: u16,
        fault_message: String,
    },
    /// The API socket could not be reached or the connection failed.
    #[error("cannot talk to firecracker on {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The peer answered something that is not a response this client accepts.
    #[error("firecracker's answer to {endpoint} is not valid: {detail}")]
    Protocol { endpoint: String, detail: String },
    /// No complete answer within the client's timeout.
    #[error("firecracker did not answer {endpoint} within {timeout_ms} ms")]
    Timeout { endpoint: String, timeout_ms: u64 },
    /// The request could not be written at all (a path that is not UTF-8, an id that cannot be
    /// a URL segment). Nothing was sent.
    #[error("cannot send {endpoint} to firecracker: {detail}")]
    InvalidRequest { endpoint: String, detail: String },
}

impl FirecrackerError {
    /// Firecracker's own explanation, when it refused the request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            FirecrackerError::Api { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }
}

/// Why a host-initiated vsock connection failed.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(
        "cannot connect to the VM's vsock socket {}: {source} (is its firecracker running?)",
        uds_path.display()
    )]
    Connect {
        uds_path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Firecracker closed the connection instead of answering `OK`: nothing in the guest
    /// accepted on that port.
    #[error(
        "nothing in the guest answers on vsock port {port} (firecracker closed {} without OK; \
         is the guest agent up?)",
        uds_path.display()
    )]
    NoListener { uds_path: PathBuf, port: u32 },
    #[error("vsock handshake on {} port {port}: expected \"OK <port>\", got {answer:?}", uds_path.display())]
    Protocol {
        uds_path: PathBuf,
        port: u32,
        answer: String,
    },
    #[error("vsock handshake on {} port {port}: no answer within {timeout_ms} ms", uds_path.display())]
    Timeout {
        uds_path: PathBuf,
        port: u32,
        timeout_ms: u64,
    },
    #[error("vsock handshake on {} port {port}: {source}", uds_path.display())]
    Io {
        uds_path: PathBuf,
        port: u32,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------------------------

/// HTTP methods Firecracker's API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// A response as read off the socket, before any interpretation of its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// Header names as sent; look them up case-insensitively with [`RawResponse::header`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A Firecracker API client bound to one API socket.
#[derive(Clone, Debug)]
pub struct FirecrackerClient {
    socket: PathBuf,
    timeout: Duration,
}

impl FirecrackerClient {
    pub fn new(socket: impl Into<PathBuf>) -> FirecrackerClient {
        FirecrackerClient {
            socket: socket.into(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The deadline for each whole exchange (connect, send, receive).
    pub fn with_timeout(mut self, timeout: Duration) -> FirecrackerClient {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PUT /machine-config` (pre-boot only).
    pub async fn put_machine_config(&self, config: &MachineConfig) -> Result<(), FirecrackerError> {
        self.send_json(Method::Put, "/machine-config", config).await
    }

    /// `GET /machine-config`.
    pub async fn get_machine_config(&self) -> Result<MachineConfig, FirecrackerError> {
        self.get_json("/machine-config").await
    }

    /// `PUT /boot-source` (pre-boot only).
    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<(), FirecrackerError> {
        self.send_json(Method::Put, "/boot-source", boot).await
    }

    /// `PUT /drives/{drive_id}` (pre-boot only).
    pub async fn put_drive(&self, drive: &Drive) -> Result<(), FirecrackerError> {
        let path = format!("/drives/{}", checked_id(&drive.drive_id, "/drives")?);
        self.send_json(Method::Put, &path, drive).await
    }

    /// `PUT /network-interfaces/{iface_id}` (pre-boot only).
    pub async fn put_network_interface(
        &self,
        iface: &NetworkInterface,
    ) -> Result<(), FirecrackerError> {
        let id = checked_id(&iface.iface_id, "/network-interfaces")?;
        let path = format!("/network-interfaces/{id}");
        self.send_json(Method::Put, &path, iface).await
    }

    /// `PUT /vsock` (pre-boot only). Firecracker binds `uds_path` here and fails when the
    /// path already exists.
    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<(), FirecrackerError> {
        self.send_json(Method::Put, "/vsock", vsock).await
    }

    /// `PUT /logger` (pre-boot only).
    pub async fn put_logger(&self, logger: &Logger) -> Result<(), FirecrackerError> {
        self.send_json(Method::Put, "/logger", logger).await
    }

    /// `PUT /actions`.
    pub async fn action(&self, action_type: ActionType) -> Result<(), FirecrackerError> {
        self.send_json(Method::Put, "/actions", &InstanceActionInfo { action_type })
            .await
    }

    /// `PUT /actions {"action_type": "InstanceStart"}`: boots the configured guest. Refused
    /// without a boot source and on an instance that already started.
    pub async fn instance_start(&self) -> Result<(), FirecrackerError> {
        self.action(ActionType::InstanceStart).await
    }

    /// `PUT /actions {"action_type": "SendCtrlAltDel"}`: asks the guest to shut down (x86_64).
    /// Firecracker exits once the guest has.
    pub async fn send_ctrl_alt_del(&self) -> Result<(), FirecrackerError> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    /// `GET /`: id, state, version.
    pub async fn describe_instance(&self) -> Result<InstanceInfo, FirecrackerError> {
        self.get_json("/").await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<String, FirecrackerError> {
        let version: FirecrackerVersion = self.get_json("/version").await?;
        Ok(version.firecracker_version)
    }

    /// `PATCH /vm {"state": "Paused"}` (post-boot only).
    pub async fn pause(&self) -> Result<(), FirecrackerError> {
        let body = VmPatch {
            state: VmStateRequest::Paused,
        };
        self.send_json(Method::Patch, "/vm", &body).await
    }

    /// `PATCH /vm {"state": "Resumed"}` (post-boot only).
    pub async fn resume(&self) -> Result<(), FirecrackerError> {
        let body = VmPatch {
            state: VmStateRequest::Resumed,
        };
        self.send_json(Method::Patch, "/vm", &body).await
    }

    /// Sends `body` and expects a 2xx with no meaningful body.
    async fn send_json<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &T,
    ) -> Result<(), FirecrackerError> {
        let endpoint = endpoint(method, path);
        let bytes = serde_json::to_vec(body).map_err(|err| FirecrackerError::InvalidRequest {
            endpoint: endpoint.clone(),
            detail: err.to_string(),
        })?;
        let response = self.request(method, path, Some(&bytes)).await?;
        check_status(&endpoint, response).map(drop)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, FirecrackerError> {
        let endpoint = endpoint(Method::Get, path);
        let response = self.request(Method::Get, path, None).await?;
        let response = check_status(&endpoint, response)?;
        serde_json::from_slice(&response.body).map_err(|err| FirecrackerError::Protocol {
            endpoint,
            detail: format!(
                "body {:?} does not decode: {err}",
                String::from_utf8_lossy(&response.body)
            ),
        })
    }

    /// One raw exchange: whatever status comes back is returned, not judged. Typed methods
    /// build on this; tests use it to send bodies the typed structs cannot express.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<RawResponse, FirecrackerError> {
        let endpoint = endpoint(method, path);
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(FirecrackerError::InvalidRequest {
                endpoint,
                detail: "the path must start with / and hold no spaces or control characters"
                    .to_string(),
            });
        }
        let request = encode_request(method, path, body);
        match tokio::time::timeout(self.timeout, self.exchange(&endpoint, &request)).await {
            Ok(result) => result,
            Err(_) => Err(FirecrackerError::Timeout {
                endpoint,
                timeout_ms: duration_ms(self.timeout),
            }),
        }
    }

    async fn exchange(
        &self,
        endpoint: &str,
        request: &[u8],
    ) -> Result<RawResponse, FirecrackerError> {
        let io_error = |source| FirecrackerError::Io {
            socket: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).await.map_err(io_error)?;
        stream.write_all(request).await.map_err(io_error)?;
        read_response(&mut stream, endpoint)
            .await
            .map_err(|err| match err {
                ReadError::Io(source) => io_error(source),
                ReadError::Protocol(detail) => FirecrackerError::Protocol {
                    endpoint: endpoint.to_string(),
                    detail,
                },
            })
    }
}

fn endpoint(method: Method, path: &str) -> String {
    format!("{} {path}", method.as_str())
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Firecracker's own rule for resource ids in paths (`checked_id`): letters, digits, `_`.
/// Checked here too because anything else could not be put into the URL unescaped.
fn checked_id<'a>(id: &'a str, collection: &str) -> Result<&'a str, FirecrackerError> {
    if id.is_empty() || !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(FirecrackerError::InvalidRequest {
            endpoint: format!("PUT {collection}/{id}"),
            detail: format!("{id:?} is not a valid id: use letters, digits and _"),
        });
    }
    Ok(id)
}

/// Maps a non-2xx status to [`FirecrackerError::Api`], keeping Firecracker's fault message.
fn check_status(endpoint: &str, response: RawResponse) -> Result<RawResponse, FirecrackerError> {
    if (200..300).contains(&response.status) {
        return Ok(response);
    }
    let fault_message = match serde_json::from_slice::<Fault>(&response.body) {
        Ok(fault) => fault.fault_message,
        Err(_) if response.body.is_empty() => "(no fault_message in the response)".to_string(),
        // Not every 400 is Firecracker's: micro_http answers a request it cannot parse itself,
        // with `{ "error": "...\nAll previous unanswered requests will be dropped." }` (a raw
        // newline in the string, so not JSON; seen from v1.16.1). Kept verbatim.
        Err(_) => String::from_utf8_lossy(&response.body).into_owned(),
    };
    Err(FirecrackerError::Api {
        endpoint: endpoint.to_string(),
        status: response.status,
        fault_message,
    })
}

/// The bytes of one request. GET carries no body: Firecracker refuses a GET with one.
fn encode_request(method: Method, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!(
        "{} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n",
        method.as_str()
    )
    .into_bytes();
    match body {
        Some(body) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
    out
}

enum ReadError {
    Io(io::Error),
    Protocol(String),
}

/// The parsed status line and headers of a response.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many body bytes follow the head, by the rules this client accepts.
    fn body_len(&self) -> Result<usize, String> {
        if self.header("transfer-encoding").is_some() {
            return Err(
                "a Transfer-Encoding (chunked) response is not supported; Firecracker sends \
                 Content-Length"
                    .to_string(),
            );
        }
        let mut lengths = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim());
        let length = match (lengths.next(), lengths.next()) {
            (None, _) => None,
            (Some(one), None) => Some(
                one.parse::<usize>()
                    .map_err(|_| format!("Content-Length {one:?} is not a number"))?,
            ),
            (Some(_), Some(_)) => return Err("more than one Content-Length".to_string()),
        };
        match (self.status, length) {
            // 204 and 304 have no body by definition; micro_http sends no Content-Length.
            (204 | 304, None | Some(0)) => Ok(0),
            (204 | 304, Some(n)) => Err(format!("status {} with a {n}-byte body", self.status)),
            (_, Some(n)) if n > MAX_BODY_BYTES => {
                Err(format!("a {n}-byte body is larger than {MAX_BODY_BYTES}"))
            }
            (_, Some(n)) => Ok(n),
            (status, None) => Err(format!("status {status} without Content-Length")),
        }
    }
}

/// Parses a response head (everything before the blank line, without it).
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .ok_or_else(|| format!("status line {status_line:?} is not HTTP/1.x"))?;
    // micro_http writes "HTTP/1.1 204 " — the reason phrase is empty.
    let code = rest.split(' ').next().unwrap_or_default();
    let status = match code.parse::<u16>() {
        Ok(status) if code.len() == 3 && (100..600).contains(&status) => status,
        _ => {
            return Err(format!(
                "status line {status_line:?} has no valid status code"
            ));
        }
    };
    if (100..200).contains(&status) {
        return Err(format!(
            "unexpected informational status {status} (this client never sends Expect)"
        ));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err("folded header lines are not accepted".to_string());
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} has no colon"))?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(format!("header line {line:?} has an invalid name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Head { status, headers })
}

async fn read_response(stream: &mut UnixStream, endpoint: &str) -> Result<RawResponse, ReadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = find_blank_line(&buf) {
            break at;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(ReadError::Protocol(format!(
                "the response head is longer than {MAX_HEAD_BYTES} bytes"
            )));
        }
        let n = stream.read(&mut chunk).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Protocol(if buf.is_empty() {
                format!(
                    "firecracker closed the connection without answering {endpoint} \
                     (did it exit?)"
                )
            } else {
                "the connection closed in the middle of the response head".to_string()
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buf[..head_end]).map_err(ReadError::Protocol)?;
    let body_len = head.body_len().map_err(ReadError::Protocol)?;
    let mut body = buf.split_off(head_end + 4);
    while body.len() < body_len {
        let n = stream.read(&mut chunk).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Protocol(format!(
                "the connection closed after {} of {body_len} body bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if body.len() > body_len {
        return Err(ReadError::Protocol(format!(
            "{} bytes arrived after the {body_len}-byte body",
            body.len() - body_len
        )));
    }
    Ok(RawResponse {
        status: head.status,
        headers: head.headers,
        body,
    })
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

// ---------------------------------------------------------------------------------------------
// vsock.
// ---------------------------------------------------------------------------------------------

/// Connects to guest vsock `port` through the vsock device's host socket `uds_path`, with
/// [`DEFAULT_VSOCK_TIMEOUT`]. The returned stream carries the guest connection's bytes and
/// nothing of the handshake.
pub async fn vsock_connect(uds_path: &Path, port: u32) -> Result<UnixStream, VsockError> {
    vsock_connect_timeout(uds_path, port, DEFAULT_VSOCK_TIMEOUT).await
}

/// [`vsock_connect`] with an explicit deadline for the connect and the handshake.
pub async fn vsock_connect_timeout(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, VsockError> {
    match tokio::time::timeout(timeout, vsock_handshake(uds_path, port)).await {
        Ok(result) => result,
        Err(_) => Err(VsockError::Timeout {
            uds_path: uds_path.to_path_buf(),
            port,
            timeout_ms: duration_ms(timeout),
        }),
    }
}

async fn vsock_handshake(uds_path: &Path, port: u32) -> Result<UnixStream, VsockError> {
    let mut stream = UnixStream::connect(uds_path)
        .await
        .map_err(|source| VsockError::Connect {
            uds_path: uds_path.to_path_buf(),
            source,
        })?;
    let io_error = |source| VsockError::Io {
        uds_path: uds_path.to_path_buf(),
        port,
        source,
    };
    let no_listener = || VsockError::NoListener {
        uds_path: uds_path.to_path_buf(),
        port,
    };
    match stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
    {
        Ok(()) => {}
        // Firecracker may already have dropped the connection.
        Err(err) if is_disconnect(&err) => return Err(no_listener()),
        Err(err) => return Err(io_error(err)),
    }
    // One byte at a time: whatever follows the newline belongs to the guest's stream, and
    // the caller must see it.
    let mut line = Vec::with_capacity(MAX_VSOCK_LINE_BYTES);
    let mut byte = [0u8; 1];
    loop {
        let n = match stream.read(&mut byte).await {
            Ok(n) => n,
            Err(err) if is_disconnect(&err) => 0,
            Err(err) => return Err(io_error(err)),
        };
        if n == 0 {
            return Err(if line.is_empty() {
                no_listener()
            } else {
                VsockError::Protocol {
                    uds_path: uds_path.to_path_buf(),
                    port,
                    answer: String::from_utf8_lossy(&line).into_owned(),
                }
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() >= MAX_VSOCK_LINE_BYTES {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&line).into_owned();
    match parse_vsock_ok(&answer) {
        Some(host_port) => {
            tracing::debug!(uds = %uds_path.display(), port, host_port, "vsock connected");
            Ok(stream)
        }
        None => Err(VsockError::Protocol {
            uds_path: uds_path.to_path_buf(),
            port,
            answer,
        }),
    }
}

/// Parses `OK <host_port>` (the line without its newline).
fn parse_vsock_ok(line: &str) -> Option<u32> {
    let port = line.strip_prefix("OK ")?;
    port.parse().ok()
}

fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn bodies_leave_out_unset_optional_fields() {
        let json = serde_json::to_value(MachineConfig::new(2, 512)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"vcpu_count": 2, "mem_size_mib": 512})
        );

        let drive = Drive {
            drive_id: "rootfs".into(),
            path_on_host: "/r.ext4".into(),
            is_root_device: true,
            is_read_only: false,
            partuuid: None,
            cache_type: None,
            io_engine: None,
        };
        assert_eq!(
            serde_json::to_value(&drive).unwrap(),
            serde_json::json!({"drive_id": "rootfs", "path_on_host": "/r.ext4",
                               "is_root_device": true, "is_read_only": false})
        );
        let boot = BootSource {
            kernel_image_path: "/k".into(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: None,
        };
        assert_eq!(
            serde_json::to_value(&boot).unwrap(),
            serde_json::json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"})
        );
        let huge = MachineConfig {
            huge_pages: Some(HugePages::Hugetlbfs2M),
            ..MachineConfig::new(1, 128)
        };
        assert_eq!(serde_json::to_value(&huge).unwrap()["huge_pages"], "2M");
    }

    #[test]
    fn instance_info_decodes_firecrackers_state_names() {
        let info: InstanceInfo = serde_json::from_str(
            r#"{"id":"a","state":"Not started","vmm_version":"1.10.1","app_name":"Firecracker"}"#,
        )
        .unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
    }

    #[test]
    fn request_encoding_puts_no_body_on_a_get() {
        let get = encode_request(Method::Get, "/", None);
        assert_eq!(
            get,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
        );
        let put = String::from_utf8(encode_request(Method::Put, "/vsock", Some(b"{}"))).unwrap();
        assert!(put.ends_with("Content-Length: 2\r\n\r\n{}"), "{put}");
    }

    #[test]
    fn heads_parse_with_micro_https_empty_reason_phrase() {
        let head =
            parse_head(b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive")
                .unwrap();
        assert_eq!(head.status, 204);
        assert_eq!(head.body_len(), Ok(0));
        let head = parse_head(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12").unwrap();
        assert_eq!(head.body_len(), Ok(12));
    }

    #[test]
    fn heads_that_this_client_refuses() {
        for bad in [
            &b"HTTP/2 200 \r\nContent-Length: 0"[..],
            b"HTTP/1.1 20 \r\nContent-Length: 0",
            b"HTTP/1.1 100 Continue",
            b"HTTP/1.1 200 \r\nNoColon",
            b"HTTP/1.1 200 \r\nA: b\r\n folded",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for bad_len in [
            &b"HTTP/1.1 200 \r\nTransfer-Encoding: chunked"[..],
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 200 \r\nContent-Length: x",
            b"HTTP/1.1 200 \r\nContent-Length: 1\r\nContent-Length: 1",
            b"HTTP/1.1 204 \r\nContent-Length: 3",
            b"HTTP/1.1 200 \r\nContent-Length: 99999999999",
        ] {
            let head = parse_head(bad_len).unwrap();
            assert!(
                head.body_len().is_err(),
                "{}",
                String::from_utf8_lossy(bad_len)
            );
        }
    }

    #[test]
    fn non_2xx_keeps_the_fault_message() {
        let response = RawResponse {
            status: 400,
            headers: vec![],
            body: br#"{"fault_message":"nope"}"#.to_vec(),
        };
        let err = check_status("PUT /x", response).unwrap_err();
        assert_eq!(err.fault_message(), Some("nope"));
        assert!(matches!(err, FirecrackerError::Api { status: 400, .. }));

        // micro_http's own parse error, as Firecracker v1.16.1 sends it: not JSON.
        let micro_http = "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\n\
                          All previous unanswered requests will be dropped.\" }";
        let response = RawResponse {
            status: 400,
            headers: vec![],
            body: micro_http.as_bytes().to_vec(),
        };
        let err = check_status("POST /x", response).unwrap_err();
        assert_eq!(err.fault_message(), Some(micro_http));
    }

    #[test]
    fn ids_that_cannot_be_path_segments_are_refused_before_sending() {
        assert!(checked_id("root_fs1", "/drives").is_ok());
        for bad in ["", "a/b", "a b", "ä", "../x"] {
            assert!(checked_id(bad, "/drives").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vsock_ok_lines() {
        assert_eq!(parse_vsock_ok("OK 1073741824"), Some(1 << 30));
        assert_eq!(parse_vsock_ok("OK"), None);
        assert_eq!(parse_vsock_ok("ERR 1"), None);
    }

    /// A one-shot server: reads one request, answers `reply` bytes, closes.
    async fn serve_once(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while find_blank_line(&got).is_none() {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            stream.write_all(reply).await.unwrap();
        });
        (dir, sock)
    }

    #[tokio::test]
    async fn a_whole_response_decodes_and_a_short_one_is_refused() {
        let (_dir, sock) = serve_once(
            b"HTTP/1.1 200 \r\nContent-Length: 32\r\n\r\n{\"firecracker_version\":\"1.10.1\"}",
        )
        .await;
        let version = FirecrackerClient::new(&sock).version().await.unwrap();
        assert_eq!(version, "1.10.1");

        let (_dir, sock) = serve_once(b"HTTP/1.1 200 \r\nContent-Length: 50\r\n\r\n{}").await;
        let err = FirecrackerClient::new(&sock).version().await.unwrap_err();
        assert!(matches!(err, FirecrackerError::Protocol { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        // Bound and listening, never accepted: the connect succeeds, no answer comes.
        let _listener = UnixListener::bind(&sock).unwrap();
        let client = FirecrackerClient::new(&sock).with_timeout(Duration::from_millis(100));
        let err = client.describe_instance().await.unwrap_err();
        assert!(
            matches!(
                err,
                FirecrackerError::Timeout {
                    timeout_ms: 100,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_io_error() {
        let client = FirecrackerClient::new("/nonexistent/banger/api.sock");
        let err = client.instance_start().await.unwrap_err();
        assert!(matches!(err, FirecrackerError::Io { .. }), "{err}");
    }

    #[tokio::test]
    async fn vsock_handshake_keeps_bytes_after_ok_and_reports_a_closed_port() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            // First connection: accepted by "the guest", which greets at once.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = [0u8; 11];
            s.read_exact(&mut line).await.unwrap();
            assert_eq!(&line, b"CONNECT 52\n");
            s.write_all(b"OK 1073741825\nhello").await.unwrap();
            // Second connection: nobody listens on the port; closed without a word.
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        });
        let mut stream = vsock_connect(&uds, 52).await.unwrap();
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");

        let err = vsock_connect(&uds, 53).await.unwrap_err();
        assert!(
            matches!(err, VsockError::NoListener { port: 53, .. }),
            "{err}"
        );
    }
}
