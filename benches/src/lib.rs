//! Shared set-up for the journey engine benchmarks.

use std::sync::Arc;

use journey_core::{EngineConfig, Event, Rules, Shard};

/// The allocator the `journeyd` binary uses, so the engine is measured as it runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shipped default rules, so benchmarks classify what users would.
pub const DEFAULT_RULES: &str = include_str!("../../config/rules.toml");

pub fn default_rules() -> Arc<Rules> {
    Arc::new(Rules::from_toml(DEFAULT_RULES).expect("config/rules.toml is valid"))
}

/// Default engine settings plus a `persona` breakdown, as a typical deployment would have.
pub fn bench_config() -> Arc<EngineConfig> {
    Arc::new(EngineConfig {
        breakdowns: vec!["persona".into()],
        ..EngineConfig::default()
    })
}

/// Applies every event to a fresh shard and closes everything, as a replay would.
pub fn replay(events: &[Event<'static>], cfg: &Arc<EngineConfig>, rules: &Arc<Rules>) -> Shard {
    let mut shard = Shard::new(cfg.clone(), rules.clone());
    for e in events {
        // Rejections are counted by the shard; the benchmark only needs the work done.
        let _ = shard.apply(e);
    }
    shard.flush();
    shard
}

/// Resident set size of this process, in bytes (Linux), or `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
