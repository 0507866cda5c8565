//! `banger-agent --ssh-setup [USER]`: installs the host's ssh public keys for USER (default
//! root) and reports the guest's ssh host keys, so that the host can reach the guest's sshd
//! with a key it holds and a host key it knows instead of trusting it on first use.
//!
//! bangerd runs it at every boot through the agent's exec (`/proc/self/exe --ssh-setup root`,
//! the public keys on stdin) and prints nothing else: the result is one JSON document on
//! stdout, an [`SshSetupReport`]; a refusal is a line on stderr and exit status 1.
//!
//! What it does, in order:
//! 1. reads the authorized keys (OpenSSH public key lines) from stdin, at most
//!    [`MAX_KEYS_BYTES`], and checks each is one;
//! 2. finds USER's uid, gid and home in the guest's `/etc/passwd` (root without an entry is
//!    uid 0 with home `/root`);
//! 3. writes the keys into `~USER/.ssh/authorized_keys` inside a block between two marker
//!    lines, replacing the block a previous boot wrote and keeping every other byte of the
//!    file; the directory is 0700 and the file 0600, both owned by USER; nothing is written
//!    when the file already says the same;
//! 4. when the image has an sshd, generates the host keys it lacks (`ssh-keygen -A`);
//! 5. reads the host public keys `/etc/ssh/ssh_host_*_key.pub`.
//!
//! Invariants:
//! - A symbolic link at `~/.ssh` or at `~/.ssh/authorized_keys` is refused, never followed:
//!   the files are opened relative to the directory's descriptor with `O_NOFOLLOW`, so a link
//!   an image planted (to `/etc/shadow`, say) cannot make the agent, which runs as root,
//!   write or chown elsewhere.
//! - The file is replaced whole (written beside it, synced, renamed over it): a crash leaves
//!   the old keys or the new ones, never half of either.
//! - An image without sshd is not an error: the report says so and has no host keys.
//! - [`GUEST_ROOT_ENV`] moves "the guest's `/`" to a directory: only the fake firecracker,
//!   which runs the agent on the host, sets it, so that tests never touch the host's own
//!   `/root/.ssh` or `/etc/ssh`.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use serde::{Deserialize, Serialize};

/// Set (by the fake firecracker only) to the directory that stands for the guest's `/`.
pub const GUEST_ROOT_ENV: &str = "BANGER_GUEST_ROOT";

/// The most bytes of authorized keys the tool reads from stdin.
pub const MAX_KEYS_BYTES: usize = 64 * 1024;
/// The most bytes of an existing `authorized_keys` it reads (a user may keep many keys).
const MAX_AUTHORIZED_KEYS_BYTES: u64 = 1024 * 1024;
/// The most bytes of one host public key file (an RSA 16384-bit key is about 2.8 KiB).
const MAX_HOST_KEY_BYTES: u64 = 16 * 1024;

/// The first and last line of the block banger owns in `authorized_keys`.
pub const BLOCK_BEGIN: &str =
    "# >>> banger: keys installed at boot; banger rewrites this block, edit outside it >>>";
pub const BLOCK_END: &str = "# <<< banger <<<";

/// What `--ssh-setup` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSetupReport {
    pub user: String,
    /// The file the keys are in, as the guest names it.
    pub authorized_keys: String,
    /// How many keys the banger block holds.
    pub keys_installed: usize,
    /// Whether the file was rewritten (false when it already held these keys).
    pub changed: bool,
    /// Whether the image has an ssh server.
    pub sshd_installed: bool,
    /// The guest's host public keys (none without sshd), sorted by file name.
    pub host_keys: Vec<HostPublicKey>,
    /// Why missing host keys could not be generated, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_warning: Option<String>,
}

/// One host public key, as its `.pub` file has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPublicKey {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`…
    pub algorithm: String,
    /// The key blob in base64, as in the file.
    pub public_key: String,
}

