//! A minimal, strict tar (ustar + PAX) reader and writer for workspace trees: what
//! `--tar-receive` and `--tar-send` (`tool_tree`) speak, and what bangerd reads a guest's
//! export with.
//!
//! Hand-written rather than the `tar` crate because both ends are banger's own, the agent is
//! linked into every guest (no new dependency), and the reader is the first thing an
//! untrusted guest's bytes reach on the host: every field it accepts is listed here and
//! bounded.
//!
//! What a stream holds: regular files (`0`), symlinks (`2`) and directories (`5`), each
//! optionally preceded by a PAX header (`x`) carrying `path`, `linkpath`, `size`, `mtime`
//! (with nanoseconds, so an imported file's mtime equals the host's exactly) and banger's own
//! `BANGER.delete=1`, which turns the entry into "remove this path" (how an import tells the
//! guest which files the host no longer has). Anything else — hard links, devices, FIFOs, GNU
//! long names, global PAX headers — is refused, naming the entry. The stream must end with the
//! end-of-archive marker; a stream cut short is an error, never a shorter tree.
//!
//! Invariants: headers are checksummed, PAX records are bounded ([`Limits::max_pax_bytes`]),
//! every file's size is bounded ([`Limits::max_file_bytes`]) and so is the number of entries;
//! paths are returned as the stream gave them (checking them is `tool_tree`'s job), as UTF-8.

use std::io::{self, Read, Write};

/// Tar's block size.
pub const BLOCK: usize = 512;

/// The PAX keyword that marks an entry as a deletion (vendor keywords are upper case).
pub const DELETE_KEYWORD: &str = "BANGER.delete";

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Symlink,
    Dir,
}

/// One entry's header, as the writer takes it and the reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Relative path, `/`-separated, as stored.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o777` at most is written; the reader returns what was stored).
    pub mode: u32,
    /// Bytes of content that follow (files only).
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// A symlink's target.
    pub link: Option<String>,
    /// `BANGER.delete=1`: remove `path` instead of writing it.
    pub delete: bool,
}

impl Header {
    /// A deletion of `path`.
    pub fn deletion(path: impl Into<String>) -> Header {
        Header {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 0,
            mtime_s: 0,
            mtime_ns: 0,
            link: None,
            delete: true,
        }
    }
}

