//! Workspaces on the host side: which files of a git checkout go into a VM, what they hash
//! to, what changed since the last sync on either side, and putting a guest's export into the
//! checkout safely. The operations (`operations/workspace_import.rs`, `workspace_export.rs`)
//! and `daemon/workspace.rs` call this; it knows nothing of events or agents.
//!
//! **Selection.** `git ls-files -z --cached --others --exclude-standard` in the checkout's root:
//! tracked and untracked files, not ignored ones. A tracked file deleted in the work tree is
//! skipped, so is a submodule (a directory), and so are banger's own export staging
//! directories. Files keep their permission bits, symlinks stay symlinks.
//!
//! **The base manifest.** After an import (and an export) bangerd writes the synced tree —
//! every path with its kind, mode, size, mtime, content hash and the host file's identity
//! (inode, ctime) — to `vms/<id>/workspace-<op>.json`, the op being the one the VM's view
//! names (`WorkspaceView::manifest_op`). It is a cache, never the truth: a file that is
//! missing, unreadable or whose tree hash is not the one the log recorded is ignored, which
//! costs speed (every file hashed again, no deletions sent) and never correctness. It serves:
//! - hashing: a host file whose (size, mtime, ctime, inode, mode) are unchanged keeps its
//!   recorded hash, so an unchanged re-import hashes nothing;
//! - telling sides apart: a guest file differs from the base when its (kind, mode, size,
//!   mtime, link) do (an import gives guest files the host's mtimes, to the nanosecond); a
//!   host file differs when its (kind, mode, content hash) do.
//!
//! **Tree hash.** sha256 over `path NUL kind mode NUL content-sha256 LF` for every entry in
//! path order (a symlink's content is its target): the same tree always hashes the same.
//!
//! **Export into the checkout.** The guest's files are first extracted under
//! `<checkout>/.banger-export-<op>/new` by the hardened extraction of `tool_tree` (no `..`,
//! nothing absolute, no symlink out of the checkout, none written through, no devices, files
//! of at most [`EXPORT_MAX_FILE_BYTES`]), then [`apply_export`] renames each into place — the
//! host file it replaces (or deletes) moved to `backup/` first — and [`unapply_export`]
//! reverses that, both idempotent, so the operation can roll back after a crash at any point.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_agent::tar_stream::{EntryKind, Header, TarWriter};
use banger_agent::tool_tree::{TreeEntry, TreeManifest, open_dir_beneath, path_components};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, renameat};
use nix::sys::stat::fstatat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The base manifest's layout version.
pub const MANIFEST_FORMAT: u32 = 1;

/// Names of export staging directories in a checkout (never imported).
pub const EXPORT_STAGING_PREFIX: &str = ".banger-export-";

/// The largest file an export takes from a guest.
pub const EXPORT_MAX_FILE_BYTES: u64 = 1 << 30;

/// The most entries an export takes from a guest.
pub const EXPORT_MAX_ENTRIES: u64 = 1_000_000;

/// One file or symlink of a checkout, as scanned and as the base manifest keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// sha256 of the content (a symlink's: of its target), lowercase hex.
    pub sha256: String,
    pub ino: u64,
    pub ctime_s: i64,
    pub ctime_ns: u32,
}

/// The synced tree, as bangerd caches it per VM (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseManifest {
    pub format: u32,
    pub host_path: String,
    pub guest_path: String,
    pub tree_hash: String,
    pub entries: Vec<HostEntry>,
}

impl BaseManifest {
    pub fn new(host_path: &Path, guest_path: &str, entries: Vec<HostEntry>) -> BaseManifest {
        BaseManifest {
            format: MANIFEST_FORMAT,
            host_path: host_path.display().to_string(),
            guest_path: guest_path.to_owned(),
            tree_hash: tree_hash(entries.iter()),
            entries,
        }
    }

    pub fn by_path(&self) -> BTreeMap<&str, &HostEntry> {
        self.entries.iter().map(|e| (e.path.as_str(), e)).collect()
    }
}

/// A checkout as it is now.
#[derive(Clone, Debug)]
pub struct Scan {
    pub root: PathBuf,
    /// HEAD, or empty when the checkout has no commit yet.
    pub commit: String,
    pub entries: BTreeMap<String, HostEntry>,
    /// Bytes hashed (files whose recorded hash could not be reused).
    pub hashed_bytes: u64,
}

