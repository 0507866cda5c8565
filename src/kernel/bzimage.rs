//! The x86 boot image (`vmlinuz`, a bzImage) and the uncompressed ELF `vmlinux` inside it.
//!
//! Firecracker boots an ELF vmlinux (or a PVH-capable one); QEMU boots either. A bzImage is a
//! real-mode setup followed by a compressed payload; the boot protocol header (version 2.08 or
//! later) says where the payload lies (`payload_offset` from the protected-mode code, which
//! starts after `setup_sects + 1` sectors, and `payload_length`). The kernel build appends the
//! uncompressed size as four little-endian bytes to the compressed stream, which makes a
//! decompression checkable.
//!
//! Debian's cloud kernel compresses with LZ4 (`CONFIG_KERNEL_LZ4`), in LZ4's *legacy* frame
//! format (magic `0x184C2102`, 8 MiB blocks with bare length prefixes), which `lz4_flex`'s frame
//! decoder reads. Other payload formats are named in the error, not guessed at.

use std::io::Read;

use super::KernelError;

/// The boot protocol version that added `payload_offset` and `payload_length`.
const MIN_BOOT_PROTOCOL: u16 = 0x0208;

/// A bzImage bigger than this is not a kernel (Debian's is 14 MB).
const MAX_BZIMAGE_BYTES: usize = 256 << 20;

/// The largest vmlinux accepted (Debian's cloud vmlinux is about 50 MB).
const MAX_VMLINUX_BYTES: u64 = 1 << 30;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EM_X86_64: u16 = 0x3e;

/// What the boot header says about a bzImage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BzImageInfo {
    /// The boot protocol version, e.g. `0x020f`.
    pub boot_protocol: u16,
    /// The kernel release, the first word of the header's version string
    /// (`6.1.0-57-cloud-amd64`), when the image has one.
    pub release: Option<String>,
    /// The compression of the payload, as [`payload_format`] names it.
    pub payload_format: &'static str,
}

/// Reads the boot header and finds the compressed payload.
pub fn inspect(bzimage: &[u8]) -> Result<(BzImageInfo, &[u8]), KernelError> {
    let bad = |reason: String| KernelError::KernelImage(reason);
    if bzimage.len() > MAX_BZIMAGE_BYTES {
        return Err(bad(format!(
            "{} bytes is too big for a bzImage",
            bzimage.len()
        )));
    }
    if bzimage.len() < 0x250 || &bzimage[0x202..0x206] != b"HdrS" {
        return Err(bad(
            "not a Linux bzImage (no \"HdrS\" boot header at 0x202)".into(),
        ));
    }
    let u16_at = |at: usize| u16::from_le_bytes([bzimage[at], bzimage[at + 1]]);
    let u32_at = |at: usize| {
        u32::from_le_bytes([
            bzimage[at],
            bzimage[at + 1],
            bzimage[at + 2],
            bzimage[at + 3],
        ])
    };
    let boot_protocol = u16_at(0x206);
    if boot_protocol < MIN_BOOT_PROTOCOL {
        return Err(bad(format!(
            "boot protocol {}.{:02} is older than 2.08, which first says where the payload is",
            boot_protocol >> 8,
            boot_protocol & 0xff
        )));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let payload_offset = u32_at(0x248) as usize;
    let payload_length = u32_at(0x24c) as usize;
    let start = (setup_sects + 1) * 512 + payload_offset;
    let payload = start
        .checked_add(payload_length)
        .and_then(|end| bzimage.get(start..end))
        .ok_or_else(|| {
            bad(format!(
                "the payload ({payload_length} bytes at {start}) lies past the end of the \
                 {}-byte image",
                bzimage.len()
            ))
        })?;
    // The version string: kernel_version at 0x20e points 0x200 bytes before its target.
    let release = match u16_at(0x20e) {
        0 => None,
        pointer => {
            let at = usize::from(pointer) + 0x200;
            bzimage.get(at..).and_then(|rest| {
                let end = rest.iter().position(|&b| b == 0 || b == b' ')?;
                std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
            })
        }
    };
    Ok((
        BzImageInfo {
            boot_protocol,
            release,
            payload_format: payload_format(payload),
        },
        payload,
    ))
}

/// Names a kernel payload's compression from its magic bytes.
pub fn payload_format(payload: &[u8]) -> &'static str {
    match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => "lz4",
        [0x1f, 0x8b, ..] => "gzip",
        [0x42, 0x5a, 0x68, ..] => "bzip2",
        [0x5d, 0x00, 0x00, ..] => "lzma",
        [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, ..] => "xz",
        [0x89, 0x4c, 0x5a, 0x4f, ..] => "lzo",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x7f, 0x45, 0x4c, 0x46, ..] => "uncompressed",
        _ => "unknown",
    }
}

