//! Task checkpoints: one task's shard together with the positions of exactly its inputs.
//!
//! A checkpoint is one self-describing object per task in the state store
//! (`tasks/00003/gen-0000000042.ckpt`, see `journey-state`): the task id, the
//! partition count it was taken under, each input partition's topic, partition, next offset and
//! largest event time, and the shard snapshot. The shard holds exactly the records before those
//! offsets, so restoring the task anywhere and seeking its partitions gives exactly-once
//! aggregates across a crash or a move (Flink's model; offsets committed to Kafka afterwards
//! serve lag monitoring only). Bytes: magic `JRNYTASK`, format version (u32 LE), CRC-32 of the
//! payload (u32 LE), then the bincode payload. Each write creates a new generation (an object
//! store write is whole or absent, so a crash leaves the old checkpoint or the new one, never a
//! mix); the write is conditional, so an instance that lost the task cannot overwrite it
//! ("fencing").

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_core::time::Millis;
use journey_core::{EngineConfig, Rules, Shard};
use journey_state::{Content, Generation, Lease, StateStore};
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

/// A store location as a path, for error messages: `<state.url>/<object path>`.
fn located(store: &StateStore, path: &str) -> PathBuf {
    let url = store.url();
    if url.ends_with('/') {
        PathBuf::from(format!("{url}{path}"))
    } else {
        PathBuf::from(format!("{url}/{path}"))
    }
}

/// What happened to a checkpoint write, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckpointOutcome {
    /// One task's checkpoint was written (bytes).
    Written { bytes: u64 },
    /// One task's checkpoint could not be written; its previous one stays.
    Failed,
    /// One task's checkpoint write was refused because another instance took the task over:
    /// the task was dropped here.
    Fenced,
    /// A task was restored from the store (or started empty there) in `seconds`.
    Restored { seconds: f64 },
    /// A scheduled round wrote every owned task: their total size (bytes) and when (epoch ms).
    Round { bytes: u64, at_ms: Millis },
}

/// Receives every [`CheckpointOutcome`] (the service counts them in its metrics).
pub type CheckpointReport = Arc<dyn Fn(CheckpointOutcome) + Send + Sync>;

/// The result of writing one task's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written as this generation, of this many bytes.
    Yes { generation: Generation, bytes: u64 },
    /// Not written (logged, reported); the previous checkpoint stays.
    Failed,
    /// Refused: another instance owns the task now. It was dropped from the runtime.
    Fenced,
}

/// How [`Checkpointer::restore`] found a task.
#[derive(Debug)]
pub enum Restored {
    /// The state this instance kept in memory is still the newest: use it.
    Kept,
    /// Restored from the store.
    Stored(Box<StoredTask>),
    /// No checkpoint: the task starts empty.
    Empty,
}

/// A task this instance owns in the store: its lease, and the generation of the content its
/// state continues (`None`: it started empty).
#[derive(Debug)]
struct Owned {
    lease: Lease,
    content: Option<Generation>,
    /// The task's [`TaskSnapshot::changes`] and Kafka positions in the last checkpoint this
    /// instance wrote of it, and when: a round skips the task while both are the same, for at
    /// most [`REWRITE_AFTER`] intervals.
    written: Option<(u64, Vec<KafkaPosition>, Instant)>,
}

/// An unchanged task is still written every this many checkpoint intervals, so that a
/// takeover by another instance is noticed (fenced) while the task is idle.
const REWRITE_AFTER: u32 = 10;

