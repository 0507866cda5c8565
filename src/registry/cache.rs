//! The blob cache: verified blobs by digest, shared between pulls, safe against a prune.
//!
//! ```text
//! DIR/                       the cache (paths::Layout::oci_cache_dir, ~/.cache/banger/oci)
//!   blobs/sha256/<hex>       a blob whose sha256 and size were verified before it got its name
//!   tmp/<hex>.<pid>.<n>.partial   a download in progress
//! DIR/../.oci.pruning-<op id>    a prune's aside copy, being deleted (older builds named it
//!                                 .oci.pruning-<pid>-<n>)
//! ```
//!
//! Invariants:
//! - A file appears under `blobs/sha256/` only by a rename of a complete, fsynced temporary
//!   file whose sha256 and size matched the descriptor. Nothing else writes there. A download
//!   that fails, is refused or is cancelled (its future dropped) removes its temporary file.
//! - Temporary files live inside the cache directory, so a prune moves them aside with
//!   everything else. A prune renames `DIR` aside, creates an empty `DIR` ([`set_aside`]) and
//!   deletes the aside copy ([`delete_asides`]): the two steps of the `image.cache.prune`
//!   operation (`operations::image_cache_prune`), recorded in the log. It takes no lock the
//!   pulls take and never waits for a pull. A pull whose download was moved
//!   aside meanwhile finds its temporary path gone when it renames it (`rename` resolves paths
//!   in the new, empty `DIR`) and does not recreate it: it keeps the verified bytes through its
//!   open descriptor, so the pull still succeeds, and the blob is simply not cached. So a prune
//!   never leaves a partial file under a blob's name, and a pull never resurrects a file from
//!   before the prune.
//! - A pull hands out open descriptors ([`super::LayerBlob`]), never paths, so an image built
//!   from a pull is unaffected by a prune that runs after it returned.
//! - Within one process, one download per digest at a time: a second pull wanting a blob that
//!   is being downloaded waits for it, then takes it from the cache (clones of a
//!   [`BlobCache`] share this). Another process racing for the same blob is harmless: both
//!   verify, and the second rename replaces the first file with identical bytes.
//! - A cached blob is trusted by presence and size when a pull looks it up (a size mismatch
//!   discards it and downloads again); its digest is checked again whenever it is read
//!   ([`super::layer`]).
//! - Leftover temporary files of a crashed process are deleted by the next download of any
//!   process (their pid is dead). The aside copy of a prune that a crash interrupted is
//!   deleted when recovery rolls that prune forward; any other aside copy (an older build's)
//!   by the next prune.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use super::digest::Digest;
use super::error::PullError;
use super::progress::BlobState;

/// Buffered between the network and the temporary file, so that small network chunks do not
/// each cost a trip to the blocking pool.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// Downloading progress is reported at least this many bytes apart (and at 1% steps above).
const PROGRESS_STEP_BYTES: u64 = 1024 * 1024;

/// The verified blobs of all pulls, by digest. Cheap to clone; clones share the in-flight
/// downloads.
#[derive(Clone)]
pub struct BlobCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    in_flight: Mutex<HashMap<Digest, watch::Receiver<()>>>,
    next_temp: AtomicU64,
    swept: AtomicBool,
}

impl fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobCache")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// How a blob came to be available to a pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It was in the cache.
    Cached,
    /// This pull downloaded it (and it is in the cache unless a prune intervened).
    Downloaded,
    /// Another pull of this process downloaded it while this one waited.
    Shared,
}

/// A response body: its declared length and its bytes.
pub(crate) struct Incoming<S> {
    pub content_length: Option<u64>,
    pub stream: S,
}

/// Names a blob in errors: which registry sent it and what it is to the image.
pub(crate) struct BlobLabel<'a> {
    pub registry: &'a str,
    pub what: &'a str,
}

/// A file or directory the cache failed to handle.
#[derive(Debug, thiserror::Error)]
#[error("blob cache {}: {source}", path.display())]
pub struct CacheError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What `image cache prune` freed, or would free.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneSummary {
    pub bytes: u64,
    pub blobs: u64,
    pub dir: PathBuf,
    pub dry_run: bool,
}

