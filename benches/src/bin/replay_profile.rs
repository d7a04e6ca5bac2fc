//! Applies generated events to one shard, batch by batch right after decoding, for profilers
//! (perf, callgrind). Prints the apply rate, decoding excluded.
//!
//! Run: `cargo run --release -p journey-benches --bin replay_profile -- [customers] [rounds]
//! [span_minutes] [tasks]`: journeys start within `span_minutes` (default a day); a short span
//! gives the dense event time of a busy live stream. With `tasks` above 1 the events are split
//! by customer over that many shards, as a runtime's tasks (Kafka partitions) split them, so
//! the engine's cost per task shows in instruction counts.

use journey_benches::{bench_config, default_rules};
use journey_core::{decode_canonical, DecodeLimits, Shard};
use journey_gen::{generate, to_canonical_json, GenConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let customers = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let span_minutes: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(24 * 60);
    let tasks: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let events = generate(&GenConfig {
        customers,
        span: span_minutes * journey_core::time::MINUTE,
        out_of_order: 0.05,
        ..GenConfig::default()
    });
    let lines: Vec<String> = events.iter().map(to_canonical_json).collect();
    let (cfg, rules) = (bench_config(), default_rules());
    let limits = DecodeLimits::default();
    let mut secs = 0.0;
    for _ in 0..rounds {
        // Decode a batch, then apply it while it is in cache, as the service does.
        let mut shards: Vec<Shard> = (0..tasks)
            .map(|_| Shard::new(cfg.clone(), rules.clone()))
            .collect();
        for chunk in lines.chunks(1024) {
            let batch: Vec<_> = chunk
                .iter()
                .filter_map(|l| decode_canonical(l.as_bytes(), "web", &limits).ok())
                .collect();
            let start = std::time::Instant::now();
            for e in &batch {
                let _ = shards[task_of(&e.customer_id, tasks)].apply(e);
            }
            secs += start.elapsed().as_secs_f64();
        }
        let start = std::time::Instant::now();
        for shard in &mut shards {
            shard.flush();
        }
        secs += start.elapsed().as_secs_f64();
        for shard in &shards {
            std::hint::black_box(shard.aggregates().counters.events);
        }
    }
    let n = (events.len() * rounds) as f64;
    println!(
        "{} events x {rounds} rounds: {:.0} events/s",
        events.len(),
        n / secs
    );
}

/// The task of a customer: FNV-1a of the id, modulo `tasks` (any stable spread will do here).
fn task_of(customer_id: &str, tasks: usize) -> usize {
    let h = customer_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h % tasks as u64) as usize
}