/// The tool as a program: stdin, stdout, stderr and the exit status.
pub fn main(user: &str) -> ExitCode {
    let root = std::env::var_os(GUEST_ROOT_ENV)
        .filter(|root| !root.is_empty())
        .map_or_else(|| PathBuf::from("/"), PathBuf::from);
    let mut keys = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_KEYS_BYTES as u64 + 1)
        .read_to_end(&mut keys);
    let result = match read {
        Err(error) => Err(format!("cannot read the keys from stdin: {error}")),
        Ok(_) if keys.len() > MAX_KEYS_BYTES => Err(format!(
            "more than {MAX_KEYS_BYTES} bytes of keys on stdin; banger sends one key"
        )),
        Ok(_) => String::from_utf8(keys)
            .map_err(|_| "the keys on stdin are not UTF-8 text".to_owned())
            .and_then(|keys| setup(&root, user, &keys)),
    };
    match result {
        Ok(report) => {
            let json = serde_json::to_string(&report).unwrap_or_default();
            let mut stdout = std::io::stdout().lock();
            if writeln!(stdout, "{json}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("banger-agent --ssh-setup: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Does the whole setup against the guest filesystem rooted at `root`.
pub fn setup(root: &Path, user: &str, keys_text: &str) -> Result<SshSetupReport, String> {
    let keys = parse_authorized_keys(keys_text)?;
    let account = find_user(root, user)?;
    let (keys_path, changed) = install_keys(root, &account, &keys)?;
    let sshd_installed = ["usr/sbin/sshd", "usr/bin/sshd", "sbin/sshd"]
        .iter()
        .any(|path| root.join(path).is_file());
    let mut host_key_warning = None;
    let mut host_keys = Vec::new();
    if sshd_installed {
        host_key_warning = generate_host_keys(root).err();
        host_keys = read_host_keys(&root.join("etc/ssh"))?;
    }
    Ok(SshSetupReport {
        user: user.to_owned(),
        authorized_keys: keys_path,
        keys_installed: keys.len(),
        changed,
        sshd_installed,
        host_keys,
        host_key_warning,
    })
}

/// The public key lines in `text` (blank lines and comments skipped), each checked to be one
/// OpenSSH public key line: an algorithm name, base64, an optional comment; no options and
/// no control characters (a newline smuggled into a comment would add a line).
pub fn parse_authorized_keys(text: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.chars().any(char::is_control) {
            return Err("a key line holds a control character".into());
        }
        let mut fields = line.split_whitespace();
        let algorithm = fields.next().unwrap_or_default();
        let blob = fields.next().unwrap_or_default();
        if !is_key_algorithm(algorithm) || !is_base64(blob) {
            return Err(format!(
                "{:?} is not an OpenSSH public key line (ALGORITHM BASE64 [COMMENT])",
                truncate(line, 60)
            ));
        }
        keys.push(line.to_owned());
    }
    if keys.len() > 100 {
        return Err(format!("{} keys is too many (at most 100)", keys.len()));
    }
    Ok(keys)
}

/// An ssh public key algorithm name as OpenSSH writes them (`ssh-ed25519`,
/// `ecdsa-sha2-nistp256`, `sk-ssh-ed25519@openssh.com`…).
pub fn is_key_algorithm(name: &str) -> bool {
    (name.starts_with("ssh-") || name.starts_with("ecdsa-") || name.starts_with("sk-"))
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-@._".contains(&b))
}

fn is_base64(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 16 * 1024
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// A guest user, from its `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    /// The home directory as the guest names it (absolute).
    pub home: String,
}

/// `user`'s entry in `root/etc/passwd`; root without one is uid 0 with home `/root`.
pub fn find_user(root: &Path, user: &str) -> Result<Account, String> {
    if user.is_empty() || user.contains([':', '/', '\n']) {
        return Err(format!("{user:?} is not a user name"));
    }
    let passwd = match std::fs::read_to_string(root.join("etc/passwd")) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("cannot read /etc/passwd: {error}")),
    };
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 6 && fields[0] == user {
            let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) else {
                return Err(format!(
                    "the /etc/passwd entry of {user} has no valid uid and gid"
                ));
            };
            if !fields[5].starts_with('/') {
                return Err(format!(
                    "the home directory of {user}, {:?}, is not an absolute path",
                    fields[5]
                ));
            }
            return Ok(Account {
                uid,
                gid,
                home: fields[5].to_owned(),
            });
        }
    }
    if user == "root" {
        return Ok(Account {
            uid: 0,
            gid: 0,
            home: "/root".into(),
        });
    }
    Err(format!("no user {user} in the guest's /etc/passwd"))
}

