//! A streaming, bounded reader for the tar streams inside OCI layers.
//!
//! It reads POSIX ustar, GNU and PAX (`x`) headers, the forms that image producers (Go's
//! `archive/tar`, BuildKit, umoci, GNU tar) write, and hands out one entry at a time with its
//! data read straight from the stream into the caller's buffer.
//!
//! Why not the `tar` crate (which the tests use to *build* layers): it reads PAX records and GNU
//! long names into memory whatever their declared size, so a hostile layer could ask for
//! gigabytes; and it cannot tell a stream that ends cleanly from one cut at a header boundary.
//! Here:
//! - PAX data is capped at [`MAX_PAX_BYTES`], GNU long names at [`MAX_LONG_NAME_BYTES`];
//! - every header checksum is verified;
//! - a stream ends with the end-of-archive marker (a zero block), or, as Go's reader (and so
//!   Docker and containerd) accepts, at the boundary after an entry's data: umoci's `insert`
//!   writes layers with no marker at all. A stream cut anywhere else — inside a header, inside
//!   data, or after an extended header (PAX, GNU long name) before the entry it describes — is
//!   corrupt. The layer's digest was verified before it is read, so a stream cut in transit
//!   never gets here; a completely empty stream is an empty layer;
//! - after the marker the rest of the stream is read to its end, so a decompressor sees its
//!   trailer (and checks its CRC) and a caller hashing the stream sees every byte;
//! - as in Go's reader, hard links, symlinks, devices, fifos and directories carry no data
//!   whatever their size field says, and a `\0` type whose name ends in `/` is a directory.

use std::io::{self, BufReader, Read};

use super::error::Refusal;

/// Largest PAX extended header accepted (all its records together).
pub(crate) const MAX_PAX_BYTES: u64 = 1 << 20;
/// Largest GNU long name or long link accepted; paths over 4095 bytes are refused later anyway.
pub(crate) const MAX_LONG_NAME_BYTES: u64 = 64 << 10;

const BLOCK: usize = 512;

/// Seconds and nanoseconds since the Unix epoch; `nanos` is always below one billion, so a time
/// before the epoch has negative `secs` and positive `nanos` (-1.5 s is `{ -2, 500_000_000 }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

