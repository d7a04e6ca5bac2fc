//! Which topics are read and how many tasks they make: the partition count they share.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::KafkaSettings;

/// The input topics are not co-partitioned, or cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read the metadata of topic `{topic}` from {brokers}: {source}")]
    Metadata {
        topic: String,
        brokers: String,
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("cannot create a Kafka client: {0}")]
    Client(rdkafka::error::KafkaError),
    /// A topic is missing: each topic with its partition count (0: missing).
    #[error("every kafka.topics entry must exist on {brokers}: {}", listing(.counts))]
    Missing {
        brokers: String,
        counts: Vec<(String, usize)>,
    },
    /// The counts differ: each topic with its partition count.
    #[error(
        "the input topics must have the same partition count (co-partitioned, keyed by customer \
         id), so that task p reads partition p of each: {}",
        listing(.counts)
    )]
    Uneven { counts: Vec<(String, usize)> },
}

fn listing(counts: &[(String, usize)]) -> String {
    counts
        .iter()
        .map(|(t, n)| {
            if *n == 0 {
                format!("`{t}`: missing")
            } else {
                format!("`{t}`: {n} partitions")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The client settings every journeyd Kafka client shares.
pub(crate) fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // When the prefetch queue is full, librdkafka waits this long before fetching a
        // partition again. Its default (1 s) starves a consumer that decodes as it reads:
        // every partition stalls together. 10 ms tripled throughput (docs/benchmarks.md).
        .set("fetch.queue.backoff.ms", "10")
        // A task reads partition p of every topic; `range` gives them all to one member.
        // cooperative-sticky and roundrobin spread a task's partitions over members.
        .set("partition.assignment.strategy", "range")
        // Statistics tell when a partition is caught up (fetcher at the high watermark).
        .set("statistics.interval.ms", "1000");
    cfg
}

/// The partition count shared by every input topic: the number of tasks. The error names each
/// topic with its count when they differ or a topic is missing.
pub fn partition_count(settings: &KafkaSettings) -> Result<u32, TopologyError> {
    let mut cfg = client_config(settings);
    for (k, v) in &settings.properties {
        cfg.set(k, v);
    }
    let client: BaseConsumer = cfg.create().map_err(TopologyError::Client)?;
    let timeout = Duration::from_secs(10);
    let mut counts = Vec::new();
    for t in &settings.topics {
        let meta = client
            .fetch_metadata(Some(&t.name), timeout)
            .map_err(|source| TopologyError::Metadata {
                topic: t.name.clone(),
                brokers: settings.brokers.clone(),
                source: Box::new(source),
            })?;
        let n = meta
            .topics()
            .iter()
            .find(|m| m.name() == t.name && m.error().is_none())
            .map_or(0, |m| m.partitions().len());
        counts.push((t.name.clone(), n));
    }
    if counts.iter().any(|(_, n)| *n == 0) {
        return Err(TopologyError::Missing {
            brokers: settings.brokers.clone(),
            counts,
        });
    }
    let first = counts.first().map_or(0, |c| c.1);
    if counts.iter().any(|(_, n)| *n != first) {
        return Err(TopologyError::Uneven { counts });
    }
    Ok(first as u32)
}