/// Bounds on what a reader accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_pax_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // A workspace is source code: a 4 GiB file in one is a mistake or an attack.
            max_file_bytes: 4 << 30,
            max_pax_bytes: 64 << 10,
            max_entries: 2_000_000,
        }
    }
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading the tar stream: {0}")]
    Io(#[from] io::Error),
    #[error("the tar stream ended in the middle of {0} (cut short?)")]
    Truncated(&'static str),
    #[error("tar header {index} has a bad checksum (not a tar stream, or damaged)")]
    Checksum { index: u64 },
    #[error("tar entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("tar header {index}: {reason}")]
    Header { index: u64, reason: String },
    #[error("the tar stream has more than {max} entries")]
    TooManyEntries { max: u64 },
}

fn entry_error(path: &str, reason: impl Into<String>) -> TarError {
    TarError::Entry {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

// ---- reader -----------------------------------------------------------------------------------

/// Reads entries one by one: [`TarReader::next_entry`], then the entry's content with
/// [`TarReader::read_content`] (or skip it: the next call skips what was not read).
pub struct TarReader<R> {
    inner: R,
    limits: Limits,
    /// Content bytes of the current entry not yet read, then its padding.
    remaining: u64,
    padding: u64,
    headers: u64,
    entries: u64,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R, limits: Limits) -> TarReader<R> {
        TarReader {
            inner,
            limits,
            remaining: 0,
            padding: 0,
            headers: 0,
            entries: 0,
            finished: false,
        }
    }

    /// The next entry, or `None` at the end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<Header>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pax = PaxFields::default();
        let mut saw_pax = false;
        loop {
            let mut block = [0u8; BLOCK];
            if !read_block(&mut self.inner, &mut block)? {
                return Err(TarError::Truncated(
                    "the archive (no end-of-archive marker)",
                ));
            }
            let index = self.headers;
            self.headers += 1;
            if block.iter().all(|&b| b == 0) {
                if saw_pax {
                    return Err(TarError::Header {
                        index,
                        reason: "a PAX header is followed by the end of the archive".into(),
                    });
                }
                // The end-of-archive marker is two zero blocks; tolerate one (some writers
                // stop there) and drain the rest so the writer never sees a broken pipe.
                self.finished = true;
                io::copy(&mut (&mut self.inner).take(1 << 20), &mut io::sink())?;
                return Ok(None);
            }
            check_checksum(&block, index)?;
            let typeflag = block[156];
            let size = parse_number(&block[124..136]).ok_or_else(|| TarError::Header {
                index,
                reason: "unreadable size field".into(),
            })?;
            match typeflag {
                b'x' => {
                    if saw_pax {
                        return Err(TarError::Header {
                            index,
                            reason: "two PAX headers in a row".into(),
                        });
                    }
                    if size > self.limits.max_pax_bytes {
                        return Err(TarError::Header {
                            index,
                            reason: format!(
                                "a PAX header of {size} bytes (more than {} allowed)",
                                self.limits.max_pax_bytes
                            ),
                        });
                    }
                    let mut data = vec![0u8; size as usize];
                    read_exact_or_truncated(&mut self.inner, &mut data, "a PAX header")?;
                    skip(&mut self.inner, padding_of(size), "a PAX header")?;
                    pax = parse_pax(&data).map_err(|reason| TarError::Header { index, reason })?;
                    saw_pax = true;
                    continue;
                }
                b'0' | 0 | b'2' | b'5' => {}
                other => {
                    let path = header_path(&block).unwrap_or_else(|_| "?".into());
                    let what = match other {
                        b'1' => "a hard link",
                        b'3' => "a character device",
                        b'4' => "a block device",
                        b'6' => "a FIFO",
                        b'g' => "a global PAX header",
                        b'L' | b'K' => "a GNU long name",
                        _ => "of an unknown type",
                    };
                    return Err(entry_error(
                        &path,
                        format!(
                            "is {what} (type {:?}); a workspace holds files, symlinks and directories only",
                            other as char
                        ),
                    ));
                }
            }
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(TarError::TooManyEntries {
                    max: self.limits.max_entries,
                });
            }
            let path = match pax.path.take() {
                Some(path) => path,
                None => header_path(&block).map_err(|reason| TarError::Header { index, reason })?,
            };
            let kind = match typeflag {
                b'2' => EntryKind::Symlink,
                b'5' => EntryKind::Dir,
                _ => EntryKind::File,
            };
            let size = pax.size.unwrap_or(size);
            let mode = parse_number(&block[100..108])
                .ok_or_else(|| entry_error(&path, "unreadable mode field"))?
                as u32;
            let (mtime_s, mtime_ns) = match pax.mtime {
                Some(mtime) => mtime,
                None => (
                    parse_number(&block[136..148])
                        .and_then(|v| i64::try_from(v).ok())
                        .ok_or_else(|| entry_error(&path, "unreadable mtime field"))?,
                    0,
                ),
            };
            let link = match kind {
                EntryKind::Symlink => Some(match pax.linkpath.take() {
                    Some(link) => link,
                    None => {
                        field_str(&block[157..257]).map_err(|reason| entry_error(&path, reason))?
                    }
                }),
                _ => None,
            };
            if kind != EntryKind::File && size != 0 {
                return Err(entry_error(&path, "a symlink or directory with content"));
            }
            if size > self.limits.max_file_bytes {
                return Err(entry_error(
                    &path,
                    format!(
                        "is {size} bytes, more than the {} a workspace file may have",
                        self.limits.max_file_bytes
                    ),
                ));
            }
            if pax.delete && size != 0 {
                return Err(entry_error(&path, "a deletion with content"));
            }
            self.remaining = size;
            self.padding = padding_of(size);
            return Ok(Some(Header {
                path,
                kind,
                mode,
                size,
                mtime_s,
                mtime_ns,
                link,
                delete: pax.delete,
            }));
        }
    }

    /// Reads the current entry's content into `out`; returns the bytes copied (its size).
    pub fn read_content(&mut self, out: &mut impl Write) -> Result<u64, TarError> {
        let size = self.remaining;
        let mut buf = vec![0u8; 64 << 10];
        while self.remaining > 0 {
            let want = buf.len().min(self.remaining as usize);
            let n = self.inner.read(&mut buf[..want])?;
            if n == 0 {
                return Err(TarError::Truncated("a file's content"));
            }
            out.write_all(&buf[..n])?;
            self.remaining -= n as u64;
        }
        skip(&mut self.inner, self.padding, "a file's padding")?;
        self.padding = 0;
        Ok(size)
    }

    fn skip_rest(&mut self) -> Result<(), TarError> {
        let rest = self.remaining + self.padding;
        skip(&mut self.inner, rest, "a file's content")?;
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }
}