/// One entry's header, after PAX records and GNU long names were applied.
#[derive(Debug, Clone)]
pub(crate) struct TarEntry {
    pub path: Vec<u8>,
    /// Symlink target or hard link target; empty for other kinds.
    pub link_target: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Timestamp,
    /// Bytes of data that follow (regular files only).
    pub size: u64,
    pub dev_major: u64,
    pub dev_minor: u64,
    /// `SCHILY.xattr.NAME` records, in stream order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
pub(crate) enum TarError {
    Corrupt { offset: u64, detail: String },
    Io { offset: u64, source: io::Error },
    Refused { path: Vec<u8>, reason: Refusal },
}

fn corrupt<T>(offset: u64, detail: impl Into<String>) -> Result<T, TarError> {
    Err(TarError::Corrupt {
        offset,
        detail: detail.into(),
    })
}

/// PAX keywords that apply to the next entry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link_path: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Timestamp>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

pub(crate) struct TarReader<R: Read> {
    inner: BufReader<R>,
    /// Bytes consumed from the stream so far.
    offset: u64,
    /// Unread data bytes of the current entry.
    data_left: u64,
    /// Padding after the current entry's data, up to the next 512-byte boundary.
    padding_left: u64,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner: BufReader::with_capacity(256 << 10, inner),
            offset: 0,
            data_left: 0,
            padding_left: 0,
            finished: false,
        }
    }

    /// Bytes consumed from the stream so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads until `buf` is full or the stream ends; returns how many bytes were read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Io {
                        offset: self.offset,
                        source,
                    });
                }
            }
        }
        Ok(filled)
    }

    fn skip(&mut self, mut amount: u64, what: &str) -> Result<(), TarError> {
        let mut scratch = [0u8; 8192];
        while amount > 0 {
            let want = amount.min(scratch.len() as u64) as usize;
            let got = self.read_up_to(&mut scratch[..want])?;
            if got < want {
                return corrupt(self.offset, format!("stream ends inside {what}"));
            }
            amount -= got as u64;
        }
        Ok(())
    }

    /// Reads a metadata entry's data (PAX records, GNU long name) of at most `limit` bytes.
    fn read_meta(&mut self, size: u64, limit: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > limit {
            return corrupt(
                self.offset,
                format!("{what} of {size} bytes exceeds the limit of {limit}"),
            );
        }
        let mut data = vec![0u8; size as usize];
        if self.read_up_to(&mut data)? < data.len() {
            return corrupt(self.offset, format!("stream ends inside {what}"));
        }
        self.skip(padding(size), "padding")?;
        Ok(data)
    }

    /// Reads the current entry's data into `buf`, which must not be longer than what is left.
    pub(crate) fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        debug_assert!(buf.len() as u64 <= self.data_left);
        if self.read_up_to(buf)? < buf.len() {
            return corrupt(self.offset, "stream ends inside an entry's data");
        }
        self.data_left -= buf.len() as u64;
        Ok(())
    }

    /// Skips what is left of the current entry (unread data and padding).
    fn finish_entry(&mut self) -> Result<(), TarError> {
        let left = self.data_left + self.padding_left;
        self.data_left = 0;
        self.padding_left = 0;
        self.skip(left, "an entry's data")
    }

    /// Reads the stream to its end, so that whatever wraps it (a decompressor checking its
    /// trailer, a digest) sees every byte.
    fn drain(&mut self) -> Result<(), TarError> {
        let mut scratch = vec![0u8; 64 << 10];
        while self.read_up_to(&mut scratch)? > 0 {}
        Ok(())
    }

    /// The next entry, or `None` after the end-of-archive marker.
    pub(crate) fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.finish_entry()?;
        let mut pax = Pax::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let header_offset = self.offset;
            let mut block = [0u8; BLOCK];
            let got = self.read_up_to(&mut block)?;
            if got == 0 {
                if pax.path.is_some() || long_name.is_some() || long_link.is_some() {
                    return corrupt(
                        header_offset,
                        "stream ends after an extended header, before its entry (truncated)",
                    );
                }
                // At an entry boundary (or a zero-byte stream: an empty layer), without the
                // marker: the end, as Go's reader takes it.
                self.finished = true;
                return Ok(None);
            }
            if got < BLOCK {
                return corrupt(header_offset, "stream ends inside a header (truncated)");
            }
            if block.iter().all(|&b| b == 0) {
                if pax.path.is_some() || long_name.is_some() || long_link.is_some() {
                    return corrupt(
                        header_offset,
                        "an extended header is followed by the end of the archive",
                    );
                }
                self.finished = true;
                self.drain()?;
                return Ok(None);
            }
            verify_checksum(&block, header_offset)?;
            let typeflag = block[156];
            let header_size = parse_unsigned(&block[124..136], header_offset, "size")?;
            match typeflag {
                b'x' => {
                    let data = self.read_meta(header_size, MAX_PAX_BYTES, "a PAX header")?;
                    parse_pax(&data, &mut pax, header_offset)?;
                    continue;
                }
                // Global PAX headers are ignored, as Docker and containerd do.
                b'g' => {
                    self.read_meta(header_size, MAX_PAX_BYTES, "a global PAX header")?;
                    continue;
                }
                b'L' => {
                    let name =
                        self.read_meta(header_size, MAX_LONG_NAME_BYTES, "a GNU long name")?;
                    long_name = Some(trim_nul(&name).to_vec());
                    continue;
                }
                b'K' => {
                    let link =
                        self.read_meta(header_size, MAX_LONG_NAME_BYTES, "a GNU long link")?;
                    long_link = Some(trim_nul(&link).to_vec());
                    continue;
                }
                _ => {}
            }

            let magic = &block[257..265];
            let posix = &magic[..6] == b"ustar\0";
            let mut path = match (pax.path.take(), long_name.take()) {
                (Some(path), _) | (None, Some(path)) => path,
                (None, None) => {
                    let name = c_string(&block[0..100]);
                    let prefix = if posix {
                        c_string(&block[345..500])
                    } else {
                        &[]
                    };
                    if prefix.is_empty() {
                        name.to_vec()
                    } else {
                        let mut joined = prefix.to_vec();
                        joined.push(b'/');
                        joined.extend_from_slice(name);
                        joined
                    }
                }
            };
            let link_target = match (pax.link_path.take(), long_link.take()) {
                (Some(link), _) | (None, Some(link)) => link,
                (None, None) => c_string(&block[157..257]).to_vec(),
            };
            let kind = match typeflag {
                b'0' | b'7' => EntryKind::Regular,
                b'\0' if path.ends_with(b"/") => EntryKind::Directory,
                b'\0' => EntryKind::Regular,
                b'1' => EntryKind::HardLink,
                b'2' => EntryKind::Symlink,
                b'3' => EntryKind::CharDevice,
                b'4' => EntryKind::BlockDevice,
                b'5' => EntryKind::Directory,
                b'6' => EntryKind::Fifo,
                b'S' => {
                    return Err(TarError::Refused {
                        path,
                        reason: Refusal::SparseEntry,
                    });
                }
                other => {
                    return Err(TarError::Refused {
                        path,
                        reason: Refusal::UnsupportedEntryType(other as char),
                    });
                }
            };
            if pax.sparse {
                return Err(TarError::Refused {
                    path,
                    reason: Refusal::SparseEntry,
                });
            }
            let size = if kind == EntryKind::Regular {
                pax.size.unwrap_or(header_size)
            } else {
                0
            };
            let mode = (parse_unsigned(&block[100..108], header_offset, "mode")? & 0o7777) as u32;
            let uid = match pax.uid {
                Some(uid) => uid,
                None => parse_unsigned(&block[108..116], header_offset, "uid")?,
            };
            let gid = match pax.gid {
                Some(gid) => gid,
                None => parse_unsigned(&block[116..124], header_offset, "gid")?,
            };
            let mtime = match pax.mtime {
                Some(mtime) => mtime,
                None => {
                    let secs = parse_signed(&block[136..148], header_offset, "mtime")?;
                    Timestamp {
                        secs: i64::try_from(secs)
                            .or_else(|_| corrupt(header_offset, "mtime out of range"))?,
                        nanos: 0,
                    }
                }
            };
            let (dev_major, dev_minor) =
                if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
                    (
                        parse_unsigned(&block[329..337], header_offset, "devmajor")?,
                        parse_unsigned(&block[337..345], header_offset, "devminor")?,
                    )
                } else {
                    (0, 0)
                };
            if kind == EntryKind::Directory {
                // `dir/` and `dir` name the same directory.
                while path.len() > 1 && path.ends_with(b"/") {
                    path.pop();
                }
            }
            self.data_left = size;
            self.padding_left = padding(size);
            return Ok(Some(TarEntry {
                path,
                link_target: if matches!(kind, EntryKind::HardLink | EntryKind::Symlink) {
                    link_target
                } else {
                    Vec::new()
                },
                kind,
                mode,
                uid,
                gid,
                mtime,
                size,
                dev_major,
                dev_minor,
                xattrs: std::mem::take(&mut pax.xattrs),
            }));
        }
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn c_string(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

fn trim_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &bytes[..end]
}

fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let stored = parse_unsigned(&block[148..156], offset, "checksum")?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &byte) in block.iter().enumerate() {
        let byte = if (148..156).contains(&i) { b' ' } else { byte };
        unsigned += u64::from(byte);
        signed += i64::from(byte as i8);
    }
    // Some old tars summed signed chars; accept either, as GNU tar and Go do.
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        corrupt(offset, "header checksum mismatch")
    }
}

/// A numeric header field: octal text (spaces and NULs around it), or GNU base-256 when the
/// first byte has its high bit set (0x80 positive, 0xff negative).
fn parse_signed(field: &[u8], offset: u64, what: &str) -> Result<i128, TarError> {
    if field[0] & 0x80 != 0 {
        let negative = field[0] == 0xff;
        let mut value: i128 = 0;
        for (i, &byte) in field.iter().enumerate() {
            let byte = if i == 0 { byte & 0x7f } else { byte };
            let byte = if negative {
                !byte & if i == 0 { 0x7f } else { 0xff }
            } else {
                byte
            };
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(i128::from(byte)))
                .ok_or(())
                .or_else(|()| corrupt(offset, format!("{what} field overflows")))?;
        }
        return Ok(if negative { -value - 1 } else { value });
    }
    let text = field;
    let start = text
        .iter()
        .position(|&b| b != b' ' && b != 0)
        .unwrap_or(text.len());
    let mut value: i128 = 0;
    let mut index = start;
    while index < text.len() && (b'0'..=b'7').contains(&text[index]) {
        value = value * 8 + i128::from(text[index] - b'0');
        index += 1;
    }
    if text[index..].iter().any(|&b| b != b' ' && b != 0) {
        return corrupt(offset, format!("{what} field is not an octal number"));
    }
    Ok(value)
}

