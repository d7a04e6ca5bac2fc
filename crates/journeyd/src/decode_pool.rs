//! Decoding `replay` input on a pool of threads, in input order.
//!
//! The reading thread only cuts the input into chunks of lines and copies them into one
//! buffer per chunk; decoder threads turn chunks into events; the reading thread takes the
//! decoded chunks back in the order it read them and submits them to the runtime. The order
//! of events is therefore the order of the lines, as if one thread had decoded them, so the
//! push stream's event time, the routing and every figure are unchanged.
//!
//! At most `in_flight` chunks are between the reader and the pool; both channels hold that
//! many, so neither side can wait on the other forever. A chunk's buffers come back with its
//! decoded events and are filled again: a fresh megabyte per chunk cost the reading thread
//! more in page faults and regrowth copies than reading the file.

use std::collections::BTreeMap;
use std::thread::JoinHandle;

use journey_core::Event;
use journey_ingest::Decoder;

/// Lines per chunk: about 1 MB of realistic records, few enough messages to keep the channel
/// cost negligible.
pub const CHUNK_LINES: usize = 1024;

/// A chunk of lines, back to back, with where each ends.
struct Chunk {
    seq: u64,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// One decoded chunk: its accepted events in line order and each rejected line's reason.
#[derive(Debug, Default)]
pub struct Decoded {
    seq: u64,
    pub events: Vec<Event<'static>>,
    /// [`journey_core::DecodeError::reason`] of each rejected line.
    pub rejected: Vec<&'static str>,
    /// The chunk's buffers, emptied, for the next chunk.
    spare: Option<(Vec<u8>, Vec<usize>)>,
}

/// Decodes one chunk's lines with `decoder`.
fn decode_chunk(decoder: &Decoder, chunk: Chunk) -> Decoded {
    let Chunk {
        seq,
        mut bytes,
        mut ends,
    } = chunk;
    let mut out = Decoded {
        seq,
        events: Vec::with_capacity(ends.len()),
        rejected: Vec::new(),
        spare: None,
    };
    let decoder = decoder.batch();
    let mut start = 0;
    for &end in &ends {
        let line = bytes.get(start..end).unwrap_or_default();
        start = end;
        match decoder.decode(line) {
            Ok(e) => out.events.push(e.into_owned()),
            Err(e) => out.rejected.push(e.reason()),
        }
    }
    bytes.clear();
    ends.clear();
    out.spare = Some((bytes, ends));
    out
}

/// Decoder threads fed by the reading thread, handing decoded chunks back in input order.
#[derive(Debug)]
pub struct DecodePool {
    /// `None` when decoding on the calling thread (no pool).
    to_pool: Option<flume::Sender<Chunk>>,
    from_pool: flume::Receiver<Decoded>,
    threads: Vec<JoinHandle<()>>,
    decoder: Decoder,
    /// The chunk being filled.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    next_seq: u64,
    /// Sequence number of the next chunk to hand out.
    next_out: u64,
    /// Decoded chunks that arrived before an earlier one.
    early: BTreeMap<u64, Decoded>,
    in_flight: usize,
    max_in_flight: usize,
    /// Emptied buffers of decoded chunks, at most `max_in_flight + 1`.
    spares: Vec<(Vec<u8>, Vec<usize>)>,
}

impl DecodePool {
    /// A pool of `threads` decoder threads (at the given nice value, as the workers run);
    /// with 0 threads every chunk is decoded on the calling thread.
    pub fn new(decoder: Decoder, threads: usize, nice: i32) -> std::io::Result<DecodePool> {
        let max_in_flight = 2 * threads + 2;
        let (to_pool, inbox) = flume::bounded::<Chunk>(max_in_flight);
        let (outbox, from_pool) = flume::bounded::<Decoded>(max_in_flight);
        let mut handles = Vec::new();
        for i in 0..threads {
            let (inbox, outbox, decoder) = (inbox.clone(), outbox.clone(), decoder.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("journeyd-decode-{i}"))
                    .spawn(move || {
                        if let Err(e) = journey_runtime::set_thread_nice(nice) {
                            tracing::warn!("cannot set the decoder's nice value: {e}");
                        }
                        for chunk in inbox.iter() {
                            if outbox.send(decode_chunk(&decoder, chunk)).is_err() {
                                break;
                            }
                        }
                    })?,
            );
        }
        Ok(DecodePool {
            to_pool: (threads > 0).then_some(to_pool),
            from_pool,
            threads: handles,
            decoder,
            bytes: Vec::new(),
            ends: Vec::with_capacity(CHUNK_LINES),
            next_seq: 0,
            next_out: 0,
            early: BTreeMap::new(),
            in_flight: 0,
            max_in_flight,
            spares: Vec::new(),
        })
    }

    /// Adds one line (without its line ending). Calls `ready` with every chunk decoded by
    /// now, in input order; waits for the oldest when too many are in flight.
    pub fn push(&mut self, line: &[u8], ready: &mut impl FnMut(Decoded)) {
        self.bytes.extend_from_slice(line);
        self.ends.push(self.bytes.len());
        if self.ends.len() >= CHUNK_LINES {
            self.send(ready);
        }
    }

