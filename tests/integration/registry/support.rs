//! Test support for everything that pulls images (the registry module, the flattener, the
//! `image.pull` operation): a real registry on loopback, images built with the real tools or by
//! hand, and a scripted registry for what a real one would never serve.
//!
//! - [`TestRegistry`]: Debian's `docker-registry` on `127.0.0.1:<free port>` with its storage
//!   in a temporary directory, optionally behind htpasswd basic auth. It is killed when
//!   dropped. Its access log tells which requests it served ([`TestRegistry::blob_gets`]).
//! - [`UmociImage`]: an OCI layout built with `umoci` (one layer per [`UmociImage::layer`]
//!   call: whatever the closure changed in the root filesystem, deletions included, as
//!   whiteouts) and pushed with `skopeo copy` ([`Push`]: OCI or Docker v2 schema 2, gzip or
//!   zstd). Needs root (umoci unpacks with real ownership). Not `umoci insert`: umoci 0.4.7
//!   (Debian 12) writes its layer as a tar cut short after the last file's data, without
//!   padding or end blocks; build an opaque directory (`DIR/.wh..wh..opq`) by hand instead.
//! - [`TestRegistry::push_image`]: an image assembled by hand from [`Layer`]s (any bytes, any
//!   media type: hostile tar streams for the flattener's tests) and pushed through the
//!   registry's HTTP API; [`TestRegistry::push_index`] puts an index over pushed images.
//! - [`StaticRegistry`]: a tiny HTTP server answering exactly the routes a test gives it: wrong
//!   sizes, wrong digests, oversized manifests, truncated bodies, a body that pauses until the
//!   test lets it go on ([`Gate`]).
//!
//! ```ignore
//! use crate::registry::support::{Layer, TestRegistry, tar_with};
//! let registry = TestRegistry::start();
//! let tar = tar_with(&[("etc/motd", b"hi")]);
//! let image = registry.push_image("team/app:1", &[Layer::gzip(&tar)], "amd64");
//! let puller = Registry::new(registry.client_config(dir), BlobCache::new(dir.join("oci")))?;
//! let pulled = puller.pull(&image.reference, &|_| {}).await?;
//! ```
//!
//! Missing tools (`docker-registry`, `umoci`, `skopeo`) fail the test with the package to
//! install: CI installs them (`.ci/run`), so a test never skips for lack of them.

#![allow(dead_code)] // Each user takes its own subset.

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger::registry::{Digest, RegistryConfig};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A loaded 2-core CI machine building other tests is slow to start a registry.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A program the tests need, found on PATH or at its Debian path, else a failure that says
/// which package provides it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin").join(name)])
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: install the Debian package {package} (CI's .ci/run does)"
            )
        })
}

/// Runs a command to success, or fails the test with its output. Returns its stdout.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// One blocking HTTP/1.1 exchange with `127.0.0.1:port` (`Connection: close`).
fn http_exchange(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// A real `docker-registry` on loopback, killed when dropped.
/// The user [`TestRegistry::start_with_basic_auth`] lets in.
pub const BASIC_AUTH_USER: &str = "alice";
/// Its password.
pub const BASIC_AUTH_PASSWORD: &str = "s3cret";
/// bcrypt (`$2y$`, cost 4, so the registry answers fast) of [`BASIC_AUTH_PASSWORD`]: computed
/// once, so that no test needs a bcrypt implementation (whose dependencies changed the
/// features the workspace's other builds use, making every test build compile banger twice).
const BASIC_AUTH_PASSWORD_BCRYPT: &str =
    "$2y$04$WkDsX0TwJVPja1Ora0Dqb.0I/9ePdeWSbgYcljpjaNnUphoJyNTU2";

pub struct TestRegistry {
    child: Child,
    port: u16,
    log: PathBuf,
    credentials: Option<(String, String)>,
    dir: tempfile::TempDir,
}

/// One request from the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// What was pushed: enough to pull it and to check what a pull cached.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    pub repository: String,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    /// Each layer's digest and media type, in order.
    pub layers: Vec<(Digest, String)>,
}

impl PushedImage {
    /// Every blob the image names: config first, then the layers.
    pub fn blobs(&self) -> Vec<Digest> {
        std::iter::once(self.config_digest.clone())
            .chain(self.layers.iter().map(|(digest, _)| digest.clone()))
            .collect()
    }
}