impl Scan {
    pub fn tree_hash(&self) -> String {
        tree_hash(self.entries.values())
    }
}

/// Why a workspace step failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{} is not inside a git checkout (git: {detail}); run it from one, or name one", path.display())]
    NotACheckout { path: PathBuf, detail: String },
    #[error("running git in {}: {detail}", path.display())]
    Git { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, WorkspaceError> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| WorkspaceError::Git {
            path: dir.to_path_buf(),
            detail: format!("cannot run git ({e}); install git"),
        })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        let input = input.to_vec();
        // Fed from a thread: git writes as it reads, and both pipes are bounded.
        std::thread::spawn(move || pipe.write_all(&input));
    }
    let output = child.wait_with_output().map_err(|e| WorkspaceError::Git {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    // `git check-ignore` exits 1 when no path is ignored: an answer, not a failure.
    let nothing_ignored = args.first() == Some(&"check-ignore") && output.status.code() == Some(1);
    if !output.status.success() && !nothing_ignored {
        return Err(WorkspaceError::Git {
            path: dir.to_path_buf(),
            detail: format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output.stdout)
}

/// The root of the checkout `path` is in.
pub fn checkout_root(path: &Path) -> Result<PathBuf, WorkspaceError> {
    let out = git(path, &["rev-parse", "--show-toplevel"], None).map_err(|e| match e {
        WorkspaceError::Git { path, detail } => WorkspaceError::NotACheckout { path, detail },
        other => other,
    })?;
    let text = String::from_utf8_lossy(&out).trim().to_owned();
    if text.is_empty() {
        return Err(WorkspaceError::NotACheckout {
            path: path.to_path_buf(),
            detail: "a bare repository has no work tree".into(),
        });
    }
    Ok(PathBuf::from(text))
}

/// HEAD's commit, or empty when there is none yet.
pub fn head_commit(root: &Path) -> String {
    git(root, &["rev-parse", "--verify", "-q", "HEAD"], None)
        .map(|out| String::from_utf8_lossy(&out).trim().to_owned())
        .unwrap_or_default()
}

/// The paths git selects (see the module docs), relative to the root, unsorted.
pub fn list_paths(root: &Path) -> Result<Vec<String>, WorkspaceError> {
    let out = git(
        root,
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        None,
    )?;
    let mut seen = BTreeSet::new();
    for raw in out.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let path = std::str::from_utf8(raw).map_err(|_| {
            WorkspaceError::Refused(format!(
                "{}: the path {:?} is not UTF-8, which banger's workspaces cannot carry; rename it",
                root.display(),
                String::from_utf8_lossy(raw)
            ))
        })?;
        if path.starts_with(EXPORT_STAGING_PREFIX) {
            continue;
        }
        // A path with unmerged stages is listed once per stage.
        seen.insert(path.to_owned());
    }
    Ok(seen.into_iter().collect())
}

/// The paths among `paths` that the checkout's ignore rules ignore.
pub fn ignored(root: &Path, paths: &[&str]) -> Result<BTreeSet<String>, WorkspaceError> {
    if paths.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut input = Vec::new();
    for path in paths {
        input.extend_from_slice(path.as_bytes());
        input.push(0);
    }
    let out = git(
        root,
        &["check-ignore", "-z", "--stdin", "--no-index"],
        Some(&input),
    )?;
    Ok(out
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect())
}

/// Scans `paths` of the checkout (missing ones and directories are skipped), reusing the
/// hashes of `cache` for files whose identity did not change.
pub fn scan_paths(
    root: &Path,
    paths: impl IntoIterator<Item = String>,
    cache: Option<&BaseManifest>,
) -> Result<Scan, WorkspaceError> {
    let cached = cache.map(BaseManifest::by_path).unwrap_or_default();
    let mut entries = BTreeMap::new();
    let mut hashed_bytes = 0;
    for path in paths {
        let full = root.join(&path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_at(&full)(e)),
        };
        let kind = if meta.file_type().is_symlink() {
            EntryKind::Symlink
        } else if meta.is_file() {
            EntryKind::File
        } else {
            continue; // a submodule, or a socket someone left
        };
        let link = match kind {
            EntryKind::Symlink => Some(
                fs::read_link(&full)
                    .map_err(io_at(&full))?
                    .to_str()
                    .ok_or_else(|| {
                        WorkspaceError::Refused(format!(
                            "{}: its target is not UTF-8",
                            full.display()
                        ))
                    })?
                    .to_owned(),
            ),
            _ => None,
        };
        let mut entry = HostEntry {
            path: path.clone(),
            kind,
            mode: meta.permissions().mode() & 0o777,
            size: if kind == EntryKind::File {
                meta.len()
            } else {
                0
            },
            mtime_s: meta.mtime(),
            mtime_ns: meta.mtime_nsec() as u32,
            link,
            sha256: String::new(),
            ino: meta.ino(),
            ctime_s: meta.ctime(),
            ctime_ns: meta.ctime_nsec() as u32,
        };
        let reusable = cached.get(path.as_str()).filter(|c| {
            c.kind == entry.kind
                && c.mode == entry.mode
                && c.size == entry.size
                && (c.mtime_s, c.mtime_ns) == (entry.mtime_s, entry.mtime_ns)
                && (c.ctime_s, c.ctime_ns) == (entry.ctime_s, entry.ctime_ns)
                && c.ino == entry.ino
                && c.link == entry.link
        });
        entry.sha256 = match (reusable, &entry.link) {
            (Some(c), _) => c.sha256.clone(),
            (None, Some(target)) => hex(&Sha256::digest(target.as_bytes())),
            (None, None) => {
                hashed_bytes += entry.size;
                hash_file(&full)?
            }
        };
        entries.insert(path, entry);
    }
    Ok(Scan {
        root: root.to_path_buf(),
        commit: head_commit(root),
        entries,
        hashed_bytes,
    })
}

/// Scans the whole selection of the checkout at `root`.
pub fn scan(root: &Path, cache: Option<&BaseManifest>) -> Result<Scan, WorkspaceError> {
    scan_paths(root, list_paths(root)?, cache)
}

fn hash_file(path: &Path) -> Result<String, WorkspaceError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tree hash of `entries` (see the module docs); they are sorted here.
pub fn tree_hash<'a>(entries: impl Iterator<Item = &'a HostEntry>) -> String {
    let mut sorted: Vec<&HostEntry> = entries.collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    for entry in sorted {
        let kind = match entry.kind {
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Dir => "dir",
        };
        hasher.update(entry.path.as_bytes());
        hasher.update(format!("\0{kind} {:o}\0{}\n", entry.mode, entry.sha256).as_bytes());
    }
    hex(&hasher.finalize())
}