impl fmt::Display for PruneSummary {
    /// The one line `banger image cache prune` prints:
    /// `freed 1.2 GiB across 47 blob(s) in DIR` or `would free …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} across {} blob(s) in {}",
            if self.dry_run { "would free" } else { "freed" },
            crate::size::format_bytes(self.bytes),
            self.blobs,
            self.dir.display()
        )
    }
}

impl BlobCache {
    /// The cache rooted at `dir` (nothing is created until a blob is stored).
    pub fn new(dir: impl Into<PathBuf>) -> BlobCache {
        BlobCache {
            inner: Arc::new(Inner {
                dir: dir.into(),
                in_flight: Mutex::new(HashMap::new()),
                next_temp: AtomicU64::new(0),
                swept: AtomicBool::new(false),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where blob `digest` lives once cached.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Where downloads in progress are written.
    pub fn temp_dir(&self) -> PathBuf {
        self.inner.dir.join("tmp")
    }

    /// The cached blobs and their sizes, sorted by digest (files under `blobs/sha256/` whose
    /// names are not digests are not blobs and are left out). A missing cache is empty.
    pub fn list_blobs(&self) -> Result<Vec<(Digest, u64)>, CacheError> {
        let dir = self.inner.dir.join("blobs/sha256");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CacheError { path: dir, source }),
        };
        let mut blobs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CacheError {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            else {
                continue;
            };
            let metadata = entry.metadata().map_err(|source| CacheError {
                path: entry.path(),
                source,
            })?;
            if metadata.is_file() {
                blobs.push((digest, metadata.len()));
            }
        }
        blobs.sort();
        Ok(blobs)
    }

    /// Opens cached blob `digest` when it is present with the expected size. A file of another
    /// size is not that blob (a damaged cache): it is removed, so it gets downloaded again.
    fn open_cached(&self, digest: &Digest, size: u64) -> Result<Option<File>, PullError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PullError::cache(path, e)),
        };
        let metadata = file.metadata().map_err(|e| PullError::cache(&path, e))?;
        if metadata.is_file() && metadata.len() == size {
            return Ok(Some(file));
        }
        tracing::warn!(
            path = %path.display(),
            found = metadata.len(),
            expected = size,
            "cached blob has the wrong size; downloading it again"
        );
        match fs::remove_file(&path) {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PullError::cache(path, e)),
        }
    }

    /// Makes blob `digest` (of `size` bytes) available: from the cache, by waiting for another
    /// pull of this process that is downloading it, or by downloading it with `open` (called
    /// at most once). Returns an open descriptor of the verified bytes.
    pub(crate) async fn ensure<Open, Fut, S, B>(
        &self,
        digest: &Digest,
        size: u64,
        label: &BlobLabel<'_>,
        open: Open,
        progress: &(dyn Fn(BlobState, u64) + Send + Sync),
    ) -> Result<(Arc<File>, Outcome), PullError>
    where
        Open: FnOnce() -> Fut,
        Fut: Future<Output = Result<Incoming<S>, PullError>>,
        S: Stream<Item = io::Result<B>>,
        B: AsRef<[u8]>,
    {
        let mut open = Some(open);
        let mut waited = false;
        loop {
            if let Some(file) = self.open_cached(digest, size)? {
                let outcome = if waited {
                    Outcome::Shared
                } else {
                    Outcome::Cached
                };
                return Ok((Arc::new(file), outcome));
            }
            match self.claim(digest) {
                Err(mut done) => {
                    progress(BlobState::Waiting, 0);
                    // Err: the downloader finished (either way) and dropped its sender.
                    let _ = done.changed().await;
                    waited = true;
                }
                Ok(_claim) => {
                    let open = open.take().expect("a pull downloads a blob at most once");
                    let file = self.download(digest, size, label, open, progress).await?;
                    return Ok((Arc::new(file), Outcome::Downloaded));
                }
            }
        }
    }

    /// Claims the download of `digest` for the caller, or returns a receiver that wakes when
    /// the pull holding the claim lets go of it.
    fn claim(&self, digest: &Digest) -> Result<Claim<'_>, watch::Receiver<()>> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(done) = in_flight.get(digest) {
            return Err(done.clone());
        }
        let (sender, receiver) = watch::channel(());
        in_flight.insert(digest.clone(), receiver);
        Ok(Claim {
            inner: &self.inner,
            digest: digest.clone(),
            _sender: sender,
        })
    }

    async fn download<Open, Fut, S, B>(
        &self,
        digest: &Digest,
        size: u64,
        label: &BlobLabel<'_>,
        open: Open,
        progress: &(dyn Fn(BlobState, u64) + Send + Sync),
    ) -> Result<File, PullError>
    where
        Open: FnOnce() -> Fut,
        Fut: Future<Output = Result<Incoming<S>, PullError>>,
        S: Stream<Item = io::Result<B>>,
        B: AsRef<[u8]>,
    {
        self.sweep_stale_temp_files();
        let (temp, file) = self.create_temp(digest)?;
        let size_mismatch = |actual: String| PullError::SizeMismatch {
            registry: label.registry.to_owned(),
            what: label.what.to_owned(),
            digest: digest.clone(),
            expected_bytes: size,
            actual,
        };
        let digest_mismatch = |actual: Digest| PullError::DigestMismatch {
            registry: label.registry.to_owned(),
            what: label.what.to_owned(),
            expected: digest.clone(),
            actual,
        };
        let incoming = open().await?;
        if let Some(length) = incoming.content_length
            && length != size
        {
            return Err(size_mismatch(length.to_string()));
        }
        progress(BlobState::Downloading, 0);
        let step = PROGRESS_STEP_BYTES.max(size / 100);
        let mut next_report = step;
        let mut writer = tokio::io::BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            tokio::fs::File::from_std(file),
        );
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut stream = pin!(incoming.stream);
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(source) => {
                    // oci-client ends a stream whose digest is wrong with an error; say what
                    // was wrong in banger's words when it is that.
                    if received == size {
                        let actual = Digest::from_hasher(hasher);
                        if &actual != digest {
                            return Err(digest_mismatch(actual));
                        }
                    }
                    return Err(PullError::Download {
                        registry: label.registry.to_owned(),
                        what: label.what.to_owned(),
                        digest: digest.clone(),
                        source,
                    });
                }
            };
            let chunk = chunk.as_ref();
            received += chunk.len() as u64;
            if received > size {
                // Cut off here: a registry does not get to fill the disk past a descriptor.
                return Err(size_mismatch(format!("more than {size}")));
            }
            hasher.update(chunk);
            writer
                .write_all(chunk)
                .await
                .map_err(|e| PullError::cache(&temp.path, e))?;
            if received >= next_report && received < size {
                progress(BlobState::Downloading, received);
                next_report = received + step;
            }
        }
        if received != size {
            return Err(size_mismatch(received.to_string()));
        }
        let actual = Digest::from_hasher(hasher);
        if &actual != digest {
            return Err(digest_mismatch(actual));
        }
        writer
            .flush()
            .await
            .map_err(|e| PullError::cache(&temp.path, e))?;
        let file = writer.into_inner();
        // Durable before it gets its name: after a crash a blob's name never points at bytes
        // that were not written yet.
        file.sync_all()
            .await
            .map_err(|e| PullError::cache(&temp.path, e))?;
        let file = file.into_std().await;
        self.publish(temp, digest)?;
        Ok(file)
    }

    /// Creates a temporary file for a download of `digest` (read-write: its descriptor is what
    /// the pull keeps).
    fn create_temp(&self, digest: &Digest) -> Result<(TempFile, File), PullError> {
        let dir = self.temp_dir();
        let name = format!(
            "{}.{}.{}.partial",
            digest.hex(),
            std::process::id(),
            self.inner.next_temp.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        // Twice: a prune may rename the cache away between creating the directory and the file.
        for _ in 0..2 {
            create_private_dir(&dir).map_err(|e| PullError::cache(&dir, e))?;
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((TempFile { path, armed: true }, file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PullError::cache(path, e)),
            }
        }
        Err(PullError::cache(
            path,
            io::Error::new(
                io::ErrorKind::NotFound,
                "the cache directory keeps vanishing",
            ),
        ))
    }

    /// Gives a verified temporary file its blob name. When a prune moved the temporary file
    /// aside meanwhile, nothing is published (see the module documentation).
    fn publish(&self, mut temp: TempFile, digest: &Digest) -> Result<(), PullError> {
        let target = self.blob_path(digest);
        let dir = target
            .parent()
            .expect("a blob path has a parent")
            .to_owned();
        for _ in 0..3 {
            match fs::rename(&temp.path, &target) {
                Ok(()) => {
                    temp.armed = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if fs::symlink_metadata(&temp.path).is_err() {
                        tracing::info!(%digest, "the blob cache was pruned during the download; this pull keeps its copy, the cache does not");
                        temp.armed = false;
                        return Ok(());
                    }
                    create_private_dir(&dir).map_err(|e| PullError::cache(&dir, e))?;
                }
                Err(e) => return Err(PullError::cache(target, e)),
            }
        }
        Err(PullError::cache(
            target,
            io::Error::new(
                io::ErrorKind::NotFound,
                "the cache directory keeps vanishing",
            ),
        ))
    }

    /// Deletes temporary files left by processes that died mid-download (once per cache value:
    /// a crash is rare, and the next prune deletes them anyway). bangerd calls it at start, after
    /// crash recovery, so a download its previous process was killed in leaves nothing behind;
    /// the first download of a cache value calls it too.
    pub fn sweep_stale_temp_files(&self) {
        if self.inner.swept.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(entries) = fs::read_dir(self.temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|name| name.split('.').nth(1))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// `image cache prune --dry-run`: what a prune would free — the cache and every aside
    /// copy beside it — without changing anything. A missing cache is zero.
    pub async fn prune_dry_run(&self) -> Result<PruneSummary, CacheError> {
        let dir = self.inner.dir.clone();
        run_blocking(move || {
            let mut summary = PruneSummary::empty(&dir, true);
            tally(&dir, &mut summary)?;
            for aside in asides(&dir)? {
                tally(&aside, &mut summary)?;
            }
            Ok(summary)
        })
        .await
    }

    /// A whole prune in one call, unrecorded: [`set_aside`] (under a name of this process
    /// and moment) then [`delete_asides`], or the dry run's tally. bangerd does not call it:
    /// it runs the `image.cache.prune` operation, which records the same two calls as steps
    /// (`operations::image_cache_prune`); this is the library's own, for its users and tests.
    pub async fn prune(&self, dry_run: bool) -> Result<PruneSummary, CacheError> {
        if dry_run {
            return self.prune_dry_run().await;
        }
        let dir = self.inner.dir.clone();
        run_blocking(move || {
            let tag = format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            );
            set_aside(&dir, &prune_aside(&dir, &tag)?)?;
            delete_asides(&dir)
        })
        .await
    }
}

