//! What goes into every image besides its own layers: the static guest agent at the boot
//! contract's fixed path (`banger_agent::boot::AGENT_PATH_IN_IMAGE`), and, when the image runs
//! systemd, a unit that starts the agent as a service.
//!
//! It is applied as one more layer on top of the image's, written here as a small tar stream,
//! so it goes through the same rules as any layer (and a later pull of the same image gets the
//! same result). The boot contract (docs/ARCHITECTURE.md) decides the rest: the initrd execs
//! `/sbin/init` when the image has one, else the agent as PID 1; with systemd as init, the
//! unit below starts the agent, which then does none of PID 1's duties.
//!
//! Which images get the unit: those whose `/sbin/init` resolves (symlinks followed inside the
//! image) to a file named `systemd`, and those that carry systemd at its usual places
//! (`/lib/systemd/systemd`, `/usr/lib/systemd/systemd`) even when `/sbin/init` is not it yet
//! (an image without `systemd-sysv` that someone makes bootable later). The unit is harmless
//! where systemd never runs.

use std::time::{SystemTime, UNIX_EPOCH};

use super::builder::{ImageBuilder, ResolvedKind};

/// Where the agent's unit goes (the administrator's unit directory, which packages never
/// touch).
pub const AGENT_UNIT_PATH: &str = "/etc/systemd/system/banger-agent.service";

/// The symlink that enables it, as `systemctl enable` would make it.
pub const AGENT_UNIT_LINK: &str =
    "/etc/systemd/system/multi-user.target.wants/banger-agent.service";

/// The unit. `--setup-guest` first does what the agent does as PID 1 with the kernel command
/// line's `banger.*` arguments (hostname, eth0's address and route, name servers, the work
/// disk), which no part of a stock image knows; it is idempotent, so a restart runs it again
/// harmlessly. `--listen auto` then serves the virtio-serial port when the command line says
/// `banger.agent=serial` (QEMU) and vsock otherwise (Firecracker); the initrd has already
/// loaded the modules either needs. No `DefaultDependencies=no`: it starts once the local
/// filesystems are up, like sshd, and stops with the system.
pub const AGENT_UNIT: &str = "\
[Unit]
Description=banger guest agent
After=local-fs.target

[Service]
ExecStartPre=/.banger/banger-agent --setup-guest
ExecStart=/.banger/banger-agent --listen auto
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";

/// Whether the image as applied so far runs (or carries) systemd: see the module
/// documentation.
pub fn uses_systemd(builder: &ImageBuilder) -> bool {
    let is_systemd_binary = |path: &str| {
        builder.resolve(path).is_some_and(|entry| {
            entry.kind == ResolvedKind::Regular && entry.path.rsplit('/').next() == Some("systemd")
        })
    };
    is_systemd_binary(banger_agent::boot::IMAGE_INIT)
        || is_systemd_binary("/lib/systemd/systemd")
        || is_systemd_binary("/usr/lib/systemd/systemd")
}

/// The layer that puts `agent` (the static agent's bytes) at the contract's path, owned by
/// root, mode 0755, and, when `systemd`, the unit and its `multi-user.target.wants` link.
/// Parent directories the image lacks are created by the flattener (0755, root); existing
/// ones are not restated, so the image keeps their owners and modes.
pub fn agent_layer(agent: &[u8], systemd: bool) -> Vec<u8> {
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut tar = tar::Builder::new(Vec::with_capacity(agent.len() + 8192));
    let in_image = |path: &str| path.trim_start_matches('/').to_owned();
    let agent_path = in_image(banger_agent::boot::AGENT_PATH_IN_IMAGE);
    if let Some((dir, _)) = agent_path.rsplit_once('/') {
        let mut entry = header(tar::EntryType::Directory, 0o755, 0, mtime);
        append(&mut tar, &mut entry, &format!("{dir}/"), &[][..]);
    }
    let mut entry = header(tar::EntryType::Regular, 0o755, agent.len() as u64, mtime);
    append(&mut tar, &mut entry, &agent_path, agent);
    if systemd {
        let mut unit = header(
            tar::EntryType::Regular,
            0o644,
            AGENT_UNIT.len() as u64,
            mtime,
        );
        append(
            &mut tar,
            &mut unit,
            &in_image(AGENT_UNIT_PATH),
            AGENT_UNIT.as_bytes(),
        );
        let mut link = header(tar::EntryType::Symlink, 0o777, 0, mtime);
        link.set_link_name("../banger-agent.service")
            .expect("a short link target");
        append(&mut tar, &mut link, &in_image(AGENT_UNIT_LINK), &[][..]);
    }
    tar.into_inner().expect("writing a tar into memory")
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_mtime(mtime);
    header
}

