//! The canonical event and its decoding from JSON bytes.
//!
//! Decoding borrows strings from the input where JSON escapes allow, and names the offending
//! field in every error so that dead-letter records explain themselves.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::projection::Projection;
use crate::time::{HumanDuration, Millis, DAY, MAX_EVENT_TIME, MIN_EVENT_TIME};

/// Longest accepted `customer_id`, in characters (Unicode code points, as JSON Schema's
/// `maxLength` counts them; at most 1 KiB as UTF-8).
pub const MAX_CUSTOMER_ID_CHARS: usize = 256;

/// One customer action. `ts` is event time in epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub customer_id: Cow<'a, str>,
    pub ts: Millis,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(borrow, rename = "event")]
    pub name: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub attributes: Value,
}

impl Event<'_> {
    /// An owned copy that no longer borrows the input buffer.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: self.event_id.map(|s| Cow::Owned(s.into_owned())),
            customer_id: Cow::Owned(self.customer_id.into_owned()),
            ts: self.ts,
            source: Cow::Owned(self.source.into_owned()),
            name: Cow::Owned(self.name.into_owned()),
            attributes: self.attributes,
        }
    }

    /// The attribute at a dotted path (`page.url`), if present.
    pub fn attribute(&self, path: &[Box<str>]) -> Option<&Value> {
        lookup(&self.attributes, path)
    }
}

/// Walks a pre-split dotted path into a JSON value without allocating.
pub fn lookup<'v>(root: &'v Value, path: &[Box<str>]) -> Option<&'v Value> {
    let mut v = root;
    for seg in path {
        v = v.as_object()?.get(&**seg)?;
    }
    Some(v)
}

/// Why a record could not become an event. [`DecodeError::reason`] is the stable counter label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("record is not valid UTF-8")]
    InvalidUtf8,
    #[error("record is not a JSON object: {0}")]
    NotJson(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`customer_id` must be 1 to {MAX_CUSTOMER_ID_CHARS} characters, got {0}")]
    CustomerIdLength(usize),
    #[error("`ts` is not RFC 3339 or epoch milliseconds: `{0}`")]
    BadTimestamp(String),
    #[error("`ts` {0} is outside the accepted range 2000-01-01 to 2100-01-01")]
    TimestampOutOfRange(Millis),
    /// Event time more than `ingest.max_future` after the wall clock when decoded (SPEC §1):
    /// a broken device clock, which must not move any watermark.
    #[error("`ts` {ts} is more than {} after the wall clock ({now}), all epoch milliseconds", HumanDuration(*max_future))]
    TimestampInFuture {
        /// The record's event time, epoch milliseconds.
        ts: Millis,
        /// The wall clock when the record was decoded, epoch milliseconds.
        now: Millis,
        /// `ingest.max_future`, milliseconds.
        max_future: Millis,
    },
}

impl DecodeError {
    /// Short, stable reason used as a metric label and in dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::InvalidUtf8 => "invalid_utf8",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::CustomerIdLength(_) => "customer_id_length",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::TimestampOutOfRange(_) => "timestamp_out_of_range",
            DecodeError::TimestampInFuture { .. } => "timestamp_in_future",
        }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted record, in bytes (`ingest.max_record_bytes`, default 1 MiB).
    pub max_record_bytes: usize,
    /// Largest accepted distance of event time after the wall clock at decode time, in
    /// milliseconds (`ingest.max_future`, default 1 day; SPEC §1). The core reads no clock:
    /// [`check_not_future`] takes the wall clock as an argument.
    pub max_future: Millis,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_record_bytes: 1 << 20,
            max_future: DAY,
        }
    }
}

/// Rejects an event time more than `max_future` milliseconds after `now` (the wall clock when
/// the record is decoded, epoch milliseconds) as [`DecodeError::TimestampInFuture`].
pub fn check_not_future(ts: Millis, now: Millis, max_future: Millis) -> Result<(), DecodeError> {
    if ts > now.saturating_add(max_future) {
        Err(DecodeError::TimestampInFuture {
            ts,
            now,
            max_future,
        })
    } else {
        Ok(())
    }
}

/// Parses an RFC 3339 string into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Checks that an event time lies in the accepted range.
pub fn check_time(ts: Millis) -> Result<Millis, DecodeError> {
    if (MIN_EVENT_TIME..MAX_EVENT_TIME).contains(&ts) {
        Ok(ts)
    } else {
        Err(DecodeError::TimestampOutOfRange(ts))
    }
}

