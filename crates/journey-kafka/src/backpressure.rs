//! Pausing partitions that run ahead of their task (Kafka Streams' `buffered.records.per.partition`,
//! as one budget per instance).
//!
//! A task merging several partitions by event time holds a partition's records while another
//! partition of the task, behind in event time, has lag and nothing buffered. When the broker
//! hands over one topic's backlog before another's, the records of the first pile up in the
//! tasks' merge buffers. The consuming thread therefore counts, per partition, the records it
//! handed to the tasks that are not yet applied (acknowledged), and pauses a partition of a
//! merging task once that count passes its share of `kafka.max_buffered_records` (the budget
//! divided by the partitions assigned here, at least [`MIN_SHARE`] and at most
//! [`crate::MAX_HELD_PER_PARTITION`]). It resumes it once the count is down to half the share. Partitions of tasks with a single
//! partition are never paused: their records are applied as they come, and the workers'
//! bounded queues hold them back already.
//!
//! librdkafka drops what it prefetched for a paused partition and, on resume, fetches from the
//! record after the last one handed over, so nothing is skipped or read twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::Part;

/// The fewest unapplied records a partition may have before it is paused, whatever the budget
/// and the partition count: about one fetch (`max.partition.fetch.bytes`, 1 MiB, holds 1 000
/// records of 1 KB), as Kafka Streams' `buffered.records.per.partition` default of 1 000. A
/// smaller share would pause partitions in the middle of their prefetched records, which
/// librdkafka then drops and fetches again. So with more than `max_buffered_records` / 1 024
/// partitions assigned, an instance holds up to 1 024 records per partition instead.
pub(crate) const MIN_SHARE: usize = 1_024;

/// What the consuming thread weighs to pause and resume partitions.
#[derive(Debug)]
pub(crate) struct Backpressure {
    /// `kafka.max_buffered_records`.
    limit: usize,
    /// Unapplied records one partition may have before it is paused.
    share: usize,
    /// Tasks with more than one partition assigned here: they merge by event time.
    merging: BTreeSet<i32>,
    unapplied: BTreeMap<Part, Unapplied>,
}

/// One partition's batches handed to its task and not yet acknowledged as applied.
#[derive(Debug, Default)]
struct Unapplied {
    records: usize,
    batches: VecDeque<(usize, flume::Receiver<()>)>,
}

impl Backpressure {
    pub(crate) fn new(limit: usize) -> Backpressure {
        Backpressure {
            limit,
            share: crate::MAX_HELD_PER_PARTITION,
            merging: BTreeSet::new(),
            unapplied: BTreeMap::new(),
        }
    }

    /// Takes the partitions assigned here now: each one's share, and which tasks merge.
    pub(crate) fn assigned(&mut self, parts: impl IntoIterator<Item = Part>) {
        let mut per_task: BTreeMap<i32, usize> = BTreeMap::new();
        for (_, partition) in parts {
            *per_task.entry(partition).or_default() += 1;
        }
        let count: usize = per_task.values().sum();
        self.share = (self.limit / count.max(1)).clamp(MIN_SHARE, crate::MAX_HELD_PER_PARTITION);
        self.merging = per_task
            .into_iter()
            .filter(|&(_, n)| n > 1)
            .map(|(task, _)| task)
            .collect();
    }

    /// Unapplied records one partition may have before it is paused.
    pub(crate) fn share(&self) -> usize {
        self.share
    }

    /// `records` of `part` were handed to its task; `applied` is acknowledged once they are.
    pub(crate) fn submitted(&mut self, part: Part, records: usize, applied: flume::Receiver<()>) {
        let u = self.unapplied.entry(part).or_default();
        u.records += records;
        u.batches.push_back((records, applied));
    }

    /// Counts the batches applied since (acknowledged, or dropped with a revoked task).
    pub(crate) fn settle(&mut self) {
        for u in self.unapplied.values_mut() {
            while let Some((n, ack)) = u.batches.front() {
                // Another reader may have taken the acknowledgement; the sender is gone then.
                if ack.is_empty() && !ack.is_disconnected() {
                    break;
                }
                u.records -= n;
                u.batches.pop_front();
            }
        }
        self.unapplied.retain(|_, u| !u.batches.is_empty());
    }

    /// Whether `part`, with `reading` more records read and not yet handed over, is past its
    /// share and belongs to a task that merges.
    pub(crate) fn over(&self, part: Part, reading: usize) -> bool {
        self.merging.contains(&part.1) && self.records(part) + reading > self.share
    }

    /// The paused partitions that may be fetched again: down to half their share, or no
    /// longer of a merging task.
    pub(crate) fn resumable(&self, paused: &BTreeSet<Part>) -> Vec<Part> {
        paused
            .iter()
            .filter(|part| {
                !self.merging.contains(&part.1) || self.records(**part) <= self.share / 2
            })
            .copied()
            .collect()
    }

    /// Records handed to the tasks and not yet applied, over every partition.
    pub(crate) fn total(&self) -> usize {
        self.unapplied.values().map(|u| u.records).sum()
    }

    fn records(&self, part: Part) -> usize {
        self.unapplied.get(&part).map_or(0, |u| u.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only partitions of merging tasks are paused, past their share of the budget, and they
    /// are resumed at half of it, not in between, so that a partition is not paused and resumed
    /// every round.
    #[test]
    fn partitions_of_merging_tasks_pause_past_their_share_and_resume_at_half_of_it() {
        let (web3, crm3, web4) = ((0, 3), (1, 3), (0, 4));
        let mut b = Backpressure::new(6_000);
        b.assigned([web3, crm3, web4]);
        assert_eq!(b.share(), 2_000);
        let (done, applied) = flume::bounded(1);
        b.submitted(web3, 1_990, applied);
        assert!(!b.over(web3, 10));
        assert!(b.over(web3, 11), "1 990 handed over and 11 being read");
        let (_pending, unapplied) = flume::bounded(1);
        b.submitted(web3, 1_200, unapplied);
        let (_queued, unapplied) = flume::bounded(1);
        b.submitted(web4, 50_000, unapplied);
        assert!(
            !b.over(web4, 1),
            "task 4 reads one partition: nothing to merge"
        );
        assert_eq!(b.total(), 53_190);
        let paused = BTreeSet::from([web3, web4]);
        b.settle();
        assert_eq!(b.resumable(&paused), vec![web4]);
        done.send(()).unwrap();
        b.settle();
        assert_eq!(b.total(), 51_200);
        assert_eq!(
            b.resumable(&paused),
            vec![web4],
            "web/3 still has 1 200 unapplied records, more than half its share"
        );
        let (late, applied) = flume::bounded(1);
        drop(late);
        b.submitted(crm3, 1, applied);
        b.settle();
        assert_eq!(
            b.records(crm3),
            0,
            "a batch dropped with its task counts as done"
        );
        // crm/3 revoked: task 3 no longer merges, so web/3 may be fetched again.
        b.assigned([web3, web4]);
        assert_eq!(b.share(), 3_000);
        assert_eq!(b.resumable(&paused), vec![web3, web4]);
    }

    #[test]
    fn a_share_is_at_least_one_fetch_and_at_most_the_cap() {
        let mut b = Backpressure::new(200_000);
        b.assigned((0..540).map(|p: i32| (p as usize % 3, p / 3)));
        assert_eq!(b.share(), MIN_SHARE, "200 000 / 540 is 370");
        let mut b = Backpressure::new(usize::MAX);
        b.assigned([(0, 0), (1, 0)]);
        assert_eq!(b.share(), crate::MAX_HELD_PER_PARTITION);
    }
}
