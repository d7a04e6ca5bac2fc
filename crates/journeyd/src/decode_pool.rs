//! Decoding `replay` input on a pool of threads, in input order.
//!
//! The reading thread reads the input straight into chunk buffers of about a megabyte and cuts
//! each at its last line end (the partial line starts the next chunk); decoder threads split
//! chunks into lines and turn them into events; the reading thread takes the decoded chunks
//! back in the order it read them and submits them to the runtime. The order of events is
//! therefore the order of the lines, as if one thread had decoded them, so the push stream's
//! event time, the routing and every figure are unchanged.
//!
//! At most `in_flight` chunks are between the reader and the pool; both channels hold that
//! many, so neither side can wait on the other forever. A chunk's buffer comes back with its
//! decoded events and is filled again: a fresh megabyte per chunk cost the reading thread
//! more in page faults than reading the file. Reading into the chunk itself, rather than
//! copying each line out of a read buffer, halved what the reading thread copies (the copy
//! was more than half of its time: docs/benchmarks.md).

use std::collections::BTreeMap;
use std::io::Read;
use std::thread::JoinHandle;

use journey_core::Event;
use journey_ingest::{for_each_line_of_block, is_blank, Decoder};

/// Bytes read per chunk: about a thousand realistic records, few enough messages to keep the
/// channel cost negligible.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A chunk buffer that grew past this for one long line is dropped after use, not kept.
const KEEP_CHUNK_BYTES: usize = 4 * CHUNK_BYTES;

/// Whole lines of the input, and whether they are its first.
struct Chunk {
    seq: u64,
    bytes: Vec<u8>,
    starts_input: bool,
}

/// One decoded chunk: its accepted events in line order and each rejected line's reason.
#[derive(Debug, Default)]
pub struct Decoded {
    seq: u64,
    pub events: Vec<Event<'static>>,
    /// [`journey_core::DecodeError::reason`] of each rejected line.
    pub rejected: Vec<&'static str>,
    /// Records (non-blank lines) in the chunk, accepted or rejected.
    pub lines: u64,
    /// The chunk's buffer, emptied, for the next chunk.
    spare: Option<Vec<u8>>,
}

