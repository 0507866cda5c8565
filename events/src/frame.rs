//! The stored form of one event: a fixed 16-byte header, then the bincode body.
//!
//! ```text
//!  0      4    5    6      8        12       16
//!  ┌──────┬────┬────┬──────┬────────┬────────┬───────────────┐
//!  │ BGEV │ v1 │ 0  │ kind │ length │ crc32  │ bincode body  │
//!  └──────┴────┴────┴──────┴────────┴────────┴───────────────┘
//!  magic   ver  rsv  u16le  u32le    u32le    `length` bytes
//! ```
//!
//! The crc32 (crc32fast, IEEE) covers the first 12 header bytes and the body, so a flipped bit
//! anywhere in a frame is caught. The kind in the header duplicates the one in the body: it lets
//! a reader say "this event kind is unknown to this build" without guessing at a body it cannot
//! parse, and the decoder checks that the two agree.

use crate::event::{Envelope, Event, SCHEMA_VERSION};
use crate::ids::Seq;

pub const MAGIC: [u8; 4] = *b"BGEV";
pub const FRAME_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
/// No event is anywhere near this; a larger length field means corruption, not a big event.
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

/// bincode's limit stops a damaged length prefix inside a body from asking for a huge
/// allocation before the decode fails.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY_LEN>()
}

/// Why a frame could not be turned back into an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes are damaged: this is corruption.
    #[error("damaged frame: {0}")]
    Damaged(String),
    /// The frame is intact but holds an event kind this build does not know: a newer banger
    /// wrote it.
    #[error(
        "event kind {kind} is unknown to this build of banger (written by a newer version?); upgrade banger to read this log"
    )]
    UnknownKind { kind: u16 },
    /// The frame is intact but its envelope layout is newer than this build.
    #[error(
        "event schema version {found} is newer than this build understands ({SCHEMA_VERSION}); upgrade banger"
    )]
    NewerSchema { found: u16 },
}

/// Encodes an envelope into a frame.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let mut frame = vec![0u8; HEADER_LEN];
    bincode::encode_into_std_write(envelope, &mut frame, config())
        .expect("encoding into a Vec cannot fail");
    let body_len = (frame.len() - HEADER_LEN) as u32;
    frame[0..4].copy_from_slice(&MAGIC);
    frame[4] = FRAME_VERSION;
    frame[5] = 0;
    frame[6..8].copy_from_slice(&envelope.event.kind().to_le_bytes());
    frame[8..12].copy_from_slice(&body_len.to_le_bytes());
    let crc = checksum(&frame[0..12], &frame[HEADER_LEN..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(body);
    hasher.finalize()
}

/// Decodes a frame, checking everything that can be checked: magic, version, length, crc,
/// known kind, schema version, a body that decodes completely and matches the header's kind.
/// Superseded payload layouts are upgraded ([`Event::upgrade`]).
pub fn decode(frame: &[u8]) -> Result<Envelope, FrameError> {
    if frame.len() < HEADER_LEN {
        return Err(FrameError::Damaged(format!(
            "{} bytes is shorter than a frame header",
            frame.len()
        )));
    }
    if frame[0..4] != MAGIC {
        return Err(FrameError::Damaged("bad magic".into()));
    }
    if frame[4] != FRAME_VERSION || frame[5] != 0 {
        return Err(FrameError::Damaged(format!(
            "unknown frame version {}.{}",
            frame[4], frame[5]
        )));
    }
    let kind = u16::from_le_bytes([frame[6], frame[7]]);
    let body_len = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]) as usize;
    if body_len > MAX_BODY_LEN || frame.len() != HEADER_LEN + body_len {
        return Err(FrameError::Damaged(format!(
            "length field says {body_len} body bytes, frame holds {}",
            frame.len().saturating_sub(HEADER_LEN)
        )));
    }
    let stored_crc = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]);
    let body = &frame[HEADER_LEN..];
    if checksum(&frame[0..12], body) != stored_crc {
        return Err(FrameError::Damaged("crc32 mismatch".into()));
    }
    if Event::kind_name(kind).is_none() {
        return Err(FrameError::UnknownKind { kind });
    }
    let (mut envelope, used): (Envelope, usize) = bincode::decode_from_slice(body, config())
        .map_err(|e| FrameError::Damaged(format!("body does not decode: {e}")))?;
    if used != body.len() {
        return Err(FrameError::Damaged(format!(
            "{} trailing bytes after the body",
            body.len() - used
        )));
    }
    if envelope.schema_version > SCHEMA_VERSION {
        return Err(FrameError::NewerSchema {
            found: envelope.schema_version,
        });
    }
    if envelope.event.kind() != kind {
        return Err(FrameError::Damaged(format!(
            "header says kind {kind}, body holds kind {}",
            envelope.event.kind()
        )));
    }
    envelope.event = envelope.event.upgrade();
    Ok(envelope)
}