/// An HTTP response from [`TestRegistry::http`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl TestRegistry {
    /// A registry anyone may pull from and push to.
    pub fn start() -> TestRegistry {
        TestRegistry::start_inner(None)
    }

    /// A registry that asks for basic auth (htpasswd, bcrypt) on every request, of
    /// [`BASIC_AUTH_USER`] with password [`BASIC_AUTH_PASSWORD`].
    pub fn start_with_basic_auth() -> TestRegistry {
        TestRegistry::start_inner(Some((
            BASIC_AUTH_USER.to_owned(),
            BASIC_AUTH_PASSWORD.to_owned(),
        )))
    }

    fn start_inner(credentials: Option<(String, String)>) -> TestRegistry {
        let binary = tool("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("banger-registry-")
            .tempdir()
            .expect("a temporary directory");
        let auth = match &credentials {
            Some((username, _)) => {
                let hash = BASIC_AUTH_PASSWORD_BCRYPT;
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{username}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: banger-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        // A free port can be taken by someone else between the probe and the registry's
        // bind: a registry that exits at once is retried on another port.
        let mut failures = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: banger-test\n{auth}",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let log = dir.path().join(format!("registry-{port}.log"));
            let out = fs::File::create(&log).unwrap();
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let deadline = Instant::now() + START_TIMEOUT;
            let answered = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                if http_exchange(port, "GET", "/v2/", &[], b"").is_ok() {
                    break true;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer on port {port} within \
                         {START_TIMEOUT:?}:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if answered {
                return TestRegistry {
                    child,
                    port,
                    log,
                    credentials,
                    dir,
                };
            }
            failures.push_str(&fs::read_to_string(&log).unwrap_or_default());
        }
        panic!("docker-registry would not start:\n{failures}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps its blobs (`docker/registry/v2/blobs/sha256/<2>/<hex>/data`),
    /// for tests that damage one.
    pub fn storage_blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex())
            .join("data")
    }

    /// A pull configuration for this registry: plain HTTP to it, and a docker config file
    /// under `dir` that does not exist (so the user's own `~/.docker/config.json` is never
    /// read by a test).
    pub fn client_config(&self, dir: &Path) -> RegistryConfig {
        RegistryConfig {
            insecure: vec![self.host()],
            docker_config: Some(dir.join("no-docker-config.json")),
            ..RegistryConfig::default()
        }
    }

    /// The requests the registry logged so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // 127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:… HTTP/1.1" 200 180 "" "agent"
                let (_, rest) = line.split_once('"')?;
                let (request, rest) = rest.split_once('"')?;
                let mut words = request.split(' ');
                let method = words.next()?.to_owned();
                let path = words.next()?.to_owned();
                let status = rest.split_whitespace().next()?.parse().ok()?;
                Some(LoggedRequest {
                    method,
                    path,
                    status,
                })
            })
            .collect()
    }

    /// How many blob GETs the registry answered (any status), waiting up to a few seconds for
    /// the log to reach `at_least` (the registry writes a line after it answered, so a test
    /// that just got its answer may be ahead of the log).
    pub fn blob_gets(&self, at_least: usize) -> usize {
        let count = || {
            self.requests()
                .iter()
                .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = count();
            if seen >= at_least || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn auth_header(&self) -> Option<String> {
        self.credentials.as_ref().map(|(username, password)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )
        })
    }

    fn try_http(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<HttpResponse> {
        let auth = self.auth_header();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("Authorization", auth));
        }
        http_exchange(self.port, method, target, &all, body).ok()
    }

    /// A request to the registry's HTTP API (with the registry's credentials, if it has any).
    pub fn http(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        self.try_http(method, target, headers, body)
            .unwrap_or_else(|| panic!("{method} {target} on {} failed", self.host()))
    }

    /// Uploads a blob (monolithic upload) and returns its digest.
    pub fn put_blob(&self, repository: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let start = self.http(
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            &[],
            b"",
        );
        assert_eq!(start.status, 202, "blob upload start: {start:?}");
        let location = start.header("Location").expect("an upload location");
        let path = location
            .strip_prefix(&format!("http://{}", self.host()))
            .unwrap_or(location);
        let separator = if path.contains('?') { '&' } else { '?' };
        let done = self.http(
            "PUT",
            &format!("{path}{separator}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        );
        assert_eq!(done.status, 201, "blob upload: {done:?}");
        digest
    }

    /// Puts a manifest (or index) under `reference` (a tag or a digest) and returns its
    /// digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Digest {
        let response = self.http(
            "PUT",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            body,
        );
        assert_eq!(
            response.status,
            201,
            "manifest upload refused: {}",
            String::from_utf8_lossy(&response.body)
        );
        Digest::of(body)
    }

    /// Pushes an image made of `layers` (and a config naming them, for linux/`architecture`)
    /// as an OCI manifest under `repo_tag` (`repo:tag`).
    pub fn push_image(&self, repo_tag: &str, layers: &[Layer], architecture: &str) -> PushedImage {
        self.push_image_as(repo_tag, layers, architecture, ManifestFormat::Oci)
    }

    /// [`Self::push_image`] in either manifest format.
    pub fn push_image_as(
        &self,
        repo_tag: &str,
        layers: &[Layer],
        architecture: &str,
        format: ManifestFormat,
    ) -> PushedImage {
        let (repository, tag) = repo_tag.split_once(':').expect("repo:tag");
        let built = BuiltImage::new(layers, architecture, format);
        self.put_blob(repository, &built.config);
        for layer in layers {
            self.put_blob(repository, &layer.bytes);
        }
        self.put_manifest(
            repository,
            tag,
            format.manifest_media_type(),
            &built.manifest,
        );
        built.pushed(&self.host(), repo_tag)
    }

    /// Puts an index (OCI, or a Docker manifest list) under `repo_tag` over images already
    /// pushed to the same repository, each with its platform (`linux/arm64/v8`).
    pub fn push_index(
        &self,
        repo_tag: &str,
        entries: &[(&PushedImage, &str)],
        format: ManifestFormat,
    ) -> Digest {
        let (repository, tag) = repo_tag.split_once(':').expect("repo:tag");
        let body = index_json(entries, format);
        self.put_manifest(repository, tag, format.index_media_type(), &body)
    }

    /// The manifest of `reference` in `repository`, as the registry serves it.
    pub fn get_manifest(&self, repository: &str, reference: &str) -> (Vec<u8>, String) {
        let accept = format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}, {OCI_INDEX}, {DOCKER_LIST}");
        let response = self.http(
            "GET",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Accept", &accept)],
            b"",
        );
        assert_eq!(
            response.status, 200,
            "{repository}:{reference}: {response:?}"
        );
        let media_type = response
            .header("Content-Type")
            .unwrap_or_default()
            .to_owned();
        (response.body, media_type)
    }

    /// What the registry holds under `repo_tag`, read back through its API.
    pub fn describe(&self, repo_tag: &str) -> PushedImage {
        let (repository, tag) = repo_tag.split_once(':').expect("repo:tag");
        let (body, media_type) = self.get_manifest(repository, tag);
        describe_manifest(&self.host(), repo_tag, &body, &media_type)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn describe_manifest(host: &str, repo_tag: &str, body: &[u8], media_type: &str) -> PushedImage {
    let (repository, _) = repo_tag.split_once(':').expect("repo:tag");
    let manifest: Value = serde_json::from_slice(body).expect("a JSON manifest");
    let digest = |value: &Value| Digest::parse(value["digest"].as_str().unwrap()).unwrap();
    PushedImage {
        reference: format!("{host}/{repo_tag}"),
        repository: repository.to_owned(),
        manifest_digest: Digest::of(body),
        manifest_size: body.len() as u64,
        manifest_media_type: media_type.to_owned(),
        config_digest: digest(&manifest["config"]),
        layers: manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| {
                (
                    digest(layer),
                    layer["mediaType"].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
    }
}

/// Which family of media types a hand-built image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    Oci,
    Docker,
}

impl ManifestFormat {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_MANIFEST,
            ManifestFormat::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_INDEX,
            ManifestFormat::Docker => DOCKER_LIST,
        }
    }

    fn config_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_CONFIG,
            ManifestFormat::Docker => DOCKER_CONFIG,
        }
    }
}

