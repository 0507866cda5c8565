//! banger's ssh files on the host: its key pair, its known_hosts, its ssh client config, and
//! the one `Include` line it adds to `~/.ssh/config`.
//!
//! ```text
//!  <config>/ssh/               0700
//!    id_ed25519                0600  banger's private key (OpenSSH format), made on first need
//!    id_ed25519.pub                  its public half (rewritten from the private key if lost)
//!    known_hosts                     `NAME.vm ALGORITHM KEY` per VM with a recorded host key;
//!                                    bangerd rewrites it from the projection
//!    config                          the `Host *.vm` entry `banger ssh-config --write` writes
//! ```
//!
//! Invariants:
//! - A path here always names a whole file: every file is written beside its final name and
//!   renamed over it (the private key is linked into place, so that two processes generating
//!   it at once cannot replace each other's: the first one wins, the other reads it).
//! - The private key is never readable by anyone but its owner, from its creation on.
//! - A host key from a guest is only written into known_hosts once it decoded as an ssh
//!   public key of the algorithm it claims: nothing a guest says can add a line.
//! - The user's `~/.ssh/config` keeps every byte it had; banger only puts two lines (a comment
//!   and an `Include`) at its top, once.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

use crate::paths::Layout;

/// The key type banger generates.
const KEY_ALGORITHM: &str = "ssh-ed25519";

/// Host key algorithms banger records, most preferred first.
const HOST_KEY_PREFERENCE: [&str; 5] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// The largest host key blob accepted (an RSA 16384-bit key is about 2 KiB).
const MAX_HOST_KEY_BLOB: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an ed25519 private key banger can read ({why}); move it away and banger makes a new one", path.display())]
    BadPrivateKey { path: PathBuf, why: String },
    #[error("cannot generate a key: {0}")]
    Random(String),
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> SshError + 'p {
    move |source| SshError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where banger's ssh files live for `layout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshFiles {
    pub dir: PathBuf,
}

impl SshFiles {
    pub fn new(layout: &Layout) -> SshFiles {
        SshFiles {
            dir: layout.ssh_dir(),
        }
    }

    pub fn private_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn public_key(&self) -> PathBuf {
        self.dir.join("id_ed25519.pub")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Makes the directory (0700) if it is missing.
    fn ensure_dir(&self) -> Result<(), SshError> {
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", &self.dir))
    }

    /// banger's public key line (`ssh-ed25519 AAAA… banger`), generating the key pair when
    /// there is none.
    pub fn ensure_key_pair(&self) -> Result<String, SshError> {
        self.ensure_dir()?;
        let private = self.private_key();
        if !private.exists() {
            let seed = random_seed()?;
            let text = openssh_private_key(&seed, "banger")?;
            let temp = self
                .dir
                .join(format!(".id_ed25519.new-{}", std::process::id()));
            let _ = std::fs::remove_file(&temp);
            let written = (|| {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)?;
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })();
            let placed = written.and_then(|()| std::fs::hard_link(&temp, &private));
            let _ = std::fs::remove_file(&temp);
            match placed {
                Ok(()) => sync_dir(&self.dir),
                // Another process made one meanwhile: it stands.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(io("write", &private)(error)),
            }
        }
        let text = std::fs::read_to_string(&private).map_err(io("read", &private))?;
        let blob = public_blob_of_private_key(&text).map_err(|why| SshError::BadPrivateKey {
            path: private.clone(),
            why,
        })?;
        let line = format!("{KEY_ALGORITHM} {} banger", STANDARD.encode(&blob));
        let public = self.public_key();
        if std::fs::read_to_string(&public).ok().as_deref() != Some(&format!("{line}\n")) {
            write_atomically(&public, format!("{line}\n").as_bytes(), 0o644)?;
        }
        Ok(line)
    }

    /// Rewrites known_hosts to hold exactly `entries` (VM name, algorithm, key), unless it
    /// already does. Returns whether it wrote.
    pub fn write_known_hosts(&self, entries: &[KnownHost]) -> Result<bool, SshError> {
        let text = known_hosts_text(entries);
        let path = self.known_hosts();
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        self.ensure_dir()?;
        write_atomically(&path, text.as_bytes(), 0o644)?;
        Ok(true)
    }
}

/// One line of banger's known_hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KnownHost {
    pub vm_name: String,
    pub algorithm: String,
    pub public_key: String,
}

/// The host alias ssh knows a VM by.
pub fn host_alias(vm_name: &str) -> String {
    format!("{vm_name}.vm")
}