/// The uncompressed ELF vmlinux inside a bzImage, checked: an x86-64 ELF executable whose
/// size is the one the build recorded after the stream.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, KernelError> {
    let (info, payload) = inspect(bzimage)?;
    let vmlinux = match info.payload_format {
        "lz4" => decompress_lz4_legacy(payload)?,
        "uncompressed" => payload.to_vec(),
        other => {
            return Err(KernelError::KernelImage(format!(
                "the payload is compressed with {other}; banger reads LZ4 payloads \
                 (CONFIG_KERNEL_LZ4, as Debian's cloud kernels have) and uncompressed ones"
            )));
        }
    };
    check_vmlinux(&vmlinux)?;
    Ok(vmlinux)
}

fn decompress_lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, KernelError> {
    let bad = |reason: String| KernelError::KernelImage(reason);
    let Some((stream, size)) = payload.split_last_chunk::<4>() else {
        return Err(bad(
            "the LZ4 payload is shorter than its size trailer".into()
        ));
    };
    let expected = u64::from(u32::from_le_bytes(*size));
    if expected > MAX_VMLINUX_BYTES {
        return Err(bad(format!(
            "the payload says it holds {expected} bytes, more than a kernel has"
        )));
    }
    let mut vmlinux = Vec::with_capacity(expected as usize);
    lz4_flex::frame::FrameDecoder::new(stream)
        .take(expected + 1)
        .read_to_end(&mut vmlinux)
        .map_err(|e| bad(format!("the LZ4 payload does not decompress: {e}")))?;
    if vmlinux.len() as u64 != expected {
        return Err(bad(format!(
            "the LZ4 payload decompressed to {} bytes, but the image records {expected}",
            vmlinux.len()
        )));
    }
    Ok(vmlinux)
}