/// One layer of a hand-built image: its bytes as stored, its media type and its diff_id (the
/// sha256 of the uncompressed tar, which the config lists).
#[derive(Clone, Debug)]
pub struct Layer {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub diff_id: Digest,
}

impl Layer {
    pub fn uncompressed(tar: &[u8]) -> Layer {
        Layer::raw(OCI_LAYER, tar.to_vec(), Digest::of(tar))
    }

    pub fn gzip(tar: &[u8]) -> Layer {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(tar).unwrap();
        Layer::raw(OCI_LAYER_GZIP, encoder.finish().unwrap(), Digest::of(tar))
    }

    pub fn zstd(tar: &[u8]) -> Layer {
        Layer::raw(
            OCI_LAYER_ZSTD,
            zstd::encode_all(tar, 3).unwrap(),
            Digest::of(tar),
        )
    }

    /// Any bytes under any media type (a hostile layer).
    pub fn raw(media_type: &str, bytes: Vec<u8>, diff_id: Digest) -> Layer {
        Layer {
            bytes,
            media_type: media_type.to_owned(),
            diff_id,
        }
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }
}

/// A tar archive of regular files (mode 0644, root-owned), parents implied.
pub fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append_data(&mut header, path, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Deterministic, poorly compressible bytes (a seeded xorshift), for layers of real size.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    // Never zero (xorshift's fixed point), and distinct for distinct seeds.
    let mut state = (seed << 1) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The config, manifest and their digests of a hand-built image.
pub struct BuiltImage {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub format: ManifestFormat,
    layers: Vec<(Digest, String)>,
}

impl BuiltImage {
    pub fn new(layers: &[Layer], architecture: &str, format: ManifestFormat) -> BuiltImage {
        let config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            },
        });
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = BuiltImage::manifest_json(
            format,
            &Digest::of(&config),
            config.len() as u64,
            &layers
                .iter()
                .map(|l| {
                    (
                        l.media_type.clone(),
                        l.digest().to_string(),
                        l.bytes.len() as i64,
                    )
                })
                .collect::<Vec<_>>(),
        );
        BuiltImage {
            config,
            manifest,
            format,
            layers: layers
                .iter()
                .map(|l| (l.digest(), l.media_type.clone()))
                .collect(),
        }
    }

    /// A manifest naming arbitrary descriptors (digests and sizes as given, even wrong ones).
    pub fn manifest_json(
        format: ManifestFormat,
        config_digest: &Digest,
        config_size: u64,
        layers: &[(String, String, i64)],
    ) -> Vec<u8> {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": format.manifest_media_type(),
            "config": {
                "mediaType": format.config_media_type(),
                "digest": config_digest.to_string(),
                "size": config_size,
            },
            "layers": layers.iter().map(|(media_type, digest, size)| json!({
                "mediaType": media_type,
                "digest": digest,
                "size": size,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&manifest).unwrap()
    }

    fn pushed(&self, host: &str, repo_tag: &str) -> PushedImage {
        let (repository, _) = repo_tag.split_once(':').expect("repo:tag");
        PushedImage {
            reference: format!("{host}/{repo_tag}"),
            repository: repository.to_owned(),
            manifest_digest: Digest::of(&self.manifest),
            manifest_size: self.manifest.len() as u64,
            manifest_media_type: self.format.manifest_media_type().to_owned(),
            config_digest: Digest::of(&self.config),
            layers: self.layers.clone(),
        }
    }
}

/// An index over pushed images, each with its platform (`os/arch[/variant]`).
pub fn index_json(entries: &[(&PushedImage, &str)], format: ManifestFormat) -> Vec<u8> {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(image, platform)| {
            let mut parts = platform.split('/');
            let mut platform = json!({
                "os": parts.next().unwrap(),
                "architecture": parts.next().unwrap(),
            });
            if let Some(variant) = parts.next() {
                platform["variant"] = json!(variant);
            }
            json!({
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest.to_string(),
                "size": image.manifest_size,
                "platform": platform,
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": format.index_media_type(),
        "manifests": manifests,
    }))
    .unwrap()
}

/// How `skopeo copy` pushes an [`UmociImage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// OCI manifest, gzip layers (as umoci made them).
    OciGzip,
    /// OCI manifest, layers recompressed with zstd. skopeo reuses a blob the registry already
    /// holds in another compression, so push this to a registry that has not seen the gzip
    /// form of the same layers.
    OciZstd,
    /// Docker v2 schema 2 manifest, gzip layers.
    DockerV2S2,
}

