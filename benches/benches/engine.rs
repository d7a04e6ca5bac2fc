//! Criterion micro-benchmarks: decode, classify, engine apply, summary merge.
//! Run: `cargo bench -p journey-benches --bench engine`.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use journey_benches::{bench_config, default_rules, replay};
use journey_core::query::{Include, Summary};
use journey_core::time::DAY;
use journey_core::{decode_canonical, DecodeLimits, Shard};
use journey_gen::{generate, to_canonical_json, GenConfig};

fn benches(c: &mut Criterion) {
    let gen = GenConfig {
        customers: 20_000,
        out_of_order: 0.05,
        ..GenConfig::default()
    };
    let events = generate(&gen);
    let n = events.len() as u64;
    let rules = default_rules();
    let cfg = bench_config();
    let lines: Vec<String> = events.iter().map(to_canonical_json).collect();

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("decode_canonical", |b| {
        let limits = DecodeLimits::default();
        b.iter(|| {
            for l in &lines {
                black_box(decode_canonical(l.as_bytes(), "web", &limits).ok());
            }
        })
    });
    g.bench_function("classify", |b| {
        b.iter(|| {
            for e in &events {
                black_box(rules.classify(e));
            }
        })
    });
    // The engine target: events applied right after decoding, as the service does with each
    // batch it reads, so they are still in cache. Only `apply` and the final flush are timed.
    g.bench_function("apply_decoded_events", |b| {
        let limits = DecodeLimits::default();
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let mut shard = Shard::new(cfg.clone(), rules.clone());
                for chunk in lines.chunks(1024) {
                    let batch: Vec<_> = chunk
                        .iter()
                        .filter_map(|l| decode_canonical(l.as_bytes(), "web", &limits).ok())
                        .collect();
                    let start = Instant::now();
                    for e in &batch {
                        let _ = shard.apply(e);
                    }
                    spent += start.elapsed();
                }
                let start = Instant::now();
                shard.flush();
                spent += start.elapsed();
                black_box(shard.aggregates().counters.events);
            }
            spent
        })
    });
    // The same events decoded long before and scattered in memory: bound by cache misses on
    // the events themselves (each a tree of heap strings), not by the engine.
    g.bench_function("apply_cold_predecoded_events", |b| {
        b.iter_batched(
            || (),
            |_| black_box(replay(&events, &cfg, &rules)),
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let shard = replay(&events, &cfg, &rules);
    let agg = shard.aggregates();
    let from = gen.start - DAY;
    let to = gen.start + 60 * DAY;
    let mut g = c.benchmark_group("query");
    g.sample_size(20);
    g.bench_function("summary_90_days_one_shard", |b| {
        b.iter(|| black_box(Summary::of(agg, from, to, &Include::default())))
    });
    let parts: Vec<Summary> = (0..4)
        .map(|_| Summary::of(agg, from, to, &Include::default()))
        .collect();
    g.bench_function("merge_4_summaries", |b| {
        b.iter(|| {
            let mut s = Summary::default();
            for p in &parts {
                s.merge(p);
            }
            black_box(s)
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
