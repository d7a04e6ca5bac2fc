//! journey-core: the pure journey engine.
//!
//! Events are classified into touchpoints and phases by [`rules::Rules`], grouped per customer
//! into sessions and journeys by a [`shard::Shard`], and counted into mergeable, time-bucketed
//! [`agg::Aggregates`] that [`query`] reads. Nothing here does I/O, spawns threads or reads a
//! clock: time is always an argument, so every behaviour is testable and deterministic.

pub mod agg;
pub mod config;
mod dedup;
pub mod event;
pub mod projection;
pub mod query;
pub mod rules;
pub mod shard;
pub mod sketch;
mod slab;
pub mod snapshot;
pub mod stats;
pub mod time;

pub use config::EngineConfig;
pub use event::{decode_canonical, DecodeError, DecodeLimits, Event};
pub use projection::{Projection, SharedProjection};
pub use rules::{Rules, RulesError};
pub use shard::{Applied, ApplyError, CustomerView, Shard};
