//! Segment / RudderStack spec: `track`, `page`, `screen`, `identify`, `group` and `alias` calls.
//!
//! | event field   | taken from                                                        |
//! |---------------|-------------------------------------------------------------------|
//! | `customer_id` | `userId`, else `anonymousId` (a string, or a number written out)  |
//! | `event`       | `event` (track), `page_view`, `screen_view`, `identify`, `group`, |
//! |               | `alias`                                                           |
//! | `ts`          | `timestamp`; else, with `sentAt` and `originalTimestamp`, the     |
//! |               | clock-skew correction below; else `originalTimestamp`, `sentAt`;  |
//! |               | else `receivedAt` (the record's, or the arrival over HTTP)        |
//! | `event_id`    | `messageId` (a string or integer)                                 |
//! | `source`      | the decoder's default source                                      |
//! | `attributes`  | `properties`, plus `context` under `context`; for identify and    |
//! |               | group `traits` under `traits`; `groupId` and `previousId` as      |
//! |               | `group_id` and `previous_id`                                      |
//!
//! Clock-skew correction (Segment's "Timestamps" spec, SPEC §1): a call without `timestamp`
//! but with `sentAt` and `originalTimestamp` (both device time) gets
//! `receivedAt − (sentAt − originalTimestamp)`, where `receivedAt` is the record's own
//! (server time, as Segment writes it into warehouses and Kafka) or, when it has none, the
//! time the decoder was told the records arrived ([`crate::Decoder::with_received_at`]: an
//! HTTP request's arrival). With neither, `originalTimestamp` is taken as it is. An
//! `originalTimestamp` after `sentAt` (the device clock changed between the two) counts as an
//! offset of 0, and a correction that lands before 2000 gives `receivedAt`: device times are
//! only ever used as a difference, so no pair of them makes a call invalid.
//!
//! Choices where the Segment spec leaves room:
//! - a record without `type` is a `track` call (the per-call HTTP endpoints omit it); other
//!   types than the six above are rejected as `wrong_type` on `type`;
//! - `identify`, `group` and `alias` calls are kept as events of their customer (named after the
//!   call) so rules can classify them; until identity stitching exists an alias does not
//!   merge `previousId` into `userId`;
//! - `null` counts as absent everywhere, and an empty `userId` falls back to `anonymousId`;
//! - page and screen calls keep their properties as they are (`url`, `path`, `title`, ...);
//!   their top-level `name` and `category` are added to the attributes unless the
//!   properties already carry them;
//! - the envelope's `context` and `traits` replace properties of the same name;
//! - when neither `userId` nor `anonymousId` is present the error names both, and when no
//!   timestamp (not even a `receivedAt`) is present it names `timestamp`.

use std::borrow::Cow;

use journey_core::event::check_time;
use journey_core::time::Millis;
use journey_core::{DecodeError, Event, Projection};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::decode::{self, Field};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Call<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Field<'a>>,
    #[serde(borrow)]
    user_id: Option<Field<'a>>,
    #[serde(borrow)]
    anonymous_id: Option<Field<'a>>,
    #[serde(borrow)]
    event: Option<Field<'a>>,
    name: Option<Value>,
    category: Option<Value>,
    #[serde(borrow)]
    timestamp: Option<Field<'a>>,
    #[serde(borrow)]
    original_timestamp: Option<Field<'a>>,
    #[serde(borrow)]
    sent_at: Option<Field<'a>>,
    #[serde(borrow)]
    received_at: Option<Field<'a>>,
    #[serde(borrow)]
    message_id: Option<Field<'a>>,
    #[serde(borrow)]
    group_id: Option<Field<'a>>,
    #[serde(borrow)]
    previous_id: Option<Field<'a>>,
    // Kept as text, so that a projection builds only what the rules read of them.
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Track,
    Page,
    Screen,
    Identify,
    Group,
    Alias,
}

impl Kind {
    fn of(kind: Option<Field<'_>>) -> Result<Kind, DecodeError> {
        match kind.as_ref() {
            None => Ok(Kind::Track),
            Some(Field::Str(s)) => match &**s {
                "track" => Ok(Kind::Track),
                "page" => Ok(Kind::Page),
                "screen" => Ok(Kind::Screen),
                "identify" => Ok(Kind::Identify),
                "group" => Ok(Kind::Group),
                "alias" => Ok(Kind::Alias),
                _ => Err(Self::wrong()),
            },
            Some(Field::Other(_)) => Err(Self::wrong()),
        }
    }

