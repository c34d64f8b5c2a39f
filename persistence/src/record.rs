//! The stream record: the unit of durability and of the public change-data-capture format.
//!
//! ```text
//! offset size field
//!      0    4 magic "SLD1"
//!      4    1 format version (1)
//!      5    1 flags (0)
//!      6    2 reserved (0)
//!      8    4 shard (u32 LE)
//!     12    8 owner epoch (u64 LE)
//!     20    8 first LSN (u64 LE)
//!     28    8 last LSN (u64 LE), >= first LSN
//!     36   32 hash of the shard's previous record (BLAKE3 of its bytes; zeros for the first)
//!     68    4 payload length (u32 LE)
//!     72    4 CRC32C of bytes 0..72 followed by the payload
//!     76    n payload (events, opaque here: see docs/wal-format.md)
//! ```
//! A record's own hash is the BLAKE3 hash of all its bytes; the next record of the shard carries
//! it, so a dropped, reordered or altered record breaks the chain.

use crate::limits::WAL_RECORD_BYTES_MAX;

/// Log sequence number: position of an event in its shard's stream, from 1. 0 means "before
/// everything".
pub type Lsn = u64;

/// BLAKE3 hash of a record's bytes.
pub type RecordHash = [u8; 32];

/// The four bytes every record starts with.
pub const MAGIC: [u8; 4] = *b"SLD1";
/// The record format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_BYTES: usize = 76;

/// A decoded, verified record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The shard whose stream holds the record.
    pub shard: u32,
    /// The owner epoch of the node that wrote it.
    pub epoch: u64,
    /// LSN of the first event in the payload.
    pub first_lsn: Lsn,
    /// LSN of the last event in the payload.
    pub last_lsn: Lsn,
    /// Hash of the previous record of the shard.
    pub prev_hash: RecordHash,
    /// Hash of this record's bytes.
    pub hash: RecordHash,
    /// The events, encoded by the engine.
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the payload length announces (a torn write, when at the
    /// end of a file).
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the record needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The bytes do not start with the magic.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported record format version {0}")]
    UnsupportedVersion(u8),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// Header fields are inconsistent (LSN range, length over the limit).
    #[error("malformed header: {0}")]
    Malformed(&'static str),
}

/// An encoded record ready to append, with the header facts a backend needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRecord {
    /// The record's bytes (header and payload).
    pub bytes: Vec<u8>,
    /// LSN of the first event.
    pub first_lsn: Lsn,
    /// LSN of the last event.
    pub last_lsn: Lsn,
    /// Hash of the previous record of the shard.
    pub prev_hash: RecordHash,
    /// Hash of this record's bytes.
    pub hash: RecordHash,
}

/// Encodes a record.
pub fn encode(
    shard: u32,
    epoch: u64,
    first_lsn: Lsn,
    last_lsn: Lsn,
    prev_hash: &RecordHash,
    payload: &[u8],
) -> EncodedRecord {
    assert!(
        first_lsn >= 1 && first_lsn <= last_lsn,
        "lsn range {first_lsn}..={last_lsn}"
    );
    assert!(
        HEADER_BYTES + payload.len() <= WAL_RECORD_BYTES_MAX,
        "record over the limit"
    );
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.push(0);
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&shard.to_le_bytes());
    bytes.extend_from_slice(&epoch.to_le_bytes());
    bytes.extend_from_slice(&first_lsn.to_le_bytes());
    bytes.extend_from_slice(&last_lsn.to_le_bytes());
    bytes.extend_from_slice(prev_hash);
    // Checked by the assertion above: the payload is below 1 MiB.
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&bytes);
    crc = crc32c::crc32c_append(crc, payload);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(payload);
    let hash = *blake3::hash(&bytes).as_bytes();
    // Assert in pairs: what we wrote must read back as the same record.
    debug_assert_eq!(
        decode(&bytes).map(|(r, n)| (r.first_lsn, r.last_lsn, n)),
        Ok((first_lsn, last_lsn, bytes.len()))
    );
    EncodedRecord {
        bytes,
        first_lsn,
        last_lsn,
        prev_hash: *prev_hash,
        hash,
    }
}

/// Decodes the record at the start of `bytes`, verifying its checksum. Returns the record and
/// the number of bytes it occupies.
pub fn decode(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
    let (mut record, total) = decode_checked(bytes)?;
    record.payload = bytes[HEADER_BYTES..total].to_vec();
    Ok((record, total))
}

