//! The wire protocol between bangerd (the client) and banger-helper (the server).
//!
//! This module owns the request and response types and the frame codec. A frame is a
//! big-endian `u32` body length followed by that many bytes of JSON. Invariants:
//!
//! - No frame larger than [`MAX_FRAME_BYTES`] is ever read into memory: the length prefix is
//!   checked before the body is read, so a hostile or broken peer cannot make either side
//!   allocate more than 64 KiB per frame.
//! - Every request names the protocol version it was written for ([`RequestFrame::v`]). The
//!   set of requests is closed: there is deliberately no "run this command" request, and
//!   unknown fields or variants are refused rather than ignored.
//! - The protocol knows nothing about VMs or events; it speaks of bridges, taps and subnets.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks. Bump it when a request or response changes shape.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame body either side accepts, in bytes. Requests are tiny; the cap exists so a
/// bad length prefix is refused instead of allocated.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The host network banger's VMs live on: a bridge carrying the gateway address of a private
/// subnet, NATed to the outside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Name of the bridge (`banger` followed by up to 9 of `[a-z0-9]`).
    pub bridge: String,
    /// The bridge's own address, which guests use as their default gateway.
    pub gateway: Ipv4Addr,
    /// Length of the subnet prefix (16..=30).
    pub prefix_len: u8,
}

/// One request as it travels: the version it was written for and the request itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    pub v: u32,
    pub request: Request,
}

/// The closed set of things the helper does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Answered with [`Response::Version`] whatever version the request names, so a client can
    /// always learn what the helper speaks.
    Version,
    EnsureNetwork {
        spec: NetworkSpec,
    },
    EnsureTap {
        tap: String,
        bridge: String,
    },
    DeleteTap {
        tap: String,
    },
    ListTaps,
    RemoveNetwork {
        bridge: String,
    },
}

impl Request {
    /// Short name used in the helper's log lines.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Version => "version",
            Request::EnsureNetwork { .. } => "ensure_network",
            Request::EnsureTap { .. } => "ensure_tap",
            Request::DeleteTap { .. } => "delete_tap",
            Request::ListTaps => "list_taps",
            Request::RemoveNetwork { .. } => "remove_network",
        }
    }
}

/// The helper's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Version { version: u32 },
    Done,
    Taps { taps: Vec<String> },
    Error { kind: ErrorKind, message: String },
}

/// Why a request was not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was refused before anything was done: the caller is not allowed, or an
    /// argument broke a rule.
    Refused,
    /// The privileged operation was attempted and failed.
    Failed,
    /// The frame could not be understood (bad length, bad JSON, unknown version).
    Protocol,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Failed => "failed",
            ErrorKind::Protocol => "protocol",
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame body. `Ok(None)` means the peer closed the connection cleanly between
/// frames; a close anywhere else is [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_bytes = [0u8; 4];
    let mut filled = 0;
    while filled < len_bytes.len() {
        let n = reader.read(&mut len_bytes[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    // Checked before allocating or reading: the body of an oversized frame never enters memory.
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(body))
}

/// Writes one frame (length prefix and body) and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Serializes `value` as JSON and writes it as one frame.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(value).map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
    write_frame(writer, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        let req = RequestFrame {
            v: PROTOCOL_VERSION,
            request: Request::DeleteTap { tap: "bt1".into() },
        };
        write_json(&mut buf, &req).await.unwrap();
        write_json(
            &mut buf,
            &RequestFrame {
                v: 1,
                request: Request::ListTaps,
            },
        )
        .await
        .unwrap();
        let mut reader = buf.as_slice();
        let first = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<RequestFrame>(&first).unwrap(), req);
        let second = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<RequestFrame>(&second)
                .unwrap()
                .request,
            Request::ListTaps
        );
        assert!(
            read_frame(&mut reader).await.unwrap().is_none(),
            "clean end of stream"
        );
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_the_body() {
        // Only the prefix exists: a reader that tried to read the body would see Truncated.
        let prefix = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        let mut reader = &prefix[..];
        match read_frame(&mut reader).await {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, MAX_FRAME_BYTES + 1),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn largest_allowed_frame_is_read() {
        let body = vec![b' '; MAX_FRAME_BYTES];
        let bytes = frame(&body);
        assert_eq!(
            read_frame(&mut bytes.as_slice())
                .await
                .unwrap()
                .unwrap()
                .len(),
            MAX_FRAME_BYTES
        );
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, &vec![0; MAX_FRAME_BYTES + 1]).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(sink.is_empty(), "nothing is written for a refused frame");
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        assert!(matches!(
            read_frame(&mut &[0u8, 0][..]).await,
            Err(FrameError::Truncated)
        ));
        let mut bytes = frame(b"{\"v\":1}");
        bytes.truncate(bytes.len() - 2);
        assert!(matches!(
            read_frame(&mut bytes.as_slice()).await,
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn json_shape_is_stable() {
        let req = RequestFrame {
            v: 1,
            request: Request::EnsureNetwork {
                spec: NetworkSpec {
                    bridge: "banger0".into(),
                    gateway: Ipv4Addr::new(172, 30, 0, 1),
                    prefix_len: 24,
                },
            },
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"v":1,"request":{"op":"ensure_network","spec":{"bridge":"banger0","gateway":"172.30.0.1","prefix_len":24}}}"#
        );
        let err = Response::Error {
            kind: ErrorKind::Refused,
            message: "no".into(),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"result":"error","kind":"refused","message":"no"}"#
        );
    }

    #[test]
    fn unknown_requests_and_fields_are_refused() {
        for bad in [
            r#"{"v":1,"request":{"op":"run_command","argv":["sh"]}}"#,
            r#"{"v":1,"request":{"op":"delete_tap","tap":"bt1","extra":1}}"#,
            r#"{"v":1,"request":{"op":"list_taps"},"uid":0}"#,
            r#"{"request":{"op":"list_taps"}}"#,
        ] {
            assert!(
                serde_json::from_str::<RequestFrame>(bad).is_err(),
                "{bad} must not parse"
            );
        }
    }
}