/// Whether the guest's file is exactly the host's (as an import left it).
pub fn guest_matches(guest: &TreeEntry, host: &HostEntry) -> bool {
    guest.kind == host.kind
        && guest.mode == host.mode
        && guest.size == host.size
        && (guest.mtime_s, guest.mtime_ns) == (host.mtime_s, host.mtime_ns)
        && guest.link == host.link
}

/// Whether the host's file has the content and mode the base recorded.
pub fn host_matches(now: &HostEntry, base: &HostEntry) -> bool {
    now.kind == base.kind && now.mode == base.mode && now.sha256 == base.sha256
}

/// Reads a base manifest; `None` when it is missing, unreadable or not `expected_tree_hash`'s.
pub fn read_base(path: &Path, expected_tree_hash: &str) -> Option<BaseManifest> {
    let bytes = fs::read(path).ok()?;
    let base: BaseManifest = serde_json::from_slice(&bytes).ok()?;
    (base.format == MANIFEST_FORMAT
        && base.tree_hash == expected_tree_hash
        && tree_hash(base.entries.iter()) == base.tree_hash)
        .then_some(base)
}

/// Writes a base manifest atomically (temporary file, fsync, rename).
pub fn write_base(path: &Path, base: &BaseManifest) -> Result<(), WorkspaceError> {
    let temp = path.with_extension("json.partial");
    let bytes = serde_json::to_vec(base).map_err(|e| io_at(path)(io::Error::other(e)))?;
    let mut file = File::create(&temp).map_err(io_at(&temp))?;
    file.write_all(&bytes).map_err(io_at(&temp))?;
    file.sync_all().map_err(io_at(&temp))?;
    fs::rename(&temp, path).map_err(io_at(path))
}