/// Decodes a frame stored under `key`, and checks that the envelope says the same sequence
/// number as the key it was found under.
pub fn decode_at(key: Seq, frame: &[u8]) -> Result<Envelope, FrameError> {
    let envelope = decode(frame)?;
    if envelope.seq != key {
        return Err(FrameError::Damaged(format!(
            "stored under seq {key} but says seq {}",
            envelope.seq
        )));
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use crate::ids::*;

    pub(crate) fn sample(seq: u64) -> Envelope {
        Envelope {
            seq: Seq(seq),
            event_id: EventId(seq as u128 * 77),
            op_id: Some(OpId(5)),
            cause: None,
            at_unix_ms: 1_700_000_000_000,
            schema_version: SCHEMA_VERSION,
            event: Event::ImageRemoved(ImageRemoved {
                name: "debian".into(),
            }),
        }
    }

    #[test]
    fn round_trips() {
        let envelope = sample(3);
        let frame = encode(&envelope);
        assert_eq!(decode_at(Seq(3), &frame).unwrap(), envelope);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let frame = encode(&sample(9));
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    decode_at(Seq(9), &damaged).is_err(),
                    "flip of bit {bit} in byte {byte} was accepted"
                );
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let frame = encode(&sample(1));
        for len in 0..frame.len() {
            assert!(decode(&frame[..len]).is_err());
        }
    }

    #[test]
    fn unknown_kind_is_reported_as_such() {
        let mut frame = encode(&sample(1));
        frame[6..8].copy_from_slice(&999u16.to_le_bytes());
        let crc = checksum(&frame[0..12], &frame[HEADER_LEN..]);
        frame[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&frame), Err(FrameError::UnknownKind { kind: 999 }));
    }

    #[test]
    fn old_payload_layout_decodes_and_upgrades() {
        let mut envelope = sample(4);
        envelope.event = Event::ImageRegisteredV1(ImageRegisteredV1 {
            name: "alpine".into(),
            rootfs_path: "/images/alpine.ext4".into(),
            size_bytes: 1 << 20,
        });
        let frame = encode(&envelope);
        assert_eq!(
            u16::from_le_bytes([frame[6], frame[7]]),
            40,
            "stored under the old kind code"
        );
        let decoded = decode(&frame).unwrap();
        assert_eq!(
            decoded.event,
            Event::ImageRegistered(ImageRegistered {
                name: "alpine".into(),
                rootfs_path: "/images/alpine.ext4".into(),
                kernel: None,
                size_bytes: 1 << 20,
                sha256: String::new(),
                source: "register:/images/alpine.ext4".into(),
            })
        );
    }

    #[test]
    fn seq_mismatch_between_key_and_body_is_damage() {
        let frame = encode(&sample(5));
        assert!(matches!(
            decode_at(Seq(6), &frame),
            Err(FrameError::Damaged(_))
        ));
    }
}