#[derive(Default)]
struct PaxFields {
    path: Option<String>,
    linkpath: Option<String>,
    size: Option<u64>,
    mtime: Option<(i64, u32)>,
    delete: bool,
}

fn parse_pax(data: &[u8]) -> Result<PaxFields, String> {
    let mut fields = PaxFields::default();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record with a bad length")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a PAX record whose length does not fit".into());
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record without '='")?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| "a PAX key that is not UTF-8")?;
        let value = &record[eq + 1..];
        let text = || {
            std::str::from_utf8(value)
                .map(str::to_owned)
                .map_err(|_| format!("PAX {key} is not UTF-8"))
        };
        match key {
            "path" => fields.path = Some(text()?),
            "linkpath" => fields.linkpath = Some(text()?),
            "size" => fields.size = Some(text()?.parse().map_err(|_| "PAX size is not a number")?),
            "mtime" => fields.mtime = Some(parse_pax_time(&text()?)?),
            DELETE_KEYWORD => fields.delete = value == b"1",
            // atime, ctime, uid, gid, uname, gname, SCHILY.*: nothing a workspace keeps.
            _ => {}
        }
    }
    Ok(fields)
}

fn parse_pax_time(text: &str) -> Result<(i64, u32), String> {
    let bad = || format!("PAX mtime {text:?} is not a time");
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse::<u32>().map_err(|_| bad())?
    };
    if secs < 0 && nanos != 0 {
        // Negative fractional times are rare and ambiguous between writers; refuse them.
        return Err(bad());
    }
    Ok((secs, nanos))
}

fn header_path(block: &[u8; BLOCK]) -> Result<String, String> {
    let name = field_str(&block[0..100])?;
    let ustar = &block[257..263] == b"ustar\0";
    let prefix = if ustar {
        field_str(&block[345..500])?
    } else {
        String::new()
    };
    Ok(if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    })
}

fn field_str(field: &[u8]) -> Result<String, String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).map_err(|_| "a name that is not UTF-8".to_owned())
}

/// An octal field (NUL or space terminated), or GNU base-256 (high bit of the first byte).
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut value: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect::<String>();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(&text, 8).ok()
}

fn check_checksum(block: &[u8; BLOCK], index: u64) -> Result<(), TarError> {
    let stored = parse_number(&block[148..156]).ok_or(TarError::Checksum { index })?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum != stored {
        return Err(TarError::Checksum { index });
    }
    Ok(())
}

fn padding_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Reads one whole block; `false` at a clean end of stream (no byte of the block).
fn read_block(reader: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
    let mut filled = 0;
    while filled < BLOCK {
        match reader.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(TarError::Truncated("a header")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn read_exact_or_truncated(
    reader: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), TarError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => TarError::Truncated(what),
        _ => TarError::Io(e),
    })
}

fn skip(reader: &mut impl Read, count: u64, what: &'static str) -> Result<(), TarError> {
    let skipped = io::copy(&mut reader.take(count), &mut io::sink())?;
    if skipped < count {
        return Err(TarError::Truncated(what));
    }
    Ok(())
}

// ---- writer -----------------------------------------------------------------------------------

