//! Filesystem primitives of banger's kernel and image stores: staging directories, copies that
//! clone when the filesystem can, checksums, atomic publication and its undo.
//!
//! Every directory an operation creates carries a marker file (`.banger-op`) holding the op
//! id that made it. Undo removes a published directory only when the marker names the same
//! operation, so rolling back can never delete something another operation (or a person) put
//! under the same name. Marked directories are made and removed through sibling names of the
//! operation's (`.NAME.creating-OP`, `.NAME.removing-OP`) and a rename, so no crash can leave
//! a directory in place without its marker (which no undo would then remove). Undo also refuses any path outside the store directory it belongs to,
//! whatever the log says: the log is trusted to say what was made, not to aim deletions.
//!
//! Everything here is blocking; callers run it on the blocking pool.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use banger_events::{Handle, OpId};
use sha2::{Digest, Sha256};

use super::StepError;
use crate::host::disk::{self, CopyMethod};

/// Name of the marker file that records which operation made a directory.
pub const MARKER: &str = ".banger-op";

/// Creates `dir` afresh (removing a leftover from an earlier attempt of the same operation)
/// with the marker of `op_id`. Atomically: the directory is made and marked under a sibling
/// name of this operation's ([`creating_name`]) and renamed into place, so `dir` never exists
/// without its marker — a crash in between leaves only the sibling, which the undo removes.
pub fn create_marked_dir(dir: &Path, op_id: OpId) -> Result<(), StepError> {
    remove_dir_if_present(dir)?;
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| StepError::io(format!("cannot create {}", parent.display()), e))?;
    }
    let creating = sibling(dir, "creating", op_id)?;
    remove_dir_if_present(&creating)?;
    fs::create_dir(&creating)
        .map_err(|e| StepError::io(format!("cannot create {}", creating.display()), e))?;
    fs::write(creating.join(MARKER), format!("{op_id}\n")).map_err(|e| {
        StepError::io(
            format!("cannot write the marker in {}", creating.display()),
            e,
        )
    })?;
    fs::rename(&creating, dir).map_err(|e| {
        StepError::io(
            format!("cannot move {} to {}", creating.display(), dir.display()),
            e,
        )
    })
}

/// `.NAME.WHAT-OP` beside `dir`: where operation `op_id` makes `dir` before it is in place,
/// or puts it while removing it. Derived from the operation, so an undo after a crash finds it.
fn sibling(dir: &Path, what: &str, op_id: OpId) -> Result<PathBuf, StepError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StepError::Other(format!("{} has no usable name", dir.display())))?;
    Ok(dir.with_file_name(format!(".{name}.{what}-{op_id}")))
}

/// The op id recorded in `dir`'s marker; `None` when there is no readable marker.
pub fn marker_of(dir: &Path) -> Option<OpId> {
    fs::read_to_string(dir.join(MARKER))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// [`crate::host::disk::clone_or_copy`] with its error as a step error.
pub fn clone_or_copy(src: &Path, dst: &Path) -> Result<CopyMethod, StepError> {
    disk::clone_or_copy(src, dst).map_err(StepError::from)
}

/// The sha256 (hex) and length of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), StepError> {
    let (sha, len, _) = sha256_and_find(path, b"")?;
    Ok((sha, len))
}