    /// Decodes what is left and calls `ready` with every remaining chunk, in input order.
    pub fn finish(mut self, ready: &mut impl FnMut(Decoded)) {
        if !self.ends.is_empty() {
            self.send(ready);
        }
        while self.in_flight > 0 {
            if !self.receive_one(ready) {
                break;
            }
        }
        self.to_pool = None;
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }

    fn send(&mut self, ready: &mut impl FnMut(Decoded)) {
        let (bytes, ends) = self.spares.pop().unwrap_or_else(|| {
            (
                Vec::with_capacity(self.bytes.capacity()),
                Vec::with_capacity(CHUNK_LINES),
            )
        });
        let chunk = Chunk {
            seq: self.next_seq,
            bytes: std::mem::replace(&mut self.bytes, bytes),
            ends: std::mem::replace(&mut self.ends, ends),
        };
        self.next_seq += 1;
        if self.to_pool.is_none() {
            self.next_out += 1;
            let mut d = decode_chunk(&self.decoder, chunk);
            self.spares.extend(d.spare.take());
            ready(d);
            return;
        }
        while self.in_flight >= self.max_in_flight {
            if !self.receive_one(ready) {
                return;
            }
        }
        let sent = match &self.to_pool {
            Some(tx) => tx.send(chunk).is_ok(),
            None => false,
        };
        if !sent {
            return;
        }
        self.in_flight += 1;
        // Hand out what is done without waiting.
        while let Ok(d) = self.from_pool.try_recv() {
            self.arrived(d, ready);
        }
    }

    /// Waits for one decoded chunk; `false` if the pool has gone.
    fn receive_one(&mut self, ready: &mut impl FnMut(Decoded)) -> bool {
        match self.from_pool.recv() {
            Ok(d) => {
                self.arrived(d, ready);
                true
            }
            Err(_) => false,
        }
    }

    fn arrived(&mut self, mut d: Decoded, ready: &mut impl FnMut(Decoded)) {
        self.in_flight -= 1;
        if self.spares.len() <= self.max_in_flight {
            self.spares.extend(d.spare.take());
        }
        self.early.insert(d.seq, d);
        while let Some(d) = self.early.remove(&self.next_out) {
            self.next_out += 1;
            ready(d);
        }
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        self.to_pool = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journey_core::DecodeLimits;
    use journey_ingest::Format;

    fn run(threads: usize, lines: &[String]) -> (Vec<Event<'static>>, Vec<&'static str>, u64) {
        let decoder = Decoder::new(Format::Canonical, "file", DecodeLimits::default());
        let mut pool = DecodePool::new(decoder, threads, 0).unwrap();
        let (mut events, mut rejected, mut n) = (Vec::new(), Vec::new(), 0);
        let mut ready = |d: Decoded| {
            n += (d.events.len() + d.rejected.len()) as u64;
            events.extend(d.events);
            rejected.extend(d.rejected);
        };
        for l in lines {
            pool.push(l.as_bytes(), &mut ready);
        }
        pool.finish(&mut ready);
        (events, rejected, n)
    }

    /// Issue 14: a pool gives the events of a single decoding thread, in line order.
    #[test]
    fn a_pool_decodes_every_line_in_input_order() {
        let lines: Vec<String> = (0..5 * CHUNK_LINES + 17)
            .map(|i| {
                if i % 97 == 0 {
                    format!("{{\"customer_id\":\"c{i}\"}}")
                } else {
                    format!(
                        r#"{{"customer_id":"c{i}","ts":{},"event":"e"}}"#,
                        1_767_225_600_000u64 + i as u64
                    )
                }
            })
            .collect();
        let single = run(0, &lines);
        assert_eq!(single.2, lines.len() as u64);
        assert!(!single.1.is_empty());
        for threads in [1, 2, 3] {
            let pooled = run(threads, &lines);
            assert_eq!(pooled, single, "{threads} threads");
        }
        assert_eq!(run(2, &[]).2, 0);
    }

    /// Chunk buffers come back and are filled again instead of allocated per chunk.
    #[test]
    fn chunk_buffers_are_reused() {
        let decoder = Decoder::new(Format::Canonical, "file", DecodeLimits::default());
        for threads in [0, 2] {
            let mut pool = DecodePool::new(decoder.clone(), threads, 0).unwrap();
            let line = br#"{"customer_id":"c","ts":1767225600000,"event":"e"}"#;
            let mut chunks = 0;
            let mut ready = |_: Decoded| chunks += 1;
            let mut fresh = 0;
            for _ in 0..20 * CHUNK_LINES {
                if pool.ends.is_empty() && pool.bytes.capacity() == 0 {
                    fresh += 1;
                }
                pool.push(line, &mut ready);
            }
            assert!(
                fresh <= 1 + pool.max_in_flight,
                "{fresh} fresh buffers for 20 chunks"
            );
            assert!(!pool.spares.is_empty() || threads > 0);
            pool.finish(&mut ready);
            assert_eq!(chunks, 20);
        }
    }
}