/// Writes entries; [`TarWriter::finish`] writes the end-of-archive marker.
pub struct TarWriter<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(inner: W) -> TarWriter<W> {
        TarWriter { inner, written: 0 }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Appends `header`, then exactly `header.size` bytes read from `content` (files only). A
    /// source that gives fewer bytes than announced (a file that shrank while being read) is
    /// an error: the stream would be out of step.
    pub fn append(&mut self, header: &Header, content: &mut dyn Read) -> io::Result<()> {
        let mut records = Vec::new();
        let short_name = split_ustar_name(&header.path);
        if short_name.is_none() {
            pax_record(&mut records, "path", header.path.as_bytes());
        }
        if let Some(link) = &header.link
            && link.len() > 100
        {
            pax_record(&mut records, "linkpath", link.as_bytes());
        }
        if header.mtime_ns != 0 || header.mtime_s < 0 || header.mtime_s > 0o77777777777 {
            let time = format!("{}.{:09}", header.mtime_s.max(0), header.mtime_ns);
            pax_record(&mut records, "mtime", time.as_bytes());
        }
        if header.size > 0o77777777777 {
            pax_record(&mut records, "size", header.size.to_string().as_bytes());
        }
        if header.delete {
            pax_record(&mut records, DELETE_KEYWORD, b"1");
        }
        if !records.is_empty() {
            let pax_header =
                raw_header("pax", b'x', 0o644, records.len() as u64, 0, "", ("", "pax"));
            self.write(&pax_header)?;
            self.write(&records)?;
            self.pad(records.len() as u64)?;
        }
        let typeflag = match header.kind {
            EntryKind::File => b'0',
            EntryKind::Symlink => b'2',
            EntryKind::Dir => b'5',
        };
        let (prefix, name) = short_name.unwrap_or(("", "pax-path"));
        let link = header.link.as_deref().unwrap_or("");
        let link = if link.len() > 100 { "" } else { link };
        let block = raw_header(
            &header.path,
            typeflag,
            header.mode & 0o7777,
            header.size.min(0o77777777777),
            header.mtime_s.clamp(0, 0o77777777777) as u64,
            link,
            (prefix, name),
        );
        self.write(&block)?;
        if header.kind == EntryKind::File && header.size > 0 {
            let copied = io::copy(&mut content.take(header.size), &mut self.inner)?;
            self.written += copied;
            if copied != header.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} gave {copied} of its {} bytes (changed while being read?)",
                        header.path, header.size
                    ),
                ));
            }
            self.pad(header.size)?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write(&[0u8; BLOCK * 2])?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let padding = padding_of(size) as usize;
        self.write(&[0u8; BLOCK][..padding])
    }
}

/// `path` as ustar's (prefix, name), when it fits those fields.
fn split_ustar_name(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    // The prefix takes up to 155 bytes, split at a '/'.
    let bytes = path.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] == b'/')
        .find(|&i| i <= 155 && bytes.len() - i - 1 <= 100 && i > 0)
        .map(|i| (&path[..i], &path[i + 1..]))
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // The length counts itself: find the length whose digits make the total right.
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn raw_header(
    _path: &str,
    typeflag: u8,
    mode: u32,
    size: u64,
    mtime: u64,
    link: &str,
    (prefix, name): (&str, &str),
) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    put(&mut block[0..100], name.as_bytes());
    put_octal(&mut block[100..108], u64::from(mode));
    put_octal(&mut block[108..116], 0);
    put_octal(&mut block[116..124], 0);
    put_octal(&mut block[124..136], size);
    put_octal(&mut block[136..148], mtime);
    block[156] = typeflag;
    put(&mut block[157..257], link.as_bytes());
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    put(&mut block[345..500], prefix.as_bytes());
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    put_octal(&mut block[148..155], sum);
    block[155] = b' ';
    block
}

