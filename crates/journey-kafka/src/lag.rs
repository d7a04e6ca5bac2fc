//! Consumer-group lag per partition, reported from a client of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use journey_api::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Reports consumer-group lag (end of partition minus committed offset, as Kafka's own tools
/// define it) every few seconds, from a client of its own that does not join the group, so the
/// consuming thread never waits on these round trips. Every partition of every topic gets a
/// gauge, so a stuck one shows.
pub fn report_lag(
    client: BaseConsumer,
    topics: Vec<String>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let timeout = Duration::from_secs(2);
    while !stop.load(Ordering::Relaxed) {
        for topic in &topics {
            let Ok(meta) = client.fetch_metadata(Some(topic), timeout) else {
                continue;
            };
            let mut list = TopicPartitionList::new();
            for t in meta.topics() {
                for p in t.partitions() {
                    list.add_partition(topic, p.id());
                }
            }
            let Ok(committed) = client.committed_offsets(list.clone(), timeout) else {
                continue;
            };
            for e in list.elements() {
                let Ok((low, high)) = client.fetch_watermarks(topic, e.partition(), timeout) else {
                    continue;
                };
                let at = match committed
                    .find_partition(topic, e.partition())
                    .map(|c| c.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                };
                let label = e.partition().to_string();
                metrics
                    .kafka_lag
                    .with_label_values(&[topic.as_str(), label.as_str()])
                    .set((high - at).max(0));
            }
        }
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
