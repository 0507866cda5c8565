//! Workspace trees in and out of a directory: the agent's tool modes `--tar-receive DIR`,
//! `--tar-send DIR [--paths-from-stdin]` and `--tree-manifest DIR`, and the safe extraction
//! bangerd uses on the host for a guest's export (the same code, stricter options).
//!
//! The host runs these in the guest through the agent's ordinary `exec` (argv
//! `["/proc/self/exe", "--tar-receive", DIR]`, the tar on stdin); each prints one JSON
//! document on stdout (or the tar, for `--tar-send`), errors on stderr with a non-zero exit.
//!
//! [`extract`] writes a tar stream ([`crate::tar_stream`]) under a root directory, and nothing
//! outside it, whatever the stream says:
//! - a path is relative, `/`-separated, without `..`, empty or over-long components (`.`
//!   components are dropped);
//! - every parent directory is opened component by component with `O_NOFOLLOW` from the root's
//!   descriptor, so no entry is ever written through a symlink (one the stream made earlier,
//!   or one that was there), nor through a file;
//! - a file is written to a temporary name beside its target (`O_EXCL|O_NOFOLLOW`), given its
//!   mode (permission bits only: no setuid) and mtime, then renamed over the target: a reader
//!   sees the old file or the new one, never half of one;
//! - with [`ExtractOptions::allow_escaping_symlinks`] off (the host reading a guest's tar) a
//!   symlink must be relative and stay inside the root when resolved lexically from its
//!   directory;
//! - a deletion (`BANGER.delete`) removes a file or symlink; a missing one is fine, a
//!   directory is refused.
//!
//! A directory in the way of a file (or a file in the way of a directory) is an error naming
//! the path, never a recursive removal.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use serde::{Deserialize, Serialize};

use crate::tar_stream::{EntryKind, Header, Limits, TarError, TarReader, TarWriter};

/// Names starting with this are a receive's temporary files: never listed, never sent.
pub const TEMP_PREFIX: &str = ".banger-tmp.";

/// The directory a tree walk never enters: a checkout's git database is not workspace content.
pub const GIT_DIR: &str = ".git";

/// One file or symlink of a tree, as `--tree-manifest` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// What `--tree-manifest` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeManifest {
    /// False when the directory does not exist (nothing was imported there yet).
    pub exists: bool,
    pub entries: Vec<TreeEntry>,
}

/// What `--tar-receive` (and [`extract`]) did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractSummary {
    pub files: u64,
    pub symlinks: u64,
    pub dirs: u64,
    pub deleted: u64,
    pub bytes: u64,
    /// Every file and symlink written, in stream order (the host's export applies these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletions: Vec<String>,
}

/// How strict [`extract`] is.
#[derive(Clone, Copy, Debug)]
pub struct ExtractOptions {
    pub limits: Limits,
    /// Allow symlinks whose target is absolute or climbs out of the root. The guest's copy of
    /// a host checkout keeps the user's links as they are; the host refuses them from a guest.
    pub allow_escaping_symlinks: bool,
    /// List written paths and deletions in the summary.
    pub list_paths: bool,
}

/// Why an extraction stopped. What was written before stays (each file is whole).
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("refusing tar entry {path:?}: {reason}")]
    Refused { path: String, reason: String },
    #[error("writing {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn refused(path: &str, reason: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn io_error(path: &str, source: impl Into<io::Error>) -> ExtractError {
    ExtractError::Io {
        path: path.to_owned(),
        source: source.into(),
    }
}

/// The components of a relative tar path, or why it is refused.
pub fn path_components(path: &str) -> Result<Vec<&str>, String> {
    if path.starts_with('/') {
        return Err("an absolute path".into());
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => continue,
            ".." => return Err("a path with a '..' component".into()),
            c if c.len() > 255 => return Err("a path component over 255 bytes".into()),
            c if c.bytes().any(|b| b == 0) => return Err("a NUL in the path".into()),
            c => components.push(c),
        }
    }
    if components.is_empty() {
        return Err("an empty path".into());
    }
    if path.len() > 4095 {
        return Err("a path over 4095 bytes".into());
    }
    Ok(components)
}

