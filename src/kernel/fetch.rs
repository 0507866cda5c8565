//! Downloads for `kernel pull`: one HTTP GET streamed into a file, its size and sha256
//! checked while the bytes arrive, the file given its name only once both match.
//!
//! Invariants: the destination path only ever holds a whole download whose sha256 is the
//! expected one (the bytes go to `<dest>.partial`, which is fsynced and renamed only after the
//! check); a response longer than the expected size is cut off as soon as it is, so a hostile
//! server cannot fill the disk; any failure removes the partial file. Nothing is held in
//! memory beyond one chunk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::KernelError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two reads of a response, not for a whole download.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("banger/", env!("CARGO_PKG_VERSION"));
/// How often (in bytes) a download reports its progress.
const PROGRESS_EVERY_BYTES: u64 = 1 << 20;

/// The HTTP client of kernel downloads: rustls with ring (as the registry's), timeouts on
/// connecting and between reads, at most 5 redirects and never from https down to http.
pub fn http_client() -> Result<reqwest::Client, KernelError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.previous().iter().any(|url| url.scheme() == "https")
                && attempt.url().scheme() != "https";
            if downgrade {
                attempt.error("a redirect from https to plain http")
            } else if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| KernelError::Download {
            url: String::new(),
            reason: format!(
                "cannot set up HTTP: {}",
                crate::registry::client_setup_error(&e)
            ),
        })
}

/// reqwest needs a process-wide rustls crypto provider; banger builds rustls with ring only
/// (see `registry::install_crypto_provider` for why ring).
#[allow(deprecated)]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a download must be.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    pub sha256: &'a str,
    pub size_bytes: u64,
}

/// Where a download's bytes go before they are checked: `<dest>.partial`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Downloads `url` to `dest` (replacing a partial file an earlier attempt left), reporting
/// the bytes received so far to `progress` (at the start, every MiB, and at the end).
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    expected: Expected<'_>,
    dest: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), KernelError> {
    let partial = partial_path(dest);
    let result = download_to(client, url, expected, &partial, progress).await;
    match result {
        Ok(()) => {
            tokio::fs::rename(&partial, dest)
                .await
                .map_err(|e| KernelError::io(dest, e))?;
            if let Some(parent) = dest.parent() {
                let parent = parent.to_owned();
                tokio::task::spawn_blocking(move || {
                    std::fs::File::open(&parent).and_then(|d| d.sync_all())
                })
                .await
                .map_err(|e| KernelError::io(dest, std::io::Error::other(e)))?
                .map_err(|e| KernelError::io(dest, e))?;
            }
            Ok(())
        }
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(error)
        }
    }
}

async fn download_to(
    client: &reqwest::Client,
    url: &str,
    expected: Expected<'_>,
    partial: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), KernelError> {
    let failed = |reason: String| KernelError::Download {
        url: url.to_owned(),
        reason,
    };
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("the server answered {status}")));
    }
    if let Some(length) = response.content_length()
        && length != expected.size_bytes
    {
        return Err(failed(format!(
            "the server offers {length} bytes, but the catalog says the file has {}",
            expected.size_bytes
        )));
    }
    let mut file = tokio::fs::File::create(partial)
        .await
        .map_err(|e| KernelError::io(partial, e))?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut reported: u64 = 0;
    progress(0);
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                return Err(failed(format!(
                    "the download broke off after {received} of {} bytes: {}",
                    expected.size_bytes,
                    error_chain(&error)
                )));
            }
        };
        received += chunk.len() as u64;
        if received > expected.size_bytes {
            return Err(failed(format!(
                "the server sent more than the {} bytes the catalog says the file has",
                expected.size_bytes
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| KernelError::io(partial, e))?;
        if received - reported >= PROGRESS_EVERY_BYTES {
            reported = received;
            progress(received);
        }
    }
    if received < expected.size_bytes {
        return Err(failed(format!(
            "truncated: the server sent {received} of the {} bytes the catalog says the file has",
            expected.size_bytes
        )));
    }
    progress(received);
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != expected.sha256 {
        return Err(KernelError::ChecksumMismatch {
            path: PathBuf::from(url),
            expected: expected.sha256.to_owned(),
            actual,
        });
    }
    file.sync_all()
        .await
        .map_err(|e| KernelError::io(partial, e))?;
    Ok(())
}

/// An error and its causes on one line (reqwest's own message is terse: "error sending
/// request"; the cause says "connection refused").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
