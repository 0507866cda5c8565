//! The registry side of `banger image pull`: resolve a reference, fetch its manifest, pick the
//! platform, stream every blob into the by-digest [`BlobCache`], and hand the caller each layer
//! as a decompressed stream it can read as often as it needs ([`LayerBlob::open`]).
//!
//! ```text
//!  "debian:bookworm" ─parse─▶ ImageReference (docker.io/library/debian:bookworm)
//!        │ mirrors, insecure ─▶ Endpoint (host, http or https)
//!        │ ~/.docker/config.json auths ─▶ credentials ─▶ oci-client auth (token)
//!        ▼
//!  GET manifest (≤ 4 MiB, digest checked) ─▶ index? pick linux/<host arch> ─▶ GET manifest
//!        │ checks: media types, sha256 digests, sizes, layer count, declared image size
//!        ▼
//!  config + layers ─▶ BlobCache::ensure (cached? in flight elsewhere? else stream to
//!        │            tmp/, sha256 + size checked, fsync, rename to blobs/sha256/<hex>)
//!        ▼
//!  PulledImage { config, layers: [LayerBlob (open fd)] } ─▶ the flattener
//! ```
//!
//! What this module owns, and its invariants (the cache's own are in [`cache`]):
//! - No blob is ever held whole in memory: layers stream to disk in chunks and are read back
//!   through decompressors. Only manifests (at most `max_manifest_bytes`) and the config (at
//!   most `max_config_bytes`) are read into memory, each cut off at its limit while it
//!   streams, never after.
//! - Manifests are fetched by banger itself over the client oci-client authenticated (it
//!   negotiates the token), because oci-client reads a manifest body whole with no limit; blobs
//!   are streamed with oci-client's `pull_blob_stream`. oci-client's `pull()`, which buffers
//!   every layer, is never used.
//! - Plain HTTP is used only for registries listed in `insecure`; TLS is rustls with ring
//!   (never native-tls or openssl), installed as the process's crypto provider by
//!   [`Registry::new`].
//! - A blob fetched from a registry is only used, or cached, after its sha256 and size match
//!   the manifest's descriptor; a manifest fetched by digest only after its sha256 matches.
//! - Nothing here appends to the event log or knows about images as banger records them: the
//!   `image.pull` operation calls [`Registry::pull`] and records what it returns.

pub mod cache;
mod config;
mod credentials;
mod digest;
mod error;
mod layer;
mod manifest;
mod progress;
mod reference;

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use serde::{Deserialize, Serialize};

pub use cache::{BlobCache, CacheError, PruneSummary};
pub use config::{Platform, PullLimits, RegistryConfig};
pub use digest::{Digest, DigestError};
pub use error::PullError;
pub use layer::{Compression, LayerBlob, LayerError, LayerReader, MAX_TRAILING_BYTES};
pub use manifest::Descriptor;
pub use progress::{BlobProgress, BlobRole, BlobState, ProgressSink, PullProgress};
pub use reference::ImageReference;

use cache::{BlobLabel, Incoming, Outcome};
use credentials::{Credentials, Lookup};
use manifest::Parsed;
use reference::Endpoint;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two reads of a response, not for a whole download.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("banger/", env!("CARGO_PKG_VERSION"));
/// The most of an error response's body quoted in an error message.
const MAX_ERROR_BODY_BYTES: usize = 4096;

/// Pulls images from OCI registries into a [`BlobCache`]. One per daemon: pulls through the
/// same `Registry` (or through registries sharing a cache) share their downloads.
pub struct Registry {
    config: RegistryConfig,
    cache: BlobCache,
    /// The hosts oci-client reaches over plain HTTP (the `insecure` ones, as it names them).
    plain_http: Vec<String>,
    /// banger's own client, for manifests; why there is none where it cannot be built (no CA
    /// certificates on this host): bangerd starts anyway, and each pull says why it fails.
    http: Result<reqwest::Client, String>,
}