impl PruneSummary {
    fn empty(dir: &Path, dry_run: bool) -> PruneSummary {
        PruneSummary {
            bytes: 0,
            blobs: 0,
            dir: dir.to_owned(),
            dry_run,
        }
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CacheError {
            path: PathBuf::new(),
            source: io::Error::other(e),
        })?
}

/// The first part of every aside copy's name beside cache `dir`: `.<name>.pruning-`.
fn aside_prefix(dir: &Path) -> Result<String, CacheError> {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some(name) => Ok(format!(".{name}.pruning-")),
        None => Err(CacheError {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the cache has no usable name"),
        }),
    }
}

/// Where a prune tagged `tag` (the operation's id) sets cache `dir` aside:
/// `<parent>/.<name>.pruning-<tag>`. Derived from the tag alone, so that a prune resumed
/// after a crash, or its undo, finds the copy the first attempt made.
pub fn prune_aside(dir: &Path, tag: &str) -> Result<PathBuf, CacheError> {
    Ok(dir.with_file_name(format!("{}{tag}", aside_prefix(dir)?)))
}

/// Whether `path` is an aside copy of cache `dir`: directly beside it, named
/// `.<name>.pruning-<something>`. Undo deletes nothing else, whatever the log says.
pub fn is_prune_aside(dir: &Path, path: &Path) -> bool {
    let Ok(prefix) = aside_prefix(dir) else {
        return false;
    };
    path.parent() == dir.parent()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|tag| !tag.is_empty())
}

