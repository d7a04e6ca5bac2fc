//! Task checkpoints: one task's shard together with the positions of exactly its inputs.
//!
//! A checkpoint is one self-describing object per task (`task-00003.ckpt`): the task id, the
//! partition count it was taken under, each input partition's topic, partition, next offset and
//! largest event time, and the shard snapshot. The shard holds exactly the records before those
//! offsets, so restoring the task anywhere and seeking its partitions gives exactly-once
//! aggregates across a crash or a move (Flink's model; offsets committed to Kafka afterwards
//! serve lag monitoring only). Bytes: magic `JRNYTASK`, format version (u32 LE), CRC-32 of the
//! payload (u32 LE), then the bincode payload. Files are written to a temporary name, synced,
//! renamed over the previous one and the directory synced, so a crash leaves the old
//! checkpoint or the new one, never a mix.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_core::time::Millis;
use journey_core::{EngineConfig, Rules, Shard};
use serde::{Deserialize, Serialize};

use crate::task::{Input, TaskId, TaskSnapshot};
use crate::{RestoredTask, RuntimeHandle};

const MAGIC: &[u8; 8] = b"JRNYTASK";
/// Bump when the layout changes; older files are then refused with a clear message.
pub const VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 4;
/// The single per-worker file of format 1, which cannot be split into tasks.
const LEGACY_NAME: &str = "checkpoint.bin";

/// Where a Kafka partition of a task resumes, and how far its event time got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPosition {
    pub topic: String,
    pub partition: i32,
    /// Offset of the next record to read.
    pub next_offset: i64,
    /// Largest event time read from it (epoch ms); `None` if nothing was read.
    pub max_ts: Option<Millis>,
}

/// The content of one task's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCheckpoint {
    pub task: TaskId,
    /// The number of tasks (partitions) when it was taken: customers are routed by it.
    pub tasks: u32,
    /// Wall-clock time it was taken, epoch milliseconds.
    pub created_ms: Millis,
    /// The task's Kafka partitions.
    pub kafka: Vec<KafkaPosition>,
    /// Largest event time of HTTP and file input (epoch ms).
    pub push_max_ts: Option<Millis>,
    /// [`journey_core::Shard::snapshot`] bytes.
    pub shard: Vec<u8>,
}

/// Why a checkpoint could not be read. Nothing is restored from a checkpoint with an error.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a journeyd task checkpoint (bad magic bytes)")]
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
    #[error(
        "{path} is a per-worker checkpoint of an older journeyd (format 1), which cannot be \
         split into tasks"
    )]
    Legacy { path: PathBuf },
    #[error("{path} holds task {task} of {tasks}, but there are {expected} tasks now")]
    TaskCount {
        path: PathBuf,
        task: TaskId,
        tasks: u32,
        expected: u32,
    },
}

impl TaskCheckpoint {
    /// The object name of a task's checkpoint.
    pub fn file_name(task: TaskId) -> String {
        format!("task-{task:05}.ckpt")
    }

    /// The framed bytes: magic, version, CRC-32, payload.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let payload = bincode::serialize(self).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Parses framed bytes; `path` names them in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<TaskCheckpoint, CheckpointError> {
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

/// A directory of task checkpoints (`[checkpoint] dir`).
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    pub fn new(dir: impl Into<PathBuf>) -> CheckpointDir {
        CheckpointDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file of `task`'s checkpoint.
    pub fn path_of(&self, task: TaskId) -> PathBuf {
        self.dir.join(TaskCheckpoint::file_name(task))
    }

    /// Writes one task's checkpoint atomically (the directory is created if missing) and
    /// returns its size in bytes.
    pub fn write(&self, cp: &TaskCheckpoint) -> io::Result<u64> {
        fs::create_dir_all(&self.dir)?;
        let bytes = cp.encode()?;
        let name = TaskCheckpoint::file_name(cp.task);
        let temp = self.dir.join(format!(".{name}.tmp"));
        {
            let mut f = File::create(&temp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&temp, self.dir.join(&name))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)?.sync_all()?;
        Ok(bytes.len() as u64)
    }

    /// Every task checkpoint in the directory, in task order, each checked against the current
    /// task count. Any unreadable one fails the whole read: starting without it would lose
    /// what it holds.
    pub fn read_all(&self, tasks: u32) -> Result<Vec<TaskCheckpoint>, CheckpointError> {
        let legacy = self.dir.join(LEGACY_NAME);
        if legacy.exists() {
            return Err(CheckpointError::Legacy { path: legacy });
        }
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CheckpointError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("task-") && name.ends_with(".ckpt")) {
                continue;
            }
            let path = entry.path();
            let bytes = fs::read(&path).map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })?;
            let cp = TaskCheckpoint::decode(&bytes, &path)?;
            if cp.tasks != tasks || cp.task >= tasks {
                return Err(CheckpointError::TaskCount {
                    path,
                    task: cp.task,
                    tasks: cp.tasks,
                    expected: tasks,
                });
            }
            out.push(cp);
        }
        out.sort_by_key(|c| c.task);
        Ok(out)
    }
}

