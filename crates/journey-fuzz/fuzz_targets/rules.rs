//! The rules parser and validator on arbitrary text, and classification of a fixed event
//! with whatever rules parse.
#![no_main]

use journey_core::{decode_canonical, DecodeLimits, Rules};
use libfuzzer_sys::fuzz_target;

const EVENT: &[u8] = br#"{"customer_id":"c","ts":1795132800000,"event":"page_view","attributes":{"url":"/products/1","n":3}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = Rules::from_toml(text) {
        if let Ok(e) = decode_canonical(EVENT, "web", &DecodeLimits::default()) {
            let _ = rules.classify(&e);
        }
    }
});
