//! Versioned, checksummed snapshot encoding of shard state.

use serde::de::DeserializeOwned;
use serde::Serialize;

const MAGIC: &[u8; 8] = b"JRNYSHRD";
/// Bump when the encoded state changes shape; older snapshots are then refused, not misread.
/// Version 4 added segment aggregates and time to convert to every bucket (issue 17); version 5
/// the moments of truth (touched-sets per journey, moments figures per bucket); version 6 keeps
/// any number of past journeys per customer instead of one.
pub const VERSION: u32 = 6;
/// The oldest version this build reads: older layouts it still knows are converted on restore,
/// so a checkpoint survives an upgrade.
pub const OLDEST_READABLE: u32 = 5;
const HEADER: usize = 8 + 4 + 4;

/// Why a snapshot could not be restored. Nothing is half-loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a journeyd shard snapshot (bad magic bytes)")]
    BadMagic,
    #[error(
        "snapshot format version {found} is not supported (this build reads versions {OLDEST_READABLE} to {VERSION}): move the checkpoint away and re-read the input to rebuild the state"
    )]
    Version { found: u32 },
    #[error(
        "snapshot format version {found} was written by a newer journeyd (this build reads versions {OLDEST_READABLE} to {VERSION}): run that build, restore the copy of the state store taken before upgrading, or move the checkpoint away and re-read the input to rebuild the state"
    )]
    Newer { found: u32 },
    #[error("snapshot is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("snapshot checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("snapshot payload is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot does not fit the configuration: {0}")]
    Incompatible(String),
}

pub(crate) fn encode<T: Serialize>(state: &T) -> Vec<u8> {
    let payload = bincode::serialize(state).expect("in-memory state always serialises");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The format version a snapshot's header names, if it has a shard snapshot's header; nothing
/// else is checked. For telling an operator that a restore converted an older format.
pub fn format_version(bytes: &[u8]) -> Option<u32> {
    let header = bytes.get(..12)?;
    (&header[..8] == MAGIC)
        .then(|| u32::from_le_bytes([header[8], header[9], header[10], header[11]]))
}

/// Checks a snapshot's header and checksum; returns its format version, one this build reads,
/// and its payload for [`payload`].
pub(crate) fn open(bytes: &[u8]) -> Result<(u32, &[u8]), SnapshotError> {
    if bytes.len() < HEADER {
        return Err(if bytes.starts_with(&MAGIC[..bytes.len().min(8)]) {
            SnapshotError::Truncated(bytes.len())
        } else {
            SnapshotError::BadMagic
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > VERSION {
        return Err(SnapshotError::Newer { found: version });
    }
    if version < OLDEST_READABLE {
        return Err(SnapshotError::Version { found: version });
    }
    let stored = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    Ok((version, payload))
}

/// Decodes a payload that [`open`] returned, in the layout of its version.
pub(crate) fn payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, SnapshotError> {
    bincode::deserialize(payload).map_err(|e| SnapshotError::Corrupt(e.to_string()))
}
