//! The initrd of a bundle: the static banger agent as `/init`, the modules a microVM needs,
//! and the list that says in which order to load them. What `/init` does with them is the boot
//! contract (`banger_agent::boot`, `banger_agent::initrd`).
//!
//! ```text
//!  init                                    the agent (0755); it knows it is the initrd's
//!                                          init by being PID 1 on a ramfs root
//!  banger/modules.load                     absolute module paths, dependencies first
//!  lib/modules/<release>/kernel/…/*.ko     the modules, at their usual paths
//!  dev/console (c 5:1)                     init's console even before devtmpfs is mounted
//!  dev/ proc/ sys/ newroot/                mount points
//! ```
//!
//! Invariants: uncompressed (the kernel unpacks it without a decompressor, and under software
//! emulation decompressing would cost more than reading the extra bytes); the agent is checked
//! to be a static x86-64 executable before it goes in, since the initrd has no libc for it.

use std::collections::BTreeSet;
use std::path::Path;

use banger_agent::boot::INITRD_MODULE_LIST;

use super::KernelError;
use super::cpio::CpioWriter;

/// One module for the initrd: its path under `lib/modules/<release>/` and its bytes.
pub struct InitrdModule<'a> {
    pub path: &'a str,
    pub bytes: &'a [u8],
}

/// The initrd's bytes. `modules` are in load order.
pub fn build_initrd(agent: &[u8], release: &str, modules: &[InitrdModule<'_>]) -> Vec<u8> {
    let mut cpio = CpioWriter::new();
    let mut directories = BTreeSet::new();
    let mut directory = |cpio: &mut CpioWriter, path: &str| {
        // Parents first, each once.
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if directories.insert(prefix.clone()) {
                cpio.directory(&prefix, 0o755);
            }
        }
    };
    for mount_point in ["dev", "proc", "sys", "newroot"] {
        directory(&mut cpio, mount_point);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, agent);
    let mut list = String::new();
    for module in modules {
        let path = format!("lib/modules/{release}/{}", module.path);
        if let Some((parent, _)) = path.rsplit_once('/') {
            directory(&mut cpio, parent);
        }
        cpio.file(&path, 0o644, module.bytes);
        list.push('/');
        list.push_str(&path);
        list.push('\n');
    }
    let list_path = INITRD_MODULE_LIST.trim_start_matches('/');
    if let Some((parent, _)) = list_path.rsplit_once('/') {
        directory(&mut cpio, parent);
    }
    cpio.file(list_path, 0o644, list.as_bytes());
    cpio.finish()
}

/// Checks that `agent` can run as the initrd's init: an x86-64 ELF executable with no
/// program interpreter (statically linked; `tools/build-agent.sh` builds it so).
pub fn check_static_agent(path: &Path, agent: &[u8]) -> Result<(), KernelError> {
    let bad = |reason: &str| KernelError::Agent {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    const PT_INTERP: u32 = 3;
    // The agent is about 3 MB (6 MB unoptimised); anything far bigger is the wrong file, and
    // the initrd format holds files under 4 GiB only.
    const MAX_AGENT_BYTES: usize = 256 << 20;
    if agent.len() > MAX_AGENT_BYTES {
        return Err(bad("is far too big to be the banger agent (over 256 MiB)"));
    }
    if agent.len() < 64 || &agent[..4] != b"\x7fELF" {
        return Err(bad("is not an ELF executable"));
    }
    if agent[4] != 2 || agent[5] != 1 {
        return Err(bad("is not a 64-bit little-endian ELF executable"));
    }
    let u16_at = |at: usize| u16::from_le_bytes([agent[at], agent[at + 1]]);
    if u16_at(0x12) != 0x3e {
        return Err(bad("is not built for x86-64"));
    }
    if !matches!(u16_at(0x10), 2 | 3) {
        return Err(bad("is not an executable (ELF type EXEC or DYN)"));
    }
    let program_headers = u64::from_le_bytes(agent[0x20..0x28].try_into().unwrap_or_default());
    let entry_size = usize::from(u16_at(0x36));
    let count = usize::from(u16_at(0x38));
    let table = usize::try_from(program_headers)
        .ok()
        .and_then(|start| {
            let end = start.checked_add(entry_size.checked_mul(count)?)?;
            agent.get(start..end)
        })
        .filter(|_| entry_size >= 56 && count > 0)
        .ok_or_else(|| bad("has no readable program headers"))?;
    let dynamic = table.chunks_exact(entry_size).any(|header| {
        u32::from_le_bytes([header[0], header[1], header[2], header[3]]) == PT_INTERP
    });
    if dynamic {
        return Err(bad(
            "is linked dynamically (it names an ELF interpreter); the initrd has no libc: \
             build it with tools/build-agent.sh",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn the_initrd_holds_init_the_modules_and_their_order() {
        let initrd = build_initrd(
            b"agent",
            "6.1.0-test",
            &[
                InitrdModule {
                    path: "kernel/drivers/virtio/virtio_ring.ko",
                    bytes: b"ring",
                },
                InitrdModule {
                    path: "kernel/drivers/virtio/virtio.ko",
                    bytes: b"virtio",
                },
                InitrdModule {
                    path: "kernel/net/vmw_vsock/vsock.ko",
                    bytes: b"vsock",
                },
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cpio = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cpio (apt-get install cpio)");
        cpio.stdin.take().unwrap().write_all(&initrd).unwrap();
        let output = cpio.wait_with_output().unwrap();
        // Unpacking dev/console needs root; everything else must unpack.
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(
            errors.lines().all(|l| l.contains("dev/console")),
            "{errors}"
        );
        let root = dir.path();
        assert_eq!(std::fs::read(root.join("init")).unwrap(), b"agent");
        assert_eq!(
            std::fs::read_to_string(root.join("banger/modules.load")).unwrap(),
            "/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_ring.ko\n\
             /lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko\n\
             /lib/modules/6.1.0-test/kernel/net/vmw_vsock/vsock.ko\n"
        );
        assert_eq!(
            std::fs::read(root.join("lib/modules/6.1.0-test/kernel/net/vmw_vsock/vsock.ko"))
                .unwrap(),
            b"vsock"
        );
        for mount_point in ["dev", "proc", "sys", "newroot"] {
            assert!(root.join(mount_point).is_dir(), "{mount_point}");
        }
    }

    #[test]
    fn only_a_static_x86_64_agent_is_accepted() {
        let path = Path::new("agent");
        // This test binary is dynamic, as cargo builds by default.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let error = check_static_agent(path, &me).unwrap_err().to_string();
        assert!(error.contains("linked dynamically"), "{error}");
        let error = check_static_agent(path, b"#!/bin/sh\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an ELF"), "{error}");
        // Without the PT_INTERP header the same binary passes.
        let mut patched = me.clone();
        let table = u64::from_le_bytes(me[0x20..0x28].try_into().unwrap()) as usize;
        let size = usize::from(u16::from_le_bytes([me[0x36], me[0x37]]));
        let count = usize::from(u16::from_le_bytes([me[0x38], me[0x39]]));
        for header in patched[table..table + size * count].chunks_exact_mut(size) {
            if header[..4] == 3u32.to_le_bytes() {
                header[..4].copy_from_slice(&0u32.to_le_bytes()); // PT_NULL
            }
        }
        check_static_agent(path, &patched).unwrap();
        let mut arm = patched;
        arm[0x12] = 0xb7;
        let error = check_static_agent(path, &arm).unwrap_err().to_string();
        assert!(error.contains("x86-64"), "{error}");
    }
}