/// Takes task checkpoints into the state store on a schedule, and restores tasks from it with
/// a claim, so that a previous owner that wakes up cannot overwrite them (fencing, see
/// `journey-state`). Whoever submits the events that must be covered (the Kafka source, or the
/// service when there is no Kafka) owns it, so that its submissions and the snapshots are
/// ordered.
pub struct Checkpointer {
    store: StateStore,
    tasks: u32,
    interval: Duration,
    last: Instant,
    report: CheckpointReport,
    owned: BTreeMap<TaskId, Owned>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("store", &self.store)
            .field("tasks", &self.tasks)
            .field("interval", &self.interval)
            .field("owned", &self.owned.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

impl Checkpointer {
    /// Checkpoints of `tasks` tasks into `store`, every `interval`.
    pub fn new(
        store: StateStore,
        tasks: u32,
        interval: Duration,
        report: CheckpointReport,
    ) -> Checkpointer {
        Checkpointer {
            store,
            tasks,
            interval,
            last: Instant::now(),
            report,
            owned: BTreeMap::new(),
        }
    }

    /// The state store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Whether the checkpoint interval has passed since the last round ended. Counting from
    /// the end (Flink's minimum pause between checkpoints) leaves the consuming thread at
    /// least `interval` between rounds even when a round takes longer than the interval.
    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// Checks what is in the store without reading the checkpoints: no checkpoint of a
    /// journeyd before tasks, and no task beyond the current task count.
    ///
    /// # Errors
    /// [`RestoreError::Read`] naming the object and the reason.
    pub fn check_layout(&self) -> Result<(), RestoreError> {
        let legacy = located(&self.store, LEGACY_NAME);
        if self
            .store
            .exists(LEGACY_NAME)
            .map_err(|e| io_error(&legacy, e))?
        {
            return Err(CheckpointError::Legacy { path: legacy }.into());
        }
        let root = located(&self.store, "");
        for l in self.store.list("").map_err(|e| io_error(&root, e))? {
            let Some(task) = task_of_path(&l.path) else {
                continue;
            };
            if task < self.tasks || l.size == 0 {
                continue;
            }
            let path = located(&self.store, &l.path);
            let bytes = self
                .store
                .get(&l.path)
                .map_err(|e| io_error(&path, e))?
                .unwrap_or_default();
            let cp = TaskCheckpoint::decode(&bytes, &path)?;
            return Err(CheckpointError::TaskCount {
                path,
                task: cp.task,
                tasks: cp.tasks,
                expected: self.tasks,
            }
            .into());
        }
        Ok(())
    }

    /// Takes `task` over in the store and restores it: the newest checkpoint is read (unless
    /// it is generation `have`, whose state the caller kept in memory) and the next generation
    /// claimed, so that from now on a write by a previous owner is refused. Reported as
    /// [`CheckpointOutcome::Restored`]. `topics` are the configured input topic names.
    ///
    /// # Errors
    /// [`RestoreError`] when the store cannot be reached or the checkpoint is damaged or
    /// taken under another task count; the task is then not claimed by this instance.
    pub fn restore(
        &mut self,
        task: TaskId,
        have: Option<Generation>,
        topics: &[String],
        cfg: &Arc<EngineConfig>,
        rules: &Arc<Rules>,
    ) -> Result<Restored, RestoreError> {
        let started = Instant::now();
        let prefix = located(&self.store, &format!("tasks/{task:05}/"));
        let (lease, content) = self
            .store
            .claim(task, have)
            .map_err(|e| io_error(&prefix, e))?;
        let (restored, content) = match content {
            Content::Empty => (Restored::Empty, None),
            Content::Kept(g) => (Restored::Kept, Some(g)),
            Content::Read { generation, bytes } => {
                let path = located(
                    &self.store,
                    &if generation == 0 {
                        journey_state::legacy_name(task)
                    } else {
                        journey_state::generation_path(task, generation)
                    },
                );
                let cp = TaskCheckpoint::decode(&bytes, &path)?;
                if cp.tasks != self.tasks || cp.task != task {
                    return Err(CheckpointError::TaskCount {
                        path,
                        task: cp.task,
                        tasks: cp.tasks,
                        expected: self.tasks,
                    }
                    .into());
                }
                let stored = StoredTask::restore(cp, topics, cfg, rules, &path)?;
                (Restored::Stored(Box::new(stored)), Some(generation))
            }
        };
        self.owned.insert(
            task,
            Owned {
                lease,
                content,
                written: None,
            },
        );
        (self.report)(CheckpointOutcome::Restored {
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(restored)
    }

    /// Restores every task (`0..tasks`), for a runtime that owns them all (no Kafka).
    ///
    /// # Errors
    /// The first [`RestoreError`]: starting without a checkpoint that cannot be used whole
    /// would silently lose what it holds.
    pub fn restore_all(
        &mut self,
        topics: &[String],
        cfg: &Arc<EngineConfig>,
        rules: &Arc<Rules>,
    ) -> Result<BTreeMap<TaskId, StoredTask>, RestoreError> {
        self.check_layout()?;
        let mut out = BTreeMap::new();
        for task in 0..self.tasks {
            if let Restored::Stored(s) = self.restore(task, None, topics, cfg, rules)? {
                out.insert(task, *s);
            }
        }
        Ok(out)
    }

    /// Forgets `task` (revoked, or fenced): returns the generation of the content its last
    /// state continues, to pass as `have` when it comes back.
    pub fn release(&mut self, task: TaskId) -> Option<Generation> {
        self.owned.remove(&task).and_then(|o| o.content)
    }

    /// Snapshots every owned task (after everything this thread submitted) and writes one
    /// checkpoint per task, with the Kafka positions `kafka` gives for it. A task whose last
    /// checkpoint written here still holds it (no change since, and `moved` says its
    /// partitions' positions, given as written then, did not move) is skipped, up to
    /// [`REWRITE_AFTER`] intervals: an idle task costs a snapshot and a write only that often. Failures are logged and reported; a task's previous
    /// checkpoint then stays. A task whose write is fenced is dropped from the runtime.
    /// Returns whether all were written (or skipped), and the fenced tasks.
    pub fn take(
        &mut self,
        rt: &RuntimeHandle,
        kafka: &dyn Fn(&TaskSnapshot) -> Vec<KafkaPosition>,
        moved: &dyn Fn(TaskId, &[KafkaPosition]) -> bool,
    ) -> (bool, Vec<TaskId>) {
        self.last = Instant::now();
        let started = Instant::now();
        let fresh = self.interval * REWRITE_AFTER;
        let since: BTreeMap<TaskId, u64> = self
            .owned
            .iter()
            .filter_map(|(&task, o)| {
                let (changes, kafka, at) = o.written.as_ref()?;
                (at.elapsed() < fresh && !moved(task, kafka)).then_some((task, *changes))
            })
            .collect();
        let Ok(snapshots) = rt.snapshot_changed_blocking(since) else {
            return (false, Vec::new());
        };
        let snapshot_took = started.elapsed();
        let (mut ok, mut bytes, mut fenced) = (true, 0, Vec::new());
        for snap in &snapshots {
            match self.write(snap, kafka(snap)) {
                Written::Yes { bytes: n, .. } => bytes += n,
                Written::Failed => ok = false,
                Written::Fenced => {
                    ok = false;
                    let inputs = snap.inputs.iter().map(|&(i, _)| i).collect();
                    let _ = rt.revoke_blocking(snap.task, inputs);
                    fenced.push(snap.task);
                }
            }
        }
        self.last = Instant::now();
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
        (ok, fenced)
    }

    /// The Kafka positions of the last checkpoint written of each task held here: where each
    /// would resume. Tasks not written since they were restored are left out.
    pub fn written_positions(&self) -> Vec<KafkaPosition> {
        self.owned
            .values()
            .filter_map(|o| o.written.as_ref())
            .flat_map(|(_, kafka, _)| kafka.iter().cloned())
            .collect()
    }

    /// Writes one task's checkpoint as its next generation. A task this instance has not
    /// restored through [`Checkpointer::restore`] is claimed first. On
    /// [`Written::Fenced`] the task is released here; the caller drops it from the runtime.
    pub fn write(&mut self, snap: &TaskSnapshot, kafka: Vec<KafkaPosition>) -> Written {
        let task = snap.task;
        let cp = TaskCheckpoint {
            task,
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
        let prefix = located(&self.store, &format!("tasks/{task:05}/"));
        let written = (snap.changes, cp.kafka.clone(), Instant::now());
        let result = (|| {
            let bytes = cp.encode().map_err(|e| e.to_string())?;
            let len = bytes.len() as u64;
            let owned = match self.owned.entry(task) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    // Not restored through the store (cannot happen in the service): claim now.
                    let (lease, content) =
                        self.store.claim(task, None).map_err(|e| e.to_string())?;
                    let content = match content {
                        Content::Read { generation, .. } | Content::Kept(generation) => {
                            Some(generation)
                        }
                        Content::Empty => None,
                    };
                    v.insert(Owned {
                        lease,
                        content,
                        written: None,
                    })
                }
            };
            match self.store.write(&mut owned.lease, bytes) {
                Ok(generation) => {
                    owned.content = Some(generation);
                    owned.written = Some(written);
                    Ok(Written::Yes {
                        generation,
                        bytes: len,
                    })
                }
                Err(e) if e.is_fenced() => {
                    tracing::error!(
                        task,
                        path = %prefix.display(),
                        "checkpoint write fenced: {e}; dropping the task, its figures are no \
                         longer served here"
                    );
                    Ok(Written::Fenced)
                }
                Err(e) => Err(e.to_string()),
            }
        })();
        match result {
            Ok(Written::Yes { generation, bytes }) => {
                (self.report)(CheckpointOutcome::Written { bytes });
                Written::Yes { generation, bytes }
            }
            Ok(_) => {
                self.owned.remove(&task);
                (self.report)(CheckpointOutcome::Fenced);
                Written::Fenced
            }
            Err(e) => {
                (self.report)(CheckpointOutcome::Failed);
                tracing::error!(
                    path = %prefix.display(),
                    "cannot write a task checkpoint, the previous one stays: {e}"
                );
                Written::Failed
            }
        }
    }
}

fn io_error(path: &Path, e: journey_state::StateError) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    }
}

/// The task of a checkpoint object (`tasks/00003/…` or a legacy `task-00003.ckpt`).
fn task_of_path(path: &str) -> Option<TaskId> {
    if let Some(rest) = path.strip_prefix("tasks/") {
        return rest.split('/').next()?.parse().ok();
    }
    path.strip_prefix("task-")?
        .strip_suffix(".ckpt")?
        .parse()
        .ok()
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

impl RestoreError {
    /// Whether the checkpoint itself is unusable (corrupt, of another format or task count),
    /// rather than the store unreadable (I/O, network, credentials), where the checkpoints
    /// may be fine and must not be moved away.
    pub fn is_unusable_checkpoint(&self) -> bool {
        !matches!(self, RestoreError::Read(CheckpointError::Io { .. }))
    }
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
        let current = journey_core::snapshot::VERSION;
        if let Some(v) = journey_core::snapshot::format_version(&cp.shard).filter(|&v| v < current)
        {
            tracing::info!(
                path = %path.display(),
                task = cp.task,
                "the checkpoint's shard format {v} was converted to {current}; the next \
                 checkpoint is written in format {current}, which older builds refuse"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
        [[touchpoint]]
        name = "visit"
        phase = "awareness"
        event = "page_view"
    "#;

    /// A store that cannot be read is no reason to move checkpoints away; a bad one is.
    #[test]
    fn unreadable_stores_are_told_apart_from_unusable_checkpoints() {
        let path = PathBuf::from("tasks/00001/gen-0000000001.ckpt");
        let io = RestoreError::Read(CheckpointError::Io {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "access denied"),
        });
        assert!(!io.is_unusable_checkpoint());
        let bad = TaskCheckpoint::decode(b"not a checkpoint at all", &path).unwrap_err();
        assert!(RestoreError::Read(bad).is_unusable_checkpoint());
    }

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

    fn engine() -> (Arc<EngineConfig>, Arc<Rules>) {
        (
            Arc::new(EngineConfig::default()),
            Arc::new(Rules::from_toml(RULES).unwrap()),
        )
    }

    fn snapshot(task: TaskId) -> TaskSnapshot {
        let (cfg, rules) = engine();
        TaskSnapshot {
            task,
            shard: Shard::new(cfg, rules).snapshot(),
            inputs: vec![(Input::Topic(0), Some(1_795_000_000_000))],
            changes: 0,
            positions: Vec::new(),
        }
    }

    fn checkpointer(store: &StateStore) -> (Checkpointer, Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let report: CheckpointReport = Arc::new(move |o| {
            let name = match o {
                CheckpointOutcome::Written { .. } => "written",
                CheckpointOutcome::Failed => "failed",
                CheckpointOutcome::Fenced => "fenced",
                CheckpointOutcome::Restored { .. } => "restored",
                CheckpointOutcome::Round { .. } => "round",
            };
            s2.lock().unwrap().push(name.to_string());
        });
        (
            Checkpointer::new(store.clone(), 6, Duration::from_secs(10), report),
            seen,
        )
    }

    fn position(offset: i64) -> Vec<KafkaPosition> {
        vec![KafkaPosition {
            topic: "web".into(),
            partition: 3,
            next_offset: offset,
            max_ts: None,
        }]
    }

    #[test]
    fn a_round_skips_tasks_whose_last_checkpoint_still_holds_them() {
        use crate::{Runtime, RuntimeConfig};
        let store = StateStore::in_memory().unwrap();
        let (cfg, rules) = engine();
        let rt = Runtime::start(
            cfg,
            rules,
            RuntimeConfig {
                tasks: 6,
                own_all_tasks: false,
                live: false,
                ..RuntimeConfig::default()
            },
            Vec::new(),
        );
        let h = rt.handle();
        let (mut cp, _) = checkpointer(&store);
        for task in [1, 4] {
            h.assign_blocking(task, None, vec![Input::Topic(0)])
                .unwrap();
        }
        let newest = |task| store.generations(task).unwrap().last().map(|g| g.0);
        let at = |offset: i64| {
            move |snap: &TaskSnapshot| {
                vec![KafkaPosition {
                    topic: "web".into(),
                    partition: snap.task as i32,
                    next_offset: offset,
                    max_ts: None,
                }]
            }
        };
        let still = |_: TaskId, _: &[KafkaPosition]| false;
        assert_eq!(cp.take(&h, &at(0), &still), (true, vec![]));
        let first = (newest(1), newest(4));
        assert!(first.0.is_some() && first.1.is_some(), "both written once");

        // Nothing applied, positions where they were: nothing snapshotted or written.
        assert_eq!(cp.take(&h, &at(0), &still), (true, vec![]));
        assert_eq!((newest(1), newest(4)), first);

        // An event for task 4 only: only task 4 is written.
        let customer = (0..)
            .map(|i| format!("c{i}"))
            .find(|c| h.task_for(c) == 4)
            .unwrap();
        let e = journey_core::Event {
            event_id: None,
            customer_id: customer.into(),
            ts: 1_795_000_000_000,
            source: "web".into(),
            name: "page_view".into(),
            attributes: serde_json::Value::Null,
        };
        h.submit_input_blocking(4, Input::Topic(0), vec![e], false)
            .unwrap();
        assert_eq!(cp.take(&h, &at(0), &still), (true, vec![]));
        assert_eq!(newest(1), first.0, "task 1 unchanged: not written");
        assert!(newest(4) > first.1, "task 4 applied an event: written");

        // Positions that moved (a record dead-lettered, nothing applied) are written too.
        let second = newest(4);
        let moved = |task: TaskId, _: &[KafkaPosition]| task == 1;
        assert_eq!(cp.take(&h, &at(0), &moved), (true, vec![]));
        assert!(newest(1) > first.0, "task 1's positions moved: written");
        assert_eq!(newest(4), second);

        // Idle tasks are still written every REWRITE_AFTER intervals (here 10 × 10 ms), so
        // that a takeover is noticed.
        let report: CheckpointReport = Arc::new(|_| {});
        let mut short = Checkpointer::new(store.clone(), 6, Duration::from_millis(10), report);
        for task in [1, 4] {
            short
                .restore(task, None, &["web".into()], h.engine_config(), &h.rules())
                .unwrap();
        }
        assert_eq!(short.take(&h, &at(0), &still), (true, vec![]));
        let written = (newest(1), newest(4));
        assert_eq!(short.take(&h, &at(0), &still), (true, vec![]));
        assert_eq!((newest(1), newest(4)), written, "unchanged: skipped");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(short.take(&h, &at(0), &still), (true, vec![]));
        assert!(
            newest(1) > written.0 && newest(4) > written.1,
            "rewritten after 10 intervals"
        );
        rt.shutdown();
    }

    #[test]
    fn a_task_checkpoint_round_trips_through_the_store() {
        let store = StateStore::in_memory().unwrap();
        let (cfg, rules) = engine();
        let topics = vec!["web".to_string()];
        let (mut a, seen) = checkpointer(&store);
        assert!(matches!(
            a.restore(3, None, &topics, &cfg, &rules).unwrap(),
            Restored::Empty
        ));
        let w = a.write(&snapshot(3), position(99));
        assert!(matches!(w, Written::Yes { generation: 2, .. }), "{w:?}");
        // Given up and taken again by the same instance: its kept state is still the newest.
        let have = a.release(3);
        assert_eq!(have, Some(2));
        assert!(matches!(
            a.restore(3, have, &topics, &cfg, &rules).unwrap(),
            Restored::Kept
        ));
        // Another instance reads it from the store.
        let (mut b, _) = checkpointer(&store);
        let Restored::Stored(t) = b.restore(3, None, &topics, &cfg, &rules).unwrap() else {
            panic!("stored")
        };
        assert_eq!(t.kafka, position(99));
        assert_eq!(t.task.inputs, vec![(Input::Topic(0), None)]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["restored", "written", "restored"]
        );
    }

    #[test]
    fn a_fenced_write_is_refused_reported_and_releases_the_task() {
        let store = StateStore::in_memory().unwrap();
        let (cfg, rules) = engine();
        let topics = vec!["web".to_string()];
        let (mut a, seen) = checkpointer(&store);
        a.restore(3, None, &topics, &cfg, &rules).unwrap();
        assert!(matches!(
            a.write(&snapshot(3), position(10)),
            Written::Yes { .. }
        ));
        // B takes the task over while A is paused.
        let (mut b, _) = checkpointer(&store);
        b.restore(3, None, &topics, &cfg, &rules).unwrap();
        assert!(matches!(
            b.write(&snapshot(3), position(20)),
            Written::Yes { .. }
        ));
        // A wakes up: its write is refused and it no longer holds the task.
        assert_eq!(a.write(&snapshot(3), position(11)), Written::Fenced);
        assert_eq!(seen.lock().unwrap().last().unwrap(), "fenced");
        assert_eq!(a.release(3), None);
        let latest = store.latest(3).unwrap().unwrap();
        let cp = TaskCheckpoint::decode(&latest.bytes, Path::new("x")).unwrap();
        assert_eq!(cp.kafka, position(20), "B's checkpoint stands");
    }

    #[test]
    fn the_store_layout_is_checked_at_start() {
        let store = StateStore::in_memory().unwrap();
        let (a, _) = checkpointer(&store);
        a.check_layout().unwrap();
        store
            .put(
                "tasks/00007/gen-0000000002.ckpt",
                sample(7).encode().unwrap(),
            )
            .unwrap();
        let err = a.check_layout().unwrap_err().to_string();
        assert!(
            err.ends_with(
                "tasks/00007/gen-0000000002.ckpt holds task 7 of 6, but there are 6 tasks now"
            ),
            "{err}"
        );
        store.put(LEGACY_NAME, b"JRNYCKPT".to_vec()).unwrap();
        let err = a.check_layout().unwrap_err().to_string();
        assert!(
            err.contains("per-worker checkpoint of an older journeyd"),
            "{err}"
        );
    }

    #[test]
    fn damaged_checkpoints_are_refused_with_the_reason() {
        let good = sample(1).encode().unwrap();
        let path = Path::new("memory://tasks/00001/gen-0000000002.ckpt");
        assert_eq!(TaskCheckpoint::decode(&good, path).unwrap(), sample(1));
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
            let err = TaskCheckpoint::decode(&bytes, path)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        // Restoring a damaged checkpoint names it and claims nothing usable.
        let store = StateStore::in_memory().unwrap();
        store
            .put("tasks/00001/gen-0000000002.ckpt", good[..10].to_vec())
            .unwrap();
        let (mut a, _) = checkpointer(&store);
        let (cfg, rules) = engine();
        let err = a
            .restore(1, None, &[], &cfg, &rules)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "memory://tasks/00001/gen-0000000002.ckpt is truncated (10 bytes)"
        );
    }
}