/// An image's manifest, resolved for the configured platform: what a pull would fetch.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub reference: ImageReference,
    /// The digest of the image manifest (for an index: of the entry picked).
    pub manifest_digest: Digest,
    /// The digest of the index the reference named, when it named one.
    pub index_digest: Option<Digest>,
    /// The index entry's platform, when there was an index.
    pub platform: Option<Platform>,
    pub config: Descriptor,
    pub layers: Vec<(Descriptor, Compression)>,
    /// The image manifest's bytes, exactly as fetched (their sha256 is `manifest_digest`).
    pub manifest_json: Vec<u8>,
}

/// A pulled image: every blob verified and open, in manifest order.
#[derive(Debug)]
pub struct PulledImage {
    pub reference: ImageReference,
    pub manifest_digest: Digest,
    pub index_digest: Option<Digest>,
    /// The image manifest's bytes, exactly as fetched.
    pub manifest_json: Vec<u8>,
    /// The platform the image is for, from its config.
    pub platform: Platform,
    pub config_digest: Digest,
    /// The config blob's verified bytes.
    pub config_json: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<LayerBlob>,
    pub stats: PullStats,
}

/// What a pull had to download.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullStats {
    pub downloaded_blobs: usize,
    pub downloaded_bytes: u64,
    /// Found in the cache, or downloaded by a concurrent pull this one waited for.
    pub cached_blobs: usize,
}

/// The parts of an image config banger uses (the rest stays in
/// [`PulledImage::config_json`]). Field names follow the OCI image spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
}

/// What the image asks to run with (`config` in the image config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The sha256 of each layer once decompressed, in order.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Installs ring as rustls' process-wide crypto provider unless one is installed already
/// (reqwest panics when it finds none: banger builds rustls without aws-lc).
///
/// rustls 0.23.48 deprecates ring's provider because it lacks post-quantum key exchange
/// (X25519MLKEM768 is only in aws-lc-rs). Pulling public image layers, whose integrity rests
/// on sha256 digests rather than on the channel, does not need it, and aws-lc-rs is a large C
/// and assembly build on every machine that builds banger.
#[allow(deprecated)]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An oci-client client. One per pull: oci-client keeps the first credentials it saw for a
/// registry for the client's whole life, so a long-lived one would go on using credentials the
/// user has since changed in the docker config file. Building one costs far less than a pull.
fn oci_client(plain_http: &[String]) -> Result<oci_client::Client, PullError> {
    oci_client::Client::try_from(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain_http.to_vec()),
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    })
    .map_err(|e| PullError::Client(client_setup_error(&e)))
}

/// Why an HTTP client could not be built, with the likeliest cause spelled out: reqwest says
/// only "builder error" when the system's CA certificates cannot be loaded.
pub fn client_setup_error(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if !std::path::Path::new(SYSTEM_CA_DIR).is_dir() {
        message.push_str(&format!(
            " (this host has no CA certificates in {SYSTEM_CA_DIR}, which HTTPS needs: install them, e.g. `apt-get install ca-certificates`)"
        ));
    }
    message
}

/// Where Debian-like systems keep the CA certificates rustls' platform verifier loads.
const SYSTEM_CA_DIR: &str = "/etc/ssl/certs";