/// An image built with umoci: one layout, one tag, one unpacked bundle to change between
/// layers. Needs root.
pub struct UmociImage {
    dir: tempfile::TempDir,
    umoci: PathBuf,
    layers: usize,
}

impl UmociImage {
    /// An empty image (no layers) and its unpacked bundle.
    pub fn new() -> UmociImage {
        let umoci = tool("umoci", "umoci");
        let dir = tempfile::Builder::new()
            .prefix("banger-umoci-")
            .tempdir()
            .expect("a temporary directory");
        let image = UmociImage {
            dir,
            umoci,
            layers: 0,
        };
        run(Command::new(&image.umoci)
            .args(["init", "--layout"])
            .arg(image.layout()));
        run(Command::new(&image.umoci)
            .args(["new", "--image"])
            .arg(image.image_arg()));
        run(Command::new(&image.umoci)
            .args(["unpack", "--image"])
            .arg(image.image_arg())
            .arg(image.bundle()));
        image
    }

    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn image_arg(&self) -> String {
        format!("{}:image", self.layout().display())
    }

    /// The root filesystem the next layer is the difference of.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    /// Adds a layer: whatever `change` does to the root filesystem (files added, changed,
    /// removed: removals become whiteouts).
    pub fn layer(&mut self, change: impl FnOnce(&Path)) -> &mut UmociImage {
        change(&self.rootfs());
        run(Command::new(&self.umoci)
            .args(["repack", "--refresh-bundle", "--image"])
            .arg(self.image_arg())
            .arg(self.bundle()));
        self.layers += 1;
        self
    }

