//! The static guest agent, embedded at build time (see `build.rs`): what bangerd puts into
//! every image it pulls (at `banger_agent::boot::AGENT_PATH_IN_IMAGE`) and into every kernel
//! bundle's initrd (as `/init`). Embedded rather than looked up, so that an installed bangerd
//! always carries an agent of its own version.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The agent's bytes: a static ELF executable for this host's architecture.
pub const BYTES: &[u8] = include_bytes!(env!("BANGER_STATIC_AGENT_PATH"));

/// Writes the agent to `path` (created or replaced), executable.
pub fn write_to(path: &Path) -> io::Result<()> {
    std::fs::write(path, BYTES)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded agent runs here and says which version it is: the one built with this
    /// bangerd.
    #[test]
    fn the_embedded_agent_is_this_builds_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banger-agent");
        write_to(&path).unwrap();
        let output = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            format!("banger-agent {}", env!("CARGO_PKG_VERSION"))
        );
    }
}
