//! Which topics are read and how many tasks they make: the partition count they share.
//!
//! With `kafka.repartition`, the topics are split as Kafka Streams splits a sub-topology at a
//! repartition topic: the co-partitioned ones are task inputs, the others are read by the
//! repartitioner ([`crate::repartition`]) and reach the tasks through the internal topic
//! `<group_id>-repartition`, which this module creates with one partition per task.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

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
         id), so that task p reads partition p of each: {}; or set kafka.repartition = true to \
         read the others through a repartition topic (docs/operations.md)",
        listing(.counts)
    )]
    Uneven { counts: Vec<(String, usize)> },
    /// The internal topic exists with another partition count than the tasks.
    #[error(
        "the internal topic `{topic}` has {partitions} partitions but the tasks are {tasks} \
         (the largest partition count of the topics read directly): delete it (it holds only \
         copies of input records) or give the topics back their former counts"
    )]
    RepartitionCount {
        topic: String,
        partitions: usize,
        tasks: u32,
    },
    #[error("cannot create the internal topic `{topic}` on {brokers}: {why}")]
    CreateRepartition {
        topic: String,
        brokers: String,
        why: String,
    },
}

/// Which topics the tasks read and which the repartitioner reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The number of tasks: the partition count of every task input.
    pub tasks: u32,
    /// Topics read by the tasks (partition `p` → task `p`), in `kafka.topics` order, then the
    /// internal topic when some topics are repartitioned.
    pub inputs: Vec<String>,
    /// Topics read by the repartitioner, in `kafka.topics` order.
    pub repartitioned: Vec<String>,
}

impl Topology {
    /// Splits the topics, given each one's partition count (in `kafka.topics` order).
    ///
    /// Without `kafka.repartition` every topic is a task input and the counts must be equal.
    /// With it, the task count is the largest count among the topics not marked `repartition`
    /// (among all topics if every one is marked); the unmarked topics with that count are task
    /// inputs and every other topic is repartitioned.
    pub fn plan(
        settings: &crate::KafkaSettings,
        counts: Vec<(String, usize)>,
    ) -> Result<Topology, TopologyError> {
        if counts.iter().any(|(_, n)| *n == 0) {
            return Err(TopologyError::Missing {
                brokers: settings.brokers.clone(),
                counts,
            });
        }
        let marked = |name: &str| {
            settings
                .topics
                .iter()
                .any(|t| t.name == name && t.repartition)
        };
        if !settings.repartition {
            let first = counts.first().map_or(0, |c| c.1);
            if counts.iter().any(|(_, n)| *n != first) {
                return Err(TopologyError::Uneven { counts });
            }
            let inputs = counts.into_iter().map(|(t, _)| t).collect();
            return Ok(Topology {
                tasks: first as u32,
                inputs,
                repartitioned: Vec::new(),
            });
        }
        let direct = counts.iter().filter(|(t, _)| !marked(t)).map(|c| c.1).max();
        let tasks = direct
            .or_else(|| counts.iter().map(|c| c.1).max())
            .unwrap_or(0);
        let (mut inputs, mut repartitioned) = (Vec::new(), Vec::new());
        for (t, n) in counts {
            if n == tasks && !marked(&t) {
                inputs.push(t);
            } else {
                repartitioned.push(t);
            }
        }
        if !repartitioned.is_empty() {
            inputs.push(settings.repartition_topic());
        }
        Ok(Topology {
            tasks: u32::try_from(tasks).unwrap_or(u32::MAX),
            inputs,
            repartitioned,
        })
    }
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

/// The partition count of `topic` (0: missing).
fn count(
    client: &BaseConsumer,
    settings: &KafkaSettings,
    topic: &str,
) -> Result<usize, TopologyError> {
    let meta = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|source| TopologyError::Metadata {
            topic: topic.to_string(),
            brokers: settings.brokers.clone(),
            source: Box::new(source),
        })?;
    Ok(meta
        .topics()
        .iter()
        .find(|m| m.name() == topic && m.error().is_none())
        .map_or(0, |m| m.partitions().len()))
}

/// Reads the partition count of every input topic and splits them ([`Topology::plan`]); when
/// some are repartitioned, creates the internal topic with one partition per task if it is
/// missing. The error names each topic with its count when they cannot be read together, and
/// the internal topic when it exists with another count.
pub fn topology(settings: &KafkaSettings) -> Result<Topology, TopologyError> {
    let mut cfg = client_config(settings);
    for (k, v) in &settings.properties {
        cfg.set(k, v);
    }
    let client: BaseConsumer = cfg.create().map_err(TopologyError::Client)?;
    let mut counts = Vec::new();
    for t in &settings.topics {
        counts.push((t.name.clone(), count(&client, settings, &t.name)?));
    }
    let plan = Topology::plan(settings, counts)?;
    if plan.repartitioned.is_empty() {
        return Ok(plan);
    }
    let topic = settings.repartition_topic();
    let partitions = match count(&client, settings, &topic)? {
        0 => {
            create_topic(settings, &topic, plan.tasks)?;
            count(&client, settings, &topic)?
        }
        n => n,
    };
    if partitions != plan.tasks as usize {
        return Err(TopologyError::RepartitionCount {
            topic,
            partitions,
            tasks: plan.tasks,
        });
    }
    tracing::info!(topic, partitions, repartitioned = ?plan.repartitioned, "repartitioning through the internal topic");
    Ok(plan)
}

