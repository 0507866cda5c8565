//! `image.pull`: an image from an OCI registry (a reference, or an `oci` catalog entry) or a
//! catalog bundle, made into an ext4 root filesystem with the guest agent in it, and
//! registered.
//!
//! | step      | intent                                   | ensure                                               | undo                                     |
//! |-----------|------------------------------------------|------------------------------------------------------|------------------------------------------|
//! | `stage`   | dir `images/.staging-<op>`               | fresh staging dir with the op's marker               | remove the staging dir                   |
//! | `resolve` | —                                        | OCI: fetch and check the manifest (an index: its linux/<arch> entry), write it as `manifest.json` in the staging dir; produced: that file and the cache paths of the blobs it names (config first). Bundle: nothing | nothing (the file goes with `stage`)     |
//! | `fetch`   | bundle: files `rootfs.ext4`, `bundle.json` in staging | OCI: the manifest's blobs into the blob cache, by the digest `resolve` recorded (downloads verified by sha256 and size), `config.json` into staging. Bundle: download, sha256 and unpack into staging in one pass | OCI: nothing — the cache is content-addressed and only ever holds verified blobs, as good for the next pull. Bundle: remove the files |
//! | `flatten` | files `rootfs.ext4`, `rootfs.ext4.partial` in staging | OCI: the layers in order, each checked against its diff_id, then the agent's layer (`image::agent`), written as ext4 (`image::ImageBuilder`). Bundle: nothing | remove the two files                    |
//! | `publish` | dir `images/<name>`                      | rename the staging dir to `images/<name>`            | remove `images/<name>` if this op made it |
//!
//! On success `ImageRegistered` is appended with `OperationSucceeded`, its source
//! `oci:<reference>@<manifest digest>` (a reference by digest is recorded as given) or
//! `catalog:<entry>@sha256:<tarball sha256>`. Its kernel is the request's (`--kernel`), else
//! the catalog entry's, else the catalog's `default_kernel`: the kernel need not be present
//! yet (`vm create` says how to get it).
//!
//! Crash recovery rolls a pull back (`plan_recovery`'s policy for `image.pull`): until
//! `publish` nothing outside the staging directory and the blob cache exists, and a pull
//! rolled back costs only the flatten when asked again — the blobs it fetched stay cached and
//! verified. Rolling forward would need the fetched layers' descriptors again, which is the
//! whole pull.
//!
//! Pulls of one image name at once: the second waits for the first (its stream says
//! `waiting`), then finds the image there and answers `already_pulled` without a second
//! operation, after checking that the reference still points at the same manifest. An image
//! of that name from another source is `already_exists`. Progress travels on the request's
//! stream ([`PullItem`]), never in the log.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use banger_events::{Event, Handle, ImageRegistered, OpId, OpKind, Target};
use banger_projections::ImageView;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::image_register::ROOTFS_FILE;
use super::kernel_import::{undo_publish, undo_staging};
use super::store::{self, dir_handle};
use super::{BoxFuture, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking, names};
use crate::config::Config;
use crate::image::catalog::{Catalog, CatalogSource};
use crate::image::{FlattenOptions, ImageBuilder, agent, bundle, partial_path};
use crate::paths::Layout;
use crate::registry::{
    BlobCache, Digest, ImageReference, LayerBlob, PullError, PullProgress, PullStats, Registry,
    RegistryConfig, ResolvedImage,
};

/// The image manifest as pulled, in the image's directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The image config as pulled, in the image's directory.
pub const CONFIG_FILE: &str = "config.json";
/// A bundle's manifest, in the image's directory.
pub const BUNDLE_FILE: &str = "bundle.json";

/// Flatten progress is reported about this often (compressed bytes read).
const FLATTEN_REPORT_BYTES: u64 = 4 << 20;

