//! CloudEvents 1.0 in structured JSON mode.
//!
//! | event field   | taken from                                                          |
//! |---------------|---------------------------------------------------------------------|
//! | `customer_id` | `subject` (a string, or a number written out, as in every decoder)  |
//! | `event`       | `type`                                                              |
//! | `ts`          | `time` (RFC 3339, or integer epoch milliseconds); required here      |
//! | `event_id`    | `id` (a string, or a number written out)                            |
//! | `source`      | the decoder's default source                                        |
//! | `attributes`  | `data` when it is an object, else `{"data": data}`; the CloudEvents |
//! |               | `source` URI is added as `ce_source`                                |
//!
//! The CloudEvents `source` is a URI naming the producer, not one of journeyd's source
//! names (`web`, `crm`), so it is kept as an attribute instead. A binary payload
//! (`data_base64`) is kept as `{"data_base64": ...}`. `specversion` and extension attributes
//! are not checked or kept; `null` counts as absent.

use std::borrow::Cow;

use journey_core::{DecodeError, Event, Projection};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::decode::{self, Field};

#[derive(Deserialize)]
struct CloudEvent<'a> {
    #[serde(borrow)]
    id: Option<Field<'a>>,
    #[serde(borrow)]
    source: Option<Field<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Field<'a>>,
    #[serde(borrow)]
    subject: Option<Field<'a>>,
    #[serde(borrow)]
    time: Option<Field<'a>>,
    // Kept as text, so that a projection builds only what the rules read of it.
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    data_base64: Option<Value>,
}

/// Decodes one structured-mode CloudEvent. With a `projection`, an object `data` is built
/// only as far as it keeps it.
pub(crate) fn decode<'a>(
    text: &'a str,
    source: &'a str,
    projection: Option<&Projection>,
) -> Result<Event<'a>, DecodeError> {
    if let Some(event) = projection.and_then(|p| decode_scanned(text, source, p)) {
        return Ok(event);
    }
    let ce: CloudEvent<'a> = decode::parse_object(text)?;
    build(ce, source, projection, None)
}

/// [`decode`] of an event whose object `data` the byte scanner projected while it checked the
/// whole record (`Projection::scan_envelope`); serde parses the envelope from a copy with
/// `data` as `{}`. `None` where [`decode`]'s own path must decide, including every record
/// that is not accepted, as for Segment calls (`segment::decode_scanned`).
fn decode_scanned(text: &str, source: &str, projection: &Projection) -> Option<Event<'static>> {
    let mut objects = projection.scan_envelope(text, &[("data", None)])?;
    let (_, range, data) = objects.pop()?;
    let envelope = format!("{}{{}}{}", text.get(..range.start)?, text.get(range.end..)?);
    let ce: CloudEvent<'_> = decode::parse_object(&envelope).ok()?;
    build(ce, source, Some(projection), Some(data))
        .ok()
        .map(Event::into_owned)
}

