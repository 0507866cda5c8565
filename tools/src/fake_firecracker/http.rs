//! The fake's HTTP/1.1 framing, after Firecracker's `micro_http`: requests with optional
//! `Content-Length` bodies on a keep-alive connection, responses with micro_http's exact head
//! (`HTTP/1.1 204 ` with an empty reason phrase, `Server: Firecracker API`, no
//! `Content-Length` on 204).
//!
//! Written separately from banger's client on purpose: the fake is what the client is tested
//! against, so it must not share the client's idea of HTTP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// micro_http's default `--http-api-max-payload-size`.
pub const MAX_PAYLOAD_BYTES: usize = 51_200;
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// One parsed request. `body` is `None` when the request had no body (no or zero
/// `Content-Length`), which is how Firecracker tells "Empty PUT request." apart.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Option<Vec<u8>>,
}

/// A request that cannot be parsed; answered with 400 and the connection closed.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Per-connection read state: bytes received beyond the last request (pipelining).
#[derive(Default)]
pub struct Connection {
    buf: Vec<u8>,
}

impl Connection {
    /// Reads the next request; `Ok(None)` when the peer closed the connection between
    /// requests.
    pub async fn read_request(
        &mut self,
        stream: &mut UnixStream,
    ) -> Result<Option<Request>, BadRequest> {
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(BadRequest("Request head too large.".to_string()));
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                // A half-sent head is as good as a closed connection: nobody is left to
                // answer.
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let (method, path, content_length) = parse_head(&self.buf[..head_end])?;
        if content_length > MAX_PAYLOAD_BYTES {
            return Err(BadRequest(format!(
                "Request payload with size {content_length} is larger than the limit of \
                 {MAX_PAYLOAD_BYTES} allowed by server."
            )));
        }
        let body_start = head_end + 4;
        while self.buf.len() < body_start + content_length {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[body_start..body_start + content_length].to_vec();
        self.buf.drain(..body_start + content_length);
        Ok(Some(Request {
            method,
            path,
            body: (!body.is_empty()).then_some(body),
        }))
    }
}

/// Parses the request line and the headers that matter: method, absolute path, body length.
pub fn parse_head(head: &[u8]) -> Result<(String, String, usize), BadRequest> {
    let bad = |what: &str| BadRequest(format!("Invalid request: {what}."));
    let text = std::str::from_utf8(head).map_err(|_| bad("the head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(BadRequest(
            "Invalid HTTP Version: Unsupported HTTP version.".to_string(),
        ));
    }
    if !matches!(method, "GET" | "PUT" | "PATCH" | "DELETE") {
        return Err(BadRequest(
            "Invalid HTTP Method: Unsupported HTTP method.".to_string(),
        ));
    }
    // micro_http accepts an absolute path or an absolute http:// URI.
    let path = match target.strip_prefix("http://") {
        Some(rest) => match rest.find('/') {
            Some(slash) => &rest[slash..],
            None => "/",
        },
        None => target,
    };
    if !path.starts_with('/') {
        return Err(bad("the target is not an absolute path"));
    }
    let path = path.split('?').next().unwrap_or(path);
    let mut content_length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(BadRequest(format!("Invalid header. Reason: {line}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| BadRequest(format!("Invalid value. Key:{name}; Value:{value}")))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value != "identity" {
            return Err(BadRequest(
                "Transfer-Encoding other than identity is not supported.".to_string(),
            ));
        } else if name.eq_ignore_ascii_case("expect") {
            return Err(BadRequest("Expect is not supported.".to_string()));
        }
    }
    Ok((method.to_string(), path.to_string(), content_length))
}

/// The body of micro_http's answer (400) to a request it cannot parse: not Firecracker's
/// `{"fault_message": ...}` but micro_http's own text, with a raw newline inside the string,
/// so not even valid JSON. Seen from Firecracker v1.16.1 for `POST /actions`:
/// `{ "error": "Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered
/// requests will be dropped." }`.
pub fn parse_error_body(message: &str) -> String {
    format!("{{ \"error\": \"{message}\nAll previous unanswered requests will be dropped.\" }}")
}

/// The bytes of a response, as micro_http writes them.
pub fn encode_response(status: u16, deprecated: bool, body: Option<&str>) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 {status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n");
    if deprecated {
        out.push_str("Deprecation: true\r\n");
    }
    if status != 204 {
        let body = body.unwrap_or("");
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    if status != 204
        && let Some(body) = body
    {
        out.push_str(body);
    }
    out.into_bytes()
}

pub async fn write_response(
    stream: &mut UnixStream,
    status: u16,
    deprecated: bool,
    body: Option<&str>,
) -> std::io::Result<()> {
    stream
        .write_all(&encode_response(status, deprecated, body))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let (m, p, n) = parse_head(
            b"PUT /drives/root HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12\r\nAccept: x",
        )
        .unwrap();
        assert_eq!((m.as_str(), p.as_str(), n), ("PUT", "/drives/root", 12));
        let (_, p, _) = parse_head(b"GET http://localhost/machine-config HTTP/1.1").unwrap();
        assert_eq!(p, "/machine-config");
        for bad in [
            &b"GET / HTTP/2"[..],
            b"GET /",
            b"BREW / HTTP/1.1",
            b"PUT / HTTP/1.1\r\nContent-Length: x",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked",
            b"PUT / HTTP/1.1\r\nno colon",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn responses_look_like_micro_https() {
        assert_eq!(
            encode_response(204, false, None),
            b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
        );
        let fault = String::from_utf8(encode_response(400, false, Some("{}"))).unwrap();
        assert!(fault.ends_with("Content-Length: 2\r\n\r\n{}"), "{fault}");
        assert_eq!(
            encode_response(204, true, None),
            b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\
              Deprecation: true\r\n\r\n"
        );
    }
}