/// What happened to a checkpoint write, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// One task's checkpoint was written (bytes).
    Written { bytes: u64 },
    /// One task's checkpoint could not be written; its previous one stays.
    Failed,
    /// A scheduled round wrote every owned task: their total size (bytes) and when (epoch ms).
    Round { bytes: u64, at_ms: Millis },
}

/// Receives every [`CheckpointOutcome`] (the service counts them in its metrics).
pub type CheckpointReport = Arc<dyn Fn(CheckpointOutcome) + Send + Sync>;

/// Takes task checkpoints into one directory on a schedule. Whoever submits the events that
/// must be covered (the Kafka source, or the service when there is no Kafka) owns it, so that
/// its submissions and the snapshots are ordered.
pub struct Checkpointer {
    dir: CheckpointDir,
    tasks: u32,
    interval: Duration,
    last: Instant,
    report: CheckpointReport,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("dir", &self.dir)
            .field("tasks", &self.tasks)
            .field("interval", &self.interval)
            .finish()
    }
}

fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

impl Checkpointer {
    /// Checkpoints of `tasks` tasks into `dir`, every `interval`.
    pub fn new(
        dir: CheckpointDir,
        tasks: u32,
        interval: Duration,
        report: CheckpointReport,
    ) -> Checkpointer {
        Checkpointer {
            dir,
            tasks,
            interval,
            last: Instant::now(),
            report,
        }
    }

    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// Snapshots every owned task (after everything this thread submitted) and writes one
    /// checkpoint per task, with the Kafka positions `kafka` gives for it. Failures are logged
    /// and reported; a task's previous checkpoint then stays. Returns whether all were written.
    pub fn take(
        &mut self,
        rt: &RuntimeHandle,
        kafka: &dyn Fn(&TaskSnapshot) -> Vec<KafkaPosition>,
    ) -> bool {
        self.last = Instant::now();
        let started = Instant::now();
        let Ok(snapshots) = rt.snapshot_blocking() else {
            return false;
        };
        let snapshot_took = started.elapsed();
        let (mut ok, mut bytes) = (true, 0);
        for snap in &snapshots {
            match self.write(snap, kafka(snap)) {
                Some(n) => bytes += n,
                None => ok = false,
            }
        }
        if ok {
            (self.report)(CheckpointOutcome::Round {
                bytes,
                at_ms: wall_ms(),
            });
        }
        tracing::debug!(
            tasks = snapshots.len(),
            bytes,
            snapshot_ms = snapshot_took.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        ok
    }

    /// Writes one task's checkpoint; its size in bytes, or `None` (logged, reported) on failure.
    pub fn write(&self, snap: &TaskSnapshot, kafka: Vec<KafkaPosition>) -> Option<u64> {
        let cp = TaskCheckpoint {
            task: snap.task,
            tasks: self.tasks,
            created_ms: wall_ms(),
            kafka,
            push_max_ts: snap
                .inputs
                .iter()
                .find(|(i, _)| *i == Input::Push)
                .and_then(|(_, t)| *t),
            shard: snap.shard.clone(),
        };
        match self.dir.write(&cp) {
            Ok(bytes) => {
                (self.report)(CheckpointOutcome::Written { bytes });
                Some(bytes)
            }
            Err(e) => {
                (self.report)(CheckpointOutcome::Failed);
                tracing::error!(
                    path = %self.dir.path_of(snap.task).display(),
                    "cannot write a task checkpoint, the previous one stays: {e}"
                );
                None
            }
        }
    }
}

/// A task read from its checkpoint: its state, and where its partitions resume.
#[derive(Debug)]
pub struct StoredTask {
    pub task: RestoredTask,
    pub kafka: Vec<KafkaPosition>,
}

/// A checkpoint that could be read but not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Read(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Shard {
        path: PathBuf,
        source: journey_core::snapshot::SnapshotError,
    },
}

