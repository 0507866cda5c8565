//! Reading a pulled layer: a decompressed stream over a verified blob, as many times as the
//! caller likes.
//!
//! A [`LayerBlob`] holds an open file descriptor of the cached blob, not a path: a
//! `cache prune` that renames the cache aside and deletes it after the pull returned cannot
//! take the bytes away from an image being built (Linux keeps an unlinked file's data while a
//! descriptor is open). Each [`LayerBlob::open`] reads with positional reads from its own
//! offset, so two passes, or two readers at once, never disturb each other.
//!
//! Invariants of a [`LayerReader`]:
//! - the compression is the one the media type declares, and the blob's first bytes must carry
//!   that format's magic number (an "uncompressed" layer must carry neither gzip's nor zstd's);
//! - a truncated or corrupt compressed stream is an `InvalidData` error, never a short read;
//! - the compressed bytes are hashed as they are read, and the end of the stream (a read that
//!   returns 0, or [`LayerReader::finish`]) is only reported once the whole blob was read and
//!   its sha256 and size still match the descriptor. The blob was verified when it entered the
//!   cache; this re-check costs no extra IO (the reader reads every byte anyway) and catches a
//!   cache file changed since (disk corruption, a user's edit).

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::digest::Digest;

/// How much decompressed data [`LayerReader::finish`] accepts after the point where the
/// consumer stopped reading (a tar stream ends with zero blocks padded to a record; 1 MiB is
/// far above any real padding, and bounds the work a hostile tail can cause).
pub const MAX_TRAILING_BYTES: u64 = 1024 * 1024;

/// The read buffer between the blob file and the decompressor.
const READ_BUFFER_BYTES: usize = 256 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A layer's compression, as its media type declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

fn sniff(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&GZIP_MAGIC) {
        Some(Compression::Gzip)
    } else if head.starts_with(&ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// What is wrong with a layer's content. Readers return it inside an `io::Error` of kind
/// `InvalidData` (`error.get_ref()` downcasts to it).
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest} is declared {declared} but its content {found}")]
    WrongFormat {
        digest: Digest,
        declared: Compression,
        found: String,
    },
    #[error("layer {digest} is a corrupt or truncated {compression} stream: {source}")]
    Corrupt {
        digest: Digest,
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {digest} in the blob cache no longer matches its descriptor (read {read_bytes} of \
         {size} bytes, sha256 {actual}): the cache file changed after it was verified; run \
         `banger image cache prune` and pull again"
    )]
    CacheChanged {
        digest: Digest,
        size: u64,
        read_bytes: u64,
        actual: Digest,
    },
    #[error(
        "layer {digest} has more than {MAX_TRAILING_BYTES} bytes of data after the end of its \
         archive"
    )]
    TrailingData { digest: Digest },
}

impl From<LayerError> for io::Error {
    fn from(error: LayerError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

/// One layer of a pulled image, in the order the manifest lists them.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    digest: Digest,
    size: u64,
    media_type: String,
    compression: Compression,
    file: Arc<File>,
}

impl LayerBlob {
    /// `file` must be the verified blob `digest` of `size` bytes.
    pub(crate) fn new(
        digest: Digest,
        size: u64,
        media_type: String,
        compression: Compression,
        file: Arc<File>,
    ) -> LayerBlob {
        LayerBlob {
            digest,
            size,
            media_type,
            compression,
            file,
        }
    }

    /// The digest of the compressed blob (what the manifest names).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The compressed size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// A fresh decompressed stream from the layer's first byte: the tar archive. Blocking IO:
    /// call it, and read it, off the async runtime (`spawn_blocking`).
    pub fn open(&self) -> io::Result<LayerReader> {
        let mut head = [0u8; 4];
        let mut filled = 0;
        while filled < head.len() {
            match self.file.read_at(&mut head[filled..], filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let head = &head[..filled];
        let found = sniff(head);
        if found != (self.compression != Compression::None).then_some(self.compression) {
            let found = match found {
                Some(format) => format!("is {format}"),
                None if head.is_empty() => "is empty".to_owned(),
                None => format!(
                    "starts with {}, which is neither gzip nor zstd",
                    head.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            };
            return Err(LayerError::WrongFormat {
                digest: self.digest.clone(),
                declared: self.compression,
                found,
            }
            .into());
        }
        let source = BufReader::with_capacity(
            READ_BUFFER_BYTES,
            BlobReader {
                file: Arc::clone(&self.file),
                offset: 0,
                hasher: Sha256::new(),
            },
        );
        let decoder = match self.compression {
            Compression::None => Decoder::Plain(source),
            Compression::Gzip => {
                Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(source)))
            }
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(source)?),
        };
        Ok(LayerReader {
            decoder,
            digest: self.digest.clone(),
            size: self.size,
            compression: self.compression,
            decompressed_bytes: 0,
            state: State::Reading,
        })
    }
}

/// Reads the blob file from its own offset, hashing what it reads.
struct BlobReader {
    file: Arc<File>,
    offset: u64,
    hasher: Sha256,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

enum Decoder {
    Plain(BufReader<BlobReader>),
    /// Boxed: zlib-rs' inflate state makes it twice the size of the others.
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<BlobReader>>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<BlobReader>>),
}

impl Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(reader) => reader.read(buf),
            Decoder::Gzip(reader) => reader.read(buf),
            Decoder::Zstd(reader) => reader.read(buf),
        }
    }

    fn blob_ref(&self) -> &BlobReader {
        match self {
            Decoder::Plain(reader) => reader.get_ref(),
            Decoder::Gzip(reader) => reader.get_ref().get_ref(),
            Decoder::Zstd(reader) => reader.get_ref().get_ref(),
        }
    }

    fn blob(&mut self) -> &mut BlobReader {
        match self {
            Decoder::Plain(reader) => reader.get_mut(),
            Decoder::Gzip(reader) => reader.get_mut().get_mut(),
            Decoder::Zstd(reader) => reader.get_mut().get_mut(),
        }
    }
}

