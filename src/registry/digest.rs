//! Content digests as banger accepts them: `sha256:` and 64 lowercase hex digits.
//!
//! The OCI image spec also allows `sha512` (and registered algorithms beyond); banger refuses
//! them with an error that says so, rather than half-supporting them: the blob cache, the
//! verifiers and every digest in the log are sha256.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A verified-shape sha256 digest (`sha256:<64 lowercase hex>`). Holding one says nothing
/// about any content; it only promises the text is well formed, so it can name a cache file.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm (expected sha256:<64 hex digits>)")]
    NoAlgorithm(String),
    #[error(
        "digest {digest:?} uses {algorithm}, which banger does not support (only sha256 digests)"
    )]
    UnsupportedAlgorithm { digest: String, algorithm: String },
    #[error("digest {0:?} is not 64 lowercase hex digits after sha256:")]
    BadHex(String),
}

impl Digest {
    /// Parses `sha256:<hex>`; anything else is a [`DigestError`].
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(DigestError::NoAlgorithm(shorten(text)));
        };
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                digest: shorten(text),
                algorithm: shorten(algorithm),
            });
        }
        let well_formed = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(DigestError::BadHex(shorten(text)));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest {
            hex: format!("{:x}", hasher.finalize()),
        }
    }

    /// The 64 hex digits, without the algorithm: the blob's file name in the cache.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker` shows layers in progress output.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

/// Error messages quote what a registry sent; a hostile one could send megabytes.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 100;
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head}…")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let digest = Digest::parse(EMPTY).unwrap();
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.short(), "e3b0c44298fc");
        assert_eq!(
            serde_json::to_string(&digest).unwrap(),
            format!("\"{EMPTY}\"")
        );
    }

    #[test]
    fn refuses_other_algorithms_and_bad_hex() {
        assert!(matches!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse("deadbeef"),
            Err(DigestError::NoAlgorithm(_))
        ));
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            "sha256:../../etc/passwd".to_owned(),
        ] {
            assert!(
                matches!(Digest::parse(&bad), Err(DigestError::BadHex(_))),
                "{bad}"
            );
        }
        let huge = format!("sha256:{}", "x".repeat(1 << 20));
        assert!(Digest::parse(&huge).unwrap_err().to_string().len() < 300);
    }
}
