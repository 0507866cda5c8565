//! What a pull reports while it runs. The daemon forwards these on the request's stream (they
//! are not events of the log), so they serialise to flat JSON objects tagged by `event`:
//!
//! ```json
//! {"event":"resolved","reference":"docker.io/library/debian:bookworm","manifest_digest":"sha256:…","platform":"linux/amd64","layers":1,"total_bytes":49000000}
//! {"event":"blob","role":"layer","index":0,"digest":"sha256:…","state":"downloading","done_bytes":1048576,"total_bytes":48999000}
//! {"event":"blob","role":"config","digest":"sha256:…","state":"cached","done_bytes":1000,"total_bytes":1000}
//! ```

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// One progress report of a pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullProgress {
    /// The manifest is known: what the pull will fetch.
    Resolved {
        reference: String,
        manifest_digest: Digest,
        platform: String,
        layers: usize,
        /// Config and layers together, as their descriptors declare them.
        total_bytes: u64,
    },
    /// Where one blob stands.
    Blob(BlobProgress),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobProgress {
    pub role: BlobRole,
    /// The layer's position in the manifest (layers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub digest: Digest,
    pub state: BlobState,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobRole {
    Config,
    Layer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobState {
    /// Another pull in this process is downloading it; this one waits for it.
    Waiting,
    /// Bytes are arriving (reported at the start, then about every percent or MiB).
    Downloading,
    /// Downloaded and verified by this pull.
    Downloaded,
    /// Already in the cache (or just put there by the pull this one waited for): no download.
    Cached,
}

/// Where a pull sends its progress. Any `Fn(PullProgress) + Send + Sync` closure is one (the
/// daemon's forwards to the request's stream; `&|_| {}` discards); reporting must not block.
pub trait ProgressSink: Send + Sync {
    fn report(&self, progress: PullProgress);
}

impl<F: Fn(PullProgress) + Send + Sync> ProgressSink for F {
    fn report(&self, progress: PullProgress) {
        self(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_to_flat_tagged_json() {
        let digest = Digest::of(b"x");
        let progress = PullProgress::Blob(BlobProgress {
            role: BlobRole::Layer,
            index: Some(2),
            digest: digest.clone(),
            state: BlobState::Downloading,
            done_bytes: 5,
            total_bytes: 10,
        });
        let json = serde_json::to_value(&progress).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event":"blob","role":"layer","index":2,"digest":digest.to_string(),
                "state":"downloading","done_bytes":5,"total_bytes":10})
        );
        let back: PullProgress = serde_json::from_value(json).unwrap();
        assert_eq!(back, progress);
        let config = PullProgress::Blob(BlobProgress {
            role: BlobRole::Config,
            index: None,
            digest,
            state: BlobState::Cached,
            done_bytes: 10,
            total_bytes: 10,
        });
        assert!(!serde_json::to_string(&config).unwrap().contains("index"));
    }
}
