//! Swapping the installed programs for the staged ones, and back.
//!
//! Each program is replaced by `rename(2)` of its staged file over the installed name, so at
//! every moment each name holds a whole program (old or new): a process starting one never
//! sees half a file, and a running one keeps its old inode. Before the swap each installed
//! program is hard-linked into the work directory, so putting the old set back is the same
//! renames in the other direction. All of it happens inside the install directory (the work
//! directory is `<install dir>/.banger-update-<pid>`), so every rename stays on one
//! filesystem.

use std::fs;
use std::path::{Path, PathBuf};

use super::UpdateError;
use super::stage::PROGRAMS;

/// The programs in the order they are swapped: the CLI that runs the update last.
const SWAP_ORDER: [&str; 4] = ["banger-agent", "banger-helper", "bangerd", "banger"];

/// An update's scratch space inside the install directory.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    /// Makes `<install_dir>/.banger-update-<pid>` (removing what a killed update left there),
    /// with `new/` for the staged programs and `previous/` for the installed ones.
    pub fn create(install_dir: &Path) -> Result<WorkDir, UpdateError> {
        remove_abandoned(install_dir);
        let path = install_dir.join(format!(".banger-update-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        let made = fs::create_dir(&path)
            .and_then(|()| fs::create_dir(path.join("new")))
            .and_then(|()| fs::create_dir(path.join("previous")));
        if let Err(error) = made {
            let _ = fs::remove_dir_all(&path);
            return Err(if error.kind() == std::io::ErrorKind::PermissionDenied {
                UpdateError::NotWritable {
                    dir: install_dir.to_owned(),
                }
            } else {
                UpdateError::io(&path, error)
            });
        }
        Ok(WorkDir { path })
    }

    pub fn staging(&self) -> PathBuf {
        self.path.join("new")
    }

    fn previous(&self) -> PathBuf {
        self.path.join("previous")
    }

    /// Removes the work directory and everything in it.
    pub fn remove(self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Work directories of updates whose process is gone.
fn remove_abandoned(install_dir: &Path) {
    let Ok(entries) = fs::read_dir(install_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".banger-update-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() || pid == std::process::id() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The programs swapped in, and how to put the old ones back.
pub struct Swapped {
    install_dir: PathBuf,
    previous: PathBuf,
    /// Each swapped program, and whether an older one was installed under its name.
    done: Vec<(&'static str, bool)>,
}

/// Puts the staged programs in place of the installed ones. On an error the ones already
/// swapped are put back before it returns.
pub fn swap(install_dir: &Path, work: &WorkDir) -> Result<Swapped, UpdateError> {
    let mut swapped = Swapped {
        install_dir: install_dir.to_owned(),
        previous: work.previous(),
        done: Vec::new(),
    };
    debug_assert!(SWAP_ORDER.iter().all(|p| PROGRAMS.contains(p)));
    for program in SWAP_ORDER {
        let installed = install_dir.join(program);
        let had_old = match fs::hard_link(&installed, swapped.previous.join(program)) {
            Ok(()) => true,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                let failure = UpdateError::io(&installed, error);
                return Err(swapped.restore_after(failure));
            }
        };
        if let Err(error) = fs::rename(work.staging().join(program), &installed) {
            let failure = UpdateError::io(&installed, error);
            return Err(swapped.restore_after(failure));
        }
        swapped.done.push((program, had_old));
    }
    sync_dir(install_dir);
    Ok(swapped)
}

impl Swapped {
    /// The programs now installed from the release.
    pub fn programs(&self) -> Vec<&'static str> {
        self.done.iter().map(|(p, _)| *p).collect()
    }

    /// Puts the previous programs back (and removes those that were new).
    pub fn restore(&mut self) -> Result<(), UpdateError> {
        let mut first_error = None;
        while let Some((program, had_old)) = self.done.pop() {
            let installed = self.install_dir.join(program);
            let result = if had_old {
                fs::rename(self.previous.join(program), &installed)
            } else {
                fs::remove_file(&installed)
            };
            if let Err(error) = result {
                first_error.get_or_insert(UpdateError::io(&installed, error));
            }
        }
        sync_dir(&self.install_dir);
        first_error.map_or(Ok(()), Err)
    }

    fn restore_after(&mut self, failure: UpdateError) -> UpdateError {
        match self.restore() {
            Ok(()) => failure,
            Err(restore) => UpdateError::RestoreFailed {
                why: failure.to_string(),
                restore: restore.to_string(),
            },
        }
    }
}

/// Makes the renames durable (best effort: a crash right after still leaves whole programs).
fn sync_dir(dir: &Path) {
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(dir: &Path, content: &str) {
        for program in PROGRAMS {
            fs::write(dir.join(program), format!("{program} {content}")).unwrap();
        }
    }

    fn contents(dir: &Path) -> Vec<String> {
        PROGRAMS
            .iter()
            .map(|p| fs::read_to_string(dir.join(p)).unwrap_or_else(|_| "-".into()))
            .collect()
    }

    #[test]
    fn a_swap_installs_the_staged_set_and_a_restore_brings_the_old_one_back() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), "old");
        fs::remove_file(dir.path().join("banger-agent")).unwrap();
        let work = WorkDir::create(dir.path()).unwrap();
        install(&work.staging(), "new");
        let mut swapped = swap(dir.path(), &work).unwrap();
        assert!(contents(dir.path()).iter().all(|c| c.ends_with(" new")));
        swapped.restore().unwrap();
        assert_eq!(
            contents(dir.path()),
            ["banger old", "bangerd old", "banger-helper old", "-"]
        );
        work.remove();
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }

    #[test]
    fn a_swap_that_fails_half_way_puts_back_what_it_had_swapped() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), "old");
        let work = WorkDir::create(dir.path()).unwrap();
        install(&work.staging(), "new");
        // bangerd is missing from the staging: the swap fails after two programs.
        fs::remove_file(work.staging().join("bangerd")).unwrap();
        assert!(swap(dir.path(), &work).is_err());
        assert!(
            contents(dir.path()).iter().all(|c| c.ends_with(" old")),
            "{:?}",
            contents(dir.path())
        );
    }

    #[test]
    fn work_dirs_of_dead_updates_are_cleared_and_a_read_only_dir_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".banger-update-4000000")).unwrap();
        let work = WorkDir::create(dir.path()).unwrap();
        assert!(!dir.path().join(".banger-update-4000000").exists());
        work.remove();
    }
}