#[derive(Debug)]
enum State {
    Reading,
    Verified,
    /// A reader that failed keeps failing, rather than resuming mid-stream.
    Failed(String),
}

/// The decompressed bytes of one layer (see the module documentation for its guarantees).
pub struct LayerReader {
    decoder: Decoder,
    digest: Digest,
    size: u64,
    compression: Compression,
    decompressed_bytes: u64,
    state: State,
}

impl LayerReader {
    /// Decompressed bytes returned so far.
    pub fn decompressed_bytes(&self) -> u64 {
        self.decompressed_bytes
    }

    /// Bytes of the blob (compressed) read so far, read-ahead included: how far through the
    /// layer a reader is, against [`LayerBlob::size`], for progress.
    pub fn compressed_bytes(&self) -> u64 {
        self.decoder.blob_ref().offset
    }

    /// Ends a read that stopped before the end of the stream (a tar reader stops at the
    /// archive's end marker): reads what is left, which may be at most
    /// [`MAX_TRAILING_BYTES`] once decompressed, and checks the blob's digest. A consumer that
    /// read until a read returned 0 has had that check already; calling this is then
    /// harmless. Returns the layer's decompressed size.
    pub fn finish(mut self) -> io::Result<u64> {
        let stopped_at = self.decompressed_bytes;
        let mut sink = vec![0u8; 64 * 1024];
        while self.read(&mut sink)? > 0 {
            if self.decompressed_bytes - stopped_at > MAX_TRAILING_BYTES {
                let error = LayerError::TrailingData {
                    digest: self.digest.clone(),
                };
                self.state = State::Failed(error.to_string());
                return Err(error.into());
            }
        }
        Ok(self.decompressed_bytes)
    }