/// What image pulls share in a daemon: the registry client and its blob cache, the catalog,
/// how images are built, the HTTP client for bundles, and who is pulling which name.
pub struct ImageHost {
    pub registry: Registry,
    pub catalog: Catalog,
    pub flatten: FlattenOptions,
    /// For bundle downloads; why there is none where it cannot be built (no CA certificates
    /// on this host): bangerd starts anyway, and such a pull fails saying why.
    pub http: Result<reqwest::Client, String>,
    /// One lock per image name being pulled: a second pull of the name waits on it.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageHost {
    /// The host for `config`, its blob cache under `layout`'s cache directory.
    pub fn new(config: &Config, layout: &Layout) -> Result<ImageHost, String> {
        let mut registry = RegistryConfig {
            insecure: config.registry.insecure.clone(),
            mirrors: config.registry.mirrors.clone(),
            ..RegistryConfig::default()
        };
        registry.limits.max_image_bytes = config.images.max_size_bytes;
        let registry = Registry::new(registry, BlobCache::new(layout.oci_cache_dir()))
            .map_err(|e| format!("cannot set up the registry client: {e}"))?;
        let catalog = Catalog::load(config.images.catalog.as_deref()).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("banger/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                format!(
                    "cannot set up the HTTP client: {}",
                    crate::registry::client_setup_error(&e)
                )
            });
        Ok(ImageHost {
            registry,
            catalog,
            flatten: FlattenOptions {
                headroom_bytes: config.images.headroom_bytes,
                headroom_percent: config.images.headroom_percent,
                max_image_bytes: config.images.max_size_bytes,
                ..FlattenOptions::default()
            },
            http,
            pulls: Mutex::new(HashMap::new()),
        })
    }

    /// The lock of image name `name` (made on first use).
    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        pulls.entry(name.to_owned()).or_default().clone()
    }

    /// Forgets `name`'s lock when nobody else holds or waits on it (the map stays as small
    /// as the pulls in flight).
    fn release(&self, name: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        drop(lock);
        if pulls.get(name).is_some_and(|l| Arc::strong_count(l) == 1) {
            pulls.remove(name);
        }
    }
}

/// `image.pull`'s parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePullParams {
    /// A catalog entry's name, or an OCI reference.
    pub reference: String,
    /// The image's name; default: the catalog entry's, else derived from the reference.
    #[serde(default)]
    pub name: Option<String>,
    /// The kernel it boots with; default: the catalog entry's, else the catalog's default.
    #[serde(default)]
    pub kernel: Option<String>,
}

/// How a pull ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullOutcome {
    /// This request pulled it.
    Pulled,
    /// It was there already, from the same source, at the same digest.
    AlreadyPulled,
}

/// `image.pull`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImagePullResult {
    pub image: ImageView,
    pub outcome: PullOutcome,
    /// The manifest digest (OCI) or the tarball's sha256 (bundle).
    pub digest: String,
    /// Blobs and bytes this pull downloaded, and blobs it found in the cache.
    pub downloaded_blobs: usize,
    pub downloaded_bytes: u64,
    pub cached_blobs: usize,
}

/// One item of `image.pull`'s stream: the registry's progress as it reports it, or the
/// image's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PullItem {
    Registry(PullProgress),
    Image(ImageProgress),
}

/// The image side of a pull's progress (flat JSON tagged by `event`, like the registry's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ImageProgress {
    /// Another pull of the same image name is running; this one waits for it.
    Waiting { name: String },
    /// A step of the operation started.
    Step { step: String },
    /// A bundle's bytes arriving.
    Download { done_bytes: u64, total_bytes: u64 },
    /// Layer `index` of `layers` going into the filesystem: compressed bytes read.
    Flatten {
        index: usize,
        layers: usize,
        done_bytes: u64,
        total_bytes: u64,
    },
    /// The agent went in (with its systemd unit when `systemd`).
    Agent { systemd: bool },
    /// The filesystem is written.
    Built {
        size_bytes: u64,
        content_bytes: u64,
        inodes: u64,
    },
}

/// Where a pull's progress goes. Must not block.
pub type Progress = Arc<dyn Fn(PullItem) + Send + Sync>;

/// What is pulled.
#[derive(Clone, Debug)]
pub enum PullSource {
    Oci {
        reference: ImageReference,
    },
    Bundle {
        entry: String,
        url: String,
        sha256: String,
        size_bytes: u64,
    },
}

