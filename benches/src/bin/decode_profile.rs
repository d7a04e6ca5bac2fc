//! Parse-only rates of one NDJSON file with each decoder, on one thread: the full decoder
//! (every attribute into a `serde_json::Value`, then projected, as journeyd decoded Segment
//! and CloudEvents records before issue 14) and the projected decoder `journeyd` uses. The
//! projection is that of `config/rules.toml` with a `persona` breakdown, as in the
//! benchmarks. Rounds alternate between the decoders; each prints wall time and this thread's
//! CPU time.
//!
//! Run: `cargo run --release -p journey-benches --bin decode_profile -- FILE [rounds]
//! [canonical|segment|cloudevents] [both|full|projected]` (a file from `journeyd generate
//! --payload realistic`, in that format). One decoder alone is what `valgrind --tool=callgrind`
//! should count.

use std::io::BufReader;
use std::time::Instant;

use journey_benches::{bench_config, default_rules};
use journey_core::{DecodeLimits, Projection, SharedProjection};
use journey_ingest::{for_each_line, Decoder, Format};

/// CPU seconds of the calling thread (user + system), from `/proc/thread-self/stat`.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 overall (utime, stime) are 11 and 12 after the command name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!(
            "usage: decode_profile FILE [rounds] [canonical|segment|cloudevents] [both|full|projected]"
        );
        std::process::exit(2);
    };
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let data = std::fs::read(&file).unwrap_or_else(|e| {
        eprintln!("cannot read {file}: {e}");
        std::process::exit(2);
    });
    let format = args.next().unwrap_or_else(|| "canonical".into());
    let Ok(format) = Format::parse(&format, None) else {
        eprintln!("unknown format {format}: canonical, segment or cloudevents");
        std::process::exit(2);
    };
    let which = args.next().unwrap_or_else(|| "both".into());
    if !["both", "full", "projected"].contains(&which.as_str()) {
        eprintln!("unknown decoder {which}: both, full or projected");
        std::process::exit(2);
    }
    let projection = Projection::for_engine(&default_rules(), &bench_config().breakdowns);
    let full = Decoder::new(format.clone(), "file", DecodeLimits::default());
    let projected = Decoder::new(format, "file", DecodeLimits::default())
        .with_projection(SharedProjection::new(projection.clone()));
    for round in 1..=rounds {
        for (name, decoder) in [("full", &full), ("projected", &projected)] {
            if which != "both" && which != name {
                continue;
            }
            let (wall, cpu) = (Instant::now(), thread_cpu());
            let (mut ok, mut lines) = (0u64, 0u64);
            let _ = for_each_line(BufReader::new(&data[..]), |_, line| {
                lines += 1;
                if let Ok(mut e) = decoder.decode(line) {
                    // What the engine receives either way: the projected attributes.
                    e.attributes = projection.apply(std::mem::take(&mut e.attributes));
                    ok += 1;
                }
            });
            let (wall, cpu) = (wall.elapsed().as_secs_f64(), thread_cpu() - cpu);
            println!(
                "round {round} {name:<9} {ok}/{lines} lines, {wall:.2} s wall ({:.2} M lines/s), {cpu:.2} s CPU ({:.2} M lines/CPU-s)",
                lines as f64 / wall / 1e6,
                lines as f64 / cpu.max(1e-9) / 1e6
            );
        }
    }
}
