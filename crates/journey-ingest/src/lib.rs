//! journey-ingest: turns bytes from the outside world into canonical events.
//!
//! This crate is the "decode" step of source → decode → shard → engine. A source (Kafka, an
//! HTTP batch, an NDJSON file) cuts its input into records — [`split_body`] for HTTP bodies,
//! [`for_each_line`] for files and stdin — and hands each record's bytes to a [`Decoder`].
//! The decoder knows one wire [`Format`] (canonical, Segment, CloudEvents or a JSON-pointer
//! [`Mapping`]) and produces a [`journey_core::Event`], borrowing from the record where it
//! can.
//!
//! Every way a record can fail is a [`journey_core::DecodeError`] whose `reason()` is the
//! stable dead-letter and metric label and whose message names the offending field, so that
//! a dead-lettered record explains itself. Nothing here does I/O beyond reading the
//! `BufRead` it is given (and the wall clock, through a replaceable [`Clock`], to reject
//! records dated more than `ingest.max_future` ahead), and nothing is dropped silently: splitting keeps records that will
//! fail to decode, so the caller can count and dead-letter them with their position.

mod body;
mod cloudevents;
mod deadletter;
mod decode;
mod format;
mod mapping;
mod segment;

pub use body::{
    for_each_line, for_each_line_of_block, is_blank, split_body, strip_bom, trim_line_ending,
    Record, Records, BOM,
};
pub use deadletter::{DeadLetter, DeadLetters, Position};
pub use decode::{system_clock, Clock, DecodeBatch, Decoder};
pub use format::Format;
pub use mapping::Mapping;