    fn wrong() -> DecodeError {
        DecodeError::WrongType {
            field: "type",
            expected: "one of `track`, `page`, `screen`, `identify`, `group`, `alias`",
        }
    }
}

/// The skew correction `received − (sent − original)`. An `originalTimestamp` after `sentAt`
/// cannot come from one clock (it was changed in between): the offset counts as 0. A
/// corrected time before the accepted range (an offset of decades) falls back to `received`.
/// Either way the call keeps a time no later than its arrival, so a pair of valid device
/// times never makes a call invalid.
fn corrected(received: Millis, sent: Millis, original: Millis) -> Millis {
    let offset = sent.saturating_sub(original).max(0);
    check_time(received.saturating_sub(offset)).unwrap_or(received)
}

/// The objects a call files under attributes, by index in [`Scanned`]: each top-level field
/// and the attribute its projection starts from (`None`: the root, as `properties` merges
/// into the attributes).
const OBJECTS: [(&str, Option<&str>); 3] = [
    ("properties", None),
    ("context", Some("context")),
    ("traits", Some("traits")),
];

/// The projected `properties`, `context` and `traits` the byte scanner built, by index in
/// [`OBJECTS`]; `None` where the envelope's raw text is to be projected instead.
type Scanned = [Option<Value>; 3];

/// Decodes one Segment call; `received_at` is when it reached journeyd, if known (the skew
/// correction's server time for records without their own `receivedAt`). With a
/// `projection`, `properties`, `context` and `traits` are built only as far as it keeps them.
pub(crate) fn decode<'a>(
    text: &'a str,
    source: &'a str,
    received_at: Option<Millis>,
    projection: Option<&Projection>,
) -> Result<Event<'a>, DecodeError> {
    if let Some(event) = projection.and_then(|p| decode_scanned(text, source, received_at, p)) {
        return Ok(event);
    }
    let call: Call<'a> = decode::parse_object(text)?;
    build(call, source, received_at, projection, Scanned::default())
}

/// [`decode`] of a call whose big objects the byte scanner projected while it checked the
/// whole record (`Projection::scan_envelope`): serde then parses the envelope from a copy in
/// which those objects are `{}`, instead of walking them again to find their ends. `None`
/// where [`decode`]'s own path must decide: what the scanner leaves to serde, and every
/// record that is not accepted, so that errors (and the positions they name) stay what that
/// path says.
fn decode_scanned(
    text: &str,
    source: &str,
    received_at: Option<Millis>,
    projection: &Projection,
) -> Option<Event<'static>> {
    let objects = projection.scan_envelope(text, &OBJECTS)?;
    if objects.is_empty() {
        return None;
    }
    let mut blanked = String::with_capacity(text.len());
    let mut scanned = Scanned::default();
    let mut at = 0;
    for (k, range, value) in objects {
        blanked.push_str(text.get(at..range.start)?);
        blanked.push_str("{}");
        at = range.end;
        *scanned.get_mut(k)? = Some(value);
    }
    blanked.push_str(text.get(at..)?);
    let call: Call<'_> = decode::parse_object(&blanked).ok()?;
    build(call, source, received_at, Some(projection), scanned)
        .ok()
        .map(Event::into_owned)
}

