//! journey-state: the task state store, and fencing.
//!
//! Durable task state lives in an object store (the `object_store` crate): a local directory
//! for one node (`file:///var/lib/journeyd`), S3-compatible storage for a cluster
//! (`s3://bucket/prefix`, credentials and endpoint from the usual `AWS_*` variables), memory in
//! tests (`memory://`). The API is **blocking**: the Kafka thread and its rebalance callbacks
//! are plain threads, so the store owns a small tokio runtime of its own and waits on it.
//!
//! Layout under the store's root:
//!
//! ```text
//! tasks/00003/gen-0000000042.ckpt   task 3's checkpoint of generation 42 (newest wins)
//! tasks/00003/gen-0000000043.ckpt   an empty object: a claim (see below)
//! members/<id>.json                 anything else, through put / get / list / delete
//! ```
//!
//! The bytes of a checkpoint are opaque here (journey-runtime frames them). **Fencing** works
//! with generation numbers and create-if-absent writes (`PutMode::Create`, which both the
//! local store and S3 support; S3 through `If-None-Match: *`):
//!
//! - whoever takes a task over ([`StateStore::claim`]) lists its generations, takes the newest
//!   non-empty one as its content, and creates the next number as an empty *claim* object;
//! - the owner writes generation `lease + 1` ([`StateStore::write`]). If that object exists,
//!   someone claimed or wrote the task after this instance last did: the write is refused
//!   ([`StateError::Fenced`]). If it could be created but a newer generation exists (the
//!   number had been cleaned up), it is deleted again and refused the same way;
//! - after a successful write every older generation is deleted.
//!
//! A paused instance ("zombie") that wakes after its task moved always writes a number no
//! greater than the new owner's claim, so its write is refused and it must drop the task.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// A task: one partition index of the input topics.
pub type TaskId = u32;
/// A checkpoint generation of one task; larger is newer.
pub type Generation = u64;

/// The (only) name of the checkpoint of the per-task directory layout journeyd used before
/// the state store: `task-00003.ckpt` at the root. Read as generation 0, deleted by the first
/// write after it.
pub fn legacy_name(task: TaskId) -> String {
    format!("task-{task:05}.ckpt")
}

/// The path of a task checkpoint of one generation, relative to the store's root.
pub fn generation_path(task: TaskId, generation: Generation) -> String {
    format!("{}gen-{generation:010}.ckpt", task_prefix(task))
}

fn task_prefix(task: TaskId) -> String {
    format!("tasks/{task:05}/")
}

/// Parses `tasks/00003/gen-0000000042.ckpt` into (3, 42).
fn parse_generation_path(path: &str) -> Option<(TaskId, Generation)> {
    let rest = path.strip_prefix("tasks/")?;
    let (task, name) = rest.split_once('/')?;
    let generation = name.strip_prefix("gen-")?.strip_suffix(".ckpt")?;
    Some((task.parse().ok()?, generation.parse().ok()?))
}

/// What went wrong talking to the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `state.url` cannot be used.
    #[error("state.url `{url}`: {why}")]
    Url { url: String, why: String },
    /// The store's I/O runtime could not start.
    #[error("cannot start the state store's I/O thread: {0}")]
    Runtime(std::io::Error),
    /// A request to the store failed (network, permissions, disk).
    #[error("state store {url}: cannot {op} {path}: {source}")]
    Store {
        url: String,
        op: &'static str,
        path: String,
        source: Box<object_store::Error>,
    },
    /// A conditional write was refused: another instance claimed or wrote the task after this
    /// one last did. This instance no longer owns the task and must drop it without writing.
    #[error(
        "task {task}: generation {generation} already exists or is superseded in the state \
         store; another instance owns the task now"
    )]
    Fenced {
        task: TaskId,
        generation: Generation,
    },
    /// The task's checkpoint is gone although the store shows one was written: every
    /// generation left is empty, yet the older ones were removed, which only a completed
    /// checkpoint write does. Its newest checkpoint was truncated or deleted outside journeyd.
    #[error(
        "task {task}: its checkpoint is missing or damaged in state store {url}: {prefix} holds \
         only empty objects (generations {first}–{newest}), but the generations below {first} \
         were removed, which only a completed checkpoint write does; to start this task empty \
         instead, move {prefix} away"
    )]
    Damaged {
        url: String,
        task: TaskId,
        prefix: String,
        first: Generation,
        newest: Generation,
    },
}