/// The sha256 (hex) and length of a file, and the bytes that follow the first occurrence of
/// `needle` (up to the next NUL or newline, at most 200 bytes), found in the same single
/// pass. Used to read the `Linux version …` banner out of a vmlinux while hashing it.
pub fn sha256_and_find(
    path: &Path,
    needle: &[u8],
) -> Result<(String, u64, Option<String>), StepError> {
    let what = || format!("cannot read {}", path.display());
    let mut file = File::open(path).map_err(|e| StepError::io(what(), e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut len = 0u64;
    // The tail of the previous chunk, so a needle that straddles two chunks is still found.
    let mut window: Vec<u8> = Vec::new();
    let mut found: Option<String> = None;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| StepError::io(what(), e))?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        hasher.update(chunk);
        len += read as u64;
        if found.is_none() && !needle.is_empty() {
            window.extend_from_slice(chunk);
            if let Some(at) = find(&window, needle) {
                let rest = &window[at + needle.len()..];
                if rest.len() >= 200 || read < buffer.len() {
                    found = Some(banner_text(rest));
                }
            }
            if found.is_none() {
                // Keep enough to complete a needle and its text across the boundary.
                let keep = needle.len() + 200;
                if window.len() > keep {
                    window.drain(..window.len() - keep);
                }
            } else {
                window = Vec::new();
            }
        }
    }
    if found.is_none()
        && !needle.is_empty()
        && let Some(at) = find(&window, needle)
    {
        found = Some(banner_text(&window[at + needle.len()..]));
    }
    let sha = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok((sha, len, found))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn banner_text(rest: &[u8]) -> String {
    let end = rest
        .iter()
        .take(200)
        .position(|b| *b == 0 || *b == b'\n')
        .unwrap_or(rest.len().min(200));
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// Publishes `staging` as `published` with one rename, idempotently: when `published`
/// already carries `op_id`'s marker (an earlier attempt got this far) it is done.
pub fn publish(staging: &Path, published: &Path, op_id: OpId) -> Result<(), StepError> {
    if marker_of(published) == Some(op_id) {
        return Ok(());
    }
    match fs::rename(staging, published) {
        Ok(()) => {}
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
            ) =>
        {
            return Err(StepError::Other(format!(
                "{} already exists on disk but banger has no record of it; move it away or pick another name",
                published.display()
            )));
        }
        Err(error) => {
            return Err(StepError::io(
                format!(
                    "cannot rename {} to {}",
                    staging.display(),
                    published.display()
                ),
                error,
            ));
        }
    }
    sync_parent(published)
}

/// Moves `published` aside to `aside` (the first half of a removal), idempotently: when it is
/// already aside, or gone altogether, there is nothing to do.
pub fn move_aside(published: &Path, aside: &Path) -> Result<(), StepError> {
    match fs::rename(published, aside) {
        Ok(()) => sync_parent(aside),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StepError::io(
            format!("cannot move {} to {}", published.display(), aside.display()),
            error,
        )),
    }
}

/// Undoes [`move_aside`]: puts `aside` back at `published` when it is still aside and
/// nothing took its place.
pub fn move_back(aside: &Path, published: &Path) -> Result<(), StepError> {
    if !aside.exists() || published.exists() {
        return Ok(());
    }
    fs::rename(aside, published).map_err(|e| {
        StepError::io(
            format!(
                "cannot move {} back to {}",
                aside.display(),
                published.display()
            ),
            e,
        )
    })?;
    sync_parent(published)
}

/// Removes operation `op_id`'s own staging directory `dir`, and the sibling
/// [`create_marked_dir`] makes it under: a crash between making that sibling and renaming it
/// into place leaves only the sibling, which no other undo would ever find.
pub fn remove_staging(dir: &Path, op_id: OpId) -> Result<(), StepError> {
    remove_dir_if_present(&sibling(dir, "creating", op_id)?)?;
    remove_dir_if_present(dir)
}

/// Removes a directory tree; a missing one is fine.
pub fn remove_dir_if_present(dir: &Path) -> Result<(), StepError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StepError::io(
            format!("cannot remove {}", dir.display()),
            error,
        )),
    }
}

/// Copies the tree `src` into `dst` (created): directories and regular files (cloned where the
/// filesystem can), nothing else — symlinks are skipped, never followed, and so is an
/// operation marker at the top (the copy gets its own). `dst` may exist (a staging dir).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), StepError> {
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from, to)) = stack.pop() {
        fs::create_dir_all(&to)
            .map_err(|e| StepError::io(format!("cannot create {}", to.display()), e))?;
        let entries = fs::read_dir(&from)
            .map_err(|e| StepError::io(format!("cannot read {}", from.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| StepError::io(format!("cannot read {}", from.display()), e))?;
            if from == src && entry.file_name() == MARKER {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|e| StepError::io(format!("cannot read {}", entry.path().display()), e))?;
            let target = to.join(entry.file_name());
            if kind.is_dir() {
                stack.push((entry.path(), target));
            } else if kind.is_file() {
                clone_or_copy(&entry.path(), &target)?;
            }
        }
    }
    Ok(())
}

