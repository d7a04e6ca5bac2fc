//! The [`Decoder`] and the field checks shared by the non-canonical formats.
//!
//! Segment and CloudEvents records are deserialized into small envelope structs whose
//! scalar fields are [`Field`]s: strings borrow from the record when they have no escapes,
//! anything else is kept as a JSON value. Type checks then happen in plain code, so every
//! error can name the field as the producer wrote it (`userId`, `time`, ...).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use journey_core::event::{
    check_customer_id, check_not_future, check_time, decode_canonical_projected, parse_rfc3339,
};
use journey_core::time::Millis;
use journey_core::{DecodeError, DecodeLimits, Event, Projection, SharedProjection};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{cloudevents, segment, Format};

/// The wall clock, epoch milliseconds. Replaced in tests.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// The system's wall clock, epoch milliseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
        })
    })
}

/// Decodes records of one wire format into events.
///
/// `default_source` is the event's `source` unless the record names one (null counts as
/// absent, SPEC §1); Segment and CloudEvents records always get it. Every format ends with the
/// same checks: event time in the accepted range, and not more than `limits.max_future` after
/// the decoder's wall clock ([`DecodeError::TimestampInFuture`]).
#[derive(Clone)]
pub struct Decoder {
    format: Format,
    default_source: String,
    limits: DecodeLimits,
    clock: Clock,
    /// `clock() + max_future` when last read, epoch milliseconds: event times up to it are
    /// accepted without reading the clock again (the wall clock only moves forward).
    horizon: Arc<AtomicI64>,
    /// When the records arrived at journeyd (an HTTP request's arrival), epoch milliseconds:
    /// the `receivedAt` of Segment records that carry none.
    received_at: Option<Millis>,
    /// The attribute paths to keep (canonical records); `None` keeps every attribute.
    projection: Option<SharedProjection>,
}

/// A [`Decoder`] with its projection fixed for a batch of records ([`Decoder::batch`]).
#[derive(Debug)]
pub struct DecodeBatch<'d> {
    decoder: &'d Decoder,
    projection: Option<Arc<Projection>>,
}

impl<'d> DecodeBatch<'d> {
    /// [`Decoder::decode`] with this batch's projection.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Event<'a>, DecodeError>
    where
        'd: 'a,
    {
        let d = self.decoder;
        let projection = self.projection.as_deref();
        // The bytes a producer adds around a record (a Kafka message written as a line of a
        // Windows file): a byte-order mark before it, `\r\n` after it. Bodies and files are
        // cut by `split_body` and `for_each_line`, which drop the same bytes.
        let bytes = crate::body::trim_line_ending(crate::body::strip_bom(bytes));
        let source = d.default_source.as_str();
        let ev = match &d.format {
            Format::Canonical => decode_canonical_projected(bytes, source, &d.limits, projection),
            Format::Segment => {
                let text = checked_text(bytes, &d.limits)?;
                segment::decode(text, source, d.received_at, projection)
            }
            Format::CloudEvents => {
                let text = checked_text(bytes, &d.limits)?;
                cloudevents::decode(text, source, projection)
            }
            Format::Mapping(mapping) => mapping.decode(checked_text(bytes, &d.limits)?, source),
        }
        .map(|mut ev| {
            // Segment and CloudEvents build only the projected part of their objects, but
            // assemble attributes from several of them (and the envelope); mappings build
            // every attribute. The projection of the result then drops what nothing reads
            // here, on the decoding thread, so the workers receive (and free) only the
            // attributes they use.
            if let (Some(p), false) = (projection, matches!(d.format, Format::Canonical)) {
                ev.attributes = p.apply(std::mem::take(&mut ev.attributes));
            }
            ev
        })?;
        d.check_future(ev.ts)?;
        Ok(ev)
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("format", &self.format)
            .field("default_source", &self.default_source)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder that checks event times against the system clock.
    pub fn new(format: Format, default_source: impl Into<String>, limits: DecodeLimits) -> Self {
        Decoder {
            format,
            default_source: default_source.into(),
            limits,
            clock: system_clock(),
            horizon: Arc::new(AtomicI64::new(Millis::MIN)),
            received_at: None,
            projection: None,
        }
    }

    /// The same decoder keeping only the attributes on the paths of `projection` (read for
    /// each record, or once per [`Decoder::batch`], so a rules reload applies to records and
    /// batches decoded after it), skipping the rest of the bytes without building values.
    /// Canonical records, and the `properties`, `context`, `traits` and `data` objects of
    /// Segment and CloudEvents records, are built only as far as the projection keeps them
    /// (by the byte scanner where the record has the usual shape, else by serde). Mapped
    /// records are decoded whole and projected right after, so the workers still receive only
    /// the attributes they read. Dead letters are unaffected: they keep the raw record.
    pub fn with_projection(mut self, projection: SharedProjection) -> Self {
        self.projection = Some(projection);
        self
    }

    /// The same decoder for records that arrived at `at` (epoch milliseconds): Segment records
    /// without their own `receivedAt` are corrected for clock skew against it (SPEC §1).
    pub fn with_received_at(mut self, at: Millis) -> Self {
        self.received_at = Some(at);
        self
    }

    /// The same decoder with another wall clock (tests, or a clock the caller already read).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.horizon = Arc::new(AtomicI64::new(Millis::MIN));
        self
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    pub fn default_source(&self) -> &str {
        &self.default_source
    }

    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Decodes one record (one JSON object; a leading UTF-8 byte-order mark and a trailing
    /// `\n` or `\r\n` are dropped). Strings borrow from `bytes` where possible. For many
    /// records in a row, [`Decoder::batch`] reads the projection once.
    pub fn decode<'a>(&'a self, bytes: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        self.batch().decode(bytes)
    }

    /// This decoder with its projection read now, for the records of one batch (a chunk of
    /// lines, a poll's records of a partition, a request body). The projection sits behind a
    /// lock that rules reloads write, and reading it cost a lock and a reference count per
    /// record; a reload takes effect from the next batch.
    pub fn batch(&self) -> DecodeBatch<'_> {
        DecodeBatch {
            decoder: self,
            projection: self.projection.as_ref().map(SharedProjection::load),
        }
    }