/// `existing` (an `authorized_keys` file's text) with banger's block holding `keys`: the
/// block a previous run wrote is taken out (a begin marker without its end takes the rest of
/// the file with it) and the new one goes at the end; every other line stays as it was. No
/// keys: no block.
pub fn with_banger_block(existing: &str, keys: &[String]) -> String {
    let mut kept = String::with_capacity(existing.len());
    let mut in_block = false;
    for line in existing.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if !in_block && bare == BLOCK_BEGIN {
            in_block = true;
        } else if in_block {
            if bare == BLOCK_END {
                in_block = false;
            }
        } else {
            kept.push_str(line);
        }
    }
    if keys.is_empty() {
        return kept;
    }
    if !kept.is_empty() && !kept.ends_with('\n') {
        kept.push('\n');
    }
    kept.push_str(BLOCK_BEGIN);
    kept.push('\n');
    for key in keys {
        kept.push_str(key);
        kept.push('\n');
    }
    kept.push_str(BLOCK_END);
    kept.push('\n');
    kept
}

fn errno_text(what: &str, errno: Errno) -> String {
    format!("{what}: {}", std::io::Error::from(errno))
}

/// Writes `keys` into the account's `~/.ssh/authorized_keys` (see the module docs); returns
/// the file's guest path and whether it changed.
fn install_keys(root: &Path, account: &Account, keys: &[String]) -> Result<(String, bool), String> {
    let uid = Some(Uid::from_raw(account.uid));
    let gid = Some(Gid::from_raw(account.gid));
    let home_path = root.join(account.home.trim_start_matches('/'));
    let guest_ssh = format!("{}/.ssh", account.home.trim_end_matches('/'));
    let guest_keys = format!("{guest_ssh}/authorized_keys");
    if !home_path.is_dir() {
        std::fs::create_dir_all(&home_path)
            .map_err(|e| format!("cannot create the home directory {}: {e}", account.home))?;
        std::os::unix::fs::chown(&home_path, Some(account.uid), Some(account.gid))
            .map_err(|e| format!("cannot give {} to its user: {e}", account.home))?;
        std::fs::set_permissions(
            &home_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| format!("cannot set the mode of {}: {e}", account.home))?;
    }
    // The home directory itself may be a link (some systems keep homes elsewhere); what is in
    // it is looked at without following any.
    let home = openat(
        nix::fcntl::AT_FDCWD,
        &home_path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno_text(&format!("cannot open {}", account.home), e))?;
    match fstatat(home.as_fd(), ".ssh", AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => {
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFLNK {
                return Err(format!(
                    "refusing to install keys: {guest_ssh} is a symbolic link; banger only \
                     writes keys into a real directory"
                ));
            }
            if kind != SFlag::S_IFDIR {
                return Err(format!("{guest_ssh} exists and is not a directory"));
            }
        }
        Err(Errno::ENOENT) => mkdirat(home.as_fd(), ".ssh", Mode::from_bits_truncate(0o700))
            .map_err(|e| errno_text(&format!("cannot create {guest_ssh}"), e))?,
        Err(e) => return Err(errno_text(&format!("cannot look at {guest_ssh}"), e)),
    }
    let ssh = openat(
        home.as_fd(),
        ".ssh",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno_text(&format!("cannot open {guest_ssh}"), e))?;
    fchown(ssh.as_fd(), uid, gid)
        .map_err(|e| errno_text(&format!("cannot give {guest_ssh} to its user"), e))?;
    fchmod(ssh.as_fd(), Mode::from_bits_truncate(0o700))
        .map_err(|e| errno_text(&format!("cannot set the mode of {guest_ssh}"), e))?;

    let existing = match openat(
        ssh.as_fd(),
        "authorized_keys",
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => Some(fd),
        Err(Errno::ENOENT) => None,
        Err(Errno::ELOOP) => {
            return Err(format!(
                "refusing to install keys: {guest_keys} is a symbolic link; banger only writes \
                 keys into a regular file"
            ));
        }
        Err(e) => return Err(errno_text(&format!("cannot open {guest_keys}"), e)),
    };
    let old_text = match &existing {
        None => String::new(),
        Some(fd) => read_regular(fd, MAX_AUTHORIZED_KEYS_BYTES, &guest_keys)?,
    };
    let new_text = with_banger_block(&old_text, keys);
    if let Some(fd) = existing.as_ref().filter(|_| new_text == old_text) {
        fchown(fd.as_fd(), uid, gid)
            .map_err(|e| errno_text(&format!("cannot give {guest_keys} to its user"), e))?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o600))
            .map_err(|e| errno_text(&format!("cannot set the mode of {guest_keys}"), e))?;
        return Ok((guest_keys, false));
    }
    drop(existing);
    const TEMP: &str = "authorized_keys.banger-new";
    // A leftover of a run that died half-way: ours to remove (unlinkat removes a link itself,
    // never what it points at).
    match unlinkat(ssh.as_fd(), TEMP, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(errno_text(&format!("cannot remove {guest_ssh}/{TEMP}"), e)),
    }
    let temp = openat(
        ssh.as_fd(),
        TEMP,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| errno_text(&format!("cannot create {guest_ssh}/{TEMP}"), e))?;
    let written = (|| {
        fchown(temp.as_fd(), uid, gid)
            .map_err(|e| errno_text("cannot give the new file to its user", e))?;
        fchmod(temp.as_fd(), Mode::from_bits_truncate(0o600))
            .map_err(|e| errno_text("cannot set the new file's mode", e))?;
        let mut file = std::fs::File::from(temp);
        file.write_all(new_text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {guest_ssh}/{TEMP}: {e}"))?;
        renameat(ssh.as_fd(), TEMP, ssh.as_fd(), "authorized_keys")
            .map_err(|e| errno_text(&format!("cannot replace {guest_keys}"), e))
    })();
    if let Err(error) = written {
        let _ = unlinkat(ssh.as_fd(), TEMP, UnlinkatFlags::NoRemoveDir);
        return Err(error);
    }
    // The rename is durable once the directory is.
    let _ = nix::unistd::fsync(ssh.as_fd());
    Ok((guest_keys, true))
}