impl Registry {
    pub fn new(config: RegistryConfig, cache: BlobCache) -> Result<Registry, PullError> {
        install_crypto_provider();
        // oci-client decides http or https by the host it contacts; Docker Hub is contacted
        // as index.docker.io.
        let mut plain_http = Vec::new();
        for entry in &config.insecure {
            let registry = reference::canonical_registry(entry);
            if registry == "docker.io" {
                plain_http.push("index.docker.io".to_owned());
            }
            plain_http.push(registry);
        }
        // Built once here to say early that TLS cannot be set up (each pull builds its own,
        // below, and fails saying why): bangerd must start without it, to run its VMs.
        if let Err(error) = oci_client(&plain_http) {
            tracing::warn!(%error, "image pulls will fail: cannot set up the registry client");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // Never follow a registry from https down to plain http.
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
            .map_err(|e| client_setup_error(&e));
        Ok(Registry {
            config,
            cache,
            plain_http,
            http,
        })
    }

    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Fetches and checks `reference`'s manifest (through its index, for the configured
    /// platform) without downloading any blob.
    pub async fn resolve(&self, reference: &str) -> Result<ResolvedImage, PullError> {
        let reference = ImageReference::parse(reference)?;
        let session = self.session(&reference).await?;
        session.resolve().await
    }

    /// Pulls `reference`: resolves it, then makes its config and every layer available from
    /// the cache, downloading what is missing. Progress goes to `progress` as it happens.
    pub async fn pull(
        &self,
        reference: &str,
        progress: &dyn ProgressSink,
    ) -> Result<PulledImage, PullError> {
        let reference = ImageReference::parse(reference)?;
        let session = self.session(&reference).await?;
        let resolved = session.resolve().await?;
        let total_bytes = resolved
            .layers
            .iter()
            .fold(resolved.config.size, |sum, (layer, _)| {
                sum.saturating_add(layer.size)
            });
        let wanted = self.config.platform.normalized();
        progress.report(PullProgress::Resolved {
            reference: reference.to_string(),
            manifest_digest: resolved.manifest_digest.clone(),
            platform: resolved
                .platform
                .as_ref()
                .map(|p| p.normalized())
                .unwrap_or_else(|| wanted.clone())
                .to_string(),
            layers: resolved.layers.len(),
            total_bytes,
        });

        let mut stats = PullStats::default();
        let (config_file, outcome) = session
            .fetch_blob(&resolved.config, BlobRole::Config, None, progress)
            .await?;
        stats.count(outcome, resolved.config.size);
        let config_json = read_config(&config_file, &resolved.config, &reference)?;
        let (config, platform) = parse_config(&config_json, &resolved, &wanted)?;

        // A plain loop, not a lazy `map` over borrowed descriptors: the closure would make the
        // pull future not `Send` (rustc cannot prove a higher-ranked closure general enough).
        let mut fetches = Vec::with_capacity(resolved.layers.len());
        for (index, (layer, compression)) in resolved.layers.iter().enumerate() {
            fetches.push(session.fetch_layer(index, layer, *compression, progress));
        }
        let fetched: Vec<(LayerBlob, Outcome)> = futures_util::stream::iter(fetches)
            .buffered(self.config.limits.max_concurrent_downloads.max(1))
            .try_collect()
            .await?;
        let mut layers = Vec::with_capacity(fetched.len());
        for (blob, outcome) in fetched {
            stats.count(outcome, blob.size());
            layers.push(blob);
        }
        Ok(PulledImage {
            reference,
            manifest_digest: resolved.manifest_digest,
            index_digest: resolved.index_digest,
            manifest_json: resolved.manifest_json,
            platform,
            config_digest: resolved.config.digest,
            config_json,
            config,
            layers,
            stats,
        })
    }

    /// Credentials, the endpoint and an authenticated client for one pull.
    async fn session<'a>(
        &'a self,
        reference: &'a ImageReference,
    ) -> Result<Session<'a>, PullError> {
        let endpoint = reference.endpoint(&self.config);
        let config_path = credentials::docker_config_path(self.config.docker_config.as_deref());
        let credentials = credentials::lookup(config_path, &endpoint.registry)?;
        let mut session = Session {
            registry: self,
            client: oci_client(&self.plain_http)?,
            reference,
            endpoint,
            credentials,
            bearer: None,
        };
        // oci-client asks the registry how it authenticates (GET /v2/) and fetches a token
        // when it uses them; blob requests then carry it, and so do banger's manifest requests.
        let auth = session.credentials.credentials.to_registry_auth();
        session.bearer = session
            .client
            .auth(
                &session.endpoint.reference,
                &auth,
                oci_client::RegistryOperation::Pull,
            )
            .await
            .map_err(|e| session.oci_error(e, None))?;
        Ok(session)
    }
}