impl PullSource {
    /// The `source` an image pulled from here records, once its digest is known.
    fn recorded(&self, digest: &str) -> String {
        match self {
            PullSource::Oci { reference } if reference.digest().is_some() => {
                format!("oci:{reference}")
            }
            PullSource::Oci { reference } => format!("oci:{reference}@{digest}"),
            PullSource::Bundle { entry, .. } => format!("catalog:{entry}@{digest}"),
        }
    }

    /// The digest recorded in `source` when an image with that source came from here
    /// (whatever the digest), else `None`.
    fn digest_in<'s>(&self, source: &'s str) -> Option<&'s str> {
        let prefix = match self {
            PullSource::Oci { reference } if reference.digest().is_some() => {
                return (source == format!("oci:{reference}"))
                    .then(|| source.rsplit_once('@').map_or("", |(_, d)| d));
            }
            PullSource::Oci { reference } => format!("oci:{reference}@"),
            PullSource::Bundle { entry, .. } => format!("catalog:{entry}@"),
        };
        source.strip_prefix(prefix.as_str())
    }
}

pub struct ImagePull;

pub struct State {
    pub name: String,
    pub source: PullSource,
    pub kernel: Option<String>,
    pub host: Arc<ImageHost>,
    pub progress: Progress,
    /// Filled by `resolve` (OCI).
    pub resolved: Option<ResolvedImage>,
    /// Filled by `fetch` (OCI): the layers, open.
    pub layers: Vec<LayerBlob>,
    pub diff_ids: Vec<String>,
    /// The manifest digest or the tarball's sha256, as recorded.
    pub digest: String,
    pub stats: PullStats,
    /// Filled by `flatten` (OCI) or `fetch` (bundle).
    pub size_bytes: u64,
    /// sha256 of the rootfs: a bundle's manifest says it; a flattened image is identified by
    /// its manifest digest instead (hashing a filesystem of mostly free space would cost
    /// more than the flatten), so it stays empty.
    pub sha256: String,
}

const STEPS: &[&dyn Step<State>] = &[&Stage, &Resolve, &Fetch, &Flatten, &Publish];

impl OperationKind for ImagePull {
    const KIND: OpKind = OpKind::ImagePull;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        STEPS
    }

    fn finish(cx: &OpCx<'_>, state: &State) -> Vec<Event> {
        vec![Event::ImageRegistered(ImageRegistered {
            name: state.name.clone(),
            rootfs_path: cx
                .layout
                .image_dir(&state.name)
                .join(ROOTFS_FILE)
                .display()
                .to_string(),
            kernel: state.kernel.clone(),
            size_bytes: state.size_bytes,
            sha256: state.sha256.clone(),
            source: state.source.recorded(&state.digest),
        })]
    }
}

/// The name an image pulled by `reference` gets when the request names none: the last part
/// of its repository, then `-<tag>` unless the tag is `latest` (or `-<12 hex>` of a
/// digest), with anything a name cannot hold made `-`: `docker.io/library/debian:bookworm`
/// is `debian-bookworm`.
pub fn derived_name(reference: &ImageReference) -> String {
    let repository = reference.repository();
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let mut name = match (reference.tag(), reference.digest()) {
        (Some(tag), _) if tag != "latest" => format!("{last}-{tag}"),
        (_, Some(digest)) => format!("{last}-{}", &digest.hex()[..12]),
        _ => last.to_owned(),
    };
    name = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(names::MAX_NAME_BYTES);
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'i');
        name.truncate(names::MAX_NAME_BYTES);
    }
    name
}

/// A request made definite: what to pull, under which name, with which kernel.
struct Plan {
    name: String,
    source: PullSource,
    kernel: Option<String>,
}

