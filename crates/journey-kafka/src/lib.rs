//! journey-kafka: the Kafka source of journeyd.
//!
//! A consumer-group member polled on its own thread (Quickwit's pattern: rdkafka's async calls
//! turn synchronous during rebalances). Partition `p` of every input topic belongs to task `p`
//! of `journey-runtime`; the topics must be co-partitioned, which [`partition_count`] checks at
//! start. The data flow: [`topology`] (which topics, how many tasks) → [`assignment`] (which
//! partitions are here, restoring and checkpointing their tasks) → [`source`] (records decoded
//! and submitted to their task) → the runtime; [`lag`] reports consumer lag on the side.
//!
//! Where does partition 3 of topic `web` go? To task 3, on worker `3 mod workers`, as input
//! `Topic(index of web in kafka.topics)`: see [`assignment`].

pub mod assignment;
pub mod lag;
pub mod source;
pub mod topology;

use std::collections::BTreeMap;
use std::time::Duration;

use journey_runtime::Partitioner;

pub use source::KafkaSource;
pub use topology::{partition_count, TopologyError};

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
    /// Passed verbatim to librdkafka.
    pub properties: BTreeMap<String, String>,
    pub topics: Vec<TopicSettings>,
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
}