/// Whether a symlink at `components` with `target` stays inside the root, read lexically.
fn symlink_stays_inside(components: &[&str], target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth = components.len() as i64 - 1; // the link's directory
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Opens the directory `components` under `root`, one component at a time and never following
/// a symlink; with `create`, missing directories are made (0755). `Ok(None)`: a component is
/// missing and `create` is off.
pub fn open_dir_beneath(
    root: &OwnedFd,
    components: &[&str],
    create: bool,
    path: &str,
) -> Result<Option<OwnedFd>, ExtractError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut dir = root.try_clone().map_err(|e| io_error(path, e))?;
    for (i, component) in components.iter().enumerate() {
        let opened = match openat(dir.as_fd(), *component, flags, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(dir.as_fd(), *component, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_error(path, e)),
                }
                openat(dir.as_fd(), *component, flags, Mode::empty())
            }
            other => other,
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(refused(
                    path,
                    format!(
                        "{} is a symlink or not a directory; nothing is written through one",
                        components[..=i].join("/")
                    ),
                ));
            }
            Err(e) => return Err(io_error(path, e)),
        };
    }
    Ok(Some(dir))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name() -> String {
    format!(
        "{TEMP_PREFIX}{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn timespec(seconds: i64, nanos: u32) -> TimeSpec {
    TimeSpec::new(seconds, i64::from(nanos))
}

/// Writes the tar stream `input` under `root` (which must exist). See the module docs for
/// the rules.
pub fn extract(
    input: impl Read,
    root: &Path,
    options: &ExtractOptions,
) -> Result<ExtractSummary, ExtractError> {
    let root_path = root.display().to_string();
    let root_fd: OwnedFd = File::open(root)
        .map_err(|e| io_error(&root_path, e))?
        .into();
    let mut reader = TarReader::new(input, options.limits);
    let mut summary = ExtractSummary::default();
    while let Some(header) = reader.next_entry()? {
        let path = header.path.clone();
        let components = path_components(&path).map_err(|reason| refused(&path, reason))?;
        let (name, parents) = components.split_last().expect("at least one component");
        if name.starts_with(TEMP_PREFIX) {
            return Err(refused(&path, "a name banger keeps for temporary files"));
        }
        if header.delete {
            let Some(dir) = open_dir_beneath(&root_fd, parents, false, &path)? else {
                continue;
            };
            match unlinkat(dir.as_fd(), *name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {
                    summary.deleted += 1;
                    if options.list_paths {
                        summary.deletions.push(path);
                    }
                }
                Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => return Err(refused(&path, "a deletion of a directory")),
                Err(e) => return Err(io_error(&path, e)),
            }
            continue;
        }
        let dir = open_dir_beneath(&root_fd, parents, true, &path)?.expect("created");
        match header.kind {
            EntryKind::Dir => {
                match mkdirat(dir.as_fd(), *name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        let stat =
                            fstatat(dir.as_fd(), *name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                                .map_err(|e| io_error(&path, e))?;
                        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR
                        {
                            return Err(refused(&path, "a directory where a file or symlink is"));
                        }
                    }
                    Err(e) => return Err(io_error(&path, e)),
                }
                summary.dirs += 1;
            }
            EntryKind::File => {
                let temp = temp_name();
                let fd = openat(
                    dir.as_fd(),
                    temp.as_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_error(&path, e))?;
                let written = (|| -> Result<u64, ExtractError> {
                    let mut file = BufWriter::with_capacity(128 << 10, File::from(fd));
                    let bytes = reader.read_content(&mut file)?;
                    let file = file
                        .into_inner()
                        .map_err(|e| io_error(&path, e.into_error()))?;
                    fchmod(file.as_fd(), Mode::from_bits_truncate(header.mode & 0o777))
                        .map_err(|e| io_error(&path, e))?;
                    futimens(
                        file.as_fd(),
                        &TimeSpec::UTIME_OMIT,
                        &timespec(header.mtime_s, header.mtime_ns),
                    )
                    .map_err(|e| io_error(&path, e))?;
                    rename_into_place(&dir, &temp, name, &path)?;
                    Ok(bytes)
                })();
                match written {
                    Ok(bytes) => summary.bytes += bytes,
                    Err(e) => {
                        let _ = unlinkat(dir.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
                        return Err(e);
                    }
                }
                summary.files += 1;
                if options.list_paths {
                    summary.written.push(path);
                }
            }
            EntryKind::Symlink => {
                let target = header.link.clone().unwrap_or_default();
                if target.is_empty() || target.contains('\0') {
                    return Err(refused(&path, "a symlink without a target"));
                }
                if !options.allow_escaping_symlinks && !symlink_stays_inside(&components, &target) {
                    return Err(refused(
                        &path,
                        format!("a symlink to {target:?}, which points out of the checkout"),
                    ));
                }
                let temp = temp_name();
                symlinkat(target.as_str(), dir.as_fd(), temp.as_str())
                    .map_err(|e| io_error(&path, e))?;
                let placed = utimensat(
                    dir.as_fd(),
                    temp.as_str(),
                    &TimeSpec::UTIME_OMIT,
                    &timespec(header.mtime_s, header.mtime_ns),
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| io_error(&path, e))
                .and_then(|()| rename_into_place(&dir, &temp, name, &path));
                if let Err(e) = placed {
                    let _ = unlinkat(dir.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
                    return Err(e);
                }
                summary.symlinks += 1;
                if options.list_paths {
                    summary.written.push(path);
                }
            }
        }
    }
    Ok(summary)
}

fn rename_into_place(
    dir: &OwnedFd,
    temp: &str,
    name: &str,
    path: &str,
) -> Result<(), ExtractError> {
    match renameat(dir.as_fd(), temp, dir.as_fd(), name) {
        Ok(()) => Ok(()),
        Err(Errno::EISDIR) | Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => {
            Err(refused(path, "a directory is in the way (remove it first)"))
        }
        Err(e) => Err(io_error(path, e)),
    }
}

/// Lists the files and symlinks under `root` (not `.git`, not temporary files), sorted by
/// path. Directories are implied by their contents.
pub fn manifest(root: &Path) -> io::Result<TreeManifest> {
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TreeManifest::default()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(_) => {}
    }
    let mut entries = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                // Not UTF-8: banger's workspaces are UTF-8 paths; leave it alone.
                continue;
            };
            if name.starts_with(TEMP_PREFIX) || (prefix.is_empty() && name == GIT_DIR) {
                continue;
            }
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = entry.metadata()?; // lstat: read_dir entries are not followed
            let kind = if meta.file_type().is_symlink() {
                EntryKind::Symlink
            } else if meta.is_dir() {
                stack.push((entry.path(), path));
                continue;
            } else if meta.is_file() {
                EntryKind::File
            } else {
                continue; // sockets, FIFOs, devices: not workspace content
            };
            let link = match kind {
                EntryKind::Symlink => Some(
                    std::fs::read_link(entry.path())?
                        .to_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                _ => None,
            };
            entries.push(TreeEntry {
                path,
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
            });
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(TreeManifest {
        exists: true,
        entries,
    })
}

/// Writes `paths` under `root` (or, with `None`, every file and symlink of [`manifest`]) as a
/// tar stream to `out`. A listed path that is missing (or a directory) is sent as a deletion,
/// so the reader learns that it is gone. A listed path is checked like an extracted one and
/// never read through a symlink.
pub fn send(root: &Path, paths: Option<Vec<String>>, out: impl Write) -> io::Result<u64> {
    let paths = match paths {
        Some(paths) => paths,
        None => manifest(root)?
            .entries
            .into_iter()
            .map(|e| e.path)
            .collect(),
    };
    let root_fd: OwnedFd = File::open(root)?.into();
    let mut writer = TarWriter::new(BufWriter::with_capacity(256 << 10, out));
    for path in paths {
        let components = path_components(&path)
            .map_err(|reason| io::Error::other(format!("{path:?}: {reason}")))?;
        let (name, parents) = components.split_last().expect("at least one component");
        let dir = match open_dir_beneath(&root_fd, parents, false, &path) {
            Ok(Some(dir)) => dir,
            Ok(None) | Err(ExtractError::Refused { .. }) => {
                writer.append(&Header::deletion(path), &mut io::empty())?;
                continue;
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let stat = match fstatat(dir.as_fd(), *name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => {
                writer.append(&Header::deletion(path), &mut io::empty())?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let mut header = Header {
            path: path.clone(),
            kind: EntryKind::File,
            mode: stat.st_mode & 0o777,
            size: 0,
            mtime_s: stat.st_mtime,
            mtime_ns: stat.st_mtime_nsec as u32,
            link: None,
            delete: false,
        };
        if format == SFlag::S_IFLNK {
            let target = nix::fcntl::readlinkat(dir.as_fd(), *name)?;
            header.kind = EntryKind::Symlink;
            header.link = Some(target.into_string().map_err(|_| {
                io::Error::other(format!("{path:?}: a symlink target that is not UTF-8"))
            })?);
            writer.append(&header, &mut io::empty())?;
        } else if format == SFlag::S_IFREG {
            let fd = openat(
                dir.as_fd(),
                *name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let file = File::from(fd);
            // The size is the open file's, so a file replaced meanwhile stays consistent.
            let meta = file.metadata()?;
            header.size = meta.len();
            header.mtime_s = meta.mtime();
            header.mtime_ns = meta.mtime_nsec() as u32;
            writer.append(&header, &mut io::BufReader::with_capacity(128 << 10, file))?;
        } else {
            writer.append(&Header::deletion(path), &mut io::empty())?;
        }
    }
    let mut out = writer.finish()?;
    out.flush()?;
    Ok(0)
}

// ---- the tool modes ---------------------------------------------------------------------------

/// Which tool the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tool {
    TarReceive {
        dir: PathBuf,
    },
    TarSend {
        dir: PathBuf,
        paths_from_stdin: bool,
    },
    TreeManifest {
        dir: PathBuf,
    },
}

/// Parses the arguments after `--tar-receive`, `--tar-send` or `--tree-manifest`.
pub fn parse(flag: &str, rest: &mut dyn Iterator<Item = OsString>) -> Result<Tool, String> {
    let dir = rest
        .next()
        .ok_or_else(|| format!("{flag} needs a directory"))?;
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(format!(
            "{flag} needs an absolute directory, not {}",
            dir.display()
        ));
    }
    let mut paths_from_stdin = false;
    for arg in rest {
        match (flag, arg.as_bytes()) {
            ("--tar-send", b"--paths-from-stdin") => paths_from_stdin = true,
            _ => return Err(format!("unexpected argument {arg:?} after {flag}")),
        }
    }
    Ok(match flag {
        "--tar-receive" => Tool::TarReceive { dir },
        "--tar-send" => Tool::TarSend {
            dir,
            paths_from_stdin,
        },
        _ => Tool::TreeManifest { dir },
    })
}

/// Runs a tool: its result on stdout, errors on stderr.
pub fn run(tool: Tool) -> ExitCode {
    let result = match tool {
        Tool::TarReceive { dir } => std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
            .and_then(|()| {
                let options = ExtractOptions {
                    limits: Limits::default(),
                    allow_escaping_symlinks: true,
                    list_paths: false,
                };
                extract(io::stdin().lock(), &dir, &options).map_err(|e| e.to_string())
            })
            .and_then(|summary| print_json(&summary)),
        Tool::TreeManifest { dir } => manifest(&dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))
            .and_then(|manifest| print_json(&manifest)),
        Tool::TarSend {
            dir,
            paths_from_stdin,
        } => {
            let paths = if paths_from_stdin {
                let mut list = Vec::new();
                match io::stdin().lock().read_to_end(&mut list) {
                    Ok(_) => Some(
                        list.split(|&b| b == 0)
                            .filter(|p| !p.is_empty())
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect(),
                    ),
                    Err(e) => {
                        eprintln!("banger-agent: reading the path list: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                None
            };
            send(&dir, paths, io::stdout().lock())
                .map(drop)
                .map_err(|e| format!("cannot send {}: {e}", dir.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<(), String> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            writeln!(out)
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())
        })
}

#[cfg(test)]
#[path = "tool_tree_tests.rs"]
mod tests;
