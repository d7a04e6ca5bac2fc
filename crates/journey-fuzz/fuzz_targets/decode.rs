//! Every wire format's decoder on arbitrary bytes, and the HTTP body splitter: an error is
//! fine, a panic is a bug. The first byte picks the format.
#![no_main]

use journey_core::DecodeLimits;
use journey_ingest::{split_body, Decoder, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, record)) = data.split_first() else {
        return;
    };
    let name = Format::NAMES[pick as usize % 3];
    let Ok(format) = Format::parse(name, None) else {
        return;
    };
    let limits = DecodeLimits {
        max_record_bytes: 4096,
        ..DecodeLimits::default()
    };
    let decoder = Decoder::new(format, "fuzz", limits);
    if let Ok(e) = decoder.decode(record) {
        assert!(!e.customer_id.is_empty());
    }
    if let Ok(records) = split_body(record) {
        for r in records.iter().take(64) {
            let _ = decoder.decode(r.bytes);
        }
    }
});
