//! The one error type of a pull. Every message says what failed, names the registry, image or
//! blob involved, and where there is one, what the user can do about it.

use std::path::PathBuf;

use super::digest::{Digest, DigestError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{reference:?} is not a valid image reference: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("cannot read registry credentials from {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },

    #[error("{registry} refused to let banger pull {reference} (401 Unauthorized): {hint}")]
    Unauthorized {
        registry: String,
        reference: String,
        hint: String,
    },

    #[error("{registry} has no image {reference} (404 Not Found)")]
    NotFound { registry: String, reference: String },

    #[error("{registry} has no blob {digest} for {repository} (404 Not Found)")]
    BlobNotFound {
        registry: String,
        repository: String,
        digest: Digest,
    },

    #[error("cannot reach {registry}{hint}: {source}")]
    Unreachable {
        registry: String,
        hint: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("{registry} answered {status} for {url}: {message}")]
    RegistryStatus {
        registry: String,
        url: String,
        status: u16,
        message: String,
    },

    #[error("registry error from {registry}: {source}")]
    Registry {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },

    #[error("the manifest of {reference} is larger than {limit_bytes} bytes: refused")]
    ManifestTooLarge { reference: String, limit_bytes: u64 },

    #[error("the manifest of {reference} is not valid: {reason}")]
    InvalidManifest { reference: String, reason: String },

    #[error("{reference} is a {media_type}, which banger cannot pull: {reason}")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
        reason: &'static str,
    },

    #[error("{reference} has no image for {wanted}; its index offers: {available}")]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: String,
    },

    #[error("{reference} is for {found}, but banger needs {wanted}")]
    WrongPlatform {
        reference: String,
        found: String,
        wanted: String,
    },

    #[error("{reference} has {count} layers; banger accepts at most {limit}")]
    TooManyLayers {
        reference: String,
        count: usize,
        limit: usize,
    },

    #[error(
        "{reference} declares {declared_bytes} bytes of blobs, more than the maximum image size \
         of {limit_bytes} bytes"
    )]
    ImageTooLarge {
        reference: String,
        declared_bytes: u64,
        limit_bytes: u64,
    },

    #[error("{what} of {reference} has media type {media_type:?}: {reason}")]
    UnsupportedMediaType {
        reference: String,
        what: String,
        media_type: String,
        reason: &'static str,
    },

    #[error("{what} of {reference} has a bad digest: {source}")]
    BadDigest {
        reference: String,
        what: String,
        #[source]
        source: DigestError,
    },

    #[error(
        "{what} {expected} from {registry} has the wrong content (its sha256 is {actual}): refused"
    )]
    DigestMismatch {
        registry: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },

    #[error(
        "{what} {digest} from {registry} is {actual} bytes, but its descriptor says \
         {expected_bytes}: refused"
    )]
    SizeMismatch {
        registry: String,
        what: String,
        digest: Digest,
        expected_bytes: u64,
        /// What was received, or "more than N" when the download was cut off.
        actual: String,
    },

    #[error("downloading {what} {digest} from {registry} failed: {source}")]
    Download {
        registry: String,
        what: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },

    #[error("the image config of {reference} is not valid: {reason}")]
    InvalidConfig { reference: String, reason: String },

    #[error("blob cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot set up the registry client: {0}")]
    Client(String),
}

impl PullError {
    pub(crate) fn cache(path: impl Into<PathBuf>, source: std::io::Error) -> PullError {
        PullError::Cache {
            path: path.into(),
            source,
        }
    }
}