/// Decodes one chunk's lines with `decoder`.
fn decode_chunk(decoder: &Decoder, chunk: Chunk) -> Decoded {
    let Chunk {
        seq,
        mut bytes,
        starts_input,
    } = chunk;
    let mut out = Decoded {
        seq,
        events: Vec::with_capacity(1024),
        ..Decoded::default()
    };
    let decoder = decoder.batch();
    out.lines = for_each_line_of_block(&bytes, starts_input, |line| match decoder.decode(line) {
        Ok(e) => out.events.push(e.into_owned()),
        Err(e) => out.rejected.push(e.reason()),
    });
    bytes.clear();
    out.spare = (bytes.capacity() <= KEEP_CHUNK_BYTES).then_some(bytes);
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
    next_seq: u64,
    /// Sequence number of the next chunk to hand out.
    next_out: u64,
    /// Decoded chunks that arrived before an earlier one.
    early: BTreeMap<u64, Decoded>,
    in_flight: usize,
    max_in_flight: usize,
    /// Emptied buffers of decoded chunks, at most `max_in_flight + 1`.
    spares: Vec<Vec<u8>>,
    /// Chunk buffers allocated so far; the other chunks reused one.
    fresh_buffers: usize,
    /// The largest capacity of a chunk buffer handed to the decoders so far, in bytes.
    largest_chunk: usize,
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
            next_seq: 0,
            next_out: 0,
            early: BTreeMap::new(),
            in_flight: 0,
            max_in_flight,
            spares: Vec::new(),
            fresh_buffers: 0,
            largest_chunk: 0,
        })
    }

    /// Reads `input` to its end and decodes every line, as [`journey_ingest::for_each_line`]
    /// cuts them. Calls `on_read` with the size of each read (bytes) and `ready` with every
    /// chunk decoded by now, in input order; waits for the oldest when too many are in
    /// flight. Stops at the first read error; the lines read before it are still decoded and
    /// handed out by [`DecodePool::finish`].
    ///
    /// Memory stays bounded whatever the input: of a line longer than any record may be
    /// (`max_record_bytes`), only enough is kept for it to be rejected as too large, and the
    /// rest is dropped as it is read (an input without line ends, a JSON array given as
    /// NDJSON).
    pub fn read_input(
        &mut self,
        mut input: impl Read,
        on_read: &mut impl FnMut(u64),
        ready: &mut impl FnMut(Decoded),
    ) -> std::io::Result<()> {
        // A byte-order mark and a `\r` are trimmed before the size check: keep more.
        let keep = self.decoder.limits().max_record_bytes.saturating_add(8);
        let mut buf = self.spare();
        let mut starts_input = true;
        let mut overlong: Option<Overlong> = None;
        loop {
            // Reads of one chunk's size into room made exactly: a buffer holds at most an
            // unfinished line (up to `keep`) and one read, whatever came before.
            buf.reserve_exact(CHUNK_BYTES);
            let mut have = buf.len();
            // Fills the spare capacity without zeroing it first.
            let n = match (&mut input).take(CHUNK_BYTES as u64).read_to_end(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    if let Some(o) = overlong {
                        o.end(&mut buf, keep);
                    }
                    self.send(buf, starts_input, ready);
                    return Err(e);
                }
            };
            on_read(n as u64);
            if n == 0 {
                if let Some(o) = overlong {
                    o.end(&mut buf, keep);
                }
                self.send(buf, starts_input, ready);
                return Ok(());
            }
            if let Some(o) = &mut overlong {
                // Drop what came of the over-long line, up to its end if that came too.
                let line_end = memchr::memchr(b'\n', &buf[keep..]).map(|i| keep + i);
                let stop = line_end.unwrap_or(buf.len());
                o.non_blank |= !is_blank(&buf[keep..stop]);
                buf.drain(keep..stop);
                if line_end.is_none() {
                    continue;
                }
                o.end(&mut buf, keep);
                overlong = None;
                have = keep;
            }
            // Whole lines go now; the partial last one starts the next chunk. What was held
            // before `have` had no line end.
            if let Some(end) = memchr::memrchr(b'\n', &buf[have..]).map(|i| have + i) {
                let mut next = self.spare();
                next.extend_from_slice(&buf[end + 1..]);
                buf.truncate(end + 1);
                self.send(buf, starts_input, ready);
                starts_input = false;
                buf = next;
            } else if buf.len() > keep {
                // All of `buf` is one unfinished line (nothing before it is held back).
                overlong = Some(Overlong {
                    non_blank: !is_blank(&buf[keep..]),
                });
                buf.truncate(keep);
            }
        }
    }

    /// Decodes what is left and calls `ready` with every remaining chunk, in input order.
    pub fn finish(mut self, ready: &mut impl FnMut(Decoded)) {
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

    fn spare(&mut self) -> Vec<u8> {
        self.spares.pop().unwrap_or_else(|| {
            self.fresh_buffers += 1;
            Vec::with_capacity(CHUNK_BYTES)
        })
    }

    fn send(&mut self, bytes: Vec<u8>, starts_input: bool, ready: &mut impl FnMut(Decoded)) {
        if bytes.is_empty() {
            self.spares.push(bytes);
            return;
        }
        self.largest_chunk = self.largest_chunk.max(bytes.capacity());
        let chunk = Chunk {
            seq: self.next_seq,
            bytes,
            starts_input,
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

/// A line longer than any record, of which only the first `keep` bytes are held.
#[derive(Debug, Clone, Copy)]
struct Overlong {
    /// A byte past the held ones is not whitespace.
    non_blank: bool,
}

impl Overlong {
    /// The line ends: if the held bytes are all whitespace but the dropped ones were not, the
    /// last held byte stands in for them, so the line is not taken for a blank one (which
    /// `for_each_line` skips) but rejected as too large, as the whole line would be.
    fn end(self, buf: &mut [u8], keep: usize) {
        if let (true, Some(held)) = (self.non_blank, buf.get_mut(..keep)) {
            if is_blank(held) {
                if let Some(last) = held.last_mut() {
                    *last = b'x';
                }
            }
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
    use journey_ingest::{for_each_line, Format};

    type Out = (Vec<Event<'static>>, Vec<&'static str>, u64);

    fn decoder() -> Decoder {
        Decoder::new(Format::Canonical, "file", DecodeLimits::default())
    }

    /// Decodes `inputs` one after the other through a pool of `threads`.
    fn run(threads: usize, inputs: &[&[u8]]) -> Out {
        run_with(decoder(), threads, inputs).0
    }

    /// [`run`] with `decoder`; also the largest chunk buffer's capacity.
    fn run_with(decoder: Decoder, threads: usize, inputs: &[&[u8]]) -> (Out, usize) {
        let mut pool = DecodePool::new(decoder, threads, 0).unwrap();
        let (mut events, mut rejected, mut lines, mut bytes) = (Vec::new(), Vec::new(), 0, 0);
        let mut ready = |d: Decoded| {
            assert_eq!(d.lines, (d.events.len() + d.rejected.len()) as u64);
            lines += d.lines;
            events.extend(d.events);
            rejected.extend(d.rejected);
        };
        for input in inputs {
            pool.read_input(*input, &mut |n| bytes += n, &mut ready)
                .unwrap();
        }
        let largest = pool.largest_chunk;
        pool.finish(&mut ready);
        assert_eq!(bytes, inputs.iter().map(|i| i.len() as u64).sum::<u64>());
        ((events, rejected, lines), largest)
    }

    /// What one thread gets cutting the same inputs with `for_each_line`.
    fn reference(inputs: &[&[u8]]) -> Out {
        reference_with(&decoder(), inputs)
    }

    fn reference_with(d: &Decoder, inputs: &[&[u8]]) -> Out {
        let (mut events, mut rejected, mut lines) = (Vec::new(), Vec::new(), 0);
        for input in inputs {
            lines += for_each_line(*input, |_, line| match d.decode(line) {
                Ok(e) => events.push(e.into_owned()),
                Err(e) => rejected.push(e.reason()),
            })
            .unwrap();
        }
        (events, rejected, lines)
    }

    fn record(i: usize) -> String {
        format!(
            r#"{{"customer_id":"c{i}","ts":{},"event":"e"}}"#,
            1_767_225_600_000u64 + i as u64
        )
    }

    /// Issue 14: a pool gives the events of a single decoding thread, in line order.
    #[test]
    fn a_pool_decodes_every_line_in_input_order() {
        let lines: Vec<String> = (0..60_000)
            .map(|i| {
                if i % 97 == 0 {
                    format!("{{\"customer_id\":\"c{i}\"}}")
                } else {
                    record(i)
                }
            })
            .collect();
        let input = lines.join("\n");
        assert!(input.len() > 3 * CHUNK_BYTES, "several chunks");
        let single = run(0, &[input.as_bytes()]);
        assert_eq!(single.2, lines.len() as u64);
        assert!(!single.1.is_empty());
        assert_eq!(single, reference(&[input.as_bytes()]));
        for threads in [1, 2, 3] {
            let pooled = run(threads, &[input.as_bytes()]);
            assert_eq!(pooled, single, "{threads} threads");
        }
        assert_eq!(run(2, &[]).2, 0);
        assert_eq!(run(2, &[b""]).2, 0);
    }

    /// Lines are cut as `for_each_line` cuts them, wherever the chunks end: `\r\n`, blank
    /// and whitespace-only lines, a byte-order mark at the start of each input only, a last
    /// line without `\n` (which does not run into the next input), and a line longer than a
    /// chunk.
    #[test]
    fn lines_are_cut_as_for_each_line_cuts_them() {
        let bom = String::from_utf8(journey_ingest::BOM.to_vec()).unwrap();
        let long = format!(
            r#"{{"customer_id":"long","ts":1767225600000,"event":"e","attributes":{{"x":"{}"}}}}"#,
            "y".repeat(3 * CHUNK_BYTES)
        );
        let mut first = format!("{bom}{}\r\n\n   \n{}\r\n{long}\n", record(1), record(2));
        for i in 3..20_000 {
            first.push_str(&record(i));
            first.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
        }
        first.push_str(&record(20_000));
        let second = format!("{bom}{}\n{bom}{}\n", record(20_001), record(20_002));
        let inputs: [&[u8]; 3] = [first.as_bytes(), second.as_bytes(), b"\n\n"];
        let want = reference(&inputs);
        assert_eq!(want.2, 20_002 + 1, "every record and the long line");
        for threads in [0, 2] {
            assert_eq!(run(threads, &inputs), want, "{threads} threads");
        }
    }

    /// A line longer than any record is rejected as too large, as `for_each_line` and the
    /// decoder would reject it, without being held whole: memory stays bounded whether the
    /// line ends, ends the input, or is blank only in the part that is held.
    #[test]
    fn over_long_lines_are_rejected_without_being_held() {
        let limit = 1000;
        let small = Decoder::new(
            Format::Canonical,
            "file",
            DecodeLimits {
                max_record_bytes: limit,
                ..DecodeLimits::default()
            },
        );
        let huge = format!(
            "{{\"customer_id\":\"{}\"}}",
            "h".repeat(6 * KEEP_CHUNK_BYTES)
        );
        let mut input = String::new();
        for (i, line) in [
            huge.clone(),
            format!("{}x", " ".repeat(5 * CHUNK_BYTES)),
            " ".repeat(3 * CHUNK_BYTES),
            format!("{}\r", "y".repeat(limit + 8)),
            "z".repeat(limit + 9),
            " ".repeat(limit + 8) + "z",
        ]
        .iter()
        .enumerate()
        {
            input.push_str(&record(i));
            input.push('\n');
            input.push_str(line);
            input.push('\n');
        }
        input.push_str(&huge);
        let inputs: [&[u8]; 2] = [input.as_bytes(), b"\n"];
        let want = reference_with(&small, &inputs);
        assert_eq!(want.0.len(), 6);
        assert_eq!(
            want.1,
            vec!["too_large"; 6],
            "the blank line of spaces is skipped"
        );
        for threads in [0, 2] {
            let (got, largest) = run_with(small.clone(), threads, &inputs);
            assert_eq!(got, want, "{threads} threads");
            assert!(
                largest <= KEEP_CHUNK_BYTES,
                "{largest} bytes held for one chunk"
            );
        }
    }

    /// Chunk buffers come back and are filled again instead of allocated per chunk.
    #[test]
    fn chunk_buffers_are_reused() {
        let input: String = (0..400_000).map(|i| record(i) + "\n").collect();
        for threads in [0, 2] {
            let mut pool = DecodePool::new(decoder(), threads, 0).unwrap();
            let mut chunks = 0;
            let mut ready = |_: Decoded| chunks += 1;
            pool.read_input(input.as_bytes(), &mut |_| {}, &mut ready)
                .unwrap();
            let (fresh, max) = (pool.fresh_buffers, pool.max_in_flight);
            pool.finish(&mut ready);
            assert!(chunks > 2 * (max + 2), "{chunks} chunks");
            assert!(
                fresh <= max + 2,
                "{fresh} fresh buffers for {chunks} chunks"
            );
        }
    }
}