impl PullStats {
    fn count(&mut self, outcome: Outcome, size: u64) {
        match outcome {
            Outcome::Downloaded => {
                self.downloaded_blobs += 1;
                self.downloaded_bytes += size;
            }
            Outcome::Cached | Outcome::Shared => self.cached_blobs += 1,
        }
    }
}

/// Reads the config blob (bounded by the manifest's checks) and checks its digest again.
fn read_config(
    file: &File,
    descriptor: &Descriptor,
    reference: &ImageReference,
) -> Result<Vec<u8>, PullError> {
    let mut bytes = vec![0u8; descriptor.size as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| PullError::InvalidConfig {
            reference: reference.to_string(),
            reason: format!("cannot read it back from the cache: {e}"),
        })?;
    let actual = Digest::of(&bytes);
    if actual != descriptor.digest {
        return Err(PullError::InvalidConfig {
            reference: reference.to_string(),
            reason: format!(
                "the cached config {} now has sha256 {actual}: the cache file changed; run \
                 `banger image cache prune` and pull again",
                descriptor.digest
            ),
        });
    }
    Ok(bytes)
}

/// Parses the config and checks it against the manifest: the platform banger needs (an image
/// without an index says its platform only here) and one diff_id per layer.
fn parse_config(
    json: &[u8],
    resolved: &ResolvedImage,
    wanted: &Platform,
) -> Result<(ImageConfig, Platform), PullError> {
    let invalid = |reason: String| PullError::InvalidConfig {
        reference: resolved.reference.to_string(),
        reason,
    };
    let config: ImageConfig =
        serde_json::from_slice(json).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let declared = Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
    }
    .normalized();
    if declared.os != wanted.os || declared.architecture != wanted.architecture {
        return Err(PullError::WrongPlatform {
            reference: resolved.reference.to_string(),
            found: declared.to_string(),
            wanted: wanted.to_string(),
        });
    }
    if config.rootfs.diff_ids.len() != resolved.layers.len() {
        return Err(invalid(format!(
            "it lists {} layer diff_ids but the manifest has {} layers",
            config.rootfs.diff_ids.len(),
            resolved.layers.len()
        )));
    }
    for diff_id in &config.rootfs.diff_ids {
        Digest::parse(diff_id).map_err(|e| invalid(format!("diff_id: {e}")))?;
    }
    Ok((config, declared))
}

/// One pull's view of its registry.
struct Session<'a> {
    registry: &'a Registry,
    client: oci_client::Client,
    reference: &'a ImageReference,
    endpoint: Endpoint,
    credentials: Lookup,
    bearer: Option<String>,
}

/// A manifest body as it arrived.
struct ManifestBody {
    bytes: Vec<u8>,
    content_type: Option<String>,
    digest: Digest,
}