/// Reads a `ts` value: RFC 3339 string or integer epoch milliseconds.
pub fn timestamp_from_value(v: &Value) -> Result<Millis, DecodeError> {
    let ts = match v {
        Value::String(s) => parse_rfc3339(s).ok_or_else(|| DecodeError::BadTimestamp(s.clone()))?,
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| DecodeError::BadTimestamp(n.to_string()))?,
        _ => {
            return Err(DecodeError::WrongType {
                field: "ts",
                expected: "an RFC 3339 string or epoch milliseconds",
            })
        }
    };
    check_time(ts)
}

/// Checks the length rule for customer ids.
pub fn check_customer_id(id: &str) -> Result<(), DecodeError> {
    // Bytes are at least as many as characters: count only when the bytes are too many.
    if id.is_empty()
        || (id.len() > MAX_CUSTOMER_ID_CHARS && id.chars().count() > MAX_CUSTOMER_ID_CHARS)
    {
        Err(DecodeError::CustomerIdLength(id.chars().count()))
    } else {
        Ok(())
    }
}

/// Decodes one canonical JSON event. `default_source` applies when the record has no `source`.
pub fn decode_canonical<'a>(
    bytes: &'a [u8],
    default_source: &'a str,
    limits: &DecodeLimits,
) -> Result<Event<'a>, DecodeError> {
    decode_canonical_projected(bytes, default_source, limits, None)
}

/// [`decode_canonical`] keeping only the attribute paths of `projection` (all attributes with
/// `None`): the other attributes are skipped without building values. The same records are
/// accepted and rejected, with the same reasons, except for values a [`Value`] cannot hold
/// (a number beyond `f64` such as `1e400`, nesting deeper than 128 levels): inside an attribute
/// nobody reads they are skipped, as valid JSON, and the record is accepted.
///
/// With a projection, a byte scanner (`projection::scan`) decodes records of the usual shape
/// and hands every other record to serde_json, which decides it as before.
pub fn decode_canonical_projected<'a>(
    bytes: &'a [u8],
    default_source: &'a str,
    limits: &DecodeLimits,
    projection: Option<&Projection>,
) -> Result<Event<'a>, DecodeError> {
    if bytes.len() > limits.max_record_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_record_bytes,
        });
    }
    let text = simdutf8::basic::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    let raw = match projection.and_then(|p| p.scan_canonical(text)) {
        Some(raw) => raw,
        None => decode_raw_canonical(text, projection)?,
    };
    let customer_id = raw
        .customer_id
        .ok_or(DecodeError::MissingField("customer_id"))?;
    check_customer_id(&customer_id)?;
    let name = raw.name.ok_or(DecodeError::MissingField("event"))?;
    if name.is_empty() {
        return Err(DecodeError::WrongType {
            field: "event",
            expected: "a non-empty string",
        });
    }
    let ts = check_time(raw.ts.ok_or(DecodeError::MissingField("ts"))?)?;
    Ok(Event {
        event_id: raw.event_id,
        customer_id,
        ts,
        source: raw.source.unwrap_or(Cow::Borrowed(default_source)),
        name,
        attributes: raw.attributes.unwrap_or(Value::Null),
    })
}

/// The serde path of [`decode_canonical_projected`]: every record without a projection, and
/// every record the projection's byte scanner gives up on.
pub(crate) fn decode_raw_canonical<'a>(
    text: &'a str,
    projection: Option<&Projection>,
) -> Result<RawCanonical<'a>, DecodeError> {
    let failure = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    CanonicalSeed {
        failure: &failure,
        projection,
    }
    .deserialize(&mut de)
    .and_then(|raw| {
        de.end()?;
        Ok(raw)
    })
    .map_err(|e| match failure.take() {
        // A field's parse fails on bad syntax as it does on a wrong type (`NaN`, a lone
        // surrogate): only a record that is JSON can have a field of the wrong type.
        Some(f @ DecodeError::WrongType { .. }) => match serde_json::from_str::<Value>(text) {
            Ok(_) => f,
            Err(syntax) => DecodeError::NotJson(syntax.to_string()),
        },
        Some(f) => f,
        None => DecodeError::NotJson(e.to_string()),
    })
}

/// A canonical record's fields as written, before the checks of
/// [`decode_canonical_projected`].
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RawCanonical<'a> {
    pub(crate) event_id: Option<Cow<'a, str>>,
    pub(crate) customer_id: Option<Cow<'a, str>>,
    pub(crate) ts: Option<Millis>,
    pub(crate) source: Option<Cow<'a, str>>,
    pub(crate) name: Option<Cow<'a, str>>,
    pub(crate) attributes: Option<Value>,
}

struct CanonicalSeed<'c> {
    failure: &'c Cell<Option<DecodeError>>,
    projection: Option<&'c Projection>,
}