fn plan(host: &ImageHost, params: &ImagePullParams) -> Result<Plan, OpError> {
    let entry = host.catalog.find(&params.reference);
    let (source, default_name, entry_kernel) = match entry {
        Some(entry) => {
            let source = match &entry.source {
                CatalogSource::Oci { reference } => PullSource::Oci {
                    reference: ImageReference::parse(reference)
                        .map_err(|e| OpError::Internal(format!("catalog entry: {e}")))?,
                },
                CatalogSource::Bundle {
                    url,
                    sha256,
                    size_bytes,
                } => PullSource::Bundle {
                    entry: entry.name.clone(),
                    url: url.clone(),
                    sha256: sha256.clone(),
                    size_bytes: *size_bytes,
                },
            };
            (source, entry.name.clone(), Some(entry.kernel.clone()))
        }
        None => {
            let reference = ImageReference::parse(&params.reference).map_err(|e| {
                OpError::InvalidArgument(format!(
                    "{:?} is neither an entry of the image catalog (see `banger image list --available`) nor an OCI reference: {e}",
                    params.reference
                ))
            })?;
            let name = derived_name(&reference);
            (PullSource::Oci { reference }, name, None)
        }
    };
    let name = params.name.clone().unwrap_or(default_name);
    names::validate("image", &name).map_err(OpError::InvalidArgument)?;
    let kernel = params
        .kernel
        .clone()
        .or(entry_kernel)
        .or_else(|| Some(host.catalog.default_kernel.clone()));
    if let Some(kernel) = &kernel {
        names::validate("kernel", kernel).map_err(OpError::InvalidArgument)?;
    }
    Ok(Plan {
        name,
        source,
        kernel,
    })
}

/// Handles an `image.pull` request: see the module documentation.
pub async fn run(
    host: Arc<ImageHost>,
    runner: &Runner,
    op_id: OpId,
    params: ImagePullParams,
    progress: Progress,
) -> Result<ImagePullResult, OpError> {
    let plan = plan(&host, &params)?;
    let name = plan.name.clone();
    let lock = host.lock_of(&name);
    let result = async {
        let guard = match lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                progress(PullItem::Image(ImageProgress::Waiting {
                    name: plan.name.clone(),
                }));
                lock.lock().await
            }
        };
        let result = pull_locked(&host, runner, op_id, &params, plan, progress).await;
        drop(guard);
        result
    }
    .await;
    host.release(&name, lock);
    result
}

async fn pull_locked(
    host: &Arc<ImageHost>,
    runner: &Runner,
    op_id: OpId,
    params: &ImagePullParams,
    plan: Plan,
    progress: Progress,
) -> Result<ImagePullResult, OpError> {
    let existing = runner.journal().view().images.get(&plan.name).cloned();
    if let Some(existing) = existing {
        return already_there(host, &plan, existing).await;
    }
    let target = Target::Image {
        name: plan.name.clone(),
    };
    let shared = plan
        .kernel
        .iter()
        .map(|name| Target::Kernel { name: name.clone() })
        .collect();
    let claim = runner.claim(op_id, OpKind::ImagePull, target, shared)?;
    if runner.journal().view().images.contains_key(&plan.name) {
        return Err(OpError::AlreadyExists(format!(
            "an image named {} appeared while this pull started; see `banger image show {}`",
            plan.name, plan.name
        )));
    }
    let parameters = serde_json::to_string(params).unwrap_or_default();
    let state = State {
        name: plan.name.clone(),
        source: plan.source,
        kernel: plan.kernel,
        host: host.clone(),
        progress,
        resolved: None,
        layers: Vec::new(),
        diff_ids: Vec::new(),
        digest: String::new(),
        stats: PullStats::default(),
        size_bytes: 0,
        sha256: String::new(),
    };
    let state = runner.run::<ImagePull>(&claim, parameters, state).await?;
    let image = runner
        .journal()
        .view()
        .images
        .get(&plan.name)
        .cloned()
        .ok_or_else(|| OpError::Internal("the pulled image is missing from the views".into()))?;
    Ok(ImagePullResult {
        image,
        outcome: PullOutcome::Pulled,
        digest: state.digest,
        downloaded_blobs: state.stats.downloaded_blobs,
        downloaded_bytes: state.stats.downloaded_bytes,
        cached_blobs: state.stats.cached_blobs,
    })
}