/// known_hosts text for `entries`, sorted by name, one line each; entries whose name, type
/// or key could break the line format are left out (they never pass [`check_host_key`]).
pub fn known_hosts_text(entries: &[KnownHost]) -> String {
    let mut sorted: Vec<&KnownHost> = entries
        .iter()
        .filter(|e| {
            crate::api::VmName::parse(&e.vm_name).is_ok()
                && check_host_key(&e.algorithm, &e.public_key).is_ok()
        })
        .collect();
    sorted.sort();
    let mut text = String::from(
        "# banger's known hosts: written by bangerd from the host keys it recorded; edits are lost\n",
    );
    for entry in sorted {
        text.push_str(&format!(
            "{} {} {}\n",
            host_alias(&entry.vm_name),
            entry.algorithm,
            entry.public_key
        ));
    }
    text
}

/// Checks that `public_key` (base64) is an ssh public key of type `algorithm` that banger
/// records, and returns its SHA-256 fingerprint (`SHA256:…`, as `ssh-keygen -l` prints).
pub fn check_host_key(algorithm: &str, public_key: &str) -> Result<String, String> {
    if !HOST_KEY_PREFERENCE.contains(&algorithm) {
        return Err(format!(
            "{algorithm:?} is not a host key type banger records"
        ));
    }
    if public_key.len() > MAX_HOST_KEY_BLOB * 2 {
        return Err("the host key is too long".into());
    }
    let blob = STANDARD
        .decode(public_key)
        .map_err(|e| format!("the host key is not base64: {e}"))?;
    if blob.len() > MAX_HOST_KEY_BLOB {
        return Err("the host key is too long".into());
    }
    let mut reader = WireReader(&blob);
    let named = reader
        .string()
        .map_err(|_| "the host key blob is cut short".to_owned())?;
    if named != algorithm.as_bytes() {
        return Err(format!(
            "the host key blob is of type {:?}, not {algorithm}",
            String::from_utf8_lossy(named)
        ));
    }
    if algorithm == "ssh-ed25519" {
        let key = reader
            .string()
            .map_err(|_| "the ed25519 key is cut short".to_owned())?;
        if key.len() != 32 || !reader.0.is_empty() {
            return Err("the ed25519 host key is not 32 bytes".into());
        }
    }
    Ok(fingerprint(&blob))
}

/// The host key to record out of what a guest presents: the most preferred type that checks.
pub fn choose_host_key(
    keys: &[crate::agent::tool_ssh::HostPublicKey],
) -> Option<(&crate::agent::tool_ssh::HostPublicKey, String)> {
    HOST_KEY_PREFERENCE.iter().find_map(|algorithm| {
        keys.iter()
            .filter(|key| key.algorithm == *algorithm)
            .find_map(|key| {
                check_host_key(&key.algorithm, &key.public_key)
                    .ok()
                    .map(|fp| (key, fp))
            })
    })
}

/// `SHA256:` and the unpadded base64 of the SHA-256 of a public key blob.
pub fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob)))
}

/// Reads the ssh wire format's length-prefixed strings.
struct WireReader<'a>(&'a [u8]);

impl<'a> WireReader<'a> {
    fn u32(&mut self) -> Result<u32, ()> {
        let (head, rest) = self.0.split_first_chunk::<4>().ok_or(())?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Result<&'a [u8], ()> {
        let len = self.u32()? as usize;
        if len > self.0.len() {
            return Err(());
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }
}

fn put_string(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn random_seed() -> Result<[u8; 32], SshError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SshError::Random(e.to_string()))?;
    Ok(seed)
}

/// The ssh wire blob of the ed25519 public key of `seed`.
fn ed25519_public_blob(seed: &[u8; 32]) -> Result<Vec<u8>, SshError> {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|e| SshError::Random(format!("ed25519 from a seed: {e}")))?;
    let public = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    let mut blob = Vec::new();
    put_string(&mut blob, KEY_ALGORITHM.as_bytes());
    put_string(&mut blob, &public);
    Ok(blob)
}

const OPENSSH_MAGIC: &[u8] = b"openssh-key-v1\0";
const PEM_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PEM_END: &str = "-----END OPENSSH PRIVATE KEY-----";