impl<'de> DeserializeSeed<'de> for CanonicalSeed<'_> {
    type Value = RawCanonical<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CanonicalSeed<'_> {
    type Value = RawCanonical<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawCanonical::default();
        let fail = |e: DecodeError| {
            let msg = e.to_string();
            self.failure.set(Some(e));
            de::Error::custom(msg)
        };
        // SPEC §1: null counts as absent for every field. A null optional field takes its
        // default; a null required field is reported as missing after the loop.
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            match &*key.0 {
                "customer_id" => raw.customer_id = identifier_field(&mut map, "customer_id", fail)?,
                "event" => raw.name = string_field(&mut map, "event", fail)?,
                "source" => raw.source = string_field(&mut map, "source", fail)?,
                "event_id" => raw.event_id = identifier_field(&mut map, "event_id", fail)?,
                "ts" => {
                    let ts = map.next_value::<Option<RawTs<'de>>>().map_err(|_| {
                        fail(DecodeError::WrongType {
                            field: "ts",
                            expected: "an RFC 3339 string or epoch milliseconds",
                        })
                    })?;
                    raw.ts = match ts {
                        None => None,
                        Some(RawTs::Int(n)) => Some(n),
                        Some(RawTs::Float(f)) if f.fract() == 0.0 && f.abs() < 1e15 => {
                            Some(f as Millis)
                        }
                        Some(RawTs::Float(f)) => {
                            return Err(fail(DecodeError::BadTimestamp(f.to_string())))
                        }
                        Some(RawTs::TooLarge(n)) => {
                            return Err(fail(DecodeError::BadTimestamp(n.to_string())))
                        }
                        Some(RawTs::Str(s)) => Some(
                            parse_rfc3339(&s.0)
                                .ok_or_else(|| fail(DecodeError::BadTimestamp(s.0.into_owned())))?,
                        ),
                    };
                }
                "attributes" => {
                    let wrong = || {
                        fail(DecodeError::WrongType {
                            field: "attributes",
                            expected: "an object",
                        })
                    };
                    let v: Value = match self.projection {
                        None => map.next_value()?,
                        Some(p) => {
                            let not_object = Cell::new(false);
                            match map.next_value_seed(p.object_seed(&not_object)) {
                                Ok(v) => v,
                                Err(_) if not_object.get() => return Err(wrong()),
                                Err(e) => return Err(e),
                            }
                        }
                    };
                    if !(v.is_object() || v.is_null()) {
                        return Err(wrong());
                    }
                    raw.attributes = Some(v);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// A string field; `null` is `None` (absent).
fn string_field<'de, A: MapAccess<'de>>(
    map: &mut A,
    field: &'static str,
    fail: impl Fn(DecodeError) -> A::Error,
) -> Result<Option<Cow<'de, str>>, A::Error> {
    map.next_value::<Option<CowStr<'de>>>()
        .map(|s| s.map(|s| s.0))
        .map_err(|_| {
            fail(DecodeError::WrongType {
                field,
                expected: "a string",
            })
        })
}

/// An identifier (`customer_id`, `event_id`): a string, or an integer within 64 bits written
/// out in decimal, as every other decoder accepts it; `null` is `None` (absent).
fn identifier_field<'de, A: MapAccess<'de>>(
    map: &mut A,
    field: &'static str,
    fail: impl Fn(DecodeError) -> A::Error,
) -> Result<Option<Cow<'de, str>>, A::Error> {
    map.next_value::<Option<Identifier<'de>>>()
        .map(|s| s.map(|s| s.0))
        .map_err(|_| {
            fail(DecodeError::WrongType {
                field,
                expected: "a string or integer",
            })
        })
}