    /// SPEC §1: a record dated more than `max_future` after the wall clock is rejected.
    fn check_future(&self, ts: Millis) -> Result<(), DecodeError> {
        if ts <= self.horizon.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = (self.clock)();
        let max_future = self.limits.max_future;
        self.horizon
            .fetch_max(now.saturating_add(max_future), Ordering::Relaxed);
        check_not_future(ts, now, max_future)
    }
}

/// Applies the size limit, then checks UTF-8 (in that order, like the canonical decoder).
pub(crate) fn checked_text<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<&'a str, DecodeError> {
    if bytes.len() > limits.max_record_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_record_bytes,
        });
    }
    simdutf8::basic::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

/// Parses `text` as exactly one JSON object (no trailing data) into `T`.
///
/// Arrays are refused even when `T` is a struct (serde would otherwise accept a sequence).
pub(crate) fn parse_object<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    ObjectOnly::<T>::deserialize(&mut de)
        .and_then(|object| {
            de.end()?;
            Ok(object.0)
        })
        .map_err(|e| DecodeError::NotJson(e.to_string()))
}

struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A present, non-null field: a string (borrowed when unescaped) or any other JSON value.
///
/// Envelope structs hold `Option<Field>`; JSON `null` reads as `None`, i.e. absent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field<'a> {
    Str(Cow<'a, str>),
    Other(Value),
}

impl Field<'_> {
    /// A field read from an already parsed value; `null` counts as absent.
    pub(crate) fn from_value(v: &Value) -> Option<Field<'static>> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(Field::Str(Cow::Owned(s.clone()))),
            other => Some(Field::Other(other.clone())),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<Field<'a>>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Field::Other(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Field::Other(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Field::Other(Value::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Field::Other(Value::from(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Field::Other(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Field::Other(Value::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Field::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(seq)).map(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(map)).map(Field::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

const TIMESTAMP: &str = "an RFC 3339 string or epoch milliseconds";

/// The customer: a string, or an integer within 64 bits written out in decimal; 1 to 256
/// characters.
pub(crate) fn customer<'a>(
    v: Option<Field<'a>>,
    field: &'static str,
) -> Result<Cow<'a, str>, DecodeError> {
    let id = identifier(v.ok_or(DecodeError::MissingField(field))?, field)?;
    check_customer_id(&id)?;
    Ok(id)
}