/// The event of a parsed call. Each of `properties`, `context` and `traits` comes from
/// `scanned` where the byte scanner built it, else from the call's raw text.
fn build<'a>(
    call: Call<'a>,
    source: &'a str,
    received_at: Option<Millis>,
    projection: Option<&Projection>,
    mut scanned: Scanned,
) -> Result<Event<'a>, DecodeError> {
    let mut object = |i: usize, raw: Option<&RawValue>| {
        let (field, under) = OBJECTS[i];
        match scanned[i].take() {
            Some(v) => decode::object(Some(v), field),
            None => decode::raw_object(raw, field, projection, under),
        }
    };
    let kind = Kind::of(call.kind)?;

    let user_id = match call.user_id {
        Some(Field::Str(s)) if s.is_empty() && call.anonymous_id.is_some() => None,
        user_id => user_id,
    };
    let customer_id = match (user_id, call.anonymous_id) {
        (Some(id), _) => decode::customer(Some(id), "userId")?,
        (None, Some(id)) => decode::customer(Some(id), "anonymousId")?,
        // The Segment spec needs one of the two; the message names both.
        (None, None) => return Err(DecodeError::MissingField("userId` or `anonymousId")),
    };

    let name = match kind {
        Kind::Track => decode::event_name(call.event, "event")?,
        Kind::Page => Cow::Borrowed("page_view"),
        Kind::Screen => Cow::Borrowed("screen_view"),
        Kind::Identify => Cow::Borrowed("identify"),
        Kind::Group => Cow::Borrowed("group"),
        Kind::Alias => Cow::Borrowed("alias"),
    };

    let received_at = match call.received_at {
        Some(at) => Some(decode::timestamp(at, "receivedAt")?),
        None => received_at,
    };
    let ts = match (call.timestamp, call.original_timestamp, call.sent_at) {
        (Some(ts), _, _) => decode::timestamp(ts, "timestamp")?,
        (None, Some(original), Some(sent)) if received_at.is_some() => {
            let original = decode::raw_timestamp(original, "originalTimestamp")?;
            let sent = decode::raw_timestamp(sent, "sentAt")?;
            let received = received_at.unwrap_or_default();
            corrected(received, sent, original)
        }
        (None, Some(ts), _) => decode::timestamp(ts, "originalTimestamp")?,
        (None, None, Some(ts)) => decode::timestamp(ts, "sentAt")?,
        (None, None, None) => match received_at {
            // As Segment does: a call without any time happened when it arrived.
            Some(at) => at,
            None => return Err(DecodeError::MissingField("timestamp")),
        },
    };

    let event_id = match call.message_id {
        None => None,
        Some(id) => Some(decode::identifier(id, "messageId")?),
    };

    let mut attributes = object(0, call.properties)?;
    if matches!(kind, Kind::Page | Kind::Screen) {
        for (key, value) in [("name", call.name), ("category", call.category)] {
            if let Some(value) = value {
                let map = attributes.get_or_insert_with(Map::new);
                map.entry(key).or_insert(value);
            }
        }
    }
    for (key, value, field) in [
        ("group_id", call.group_id, "groupId"),
        ("previous_id", call.previous_id, "previousId"),
    ] {
        if let Some(value) = value {
            let id = decode::identifier(value, field)?;
            let map = attributes.get_or_insert_with(Map::new);
            map.insert(key.to_string(), Value::String(id.into_owned()));
        }
    }
    if matches!(kind, Kind::Identify | Kind::Group) {
        if let Some(traits) = object(2, call.traits)? {
            let map = attributes.get_or_insert_with(Map::new);
            map.insert("traits".to_string(), Value::Object(traits));
        }
    }
    if let Some(context) = object(1, call.context)? {
        let map = attributes.get_or_insert_with(Map::new);
        map.insert("context".to_string(), Value::Object(context));
    }

    Ok(Event {
        event_id,
        customer_id,
        ts,
        source: Cow::Borrowed(source),
        name,
        attributes: attributes.map_or(Value::Null, Value::Object),
    })
}

#[cfg(test)]
mod tests {
    use journey_core::{decode_canonical, DecodeLimits};
    use serde_json::json;

    use super::*;
    use crate::decode::shown;
    use crate::{Decoder, Format};

    fn decoder() -> Decoder {
        Decoder::new(Format::Segment, "web", DecodeLimits::default())
    }

    /// The byte scanner's path decodes the usual calls, to what serde's path gives, and leaves
    /// the unusual ones to it.
    #[test]
    fn usual_calls_are_scanned_to_what_serde_gives() {
        let projection = decode::projection_of(&["url", "context.page.url", "traits.plan"]);
        decode::check_scanned_path(
            |text| decode_scanned(text, "web", None, &projection),
            |text| {
                let call: Call<'_> = decode::parse_object(text)?;
                build(call, "web", None, Some(&projection), Scanned::default())
                    .map(Event::into_owned)
            },
            &[
                r#"{"type":"page","userId":"c-1","timestamp":"2026-11-22T10:00:00Z","properties":{"url":"/p","x":[1,{"y":"\u00fc"}]},"context":{"page":{"url":"https://e.com/p","title":"T"},"ip":"1.2.3.4"}}"#,
                r#"{"context":{"library":{"name":"analytics.js"}},"traits":{"plan":"pro","n":1},"type":"identify","anonymousId":"a","messageId":7,"timestamp":1795341600000}"#,
                r#"{"event":"signup","userId":"c-2","properties":{},"sentAt":"2026-11-22T10:00:01Z","originalTimestamp":"2026-11-22T10:00:00Z"}"#,
            ],
            // A field twice, an object that is not one, an escaped key, an unknown call type.
            &[
                r#"{"userId":"c","timestamp":1,"properties":{},"properties":{"url":"/p"}}"#,
                r#"{"userId":"c","timestamp":1,"properties":[]}"#,
                r#"{"userId":"c","timestamp":1,"propert\u0069es":{"url":"/p"}}"#,
                r#"{"type":"bogus","userId":"c","timestamp":1,"properties":{"url":"/p"}}"#,
            ],
        );
    }