/// An ELF64 little-endian x86-64 executable.
fn check_vmlinux(vmlinux: &[u8]) -> Result<(), KernelError> {
    let bad = |reason: &str| KernelError::KernelImage(format!("the decompressed kernel {reason}"));
    if vmlinux.len() < 64 || &vmlinux[..4] != ELF_MAGIC {
        return Err(bad("is not an ELF file"));
    }
    if vmlinux[4] != 2 || vmlinux[5] != 1 {
        return Err(bad("is not a 64-bit little-endian ELF file"));
    }
    let machine = u16::from_le_bytes([vmlinux[0x12], vmlinux[0x13]]);
    if machine != EM_X86_64 {
        return Err(bad(&format!("is for ELF machine {machine:#x}, not x86-64")));
    }
    let kind = u16::from_le_bytes([vmlinux[0x10], vmlinux[0x11]]);
    if kind != 2 {
        return Err(bad("is not an ELF executable"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal x86-64 ELF executable header, padded to `len` bytes.
    pub(crate) fn fake_vmlinux(len: usize) -> Vec<u8> {
        let mut elf = vec![0u8; len.max(64)];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[0x10] = 2;
        elf[0x12] = EM_X86_64 as u8;
        for (i, byte) in elf.iter_mut().enumerate().skip(64) {
            *byte = (i % 251) as u8;
        }
        elf
    }

    /// LZ4's legacy frame around `data`, in 8 MiB blocks, plus the size trailer: what the
    /// kernel build writes.
    pub(crate) fn lz4_legacy(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x02, 0x21, 0x4c, 0x18];
        for block in data.chunks(8 << 20) {
            let compressed = lz4_flex::block::compress(block);
            out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            out.extend_from_slice(&compressed);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// A bzImage with boot protocol 2.15, the release string and `payload`.
    pub(crate) fn fake_bzimage(release: &str, payload: &[u8]) -> Vec<u8> {
        let setup_sects = 3u8;
        let setup_len = (usize::from(setup_sects) + 1) * 512;
        let mut image = vec![0u8; setup_len];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        // The version string in the setup area, after the header.
        let version_at = 0x300;
        let version = format!("{release} (builder@example) #1 SMP\0");
        image[version_at..version_at + version.len()].copy_from_slice(version.as_bytes());
        image[0x20e..0x210].copy_from_slice(&((version_at - 0x200) as u16).to_le_bytes());
        let payload_offset = 0x40u32;
        image[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend(std::iter::repeat_n(0xcc, payload_offset as usize));
        image.extend_from_slice(payload);
        image.extend_from_slice(&[0u8; 100]);
        image
    }

    #[test]
    fn an_lz4_payload_gives_back_the_vmlinux() {
        // Over one 8 MiB block, so the legacy frame has two.
        let vmlinux = fake_vmlinux((8 << 20) + 4096);
        let image = fake_bzimage("6.1.0-test", &lz4_legacy(&vmlinux));
        let (info, _) = inspect(&image).unwrap();
        assert_eq!(info.release.as_deref(), Some("6.1.0-test"));
        assert_eq!(info.payload_format, "lz4");
        assert_eq!(info.boot_protocol, 0x020f);
        assert!(extract_vmlinux(&image).unwrap() == vmlinux);
    }

    #[test]
    fn other_payloads_are_named_not_guessed() {
        let image = fake_bzimage("6.1.0-test", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let error = extract_vmlinux(&image).unwrap_err().to_string();
        assert!(error.contains("compressed with gzip"), "{error}");
        let image = fake_bzimage("6.1.0-test", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0]);
        let error = extract_vmlinux(&image).unwrap_err().to_string();
        assert!(error.contains("compressed with zstd"), "{error}");
    }

    #[test]
    fn broken_images_are_refused_with_the_reason() {
        let vmlinux = fake_vmlinux(100_000);
        let good = lz4_legacy(&vmlinux);
        for (what, image, expected) in [
            ("not a bzImage", vec![0u8; 4096], "no \"HdrS\""),
            ("too short", b"HdrS".to_vec(), "no \"HdrS\""),
            (
                "an old protocol",
                {
                    let mut image = fake_bzimage("x", &good);
                    image[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
                    image
                },
                "older than 2.08",
            ),
            (
                "a payload past the end",
                {
                    let mut image = fake_bzimage("x", &good);
                    image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
                    image
                },
                "past the end",
            ),
            (
                "a corrupt stream",
                {
                    let mut bad = good.clone();
                    let middle = bad.len() / 2;
                    bad.truncate(middle);
                    bad.extend_from_slice(&(vmlinux.len() as u32).to_le_bytes());
                    fake_bzimage("x", &bad)
                },
                "LZ4 payload",
            ),
            (
                "a wrong size trailer",
                {
                    let mut bad = good.clone();
                    let at = bad.len() - 4;
                    bad[at..].copy_from_slice(&(vmlinux.len() as u32 - 1).to_le_bytes());
                    fake_bzimage("x", &bad)
                },
                "records",
            ),
            (
                "a payload that is not ELF",
                fake_bzimage("x", &lz4_legacy(&[0x55; 5000])),
                "is not an ELF file",
            ),
        ] {
            let error = extract_vmlinux(&image).expect_err(what).to_string();
            assert!(error.contains(expected), "{what}: {error}");
        }
    }
}