/// What differs between the base, the host and the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Paths the guest changed, added (not ignored by the checkout) or deleted since the base.
    pub guest_changed: BTreeSet<String>,
    /// Paths the host changed, added or deleted since the base.
    pub host_changed: BTreeSet<String>,
}

impl Comparison {
    pub fn conflicts(&self) -> Vec<String> {
        self.guest_changed
            .intersection(&self.host_changed)
            .cloned()
            .collect()
    }
}

/// Compares the base with the host now and the guest now. `guest_new_ignored` are guest-only
/// paths the checkout ignores (build output in the guest): not changes.
pub fn compare(
    base: &BaseManifest,
    host: &Scan,
    guest: &TreeManifest,
    guest_new_ignored: &BTreeSet<String>,
) -> Comparison {
    let base = base.by_path();
    let guest: BTreeMap<&str, &TreeEntry> =
        guest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = Comparison::default();
    for (path, g) in &guest {
        match base.get(path) {
            Some(b) if guest_matches(g, b) => {}
            Some(_) => {
                out.guest_changed.insert((*path).to_owned());
            }
            None if guest_new_ignored.contains(*path) => {}
            None => {
                out.guest_changed.insert((*path).to_owned());
            }
        }
    }
    for path in base.keys() {
        if !guest.contains_key(path) {
            out.guest_changed.insert((*path).to_owned());
        }
        if !host.entries.contains_key(*path) {
            out.host_changed.insert((*path).to_owned());
        }
    }
    for (path, h) in &host.entries {
        if !base.get(path.as_str()).is_some_and(|b| host_matches(h, b)) {
            out.host_changed.insert(path.clone());
        }
    }
    out
}

/// Guest paths not in the base (candidates for [`ignored`]).
pub fn guest_new_paths<'a>(base: Option<&BaseManifest>, guest: &'a TreeManifest) -> Vec<&'a str> {
    let base = base.map(BaseManifest::by_path).unwrap_or_default();
    guest
        .entries
        .iter()
        .filter(|e| !base.contains_key(e.path.as_str()))
        .map(|e| e.path.as_str())
        .collect()
}

/// What an import sends: the host entries the guest lacks or has otherwise, and the base's
/// paths the host no longer has (deletions).
#[derive(Clone, Debug, Default)]
pub struct ImportPlan {
    pub send: Vec<String>,
    pub delete: Vec<String>,
    /// Of those, the ones the guest changed since the base (an import would lose them).
    pub guest_changes_lost: Vec<String>,
}

pub fn plan_import(scan: &Scan, guest: &TreeManifest, base: Option<&BaseManifest>) -> ImportPlan {
    let guest: BTreeMap<&str, &TreeEntry> =
        guest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let base_by_path = base.map(BaseManifest::by_path).unwrap_or_default();
    let mut plan = ImportPlan::default();
    let lost = |path: &str, plan: &mut ImportPlan| {
        // With a base, a guest file that no longer matches it was changed in the guest.
        if let (Some(b), Some(g)) = (base_by_path.get(path), guest.get(path))
            && !guest_matches(g, b)
        {
            plan.guest_changes_lost.push(path.to_owned());
        }
    };
    for (path, entry) in &scan.entries {
        if guest
            .get(path.as_str())
            .is_some_and(|g| guest_matches(g, entry))
        {
            continue;
        }
        lost(path, &mut plan);
        plan.send.push(path.clone());
    }
    for path in base_by_path.keys() {
        if !scan.entries.contains_key(*path) && guest.contains_key(path) {
            lost(path, &mut plan);
            plan.delete.push((*path).to_owned());
        }
    }
    plan
}

/// Writes the import's tar stream: `send` read from the checkout (as scanned: a file whose size
/// changed since is an error, so the stream never lies about a length), then `delete`.
/// Returns (files, content bytes).
pub fn write_import(
    scan: &Scan,
    plan: &ImportPlan,
    out: impl Write,
) -> Result<(u64, u64), WorkspaceError> {
    let mut writer = TarWriter::new(io::BufWriter::with_capacity(256 << 10, out));
    let (mut files, mut bytes) = (0, 0);
    for path in &plan.send {
        let entry = &scan.entries[path];
        let full = scan.root.join(path);
        let header = Header {
            path: path.clone(),
            kind: entry.kind,
            mode: entry.mode,
            size: entry.size,
            mtime_s: entry.mtime_s,
            mtime_ns: entry.mtime_ns,
            link: entry.link.clone(),
            delete: false,
        };
        let result = match entry.kind {
            EntryKind::File => {
                let file = File::open(&full).map_err(io_at(&full))?;
                writer.append(&header, &mut io::BufReader::with_capacity(256 << 10, file))
            }
            _ => writer.append(&header, &mut io::empty()),
        };
        result.map_err(io_at(&full))?;
        files += 1;
        bytes += entry.size;
    }
    for path in &plan.delete {
        writer
            .append(&Header::deletion(path.clone()), &mut io::empty())
            .map_err(io_at(&scan.root))?;
    }
    writer.finish().map_err(io_at(&scan.root))?;
    Ok((files, bytes))
}