impl StateError {
    /// Whether this is [`StateError::Fenced`].
    pub fn is_fenced(&self) -> bool {
        matches!(self, StateError::Fenced { .. })
    }
}

/// One object found by [`StateStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Path relative to the store's root, e.g. `members/a.json`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// This instance's right to write a task: the generation it last claimed or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub task: TaskId,
    /// The generation this instance last created; the next write creates `generation + 1`.
    pub generation: Generation,
    /// A legacy `task-NNNNN.ckpt` was the content: the first write deletes it.
    legacy: bool,
    /// A write whose outcome is unknown (it failed, but the object may exist): its generation
    /// and the CRC-32 and length of its bytes, to recognise it as ours on the next write.
    uncertain: Option<(Generation, u32, usize)>,
}

/// What [`StateStore::claim`] found as a task's content.
#[derive(Debug, PartialEq, Eq)]
pub enum Content {
    /// No checkpoint: the task starts empty.
    Empty,
    /// The newest checkpoint is the generation the caller said it already holds.
    Kept(Generation),
    /// The newest checkpoint's bytes.
    Read {
        generation: Generation,
        bytes: Vec<u8>,
    },
}

/// The newest checkpoint of a task as found by [`StateStore::latest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub task: TaskId,
    /// Generation of the content (0 for a legacy `task-NNNNN.ckpt`).
    pub generation: Generation,
    /// Its path relative to the store's root, for messages.
    pub path: String,
    pub bytes: Vec<u8>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// Root of journeyd's objects inside the store (the URL's path for S3).
    root: Path,
    url: String,
    io: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never blocks, so the store may be dropped anywhere, even inside an async task.
        if let Some(rt) = self.io.take() {
            rt.shutdown_background();
        }
    }
}