/// Reads a file opened without following links, which must be a regular file of at most
/// `max` bytes.
fn read_regular(fd: &OwnedFd, max: u64, what: &str) -> Result<String, String> {
    let stat = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| errno_text(what, e))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(format!("{what} is not a regular file"));
    }
    let file = std::fs::File::from(fd.try_clone().map_err(|e| format!("{what}: {e}"))?);
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    if text.len() as u64 > max {
        return Err(format!("{what} is larger than {max} bytes"));
    }
    Ok(text)
}

/// `ssh-keygen -A`: the host key types the image lacks, generated (with `-f ROOT` as the
/// prefix when the guest's root is not `/`).
fn generate_host_keys(root: &Path) -> Result<(), String> {
    let mut command = std::process::Command::new("ssh-keygen");
    command.arg("-A");
    if root != Path::new("/") {
        command.arg("-f").arg(root);
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen -A: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "ssh-keygen -A failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// The host public keys in `dir` (`ssh_host_*_key.pub`, regular files only), sorted by name;
/// a file that is not one key line is skipped.
pub fn read_host_keys(dir: &Path) -> Result<Vec<HostPublicKey>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("cannot list /etc/ssh: {error}")),
    };
    let mut names: Vec<std::ffi::OsString> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| is_host_key_file(name))
        .collect();
    names.sort();
    let mut keys = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_HOST_KEY_BYTES {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut fields = text.split_whitespace();
        let (Some(algorithm), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        if is_key_algorithm(algorithm) && is_base64(blob) {
            keys.push(HostPublicKey {
                algorithm: algorithm.to_owned(),
                public_key: blob.to_owned(),
            });
        }
    }
    Ok(keys)
}