// ---- export into the checkout -----------------------------------------------------------------

/// What an export applies, written beside the staged files (`plan.json`) before `apply` runs,
/// so that its undo needs nothing but the staging directory's path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportPlan {
    pub writes: Vec<String>,
    pub deletes: Vec<String>,
}

pub fn staging_dir(root: &Path, op: &str) -> PathBuf {
    root.join(format!("{EXPORT_STAGING_PREFIX}{op}"))
}

/// Whether `dir` is an export staging directory right inside a checkout (what undo touches).
pub fn is_staging_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(EXPORT_STAGING_PREFIX))
        && dir.parent().is_some_and(|p| p.is_absolute())
}

pub fn read_plan(staging: &Path) -> Result<Option<ExportPlan>, WorkspaceError> {
    let path = staging.join("plan.json");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_at(&path)(io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&path)(e)),
    }
}

pub fn write_plan(staging: &Path, plan: &ExportPlan) -> Result<(), WorkspaceError> {
    let path = staging.join("plan.json");
    let temp = staging.join("plan.json.partial");
    let bytes = serde_json::to_vec(plan).map_err(|e| io_at(&path)(io::Error::other(e)))?;
    fs::write(&temp, bytes).map_err(io_at(&temp))?;
    fs::rename(&temp, &path).map_err(io_at(&path))
}

fn open_root(path: &Path) -> Result<OwnedFd, WorkspaceError> {
    File::open(path).map(OwnedFd::from).map_err(io_at(path))
}

fn exists_at(dir: &OwnedFd, name: &str) -> Result<Option<bool>, Errno> {
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat.st_mode & libc::S_IFMT == libc::S_IFDIR)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One path of a plan, opened in the three trees: (dir in the checkout, dir in new/, dir in
/// backup/, file name). `create` makes missing directories (in the checkout too).
struct Place {
    root_dir: Option<OwnedFd>,
    new_dir: Option<OwnedFd>,
    backup_dir: Option<OwnedFd>,
}

fn open_place(
    roots: &[&OwnedFd; 3],
    path: &str,
    create: [bool; 3],
) -> Result<(Place, String), WorkspaceError> {
    let components = path_components(path)
        .map_err(|reason| WorkspaceError::Refused(format!("export path {path:?}: {reason}")))?;
    let (name, parents) = components.split_last().expect("one component at least");
    let open = |i: usize| {
        open_dir_beneath(roots[i], parents, create[i], path)
            .map_err(|e| WorkspaceError::Refused(e.to_string()))
    };
    Ok((
        Place {
            root_dir: open(0)?,
            new_dir: open(1)?,
            backup_dir: open(2)?,
        },
        (*name).to_owned(),
    ))
}

fn errno_at(path: &str) -> impl FnOnce(Errno) -> WorkspaceError + '_ {
    move |e| WorkspaceError::Io {
        path: PathBuf::from(path),
        source: e.into(),
    }
}