/// The aside copies beside cache `dir`, sorted: a running prune's, and what a crashed one or
/// an older build (`.<name>.pruning-<pid>-<nanos>`) left.
fn asides(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let prefix = aside_prefix(dir)?;
    let fail = |source| CacheError {
        path: parent.to_owned(),
        source,
    };
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(fail)?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A prune's first half: renames cache `dir` to `aside` and creates `dir` again, empty
/// (0700). Idempotent: when `aside` exists the rename was done already, and only `dir` is
/// made sure of. A missing cache has nothing to set aside and is not created. It takes no
/// lock and waits for no pull: a pull in flight keeps its open blobs and publishes nothing
/// into the new `dir` (see the module documentation).
pub fn set_aside(dir: &Path, aside: &Path) -> Result<(), CacheError> {
    let fail = |path: &Path| {
        let path = path.to_owned();
        move |source| CacheError { path, source }
    };
    match fs::symlink_metadata(aside) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::rename(dir, aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fail(dir)(e)),
        },
        Err(e) => return Err(fail(aside)(e)),
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // A pull recreated it in the meantime: it is new and holds nothing old.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(dir)(e)),
    }
    // The rename survives a power cut once its directory is synced.
    let parent = dir.parent().unwrap_or(Path::new("/"));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(fail(parent))
}

