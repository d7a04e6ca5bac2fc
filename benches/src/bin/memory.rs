//! Resident memory per tracked customer.
//!
//! Run: `cargo run --release -p journey-benches --bin memory -- [customers]`.
//! Each state is measured in a child process of its own, because memory freed inside a process
//! stays with the allocator and would hide the next measurement:
//! - `open`: N customers, each with one classified event in a still-open session;
//! - `closed`: N customers whose sessions have closed while their journeys stay tracked (the
//!   conversion window is 30 days). Customers arrive in groups (10 000, or n/500) an hour apart, so
//!   session buffers freed by one batch are reused by the next, as in a live service.

use std::borrow::Cow;
use std::process::Command;

use journey_benches::{bench_config, default_rules, resident_bytes};
use journey_core::time::{HOUR, MINUTE};
use journey_core::{Event, Shard};
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

fn measure(mode: &str, n: usize) -> f64 {
    let attributes = json!({ "url": "/products/1", "persona": "researcher" });
    let mut shard = Shard::new(bench_config(), default_rules());
    let base = resident_bytes().expect("/proc/self/statm is readable");
    match mode {
        "open" => {
            for i in 0..n {
                shard
                    .apply(&event(i, T0 + (i % 1_000) as i64, &attributes))
                    .expect("accepted");
            }
            assert_eq!(shard.open_sessions(), n);
        }
        _ => {
            let group = batch(n);
            for i in 0..n {
                let batch_start = T0 + (i / group) as i64 * HOUR;
                if i % group == 0 {
                    shard.advance_clock(batch_start);
                }
                shard
                    .apply(&event(i, batch_start + (i % 1_000) as i64, &attributes))
                    .expect("accepted");
            }
            shard.advance_clock(T0 + (n / group + 1) as i64 * HOUR + 10 * MINUTE);
            assert_eq!(shard.open_sessions(), 0);
        }
    }
    assert_eq!(shard.customers(), n);
    let grown = resident_bytes().unwrap_or(0).saturating_sub(base);
    grown as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let per = measure(&args[2], args[3].parse().expect("customer count"));
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
    for (mode, label) in [
        ("closed", "without an open session"),
        ("open", "with a one-event open session"),
    ] {
        let out = Command::new(&exe)
            .args(["--child", mode, &n.to_string()])
            .output()
            .expect("child runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let per = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("resident bytes per customer {label}: {per}");
    }
}
