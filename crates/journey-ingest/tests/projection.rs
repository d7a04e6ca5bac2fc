//! Issue 14: with a projection, the Segment and CloudEvents decoders build only the projected
//! part of `properties`, `context`, `traits` and `data`. They must give the same event as the
//! full decoder followed by the projection, or the same error.

use journey_core::{DecodeLimits, Event, Projection, SharedProjection};
use journey_ingest::{Decoder, Format};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Keys from a small alphabet, so random paths often hit; with the keys the envelopes file
/// objects under, escapes and unicode.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "url", "context", "traits", "name", "category", "page", "ü", "a\"b", "data",
    ])
    .prop_map(str::to_string)
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z\"\\\\ü/]{0,5}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 30, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Mostly objects (what real records carry), sometimes anything, sometimes absent.
fn field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => prop::collection::vec((key(), json()), 0..5)
            .prop_map(|kv| Some(Value::Object(kv.into_iter().collect()))),
        1 => json().prop_map(Some),
        1 => Just(None),
    ]
}

fn paths() -> impl Strategy<Value = Vec<Vec<Box<str>>>> {
    prop::collection::vec(prop::collection::vec(key().prop_map(Box::from), 1..4), 0..5)
}

fn decoders(format: Format, paths: &[Vec<Box<str>>]) -> (Decoder, Decoder, Projection) {
    let projection = Projection::new(paths.iter().map(Vec::as_slice));
    let full = Decoder::new(format.clone(), "web", DecodeLimits::default());
    let projected = Decoder::new(format, "web", DecodeLimits::default())
        .with_projection(SharedProjection::new(projection.clone()));
    (full, projected, projection)
}

/// The event the full decoder gives, with the projection applied to its attributes (what
/// the engine received before), or the error's reason.
fn expected(full: &Decoder, projection: &Projection, text: &str) -> Result<Event<'static>, String> {
    full.decode(text.as_bytes())
        .map(|mut e| {
            e.attributes = projection.apply(std::mem::take(&mut e.attributes));
            e.into_owned()
        })
        .map_err(|e| e.reason().to_string())
}

fn got(projected: &Decoder, text: &str) -> Result<Event<'static>, String> {
    projected
        .decode(text.as_bytes())
        .map(Event::into_owned)
        .map_err(|e| e.reason().to_string())
}

fn insert(record: &mut serde_json::Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        record.insert(key.to_string(), v);
    }
}

proptest! {
    #[test]
    fn projected_segment_decoding_equals_full_decoding_then_projection(
        kind in prop::sample::select(vec!["track", "page", "identify", "group"]),
        properties in field(),
        context in field(),
        traits in field(),
        name in field(),
        paths in paths(),
    ) {
        let mut record = json!({
            "type": kind, "userId": "c-ü\"1", "event": "e", "messageId": "m1",
            "timestamp": "2026-01-01T00:00:00Z",
        });
        let map = record.as_object_mut().unwrap();
        insert(map, "properties", properties);
        insert(map, "context", context);
        insert(map, "traits", traits);
        insert(map, "name", name);
        let text = record.to_string();
        let (full, projected, projection) = decoders(Format::Segment, &paths);
        prop_assert_eq!(got(&projected, &text), expected(&full, &projection, &text), "{}", text);
    }

    #[test]
    fn projected_cloudevents_decoding_equals_full_decoding_then_projection(
        data in field(),
        paths in paths(),
    ) {
        let mut record = json!({
            "specversion": "1.0", "id": "1", "source": "/shop", "type": "e",
            "subject": "c", "time": "2026-01-01T00:00:00Z",
        });
        insert(record.as_object_mut().unwrap(), "data", data);
        let text = record.to_string();
        let (full, projected, projection) = decoders(Format::CloudEvents, &paths);
        prop_assert_eq!(got(&projected, &text), expected(&full, &projection, &text), "{}", text);
    }
}
