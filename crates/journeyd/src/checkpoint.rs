//! Taking checkpoints on a schedule and restoring the workers from one at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use journey_api::Metrics;
use journey_core::{EngineConfig, Rules, Shard};
use journey_runtime::checkpoint::{path_in, Checkpoint, KafkaPosition};
use journey_runtime::RuntimeHandle;

use crate::now_ms;

/// Takes checkpoints into one directory. Whoever submits the events that must be covered
/// (the Kafka thread, or the service when there is no Kafka) owns it, so that its
/// submissions and the snapshots are ordered.
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    interval: Duration,
    last: Instant,
    metrics: Arc<Metrics>,
}

impl Checkpointer {
    pub fn new(dir: PathBuf, interval: Duration, metrics: Arc<Metrics>) -> Checkpointer {
        Checkpointer {
            dir,
            interval,
            last: Instant::now(),
            metrics,
        }
    }

    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// Snapshots every worker (after everything this thread submitted) and writes the
    /// checkpoint with `kafka` positions. Failures are logged and counted; the previous
    /// checkpoint stays in place. Returns whether one was written.
    pub fn take(&mut self, rt: &RuntimeHandle, kafka: Vec<KafkaPosition>) -> bool {
        self.last = Instant::now();
        let started = Instant::now();
        let Ok(shards) = rt.snapshot_blocking() else {
            return false;
        };
        let snapshot_took = started.elapsed();
        let checkpoint = Checkpoint {
            created_ms: now_ms(),
            kafka,
            shards,
        };
        match checkpoint.write(&self.dir) {
            Ok(bytes) => {
                self.metrics
                    .checkpoints
                    .with_label_values(&["written"])
                    .inc();
                self.metrics.checkpoint_bytes.set(bytes as i64);
                self.metrics
                    .checkpoint_last_success
                    .set(checkpoint.created_ms / 1000);
                tracing::debug!(
                    bytes,
                    snapshot_ms = snapshot_took.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
                true
            }
            Err(e) => {
                self.metrics
                    .checkpoints
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(
                    dir = %self.dir.display(),
                    "cannot write a checkpoint, the previous one stays: {e}"
                );
                false
            }
        }
    }
}

/// What a start restores: one shard per worker and where Kafka resumes.
pub struct Restored {
    pub shards: Vec<Shard>,
    pub kafka: Vec<KafkaPosition>,
}

/// Reads the checkpoint in `dir`, if any. A checkpoint that cannot be used whole is an error:
/// starting empty instead would silently lose everything it holds.
pub fn restore(
    dir: &Path,
    workers: usize,
    cfg: &Arc<EngineConfig>,
    rules: &Arc<Rules>,
) -> Result<Option<Restored>> {
    let path = path_in(dir);
    let hint = || {
        format!(
            "to start with empty state instead, move {} out of the way",
            path.display()
        )
    };
    let Some(cp) = Checkpoint::read(dir).map_err(|e| anyhow!("{e}; {}", hint()))? else {
        tracing::info!(dir = %dir.display(), "no checkpoint yet; starting with empty state");
        return Ok(None);
    };
    if cp.shards.len() != workers {
        bail!(
            "checkpoint {} holds {} worker shards but runtime.workers is {workers}; customers are \
             spread over workers by a hash of their id, so set runtime.workers = {} ({})",
            path.display(),
            cp.shards.len(),
            cp.shards.len(),
            hint()
        );
    }
    let mut shards = Vec::with_capacity(workers);
    for (i, bytes) in cp.shards.iter().enumerate() {
        let shard = Shard::restore(bytes, cfg.clone(), rules.clone())
            .map_err(|e| anyhow!("checkpoint {}, shard {i}: {e}; {}", path.display(), hint()))?;
        shards.push(shard);
    }
    let customers: usize = shards.iter().map(Shard::customers).sum();
    let age_s = (now_ms() - cp.created_ms) / 1000;
    tracing::info!(
        path = %path.display(),
        customers,
        partitions = cp.kafka.len(),
        age_s,
        "restored from checkpoint"
    );
    Ok(Some(Restored {
        shards,
        kafka: cp.kafka,
    }))
}