/// A prune's second half: deletes every aside copy beside cache `dir` (see [`asides`]),
/// tallying each first. Idempotent: what is gone already counts nothing.
pub fn delete_asides(dir: &Path) -> Result<PruneSummary, CacheError> {
    let mut summary = PruneSummary::empty(dir, false);
    for aside in asides(dir)? {
        tally(&aside, &mut summary)?;
        match fs::remove_dir_all(&aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CacheError {
                    path: aside,
                    source,
                });
            }
        }
    }
    Ok(summary)
}

/// Adds the regular files under `dir` to `summary`: all of them to the bytes, those under
/// `blobs/` to the blob count. Symlinks are not followed. A missing `dir` adds nothing.
fn tally(dir: &Path, summary: &mut PruneSummary) -> Result<(), CacheError> {
    let mut stack = vec![(dir.to_owned(), false)];
    while let Some((path, in_blobs)) = stack.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CacheError { path, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| CacheError {
                path: path.clone(),
                source,
            })?;
            let file_type = entry.file_type().map_err(|source| CacheError {
                path: entry.path(),
                source,
            })?;
            if file_type.is_dir() {
                let blobs = in_blobs || (path == dir && entry.file_name() == "blobs");
                stack.push((entry.path(), blobs));
            } else if file_type.is_file() {
                let metadata = match entry.metadata() {
                    Ok(metadata) => metadata,
                    // Removed by a pull's cleanup while we walked.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(CacheError {
                            path: entry.path(),
                            source,
                        });
                    }
                };
                summary.bytes += metadata.len();
                if in_blobs {
                    summary.blobs += 1;
                }
            }
        }
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The claim on one digest's download; dropping it (success, error or cancellation) removes
/// the entry and then, by dropping the sender, wakes every waiter.
struct Claim<'a> {
    inner: &'a Inner,
    digest: Digest,
    _sender: watch::Sender<()>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.digest);
    }
}