/// Removes a file; a missing one is fine.
pub fn remove_file_if_present(path: &Path) -> Result<(), StepError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StepError::io(
            format!("cannot remove {}", path.display()),
            error,
        )),
    }
}

/// Removes `dir` when its marker says `op_id` made it; leaves anything else alone. Crash-safe
/// and idempotent: the directory is first renamed aside under a name of this operation's, and
/// only then deleted (a deletion interrupted half-way would otherwise leave a directory whose
/// marker is already gone, which no later undo would dare remove). Whatever this operation
/// left half-made or half-removed beside `dir` goes too.
pub fn remove_if_made_by(dir: &Path, op_id: OpId) -> Result<(), StepError> {
    remove_dir_if_present(&sibling(dir, "creating", op_id)?)?;
    let aside = sibling(dir, "removing", op_id)?;
    if dir.exists() {
        if marker_of(dir) != Some(op_id) {
            tracing::warn!(dir = %dir.display(), %op_id, "not removing a directory this operation did not make");
        } else {
            fs::rename(dir, &aside).map_err(|e| {
                StepError::io(
                    format!("cannot move {} aside to remove it", dir.display()),
                    e,
                )
            })?;
        }
    }
    remove_dir_if_present(&aside)
}

/// The directories among `handles` that lie directly in `store`. Anything else in a handle
/// list is refused with an error: an undo only ever acts inside its own store.
pub fn dirs_in_store(handles: &[Handle], store: &Path) -> Result<Vec<PathBuf>, StepError> {
    let mut dirs = Vec::new();
    for handle in handles {
        match handle {
            Handle::Directory { path } => {
                let path = PathBuf::from(path);
                let inside = path.parent() == Some(store)
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n != "." && n != "..");
                if !inside {
                    return Err(StepError::Other(format!(
                        "refusing to undo {}: it is not a directory of {}",
                        path.display(),
                        store.display()
                    )));
                }
                dirs.push(path);
            }
            other => {
                return Err(StepError::Other(format!(
                    "unexpected handle {other} for a store step"
                )));
            }
        }
    }
    Ok(dirs)
}

/// Syncs the directory holding `path`, so that a rename into it survives a power cut.
fn sync_parent(path: &Path) -> Result<(), StepError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| StepError::io(format!("cannot sync {}", parent.display()), e))
}

