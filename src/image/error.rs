//! What can go wrong while flattening layers into an ext4 image.
//!
//! Every error leaves nothing behind: the builder removes its partial file before the error
//! reaches the caller (see `builder.rs`).

use std::io;
use std::path::PathBuf;

/// Why a flatten failed.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// An entry of a layer was refused; the image would not be faithful or safe.
    #[error("layer {layer}: entry {entry}: {reason}")]
    Refused {
        /// Index of the layer (0 for the first one applied).
        layer: usize,
        /// The entry's path as the tar stream spelled it, with unprintable bytes escaped.
        entry: String,
        reason: Refusal,
    },
    /// The tar stream itself is damaged: a bad header checksum, a malformed PAX record, a
    /// truncated entry or a stream that ends without the end-of-archive marker.
    #[error("layer {layer}: corrupt or truncated tar stream at byte {offset}: {detail}")]
    CorruptTar {
        layer: usize,
        offset: u64,
        detail: String,
    },
    /// Reading a layer's stream failed (a decompressor reporting corrupt input ends up here).
    #[error("layer {layer}: reading the layer stream failed at byte {offset}")]
    ReadLayer {
        layer: usize,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The content (plus the filesystem's own metadata and the headroom) does not fit in the
    /// configured maximum image size.
    #[error(
        "the image would exceed the maximum image size of {max_bytes} bytes; raise the limit if the image is expected to be this large"
    )]
    TooLarge { max_bytes: u64 },
    /// The image has more inodes than the configured maximum.
    #[error("the image would hold more than the maximum of {max_inodes} inodes")]
    TooManyInodes { max_inodes: u64 },
    /// The output path already exists; the builder never overwrites an image.
    #[error("{path} already exists; remove it first or choose another path")]
    OutputExists { path: PathBuf },
    /// The builder already failed (and removed its partial image); start a new one.
    #[error("this image builder failed earlier and removed its partial image")]
    Discarded,
    /// The options cannot describe a valid filesystem.
    #[error("invalid flatten options: {0}")]
    InvalidOptions(String),
    /// Creating, writing, syncing or publishing the image file failed.
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why one entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a `..` component could escape the root; no image producer writes one")]
    DotDotComponent,
    #[error("a path component is longer than ext4's 255 bytes")]
    NameTooLong,
    #[error("a name contains a NUL byte, which no filesystem name can hold")]
    NulInName,
    #[error(
        "a name contains a control character (newline, escape, …), which breaks line-oriented tools and terminals"
    )]
    ControlCharacterInName,
    #[error("the path is longer than the kernel's PATH_MAX (4096 bytes with its NUL)")]
    PathTooLong,
    #[error("its parent {parent} is a symbolic link; writing through it is refused")]
    SymlinkParent { parent: String },
    #[error("its parent {parent} exists and is not a directory")]
    ParentNotDirectory { parent: String },
    #[error("the root directory can only be restated as a directory")]
    RootNotDirectory,
    #[error("hard link target {target} does not exist (yet) in the image")]
    HardlinkTargetMissing { target: String },
    #[error("hard link target {target} is a directory")]
    HardlinkToDirectory { target: String },
    #[error("hard link target {target} is the root")]
    HardlinkToRoot { target: String },
    #[error("the file would have more than 65000 hard links, ext4's limit")]
    TooManyLinks,
    #[error("a whiteout names no valid entry (`.wh.` alone, `.`, `..`, or a nested whiteout)")]
    InvalidWhiteout,
    #[error("a whiteout cannot stand for the root")]
    WhiteoutOfRoot,
    #[error("the symbolic link target is empty")]
    EmptySymlinkTarget,
    #[error("the symbolic link target is longer than 4095 bytes")]
    SymlinkTargetTooLong,
    #[error("the symbolic link target contains a NUL byte")]
    NulInSymlinkTarget,
    #[error("unsupported tar entry type {0:?}")]
    UnsupportedEntryType(char),
    #[error("GNU sparse entries are not supported")]
    SparseEntry,
    #[error("device number {major}:{minor} does not fit Linux's 12-bit major and 20-bit minor")]
    DeviceNumberOutOfRange { major: u64, minor: u64 },
    #[error("owner id {0} does not fit in 32 bits")]
    IdOutOfRange(u64),
    #[error("timestamp {0} s is outside what ext4 can store (1901–2446)")]
    TimestampOutOfRange(i64),
    #[error(
        "extended attribute {name}: unknown namespace (ext4 holds user., trusted., security. and system.)"
    )]
    XattrNamespace { name: String },
    #[error("extended attribute {name}: {detail}")]
    XattrInvalid { name: String, detail: String },
    #[error("the extended attributes do not fit in one 4 KiB block")]
    XattrsTooLarge,
    #[error("the file is larger than ext4 can hold with 4 KiB blocks (16 TiB)")]
    FileTooLarge,
}

/// Renders a path from a tar stream for an error message: printable ASCII as is, every other
/// byte as `\xNN`, so a hostile name cannot inject newlines or escape sequences into logs.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if (0x20..0x7f).contains(&byte) && byte != b'\\' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}
