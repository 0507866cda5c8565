//! Newtype identifiers. Each prints in the form users type back into the CLI.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Position of an event in the log. The first event is `Seq(1)`; `Seq(0)` means "before the
/// first event" (an empty log, or "from the beginning" in a subscription).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Encode,
    Decode,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $inner:ty, $width:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode,
        )]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("{:0", $width, "x}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                if text.is_empty() || text.len() > $width {
                    return Err(ParseIdError { kind: stringify!($name), text: text.to_owned() });
                }
                <$inner>::from_str_radix(text, 16)
                    .map($name)
                    .map_err(|_| ParseIdError { kind: stringify!($name), text: text.to_owned() })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// Correlates every event one operation (or one request) causes.
    OpId, u64, 16
);
hex_id!(
    /// A VM's identity for life; its name can be reused after deletion, its id never is.
    VmId, u64, 16
);
hex_id!(
    /// Unique id of one event, stable across copies of the log.
    EventId, u128, 32
);

/// A text that was supposed to be an id and is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a valid {kind} (expected up to 16 hexadecimal digits)")]
pub struct ParseIdError {
    pub kind: &'static str,
    pub text: String,
}

/// A source of fresh ids: 64 random bits from the kernel mixed with a counter, so ids from one
/// process never repeat and ids from two processes practically never collide.
#[derive(Debug)]
pub struct IdGenerator {
    state: std::sync::atomic::AtomicU64,
}

impl IdGenerator {
    pub fn new() -> Self {
        Self::seeded(random_u64())
    }

    /// A deterministic generator, for tests and offline replays.
    pub fn seeded(seed: u64) -> Self {
        Self {
            state: std::sync::atomic::AtomicU64::new(seed),
        }
    }

    pub fn next_u64(&self) -> u64 {
        // splitmix64 over an atomic counter: cheap, lock-free, well distributed.
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn op_id(&self) -> OpId {
        OpId(self.next_u64())
    }

    pub fn vm_id(&self) -> VmId {
        VmId(self.next_u64())
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u64::from_le_bytes(bytes);
    }
    // Without /dev/urandom, time and pid still make collisions between processes unlikely.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((std::process::id() as u64) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = OpId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!("00abcdef01234567".parse::<OpId>().unwrap(), id);
        assert_eq!("abc".parse::<VmId>().unwrap(), VmId(0xabc));
        assert!("xyz".parse::<OpId>().is_err());
        assert!("".parse::<OpId>().is_err());
        assert!(
            "00000000000000000".parse::<OpId>().is_err(),
            "17 digits do not fit"
        );
    }

    #[test]
    fn generator_never_repeats_in_a_process() {
        let ids = IdGenerator::seeded(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(ids.next_u64()));
        }
    }
}