/// A handle for a directory path.
pub fn dir_handle(path: &Path) -> Handle {
    Handle::Directory {
        path: path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut file = File::create(&src).unwrap();
        file.write_all(b"head").unwrap();
        file.seek(SeekFrom::Start(64 << 20)).unwrap();
        file.write_all(b"tail").unwrap();
        drop(file);
        let dst = dir.path().join("dst");
        clone_or_copy(&src, &dst).unwrap();
        let copied = fs::read(&dst).unwrap();
        assert_eq!(copied, fs::read(&src).unwrap());
        use std::os::unix::fs::MetadataExt;
        let blocks = fs::metadata(&dst).unwrap().blocks();
        assert!(
            blocks * 512 < 8 << 20,
            "the hole was filled: {blocks} blocks"
        );
    }

    #[test]
    fn hash_and_banner_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        let mut bytes = vec![0u8; (1 << 20) - 5];
        bytes.extend_from_slice(b"Linux version 6.1.0-test (me@host) #1\0more");
        fs::write(&path, &bytes).unwrap();
        let (sha, len, banner) = sha256_and_find(&path, b"Linux version ").unwrap();
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(sha.len(), 64);
        assert_eq!(banner.as_deref(), Some("6.1.0-test (me@host) #1"));
        let (empty_sha, _) = sha256_file(&dir.path().join("vmlinux")).unwrap();
        assert_eq!(empty_sha, sha);
    }

    #[test]
    fn publish_is_idempotent_and_undo_respects_markers() {
        let dir = tempfile::tempdir().unwrap();
        let (staging, published) = (dir.path().join(".staging-1"), dir.path().join("k"));
        create_marked_dir(&staging, OpId(1)).unwrap();
        publish(&staging, &published, OpId(1)).unwrap();
        publish(&staging, &published, OpId(1)).unwrap();
        assert_eq!(marker_of(&published), Some(OpId(1)));
        remove_if_made_by(&published, OpId(2)).unwrap();
        assert!(
            published.exists(),
            "another operation's directory is left alone"
        );
        remove_if_made_by(&published, OpId(1)).unwrap();
        assert!(!published.exists());
        remove_if_made_by(&published, OpId(1)).unwrap();
    }

    /// A crash can stop a creation or a removal at any point; whatever it leaves, the next
    /// undo of the same operation finishes the removal, and never touches another's.
    #[test]
    fn creation_and_removal_leave_nothing_an_undo_cannot_finish() {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().join("vm1");
        let op = OpId(0x5);
        let names = || {
            let mut names: Vec<String> = fs::read_dir(store.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };

        // A creation that finished: only the marked directory, nothing beside it.
        create_marked_dir(&dir, op).unwrap();
        assert_eq!(names(), ["vm1"]);
        assert_eq!(marker_of(&dir), Some(op));

        // Crash in the middle of a removal: renamed aside, half deleted.
        let aside = sibling(&dir, "removing", op).unwrap();
        fs::write(dir.join("root.ext4"), b"disk").unwrap();
        fs::rename(&dir, &aside).unwrap();
        fs::remove_file(aside.join(MARKER)).unwrap();
        remove_if_made_by(&dir, op).unwrap();
        assert!(names().is_empty(), "{:?}", names());

        // Crash in the middle of a creation: made and marked, not yet in place.
        let creating = sibling(&dir, "creating", op).unwrap();
        fs::create_dir(&creating).unwrap();
        fs::write(creating.join(MARKER), format!("{op}\n")).unwrap();
        remove_if_made_by(&dir, op).unwrap();
        assert!(names().is_empty(), "{:?}", names());

        // Another operation's leftovers and directory are not this undo's business.
        create_marked_dir(&dir, OpId(0x6)).unwrap();
        fs::create_dir(sibling(&dir, "creating", OpId(0x6)).unwrap()).unwrap();
        remove_if_made_by(&dir, op).unwrap();
        remove_if_made_by(&dir, op).unwrap();
        assert_eq!(names().len(), 2, "{:?}", names());
        assert_eq!(marker_of(&dir), Some(OpId(0x6)));
    }

    /// A staging directory is the operation's own, so its undo removes it unmarked — and must
    /// also remove the sibling a crash mid-creation leaves (the crash storm found one left).
    #[test]
    fn a_staging_directory_crashed_mid_creation_is_removed_by_its_undo() {
        let store = tempfile::tempdir().unwrap();
        let op = OpId(0x7);
        let staging = store.path().join(format!(".staging-{op}"));
        let creating = sibling(&staging, "creating", op).unwrap();
        fs::create_dir(&creating).unwrap();
        fs::write(creating.join(MARKER), format!("{op}\n")).unwrap();
        remove_staging(&staging, op).unwrap();
        assert_eq!(fs::read_dir(store.path()).unwrap().count(), 0);

        create_marked_dir(&staging, op).unwrap();
        fs::write(staging.join("rootfs.ext4"), b"half a disk").unwrap();
        remove_staging(&staging, op).unwrap();
        remove_staging(&staging, op).unwrap();
        assert_eq!(fs::read_dir(store.path()).unwrap().count(), 0);
    }

    #[test]
    fn undo_refuses_paths_outside_the_store() {
        let store = Path::new("/state/kernels");
        let ok = dirs_in_store(&[dir_handle(&store.join(".staging-1"))], store).unwrap();
        assert_eq!(ok, vec![store.join(".staging-1")]);
        for bad in ["/", "/state", "/state/kernels/../x", "/elsewhere/kernels/x"] {
            let handle = Handle::Directory { path: bad.into() };
            assert!(dirs_in_store(&[handle], store).is_err(), "{bad}");
        }
    }
}