fn parse_unsigned(field: &[u8], offset: u64, what: &str) -> Result<u64, TarError> {
    let value = parse_signed(field, offset, what)?;
    u64::try_from(value).or_else(|_| corrupt(offset, format!("{what} field is out of range")))
}

/// Parses PAX records (`"%d %s=%s\n"`, the length counting the whole record).
fn parse_pax(mut data: &[u8], pax: &mut Pax, offset: u64) -> Result<(), TarError> {
    while !data.is_empty() {
        let Some(space) = data.iter().position(|&b| b == b' ') else {
            return corrupt(offset, "malformed PAX record (no length)");
        };
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n: &usize| n > space + 1 && n <= data.len())
            .ok_or(())
            .or_else(|()| corrupt(offset, "malformed PAX record length"))?;
        let record = &data[space + 1..length];
        data = &data[length..];
        let Some((&b'\n', record)) = record.split_last() else {
            return corrupt(offset, "PAX record does not end with a newline");
        };
        let Some(eq) = record.iter().position(|&b| b == b'=') else {
            return corrupt(offset, "PAX record has no `=`");
        };
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let decimal = |what: &str| -> Result<u64, TarError> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(())
                .or_else(|()| corrupt(offset, format!("PAX {what} is not a decimal number")))
        };
        match key {
            // An empty value removes the keyword's effect (POSIX); the header field applies.
            b"path" => pax.path = (!value.is_empty()).then(|| value.to_vec()),
            b"linkpath" => pax.link_path = (!value.is_empty()).then(|| value.to_vec()),
            b"size" => pax.size = Some(decimal("size")?),
            b"uid" => pax.uid = Some(decimal("uid")?),
            b"gid" => pax.gid = Some(decimal("gid")?),
            b"mtime" => pax.mtime = Some(parse_pax_time(value, offset)?),
            _ if key.starts_with(b"SCHILY.xattr.") => {
                pax.xattrs
                    .push((key[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
            }
            _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
            // atime, ctime, uname, gname, comment, charset…: not part of the image.
            _ => {}
        }
    }
    Ok(())
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(value: &[u8], offset: u64) -> Result<Timestamp, TarError> {
    let bad = || TarError::Corrupt {
        offset,
        detail: "PAX mtime is not a decimal time".into(),
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = whole.parse().map_err(|_| bad())?;
    let mut nanos: u32 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(if !negative {
        Timestamp { secs, nanos }
    } else if nanos == 0 {
        Timestamp { secs: -secs, nanos }
    } else {
        Timestamp {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base256_and_octal_fields() {
        assert_eq!(parse_signed(b"0000644\0", 0, "x").unwrap(), 0o644);
        assert_eq!(parse_signed(b"  777 \0\0", 0, "x").unwrap(), 0o777);
        let mut field = [0u8; 8];
        field[0] = 0x80;
        field[4..].copy_from_slice(&4_000_000_000u32.to_be_bytes());
        assert_eq!(parse_signed(&field, 0, "x").unwrap(), 4_000_000_000);
        let negative = [0xffu8; 12];
        assert_eq!(parse_signed(&negative, 0, "x").unwrap(), -1);
        assert!(parse_signed(b"12x4\0\0\0\0", 0, "x").is_err());
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time(b"1700000000.25", 0).unwrap();
        assert_eq!((t.secs, t.nanos), (1_700_000_000, 250_000_000));
        let t = parse_pax_time(b"-1.5", 0).unwrap();
        assert_eq!((t.secs, t.nanos), (-2, 500_000_000));
        assert!(parse_pax_time(b"1e9", 0).is_err());
    }
}