    fn verify(&mut self) -> io::Result<()> {
        // The decompressor may stop before the file's end (it buffers ahead, and a stream's
        // end says nothing of what follows); read the rest so the digest covers every byte,
        // reading at most one byte past the declared size.
        let limit = self.size + 1;
        let blob = self.decoder.blob();
        let mut chunk = vec![0u8; 64 * 1024];
        while blob.offset < limit {
            let want = chunk.len().min((limit - blob.offset) as usize);
            if blob.read(&mut chunk[..want])? == 0 {
                break;
            }
        }
        let read_bytes = blob.offset;
        let actual = Digest::from_hasher(std::mem::take(&mut blob.hasher));
        if read_bytes != self.size || actual != self.digest {
            return Err(LayerError::CacheChanged {
                digest: self.digest.clone(),
                size: self.size,
                read_bytes,
                actual,
            }
            .into());
        }
        Ok(())
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Reading => {}
            State::Verified => return Ok(0),
            State::Failed(message) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, message.clone()));
            }
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.decoder.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(source) => {
                let error = LayerError::Corrupt {
                    digest: self.digest.clone(),
                    compression: self.compression,
                    source,
                };
                self.state = State::Failed(error.to_string());
                return Err(error.into());
            }
        };
        if n == 0 {
            if let Err(error) = self.verify() {
                self.state = State::Failed(error.to_string());
                return Err(error);
            }
            self.state = State::Verified;
            return Ok(0);
        }
        self.decompressed_bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A small tar archive with one file, as a layer's uncompressed content.
    fn tar_bytes() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        // Text that compresses well but not to nothing, so every stream has real blocks.
        let content: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i} of the test file, {}\n", i * 7919 % 1000).into_bytes())
            .collect();
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "a/file", content.as_slice())
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::encode_all(bytes, 3).unwrap()
    }

    fn blob(bytes: &[u8], compression: Compression) -> LayerBlob {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        LayerBlob::new(
            Digest::of(bytes),
            bytes.len() as u64,
            "test".into(),
            compression,
            Arc::new(file),
        )
    }

    fn read_all(layer: &LayerBlob) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        layer.open()?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn layer_error(error: &io::Error) -> &LayerError {
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<LayerError>())
            .unwrap_or_else(|| panic!("not a LayerError: {error}"))
    }

    #[test]
    fn decompresses_each_format_twice() {
        let tar = tar_bytes();
        for (bytes, compression) in [
            (tar.clone(), Compression::None),
            (gzip(&tar), Compression::Gzip),
            (zstd(&tar), Compression::Zstd),
        ] {
            let layer = blob(&bytes, compression);
            // Two passes, the second while the first is still open.
            let mut first = layer.open().unwrap();
            assert!(read_all(&layer).unwrap() == tar, "{compression}");
            let mut again = Vec::new();
            first.read_to_end(&mut again).unwrap();
            assert!(again == tar, "{compression}");
            // A tar reader that stops at the end marker, then finish().
            let mut reader = layer.open().unwrap();
            let mut archive = tar::Archive::new(&mut reader);
            assert_eq!(archive.entries().unwrap().count(), 1);
            assert_eq!(reader.finish().unwrap(), tar.len() as u64);
        }
    }

    #[test]
    fn truncated_streams_are_errors_not_short_reads() {
        let tar = tar_bytes();
        for (bytes, compression) in [
            (gzip(&tar), Compression::Gzip),
            (zstd(&tar), Compression::Zstd),
        ] {
            for cut in [bytes.len() / 2, bytes.len() - 1, 10] {
                // The digest is of the truncated bytes: a hostile registry serves what it likes.
                let layer = blob(&bytes[..cut], compression);
                let error = read_all(&layer).unwrap_err();
                assert_eq!(
                    error.kind(),
                    io::ErrorKind::InvalidData,
                    "{compression} {cut}"
                );
                assert!(
                    matches!(layer_error(&error), LayerError::Corrupt { .. }),
                    "{compression} cut at {cut}: {error}"
                );
            }
        }
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let tar = tar_bytes();
        // gzip: damaged data fails its inflate or its CRC-32. zstd: a frame header with a
        // reserved bit set (frames need not carry a checksum, so damaged data alone may not be
        // detectable by the decoder; the digest is what guards content).
        let mut damaged_gzip = gzip(&tar);
        let middle = damaged_gzip.len() / 2;
        for byte in &mut damaged_gzip[middle..middle + 64] {
            *byte ^= 0x5a;
        }
        let mut damaged_zstd = zstd(&tar);
        damaged_zstd[4] |= 0x08;
        for (bytes, compression) in [
            (damaged_gzip, Compression::Gzip),
            (damaged_zstd, Compression::Zstd),
        ] {
            let layer = blob(&bytes, compression);
            let error = read_all(&layer).unwrap_err();
            assert!(
                matches!(layer_error(&error), LayerError::Corrupt { .. }),
                "{compression}: {error}"
            );
        }
    }

    #[test]
    fn the_magic_number_must_match_the_media_type() {
        let tar = tar_bytes();
        let cases = [
            (gzip(&tar), Compression::Zstd, "is gzip"),
            (zstd(&tar), Compression::Gzip, "is zstd"),
            (gzip(&tar), Compression::None, "is gzip"),
            (tar.clone(), Compression::Gzip, "neither gzip nor zstd"),
            (Vec::new(), Compression::Zstd, "is empty"),
        ];
        for (bytes, declared, found) in cases {
            let error = blob(&bytes, declared).open().err().unwrap();
            assert!(error.to_string().contains(found), "{declared}: {error}");
        }
        // An empty uncompressed layer is an empty stream.
        assert_eq!(read_all(&blob(&[], Compression::None)).unwrap(), b"");
    }

    #[test]
    fn a_cache_file_changed_after_verification_is_caught_at_the_end() {
        let tar = tar_bytes();
        let bytes = gzip(&tar);
        let mut layer = blob(&bytes, Compression::Gzip);
        // As if the file's bytes had changed: they no longer have the digest it was stored by.
        layer.digest = Digest::of(b"something else");
        let error = read_all(&layer).unwrap_err();
        assert!(
            matches!(layer_error(&error), LayerError::CacheChanged { .. }),
            "{error}"
        );
        // A file that grew after verification is caught too.
        let mut grown = blob(&bytes, Compression::Gzip);
        grown.size -= 1;
        let error = read_all(&grown).unwrap_err();
        assert!(matches!(
            layer_error(&error),
            LayerError::CacheChanged { .. }
        ));
    }

    #[test]
    fn trailing_data_after_the_archive_is_bounded() {
        let mut tar = tar_bytes();
        tar.extend(std::iter::repeat_n(
            0u8,
            (MAX_TRAILING_BYTES + 10_000) as usize,
        ));
        let layer = blob(&zstd(&tar), Compression::Zstd);
        let mut reader = layer.open().unwrap();
        let mut archive = tar::Archive::new(&mut reader);
        assert_eq!(archive.entries().unwrap().count(), 1);
        let error = reader.finish().unwrap_err();
        assert!(matches!(
            layer_error(&error),
            LayerError::TrailingData { .. }
        ));
    }
}