    /// Sets the config's architecture (after the last layer: a repack would start from the
    /// bundle's own manifest again).
    pub fn architecture(&mut self, architecture: &str) -> &mut UmociImage {
        run(Command::new(&self.umoci)
            .args(["config", "--image"])
            .arg(self.image_arg())
            .args(["--architecture", architecture]));
        self
    }

    pub fn layer_count(&self) -> usize {
        self.layers
    }

    /// Pushes the image to `registry` as `repo_tag` with skopeo, and reads back what the
    /// registry holds.
    pub fn push(&self, registry: &TestRegistry, repo_tag: &str, how: Push) -> PushedImage {
        let skopeo = tool("skopeo", "skopeo");
        let mut command = Command::new(skopeo);
        command.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((username, password)) = &registry.credentials {
            command.arg(format!("--dest-creds={username}:{password}"));
        }
        match how {
            Push::OciGzip => command.args(["--format", "oci"]),
            Push::OciZstd => command.args(["--format", "oci", "--dest-compress-format", "zstd"]),
            Push::DockerV2S2 => command.args(["--format", "v2s2"]),
        };
        command
            .arg(format!("oci:{}", self.image_arg()))
            .arg(format!("docker://{}/{repo_tag}", registry.host()));
        run(&mut command);
        registry.describe(repo_tag)
    }
}

/// A response body of a [`StaticRegistry`] route.
#[derive(Clone)]
pub enum Body {
    /// Sent whole, with its Content-Length.
    Full(Vec<u8>),
    /// Sent chunked, without a Content-Length (so a client cannot tell its size up front).
    Chunked(Vec<u8>),
    /// A Content-Length of `declared` bytes, then only `bytes`, then the connection closes.
    Truncated { declared: usize, bytes: Vec<u8> },
    /// `first` is sent (Content-Length covers both parts), then the server waits for the
    /// [`Gate`] to open before it sends `rest`.
    Gated {
        first: Vec<u8>,
        gate: Gate,
        rest: Vec<u8>,
    },
}

/// Lets a test act while a [`Body::Gated`] response is half sent.
#[derive(Clone, Default)]
pub struct Gate {
    reached: Arc<Notify>,
    release: Arc<Notify>,
}

impl Gate {
    /// Waits until the server has sent the first part.
    pub async fn reached(&self) {
        self.reached.notified().await
    }

    /// Lets the server send the rest.
    pub fn open(&self) {
        self.release.notify_one()
    }
}