/// A string (borrowed when unescaped) or a JSON number that is an integer from `i64::MIN` to
/// `u64::MAX`, as its decimal text ([`id_number_text`]).
struct Identifier<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Identifier<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Identifier<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or integer")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Identifier(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Identifier(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Identifier(Cow::Owned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Identifier(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Identifier(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                float_id_text(v)
                    .map(|t| Identifier(Cow::Owned(t)))
                    .ok_or_else(|| E::invalid_type(de::Unexpected::Float(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// The decimal text of a JSON number used as an identifier (`customer_id`, `event_id`,
/// Segment's `userId`, ...): an integer from `i64::MIN` to `u64::MAX`, also when written with a
/// fraction or an exponent (`100.0` and `1e2` are `100`, as JSON Schema's `integer` counts
/// them). Any other number has none: serde_json keeps it as an `f64`, whose decimal text is
/// lost, so `18446744073709551616` and `18446744073709551999` would both be one customer.
pub fn id_number_text(n: &serde_json::Number) -> Option<String> {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => Some(i.to_string()),
        (_, Some(u)) => Some(u.to_string()),
        _ => float_id_text(n.as_f64()?),
    }
}

/// [`id_number_text`] of a float: a whole number strictly between -2^63 and 2^64, else
/// `None`. Both ends are left out: an integer beyond the range is parsed as a float that may
/// round to them (`-9223372036854775809` becomes -2^63), never to a float inside.
fn float_id_text(f: f64) -> Option<String> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.fract() != 0.0 || f <= -TWO_63 || f >= 2.0 * TWO_63 {
        return None;
    }
    // Exact: a whole float in range converts to the integer it is.
    Some(if f < 0.0 {
        (f as i64).to_string()
    } else {
        (f as u64).to_string()
    })
}

/// A string that borrows from the input when it has no escapes.
#[derive(Debug)]
pub struct CowStr<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

enum RawTs<'a> {
    Int(i64),
    /// An integer beyond `i64`: a bad timestamp, as in the other decoders.
    TooLarge(u64),
    Float(f64),
    Str(CowStr<'a>),
}

impl<'de> Deserialize<'de> for RawTs<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a timestamp")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(RawTs::TooLarge(v), RawTs::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Str(CowStr(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Str(CowStr(Cow::Owned(v.to_owned()))))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Event<'_>, DecodeError> {
        decode_canonical(s.as_bytes(), "web", &DecodeLimits::default())
    }

    #[test]
    fn decodes_and_borrows() {
        let line = r#"{"event_id":"e-81","customer_id":"c-42","ts":"2026-11-22T10:00:00.120Z","source":"crm","event":"page_view","attributes":{"url":"/p","page":{"url":"/x"}}}"#;
        let ev = decode(line).unwrap();
        assert!(matches!(ev.customer_id, Cow::Borrowed("c-42")));
        assert_eq!(ev.source, "crm");
        assert_eq!(ev.ts, 1_795_341_600_120);
        let path: Vec<Box<str>> = vec!["page".into(), "url".into()];
        assert_eq!(ev.attribute(&path), Some(&Value::from("/x")));
    }

    #[test]
    fn accepts_epoch_millis_and_default_source() {
        let ev = decode(r#"{"customer_id":"c","ts":1795341600120,"event":"x"}"#).unwrap();
        assert_eq!(ev.ts, 1_795_341_600_120);
        assert_eq!(ev.source, "web");
        assert_eq!(ev.attributes, Value::Null);
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let ev = decode(
            r#"{"event_id":null,"customer_id":"c","ts":1795341600120,"source":null,"event":"x","attributes":null}"#,
        )
        .unwrap();
        assert_eq!(
            (ev.event_id, ev.source, ev.attributes),
            (None, Cow::Borrowed("web"), Value::Null)
        );
        let ev =
            decode(r#"{"event_id":7,"customer_id":42,"ts":1795341600120,"event":"x"}"#).unwrap();
        assert_eq!(
            (ev.event_id.as_deref(), &*ev.customer_id),
            (Some("7"), "42")
        );
        let ev = decode(
            r#"{"event_id":-7,"customer_id":18446744073709551615,"ts":1795341600120,"event":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            (ev.event_id.as_deref(), &*ev.customer_id),
            (Some("-7"), "18446744073709551615")
        );
    }

    /// A number that is no integer from `i64::MIN` to `u64::MAX` is kept as an `f64`: its
    /// text is lost, and `18446744073709551616` and `18446744073709551999` would be one
    /// customer. Whole numbers written as floats are integers, as in JSON Schema.
    #[test]
    fn identifiers_that_would_lose_digits_are_refused() {
        for (id, text) in [
            ("1e2", "100"),
            ("100.0", "100"),
            ("-4815539720.0", "-4815539720"),
            ("1e19", "10000000000000000000"),
        ] {
            let line =
                format!(r#"{{"customer_id":{id},"event_id":{id},"ts":1795341600120,"event":"x"}}"#);
            let ev = decode(&line).unwrap();
            assert_eq!(
                (&*ev.customer_id, ev.event_id.as_deref()),
                (text, Some(text)),
                "{line}"
            );
        }
        for id in [
            "18446744073709551616",
            "-9223372036854775809",
            "1.5",
            "1e-3",
            "-9.223372036854776e18",
        ] {
            for field in ["customer_id", "event_id"] {
                let other = if field == "customer_id" {
                    "event_id"
                } else {
                    "customer_id"
                };
                let line =
                    format!(r#"{{"{field}":{id},"{other}":"a","ts":1795341600120,"event":"x"}}"#);
                let err = decode(&line).unwrap_err();
                assert_eq!(err.reason(), "wrong_type", "{line}");
                assert_eq!(
                    err.to_string(),
                    format!("field `{field}` must be a string or integer"),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn unescapes_strings() {
        let ev = decode(r#"{"customer_id":"c\"1","ts":1795341600120,"event":"x"}"#).unwrap();
        assert_eq!(ev.customer_id, "c\"1");
    }

    #[test]
    fn names_the_offending_field() {
        let cases = [
            ("{", "not_json"),
            ("[1]", "not_json"),
            (r#"{"ts":1795341600120,"event":"x"}"#, "missing_field"),
            (r#"{"customer_id":"c","event":"x"}"#, "missing_field"),
            (
                r#"{"customer_id":true,"ts":1795341600120,"event":"x"}"#,
                "wrong_type",
            ),
            (
                r#"{"customer_id":null,"ts":1795341600120,"event":"x"}"#,
                "missing_field",
            ),
            (
                r#"{"customer_id":"c","ts":null,"event":"x"}"#,
                "missing_field",
            ),
            (
                r#"{"customer_id":"c","ts":1795341600120,"event":null}"#,
                "missing_field",
            ),
            (
                r#"{"customer_id":"c","ts":18446744073709551615,"event":"x"}"#,
                "bad_timestamp",
            ),
            (
                r#"{"customer_id":"","ts":1795341600120,"event":"x"}"#,
                "customer_id_length",
            ),
            (
                r#"{"customer_id":"c","ts":"yesterday","event":"x"}"#,
                "bad_timestamp",
            ),
            (
                r#"{"customer_id":"c","ts":5,"event":"x"}"#,
                "timestamp_out_of_range",
            ),
            (r#"{"customer_id":"c","ts":true,"event":"x"}"#, "wrong_type"),
            // Bad syntax inside a field is not a wrong type.
            (r#"{"customer_id":"c","ts":NaN,"event":"x"}"#, "not_json"),
            (
                r#"{"customer_id":"c","ts":"\ud800","event":"x"}"#,
                "not_json",
            ),
            (
                r#"{"customer_id":"\udc00","ts":1795341600120,"event":"x"}"#,
                "not_json",
            ),
            (
                r#"{"customer_id":"c","ts":1795341600120,"event":tru}"#,
                "not_json",
            ),
            (
                r#"{"customer_id":"c","ts":1795341600120,"event":"x","attributes":{"a":}}"#,
                "not_json",
            ),
            (
                r#"{"customer_id":"c","ts":1795341600120,"event":"x","attributes":[1]}"#,
                "wrong_type",
            ),
            (
                r#"{"customer_id":"c","ts":1795341600120,"event":"x"} trailing"#,
                "not_json",
            ),
        ];
        for (line, reason) in cases {
            assert_eq!(decode(line).unwrap_err().reason(), reason, "{line}");
        }
        assert_eq!(
            decode(r#"{"customer_id":[5],"ts":1,"event":"x"}"#)
                .unwrap_err()
                .to_string(),
            "field `customer_id` must be a string or integer"
        );
        assert_eq!(
            decode(r#"{"customer_id":null,"ts":1,"event":"x"}"#).unwrap_err(),
            DecodeError::MissingField("customer_id")
        );
        let long = format!(
            r#"{{"customer_id":"{}","ts":1795341600120,"event":"x"}}"#,
            "a".repeat(257)
        );
        assert_eq!(
            decode(&long).unwrap_err(),
            DecodeError::CustomerIdLength(257)
        );
        // Characters, not bytes: 256 four-byte characters (1 KiB) are an id, 257 are not.
        let wide = |n: usize| {
            format!(
                r#"{{"customer_id":"{}","ts":1795341600120,"event":"x"}}"#,
                "\u{1F600}".repeat(n)
            )
        };
        assert_eq!(decode(&wide(256)).unwrap().customer_id.chars().count(), 256);
        assert_eq!(
            decode(&wide(257)).unwrap_err(),
            DecodeError::CustomerIdLength(257)
        );
    }

    #[test]
    fn rejects_oversized_and_non_utf8() {
        let limits = DecodeLimits {
            max_record_bytes: 10,
            ..DecodeLimits::default()
        };
        assert_eq!(
            decode_canonical(b"{\"customer_id\":\"c\"}", "web", &limits)
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            decode_canonical(b"{\"a\":\"\xff\"}", "web", &DecodeLimits::default()).unwrap_err(),
            DecodeError::InvalidUtf8
        );
    }
}