/// The task state store (`[state] url`). Cheap to clone; blocking; safe to use from any plain
/// thread (not from inside an async task: it blocks).
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl StateStore {
    /// Opens the store at `url`: `file:///dir` (created if missing; writes are fsynced),
    /// `s3://bucket/prefix` (configured from `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, … as the AWS tools read them)
    /// or `memory://` (tests). Nothing is requested from the store yet.
    ///
    /// # Errors
    /// [`StateError::Url`] for another scheme, a missing bucket or an unusable directory;
    /// [`StateError::Runtime`] if the I/O thread cannot start.
    pub fn open(url: &str) -> Result<StateStore, StateError> {
        StateStore::open_with(url, std::iter::empty())
    }

    /// [`StateStore::open`], with `AWS_*` settings (`("AWS_ENDPOINT_URL", "http://…")`) that
    /// override the environment's for an `s3://` store; other names are ignored. For tests
    /// and tools that talk to several stores.
    ///
    /// # Errors
    /// As [`StateStore::open`]; also [`StateError::Url`] for an unusable setting value.
    pub fn open_with(
        url: &str,
        aws: impl IntoIterator<Item = (String, String)>,
    ) -> Result<StateStore, StateError> {
        let bad = |why: String| StateError::Url {
            url: url.to_string(),
            why,
        };
        let (store, root): (Arc<dyn ObjectStore>, Path) =
            if let Some(dir) = url.strip_prefix("file://") {
                if dir.is_empty() {
                    return Err(bad("no directory after file://".into()));
                }
                std::fs::create_dir_all(dir)
                    .map_err(|e| bad(format!("cannot create the directory: {e}")))?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(e.to_string()))?
                    .with_fsync(true);
                (Arc::new(fs), Path::default())
            } else if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("no bucket after s3://".into()));
                }
                let mut builder = object_store::aws::AmazonS3Builder::from_env();
                for (k, v) in aws {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        builder = builder.with_config(key, v);
                    }
                }
                let s3 = builder
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(s3), Path::from(prefix.trim_matches('/')))
            } else if url == "memory://" {
                (Arc::new(InMemory::new()), Path::default())
            } else {
                return Err(bad(
                    "expected file:///dir, s3://bucket/prefix or memory://".into()
                ));
            };
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("journeyd-state")
            .enable_all()
            .build()
            .map_err(StateError::Runtime)?;
        Ok(StateStore {
            inner: Arc::new(Inner {
                store,
                root,
                url: url.to_string(),
                io: Some(io),
            }),
        })
    }

    /// A new, empty in-memory store (tests).
    ///
    /// # Errors
    /// [`StateError::Runtime`] if the I/O thread cannot start.
    pub fn in_memory() -> Result<StateStore, StateError> {
        StateStore::open("memory://")
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    fn run<F: Future>(&self, f: F) -> F::Output {
        self.inner
            .io
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(f)
    }

    fn full(&self, path: &str) -> Path {
        let mut full = self.inner.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            full = full.join(part);
        }
        full
    }

    fn relative(&self, full: &Path) -> String {
        match full.prefix_match(&self.inner.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => full.to_string(),
        }
    }

    fn err(&self, op: &'static str, path: &str, source: object_store::Error) -> StateError {
        StateError::Store {
            url: self.inner.url.clone(),
            op,
            path: path.to_string(),
            source: Box::new(source),
        }
    }

    /// Writes `bytes` at `path` (relative to the store's root, `/`-separated), replacing any
    /// object there.
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StateError> {
        let full = self.full(path);
        self.run(self.inner.store.put(&full, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.err("write", path, e))
    }

    /// The bytes at `path`, or `None` if there is no such object.
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>, StateError> {
        let full = self.full(path);
        let store = &self.inner.store;
        let result = self.run(async {
            match store.get(&full).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        result
            .map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.err("read", path, e))
    }

    /// Every object whose path starts with the directory `prefix` (e.g. `members/`), at any
    /// depth, sorted by path.
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>, StateError> {
        let full = self.full(prefix);
        let store = &self.inner.store;
        let metas = self
            .run(async { store.list(Some(&full)).try_collect::<Vec<_>>().await })
            .map_err(|e| self.err("list", prefix, e))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .map(|m| Listed {
                path: self.relative(&m.location),
                size: m.size,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Deletes the object at `path`; a missing object is not an error.
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn delete(&self, path: &str) -> Result<(), StateError> {
        let full = self.full(path);
        match self.run(self.inner.store.delete(&full)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", path, e)),
        }
    }

    /// Whether an object exists at `path`.
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn exists(&self, path: &str) -> Result<bool, StateError> {
        let full = self.full(path);
        match self.run(self.inner.store.head(&full)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("read", path, e)),
        }
    }

    /// Creates `path` only if no object is there (`PutMode::Create`). `Ok(false)` if one is.
    fn create(&self, path: &str, bytes: Vec<u8>) -> Result<bool, StateError> {
        let full = self.full(path);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.run(
            self.inner
                .store
                .put_opts(&full, PutPayload::from(bytes), opts),
        ) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.err("create", path, e)),
        }
    }

    /// The generations stored for `task`, oldest first, each with its size in bytes (0 for a
    /// claim).
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn generations(&self, task: TaskId) -> Result<Vec<(Generation, u64)>, StateError> {
        let mut out: Vec<(Generation, u64)> = self
            .list(&task_prefix(task))?
            .into_iter()
            .filter_map(|l| {
                let (t, g) = parse_generation_path(&l.path)?;
                (t == task).then_some((g, l.size))
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The newest checkpoint of every task in the store (legacy `task-NNNNN.ckpt` files at
    /// the root count as generation 0), in task order. Claims are skipped.
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn latest_all(&self) -> Result<Vec<Latest>, StateError> {
        let mut tasks: BTreeMap<TaskId, (Generation, String)> = BTreeMap::new();
        for l in self.list("")? {
            let found = if let Some((task, generation)) = parse_generation_path(&l.path) {
                (l.size > 0).then_some((task, generation))
            } else {
                parse_legacy(&l.path).map(|task| (task, 0))
            };
            if let Some((task, generation)) = found {
                let e = tasks.entry(task).or_insert((generation, l.path.clone()));
                if generation > e.0 {
                    *e = (generation, l.path);
                }
            }
        }
        let mut out = Vec::new();
        for (task, (generation, path)) in tasks {
            // Deleted since the listing only when a newer one was written: read that one.
            match self.get(&path)? {
                Some(bytes) => out.push(Latest {
                    task,
                    generation,
                    path,
                    bytes,
                }),
                None => out.extend(self.latest(task)?),
            }
        }
        Ok(out)
    }

    /// The newest checkpoint of `task` (claims skipped; a legacy `task-NNNNN.ckpt` is
    /// generation 0), or `None` if it has none.
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached.
    pub fn latest(&self, task: TaskId) -> Result<Option<Latest>, StateError> {
        for _ in 0..5 {
            let newest = self
                .generations(task)?
                .into_iter()
                .rev()
                .find(|&(_, size)| size > 0);
            let (generation, path) = match newest {
                Some((g, _)) => (g, generation_path(task, g)),
                None => (0, legacy_name(task)),
            };
            match self.get(&path)? {
                Some(bytes) => {
                    return Ok(Some(Latest {
                        task,
                        generation,
                        path,
                        bytes,
                    }))
                }
                None if generation == 0 => return Ok(None),
                // Cleaned up after a newer write between the listing and the read: again.
                None => continue,
            }
        }
        Err(self.err(
            "read",
            &task_prefix(task),
            object_store::Error::Generic {
                store: "journeyd",
                source: "its checkpoints keep changing while being read".into(),
            },
        ))
    }

    /// Takes `task` over: finds its newest checkpoint and creates the next generation as an
    /// empty claim, so that a write by a previous owner from now on is refused. `have` is the
    /// generation of the task's state this instance still holds in memory (from when it last
    /// owned the task): if that is still the newest, its bytes are not read again
    /// ([`Content::Kept`]).
    ///
    /// # Errors
    /// [`StateError::Store`] when the store refuses or cannot be reached (nothing is claimed
    /// then, or a claim stays that the next owner skips).
    pub fn claim(
        &self,
        task: TaskId,
        have: Option<Generation>,
    ) -> Result<(Lease, Content), StateError> {
        loop {
            let generations = self.generations(task)?;
            let newest = generations.last().map_or(0, |&(g, _)| g);
            let content_gen = generations
                .iter()
                .rev()
                .find(|&&(_, size)| size > 0)
                .map(|&(g, _)| g);
            let (content, legacy) = match content_gen {
                Some(g) if Some(g) == have => (Content::Kept(g), false),
                Some(g) => match self.get(&generation_path(task, g))? {
                    Some(bytes) => (
                        Content::Read {
                            generation: g,
                            bytes,
                        },
                        false,
                    ),
                    None => continue,
                },
                None => match self.get(&legacy_name(task))? {
                    Some(bytes) => (
                        Content::Read {
                            generation: 0,
                            bytes,
                        },
                        true,
                    ),
                    // Generations are numbered from 1 and only a completed write removes the
                    // ones below it, leaving its own content: empty objects alone above a gap
                    // mean that content was lost.
                    None => match generations.first() {
                        Some(&(first, _)) if first > 1 => {
                            return Err(StateError::Damaged {
                                url: self.inner.url.clone(),
                                task,
                                prefix: task_prefix(task),
                                first,
                                newest,
                            })
                        }
                        _ => (Content::Empty, false),
                    },
                },
            };
            let claim = newest + 1;
            if self.create(&generation_path(task, claim), Vec::new())? {
                tracing::debug!(task, generation = claim, "task claimed in the state store");
                return Ok((
                    Lease {
                        task,
                        generation: claim,
                        legacy,
                        uncertain: None,
                    },
                    content,
                ));
            }
            // Someone wrote or claimed it meanwhile: read again.
        }
    }

    /// Writes the task's next checkpoint generation (`lease.generation + 1`) if nobody claimed
    /// or wrote the task since this lease's generation, then deletes the older generations.
    /// Returns the generation written; the lease moves to it.
    ///
    /// # Errors
    /// [`StateError::Fenced`] when another instance claimed or wrote the task since: nothing
    /// of this write stays, and the caller must drop the task. [`StateError::Store`] when the
    /// store refuses or cannot be reached: the previous checkpoint stays and the lease is
    /// unchanged (a later write recognises this one if it did land after all).
    pub fn write(&self, lease: &mut Lease, bytes: Vec<u8>) -> Result<Generation, StateError> {
        let task = lease.task;
        let mut next = lease.generation + 1;
        if let Some((g, crc, len)) = lease.uncertain {
            // Did the failed write land after all? Then it is ours, not a rival's.
            if g == next {
                let ours = self
                    .get(&generation_path(task, g))?
                    .is_some_and(|b| b.len() == len && crc32fast::hash(&b) == crc);
                if ours {
                    lease.generation = g;
                    next = g + 1;
                }
            }
        }
        let path = generation_path(task, next);
        let (crc, len) = (crc32fast::hash(&bytes), bytes.len());
        match self.create(&path, bytes) {
            Ok(true) => lease.uncertain = None,
            Ok(false) => {
                lease.uncertain = None;
                return Err(StateError::Fenced {
                    task,
                    generation: next,
                });
            }
            Err(e) => {
                lease.uncertain = Some((next, crc, len));
                return Err(e);
            }
        }
        let generations = self.generations(task)?;
        if generations.iter().any(|&(g, _)| g > next) {
            // The number had been cleaned up after a newer owner moved past it.
            let _ = self.delete(&path);
            return Err(StateError::Fenced {
                task,
                generation: next,
            });
        }
        lease.generation = next;
        for (g, _) in generations.into_iter().filter(|&(g, _)| g < next) {
            if let Err(e) = self.delete(&generation_path(task, g)) {
                tracing::warn!(task, generation = g, "cannot delete an old checkpoint: {e}");
            }
        }
        if lease.legacy {
            match self.delete(&legacy_name(task)) {
                Ok(()) => lease.legacy = false,
                Err(e) => tracing::warn!(task, "cannot delete the legacy checkpoint: {e}"),
            }
        }
        Ok(next)
    }
}

fn parse_legacy(path: &str) -> Option<TaskId> {
    path.strip_prefix("task-")?
        .strip_suffix(".ckpt")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(store: &StateStore, task: TaskId) -> Vec<Generation> {
        store
            .generations(task)
            .unwrap()
            .into_iter()
            .map(|(g, _)| g)
            .collect()
    }

    #[test]
    fn a_checkpoint_lost_outside_journeyd_is_refused_not_taken_for_none() {
        let s = StateStore::in_memory().unwrap();
        // Claimed but never written (a start that died early): empty, as it should be.
        let (_, content) = s.claim(5, None).unwrap();
        assert_eq!(content, Content::Empty);
        let (mut lease, content) = s.claim(5, None).unwrap();
        assert_eq!(content, Content::Empty, "claims alone, numbered from 1");
        s.write(&mut lease, b"state".to_vec()).unwrap();
        // The newest checkpoint truncated to 0 bytes (a damaged disk, a careless hand).
        let newest = names(&s, 5)[0];
        s.put(&generation_path(5, newest), Vec::new()).unwrap();
        let e = s.claim(5, None).unwrap_err();
        assert!(matches!(e, StateError::Damaged { task: 5, .. }), "{e}");
        assert!(e.to_string().contains("move tasks/00005/ away"), "{e}");
    }

    #[test]
    fn paths_round_trip() {
        assert_eq!(generation_path(3, 42), "tasks/00003/gen-0000000042.ckpt");
        assert_eq!(
            parse_generation_path("tasks/00003/gen-0000000042.ckpt"),
            Some((3, 42))
        );
        assert_eq!(parse_generation_path("members/a.json"), None);
        assert_eq!(parse_legacy("task-00007.ckpt"), Some(7));
    }

    #[test]
    fn generic_objects_put_get_list_delete() {
        let s = StateStore::in_memory().unwrap();
        assert_eq!(s.get("members/a.json").unwrap(), None);
        s.put("members/a.json", b"{}".to_vec()).unwrap();
        s.put("members/b.json", b"{\"x\":1}".to_vec()).unwrap();
        s.put("members/a.json", b"{\"y\":2}".to_vec()).unwrap();
        assert_eq!(s.get("members/a.json").unwrap().unwrap(), b"{\"y\":2}");
        let listed = s.list("members/").unwrap();
        assert_eq!(
            listed,
            vec![
                Listed {
                    path: "members/a.json".into(),
                    size: 7
                },
                Listed {
                    path: "members/b.json".into(),
                    size: 7
                }
            ]
        );
        s.delete("members/a.json").unwrap();
        s.delete("members/a.json").unwrap();
        assert_eq!(s.list("members").unwrap().len(), 1);
        assert!(s.list("nothing/").unwrap().is_empty());
    }

    #[test]
    fn a_task_round_trips_through_generations_and_old_ones_are_cleaned_up() {
        let s = StateStore::in_memory().unwrap();
        let (mut lease, content) = s.claim(3, None).unwrap();
        assert_eq!(content, Content::Empty);
        assert_eq!(lease.generation, 1);
        assert_eq!(s.latest(3).unwrap(), None, "a claim is not a checkpoint");
        assert_eq!(s.write(&mut lease, b"one".to_vec()).unwrap(), 2);
        assert_eq!(s.write(&mut lease, b"two".to_vec()).unwrap(), 3);
        assert_eq!(
            names(&s, 3),
            vec![3],
            "older generations and the claim are gone"
        );
        let latest = s.latest(3).unwrap().unwrap();
        assert_eq!((latest.generation, latest.bytes), (3, b"two".to_vec()));
        let all = s.latest_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].path, "tasks/00003/gen-0000000003.ckpt");
        // The same instance takes it again: nothing to read, a new claim.
        let (lease, content) = s.claim(3, Some(3)).unwrap();
        assert_eq!((content, lease.generation), (Content::Kept(3), 4));
        let (_, content) = s.claim(3, Some(1)).unwrap();
        assert_eq!(
            content,
            Content::Read {
                generation: 3,
                bytes: b"two".to_vec()
            }
        );
    }

    #[test]
    fn a_zombie_cannot_overwrite_the_new_owners_checkpoint() {
        let s = StateStore::in_memory().unwrap();
        // Instance A owns task 0 and checkpoints it.
        let (mut a, _) = s.claim(0, None).unwrap();
        s.write(&mut a, b"a1".to_vec()).unwrap();
        // A pauses; B takes the task over from A's checkpoint.
        let (mut b, content) = s.claim(0, None).unwrap();
        assert!(matches!(content, Content::Read { ref bytes, .. } if bytes == b"a1"));
        // A wakes and writes: refused, and nothing of it stays.
        let err = s.write(&mut a, b"zombie".to_vec()).unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert_eq!(s.latest(0).unwrap().unwrap().bytes, b"a1");
        // B's writes go on; A stays fenced however often it tries.
        s.write(&mut b, b"b1".to_vec()).unwrap();
        s.write(&mut b, b"b2".to_vec()).unwrap();
        for _ in 0..4 {
            assert!(s.write(&mut a, b"zombie".to_vec()).unwrap_err().is_fenced());
        }
        assert_eq!(s.latest(0).unwrap().unwrap().bytes, b"b2");
        assert_eq!(names(&s, 0).len(), 1, "{:?}", names(&s, 0));
    }

    #[test]
    fn a_zombie_far_behind_writing_a_cleaned_up_number_is_fenced_too() {
        let s = StateStore::in_memory().unwrap();
        let (mut a, _) = s.claim(1, None).unwrap(); // 1
        let (mut b, _) = s.claim(1, None).unwrap(); // 2
        for _ in 0..3 {
            s.write(&mut b, b"b".to_vec()).unwrap(); // 3, 4, 5; 1..4 deleted
        }
        // A's next number (2) was cleaned up: creating it succeeds, but 5 is newer.
        assert!(s.write(&mut a, b"zombie".to_vec()).unwrap_err().is_fenced());
        assert_eq!(
            names(&s, 1),
            vec![5],
            "the zombie's object was removed again"
        );
        assert_eq!(s.latest(1).unwrap().unwrap().bytes, b"b");
    }

    #[test]
    fn a_legacy_checkpoint_is_generation_zero_and_removed_by_the_first_write() {
        let s = StateStore::in_memory().unwrap();
        s.put(&legacy_name(2), b"old".to_vec()).unwrap();
        assert_eq!(s.latest(2).unwrap().unwrap().generation, 0);
        assert_eq!(s.latest_all().unwrap()[0].bytes, b"old");
        let (mut lease, content) = s.claim(2, None).unwrap();
        assert_eq!(
            content,
            Content::Read {
                generation: 0,
                bytes: b"old".to_vec()
            }
        );
        s.write(&mut lease, b"new".to_vec()).unwrap();
        assert!(!s.exists(&legacy_name(2)).unwrap());
        assert_eq!(s.latest(2).unwrap().unwrap().bytes, b"new");
    }

    #[test]
    fn the_local_file_system_supports_the_same_fencing() {
        let dir = std::env::temp_dir().join(format!("journey-state-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = format!("file://{}", dir.display());
        let s = StateStore::open(&url).unwrap();
        let (mut a, _) = s.claim(4, None).unwrap();
        s.write(&mut a, b"a".to_vec()).unwrap();
        // Another instance with its own handle on the same directory takes over.
        let other = StateStore::open(&url).unwrap();
        let (mut b, content) = other.claim(4, None).unwrap();
        assert!(matches!(content, Content::Read { ref bytes, .. } if bytes == b"a"));
        assert!(s.write(&mut a, b"zombie".to_vec()).unwrap_err().is_fenced());
        other.write(&mut b, b"b".to_vec()).unwrap();
        assert!(dir.join("tasks/00004/gen-0000000004.ckpt").exists());
        assert_eq!(s.latest(4).unwrap().unwrap().bytes, b"b");
        s.put("members/x.json", b"1".to_vec()).unwrap();
        assert_eq!(s.list("members/").unwrap()[0].path, "members/x.json");
        assert!(s.list("absent/").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let err = StateStore::open("ftp://x").unwrap_err().to_string();
        assert_eq!(
            err,
            "state.url `ftp://x`: expected file:///dir, s3://bucket/prefix or memory://"
        );
        assert!(StateStore::open("s3://")
            .unwrap_err()
            .to_string()
            .contains("no bucket"));
        assert!(StateStore::open("file://").is_err());
    }
}
