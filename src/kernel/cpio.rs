//! A writer of the "newc" cpio format, the one the kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (magic `070701`, then thirteen 8-digit hex fields),
//! the NUL-terminated name padded to four bytes, then the data padded to four bytes; the
//! archive ends with an entry named `TRAILER!!!`. Written by hand because it is that small,
//! and because writing the bytes ourselves lets an unprivileged user put a device node
//! (`/dev/console`) in the archive.
//!
//! Invariants: the output depends only on the entries given (times are zero, inode numbers
//! count up from 1, owner root), so the same bundle inputs give the same initrd bytes; names
//! are relative (`dev/console`) and never contain `..`.

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Builds a newc archive in memory.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    next_inode: u32,
}

impl CpioWriter {
    pub fn new() -> CpioWriter {
        CpioWriter::default()
    }

    /// A directory (its parents must have been added before).
    pub fn directory(&mut self, name: &str, permissions: u32) {
        self.entry(name, S_IFDIR | (permissions & 0o7777), 2, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) {
        self.entry(name, S_IFREG | (permissions & 0o7777), 1, (0, 0), data);
    }

    /// A character device node.
    pub fn char_device(&mut self, name: &str, permissions: u32, major: u32, minor: u32) {
        self.entry(
            name,
            S_IFCHR | (permissions & 0o7777),
            1,
            (major, minor),
            &[],
        );
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 1, (0, 0), 0, 0);
        self.out
    }

    fn entry(&mut self, name: &str, mode: u32, links: u32, rdev: (u32, u32), data: &[u8]) {
        debug_assert!(
            !name.starts_with('/') && !name.split('/').any(|c| c == ".."),
            "{name}"
        );
        self.next_inode += 1;
        let inode = self.next_inode;
        self.header(name, mode, links, rdev, data.len(), inode);
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        links: u32,
        (rdev_major, rdev_minor): (u32, u32),
        size: usize,
        inode: u32,
    ) {
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime
            u32::try_from(size).expect("an initrd file is under 4 GiB"),
            0, // dev major
            0, // dev minor
            rdev_major,
            rdev_minor,
            u32::try_from(name.len() + 1).expect("a short name"),
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn cpio_lists_what_was_written() {
        let mut writer = CpioWriter::new();
        writer.directory("dev", 0o755);
        writer.char_device("dev/console", 0o600, 5, 1);
        writer.file("init", 0o755, b"#!/bin/sh\n");
        writer.directory("banger", 0o755);
        writer.file("banger/modules.load", 0o644, b"/a.ko\n");
        let archive = writer.finish();
        assert_eq!(archive.len() % 4, 0);
        // GNU cpio reads it back (CI installs it).
        let mut cpio = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run cpio (apt-get install cpio)");
        cpio.stdin.take().unwrap().write_all(&archive).unwrap();
        let output = cpio.wait_with_output().unwrap();
        assert!(output.status.success());
        let listing = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 5, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("crw-------")
                && lines[1].contains("5,")
                && lines[1].ends_with("dev/console"),
            "{listing}"
        );
        assert!(
            lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"),
            "{listing}"
        );
        assert!(lines[4].ends_with("banger/modules.load"), "{listing}");
    }
}