fn append(tar: &mut tar::Builder<Vec<u8>>, header: &mut tar::Header, path: &str, data: &[u8]) {
    header
        .set_path(path)
        .expect("the agent layer's paths are short and valid");
    header.set_cksum();
    tar.append(header, data)
        .expect("writing a tar into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{FlattenOptions, ImageBuilder};

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, target) in entries {
            let mut header = header(*kind, 0o755, 1, 0);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                header.set_link_name(target).unwrap();
            }
            header.set_path(path).unwrap();
            header.set_cksum();
            let data: &[u8] = if *kind == tar::EntryType::Regular {
                b"x"
            } else {
                b""
            };
            tar.append(&header, data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn systemd_of(layers: &[Vec<u8>]) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let mut builder =
            ImageBuilder::create(dir.path().join("img"), FlattenOptions::default()).unwrap();
        for layer in layers {
            builder.apply_layer(layer.as_slice()).unwrap();
        }
        uses_systemd(&builder)
    }

    use tar::EntryType::{Directory, Regular, Symlink};

    #[test]
    fn systemd_is_found_through_merged_usr_and_relative_links() {
        // Debian's layout: /sbin -> usr/sbin, /usr/sbin/init -> ../lib/systemd/systemd.
        let debian = tar_of(&[
            ("usr/lib/systemd/systemd", Regular, ""),
            ("usr/sbin/", Directory, ""),
            ("usr/sbin/init", Symlink, "../lib/systemd/systemd"),
            ("sbin", Symlink, "usr/sbin"),
        ]);
        assert!(systemd_of(&[debian]));
        // An absolute link, and a loop that never resolves.
        let absolute = tar_of(&[
            ("lib/systemd/systemd", Regular, ""),
            ("sbin/init", Symlink, "/lib/systemd/systemd"),
        ]);
        assert!(systemd_of(&[absolute]));
        let looped = tar_of(&[("sbin/init", Symlink, "init")]);
        assert!(!systemd_of(&[looped]));
        // busybox's init is not systemd, nor is a container image without init.
        let busybox = tar_of(&[
            ("bin/busybox", Regular, ""),
            ("sbin/init", Symlink, "../bin/busybox"),
        ]);
        assert!(!systemd_of(&[busybox]));
        assert!(!systemd_of(&[tar_of(&[("etc/os-release", Regular, "")])]));
        // systemd carried but not init yet: the unit goes in anyway.
        assert!(systemd_of(&[tar_of(&[(
            "lib/systemd/systemd",
            Regular,
            ""
        )])]));
        // `..` never climbs above the root.
        let climbing = tar_of(&[
            ("lib/systemd/systemd", Regular, ""),
            ("sbin/init", Symlink, "../../../../lib/systemd/systemd"),
        ]);
        assert!(systemd_of(&[climbing]));
    }

    #[test]
    fn the_agent_layer_holds_the_agent_and_the_unit_only_with_systemd() {
        let names = |tar: &[u8]| -> Vec<(String, u32)> {
            let mut archive = tar::Archive::new(tar);
            archive
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.path().unwrap().display().to_string(),
                        e.header().mode().unwrap(),
                    )
                })
                .collect()
        };
        let plain = agent_layer(b"agent", false);
        assert_eq!(
            names(&plain),
            [
                (".banger/".to_owned(), 0o755),
                (".banger/banger-agent".to_owned(), 0o755)
            ]
        );
        let with_unit = agent_layer(b"agent", true);
        let found = names(&with_unit);
        assert_eq!(found.len(), 4);
        assert_eq!(found[2], (in_image_str(AGENT_UNIT_PATH), 0o644));
        assert_eq!(found[3].0, in_image_str(AGENT_UNIT_LINK));
    }

    fn in_image_str(path: &str) -> String {
        path.trim_start_matches('/').to_owned()
    }
}