/// One scripted response.
#[derive(Clone)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Route {
    pub fn ok(content_type: &str, body: Body) -> Route {
        Route {
            status: 200,
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body,
        }
    }

    pub fn status(status: u16, body: &str) -> Route {
        Route {
            status,
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: Body::Full(body.as_bytes().to_vec()),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A registry that serves exactly what a test scripted, by request path (`GET /v2/` answers
/// 200 unless scripted). Every request is recorded. It stops when dropped.
pub struct StaticRegistry {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StaticRegistry {
    /// Starts serving on a free loopback port (on the test's tokio runtime).
    pub async fn start() -> StaticRegistry {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("a loopback port");
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let task = tokio::spawn({
            let routes = Arc::clone(&routes);
            let requests = Arc::clone(&requests);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let routes = Arc::clone(&routes);
                    let requests = Arc::clone(&requests);
                    tokio::spawn(async move {
                        let _ = serve_one(stream, &routes, &requests).await;
                    });
                }
            }
        });
        StaticRegistry {
            port,
            routes,
            requests,
            task,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A pull configuration for this server (plain HTTP, no docker config).
    pub fn client_config(&self, dir: &Path) -> RegistryConfig {
        RegistryConfig {
            insecure: vec![self.host()],
            docker_config: Some(dir.join("no-docker-config.json")),
            ..RegistryConfig::default()
        }
    }

    /// Answers `path` (`/v2/repo/manifests/tag`) with `route`.
    pub fn route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    /// Serves a hand-built image under `repository:tag`: its manifest (by tag and digest),
    /// config and layers. Returns the built image so a test can serve a tampered variant.
    pub fn serve_image(&self, repository: &str, tag: &str, layers: &[Layer]) -> BuiltImage {
        let built = BuiltImage::new(layers, "amd64", ManifestFormat::Oci);
        self.serve_manifest(repository, tag, OCI_MANIFEST, &built.manifest);
        self.serve_blob(repository, &built.config);
        for layer in layers {
            self.serve_blob(repository, &layer.bytes);
        }
        built
    }

    /// Serves `body` as the manifest `repository:tag` (and by its digest).
    pub fn serve_manifest(&self, repository: &str, tag: &str, media_type: &str, body: &[u8]) {
        let digest = Digest::of(body);
        let route = Route::ok(media_type, Body::Full(body.to_vec()))
            .header("Docker-Content-Digest", &digest.to_string());
        self.route(&format!("/v2/{repository}/manifests/{tag}"), route.clone());
        self.route(&format!("/v2/{repository}/manifests/{digest}"), route);
    }

    /// Serves `bytes` as the blob of their digest.
    pub fn serve_blob(&self, repository: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        self.route(
            &format!("/v2/{repository}/blobs/{digest}"),
            Route::ok("application/octet-stream", Body::Full(bytes.to_vec())),
        );
        digest
    }

    /// The requests served so far (`GET /v2/x/blobs/sha256:…`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// How many blob GETs were served.
    pub fn blob_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/blobs/"))
            .count()
    }
}

impl Drop for StaticRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let target = words.next().unwrap_or_default().to_owned();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    requests.lock().unwrap().push(format!("{method} {target}"));
    let route = routes.lock().unwrap().get(&path).cloned();
    let route = match route {
        Some(route) => route,
        None if path == "/v2/" => Route::status(200, "{}"),
        None => Route::status(
            404,
            r#"{"errors":[{"code":"NOT_FOUND","message":"not scripted"}]}"#,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {} Scripted\r\nConnection: close\r\n",
        route.status
    );
    for (name, value) in &route.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    match &route.body {
        Body::Full(bytes) => {
            response.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
            stream.write_all(response.as_bytes()).await?;
            if method != "HEAD" {
                stream.write_all(bytes).await?;
            }
        }
        Body::Chunked(bytes) => {
            response.push_str("Transfer-Encoding: chunked\r\n\r\n");
            stream.write_all(response.as_bytes()).await?;
            for chunk in bytes.chunks(64 * 1024) {
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.write_all(chunk).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Body::Truncated { declared, bytes } => {
            response.push_str(&format!("Content-Length: {declared}\r\n\r\n"));
            stream.write_all(response.as_bytes()).await?;
            stream.write_all(bytes).await?;
        }
        Body::Gated { first, gate, rest } => {
            response.push_str(&format!(
                "Content-Length: {}\r\n\r\n",
                first.len() + rest.len()
            ));
            stream.write_all(response.as_bytes()).await?;
            stream.write_all(first).await?;
            stream.flush().await?;
            gate.reached.notify_one();
            gate.release.notified().await;
            stream.write_all(rest).await?;
        }
    }
    stream.flush().await?;
    stream.shutdown().await
}