/// The event of a parsed CloudEvent; `scanned` is its `data` as the byte scanner projected
/// it, else `data` comes from the envelope's raw text.
fn build<'a>(
    ce: CloudEvent<'a>,
    source: &'a str,
    projection: Option<&Projection>,
    scanned: Option<Value>,
) -> Result<Event<'a>, DecodeError> {
    // Only an object `data` becomes the attributes; anything else is kept whole under `data`.
    let data = match ce.data {
        _ if scanned.is_some() => scanned,
        Some(raw) if projection.is_some() && raw.get().starts_with('{') => {
            decode::raw_object(Some(raw), "data", projection, None)?.map(Value::Object)
        }
        Some(raw) => Some(
            serde_json::from_str::<Value>(raw.get())
                .map_err(|e| DecodeError::NotJson(e.to_string()))?,
        ),
        None => None,
    };

    let customer_id = decode::customer(ce.subject, "subject")?;
    let name = decode::event_name(ce.kind, "type")?;
    let ts = decode::timestamp(ce.time.ok_or(DecodeError::MissingField("time"))?, "time")?;
    let event_id = ce.id.map(|id| decode::identifier(id, "id")).transpose()?;
    let ce_source = decode::optional_string(ce.source, "source")?;

    let mut attributes = match (data, ce.data_base64) {
        (Some(Value::Object(map)), _) => Some(map),
        (Some(Value::Null) | None, None | Some(Value::Null)) => None,
        (Some(Value::Null) | None, Some(binary)) => {
            Some(Map::from_iter([("data_base64".to_string(), binary)]))
        }
        (Some(other), _) => Some(Map::from_iter([("data".to_string(), other)])),
    };
    if let Some(ce_source) = ce_source {
        attributes.get_or_insert_with(Map::new).insert(
            "ce_source".to_string(),
            Value::String(ce_source.into_owned()),
        );
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
        Decoder::new(Format::CloudEvents, "web", DecodeLimits::default())
    }

    /// The byte scanner's path decodes the usual events, to what serde's path gives, and
    /// leaves the unusual ones to it.
    #[test]
    fn usual_events_are_scanned_to_what_serde_gives() {
        let projection = decode::projection_of(&["url", "page.url"]);
        decode::check_scanned_path(
            |text| decode_scanned(text, "web", &projection),
            |text| {
                let ce: CloudEvent<'_> = decode::parse_object(text)?;
                build(ce, "web", Some(&projection), None).map(Event::into_owned)
            },
            &[
                r#"{"specversion":"1.0","id":"e","source":"s","type":"page_view","subject":"c","time":"2026-11-22T10:00:00Z","data":{"url":"/p","page":{"url":"u","t":[1,2]},"x":"\u00fc"}}"#,
                r#"{"data":{},"type":"t","subject":"c","time":"2026-11-22T10:00:00Z","data_base64":"AA=="}"#,
            ],
            // Not an object, no data, no time, data twice.
            &[
                r#"{"type":"t","subject":"c","time":"2026-11-22T10:00:00Z","data":"text"}"#,
                r#"{"type":"t","subject":"c","time":"2026-11-22T10:00:00Z"}"#,
                r#"{"type":"t","subject":"c","data":{"url":"/p"}}"#,
                r#"{"type":"t","subject":"c","time":"2026-11-22T10:00:00Z","data":{},"data":{}}"#,
            ],
        );
    }

    #[test]
    fn spec_example_as_a_cloudevent() {
        let record = br#"{"specversion": "1.0", "id": "e-81", "source": "https://shop.example/web",
            "type": "page_view", "subject": "c-42", "time": "2026-11-22T10:00:00.120Z",
            "datacontenttype": "application/json",
            "data": {"url": "/products/shoes", "utm_medium": "cpc", "persona": "bargain-hunter"}}"#;
        let canonical = br#"{"event_id": "e-81", "customer_id": "c-42", "ts": "2026-11-22T10:00:00.120Z",
            "source": "web", "event": "page_view",
            "attributes": {"url": "/products/shoes", "utm_medium": "cpc", "persona": "bargain-hunter",
                           "ce_source": "https://shop.example/web"}}"#;
        let dec = decoder();
        let ev = dec.decode(record).unwrap();
        assert!(matches!(ev.customer_id, Cow::Borrowed("c-42")));
        assert!(matches!(ev.name, Cow::Borrowed("page_view")));
        assert_eq!(ev.source, "web");
        assert_eq!(
            Ok(ev),
            decode_canonical(canonical, "other", &DecodeLimits::default())
        );
    }

    #[test]
    fn data_that_is_not_an_object_is_wrapped() {
        let dec = decoder();
        let attributes = |extra: &str| {
            let record =
                format!(r#"{{"type": "t", "subject": "s", "time": 1795341600000{extra}}}"#);
            dec.decode(record.as_bytes()).unwrap().attributes
        };
        assert_eq!(attributes(r#", "data": [1, 2]"#), json!({"data": [1, 2]}));
        assert_eq!(attributes(r#", "data": "text""#), json!({"data": "text"}));
        assert_eq!(
            attributes(r#", "data": 3, "source": "/s""#),
            json!({"data": 3, "ce_source": "/s"})
        );
        assert_eq!(
            attributes(r#", "data_base64": "AAEC""#),
            json!({"data_base64": "AAEC"})
        );
        assert_eq!(attributes(r#", "data": null"#), Value::Null);
        assert_eq!(attributes(""), Value::Null);
        assert_eq!(
            attributes(r#", "source": "urn:x""#),
            json!({"ce_source": "urn:x"})
        );
        assert_eq!(
            attributes(r#", "data": {"ce_source": "mine"}, "source": "urn:x""#),
            json!({"ce_source": "urn:x"})
        );
    }

    #[test]
    fn optional_fields_and_epoch_millis() {
        let dec = decoder();
        let ev = dec
            .decode(br#"{"type": "t", "subject": "s\u0031", "time": 1795341600120, "id": null}"#)
            .unwrap();
        assert_eq!(ev.customer_id, "s1");
        assert_eq!(ev.ts, 1_795_341_600_120);
        assert_eq!(ev.event_id, None);
    }

    #[test]
    fn every_error_names_its_field() {
        let dec = decoder();
        let cases = [
            (
                "hello",
                "not_json",
                "record is not a JSON object: expected value",
            ),
            (
                "[{}]",
                "not_json",
                "record is not a JSON object: invalid type: sequence, expected a JSON object",
            ),
            (
                r#"{"type": "t", "time": 1795341600000}"#,
                "missing_field",
                "missing field `subject`",
            ),
            (
                r#"{"type": "t", "subject": true, "time": 1795341600000}"#,
                "wrong_type",
                "field `subject` must be a string or integer",
            ),
            (
                r#"{"type": "t", "subject": null, "time": 1795341600000}"#,
                "missing_field",
                "missing field `subject`",
            ),
            (
                r#"{"type": "t", "subject": "", "time": 1795341600000}"#,
                "customer_id_length",
                "`customer_id` must be 1 to 256 characters, got 0",
            ),
            (
                r#"{"subject": "s", "time": 1795341600000}"#,
                "missing_field",
                "missing field `type`",
            ),
            (
                r#"{"type": {}, "subject": "s", "time": 1795341600000}"#,
                "wrong_type",
                "field `type` must be a string",
            ),
            (
                r#"{"type": "", "subject": "s", "time": 1795341600000}"#,
                "wrong_type",
                "field `type` must be a non-empty string",
            ),
            (
                r#"{"type": "t", "subject": "s"}"#,
                "missing_field",
                "missing field `time`",
            ),
            (
                r#"{"type": "t", "subject": "s", "time": true}"#,
                "wrong_type",
                "field `time` must be an RFC 3339 string or epoch milliseconds",
            ),
            (
                r#"{"type": "t", "subject": "s", "time": "22/11/2026"}"#,
                "bad_timestamp",
                "`ts` is not RFC 3339 or epoch milliseconds: `22/11/2026`",
            ),
            (
                r#"{"type": "t", "subject": "s", "time": "1999-12-31T23:59:59.999Z"}"#,
                "timestamp_out_of_range",
                "`ts` 946684799999 is outside the accepted range 2000-01-01 to 2100-01-01",
            ),
            (
                r#"{"type": "t", "subject": "s", "time": 1795341600000, "id": [81]}"#,
                "wrong_type",
                "field `id` must be a string or integer",
            ),
            (
                r#"{"type": "t", "subject": "s", "time": 1795341600000, "source": ["x"]}"#,
                "wrong_type",
                "field `source` must be a string",
            ),
        ];
        for (record, reason, message) in cases {
            let err = dec.decode(record.as_bytes()).unwrap_err();
            assert_eq!(shown(&err), (reason, message.to_string()), "{record}");
        }
        let long = format!(
            r#"{{"type": "t", "subject": "{}", "time": 1795341600000}}"#,
            "s".repeat(300)
        );
        assert_eq!(
            dec.decode(long.as_bytes()).unwrap_err(),
            DecodeError::CustomerIdLength(300)
        );
        assert_eq!(
            dec.decode(b"{\"subject\": \"\xe2\x28\xa1\"}").unwrap_err(),
            DecodeError::InvalidUtf8
        );
        let small = Decoder::new(
            Format::CloudEvents,
            "web",
            DecodeLimits {
                max_record_bytes: 2,
                ..DecodeLimits::default()
            },
        );
        assert_eq!(
            small.decode(b"{ }").unwrap_err(),
            DecodeError::TooLarge { size: 3, limit: 2 }
        );
    }
}