fn put(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// Octal digits, zero-padded, NUL-terminated, filling the field.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> (Header, Vec<u8>) {
        (
            Header {
                path: path.into(),
                kind: EntryKind::File,
                mode: 0o755,
                size: content.len() as u64,
                mtime_s: 1_700_000_000,
                mtime_ns: 123_456_789,
                link: None,
                delete: false,
            },
            content.to_vec(),
        )
    }

    fn write(entries: &[(Header, Vec<u8>)]) -> Vec<u8> {
        let mut writer = TarWriter::new(Vec::new());
        for (header, content) in entries {
            writer.append(header, &mut content.as_slice()).unwrap();
        }
        writer.finish().unwrap()
    }

    fn read_all(bytes: &[u8], limits: Limits) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
        let mut reader = TarReader::new(bytes, limits);
        let mut out = Vec::new();
        while let Some(header) = reader.next_entry()? {
            let mut content = Vec::new();
            reader.read_content(&mut content)?;
            out.push((header, content));
        }
        Ok(out)
    }

    #[test]
    fn round_trips_long_names_links_nanoseconds_and_deletions() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let longer = "x/".repeat(200) + "end";
        let entries = vec![
            file("a.txt", b"hello"),
            file(&long, b"long"),
            file(&longer, &vec![7u8; 70_000]),
            (
                Header {
                    path: "link".into(),
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    size: 0,
                    mtime_s: 5,
                    mtime_ns: 0,
                    link: Some("t/".repeat(80)),
                    delete: false,
                },
                Vec::new(),
            ),
            (Header::deletion("gone.txt"), Vec::new()),
        ];
        let bytes = write(&entries);
        assert_eq!(read_all(&bytes, Limits::default()).unwrap(), entries);
    }

    #[test]
    fn gnu_tar_reads_what_the_writer_writes() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let bytes = write(&[file("a.txt", b"hello"), file(&long, b"long")]);
        let archive = dir.path().join("a.tar");
        std::fs::write(&archive, bytes).unwrap();
        let status = std::process::Command::new("tar")
            .args(["-xf", "a.tar"])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(dir.path().join(&long)).unwrap(), b"long");
    }

    #[test]
    fn a_stream_cut_short_or_damaged_is_refused() {
        let bytes = write(&[file("a.txt", &[1u8; 3000])]);
        for cut in [0usize, 100, 512, 1500, bytes.len() - 1024] {
            if cut == 0 {
                // An empty stream has no end-of-archive marker either.
                assert!(matches!(
                    read_all(&[], Limits::default()),
                    Err(TarError::Truncated(_))
                ));
                continue;
            }
            assert!(
                read_all(&bytes[..cut], Limits::default()).is_err(),
                "cut at {cut} accepted"
            );
        }
        let mut damaged = bytes.clone();
        damaged[10] ^= 1;
        assert!(matches!(
            read_all(&damaged, Limits::default()),
            Err(TarError::Checksum { .. })
        ));
    }

    #[test]
    fn oversized_files_and_pax_headers_are_refused_before_their_content_is_read() {
        let bytes = write(&[file("big", &[0u8; 5000])]);
        let limits = Limits {
            max_file_bytes: 4096,
            ..Limits::default()
        };
        let err = read_all(&bytes, limits).unwrap_err().to_string();
        assert!(err.contains("big") && err.contains("5000 bytes"), "{err}");

        // A PAX header announcing a gigabyte is refused from its header alone.
        let mut huge = raw_header("pax", b'x', 0o644, 1 << 30, 0, "", ("", "pax")).to_vec();
        huge.extend_from_slice(&[0u8; 1024]);
        let err = read_all(&huge, Limits::default()).unwrap_err().to_string();
        assert!(err.contains("PAX header of 1073741824 bytes"), "{err}");
    }

    #[test]
    fn other_entry_types_are_refused_by_name() {
        for (flag, what) in [
            (b'1', "hard link"),
            (b'3', "character device"),
            (b'4', "block device"),
            (b'6', "FIFO"),
            (b'g', "global PAX"),
            (b'L', "GNU long name"),
        ] {
            let mut bytes = raw_header("dev", flag, 0o644, 0, 0, "", ("", "dev")).to_vec();
            bytes.extend_from_slice(&[0u8; 1024]);
            let err = read_all(&bytes, Limits::default()).unwrap_err().to_string();
            assert!(err.contains("\"dev\"") && err.contains(what), "{err}");
        }
    }

    #[test]
    fn too_many_entries_are_refused() {
        let entries: Vec<_> = (0..5).map(|i| file(&format!("f{i}"), b"")).collect();
        let limits = Limits {
            max_entries: 4,
            ..Limits::default()
        };
        assert!(matches!(
            read_all(&write(&entries), limits),
            Err(TarError::TooManyEntries { max: 4 })
        ));
    }
}