/// An identifier that producers write as a string or as an integer
/// ([`journey_core::event::id_number_text`]; other numbers are refused as `wrong_type`).
pub(crate) fn identifier<'a>(
    v: Field<'a>,
    field: &'static str,
) -> Result<Cow<'a, str>, DecodeError> {
    match v {
        Field::Str(s) => Ok(s),
        Field::Other(Value::Number(n)) => journey_core::event::id_number_text(&n)
            .map(Cow::Owned)
            .ok_or(DecodeError::WrongType {
                field,
                expected: "a string or integer",
            }),
        Field::Other(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string or integer",
        }),
    }
}

/// A required, non-empty event name.
pub(crate) fn event_name<'a>(
    v: Option<Field<'a>>,
    field: &'static str,
) -> Result<Cow<'a, str>, DecodeError> {
    match v {
        None => Err(DecodeError::MissingField(field)),
        Some(Field::Str(s)) if !s.is_empty() => Ok(s),
        Some(Field::Str(_)) => Err(DecodeError::WrongType {
            field,
            expected: "a non-empty string",
        }),
        Some(Field::Other(_)) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// A string.
pub(crate) fn string<'a>(v: Field<'a>, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    match v {
        Field::Str(s) => Ok(s),
        Field::Other(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// An optional string.
pub(crate) fn optional_string<'a>(
    v: Option<Field<'a>>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    v.map(|v| string(v, field)).transpose()
}

/// Event time: an RFC 3339 string or integer epoch milliseconds, inside the accepted range.
///
/// A float without a fractional part (`1.7953416e12`) counts as an integer, as in the
/// canonical decoder.
pub(crate) fn timestamp(v: Field<'_>, field: &'static str) -> Result<Millis, DecodeError> {
    check_time(raw_timestamp(v, field)?)
}

/// A time as [`timestamp`] reads it, without the range check: device clocks may be far off,
/// and Segment's clock-skew correction only needs the difference of two of them.
pub(crate) fn raw_timestamp(v: Field<'_>, field: &'static str) -> Result<Millis, DecodeError> {
    Ok(match v {
        Field::Str(s) => {
            parse_rfc3339(&s).ok_or_else(|| DecodeError::BadTimestamp(s.into_owned()))?
        }
        Field::Other(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => f as Millis,
            _ => return Err(DecodeError::BadTimestamp(n.to_string())),
        },
        Field::Other(_) => {
            return Err(DecodeError::WrongType {
                field,
                expected: TIMESTAMP,
            })
        }
    })
}

/// An optional JSON object (absent or `null` is `None`).
/// An object field the envelope's parse kept as raw text (Segment's `properties`, `context`,
/// `traits`): with a projection, only what it keeps is built, from the projection's root
/// (`under: None`) or from its paths below the attribute `under`; without, parsed whole.
/// Same results and errors as [`object`] on the parsed value, up to what the projection drops.
pub(crate) fn raw_object(
    raw: Option<&RawValue>,
    field: &'static str,
    projection: Option<&Projection>,
    under: Option<&str>,
) -> Result<Option<Map<String, Value>>, DecodeError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let not_json = |e: serde_json::Error| DecodeError::NotJson(e.to_string());
    let Some(p) = projection else {
        return object(
            Some(serde_json::from_str(raw.get()).map_err(not_json)?),
            field,
        );
    };
    if let Some(v) = p.scan_object(raw.get(), under) {
        return object(Some(v), field);
    }
    let not_object = Cell::new(false);
    let seed = match under {
        None => p.object_seed(&not_object),
        Some(key) => p.object_seed_under(key, &not_object),
    };
    match seed.deserialize(&mut serde_json::Deserializer::from_str(raw.get())) {
        // A node that keeps its value whole takes any value: the type check is ours.
        Ok(v) => object(Some(v), field),
        Err(_) if not_object.get() => Err(DecodeError::WrongType {
            field,
            expected: "an object",
        }),
        Err(e) => Err(not_json(e)),
    }
}

pub(crate) fn object(
    v: Option<Value>,
    field: &'static str,
) -> Result<Option<Map<String, Value>>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "an object",
        }),
    }
}

/// An error as a test compares it: its reason and its message without serde_json's
/// `at line L column C` suffix (the column of some errors differs between versions).
#[cfg(test)]
pub(crate) fn shown(err: &DecodeError) -> (&'static str, String) {
    let message = err.to_string();
    let message = message
        .split_once(" at line ")
        .map_or(&*message, |(m, _)| m);
    (err.reason(), message.to_string())
}