/// An image of the requested name exists: `already_pulled` when it came from the same source
/// and the source still names the same content, else `already_exists` saying why.
async fn already_there(
    host: &ImageHost,
    plan: &Plan,
    existing: ImageView,
) -> Result<ImagePullResult, OpError> {
    let name = &plan.name;
    let Some(recorded) = plan.source.digest_in(&existing.source) else {
        return Err(OpError::AlreadyExists(format!(
            "an image named {name} already exists, from {}; delete it first (`banger image delete {name}`) or pull under another name (`--name`)",
            existing.source
        )));
    };
    let current = match &plan.source {
        PullSource::Oci { reference } if reference.digest().is_some() => recorded.to_owned(),
        PullSource::Oci { reference } => host
            .registry
            .resolve(&reference.to_string())
            .await
            .map_err(pull_op_error)?
            .manifest_digest
            .to_string(),
        PullSource::Bundle { sha256, .. } => format!("sha256:{sha256}"),
    };
    if current != recorded {
        return Err(OpError::AlreadyExists(format!(
            "image {name} was pulled at {recorded}, but its source now names {current}; to update it, delete it (`banger image delete {name}`) and pull again, or pull the new one under another name (`--name`)"
        )));
    }
    Ok(ImagePullResult {
        image: existing,
        outcome: PullOutcome::AlreadyPulled,
        digest: current,
        downloaded_blobs: 0,
        downloaded_bytes: 0,
        cached_blobs: 0,
    })
}

/// A registry error met outside the operation (checking an image already there).
fn pull_op_error(error: PullError) -> OpError {
    let message = chain(&error);
    match error {
        PullError::InvalidReference { .. } => OpError::InvalidArgument(message),
        PullError::NotFound { .. } => OpError::NotFound(message),
        _ => OpError::Unavailable(message),
    }
}

/// An error with its causes, as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let part = current.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}

fn report_step(state: &State, step: &str) {
    (state.progress)(PullItem::Image(ImageProgress::Step {
        step: step.to_owned(),
    }));
}

fn file_handle(path: &Path) -> Handle {
    Handle::File {
        path: path.display().to_string(),
    }
}

/// Removes files named by `handles` that lie in a staging directory of `images`; a missing
/// file is fine, any other path is refused (an undo acts only inside its own store).
async fn undo_staged_files(images: PathBuf, handles: Vec<Handle>) -> Result<(), StepError> {
    blocking("removing staged files", move || {
        for handle in &handles {
            let Handle::File { path } = handle else {
                return Err(StepError::Other(format!(
                    "unexpected handle {handle} for a staged file"
                )));
            };
            let path = PathBuf::from(path);
            let staging = path.parent();
            let inside = staging.and_then(Path::parent) == Some(images.as_path())
                && staging
                    .and_then(Path::file_name)
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".staging-"))
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n != "." && n != "..");
            if !inside {
                return Err(StepError::Other(format!(
                    "refusing to undo {}: it is not a file of a staging directory of {}",
                    path.display(),
                    images.display()
                )));
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StepError::io(
                        format!("cannot remove {}", path.display()),
                        e,
                    ));
                }
            }
        }
        Ok(())
    })
    .await
}

struct Stage;