/// An unencrypted ed25519 private key in OpenSSH's own format (PROTOCOL.key), what
/// `ssh-keygen -t ed25519 -N ''` writes.
fn openssh_private_key(seed: &[u8; 32], comment: &str) -> Result<String, SshError> {
    let blob = ed25519_public_blob(seed)?;
    let public = &blob[blob.len() - 32..];
    let mut check = [0u8; 4];
    getrandom::fill(&mut check).map_err(|e| SshError::Random(e.to_string()))?;
    let mut private = Vec::new();
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, KEY_ALGORITHM.as_bytes());
    put_string(&mut private, public);
    let mut secret = seed.to_vec();
    secret.extend_from_slice(public);
    put_string(&mut private, &secret);
    put_string(&mut private, comment.as_bytes());
    // Padded to the cipher's block size ("none": 8) with 1, 2, 3…
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut body = OPENSSH_MAGIC.to_vec();
    put_string(&mut body, b"none");
    put_string(&mut body, b"none");
    put_string(&mut body, b"");
    body.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut body, &blob);
    put_string(&mut body, &private);
    let encoded = STANDARD.encode(&body);
    let mut text = format!("{PEM_BEGIN}\n");
    for line in encoded.as_bytes().chunks(70) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(PEM_END);
    text.push('\n');
    Ok(text)
}

/// The public key blob an OpenSSH private key file holds (its unencrypted header), checked to
/// be one ed25519 key.
fn public_blob_of_private_key(text: &str) -> Result<Vec<u8>, String> {
    let inner = text
        .trim()
        .strip_prefix(PEM_BEGIN)
        .and_then(|rest| rest.strip_suffix(PEM_END))
        .ok_or("not an OpenSSH private key file")?;
    let encoded: String = inner.split_whitespace().collect();
    let body = STANDARD
        .decode(encoded)
        .map_err(|e| format!("not base64: {e}"))?;
    let rest = body
        .strip_prefix(OPENSSH_MAGIC)
        .ok_or("not in the openssh-key-v1 format")?;
    let mut reader = WireReader(rest);
    let cut = |_| "cut short".to_owned();
    let _cipher = reader.string().map_err(cut)?;
    let _kdf = reader.string().map_err(cut)?;
    let _kdf_options = reader.string().map_err(cut)?;
    if reader.u32().map_err(cut)? != 1 {
        return Err("it holds more than one key".into());
    }
    let blob = reader.string().map_err(cut)?.to_vec();
    let mut key = WireReader(&blob);
    if key.string().map_err(cut)? != KEY_ALGORITHM.as_bytes()
        || key.string().map_err(cut)?.len() != 32
    {
        return Err("its key is not an ed25519 key".into());
    }
    Ok(blob)
}

/// Writes `data` beside `path`, syncs it and renames it over `path`.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), SshError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io("write", path)(error));
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
}

// ---- the ssh client config ----------------------------------------------------------------------

/// The options every banger ssh connection uses, for a VM called `%n`-style `host`: key,
/// known_hosts, strict checking, and the proxy through the guest agent.
pub struct ClientOptions {
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    /// The `ProxyCommand`, whole.
    pub proxy_command: String,
}

impl ClientOptions {
    /// The options for `banger_exe` on `layout` (a rooted layout's `BANGER_ROOT` goes into
    /// the proxy command, so that it reaches the same bangerd from any shell); `name` is what
    /// the proxy is told (a VM name, or `%n` in a config file).
    pub fn new(layout: &Layout, banger_exe: &Path, name: &str) -> ClientOptions {
        let files = SshFiles::new(layout);
        let exe = quote(&banger_exe.to_string_lossy());
        let proxy_command = match layout.mode {
            crate::paths::Mode::Rooted => format!(
                "env BANGER_ROOT={} {exe} vm ssh-proxy {name}",
                quote(&layout_root(layout).to_string_lossy())
            ),
            _ => format!("{exe} vm ssh-proxy {name}"),
        };
        ClientOptions {
            identity: files.private_key(),
            known_hosts: files.known_hosts(),
            proxy_command,
        }
    }

