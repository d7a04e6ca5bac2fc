//! journey-kafka: the Kafka source of journeyd.
//!
//! A consumer-group member polled on its own thread (Quickwit's pattern: rdkafka's async calls
//! turn synchronous during rebalances). Partition `p` of every input topic belongs to task `p`
//! of `journey-runtime`; the topics must be co-partitioned, which [`topology()`] checks at
//! start. With `kafka.repartition`, the topics that are not (other partition counts, or marked
//! as keyed by something else) go through [`repartition`] into the internal topic
//! `<group_id>-repartition`, co-partitioned by construction and read like any other input.
//! The data flow: [`topology`] (which topics, how many tasks) → [`assignment`] (which
//! partitions are here, restoring and checkpointing their tasks) → [`source`] (records decoded
//! and submitted to their task) → the runtime; `backpressure` pauses partitions whose records
//! wait in their task, `stall` reports assigned partitions that stopped moving, and [`lag`]
//! reports consumer lag on the side.
//!
//! Where does partition 3 of topic `web` go? To task 3, on worker `3 mod workers`, as input
//! `Topic(index of web in kafka.topics)`: see [`assignment`].

pub mod assignment;
mod backpressure;
pub mod lag;
pub mod repartition;
pub mod source;
mod stall;
pub mod topology;

use std::collections::BTreeMap;
use std::time::Duration;

use journey_runtime::Partitioner;

pub use source::KafkaSource;
pub use topology::{topology, Topology, TopologyError};

/// Default of [`KafkaSettings::max_buffered_records`]: about 150 MB of waiting records at the
/// 740–760 bytes one takes with the default rules (docs/benchmarks.md, "Memory of a buffered
/// record").
pub const DEFAULT_MAX_BUFFERED_RECORDS: usize = 200_000;

/// Default of [`KafkaSettings::stall_timeout`]: long enough that a healthy partition, even one
/// whose task waits for a slower one it merges with, always moves within it; short enough that
/// the on-call engineer hears of a stuck one before its sessions are missed.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The most unapplied records one partition may have before it is paused, whatever
/// [`KafkaSettings::max_buffered_records`] allows: a quarter of the runtime's
/// [`journey_runtime::MAX_BUFFERED`], so a task of up to four partitions is paused before it
/// gives up waiting and applies records out of order.
pub const MAX_HELD_PER_PARTITION: usize = journey_runtime::MAX_BUFFERED / 4;

/// A partition: (index of its topic in [`KafkaSettings::topics`], partition = task id).
pub type Part = (usize, i32);

/// What went wrong starting the source.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("cannot create the Kafka {what}: {source}")]
    Client {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka topic `{topic}`: {why}")]
    Format { topic: String, why: String },
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// `[kafka]`: the consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSettings {
    pub enabled: bool,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `group.id`.
    pub group_id: String,
    /// How producers key records to partitions; HTTP input is routed the same way.
    pub partitioner: Partitioner,
    /// A caught-up partition quiet this long stops holding its task's watermark back.
    pub idle_timeout: Duration,
    /// How long a task holds its other partitions' records back for a partition that has lag
    /// and nothing buffered, so that it applies its partitions merged by event time (Kafka
    /// Streams' `max.task.idle.ms`).
    pub max_task_idle: Duration,
    /// Records read and handed to this instance's tasks but not yet applied (queued for a
    /// worker, or waiting in a merge buffer for a partition behind in event time): a partition
    /// of a merging task with more than this divided by the partitions assigned here (at least
    /// 1 024, about one fetch; at most [`MAX_HELD_PER_PARTITION`]) is paused, and resumed at
    /// half of that (Kafka Streams' `buffered.records.per.partition`, as one budget; see
    /// `backpressure`).
    pub max_buffered_records: usize,
    /// An assigned partition with records past its position that has not moved for this long
    /// (and was not paused by journeyd) is reported stalled: a warning naming it and
    /// `journeyd_kafka_stalled_partitions` (Burrow's `STALL`; see `stall`).
    pub stall_timeout: Duration,
    /// Passed verbatim to librdkafka.
    pub properties: BTreeMap<String, String>,
    pub topics: Vec<TopicSettings>,
    /// Read topics that are not co-partitioned through the internal topic
    /// [`KafkaSettings::repartition_topic`] instead of refusing to start.
    pub repartition: bool,
    /// Replication factor of the internal topic when journeyd creates it; -1: the broker's
    /// `default.replication.factor`.
    pub repartition_replication_factor: i32,
}

impl KafkaSettings {
    /// The internal topic repartitioned records go through: `<group_id>-repartition`, also the
    /// consumer group of the repartitioners (Kafka Streams names its topics the same way).
    pub fn repartition_topic(&self) -> String {
        format!("{}-repartition", self.group_id)
    }
}

/// One `[[kafka.topics]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSettings {
    pub name: String,
    /// `source` of the events read from it; defaults to the topic name.
    pub source: String,
    /// One of [`journey_ingest::Format::NAMES`]; defaults to `canonical`. Checked with
    /// [`journey_ingest::Format::parse`], so that call cannot fail on these settings.
    pub format: String,
    /// Canonical field → JSON pointer; present exactly when `format` is `mapping`.
    pub mapping: Option<BTreeMap<String, String>>,
    /// Records keyed by something other than the customer id: always repartitioned (needs
    /// [`KafkaSettings::repartition`]).
    pub repartition: bool,
}