impl Step<State> for Stage {
    fn name(&self) -> &'static str {
        "stage"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.image_staging_dir(cx.op_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        _: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.image_staging_dir(cx.op_id);
        let op_id = cx.op_id;
        Box::pin(async move {
            let dir = staging.clone();
            blocking("making the staging directory", move || {
                store::create_marked_dir(&dir, op_id)
            })
            .await?;
            Ok(vec![dir_handle(&staging)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_staging(
            cx.layout.images_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}

struct Resolve;

impl Step<State> for Resolve {
    fn name(&self) -> &'static str {
        "resolve"
    }

    fn intent(&self, _: &OpCx<'_>, _: &State) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.image_staging_dir(cx.op_id);
        Box::pin(async move {
            let PullSource::Oci { reference } = &state.source else {
                return Ok(Vec::new());
            };
            report_step(state, "resolve");
            let resolved = state
                .host
                .registry
                .resolve(&reference.to_string())
                .await
                .map_err(|e| StepError::Other(chain(&e)))?;
            let manifest = staging.join(MANIFEST_FILE);
            let bytes = resolved.manifest_json.clone();
            let path = manifest.clone();
            blocking("writing the manifest", move || {
                fs::write(&path, bytes)
                    .map_err(|e| StepError::io(format!("cannot write {}", path.display()), e))
            })
            .await?;
            let cache = state.host.registry.cache();
            let mut produced = vec![file_handle(&manifest)];
            produced.push(file_handle(&cache.blob_path(&resolved.config.digest)));
            for (layer, _) in &resolved.layers {
                produced.push(file_handle(&cache.blob_path(&layer.digest)));
            }
            state.digest = resolved.manifest_digest.to_string();
            state.resolved = Some(resolved);
            Ok(produced)
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

struct Fetch;

impl Fetch {
    fn bundle_files(cx: &OpCx<'_>) -> Vec<Handle> {
        let staging = cx.layout.image_staging_dir(cx.op_id);
        vec![
            file_handle(&staging.join(ROOTFS_FILE)),
            file_handle(&staging.join(BUNDLE_FILE)),
        ]
    }
}

impl Step<State> for Fetch {
    fn name(&self) -> &'static str {
        "fetch"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &State) -> Vec<Handle> {
        match state.source {
            PullSource::Oci { .. } => Vec::new(),
            PullSource::Bundle { .. } => Fetch::bundle_files(cx),
        }
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.image_staging_dir(cx.op_id);
        Box::pin(async move {
            report_step(state, "fetch");
            match state.source.clone() {
                PullSource::Oci { reference } => {
                    let resolved = state.resolved.as_ref().ok_or_else(|| {
                        StepError::Other("fetch needs the manifest resolve recorded".into())
                    })?;
                    // By digest: the tag may have moved since `resolve`.
                    let by_digest = format!(
                        "{}/{}@{}",
                        reference.registry(),
                        reference.repository(),
                        resolved.manifest_digest
                    );
                    let progress = state.progress.clone();
                    let sink = move |item: PullProgress| progress(PullItem::Registry(item));
                    let pulled = state
                        .host
                        .registry
                        .pull(&by_digest, &sink)
                        .await
                        .map_err(|e| StepError::Other(chain(&e)))?;
                    if pulled.manifest_digest != resolved.manifest_digest {
                        return Err(StepError::Other(format!(
                            "pulling by digest {} gave manifest {}",
                            resolved.manifest_digest, pulled.manifest_digest
                        )));
                    }
                    let config = staging.join(CONFIG_FILE);
                    let bytes = pulled.config_json.clone();
                    blocking("writing the image config", move || {
                        fs::write(&config, bytes).map_err(|e| {
                            StepError::io(format!("cannot write {}", config.display()), e)
                        })
                    })
                    .await?;
                    state.stats = pulled.stats;
                    state.diff_ids = pulled.config.rootfs.diff_ids.clone();
                    state.layers = pulled.layers;
                    Ok(Vec::new())
                }
                PullSource::Bundle {
                    url,
                    sha256,
                    size_bytes,
                    ..
                } => {
                    // A retry starts from an empty staging directory.
                    undo_staged_files(cx.layout.images_dir(), Fetch::bundle_files(cx)).await?;
                    let progress = state.progress.clone();
                    let report = move |done_bytes, total_bytes| {
                        progress(PullItem::Image(ImageProgress::Download {
                            done_bytes,
                            total_bytes,
                        }))
                    };
                    let http = state
                        .host
                        .http
                        .as_ref()
                        .map_err(|why| StepError::Other(why.clone()))?;
                    let manifest = bundle::fetch(
                        http,
                        &url,
                        &sha256,
                        size_bytes,
                        &staging,
                        state.host.flatten.max_image_bytes,
                        &report,
                    )
                    .await
                    .map_err(|e| StepError::Other(chain(&e)))?;
                    state.digest = format!("sha256:{sha256}");
                    state.size_bytes = manifest.rootfs.size;
                    state.sha256 = manifest.rootfs.sha256.clone();
                    if state.kernel.is_none() {
                        state.kernel = manifest.kernel;
                    }
                    state.stats = PullStats {
                        downloaded_blobs: 1,
                        downloaded_bytes: size_bytes,
                        cached_blobs: 0,
                    };
                    Ok(Fetch::bundle_files(cx))
                }
            }
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_staged_files(cx.layout.images_dir(), handles.to_vec()))
    }
}

struct Flatten;

impl Flatten {
    fn files(cx: &OpCx<'_>) -> Vec<Handle> {
        let rootfs = cx.layout.image_staging_dir(cx.op_id).join(ROOTFS_FILE);
        vec![file_handle(&rootfs), file_handle(&partial_path(&rootfs))]
    }
}

impl Step<State> for Flatten {
    fn name(&self) -> &'static str {
        "flatten"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &State) -> Vec<Handle> {
        match state.source {
            PullSource::Oci { .. } => Flatten::files(cx),
            PullSource::Bundle { .. } => Vec::new(),
        }
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let rootfs = cx.layout.image_staging_dir(cx.op_id).join(ROOTFS_FILE);
        Box::pin(async move {
            if matches!(state.source, PullSource::Bundle { .. }) {
                return Ok(Vec::new());
            }
            report_step(state, "flatten");
            // A retry replaces what an earlier attempt of this operation left.
            undo_staged_files(cx.layout.images_dir(), Flatten::files(cx)).await?;
            let layers = state.layers.clone();
            let diff_ids = state.diff_ids.clone();
            let options = state.host.flatten.clone();
            let progress = state.progress.clone();
            let output = rootfs.clone();
            let summary = blocking("building the filesystem", move || {
                flatten(&layers, &diff_ids, &output, options, &progress)
            })
            .await?;
            state.size_bytes = summary.size_bytes;
            (state.progress)(PullItem::Image(ImageProgress::Built {
                size_bytes: summary.size_bytes,
                content_bytes: summary.content_bytes,
                inodes: summary.inodes_used,
            }));
            Ok(Flatten::files(cx))
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_staged_files(cx.layout.images_dir(), handles.to_vec()))
    }
}

/// The layers, then the agent's, into an ext4 at `output`.
fn flatten(
    layers: &[LayerBlob],
    diff_ids: &[String],
    output: &Path,
    options: FlattenOptions,
    progress: &Progress,
) -> Result<crate::image::ImageSummary, StepError> {
    let fail = |error: crate::image::FlattenError| StepError::Other(chain(&error));
    let mut builder = ImageBuilder::create(output, options).map_err(fail)?;
    let count = layers.len();
    for (index, layer) in layers.iter().enumerate() {
        let reader = layer
            .open()
            .map_err(|e| StepError::Other(format!("layer {index} ({}): {e}", layer.digest())))?;
        let mut tracked = Tracked {
            reader,
            hasher: Sha256::new(),
            next_report: FLATTEN_REPORT_BYTES,
            report: &|done_bytes| {
                progress(PullItem::Image(ImageProgress::Flatten {
                    index,
                    layers: count,
                    done_bytes,
                    total_bytes: layer.size(),
                }))
            },
        };
        (tracked.report)(0);
        builder.apply_layer(&mut tracked).map_err(fail)?;
        let actual = Digest::from_hasher(tracked.hasher).to_string();
        if diff_ids.get(index) != Some(&actual) {
            return Err(StepError::Other(format!(
                "layer {index} ({}) decompresses to {actual}, but the image config says {}: the image is inconsistent",
                layer.digest(),
                diff_ids.get(index).map_or("nothing", String::as_str)
            )));
        }
        progress(PullItem::Image(ImageProgress::Flatten {
            index,
            layers: count,
            done_bytes: layer.size(),
            total_bytes: layer.size(),
        }));
    }
    let systemd = agent::uses_systemd(&builder);
    builder
        .apply_layer(agent::agent_layer(crate::static_agent::BYTES, systemd).as_slice())
        .map_err(fail)?;
    progress(PullItem::Image(ImageProgress::Agent { systemd }));
    builder.finish().map_err(fail)
}

/// A layer's decompressed stream, hashed (for its diff_id) and reported as it is read.
struct Tracked<'a> {
    reader: crate::registry::LayerReader,
    hasher: Sha256,
    next_report: u64,
    report: &'a dyn Fn(u64),
}

impl Read for Tracked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.hasher.update(&buf[..n]);
        let done = self.reader.compressed_bytes();
        if done >= self.next_report {
            (self.report)(done);
            self.next_report = done + FLATTEN_REPORT_BYTES;
        }
        Ok(n)
    }
}

struct Publish;

impl Step<State> for Publish {
    fn name(&self) -> &'static str {
        "publish"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.image_dir(&state.name))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.image_staging_dir(cx.op_id);
        let published = cx.layout.image_dir(&state.name);
        let op_id = cx.op_id;
        Box::pin(async move {
            report_step(state, "publish");
            let dir = published.clone();
            blocking("publishing the image", move || {
                store::publish(&staging, &dir, op_id)
            })
            .await?;
            Ok(vec![dir_handle(&published)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_publish(
            cx.layout.images_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_repository_and_tag() {
        for (reference, name) in [
            ("debian", "debian"),
            ("docker.io/library/debian:bookworm", "debian-bookworm"),
            ("127.0.0.1:5000/team/app:1.2", "app-1.2"),
            (
                "ghcr.io/o/r@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "r-0123456789ab",
            ),
            ("quay.io/x/app:_v1", "app-_v1"),
        ] {
            let parsed = ImageReference::parse(reference).unwrap();
            assert_eq!(derived_name(&parsed), name, "{reference}");
            assert!(names::validate("image", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn recorded_sources_are_recognised_by_their_own_source_only() {
        let tagged = PullSource::Oci {
            reference: ImageReference::parse("debian:bookworm").unwrap(),
        };
        let recorded = tagged.recorded("sha256:aa");
        assert_eq!(recorded, "oci:docker.io/library/debian:bookworm@sha256:aa");
        assert_eq!(tagged.digest_in(&recorded), Some("sha256:aa"));
        assert_eq!(
            tagged.digest_in("oci:docker.io/library/debian:trixie@sha256:aa"),
            None
        );
        assert_eq!(tagged.digest_in("register:/x"), None);
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let pinned = PullSource::Oci {
            reference: ImageReference::parse(&format!("debian@{digest}")).unwrap(),
        };
        let recorded = pinned.recorded(digest);
        assert_eq!(recorded, format!("oci:docker.io/library/debian@{digest}"));
        assert_eq!(pinned.digest_in(&recorded), Some(digest));
        let bundle = PullSource::Bundle {
            entry: "dev".into(),
            url: "http://x".into(),
            sha256: "ab".into(),
            size_bytes: 1,
        };
        assert_eq!(bundle.recorded("sha256:ab"), "catalog:dev@sha256:ab");
        assert_eq!(bundle.digest_in("catalog:dev@sha256:ab"), Some("sha256:ab"));
        assert_eq!(bundle.digest_in("catalog:devx@sha256:ab"), None);
    }

    #[test]
    fn progress_items_are_flat_json_both_ways() {
        for item in [
            PullItem::Image(ImageProgress::Waiting { name: "a".into() }),
            PullItem::Image(ImageProgress::Flatten {
                index: 1,
                layers: 3,
                done_bytes: 5,
                total_bytes: 9,
            }),
            PullItem::Registry(PullProgress::Resolved {
                reference: "r".into(),
                manifest_digest: Digest::of(b"m"),
                platform: "linux/amd64".into(),
                layers: 1,
                total_bytes: 2,
            }),
        ] {
            let json = serde_json::to_value(&item).unwrap();
            assert!(json["event"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<PullItem>(json).unwrap(), item);
        }
    }
}