/// Puts the staged export into the checkout: each write renamed into place, the host file it
/// replaces (or a deletion's) moved to `backup/` first. Idempotent: a path whose staged file is
/// gone was applied already. Returns the paths changed.
pub fn apply_export(root: &Path, staging: &Path) -> Result<u64, WorkspaceError> {
    let Some(plan) = read_plan(staging)? else {
        return Err(WorkspaceError::Refused(format!(
            "{} has no plan.json: the export was not fetched",
            staging.display()
        )));
    };
    fs::create_dir_all(staging.join("backup")).map_err(io_at(staging))?;
    let root_fd = open_root(root)?;
    let new_fd = open_root(&staging.join("new"))?;
    let backup_fd = open_root(&staging.join("backup"))?;
    let roots = [&root_fd, &new_fd, &backup_fd];
    let mut changed = 0;
    for path in &plan.writes {
        let (place, name) = open_place(&roots, path, [true, false, true])?;
        let (Some(root_dir), Some(new_dir), Some(backup_dir)) =
            (place.root_dir, place.new_dir, place.backup_dir)
        else {
            continue;
        };
        if exists_at(&new_dir, &name)
            .map_err(errno_at(path))?
            .is_none()
        {
            continue; // applied already
        }
        match exists_at(&root_dir, &name).map_err(errno_at(path))? {
            Some(true) => {
                return Err(WorkspaceError::Refused(format!(
                    "{path}: a directory is in the way in the checkout; move it and export again"
                )));
            }
            Some(false)
                if exists_at(&backup_dir, &name)
                    .map_err(errno_at(path))?
                    .is_none() =>
            {
                renameat(
                    root_dir.as_fd(),
                    name.as_str(),
                    backup_dir.as_fd(),
                    name.as_str(),
                )
                .map_err(errno_at(path))?;
            }
            _ => {}
        }
        renameat(
            new_dir.as_fd(),
            name.as_str(),
            root_dir.as_fd(),
            name.as_str(),
        )
        .map_err(errno_at(path))?;
        changed += 1;
    }
    for path in &plan.deletes {
        let (place, name) = open_place(&roots, path, [false, false, true])?;
        let (Some(root_dir), Some(backup_dir)) = (place.root_dir, place.backup_dir) else {
            continue;
        };
        if exists_at(&root_dir, &name).map_err(errno_at(path))? == Some(false)
            && exists_at(&backup_dir, &name)
                .map_err(errno_at(path))?
                .is_none()
        {
            renameat(
                root_dir.as_fd(),
                name.as_str(),
                backup_dir.as_fd(),
                name.as_str(),
            )
            .map_err(errno_at(path))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Reverses [`apply_export`]: every applied write goes back to `new/`, every backup back to
/// its place. Idempotent and tolerant of a staging directory that is gone or never applied.
pub fn unapply_export(staging: &Path) -> Result<(), WorkspaceError> {
    let Some(root) = staging.parent() else {
        return Ok(());
    };
    let Some(plan) = read_plan(staging)? else {
        return Ok(());
    };
    let (Ok(root_fd), Ok(new_fd), Ok(backup_fd)) = (
        open_root(root),
        open_root(&staging.join("new")),
        open_root(&staging.join("backup")),
    ) else {
        return Ok(()); // never applied
    };
    let roots = [&root_fd, &new_fd, &backup_fd];
    for path in &plan.writes {
        let (place, name) = open_place(&roots, path, [false, true, false])?;
        let (Some(root_dir), Some(new_dir)) = (place.root_dir, place.new_dir) else {
            continue;
        };
        let backup = place
            .backup_dir
            .filter(|dir| exists_at(dir, &name).ok().flatten().is_some());
        let staged = exists_at(&new_dir, &name)
            .map_err(errno_at(path))?
            .is_some();
        if !staged && exists_at(&root_dir, &name).map_err(errno_at(path))? == Some(false) {
            renameat(
                root_dir.as_fd(),
                name.as_str(),
                new_dir.as_fd(),
                name.as_str(),
            )
            .map_err(errno_at(path))?;
        }
        if let Some(backup_dir) = backup {
            renameat(
                backup_dir.as_fd(),
                name.as_str(),
                root_dir.as_fd(),
                name.as_str(),
            )
            .map_err(errno_at(path))?;
        }
    }
    for path in &plan.deletes {
        let (place, name) = open_place(&roots, path, [false, false, false])?;
        let (Some(root_dir), Some(backup_dir)) = (place.root_dir, place.backup_dir) else {
            continue;
        };
        if exists_at(&backup_dir, &name)
            .map_err(errno_at(path))?
            .is_some()
            && exists_at(&root_dir, &name)
                .map_err(errno_at(path))?
                .is_none()
        {
            renameat(
                backup_dir.as_fd(),
                name.as_str(),
                root_dir.as_fd(),
                name.as_str(),
            )
            .map_err(errno_at(path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "workspace_tests.rs"]
mod tests;