/// The projection onto dotted `paths`.
#[cfg(test)]
pub(crate) fn projection_of(paths: &[&str]) -> Projection {
    let split: Vec<Vec<Box<str>>> = paths
        .iter()
        .map(|p| p.split('.').map(Box::from).collect())
        .collect();
    Projection::new(split.iter().map(Vec::as_slice))
}

/// Checks a format's byte-scanner path (`scanned`: `None` where it leaves the record to
/// serde) against its serde path: each of `usual` is scanned, to what `serde` gives, and each
/// of `unusual` is left to serde.
#[cfg(test)]
pub(crate) fn check_scanned_path(
    scanned: impl Fn(&str) -> Option<Event<'static>>,
    serde: impl Fn(&str) -> Result<Event<'static>, DecodeError>,
    usual: &[&str],
    unusual: &[&str],
) {
    for text in usual {
        let ev = scanned(text);
        assert!(ev.is_some(), "{text}");
        assert_eq!(ev.ok_or(()), serde(text).map_err(|_| ()), "{text}");
    }
    for text in unusual {
        assert_eq!(scanned(text), None, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use journey_core::time::DAY;

    fn field(json: &str) -> Field<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_projection_stored_later_applies_to_records_decoded_after_it() {
        let split = |p: &str| -> Vec<Box<str>> { p.split('.').map(Box::from).collect() };
        let only = |p: &str| journey_core::Projection::new([split(p)].iter().map(Vec::as_slice));
        let shared = SharedProjection::new(only("url"));
        let decoder = Decoder::new(Format::Canonical, "web", DecodeLimits::default())
            .with_projection(shared.clone());
        let line = br#"{"customer_id":"c","ts":1767225600000,"event":"e","attributes":{"url":"/p","plan":{"tier":"pro"},"noise":[1]}}"#;
        let ev = decoder.decode(line).unwrap();
        assert_eq!(ev.attributes, serde_json::json!({"url": "/p"}));
        shared.store(only("plan.tier"));
        let ev = decoder.decode(line).unwrap();
        assert_eq!(ev.attributes, serde_json::json!({"plan": {"tier": "pro"}}));
        // Segment records are projected after decoding: the same attributes reach the engine.
        let segment = Decoder::new(Format::Segment, "web", DecodeLimits::default())
            .with_projection(shared.clone());
        let call = br#"{"userId":"c","event":"e","timestamp":"2026-01-01T00:00:00Z","properties":{"url":"/p","plan":{"tier":"pro","x":1}},"context":{"ip":"1"}}"#;
        let ev = segment.decode(call).unwrap();
        assert_eq!(ev.attributes, serde_json::json!({"plan": {"tier": "pro"}}));
        // Without a projection every attribute is kept.
        let full = Decoder::new(Format::Canonical, "web", DecodeLimits::default());
        assert_eq!(
            full.decode(line).unwrap().attributes["noise"],
            serde_json::json!([1])
        );
    }

    #[test]
    fn field_borrows_plain_strings_and_keeps_other_values() {
        assert!(matches!(
            field(r#""abc""#),
            Field::Str(Cow::Borrowed("abc"))
        ));
        assert!(matches!(field(r#""a\"c""#), Field::Str(Cow::Owned(s)) if s == "a\"c"));
        assert_eq!(field("12"), Field::Other(Value::from(12)));
        assert_eq!(field("-1.5"), Field::Other(Value::from(-1.5)));
        assert_eq!(field("true"), Field::Other(Value::Bool(true)));
        assert_eq!(field("null"), Field::Other(Value::Null));
        assert_eq!(
            field(r#"[1,{"a":2}]"#),
            Field::Other(serde_json::json!([1, {"a": 2}]))
        );
        assert_eq!(
            field(r#"{"a":[null]}"#),
            Field::Other(serde_json::json!({"a": [null]}))
        );
    }

    #[test]
    fn timestamps_accept_rfc3339_and_integral_millis() {
        let ts = |json: &str| timestamp(field(json), "time");
        assert_eq!(ts(r#""2026-11-22T10:00:00.120Z""#), Ok(1_795_341_600_120));
        assert_eq!(
            ts(r#""2026-11-22T11:00:00.120+01:00""#),
            Ok(1_795_341_600_120)
        );
        assert_eq!(ts("1795341600120"), Ok(1_795_341_600_120));
        assert_eq!(ts("1795341600120.0"), Ok(1_795_341_600_120));
        assert_eq!(
            ts("1795341600120.5"),
            Err(DecodeError::BadTimestamp("1795341600120.5".into()))
        );
        assert_eq!(
            ts("18446744073709551615"),
            Err(DecodeError::BadTimestamp("18446744073709551615".into()))
        );
        assert_eq!(ts("-1"), Err(DecodeError::TimestampOutOfRange(-1)));
        assert_eq!(
            ts("true").unwrap_err().to_string(),
            "field `time` must be an RFC 3339 string or epoch milliseconds"
        );
    }

    #[test]
    fn parse_object_refuses_non_objects_and_trailing_data() {
        for text in ["[]", "[1]", "\"s\"", "3", "null", "{", "{} {}", ""] {
            let err = parse_object::<Value>(text).unwrap_err();
            assert_eq!(err.reason(), "not_json", "{text}");
        }
        assert_eq!(
            shown(&parse_object::<Value>("[1]").unwrap_err()),
            (
                "not_json",
                "record is not a JSON object: invalid type: sequence, expected a JSON object"
                    .to_string()
            )
        );
        assert_eq!(
            parse_object::<Value>(r#" {"a":1} "#),
            Ok(serde_json::json!({"a": 1}))
        );
    }

    const NOW: Millis = 1_795_341_600_000;

    /// One decoder per format; the mapping uses canonical-like names under `/r`.
    fn decoders() -> Vec<(&'static str, Decoder)> {
        let mapping: std::collections::BTreeMap<String, String> = [
            ("customer_id", "/r/customer"),
            ("event", "/r/event"),
            ("ts", "/r/ts"),
            ("source", "/r/source"),
            ("event_id", "/r/id"),
            ("attributes", "/r/attributes"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let formats = [
            ("canonical", Format::Canonical),
            ("segment", Format::Segment),
            ("cloudevents", Format::CloudEvents),
            (
                "mapping",
                Format::Mapping(crate::Mapping::new(&mapping).unwrap()),
            ),
        ];
        formats
            .into_iter()
            .map(|(name, f)| {
                let d =
                    Decoder::new(f, "dflt", DecodeLimits::default()).with_clock(Arc::new(|| NOW));
                (name, d)
            })
            .collect()
    }

    /// A record of `format` from (canonical field, value) pairs; `None` writes JSON null.
    fn record(format: &str, fields: &[(&'static str, Option<Value>)]) -> String {
        let name = |f: &'static str| -> &'static str {
            match (format, f) {
                ("segment", "customer_id") => "userId",
                ("segment", "ts") => "timestamp",
                ("segment", "event_id") => "messageId",
                ("segment", "attributes") => "properties",
                ("cloudevents", "customer_id") => "subject",
                ("cloudevents", "ts") => "time",
                ("cloudevents", "event") => "type",
                ("cloudevents", "event_id") => "id",
                ("cloudevents", "attributes") => "data",
                ("mapping", "event_id") => "id",
                ("mapping", "customer_id") => "customer",
                _ => f,
            }
        };
        let obj: Map<String, Value> = fields
            .iter()
            .map(|(f, v)| (name(f).to_string(), v.clone().unwrap_or(Value::Null)))
            .collect();
        let obj = if format == "mapping" {
            serde_json::json!({ "r": obj })
        } else {
            Value::Object(obj)
        };
        obj.to_string()
    }

    fn base() -> Vec<(&'static str, Option<Value>)> {
        vec![
            ("customer_id", Some(Value::from("c-1"))),
            ("event", Some(Value::from("x"))),
            ("ts", Some(Value::from(NOW))),
        ]
    }

    #[test]
    fn every_decoder_treats_null_as_absent_and_a_null_required_field_as_missing() {
        for (format, dec) in decoders() {
            let plain = record(format, &base());
            let want = dec.decode(plain.as_bytes()).unwrap().into_owned();
            let optional: &[&str] = match format {
                "segment" => &["event_id", "attributes", "anonymousId", "context", "name"],
                "cloudevents" => &["event_id", "attributes", "source", "data_base64"],
                _ => &["event_id", "attributes", "source"],
            };
            for field in optional {
                let mut fields = base();
                fields.push((field, None));
                let text = record(format, &fields);
                let got = dec.decode(text.as_bytes());
                assert_eq!(
                    got.map(Event::into_owned),
                    Ok(want.clone()),
                    "{format}: {text}"
                );
            }
            for field in ["customer_id", "event", "ts"] {
                let mut fields = base();
                fields.iter_mut().find(|f| f.0 == field).unwrap().1 = None;
                let text = record(format, &fields);
                let err = dec.decode(text.as_bytes()).unwrap_err();
                assert_eq!(err.reason(), "missing_field", "{format}: {text}");
                let absent: Vec<_> = base().into_iter().filter(|f| f.0 != field).collect();
                let absent = record(format, &absent);
                assert_eq!(
                    dec.decode(absent.as_bytes()).unwrap_err(),
                    err,
                    "{format}: null and absent give the same error"
                );
            }
            // Identifiers: a number is written out in decimal, in every format.
            let mut fields = base();
            fields[0].1 = Some(Value::from(42));
            fields.push(("event_id", Some(Value::from(7))));
            let text = record(format, &fields);
            let ev = dec.decode(text.as_bytes()).unwrap();
            assert_eq!(
                (&*ev.customer_id, ev.event_id.as_deref()),
                ("42", Some("7")),
                "{format}"
            );
        }
    }

    /// A record as a Kafka message from a Windows producer: a byte-order mark before it and
    /// `\r\n` after it decode like the plain record, in every format.
    #[test]
    fn every_decoder_ignores_a_bom_and_a_crlf_around_the_record() {
        for (format, dec) in decoders() {
            let plain = record(format, &base());
            let expected = dec.decode(plain.as_bytes()).unwrap().into_owned();
            for wrapped in [
                format!("\u{FEFF}{plain}"),
                format!("{plain}\r\n"),
                format!("{plain}\n"),
                format!("\u{FEFF}{plain}\r\n"),
            ] {
                let ev = dec.decode(wrapped.as_bytes());
                assert_eq!(
                    ev.map(|e| e.into_owned()),
                    Ok(expected.clone()),
                    "{format}: {wrapped:?}"
                );
            }
        }
    }

    #[test]
    fn every_decoder_rejects_records_dated_beyond_max_future() {
        for (format, dec) in decoders() {
            let at = |ts: Millis| {
                let mut fields = base();
                fields[2].1 = Some(Value::from(ts));
                dec.decode(record(format, &fields).as_bytes()).map(|e| e.ts)
            };
            assert_eq!(
                at(NOW + DAY),
                Ok(NOW + DAY),
                "{format}: exactly max_future ahead"
            );
            let err = at(NOW + DAY + 1).unwrap_err();
            assert_eq!(err.reason(), "timestamp_in_future", "{format}");
            assert_eq!(
                err,
                DecodeError::TimestampInFuture {
                    ts: NOW + DAY + 1,
                    now: NOW,
                    max_future: DAY
                }
            );
            assert_eq!(
                at(NOW - 400 * DAY),
                Ok(NOW - 400 * DAY),
                "{format}: the past is fine"
            );
        }
        // The clock is read again once an event goes beyond the last reading.
        let now = Arc::new(AtomicI64::new(NOW));
        let clock = now.clone();
        let dec = Decoder::new(Format::Canonical, "web", DecodeLimits::default())
            .with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
        let line = |ts: Millis| format!(r#"{{"customer_id":"c","ts":{ts},"event":"x"}}"#);
        assert!(dec.decode(line(NOW + 2 * DAY).as_bytes()).is_err());
        now.store(NOW + DAY, Ordering::Relaxed);
        assert!(dec.decode(line(NOW + 2 * DAY).as_bytes()).is_ok());
        let err = dec.decode(line(NOW + 3 * DAY).as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "`ts` 1795600800000 is more than 1d after the wall clock (1795428000000), all epoch milliseconds");
    }

    #[test]
    fn size_is_checked_before_utf8() {
        let limits = DecodeLimits {
            max_record_bytes: 3,
            ..DecodeLimits::default()
        };
        assert_eq!(
            checked_text(b"\xff\xff\xff\xff", &limits),
            Err(DecodeError::TooLarge { size: 4, limit: 3 })
        );
        assert_eq!(
            checked_text(b"\xff", &limits),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(checked_text(b"{}", &limits), Ok("{}"));
    }
}
