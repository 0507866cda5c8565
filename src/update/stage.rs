//! Unpacking a downloaded release into a staging directory beside the installed programs,
//! and checking each new program before anything is swapped.
//!
//! The tarball's sha256 was checked, so its content is what the signed manifest names; it is
//! still unpacked as if hostile: only the four programs are taken (as regular files, at the
//! top or in one directory), anything that is not a regular file or directory is refused, and
//! nothing is written but `<staging>/<program>`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::UpdateError;
use super::manifest::Compression;

/// The programs a release carries, all of which it must carry.
pub const PROGRAMS: [&str; 4] = ["banger", "bangerd", "banger-helper", "banger-agent"];

/// Largest program accepted.
const MAX_PROGRAM_BYTES: u64 = 512 << 20;
/// How long a new program may take to print its version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Unpacks the programs of `tarball` into `staging` (which exists and is empty).
pub fn unpack(tarball: &Path, compression: Compression, staging: &Path) -> Result<(), UpdateError> {
    let file = fs::File::open(tarball).map_err(|e| UpdateError::io(tarball, e))?;
    let reader: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file))),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(file).map_err(|e| UpdateError::io(tarball, e))?,
        ),
    };
    let mut archive = tar::Archive::new(reader);
    let bad = |why: String| UpdateError::BadTarball(why);
    let mut found = BTreeSet::new();
    let mut top: Option<std::ffi::OsString> = None;
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("cannot read it as a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("a damaged entry: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("an entry with an unreadable name: {e}")))?
            .into_owned();
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_owned()),
                Component::CurDir => {}
                _ => {
                    return Err(bad(format!(
                        "the entry {} leaves the archive (absolute or with ..)",
                        path.display()
                    )));
                }
            }
        }
        let kind = entry.header().entry_type();
        if parts.is_empty() {
            continue;
        }
        if parts.len() > 2 {
            return Err(bad(format!(
                "the entry {} is nested deeper than one directory",
                path.display()
            )));
        }
        if parts.len() == 2 || kind.is_dir() {
            let dir = parts[0].clone();
            match &top {
                Some(existing) if *existing != dir => {
                    return Err(bad(format!(
                        "two top directories ({} and {})",
                        Path::new(existing).display(),
                        Path::new(&dir).display()
                    )));
                }
                _ => top = Some(dir),
            }
        }
        if kind.is_dir() {
            if parts.len() != 1 {
                return Err(bad(format!("the directory {} is nested", path.display())));
            }
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "the entry {} is a {:?}, not a regular file",
                path.display(),
                kind
            )));
        }
        let name = parts.last().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(program) = PROGRAMS.iter().find(|p| **p == name) else {
            // READMEs and licences travel with releases; they are not installed.
            continue;
        };
        if !found.insert(*program) {
            return Err(bad(format!("{program} is in it twice")));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_PROGRAM_BYTES {
            return Err(bad(format!(
                "{program} is {size} bytes (at most {MAX_PROGRAM_BYTES})"
            )));
        }
        let dest = staging.join(program);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&dest)
            .map_err(|e| UpdateError::io(&dest, e))?;
        let copied = io::copy(&mut (&mut entry).take(MAX_PROGRAM_BYTES + 1), &mut out)
            .map_err(|e| bad(format!("cannot unpack {program}: {e}")))?;
        if copied != size {
            return Err(bad(format!(
                "{program} is cut short ({copied} of {size} bytes)"
            )));
        }
        // Executable by everyone, writable by its owner only, whatever the umask took off.
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
            .map_err(|e| UpdateError::io(&dest, e))?;
        out.sync_all().map_err(|e| UpdateError::io(&dest, e))?;
    }
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| !found.contains(p))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("it lacks {}", missing.join(", "))));
    }
    Ok(())
}

/// Runs each staged program with `--version` and checks it says `<program> <version>`: a
/// program that does not run on this host, or is not the version the manifest promised, is
/// caught before it replaces anything.
pub fn check_versions(staging: &Path, version: &str) -> Result<(), UpdateError> {
    for program in PROGRAMS {
        let path = staging.join(program);
        let said = run_version(&path).map_err(|why| UpdateError::BrokenProgram {
            program: program.to_owned(),
            why,
        })?;
        let expected = format!("{program} {version}");
        if said.trim() != expected {
            return Err(UpdateError::BrokenProgram {
                program: program.to_owned(),
                why: format!(
                    "`{program} --version` says {:?}, not {expected:?}",
                    said.trim()
                ),
            });
        }
    }
    Ok(())
}

fn run_version(path: &Path) -> Result<String, String> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("it does not run here: {e}"))?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut said = String::new();
                if let Some(mut out) = child.stdout.take() {
                    // A version line is short; a program that floods is not one of ours.
                    let _ = (&mut out).take(4096).read_to_string(&mut said);
                }
                if !status.success() {
                    return Err(format!("`--version` exited with {status}"));
                }
                return Ok(said);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`--version` did not answer within {VERSION_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
