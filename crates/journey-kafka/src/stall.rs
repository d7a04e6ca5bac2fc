//! Stalled partitions: assigned here, with records to read, and not moving.
//!
//! Burrow's `STALL` status, seen from the member that owns the partition: a partition whose
//! records past the application's position exist (the high watermark is ahead of it), that
//! journeyd has not paused itself (`backpressure`), and whose position has not moved for
//! `kafka.stall_timeout`. Its task cannot move its watermark past it, so the sessions of that
//! task's customers stop closing; without a word, that looks like a quiet stream. Causes seen:
//! a broker that stopped serving the partition (or reports a high watermark it never serves),
//! an open or hung transaction holding `read_committed` consumers at the last stable offset,
//! an offset that cannot be fetched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Part;

/// What librdkafka's statistics say of one assigned partition, as [`Stalls::observe`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The offset after the last record handed to journeyd (`app_offset`), or, when none was
    /// since the partition was assigned, sought or resumed, the fetcher's (`next_offset`);
    /// negative when librdkafka does not know it yet.
    pub(crate) position: i64,
    /// The partition's high watermark (`hi_offset`); negative when not known yet.
    pub(crate) high: i64,
    /// The last stable offset (`ls_offset`): with `isolation.level = read_committed` (the
    /// default), records from here on wait for their transaction to end.
    pub(crate) last_stable: i64,
    /// journeyd paused it itself: not moving is intended.
    pub(crate) paused: bool,
}

impl Progress {
    /// Reads one partition's statistics; `paused`: whether journeyd paused it.
    pub(crate) fn of(p: &rdkafka::statistics::Partition, paused: bool) -> Progress {
        Progress {
            position: if p.app_offset >= 0 {
                p.app_offset
            } else {
                p.next_offset
            },
            high: p.hi_offset,
            last_stable: p.ls_offset,
            paused,
        }
    }

    /// Records exist past the position, or the position or the end is not known: the
    /// partition's offsets cannot be looked up or it was never fetched (its leader unreachable,
    /// say). A partition fetched to its end has both.
    fn behind(&self) -> bool {
        self.position < 0 || self.high < 0 || self.position < self.high
    }
}

/// A change worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The partition has not moved for `since` although it is behind.
    Stalled { progress: Progress, since: Duration },
    /// A partition reported stalled moved again (or caught up, or was paused) after `after`.
    Moving { after: Duration },
}

#[derive(Debug)]
struct Tracked {
    position: i64,
    since: Instant,
    stalled: bool,
}

/// A gap between two statistics reports (librdkafka emits one a second) longer than this
/// means the consuming thread did not poll meanwhile: blocked on a checkpoint write or a
/// restore, say. Positions did not move because journeyd did not read, whatever the broker
/// did, so the clocks start again.
const MAX_REPORT_GAP: Duration = Duration::from_secs(5);

/// Per assigned partition: its position and since when it has not moved.
#[derive(Debug)]
pub(crate) struct Stalls {
    timeout: Duration,
    parts: HashMap<Part, Tracked>,
    /// When the last statistics report was taken.
    last_report: Option<Instant>,
}

impl Stalls {
    /// `timeout`: `kafka.stall_timeout`.
    pub(crate) fn new(timeout: Duration) -> Stalls {
        Stalls {
            timeout,
            parts: HashMap::new(),
            last_report: None,
        }
    }

    /// Starts taking one statistics report at `now`, before [`Stalls::observe`] of each of
    /// its partitions. After a gap in the reports (the consuming thread did not poll, so the
    /// reports queued meanwhile are stale), every partition's clock starts again at `now`:
    /// a stall of journeyd's own thread is not its partitions' (checkpoint and restore
    /// failures have their own metrics and log lines).
    pub(crate) fn report(&mut self, now: Instant) {
        let starved = self
            .last_report
            .is_some_and(|last| now.saturating_duration_since(last) > MAX_REPORT_GAP);
        if starved {
            for t in self.parts.values_mut() {
                t.since = now;
            }
        }
        self.last_report = Some(now);
    }

    /// Takes one statistics report of `part` at `now`; returns a change when the partition
    /// became stalled or stopped being so. Each stall is reported once.
    pub(crate) fn observe(
        &mut self,
        part: Part,
        progress: Progress,
        now: Instant,
    ) -> Option<Change> {
        let t = self.parts.entry(part).or_insert(Tracked {
            position: progress.position,
            since: now,
            stalled: false,
        });
        let waiting = progress.behind() && !progress.paused;
        if !waiting || t.position != progress.position {
            let after = now.saturating_duration_since(t.since);
            let was = t.stalled;
            *t = Tracked {
                position: progress.position,
                since: now,
                stalled: false,
            };
            return was.then_some(Change::Moving { after });
        }
        let since = now.saturating_duration_since(t.since);
        if t.stalled || since < self.timeout {
            return None;
        }
        t.stalled = true;
        Some(Change::Stalled { progress, since })
    }

    /// Forgets the partitions `keep` rejects (no longer assigned here).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Part) -> bool) {
        self.parts.retain(|p, _| keep(p));
    }

    /// Partitions reported stalled and not moving since.
    pub(crate) fn stalled(&self) -> usize {
        self.parts.values().filter(|t| t.stalled).count()
    }
}