/// A download's temporary file, removed on drop unless it was renamed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures_util::stream;

    use super::*;

    fn incoming(chunks: Vec<Vec<u8>>) -> Incoming<impl Stream<Item = io::Result<Vec<u8>>>> {
        let length = chunks.iter().map(|c| c.len() as u64).sum();
        Incoming {
            content_length: Some(length),
            stream: stream::iter(chunks.into_iter().map(Ok)),
        }
    }

    const LABEL: BlobLabel<'static> = BlobLabel {
        registry: "test",
        what: "layer 0",
    };

    fn quiet(_: BlobState, _: u64) {}

    fn temp_files(cache: &BlobCache) -> Vec<PathBuf> {
        fs::read_dir(cache.temp_dir())
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn stores_a_verified_blob_and_serves_it_from_the_cache() {
        let root = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(root.path().join("oci"));
        let bytes = b"hello blob".to_vec();
        let digest = Digest::of(&bytes);
        let (file, outcome) = cache
            .ensure(
                &digest,
                bytes.len() as u64,
                &LABEL,
                || async { Ok(incoming(vec![bytes[..4].to_vec(), bytes[4..].to_vec()])) },
                &quiet,
            )
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Downloaded);
        assert_eq!(file.metadata().unwrap().len(), bytes.len() as u64);
        assert_eq!(fs::read(cache.blob_path(&digest)).unwrap(), bytes);
        assert_eq!(cache.list_blobs().unwrap(), vec![(digest.clone(), 10)]);
        let (_, outcome) = cache
            .ensure(
                &digest,
                10,
                &LABEL,
                || async {
                    Err::<Incoming<stream::Empty<io::Result<Vec<u8>>>>, _>(PullError::Client(
                        "no download expected".into(),
                    ))
                },
                &quiet,
            )
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Cached);
        assert!(temp_files(&cache).is_empty());
    }

    #[tokio::test]
    async fn refuses_wrong_digests_and_sizes_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(root.path().join("oci"));
        let bytes = b"the real bytes".to_vec();
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        // (chunks the registry sends, its Content-Length, what the error says)
        type Case = (Vec<Vec<u8>>, Option<u64>, &'static str);
        let cases: Vec<Case> = vec![
            (
                vec![b"the fake bytes".to_vec()],
                Some(size),
                "wrong content",
            ),
            (vec![b"short".to_vec()], None, "is 5 bytes"),
            (
                vec![bytes.clone(), b"and more".to_vec()],
                None,
                "more than 14",
            ),
            (vec![bytes.clone()], Some(size + 1), "is 15 bytes"),
        ];
        for (chunks, content_length, expected) in cases {
            let error = cache
                .ensure(
                    &digest,
                    size,
                    &LABEL,
                    || async {
                        Ok(Incoming {
                            content_length,
                            stream: stream::iter(chunks.into_iter().map(Ok)),
                        })
                    },
                    &quiet,
                )
                .await
                .unwrap_err();
            assert!(error.to_string().contains(expected), "{expected}: {error}");
            assert!(cache.list_blobs().unwrap().is_empty());
            assert!(temp_files(&cache).is_empty(), "{expected}");
        }
    }

    #[tokio::test]
    async fn a_blob_of_the_wrong_size_in_the_cache_is_downloaded_again() {
        let root = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(root.path().join("oci"));
        let bytes = b"0123456789".to_vec();
        let digest = Digest::of(&bytes);
        create_private_dir(cache.blob_path(&digest).parent().unwrap()).unwrap();
        fs::write(cache.blob_path(&digest), b"01234").unwrap();
        let (_, outcome) = cache
            .ensure(
                &digest,
                10,
                &LABEL,
                || async { Ok(incoming(vec![bytes.clone()])) },
                &quiet,
            )
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Downloaded);
        assert_eq!(fs::read(cache.blob_path(&digest)).unwrap(), bytes);
    }

    #[tokio::test]
    async fn concurrent_pulls_download_a_blob_once() {
        let root = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(root.path().join("oci"));
        let bytes = vec![42u8; 100_000];
        let digest = Digest::of(&bytes);
        let downloads = AtomicUsize::new(0);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = tokio::sync::Mutex::new(Some(released));
        let pull = || async {
            cache
                .ensure(
                    &digest,
                    bytes.len() as u64,
                    &LABEL,
                    || async {
                        downloads.fetch_add(1, Ordering::SeqCst);
                        // Hold the download open until both pulls are in.
                        let gate = released.lock().await.take().unwrap();
                        gate.await.unwrap();
                        Ok(incoming(vec![bytes.clone()]))
                    },
                    &quiet,
                )
                .await
                .map(|(_, outcome)| outcome)
        };
        let (first, second, ()) = tokio::join!(pull(), pull(), async {
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        });
        let mut outcomes = vec![first.unwrap(), second.unwrap()];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(outcomes, vec![Outcome::Downloaded, Outcome::Shared]);
        assert_eq!(downloads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_prune_during_a_download_leaves_an_empty_cache_and_a_working_pull() {
        let root = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(root.path().join("oci"));
        let bytes = vec![7u8; 50_000];
        let digest = Digest::of(&bytes);
        let pruner = cache.clone();
        let (file, outcome) = cache
            .ensure(
                &digest,
                bytes.len() as u64,
                &LABEL,
                || async {
                    // The prune runs after the temporary file exists and before it is renamed.
                    let summary = pruner.prune(false).await.unwrap();
                    assert_eq!(summary.blobs, 0);
                    Ok(incoming(vec![bytes.clone()]))
                },
                &quiet,
            )
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Downloaded);
        // The pull has its bytes; the cache does not, and holds nothing half-made.
        let mut read = vec![0u8; bytes.len()];
        use std::os::unix::fs::FileExt as _;
        file.read_exact_at(&mut read, 0).unwrap();
        assert!(read == bytes);
        assert!(cache.list_blobs().unwrap().is_empty());
        assert!(temp_files(&cache).is_empty());
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("oci")]);
    }

    #[tokio::test]
    async fn prune_tallies_renames_aside_and_deletes() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("oci");
        let cache = BlobCache::new(&dir);
        let missing = cache.prune(false).await.unwrap();
        assert_eq!((missing.bytes, missing.blobs), (0, 0));
        assert_eq!(
            missing.to_string(),
            format!("freed 0 B across 0 blob(s) in {}", dir.display())
        );
        for bytes in [vec![1u8; 1000], vec![2u8; 2000]] {
            let digest = Digest::of(&bytes);
            cache
                .ensure(
                    &digest,
                    bytes.len() as u64,
                    &LABEL,
                    || async { Ok(incoming(vec![bytes.clone()])) },
                    &quiet,
                )
                .await
                .unwrap();
        }
        // A crashed prune's aside copy is finished off too.
        fs::create_dir_all(root.path().join(".oci.pruning-1-2/blobs/sha256")).unwrap();
        fs::write(
            root.path().join(".oci.pruning-1-2/blobs/sha256/x"),
            [0u8; 500],
        )
        .unwrap();
        let dry = cache.prune(true).await.unwrap();
        assert_eq!((dry.bytes, dry.blobs), (3500, 3));
        assert_eq!(
            dry.to_string(),
            format!("would free 3.4 KiB across 3 blob(s) in {}", dir.display())
        );
        assert_eq!(cache.list_blobs().unwrap().len(), 2);
        let done = cache.prune(false).await.unwrap();
        assert_eq!((done.bytes, done.blobs, done.dry_run), (3500, 3, false));
        assert!(cache.list_blobs().unwrap().is_empty());
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("oci")]);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn stale_temp_files_of_dead_processes_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(root.path().join("oci"));
        create_private_dir(&cache.temp_dir()).unwrap();
        // pid 4194304 is above Linux's pid_max limit: never a live process.
        let dead = cache
            .temp_dir()
            .join(format!("{}.4194304.0.partial", "a".repeat(64)));
        let ours = cache.temp_dir().join(format!(
            "{}.{}.9.partial",
            "b".repeat(64),
            std::process::id()
        ));
        fs::write(&dead, b"x").unwrap();
        fs::write(&ours, b"x").unwrap();
        cache.sweep_stale_temp_files();
        assert!(!dead.exists());
        assert!(ours.exists());
    }
}
