//! Resident memory per tracked customer.
//!
//! Run: `cargo run --release -p journey-benches --bin memory -- [customers]`.
//! Each state is measured in a child process of its own, because memory freed inside a process
//! stays with the allocator and would hide the next measurement:
//! - `open`: N customers, each with one classified event in a still-open session;
//! - `closed`: N customers whose sessions have closed while their journeys stay tracked (the
//!   conversion window is 30 days). Customers arrive in groups (10 000, or n/500) an hour apart, so
//!   session buffers freed by one batch are reused by the next, as in a live service.
//! - the `closed` state spread over 1, 12 and 64 tasks (one shard each, customers routed by
//!   murmur2 as Kafka producers do): what many partitions on one instance cost (SPEC §9: 64
//!   tasks ≤ 1.5 × the memory of 1).

use std::borrow::Cow;
use std::process::Command;

use journey_benches::{bench_config, default_rules, resident_bytes};
use journey_core::time::{HOUR, MINUTE};
use journey_core::{Event, Shard};
use journey_runtime::Partitioner;
use serde_json::{json, Value};

const T0: i64 = 1_795_000_000_000;
/// Customers arriving together, an hour after the previous group; at most 500 groups, so the
/// last arrives within the 30-day conversion window of the first.
fn batch(n: usize) -> usize {
    (n / 500).max(10_000)
}

fn event(i: usize, ts: i64, attributes: &Value) -> Event<'static> {
    Event {
        event_id: None,
        customer_id: Cow::Owned(format!("customer-{i:08}")),
        ts,
        source: Cow::Borrowed("web"),
        name: Cow::Borrowed("page_view"),
        attributes: attributes.clone(),
    }
}

/// Resident bytes grown per customer, with the customers spread over `tasks` shards.
fn measure(mode: &str, n: usize, tasks: u32) -> f64 {
    let attributes = json!({ "url": "/products/1", "persona": "researcher" });
    let base = resident_bytes().expect("/proc/self/statm is readable");
    let mut shards: Vec<Shard> = (0..tasks)
        .map(|_| Shard::new(bench_config(), default_rules()))
        .collect();
    let task = |i: usize| {
        let id = format!("customer-{i:08}");
        Partitioner::Murmur2.partition(id.as_bytes(), tasks) as usize
    };
    match mode {
        "open" => {
            for i in 0..n {
                shards[task(i)]
                    .apply(&event(i, T0 + (i % 1_000) as i64, &attributes))
                    .expect("accepted");
            }
            assert_eq!(shards.iter().map(Shard::open_sessions).sum::<usize>(), n);
        }
        _ => {
            let group = batch(n);
            for i in 0..n {
                let batch_start = T0 + (i / group) as i64 * HOUR;
                if i % group == 0 {
                    for s in &mut shards {
                        s.advance_clock(batch_start);
                    }
                }
                shards[task(i)]
                    .apply(&event(i, batch_start + (i % 1_000) as i64, &attributes))
                    .expect("accepted");
            }
            for s in &mut shards {
                s.advance_clock(T0 + (n / group + 1) as i64 * HOUR + 10 * MINUTE);
            }
            assert_eq!(shards.iter().map(Shard::open_sessions).sum::<usize>(), 0);
        }
    }
    assert_eq!(shards.iter().map(Shard::customers).sum::<usize>(), n);
    let grown = resident_bytes().unwrap_or(0).saturating_sub(base);
    grown as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let tasks = args.get(4).map_or(1, |t| t.parse().expect("task count"));
        let per = measure(&args[2], args[3].parse().expect("customer count"), tasks);
        println!("{per:.1}");
        return;
    }
    let n: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let exe = std::env::current_exe().expect("own path");
    println!(
        "customers: {n} (ids of 17 bytes, `customer-NNNNNNNN`; default rules; persona breakdown)"
    );
    let child = |mode: &str, tasks: u32| -> f64 {
        let out = Command::new(&exe)
            .args(["--child", mode, &n.to_string(), &tasks.to_string()])
            .output()
            .expect("child runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("bytes per customer")
    };
    for (mode, label) in [
        ("closed", "without an open session"),
        ("open", "with a one-event open session"),
    ] {
        println!("resident bytes per customer {label}: {:.1}", child(mode, 1));
    }
    let one = child("closed", 1);
    for tasks in [1, 12, 64] {
        let per = if tasks == 1 {
            one
        } else {
            child("closed", tasks)
        };
        println!(
            "{tasks:>2} tasks, customers without an open session: {:.1} MB resident, {per:.1} B per customer, {:.2}x one task",
            per * n as f64 / 1e6,
            per / one
        );
    }
}
