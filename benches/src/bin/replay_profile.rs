//! Applies generated events to one shard in a loop, for profilers (perf, callgrind).
//!
//! Run: `cargo run --release -p journey-benches --bin replay_profile -- [customers] [rounds]`.

use journey_benches::{bench_config, default_rules, replay};
use journey_gen::{generate, GenConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let customers = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let events = generate(&GenConfig {
        customers,
        out_of_order: 0.05,
        ..GenConfig::default()
    });
    let (cfg, rules) = (bench_config(), default_rules());
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        let shard = replay(&events, &cfg, &rules);
        std::hint::black_box(shard.aggregates().counters.events);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = (events.len() * rounds) as f64;
    println!(
        "{} events x {rounds} rounds: {:.0} events/s",
        events.len(),
        n / secs
    );
}
