//! Checkpoints: every shard's state together with the source positions it reflects.
//!
//! One file holds a consistent cut: each shard snapshot contains exactly the events read
//! before the recorded positions. Restoring it and resuming every source at those positions
//! gives exactly-once aggregates across a crash (Flink's model; offsets committed to Kafka
//! afterwards serve lag monitoring only). The file is written to a temporary name, synced,
//! renamed over the previous one and the directory synced, so a crash at any moment leaves
//! either the old checkpoint or the new one, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"JRNYCKPT";
/// Bump when the layout changes; older files are then refused with a clear message.
pub const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4;
const FILE_NAME: &str = "checkpoint.bin";
const TEMP_NAME: &str = ".checkpoint.bin.tmp";

/// Where a Kafka partition resumes: the offset of the next record to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPosition {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// The content of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Wall-clock time it was taken, epoch milliseconds.
    pub created_ms: i64,
    pub kafka: Vec<KafkaPosition>,
    /// One [`journey_core::Shard::snapshot`] per worker, in worker order.
    pub shards: Vec<Vec<u8>>,
}

/// Why a checkpoint could not be read. Nothing is restored from a checkpoint with an error.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a journeyd checkpoint (bad magic bytes)")]
    BadMagic { path: PathBuf },
    #[error("{path} has checkpoint format version {found}; this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is truncated ({len} bytes)")]
    Truncated { path: PathBuf, len: usize },
    #[error("{path} is corrupt: checksum stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// The checkpoint file inside `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

impl Checkpoint {
    /// Writes the checkpoint atomically into `dir` (created if missing) and returns its size.
    pub fn write(&self, dir: &Path) -> io::Result<u64> {
        fs::create_dir_all(dir)?;
        let payload = bincode::serialize(self).map_err(io::Error::other)?;
        let temp = dir.join(TEMP_NAME);
        {
            let mut f = File::create(&temp)?;
            f.write_all(MAGIC)?;
            f.write_all(&VERSION.to_le_bytes())?;
            f.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
            f.write_all(&payload)?;
            f.sync_all()?;
        }
        fs::rename(&temp, path_in(dir))?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()?;
        Ok((HEADER + payload.len()) as u64)
    }

    /// Reads the checkpoint in `dir`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = path_in(dir);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        Checkpoint::decode(&bytes, &path).map(Some)
    }

    fn decode(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let path = path.to_path_buf();
        if bytes.len() < HEADER {
            return Err(if bytes.starts_with(&MAGIC[..bytes.len().min(8)]) {
                CheckpointError::Truncated {
                    path,
                    len: bytes.len(),
                }
            } else {
                CheckpointError::BadMagic { path }
            });
        }
        if &bytes[..8] != MAGIC {
            return Err(CheckpointError::BadMagic { path });
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let found = word(8);
        if found != VERSION {
            return Err(CheckpointError::Version { path, found });
        }
        let stored = word(12);
        let computed = crc32fast::hash(&bytes[HEADER..]);
        if stored != computed {
            return Err(CheckpointError::Checksum {
                path,
                stored,
                computed,
            });
        }
        bincode::deserialize(&bytes[HEADER..]).map_err(|e| CheckpointError::Corrupt {
            path,
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            created_ms: 1_795_000_000_000,
            kafka: vec![KafkaPosition {
                topic: "web".into(),
                partition: 2,
                next_offset: 1234,
            }],
            shards: vec![vec![1, 2, 3], vec![4, 5]],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("journeyd-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trips_and_replaces_the_previous_file() {
        let dir = temp_dir("roundtrip");
        assert!(Checkpoint::read(&dir).unwrap().is_none());
        let mut c = sample();
        c.write(&dir).unwrap();
        c.kafka[0].next_offset = 99;
        c.write(&dir).unwrap();
        assert_eq!(Checkpoint::read(&dir).unwrap(), Some(c));
        assert!(!dir.join(TEMP_NAME).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let dir = temp_dir("damaged");
        sample().write(&dir).unwrap();
        let good = fs::read(path_in(&dir)).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..10].to_vec(), "is truncated (10 bytes)"),
            (b"not a checkpoint at all".to_vec(), "bad magic bytes"),
            (
                {
                    let mut b = good.clone();
                    b[8] = 9;
                    b
                },
                "format version 9; this build reads version 1",
            ),
            (
                {
                    let mut b = good.clone();
                    let last = b.len() - 1;
                    b[last] ^= 0xff;
                    b
                },
                "is corrupt: checksum stored",
            ),
        ];
        for (bytes, want) in cases {
            fs::write(path_in(&dir), &bytes).unwrap();
            let err = Checkpoint::read(&dir).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