impl StoredTask {
    /// Restores a task from a checkpoint's content (`path` names it in errors). `topics` are
    /// the configured input topic names, in order; positions of topics no longer configured
    /// are dropped with a warning.
    pub fn restore(
        cp: TaskCheckpoint,
        topics: &[String],
        cfg: &Arc<EngineConfig>,
        rules: &Arc<Rules>,
        path: &Path,
    ) -> Result<StoredTask, RestoreError> {
        let shard = Shard::restore(&cp.shard, cfg.clone(), rules.clone()).map_err(|source| {
            RestoreError::Shard {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let mut inputs = Vec::new();
        let mut kafka = Vec::new();
        for p in cp.kafka {
            match topics.iter().position(|n| *n == p.topic) {
                Some(i) => {
                    inputs.push((Input::Topic(i as u16), p.max_ts));
                    kafka.push(p);
                }
                None => tracing::warn!(
                    path = %path.display(),
                    topic = p.topic,
                    "the checkpoint has a position for a topic no longer configured; ignored"
                ),
            }
        }
        if cp.push_max_ts.is_some() {
            inputs.push((Input::Push, cp.push_max_ts));
        }
        Ok(StoredTask {
            task: RestoredTask {
                task: cp.task,
                shard,
                inputs,
            },
            kafka,
        })
    }

    /// A task's final snapshot, kept in memory so the task can resume here at once.
    pub fn from_snapshot(
        snap: TaskSnapshot,
        kafka: Vec<KafkaPosition>,
        rt: &RuntimeHandle,
    ) -> Result<StoredTask, journey_core::snapshot::SnapshotError> {
        let shard = Shard::restore(&snap.shard, rt.engine_config().clone(), rt.rules())?;
        Ok(StoredTask {
            task: RestoredTask {
                task: snap.task,
                shard,
                inputs: snap.inputs,
            },
            kafka,
        })
    }
}

impl CheckpointDir {
    /// Reads and restores every task checkpoint in the directory. Any that cannot be used
    /// whole is an error: starting empty instead would silently lose what it holds.
    pub fn restore_all(
        &self,
        tasks: u32,
        topics: &[String],
        cfg: &Arc<EngineConfig>,
        rules: &Arc<Rules>,
    ) -> Result<BTreeMap<TaskId, StoredTask>, RestoreError> {
        let mut out = BTreeMap::new();
        for cp in self.read_all(tasks)? {
            let path = self.path_of(cp.task);
            let task = cp.task;
            out.insert(task, StoredTask::restore(cp, topics, cfg, rules, &path)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(task: TaskId) -> TaskCheckpoint {
        TaskCheckpoint {
            task,
            tasks: 6,
            created_ms: 1_795_000_000_000,
            kafka: vec![KafkaPosition {
                topic: "web".into(),
                partition: task as i32,
                next_offset: 1234,
                max_ts: Some(1_795_000_000_000),
            }],
            push_max_ts: None,
            shard: vec![1, 2, 3],
        }
    }

    fn temp_dir(name: &str) -> CheckpointDir {
        let d = std::env::temp_dir().join(format!("journeyd-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        CheckpointDir::new(d)
    }

    #[test]
    fn one_file_per_task_round_trips_and_replaces_the_previous_one() {
        let dir = temp_dir("roundtrip");
        assert!(dir.read_all(6).unwrap().is_empty());
        let mut c = sample(3);
        dir.write(&c).unwrap();
        c.kafka[0].next_offset = 99;
        dir.write(&c).unwrap();
        dir.write(&sample(0)).unwrap();
        assert_eq!(dir.read_all(6).unwrap(), vec![sample(0), c]);
        assert!(dir.path_of(3).ends_with("task-00003.ckpt"));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let dir = temp_dir("damaged");
        dir.write(&sample(1)).unwrap();
        let path = dir.path_of(1);
        let good = fs::read(&path).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..10].to_vec(), "is truncated (10 bytes)"),
            (b"not a checkpoint at all".to_vec(), "bad magic bytes"),
            (
                {
                    let mut b = good.clone();
                    b[8] = 9;
                    b
                },
                "format version 9; this build reads version 2",
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
            fs::write(&path, &bytes).unwrap();
            let err = dir.read_all(6).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        fs::write(&path, &good).unwrap();
        let err = dir.read_all(12).unwrap_err().to_string();
        assert!(
            err.ends_with("task-00001.ckpt holds task 1 of 6, but there are 12 tasks now"),
            "{err}"
        );
        fs::write(dir.path().join(LEGACY_NAME), b"JRNYCKPT").unwrap();
        let err = dir.read_all(6).unwrap_err().to_string();
        assert!(
            err.contains("per-worker checkpoint of an older journeyd"),
            "{err}"
        );
        fs::remove_dir_all(dir.path()).unwrap();
    }
}