fn is_host_key_file(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|name| name.starts_with("ssh_host_") && name.ends_with("_key.pub"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000 banger@host";

    fn keys() -> Vec<String> {
        vec![KEY.to_owned()]
    }

    #[test]
    fn the_block_replaces_its_old_self_and_keeps_every_other_byte() {
        let mine = "# my own\nssh-rsa AAAAB3mine me@laptop\n";
        let once = with_banger_block(mine, &keys());
        assert!(once.starts_with(mine));
        assert!(once.contains(KEY));
        assert_eq!(with_banger_block(&once, &keys()), once, "idempotent");
        let other = vec!["ssh-ed25519 AAAAother x".to_owned()];
        let replaced = with_banger_block(&once, &other);
        assert!(replaced.starts_with(mine) && !replaced.contains(KEY));
        assert_eq!(replaced.matches(BLOCK_BEGIN).count(), 1);
        assert_eq!(with_banger_block(&replaced, &[]), mine, "no keys, no block");
        // A file without a final newline gets one before the block, and nothing else.
        let bare = with_banger_block("ssh-rsa AAAA x", &keys());
        assert!(bare.starts_with("ssh-rsa AAAA x\n# >>> banger"));
        // Lines after the block stay after it... in front of the new block.
        let after = format!("{once}ssh-rsa AAAAlater later\n");
        let again = with_banger_block(&after, &keys());
        assert_eq!(
            again,
            format!("{mine}ssh-rsa AAAAlater later\n{}", &once[mine.len()..])
        );
    }

    #[test]
    fn key_lines_are_checked() {
        assert_eq!(
            parse_authorized_keys(&format!("\n# c\n{KEY}\n")).unwrap(),
            keys()
        );
        for bad in [
            "command=\"rm -rf /\" ssh-ed25519 AAAA x",
            "ssh-ed25519",
            "ssh-ed25519 not*base64",
            "hello world",
            "ssh-ed25519 AAAA a\u{1b}[2Jb",
        ] {
            assert!(parse_authorized_keys(bad).is_err(), "{bad:?}");
        }
    }

    fn guest_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        std::fs::write(
            dir.path().join("etc/passwd"),
            format!("root:x:{uid}:{gid}:root:/root:/bin/bash\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn keys_are_installed_once_with_the_right_modes() {
        let root = guest_root();
        let first = setup(root.path(), "root", KEY).unwrap();
        assert_eq!(first.authorized_keys, "/root/.ssh/authorized_keys");
        assert!(first.changed && first.keys_installed == 1);
        assert!(!first.sshd_installed && first.host_keys.is_empty());
        let file = root.path().join("root/.ssh/authorized_keys");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), nix::unistd::getuid().as_raw());
        let dir = std::fs::metadata(root.path().join("root/.ssh")).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(&file).unwrap();
        let again = setup(root.path(), "root", KEY).unwrap();
        assert!(!again.changed, "the same keys change nothing");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        // The user's own keys stay.
        std::fs::write(&file, format!("ssh-rsa AAAAmine me\n{text}")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let third = setup(root.path(), "root", KEY).unwrap();
        assert!(!third.changed);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "modes set right");
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .starts_with("ssh-rsa AAAAmine me\n")
        );
    }

    #[test]
    fn symlinks_at_ssh_or_authorized_keys_are_refused_and_not_followed() {
        let root = guest_root();
        let target = root.path().join("elsewhere");
        std::fs::write(&target, "precious\n").unwrap();
        std::fs::create_dir_all(root.path().join("root/.ssh")).unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("root/.ssh/authorized_keys")).unwrap();
        let error = setup(root.path(), "root", KEY).unwrap_err();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");

        let root = guest_root();
        let target_dir = root.path().join("other");
        std::fs::create_dir_all(&target_dir).unwrap();
        std::fs::create_dir_all(root.path().join("root")).unwrap();
        std::os::unix::fs::symlink(&target_dir, root.path().join("root/.ssh")).unwrap();
        let error = setup(root.path(), "root", KEY).unwrap_err();
        assert!(error.contains("/root/.ssh is a symbolic link"), "{error}");
        assert_eq!(std::fs::read_dir(&target_dir).unwrap().count(), 0);
    }

    #[test]
    fn host_keys_are_reported_when_there_is_an_sshd() {
        let root = guest_root();
        std::fs::create_dir_all(root.path().join("usr/sbin")).unwrap();
        std::fs::write(root.path().join("usr/sbin/sshd"), "").unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssh")).unwrap();
        // ssh-keygen -A (when the host has it) generates the types whose private key is
        // missing: this one is there.
        std::fs::write(root.path().join("etc/ssh/ssh_host_ed25519_key"), "private").unwrap();
        std::fs::write(
            root.path().join("etc/ssh/ssh_host_ed25519_key.pub"),
            "ssh-ed25519 AAAAC3Nza root@image\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/ssh/ssh_host_bogus_key.pub"),
            "garbage",
        )
        .unwrap();
        let report = setup(root.path(), "root", KEY).unwrap();
        assert!(report.sshd_installed);
        assert!(report.host_keys.contains(&HostPublicKey {
            algorithm: "ssh-ed25519".into(),
            public_key: "AAAAC3Nza".into()
        }));
        assert!(report.host_keys.iter().all(|k| k.algorithm != "garbage"));
    }

    #[test]
    fn unknown_users_are_refused() {
        let root = guest_root();
        let error = setup(root.path(), "nobody-here", KEY).unwrap_err();
        assert!(error.contains("no user nobody-here"), "{error}");
        assert!(setup(root.path(), "../etc", KEY).is_err());
    }
}