    #[test]
    fn spec_example_as_a_page_call_equals_the_canonical_event() {
        let segment = br#"{"type": "page", "messageId": "e-81", "userId": "c-42",
            "timestamp": "2026-11-22T10:00:00.120Z",
            "properties": {"url": "/products/shoes", "utm_medium": "cpc", "persona": "bargain-hunter"}}"#;
        let canonical = br#"{"event_id": "e-81", "customer_id": "c-42", "ts": "2026-11-22T10:00:00.120Z",
            "source": "web", "event": "page_view",
            "attributes": {"url": "/products/shoes", "utm_medium": "cpc", "persona": "bargain-hunter"}}"#;
        let dec = decoder();
        let ev = dec.decode(segment).unwrap();
        assert!(matches!(ev.customer_id, Cow::Borrowed("c-42")));
        assert!(matches!(ev.event_id, Some(Cow::Borrowed("e-81"))));
        assert_eq!(
            Ok(ev),
            decode_canonical(canonical, "other", &DecodeLimits::default())
        );
    }

    #[test]
    fn track_maps_every_field() {
        let record = br#"{"type": "track", "event": "Order Completed", "userId": "u-1",
            "anonymousId": "a-1", "messageId": "m-1", "timestamp": "2026-11-22T10:00:00Z",
            "originalTimestamp": "2001-01-01T00:00:00Z",
            "properties": {"revenue": 42.5, "context": "overwritten"},
            "context": {"page": {"url": "/checkout"}, "campaign": {"medium": "cpc"}},
            "traits": {"ignored": "outside identify"}}"#;
        let dec = decoder();
        let ev = dec.decode(record).unwrap();
        assert_eq!(ev.name, "Order Completed");
        assert_eq!(ev.customer_id, "u-1");
        assert_eq!(ev.event_id.as_deref(), Some("m-1"));
        assert_eq!(ev.ts, 1_795_341_600_000);
        assert_eq!(ev.source, "web");
        assert_eq!(
            ev.attributes,
            json!({"revenue": 42.5, "context": {"page": {"url": "/checkout"},
                                                 "campaign": {"medium": "cpc"}}})
        );
        let path: Vec<Box<str>> = vec!["context".into(), "page".into(), "url".into()];
        assert_eq!(ev.attribute(&path), Some(&json!("/checkout")));
    }

    #[test]
    fn customer_falls_back_to_anonymous_id_and_numbers_are_written_out() {
        let dec = decoder();
        let ev = |record: &str| dec.decode(record.as_bytes()).unwrap().into_owned();
        let base = r#""event": "x", "timestamp": 1795341600120"#;
        assert_eq!(
            ev(&format!(r#"{{"anonymousId": "a-1", {base}}}"#)).customer_id,
            "a-1"
        );
        assert_eq!(
            ev(&format!(
                r#"{{"userId": null, "anonymousId": "a-1", {base}}}"#
            ))
            .customer_id,
            "a-1"
        );
        assert_eq!(
            ev(&format!(
                r#"{{"userId": "", "anonymousId": "a-1", {base}}}"#
            ))
            .customer_id,
            "a-1"
        );
        assert_eq!(
            ev(&format!(r#"{{"userId": 1234, {base}}}"#)).customer_id,
            "1234"
        );
        assert_eq!(
            ev(&format!(r#"{{"anonymousId": 7, {base}}}"#)).customer_id,
            "7"
        );
        let escaped = ev(&format!(r#"{{"userId": "u\"1", "messageId": 99, {base}}}"#));
        assert_eq!(escaped.customer_id, "u\"1");
        assert_eq!(escaped.event_id.as_deref(), Some("99"));
        // Without `type` the call is a track call.
        assert_eq!(ev(&format!(r#"{{"userId": "u", {base}}}"#)).name, "x");
    }

    #[test]
    fn timestamp_falls_back_to_original_timestamp_then_sent_at() {
        let dec = decoder();
        let ts = |fields: &str| {
            let record = format!(r#"{{"userId": "u", "event": "x", {fields}}}"#);
            dec.decode(record.as_bytes()).map(|e| e.ts)
        };
        assert_eq!(
            ts(r#""originalTimestamp": "2026-11-22T10:00:00.120Z", "sentAt": 1"#),
            Ok(1_795_341_600_120)
        );
        assert_eq!(
            ts(r#""timestamp": null, "sentAt": "2026-11-22T10:00:00.120Z""#),
            Ok(1_795_341_600_120)
        );
        assert_eq!(ts(r#""timestamp": 1795341600120"#), Ok(1_795_341_600_120));
    }

    #[test]
    fn page_screen_and_identify_calls() {
        let dec = decoder();
        let page = dec
            .decode(
                br#"{"type": "page", "anonymousId": "a", "name": "Shoes", "category": "Shop",
                    "timestamp": "2026-11-22T10:00:00Z",
                    "properties": {"url": "https://shop.example/products/shoes",
                                   "path": "/products/shoes", "category": "Kept"}}"#,
            )
            .unwrap();
        assert_eq!(page.name, "page_view");
        assert_eq!(
            page.attributes,
            json!({"url": "https://shop.example/products/shoes", "path": "/products/shoes",
                   "category": "Kept", "name": "Shoes"})
        );

        let screen = dec
            .decode(
                br#"{"type": "screen", "userId": "u", "name": "Home", "timestamp": 1795341600000}"#,
            )
            .unwrap();
        assert_eq!(screen.name, "screen_view");
        assert_eq!(screen.attributes, json!({"name": "Home"}));

        let identify = dec
            .decode(
                br#"{"type": "identify", "userId": "u", "timestamp": 1795341600000,
                    "traits": {"email": "a@b.c", "plan": "pro"}, "context": {"ip": "1.2.3.4"}}"#,
            )
            .unwrap();
        assert_eq!(identify.name, "identify");
        assert_eq!(
            identify.attributes,
            json!({"traits": {"email": "a@b.c", "plan": "pro"}, "context": {"ip": "1.2.3.4"}})
        );

        let bare = dec
            .decode(
                br#"{"type": "track", "event": "x", "userId": "u", "timestamp": 1795341600000}"#,
            )
            .unwrap();
        assert_eq!(bare.attributes, Value::Null);
        assert_eq!(bare.event_id, None);
    }

    #[test]
    fn every_error_names_its_field() {
        let dec = decoder();
        let cases = [
            (
                "{",
                "not_json",
                "record is not a JSON object: EOF while parsing an object",
            ),
            (
                "[]",
                "not_json",
                "record is not a JSON object: invalid type: sequence, expected a JSON object",
            ),
            (
                r#"{"userId": "u"} x"#,
                "not_json",
                "record is not a JSON object: trailing characters",
            ),
            (
                r#"{"userId": "u", "userId": "v"}"#,
                "not_json",
                "record is not a JSON object: duplicate field `userId`",
            ),
            (
                r#"{"type": "merge", "userId": "u", "timestamp": 1795341600000}"#,
                "wrong_type",
                "field `type` must be one of `track`, `page`, `screen`, `identify`, `group`, `alias`",
            ),
            (
                r#"{"type": 1, "userId": "u", "timestamp": 1795341600000}"#,
                "wrong_type",
                "field `type` must be one of `track`, `page`, `screen`, `identify`, `group`, `alias`",
            ),
            (
                r#"{"event": "x", "userId": "u", "sentAt": 1795341600000, "originalTimestamp": 1795341600000, "receivedAt": "soon"}"#,
                "bad_timestamp",
                "`ts` is not RFC 3339 or epoch milliseconds: `soon`",
            ),
            (
                r#"{"type": "group", "userId": "u", "timestamp": 1795341600000, "groupId": []}"#,
                "wrong_type",
                "field `groupId` must be a string or integer",
            ),
            (
                r#"{"event": "x", "timestamp": 1795341600000}"#,
                "missing_field",
                "missing field `userId` or `anonymousId`",
            ),
            (
                r#"{"event": "x", "userId": null, "anonymousId": null, "timestamp": 1795341600000}"#,
                "missing_field",
                "missing field `userId` or `anonymousId`",
            ),
            (
                r#"{"event": "x", "userId": true, "timestamp": 1795341600000}"#,
                "wrong_type",
                "field `userId` must be a string or integer",
            ),
            (
                r#"{"event": "x", "anonymousId": ["a"], "timestamp": 1795341600000}"#,
                "wrong_type",
                "field `anonymousId` must be a string or integer",
            ),
            (
                r#"{"event": "x", "userId": "", "timestamp": 1795341600000}"#,
                "customer_id_length",
                "`customer_id` must be 1 to 256 characters, got 0",
            ),
            (
                r#"{"userId": "u", "timestamp": 1795341600000}"#,
                "missing_field",
                "missing field `event`",
            ),
            (
                r#"{"event": 3, "userId": "u", "timestamp": 1795341600000}"#,
                "wrong_type",
                "field `event` must be a string",
            ),
            (
                r#"{"event": "", "userId": "u", "timestamp": 1795341600000}"#,
                "wrong_type",
                "field `event` must be a non-empty string",
            ),
            (
                r#"{"event": "x", "userId": "u"}"#,
                "missing_field",
                "missing field `timestamp`",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": {}}"#,
                "wrong_type",
                "field `timestamp` must be an RFC 3339 string or epoch milliseconds",
            ),
            (
                r#"{"event": "x", "userId": "u", "originalTimestamp": false}"#,
                "wrong_type",
                "field `originalTimestamp` must be an RFC 3339 string or epoch milliseconds",
            ),
            (
                r#"{"event": "x", "userId": "u", "sentAt": []}"#,
                "wrong_type",
                "field `sentAt` must be an RFC 3339 string or epoch milliseconds",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": "yesterday"}"#,
                "bad_timestamp",
                "`ts` is not RFC 3339 or epoch milliseconds: `yesterday`",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": 1795341600000.5}"#,
                "bad_timestamp",
                "`ts` is not RFC 3339 or epoch milliseconds: `1795341600000.5`",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": 5}"#,
                "timestamp_out_of_range",
                "`ts` 5 is outside the accepted range 2000-01-01 to 2100-01-01",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": "2100-01-01T00:00:00Z"}"#,
                "timestamp_out_of_range",
                "`ts` 4102444800000 is outside the accepted range 2000-01-01 to 2100-01-01",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": 1795341600000, "messageId": {}}"#,
                "wrong_type",
                "field `messageId` must be a string or integer",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": 1795341600000, "properties": [1]}"#,
                "wrong_type",
                "field `properties` must be an object",
            ),
            (
                r#"{"event": "x", "userId": "u", "timestamp": 1795341600000, "context": "c"}"#,
                "wrong_type",
                "field `context` must be an object",
            ),
            (
                r#"{"type": "identify", "userId": "u", "timestamp": 1795341600000, "traits": 1}"#,
                "wrong_type",
                "field `traits` must be an object",
            ),
        ];
        for (record, reason, message) in cases {
            let err = dec.decode(record.as_bytes()).unwrap_err();
            assert_eq!(shown(&err), (reason, message.to_string()), "{record}");
        }
        let long = format!(
            r#"{{"event": "x", "userId": "{}", "timestamp": 1795341600000}}"#,
            "u".repeat(257)
        );
        assert_eq!(
            dec.decode(long.as_bytes()).unwrap_err(),
            DecodeError::CustomerIdLength(257)
        );
        assert_eq!(
            dec.decode(b"{\"userId\": \"\xc3\"}").unwrap_err(),
            DecodeError::InvalidUtf8
        );
        let small = Decoder::new(
            Format::Segment,
            "web",
            DecodeLimits {
                max_record_bytes: 4,
                ..DecodeLimits::default()
            },
        );
        assert_eq!(
            small.decode(b"{ }  ").unwrap_err().to_string(),
            "record of 5 bytes exceeds the limit of 4 bytes"
        );
    }

    #[test]
    fn group_and_alias_calls_are_events_of_their_customer() {
        let dec = decoder();
        let group = dec
            .decode(
                br#"{"type": "group", "userId": "u", "groupId": 42, "timestamp": 1795341600000,
                    "traits": {"name": "Initech"}}"#,
            )
            .unwrap();
        assert_eq!(
            (group.name.as_ref(), group.customer_id.as_ref()),
            ("group", "u")
        );
        assert_eq!(
            group.attributes,
            json!({"group_id": "42", "traits": {"name": "Initech"}})
        );
        let alias = dec
            .decode(
                br#"{"type": "alias", "userId": "u", "previousId": "a-9", "timestamp": 1795341600000}"#,
            )
            .unwrap();
        assert_eq!(
            (alias.name.as_ref(), alias.customer_id.as_ref()),
            ("alias", "u")
        );
        assert_eq!(alias.attributes, json!({"previous_id": "a-9"}));
    }

    /// Field case 10: a device clock one year fast; ts = receivedAt − (sentAt − originalTimestamp).
    #[test]
    fn clock_skew_is_corrected_against_received_at() {
        let dec = decoder();
        let record =
            br#"{"type":"track","messageId":"s-2","userId":"u-7","event":"order_completed",
            "originalTimestamp":"2027-11-02T10:01:00Z","sentAt":"2027-11-02T10:01:02Z",
            "receivedAt":"2026-11-02T10:01:03Z"}"#;
        let at = |s: &str| journey_core::event::parse_rfc3339(s).unwrap();
        assert_eq!(dec.decode(record).unwrap().ts, at("2026-11-02T10:01:01Z"));
        // The record's receivedAt wins over the time the decoder was given.
        let http = decoder().with_received_at(at("2026-11-02T12:00:00Z"));
        assert_eq!(http.decode(record).unwrap().ts, at("2026-11-02T10:01:01Z"));
        // Without its own receivedAt, the arrival time given to the decoder is used: a device
        // clock set to 1970 is still corrected into range.
        let early = br#"{"userId":"u","event":"x","originalTimestamp":"1970-01-01T00:00:00Z",
            "sentAt":"1970-01-01T00:00:05Z"}"#;
        assert_eq!(http.decode(early).unwrap().ts, at("2026-11-02T11:59:55Z"));
        // `timestamp` is already corrected: it wins.
        let stamped = br#"{"userId":"u","event":"x","timestamp":"2026-11-02T09:00:00Z",
            "originalTimestamp":"1970-01-01T00:00:00Z","sentAt":"1970-01-01T00:00:05Z"}"#;
        assert_eq!(http.decode(stamped).unwrap().ts, at("2026-11-02T09:00:00Z"));
        // No receivedAt anywhere (a file without it): originalTimestamp as written.
        let plain = br#"{"userId":"u","event":"x","originalTimestamp":"2026-11-02T08:00:00Z",
            "sentAt":"2026-11-02T08:00:09Z"}"#;
        assert_eq!(dec.decode(plain).unwrap().ts, at("2026-11-02T08:00:00Z"));
    }

    /// Device times are only used as a difference: no pair of them makes a call invalid.
    #[test]
    fn impossible_skew_falls_back_to_received_at() {
        let at = |s: &str| journey_core::event::parse_rfc3339(s).unwrap();
        let http = decoder().with_received_at(at("2026-11-02T12:00:00Z"));
        let ts = |original: &str, sent: &str| {
            let record = format!(
                r#"{{"userId":"u","event":"x","originalTimestamp":"{original}","sentAt":"{sent}"}}"#
            );
            http.decode(record.as_bytes()).map(|e| e.ts)
        };
        // originalTimestamp after sentAt (the clock was changed in between): no offset, not a
        // time in the future.
        assert_eq!(
            ts("2099-01-01T00:00:00Z", "2001-01-01T00:00:00Z"),
            Ok(at("2026-11-02T12:00:00Z"))
        );
        // An offset of a century would land before 2000: the arrival time.
        assert_eq!(
            ts("2000-01-01T00:00:00Z", "2099-01-01T00:00:00Z"),
            Ok(at("2026-11-02T12:00:00Z"))
        );
        // A plausible offset is still applied.
        assert_eq!(
            ts("2001-01-01T00:00:00Z", "2001-01-01T00:01:00Z"),
            Ok(at("2026-11-02T11:59:00Z"))
        );
    }
}
