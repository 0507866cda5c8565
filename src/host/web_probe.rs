//! Does a TCP listener speak HTTPS or HTTP? Asked from the host, of a guest's port, for
//! `vm ports`.
//!
//! HTTPS is tried first: a TLS handshake that completes (any certificate is accepted — the
//! probe sends nothing and trusts nothing, it only asks whether TLS is spoken). Then HTTP:
//! `HEAD / HTTP/1.0` and a status line (`HTTP/1.1 200 OK`) in the first bytes of the answer.
//! HTTPS goes first because many TLS servers answer a plain request with an HTTP error page
//! ("the plain HTTP request was sent to HTTPS port"), which would read as HTTP, while no
//! plain HTTP server completes a TLS handshake.
//!
//! Invariants (the guest is not trusted): each attempt has one deadline covering connect,
//! write and read, so a listener that never answers costs at most that; at most
//! [`MAX_STATUS_LINE_BYTES`] are read from a plain answer and TLS reads go through rustls's
//! bounded record buffer, so a listener that floods costs no memory; nothing read is kept but
//! the verdict.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one attempt (HTTPS or HTTP) may take, connect included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The most bytes read from a plain answer while looking for its status line.
pub const MAX_STATUS_LINE_BYTES: usize = 512;

/// What a listener answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebScheme {
    Http,
    Https,
}

impl WebScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            WebScheme::Http => "http",
            WebScheme::Https => "https",
        }
    }
}

/// HTTPS, else HTTP, else `None` (not a web server, closed, or too slow), each attempt within
/// `timeout`.
pub async fn probe(address: SocketAddr, timeout: Duration) -> Option<WebScheme> {
    if speaks_https(address, timeout).await {
        return Some(WebScheme::Https);
    }
    if speaks_http(address, timeout).await {
        return Some(WebScheme::Http);
    }
    None
}

/// Whether a TLS handshake with `address` completes within `timeout`.
pub async fn speaks_https(address: SocketAddr, timeout: Duration) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(address).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(probe_tls_config());
        let name = ServerName::IpAddress(address.ip().into());
        let mut tls = connector.connect(name, stream).await.ok()?;
        // Said politely, so the server's log shows a closed connection, not an error.
        let _ = tls.shutdown().await;
        Some(())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(())))
}

/// Whether `address` answers `HEAD / HTTP/1.0` with an HTTP status line within `timeout`.
pub async fn speaks_http(address: SocketAddr, timeout: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request =
            format!("HEAD / HTTP/1.0\r\nHost: {address}\r\nUser-Agent: banger-ports-probe\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::with_capacity(MAX_STATUS_LINE_BYTES);
        let mut buf = [0u8; MAX_STATUS_LINE_BYTES];
        while answer.len() < MAX_STATUS_LINE_BYTES && !answer.contains(&b'\n') {
            let room = MAX_STATUS_LINE_BYTES - answer.len();
            let read = stream.read(&mut buf[..room]).await.ok()?;
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..read]);
        }
        Some(is_http_status_line(&answer))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// `HTTP/<digit>[.<digit>] <3 digits>` at the start of `answer` (the reason phrase, and even
/// the line end, may be missing: the status code is what counts).
pub fn is_http_status_line(answer: &[u8]) -> bool {
    let Some(rest) = answer.strip_prefix(b"HTTP/") else {
        return false;
    };
    let version_len = rest.iter().take_while(|b| **b != b' ').count();
    let version = &rest[..version_len];
    let version_ok = match version {
        [major] => major.is_ascii_digit(),
        [major, b'.', minor] => major.is_ascii_digit() && minor.is_ascii_digit(),
        _ => false,
    };
    let Some(after) = rest.get(version_len + 1..) else {
        return false;
    };
    version_ok
        && after.len() >= 3
        && after[..3].iter().all(u8::is_ascii_digit)
        && after
            .get(3)
            .is_none_or(|b| matches!(b, b' ' | b'\r' | b'\n'))
}

/// The probe's TLS client: ring (as everywhere in banger), TLS 1.2 and 1.3, and a verifier
/// that accepts any certificate — for the probe only: it sends no data over the connection.
/// (ring's provider is deprecated in rustls 0.23.48 for lacking post-quantum key exchange,
/// which a probe that carries nothing does not need; see `registry::install_crypto_provider`.)
#[allow(deprecated)]
fn probe_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            });
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Accepts any server certificate, but still checks the handshake's signatures (the server
/// must hold the key of the certificate it showed), so the handshake completes only with a
/// server that really speaks TLS.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines_are_recognised_strictly() {
        for good in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.0 404 Not Found\r\n",
            b"HTTP/2 301\r\n",
            b"HTTP/1.1 500",
            b"HTTP/1.0 204\n",
        ] {
            assert!(
                is_http_status_line(good),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b""[..],
            b"HTTP/",
            b"HTTP/1.1",
            b"HTTP/1.1 ",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000 x",
            b"HTTP/x.1 200 OK",
            b"HTTP/11.1 200 OK",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"\x15\x03\x01\x00\x02\x02\x46",
            b"http/1.1 200 OK",
        ] {
            assert!(
                !is_http_status_line(bad),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A plain HTTP server that answers every connection with a status line.
    async fn http_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        address
    }

    /// A TLS server with a fresh self-signed certificate, which says nothing after the
    /// handshake.
    #[allow(deprecated)]
    async fn https_server() -> SocketAddr {
        let certified = rcgen::generate_simple_self_signed(vec!["guest.invalid".into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let mut buf = [0u8; 64];
                        let _ = tls.read(&mut buf).await;
                    }
                });
            }
        });
        address
    }

    /// Accepts and holds connections, never saying a word.
    async fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        address
    }

    /// Answers every connection with an endless stream of garbage.
    async fn flooding_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let garbage = vec![b'A'; 64 * 1024];
                    while stream.write_all(&garbage).await.is_ok() {}
                });
            }
        });
        address
    }

    /// Floods an endless status line: it starts like HTTP, so only the size bound stops it.
    async fn endless_status_line_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(b"HTTP/1.1 200 ").await;
                    let garbage = vec![b'x'; 64 * 1024];
                    while stream.write_all(&garbage).await.is_ok() {}
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn tells_http_from_https_from_neither() {
        let http = http_server().await;
        let https = https_server().await;
        assert_eq!(probe(http, PROBE_TIMEOUT).await, Some(WebScheme::Http));
        assert_eq!(probe(https, PROBE_TIMEOUT).await, Some(WebScheme::Https));
        assert!(!speaks_http(https, PROBE_TIMEOUT).await);
        assert!(!speaks_https(http, PROBE_TIMEOUT).await);

        // A port nobody listens on: refused at once.
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        assert_eq!(probe(closed, PROBE_TIMEOUT).await, None);
    }

    #[tokio::test]
    async fn a_silent_listener_costs_one_timeout_per_attempt() {
        let silent = silent_server().await;
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        assert_eq!(probe(silent, timeout).await, None);
        let took = started.elapsed();
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout * 2 + Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn a_flooding_listener_is_neither_and_cannot_hold_the_probe() {
        let flood = flooding_server().await;
        let endless = endless_status_line_server().await;
        let started = Instant::now();
        assert_eq!(probe(flood, PROBE_TIMEOUT).await, None);
        // Starts like a status line but never ends one within the bound: the code's three
        // digits are there, so the line is HTTP as far as the probe reads.
        assert_eq!(probe(endless, PROBE_TIMEOUT).await, Some(WebScheme::Http));
        assert!(
            started.elapsed() < PROBE_TIMEOUT * 4,
            "{:?}",
            started.elapsed()
        );
    }
}