    /// The `-o` options of an ssh command line (each `KEY=VALUE`).
    pub fn ssh_args(&self, host_alias: &str) -> Vec<String> {
        vec![
            "-i".into(),
            self.identity.to_string_lossy().into_owned(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.to_string_lossy()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "CheckHostIP=no".into(),
            "-o".into(),
            format!("HostKeyAlias={host_alias}"),
            "-o".into(),
            format!("ProxyCommand={}", self.proxy_command),
        ]
    }

    /// The `Host *.vm` entry of `banger ssh-config`.
    pub fn config_entry(&self) -> String {
        format!(
            "# Written by `banger ssh-config`: every banger VM as NAME.vm, reached through its\n\
             # guest agent (no port open to any network), its host key known to banger.\n\
             Host *.vm\n\
             \x20   User root\n\
             \x20   IdentityFile {}\n\
             \x20   IdentitiesOnly yes\n\
             \x20   UserKnownHostsFile {}\n\
             \x20   StrictHostKeyChecking yes\n\
             \x20   CheckHostIP no\n\
             \x20   ProxyCommand {}\n",
            quote(&self.identity.to_string_lossy()),
            quote(&self.known_hosts.to_string_lossy()),
            self.proxy_command
        )
    }
}

/// The directory `BANGER_ROOT` named for a rooted layout (the parent of its state directory).
fn layout_root(layout: &Layout) -> PathBuf {
    layout
        .state_dir
        .parent()
        .map_or_else(|| layout.state_dir.clone(), Path::to_path_buf)
}

/// A path as ssh's config and a shell read it: bare when it is plain, else double-quoted.
fn quote(text: &str) -> String {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%".contains(&b))
    {
        text.to_owned()
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The comment line banger puts above its `Include` in `~/.ssh/config`.
pub const INCLUDE_MARK: &str =
    "# Added by `banger ssh-config --write`: lets `ssh NAME.vm` reach banger's VMs";

/// What `banger ssh-config --write` changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWritten {
    pub entry_file: PathBuf,
    pub entry_changed: bool,
    pub user_config: PathBuf,
    pub include_added: bool,
}

/// Writes the entry into banger's own config file and makes `~/.ssh/config` (under `home`)
/// include it: one marked `Include` line at its top, added once; the rest of the file is
/// kept byte for byte (a file that is a symbolic link is written through the link).
pub fn write_config(files: &SshFiles, entry: &str, home: &Path) -> Result<ConfigWritten, SshError> {
    files.ensure_dir()?;
    let entry_file = files.config();
    let entry_changed = std::fs::read_to_string(&entry_file).ok().as_deref() != Some(entry);
    if entry_changed {
        write_atomically(&entry_file, entry.as_bytes(), 0o644)?;
    }
    let ssh_dir = home.join(".ssh");
    if !ssh_dir.exists() {
        std::fs::create_dir_all(&ssh_dir).map_err(io("create", &ssh_dir))?;
        std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", &ssh_dir))?;
    }
    let link = ssh_dir.join("config");
    // Written through a link (dotfiles managers keep ~/.ssh/config elsewhere).
    let user_config = std::fs::canonicalize(&link).unwrap_or_else(|_| link.clone());
    let include = format!("Include {}", quote(&entry_file.to_string_lossy()));
    let (existing, mode) = match std::fs::read(&user_config) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&user_config)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o600);
            (bytes, mode)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0o600),
        Err(error) => return Err(io("read", &user_config)(error)),
    };
    let present = String::from_utf8_lossy(&existing)
        .lines()
        .any(|line| line.trim() == include);
    if !present {
        let mut text = format!("{INCLUDE_MARK}\n{include}\n").into_bytes();
        if !existing.is_empty() {
            text.push(b'\n');
        }
        text.extend_from_slice(&existing);
        write_atomically(&user_config, &text, mode)?;
    }
    Ok(ConfigWritten {
        entry_file,
        entry_changed,
        user_config,
        include_added: !present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, SshFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = SshFiles {
            dir: dir.path().join("ssh"),
        };
        (dir, files)
    }

    #[test]
    fn the_key_pair_is_made_once_private_and_readable_by_ssh_keygen() {
        let (_dir, files) = files();
        let line = files.ensure_key_pair().unwrap();
        assert!(
            line.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
            "{line}"
        );
        let meta = std::fs::metadata(files.private_key()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir = std::fs::metadata(&files.dir).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        assert_eq!(files.ensure_key_pair().unwrap(), line, "made once");
        // A lost public half comes back from the private key.
        std::fs::remove_file(files.public_key()).unwrap();
        assert_eq!(files.ensure_key_pair().unwrap(), line);
        // Nothing half-written is left beside it.
        let names: Vec<String> = std::fs::read_dir(&files.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // OpenSSH reads the private key and derives the same public key.
        if let Ok(output) = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(files.private_key())
            .output()
        {
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let derived = String::from_utf8_lossy(&output.stdout);
            let mut fields = derived.split_whitespace();
            let mut ours = line.split_whitespace();
            assert_eq!(fields.next(), ours.next());
            assert_eq!(fields.next(), ours.next());
        }
        // A damaged private key is an error that says what to do, never replaced.
        std::fs::write(files.private_key(), "garbage").unwrap();
        let error = files.ensure_key_pair().unwrap_err().to_string();
        assert!(error.contains("move it away"), "{error}");
    }

    #[test]
    fn fingerprints_match_ssh_keygen_and_host_keys_are_checked() {
        let (_dir, files) = files();
        let line = files.ensure_key_pair().unwrap();
        let blob = STANDARD
            .decode(line.split_whitespace().nth(1).unwrap())
            .unwrap();
        let key = line.split_whitespace().nth(1).unwrap();
        let ours = check_host_key("ssh-ed25519", key).unwrap();
        assert_eq!(ours, fingerprint(&blob));
        if let Ok(output) = std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(files.public_key())
            .output()
        {
            let printed = String::from_utf8_lossy(&output.stdout);
            assert!(printed.contains(&ours), "{printed} vs {ours}");
        }
        for (algorithm, key) in [
            ("ssh-ed25519", "not base64!"),
            ("ssh-rsa", key),
            ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5"),
            ("ssh-ed25519 evil", key),
            (
                "ssh-ed25519",
                "AAAAC3NzaC1lZDI1NTE5AAAAIA\nevil.vm ssh-rsa AAAA",
            ),
        ] {
            assert!(check_host_key(algorithm, key).is_err(), "{algorithm} {key}");
        }
        let presented = vec![
            crate::agent::tool_ssh::HostPublicKey {
                algorithm: "ssh-rsa".into(),
                public_key: "AAAA".into(),
            },
            crate::agent::tool_ssh::HostPublicKey {
                algorithm: "ssh-ed25519".into(),
                public_key: key.into(),
            },
        ];
        let (chosen, fp) = choose_host_key(&presented).unwrap();
        assert_eq!((chosen.algorithm.as_str(), fp), ("ssh-ed25519", ours));
    }

    #[test]
    fn known_hosts_hold_one_line_per_vm_and_are_rewritten_only_on_change() {
        let (_dir, files) = files();
        files.ensure_key_pair().unwrap();
        let key = std::fs::read_to_string(files.public_key()).unwrap();
        let key = key.split_whitespace().nth(1).unwrap().to_owned();
        let entry = |name: &str| KnownHost {
            vm_name: name.into(),
            algorithm: "ssh-ed25519".into(),
            public_key: key.clone(),
        };
        assert!(
            files
                .write_known_hosts(&[entry("web"), entry("db")])
                .unwrap()
        );
        let text = std::fs::read_to_string(files.known_hosts()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                format!("db.vm ssh-ed25519 {key}"),
                format!("web.vm ssh-ed25519 {key}")
            ]
        );
        assert!(
            !files
                .write_known_hosts(&[entry("db"), entry("web")])
                .unwrap()
        );
        // A VM that went is gone from it; a hostile entry never gets in.
        let mut hostile = entry("evil");
        hostile.public_key.push_str("\nx.vm ssh-rsa AAAA");
        assert!(files.write_known_hosts(&[entry("web"), hostile]).unwrap());
        let text = std::fs::read_to_string(files.known_hosts()).unwrap();
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 1);
        assert!(text.contains("web.vm ") && !text.contains("db.vm") && !text.contains("x.vm"));
    }

    #[test]
    fn ssh_config_write_is_idempotent_and_keeps_the_users_file() {
        let (dir, files) = files();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let layout = Layout::rooted(&dir.path().join("root dir"));
        let options = ClientOptions::new(&layout, Path::new("/usr/bin/banger"), "%n");
        let entry = options.config_entry();
        assert!(entry.contains("Host *.vm\n"));
        assert!(
            entry.contains("ProxyCommand env BANGER_ROOT=\"")
                && entry.ends_with("/usr/bin/banger vm ssh-proxy %n\n"),
            "{entry}"
        );
        // No ~/.ssh/config yet: it is made, 0600.
        let first = write_config(&files, &entry, &home).unwrap();
        assert!(first.include_added && first.entry_changed);
        let config = home.join(".ssh/config");
        assert_eq!(
            std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = write_config(&files, &entry, &home).unwrap();
        assert!(!again.include_added && !again.entry_changed);
        // An existing file keeps every byte, under the two lines, once.
        let mine = b"Host work\n  HostName 10.0.0.1\n# no final newline".to_vec();
        std::fs::write(&config, &mine).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_config(&files, &entry, &home).unwrap();
        write_config(&files, &entry, &home).unwrap();
        let text = std::fs::read(&config).unwrap();
        let head = format!(
            "{INCLUDE_MARK}\nInclude {}\n\n",
            files.config().to_string_lossy()
        );
        assert_eq!(text, [head.as_bytes(), &mine].concat());
        assert_eq!(
            std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
            0o640,
            "its mode is kept"
        );
        assert_eq!(std::fs::read_to_string(files.config()).unwrap(), entry);
    }
}