/// Creates `topic` with `partitions` partitions; another instance creating it first is fine.
fn create_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: u32,
) -> Result<(), TopologyError> {
    let fail = |why: String| TopologyError::CreateRepartition {
        topic: topic.to_string(),
        brokers: settings.brokers.clone(),
        why,
    };
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers);
    for (k, v) in &settings.properties {
        cfg.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = cfg.create().map_err(TopologyError::Client)?;
    let new = NewTopic::new(
        topic,
        i32::try_from(partitions).unwrap_or(i32::MAX),
        TopicReplication::Fixed(settings.repartition_replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // rdkafka's admin futures complete on librdkafka's thread; any executor can wait for them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .map_err(|e| fail(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "created the internal topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(fail(code.to_string())),
        }
    }
    // Metadata lags creation a little.
    let client: BaseConsumer = client_config(settings)
        .create()
        .map_err(TopologyError::Client)?;
    for _ in 0..50 {
        if count(&client, settings, topic)? > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KafkaSettings, TopicSettings};

    fn settings(repartition: bool, topics: &[(&str, bool)]) -> KafkaSettings {
        KafkaSettings {
            enabled: true,
            brokers: "b:9092".into(),
            group_id: "g".into(),
            partitioner: journey_runtime::Partitioner::Murmur2,
            idle_timeout: Duration::from_secs(10),
            max_task_idle: Duration::from_secs(5),
            max_buffered_records: crate::DEFAULT_MAX_BUFFERED_RECORDS,
            stall_timeout: crate::DEFAULT_STALL_TIMEOUT,
            properties: Default::default(),
            topics: topics
                .iter()
                .map(|&(name, marked)| TopicSettings {
                    name: name.into(),
                    source: name.into(),
                    format: "canonical".into(),
                    mapping: None,
                    repartition: marked,
                })
                .collect(),
            repartition,
            repartition_replication_factor: -1,
        }
    }

    fn counts(c: &[(&str, usize)]) -> Vec<(String, usize)> {
        c.iter().map(|&(t, n)| (t.to_string(), n)).collect()
    }

    #[test]
    fn without_repartition_uneven_counts_are_refused_with_each_count() {
        let s = settings(false, &[("web", false), ("crm", false)]);
        let err = Topology::plan(&s, counts(&[("web", 6), ("crm", 2)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the input topics must have the same partition count (co-partitioned, keyed by \
             customer id), so that task p reads partition p of each: `web`: 6 partitions, \
             `crm`: 2 partitions; or set kafka.repartition = true to read the others through a \
             repartition topic (docs/operations.md)"
        );
    }

    #[test]
    fn co_partitioned_topics_are_all_task_inputs() {
        for repartition in [false, true] {
            let s = settings(repartition, &[("web", false), ("crm", false)]);
            let plan = Topology::plan(&s, counts(&[("web", 4), ("crm", 4)])).unwrap();
            assert_eq!(
                plan,
                Topology {
                    tasks: 4,
                    inputs: vec!["web".into(), "crm".into()],
                    repartitioned: vec![],
                }
            );
        }
    }

    #[test]
    fn the_largest_unmarked_count_makes_the_tasks_and_the_rest_is_repartitioned() {
        let s = settings(
            true,
            &[
                ("crm", false),
                ("web", false),
                ("service", true),
                ("big", true),
            ],
        );
        let plan = Topology::plan(
            &s,
            counts(&[("crm", 2), ("web", 6), ("service", 6), ("big", 12)]),
        )
        .unwrap();
        assert_eq!(
            plan,
            Topology {
                tasks: 6,
                inputs: vec!["web".into(), "g-repartition".into()],
                repartitioned: vec!["crm".into(), "service".into(), "big".into()],
            }
        );
    }

    #[test]
    fn when_every_topic_is_marked_the_largest_count_makes_the_tasks() {
        let s = settings(true, &[("a", true), ("b", true)]);
        let plan = Topology::plan(&s, counts(&[("a", 3), ("b", 5)])).unwrap();
        assert_eq!(plan.tasks, 5);
        assert_eq!(plan.inputs, ["g-repartition"]);
        assert_eq!(plan.repartitioned, ["a", "b"]);
    }

    #[test]
    fn a_missing_topic_is_named_even_with_repartition() {
        let s = settings(true, &[("web", false), ("crm", false)]);
        let err = Topology::plan(&s, counts(&[("web", 6), ("crm", 0)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "every kafka.topics entry must exist on b:9092: `web`: 6 partitions, `crm`: missing"
        );
    }
}