/// [`decode`], but the record's payload is left empty: its header and hash, checked, and the
/// bytes it occupies, without a copy of its events. Indexing a segment needs no more (a copy of
/// every payload was most of what opening a stream of 100 MB allocated).
pub fn decode_checked(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
    if bytes.len() < HEADER_BYTES {
        return Err(DecodeError::Truncated {
            need: HEADER_BYTES,
            have: bytes.len(),
        });
    }
    if bytes[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[4]));
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let payload_len = u32_at(68) as usize;
    if HEADER_BYTES + payload_len > WAL_RECORD_BYTES_MAX {
        return Err(DecodeError::Malformed("payload length over the limit"));
    }
    let total = HEADER_BYTES + payload_len;
    if bytes.len() < total {
        return Err(DecodeError::Truncated {
            need: total,
            have: bytes.len(),
        });
    }
    let mut crc = crc32c::crc32c(&bytes[0..72]);
    crc = crc32c::crc32c_append(crc, &bytes[HEADER_BYTES..total]);
    if crc != u32_at(72) {
        return Err(DecodeError::Checksum);
    }
    let (first_lsn, last_lsn) = (u64_at(20), u64_at(28));
    if first_lsn == 0 || first_lsn > last_lsn {
        return Err(DecodeError::Malformed("lsn range"));
    }
    let record = Record {
        shard: u32_at(8),
        epoch: u64_at(12),
        first_lsn,
        last_lsn,
        prev_hash: bytes[36..68].try_into().expect("32 bytes"),
        hash: *blake3::hash(&bytes[..total]).as_bytes(),
        payload: Vec::new(),
    };
    Ok((record, total))
}

/// Checks that `next` follows `prev_opt` in one shard's stream: contiguous LSNs and an unbroken
/// hash chain. `prev_opt` is `(last_lsn, hash)` of the previous record, if known.
pub fn check_follows(
    prev_opt: Option<(Lsn, RecordHash)>,
    next: &Record,
) -> Result<(), &'static str> {
    if let Some((prev_last_lsn, prev_hash)) = prev_opt {
        if next.first_lsn != prev_last_lsn + 1 {
            return Err("lsn gap or overlap");
        }
        if next.prev_hash != prev_hash {
            return Err("hash chain broken");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_checked_without_its_payload_is_the_record_less_the_payload() {
        let bytes = encode(3, 9, 7, 8, &[5; 32], b"events").bytes;
        let (whole, len) = decode(&bytes).unwrap();
        let (checked, checked_len) = decode_checked(&bytes).unwrap();
        assert_eq!(checked_len, len);
        assert_eq!(whole.payload, b"events");
        assert_eq!(
            checked,
            Record {
                payload: Vec::new(),
                ..whole
            }
        );
        let mut torn = bytes.clone();
        *torn.last_mut().unwrap() ^= 1;
        assert_eq!(decode_checked(&torn), Err(DecodeError::Checksum));
    }

    #[test]
    fn a_record_round_trips_and_its_hash_chains() {
        let ea = encode(3, 1, 1, 4, &[0; 32], b"hello");
        let (a, ha) = (ea.bytes, ea.hash);
        let b = encode(3, 1, 5, 5, &ha, b"world").bytes;
        let (ra, na) = decode(&a).unwrap();
        let (rb, _) = decode(&b).unwrap();
        assert_eq!(na, a.len());
        assert_eq!(
            (ra.shard, ra.epoch, ra.first_lsn, ra.last_lsn),
            (3, 1, 1, 4)
        );
        assert_eq!(ra.payload, b"hello");
        assert_eq!(ra.hash, ha);
        assert_eq!(check_follows(Some((ra.last_lsn, ra.hash)), &rb), Ok(()));
        assert!(check_follows(Some((3, ra.hash)), &rb).is_err());
        assert!(check_follows(Some((4, [7; 32])), &rb).is_err());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(0, 1, 1, 1, &[9; 32], b"payload bytes").bytes;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn a_short_buffer_is_truncated_not_corrupt() {
        let bytes = encode(0, 1, 1, 1, &[0; 32], b"abc").bytes;
        for cut in 0..bytes.len() {
            assert!(matches!(
                decode(&bytes[..cut]),
                Err(DecodeError::Truncated { .. })
            ));
        }
    }
}