impl Session<'_> {
    fn reference_text(&self) -> String {
        self.reference.to_string()
    }

    async fn resolve(&self) -> Result<ResolvedImage, PullError> {
        let limits = &self.registry.config.limits;
        let name = self.reference_text();
        let top = self
            .fetch_manifest(
                &self.reference.manifest_selector(),
                self.reference.digest(),
                None,
            )
            .await?;
        match manifest::parse(&top.bytes, top.content_type.as_deref(), &name, limits)? {
            Parsed::Image(image) => Ok(ResolvedImage {
                reference: self.reference.clone(),
                manifest_digest: top.digest,
                index_digest: None,
                platform: None,
                config: image.config,
                layers: image.layers,
                manifest_json: top.bytes,
            }),
            Parsed::Index(entries) => {
                let wanted = &self.registry.config.platform;
                let entry = manifest::select_platform(&entries, wanted).map_err(|available| {
                    PullError::NoMatchingPlatform {
                        reference: name.clone(),
                        wanted: wanted.normalized().to_string(),
                        available,
                    }
                })?;
                let descriptor = manifest::check_entry(&name, entry)?;
                let child = self
                    .fetch_manifest(
                        &descriptor.digest.to_string(),
                        Some(&descriptor.digest),
                        Some(descriptor.size),
                    )
                    .await?;
                match manifest::parse(&child.bytes, child.content_type.as_deref(), &name, limits)? {
                    Parsed::Image(image) => Ok(ResolvedImage {
                        reference: self.reference.clone(),
                        manifest_digest: child.digest,
                        index_digest: Some(top.digest),
                        platform: entry.platform.clone(),
                        config: image.config,
                        layers: image.layers,
                        manifest_json: child.bytes,
                    }),
                    Parsed::Index(_) => Err(PullError::UnsupportedManifest {
                        reference: name,
                        media_type: descriptor.media_type,
                        reason: "the index entry is itself an index; banger pulls one level of \
                                 index only",
                    }),
                }
            }
        }
    }

    /// GETs a manifest, reading at most `max_manifest_bytes`, and checks its digest against
    /// the one it was asked for (and the registry's `Docker-Content-Digest`), and its size
    /// against the index entry that named it.
    async fn fetch_manifest(
        &self,
        selector: &str,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<ManifestBody, PullError> {
        let limit = self.registry.config.limits.max_manifest_bytes;
        let url = self.endpoint.manifest_url(selector);
        let mut request = self
            .registry
            .http
            .as_ref()
            .map_err(|why| PullError::Client(why.clone()))?
            .get(&url)
            .header(reqwest::header::ACCEPT, manifest::ACCEPT);
        request = match (&self.bearer, &self.credentials.credentials) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Credentials::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            (None, Credentials::Anonymous) => request,
        };
        let mut response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized());
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(PullError::NotFound {
                registry: self.endpoint.registry.clone(),
                reference: self.reference_text(),
            });
        }
        if !status.is_success() {
            let message = read_error_body(response).await;
            return Err(PullError::RegistryStatus {
                registry: self.endpoint.registry.clone(),
                url,
                status: status.as_u16(),
                message,
            });
        }
        let too_large = || PullError::ManifestTooLarge {
            reference: self.reference_text(),
            limit_bytes: limit,
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit)
        {
            return Err(too_large());
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type");
        let digest_header = header("docker-content-digest");
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(e))? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        let mismatch = |expected: Digest| PullError::DigestMismatch {
            registry: self.endpoint.registry.clone(),
            what: "manifest".to_owned(),
            expected,
            actual: digest.clone(),
        };
        if let Some(expected) = expected
            && expected != &digest
        {
            return Err(mismatch(expected.clone()));
        }
        // A header in another algorithm cannot be checked; a sha256 one must agree.
        if let Some(Ok(claimed)) = digest_header.as_deref().map(Digest::parse)
            && claimed != digest
        {
            return Err(mismatch(claimed));
        }
        if let Some(size) = expected_size
            && size != bytes.len() as u64
        {
            return Err(PullError::SizeMismatch {
                registry: self.endpoint.registry.clone(),
                what: "manifest".to_owned(),
                digest,
                expected_bytes: size,
                actual: bytes.len().to_string(),
            });
        }
        Ok(ManifestBody {
            bytes,
            content_type,
            digest,
        })
    }

    async fn fetch_layer(
        &self,
        index: usize,
        layer: &Descriptor,
        compression: Compression,
        progress: &dyn ProgressSink,
    ) -> Result<(LayerBlob, Outcome), PullError> {
        let (file, outcome) = self
            .fetch_blob(layer, BlobRole::Layer, Some(index), progress)
            .await?;
        let blob = LayerBlob::new(
            layer.digest.clone(),
            layer.size,
            layer.media_type.clone(),
            compression,
            file,
        );
        Ok((blob, outcome))
    }

    /// Makes one blob available through the cache, reporting progress.
    async fn fetch_blob(
        &self,
        descriptor: &Descriptor,
        role: BlobRole,
        index: Option<usize>,
        progress: &dyn ProgressSink,
    ) -> Result<(Arc<File>, Outcome), PullError> {
        let report = |state: BlobState, done_bytes: u64| {
            progress.report(PullProgress::Blob(BlobProgress {
                role,
                index,
                digest: descriptor.digest.clone(),
                state,
                done_bytes,
                total_bytes: descriptor.size,
            }))
        };
        let what = match index {
            Some(index) => format!("layer {index}"),
            None => "config".to_owned(),
        };
        let label = BlobLabel {
            registry: &self.endpoint.registry,
            what: &what,
        };
        let open = || async {
            let stream = self
                .client
                .pull_blob_stream(
                    &self.endpoint.reference,
                    descriptor.digest.to_string().as_str(),
                )
                .await
                .map_err(|e| self.oci_error(e, Some(&descriptor.digest)))?;
            Ok(Incoming {
                content_length: stream.content_length,
                stream: stream.stream,
            })
        };
        let (file, outcome) = self
            .registry
            .cache
            .ensure(&descriptor.digest, descriptor.size, &label, open, &report)
            .await?;
        report(
            match outcome {
                Outcome::Downloaded => BlobState::Downloaded,
                Outcome::Cached | Outcome::Shared => BlobState::Cached,
            },
            descriptor.size,
        );
        Ok((file, outcome))
    }

    fn unauthorized(&self) -> PullError {
        PullError::Unauthorized {
            registry: self.endpoint.registry.clone(),
            reference: self.reference_text(),
            hint: self.credentials.login_hint(&self.endpoint.registry),
        }
    }

    fn unreachable(&self, error: reqwest::Error) -> PullError {
        let hint = if !self.endpoint.insecure && (error.is_connect() || error.is_request()) {
            " over https (a registry that serves plain http must be listed as insecure in \
             banger's config.toml)"
        } else {
            ""
        };
        PullError::Unreachable {
            registry: self.endpoint.registry.clone(),
            hint,
            source: Box::new(error),
        }
    }

    fn oci_error(&self, error: OciDistributionError, blob: Option<&Digest>) -> PullError {
        let not_found = match &error {
            OciDistributionError::ServerError { code: 404, .. } => true,
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                    )
                })
            }
            _ => false,
        };
        match (error, blob) {
            (
                OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_),
                _,
            ) => self.unauthorized(),
            (_, Some(digest)) if not_found => PullError::BlobNotFound {
                registry: self.endpoint.registry.clone(),
                repository: self.reference.repository().to_owned(),
                digest: digest.clone(),
            },
            (OciDistributionError::RequestError(e), _) => self.unreachable(e),
            (source, _) => PullError::Registry {
                registry: self.endpoint.registry.clone(),
                source,
            },
        }
    }
}

/// The start of an error response's body, as text, for an error message.
async fn read_error_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    String::from_utf8_lossy(&body).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon shares one `Registry` between requests and runs each pull in a spawned
    /// task; the flattener moves layers to blocking threads.
    #[test]
    fn registry_and_pulls_cross_threads() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let root = tempfile::tempdir().unwrap();
        let registry =
            Registry::new(RegistryConfig::default(), BlobCache::new(root.path())).unwrap();
        send_sync(&registry);
        send(&registry.pull("debian", &|_| {}));
        send(&registry.resolve("debian"));
        fn layers_cross_threads<L: Send + Sync + Clone, R: Send>() {}
        layers_cross_threads::<LayerBlob, LayerReader>();
    }
}