/// The warning for a stalled partition of `topic`.
pub(crate) fn stalled_message(
    topic: &str,
    partition: i32,
    p: &Progress,
    since: Duration,
) -> String {
    let at = match (p.position >= 0, p.high >= 0) {
        (true, true) => format!(
            "at offset {} of {} ({} records behind)",
            p.position,
            p.high,
            p.high - p.position
        ),
        (true, false) => format!("at offset {}, its end not known", p.position),
        (false, true) => format!("with no known position (the partition ends at {})", p.high),
        (false, false) => "with neither its position nor its end known".to_string(),
    };
    let why = if p.position >= 0 && p.last_stable >= 0 && p.position >= p.last_stable {
        format!(
            "the last stable offset is {}: a transaction still open (or abandoned by its \
             producer) holds read_committed consumers there until it ends or times out",
            p.last_stable
        )
    } else {
        "check the broker that leads it (its logs, and whether it serves fetches of this \
         partition)"
            .to_string()
    };
    format!(
        "Kafka partition {topic}/{partition} has not moved for {}s {at}: {why}. Its task's \
         watermark waits for it, so the sessions of that task's customers do not close \
         (docs/operations.md, \"Stalled partitions\")",
        since.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: Part = (0, 3);

    fn at(position: i64, high: i64) -> Progress {
        Progress {
            position,
            high,
            last_stable: high,
            paused: false,
        }
    }

    #[test]
    fn a_partition_behind_and_not_moving_is_reported_once_then_again_when_it_moves() {
        let mut s = Stalls::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        assert_eq!(s.observe(PART, at(10, 50), t0), None);
        assert_eq!(s.observe(PART, at(10, 50), secs(59)), None);
        assert_eq!(
            s.observe(PART, at(10, 50), secs(61)),
            Some(Change::Stalled {
                progress: at(10, 50),
                since: Duration::from_secs(61)
            })
        );
        assert_eq!(s.stalled(), 1);
        assert_eq!(
            s.observe(PART, at(10, 60), secs(200)),
            None,
            "reported once"
        );
        assert_eq!(
            s.observe(PART, at(11, 60), secs(201)),
            Some(Change::Moving {
                after: Duration::from_secs(201)
            })
        );
        assert_eq!(s.stalled(), 0);
        // The clock starts again at the new position.
        assert_eq!(s.observe(PART, at(11, 60), secs(260)), None);
        assert!(matches!(
            s.observe(PART, at(11, 60), secs(262)),
            Some(Change::Stalled { .. })
        ));
    }

    #[test]
    fn a_moving_caught_up_or_paused_partition_is_never_stalled() {
        let mut s = Stalls::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10u64 {
            let now = t0 + Duration::from_secs(100 * i);
            // Moving: a new position each report.
            assert_eq!(s.observe((0, 0), at(i as i64, 1000), now), None);
            // Caught up: nothing past the position.
            assert_eq!(s.observe((0, 1), at(500, 500), now), None);
            // Paused by journeyd.
            let paused = Progress {
                paused: true,
                ..at(7, 900)
            };
            assert_eq!(s.observe((0, 2), paused, now), None);
        }
        assert_eq!(s.stalled(), 0);
    }

    #[test]
    fn an_unknown_position_or_end_stalls_and_a_revoked_partition_is_forgotten() {
        let mut s = Stalls::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(31);
        // Records to read; nothing known at all; a position sought but never fetched from (a
        // leader unreachable from the start: librdkafka stays in `offset-query`).
        let parts = [
            (PART, at(-1001, 40)),
            ((1, 3), at(-1001, -1)),
            ((1, 4), at(0, -1001)),
        ];
        for (part, progress) in parts {
            assert_eq!(s.observe(part, progress, t0), None);
            assert!(matches!(
                s.observe(part, progress, later),
                Some(Change::Stalled { .. })
            ));
        }
        assert_eq!(s.stalled(), 3);
        s.retain(|p| parts.iter().all(|(q, _)| q != p));
        assert_eq!(s.stalled(), 0);
    }

    /// The consuming thread blocked (a checkpoint write to a slow store) for longer than the
    /// timeout: the reports queued meanwhile arrive together afterwards, showing positions
    /// that did not move. They do not make a stall.
    #[test]
    fn reports_after_the_consuming_thread_was_blocked_do_not_make_a_stall() {
        let mut s = Stalls::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        s.report(t0);
        assert_eq!(s.observe(PART, at(10, 50), t0), None);
        s.report(secs(1));
        assert_eq!(s.observe(PART, at(11, 50), secs(1)), None);
        // Blocked from 1 s to 9 s; the queued reports, all at position 11, come at once.
        for k in 0..8 {
            let now = secs(9) + Duration::from_millis(k);
            s.report(now);
            assert_eq!(s.observe(PART, at(11, 50), now), None, "report {k}");
        }
        // Polling again: the position moves.
        s.report(secs(10));
        assert_eq!(s.observe(PART, at(400, 500), secs(10)), None);
        // A real stall is still seen, the timeout after the position stopped.
        for n in 11..=14 {
            s.report(secs(n));
            assert_eq!(s.observe(PART, at(400, 500), secs(n)), None, "{n} s");
        }
        s.report(secs(15));
        assert!(matches!(
            s.observe(PART, at(400, 500), secs(15)),
            Some(Change::Stalled { .. })
        ));
    }

    #[test]
    fn the_message_names_the_partition_and_an_open_transaction() {
        let open_txn = Progress {
            position: 120,
            high: 130,
            last_stable: 120,
            paused: false,
        };
        let m = stalled_message("web", 4, &open_txn, Duration::from_secs(300));
        assert!(
            m.contains("web/4 has not moved for 300s at offset 120 of 130 (10 records behind)"),
            "{m}"
        );
        assert!(m.contains("last stable offset is 120"), "{m}");
        let broker = stalled_message("web", 4, &at(120, 130), Duration::from_secs(300));
        assert!(
            broker.contains("check the broker that leads it"),
            "{broker}"
        );
        assert!(!broker.contains("last stable"), "{broker}");
        let unreachable = stalled_message("web", 4, &at(0, -1001), Duration::from_secs(300));
        assert!(
            unreachable.contains("at offset 0, its end not known"),
            "{unreachable}"
        );
    }
}
