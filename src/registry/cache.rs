//! The blob cache: verified blobs by digest, shared between pulls, safe against a prune.
//!
//! ```text
//! DIR/                       the cache (paths::Layout::oci_cache_dir, ~/.cache/banger/oci)
//!   blobs/sha256/<hex>       a blob whose sha256 and size were verified before it got its name
//!   tmp/<hex>.<pid>.<n>.partial   a download in progress
//! DIR/../.oci.pruning-<pid>-<n>   a prune's aside copy, being deleted
//! ```
//!
//! Invariants:
//! - A file appears under `blobs/sha256/` only by a rename of a complete, fsynced temporary
//!   file whose sha256 and size matched the descriptor. Nothing else writes there. A download
//!   that fails, is refused or is cancelled (its future dropped) removes its temporary file.
//! - Temporary files live inside the cache directory, so a prune moves them aside with
//!   everything else. A prune renames `DIR` aside, creates an empty `DIR` and deletes the
//!   aside copy; it takes no lock and never waits for a pull. A pull whose download was moved
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
//!   process (their pid is dead), and leftover aside copies by the next prune.

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

    /// `image cache prune`: tallies the cache, then (unless `dry_run`) renames it aside,
    /// recreates it empty and deletes the aside copy. A missing cache is zero. Aside copies a
    /// crashed prune left behind are deleted (and counted) too.
    pub async fn prune(&self, dry_run: bool) -> Result<PruneSummary, CacheError> {
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || prune_blocking(&dir, dry_run))
            .await
            .map_err(|e| CacheError {
                path: PathBuf::new(),
                source: io::Error::other(e),
            })?
    }
}

fn prune_blocking(dir: &Path, dry_run: bool) -> Result<PruneSummary, CacheError> {
    let fail = |path: &Path| {
        let path = path.to_owned();
        move |source| CacheError { path, source }
    };
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside_prefix = format!(".{name}.pruning-");
    let mut leftovers = Vec::new();
    match fs::read_dir(parent) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(fail(parent))?;
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&aside_prefix)
                {
                    leftovers.push(entry.path());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(parent)(e)),
    }
    let mut summary = PruneSummary {
        bytes: 0,
        blobs: 0,
        dir: dir.to_owned(),
        dry_run,
    };
    if dry_run {
        for path in std::iter::once(dir).chain(leftovers.iter().map(PathBuf::as_path)) {
            tally(path, &mut summary)?;
        }
        return Ok(summary);
    }
    let aside = parent.join(format!(
        "{aside_prefix}{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    match fs::rename(dir, &aside) {
        Ok(()) => {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // A pull recreated it in the meantime: it is new and holds nothing old.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(dir)(e)),
            }
            leftovers.push(aside);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(dir)(e)),
    }
    for path in &leftovers {
        tally(path, &mut summary)?;
        match fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(path)(e)),
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
