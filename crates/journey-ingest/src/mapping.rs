//! Custom formats: the canonical fields found by RFC 6901 JSON pointers.
//!
//! A mapping is configured as canonical field → pointer, for example (in TOML)
//! `{ customer_id = "/user/id", event = "/action", ts = "/occurred_at", attributes =
//! "/details" }`. `customer_id`, `event` and `ts` are required; `source`, `event_id` and
//! `attributes` are optional, and without `attributes` the whole record is the attributes.
//! Pointers are parsed once (`~1` is `/`, `~0` is `~`; array elements by index).
//!
//! Errors name the canonical field (`customer_id`, `event`, `ts`, `source`, `event_id`,
//! `attributes`). Identifiers (`customer_id`, `event_id`) may be strings or numbers; a
//! `source` pointer that finds nothing (or `null`) falls back to the decoder's default source.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use journey_core::{DecodeError, Event};
use serde_json::Value;

use crate::decode::{self, Field};

const KEYS: [&str; 6] = [
    "customer_id",
    "event",
    "ts",
    "source",
    "event_id",
    "attributes",
];
const REQUIRED: [&str; 3] = ["customer_id", "event", "ts"];

/// Where each canonical field lives in a record of a custom format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    customer_id: Pointer,
    event: Pointer,
    ts: Pointer,
    source: Option<Pointer>,
    event_id: Option<Pointer>,
    attributes: Option<Pointer>,
}

impl Mapping {
    /// Builds a mapping from canonical field names to JSON pointers. `customer_id`, `event`
    /// and `ts` are required. Every problem is reported, joined by `; `.
    pub fn new(fields: &BTreeMap<String, String>) -> Result<Mapping, String> {
        let mut errors = Vec::new();
        let mut pointers: BTreeMap<&str, Pointer> = BTreeMap::new();
        for (key, text) in fields {
            let Some(&key) = KEYS.iter().find(|k| **k == key.as_str()) else {
                errors.push(format!(
                    "unknown mapping key `{key}` (expected one of: {})",
                    KEYS.join(", ")
                ));
                continue;
            };
            match Pointer::parse(text) {
                Ok(pointer) => {
                    pointers.insert(key, pointer);
                }
                Err(why) => errors.push(format!(
                    "invalid JSON pointer `{text}` for mapping key `{key}`: {why}"
                )),
            }
        }
        for key in REQUIRED {
            if !fields.contains_key(key) {
                errors.push(format!("missing required mapping key `{key}`"));
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let mut take = |key| pointers.remove(key);
        Ok(Mapping {
            customer_id: take("customer_id").expect("required key checked above"),
            event: take("event").expect("required key checked above"),
            ts: take("ts").expect("required key checked above"),
            source: take("source"),
            event_id: take("event_id"),
            attributes: take("attributes"),
        })
    }

    /// The mapping as configured: canonical field → JSON pointer.
    pub fn to_fields(&self) -> BTreeMap<String, String> {
        let optional = [
            ("source", &self.source),
            ("event_id", &self.event_id),
            ("attributes", &self.attributes),
        ];
        [
            ("customer_id", &self.customer_id),
            ("event", &self.event),
            ("ts", &self.ts),
        ]
        .into_iter()
        .chain(
            optional
                .into_iter()
                .filter_map(|(k, p)| Some((k, p.as_ref()?))),
        )
        .map(|(k, p)| (k.to_string(), p.text.to_string()))
        .collect()
    }

    pub(crate) fn decode<'a>(
        &self,
        text: &str,
        default_source: &'a str,
    ) -> Result<Event<'a>, DecodeError> {
        let mut record: Value = decode::parse_object(text)?;
        let at = |p: &Pointer| p.resolve(&record).and_then(Field::from_value);

        let customer_id = decode::customer(at(&self.customer_id), "customer_id")?;
        let name = decode::event_name(at(&self.event), "event")?;
        let ts = decode::timestamp(at(&self.ts).ok_or(DecodeError::MissingField("ts"))?, "ts")?;
        let source = match self.source.as_ref().and_then(at) {
            None => Cow::Borrowed(default_source),
            Some(field) => decode::string(field, "source")?,
        };
        let event_id = match self.event_id.as_ref().and_then(at) {
            None => None,
            Some(field) => Some(decode::identifier(field, "event_id")?),
        };
        let attributes = match &self.attributes {
            None => record,
            Some(p) => match p.resolve_mut(&mut record).map(Value::take) {
                None | Some(Value::Null) => Value::Null,
                Some(v @ Value::Object(_)) => v,
                Some(_) => {
                    return Err(DecodeError::WrongType {
                        field: "attributes",
                        expected: "an object",
                    })
                }
            },
        };
        Ok(Event {
            event_id,
            customer_id,
            ts,
            source,
            name,
            attributes,
        })
    }
}

/// A parsed RFC 6901 JSON pointer (never the empty, whole-document pointer).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pointer {
    text: Box<str>,
    /// Unescaped reference tokens (`~1` → `/`, `~0` → `~`).
    tokens: Box<[Box<str>]>,
}

impl Pointer {
    fn parse(text: &str) -> Result<Pointer, &'static str> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must start with `/`");
        };
        let tokens = rest
            .split('/')
            .map(|raw| {
                let mut token = String::with_capacity(raw.len());
                let mut chars = raw.chars();
                while let Some(c) = chars.next() {
                    if c != '~' {
                        token.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => return Err("`~` must be followed by `0` or `1`"),
                    }
                }
                Ok(token.into_boxed_str())
            })
            .collect::<Result<_, _>>()?;
        Ok(Pointer {
            text: text.into(),
            tokens,
        })
    }

    fn resolve<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.tokens.iter().try_fold(root, |v, token| match v {
            Value::Object(map) => map.get(&**token),
            Value::Array(items) => items.get(array_index(token)?),
            _ => None,
        })
    }

    fn resolve_mut<'v>(&self, root: &'v mut Value) -> Option<&'v mut Value> {
        self.tokens.iter().try_fold(root, |v, token| match v {
            Value::Object(map) => map.get_mut(&**token),
            Value::Array(items) => items.get_mut(array_index(token)?),
            _ => None,
        })
    }
}

/// An RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if digits && (token == "0" || !token.starts_with('0')) {
        token.parse().ok()
    } else {
        None
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::shown;
    use journey_core::DecodeLimits;
    use serde_json::json;

    use crate::{Decoder, Format};

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn orders_mapping() -> Mapping {
        Mapping::new(&fields(&[
            ("customer_id", "/user/id"),
            ("event", "/action"),
            ("ts", "/at"),
            ("source", "/origin"),
            ("event_id", "/msg"),
            ("attributes", "/details"),
        ]))
        .unwrap()
    }

    fn decoder(mapping: Mapping) -> Decoder {
        Decoder::new(Format::Mapping(mapping), "orders", DecodeLimits::default())
    }

    #[test]
    fn builds_from_fields_and_reports_them_back() {
        let config = fields(&[
            ("customer_id", "/user/id"),
            ("event", "/action"),
            ("ts", "/at"),
            ("attributes", "/details"),
        ]);
        assert_eq!(Mapping::new(&config).unwrap().to_fields(), config);
    }

    #[test]
    fn names_every_bad_key() {
        let err = |pairs: &[(&str, &str)]| Mapping::new(&fields(pairs)).unwrap_err();
        let base = [("customer_id", "/c"), ("event", "/e"), ("ts", "/t")];
        assert_eq!(
            err(&[&base[..], &[("user", "/u")]].concat()),
            "unknown mapping key `user` (expected one of: customer_id, event, ts, source, \
             event_id, attributes)"
        );
        assert_eq!(
            err(&[("customer_id", "/c"), ("event", "/e"), ("ts", "timestamp")]),
            "invalid JSON pointer `timestamp` for mapping key `ts`: must start with `/`"
        );
        assert_eq!(
            err(&[&base[..], &[("attributes", "")]].concat()),
            "invalid JSON pointer `` for mapping key `attributes`: must start with `/`"
        );
        assert_eq!(
            err(&[&base[..], &[("source", "/a~2b")]].concat()),
            "invalid JSON pointer `/a~2b` for mapping key `source`: `~` must be followed by \
             `0` or `1`"
        );
        assert_eq!(
            err(&[&base[..], &[("source", "/a~")]].concat()),
            "invalid JSON pointer `/a~` for mapping key `source`: `~` must be followed by \
             `0` or `1`"
        );
        assert_eq!(
            err(&[("event", "/e")]),
            "missing required mapping key `customer_id`; missing required mapping key `ts`"
        );
        assert_eq!(
            err(&[("customer_id", "c"), ("event", "/e"), ("zz", "/z")]),
            "invalid JSON pointer `c` for mapping key `customer_id`: must start with `/`; \
             unknown mapping key `zz` (expected one of: customer_id, event, ts, source, \
             event_id, attributes); missing required mapping key `ts`"
        );
    }

    #[test]
    fn pointers_unescape_and_index_arrays() {
        let doc = json!({"a/b": {"m~n": 1}, "list": [10, 20], "": {"x": 2}, "01": 3});
        let get = |p: &str| Pointer::parse(p).unwrap().resolve(&doc).cloned();
        assert_eq!(get("/a~1b/m~0n"), Some(json!(1)));
        assert_eq!(get("/list/1"), Some(json!(20)));
        assert_eq!(get("/list/0"), Some(json!(10)));
        assert_eq!(get("/list/2"), None);
        assert_eq!(get("/list/01"), None);
        assert_eq!(get("/list/+1"), None);
        assert_eq!(get("/list/-"), None);
        assert_eq!(get("//x"), Some(json!(2)));
        assert_eq!(get("/01"), Some(json!(3)));
        assert_eq!(get("/a~1b/m~0n/deeper"), None);
        assert_eq!(Pointer::parse("/a~1b").unwrap().to_string(), "/a~1b");
    }

    #[test]
    fn decodes_the_spec_example_through_pointers() {
        let record = br#"{"msg": "e-81", "user": {"id": "c-42"}, "at": "2026-11-22T10:00:00.120Z",
            "origin": "web", "action": "page_view",
            "details": {"url": "/products/shoes", "utm_medium": "cpc", "persona": "bargain-hunter"}}"#;
        let dec = decoder(orders_mapping());
        let ev = dec.decode(record).unwrap();
        let canonical = br#"{"event_id": "e-81", "customer_id": "c-42", "ts": "2026-11-22T10:00:00.120Z",
            "source": "web", "event": "page_view",
            "attributes": {"url": "/products/shoes", "utm_medium": "cpc", "persona": "bargain-hunter"}}"#;
        let expected = journey_core::decode_canonical(canonical, "x", &DecodeLimits::default());
        assert_eq!(Ok(ev), expected);
    }

    #[test]
    fn defaults_and_lenient_identifiers() {
        let dec = decoder(orders_mapping());
        let ev = dec
            .decode(br#"{"user": {"id": 42}, "action": "buy", "at": 1795341600120, "msg": 7, "origin": null}"#)
            .unwrap();
        assert_eq!(ev.customer_id, "42");
        assert_eq!(ev.event_id.as_deref(), Some("7"));
        assert_eq!(ev.source, "orders");
        assert_eq!(ev.ts, 1_795_341_600_120);
        assert_eq!(ev.attributes, Value::Null);
        // Numbers that are no 64-bit integer lose their text as floats: refused, not rounded.
        for id in ["18446744073709551616", "1.5"] {
            let line =
                format!(r#"{{"user": {{"id": {id}}}, "action": "buy", "at": 1795341600120}}"#);
            let err = dec.decode(line.as_bytes()).unwrap_err();
            assert_eq!(err.reason(), "wrong_type", "{line}");
        }

        // Without an `attributes` pointer the whole record is the attributes.
        let bare = Mapping::new(&fields(&[
            ("customer_id", "/who/0"),
            ("event", "/what"),
            ("ts", "/when"),
        ]))
        .unwrap();
        let dec = decoder(bare);
        let record = br#"{"who": ["c-1", "c-2"], "what": "login", "when": "2026-11-22T10:00:00Z"}"#;
        let ev = dec.decode(record).unwrap();
        assert_eq!(ev.customer_id, "c-1");
        assert_eq!(ev.name, "login");
        assert_eq!(ev.source, "orders");
        assert_eq!(ev.event_id, None);
        assert_eq!(
            ev.attributes,
            json!({"who": ["c-1", "c-2"], "what": "login", "when": "2026-11-22T10:00:00Z"})
        );
    }

    #[test]
    fn every_error_names_the_canonical_field() {
        let dec = decoder(orders_mapping());
        let ok = json!({"user": {"id": "c"}, "action": "a", "at": 1795341600120_i64,
                        "msg": "m", "origin": "o", "details": {}});
        let with = |pointer: &str, value: Value| {
            let mut record = ok.clone();
            *record.pointer_mut(pointer).unwrap() = value;
            record.to_string()
        };
        let without = |key: &str| {
            let mut record = ok.clone();
            record.as_object_mut().unwrap().remove(key);
            record.to_string()
        };
        let cases = [
            (
                without("user"),
                "missing_field",
                "missing field `customer_id`",
            ),
            (
                with("/user", json!({"id": null})),
                "missing_field",
                "missing field `customer_id`",
            ),
            (
                with("/user/id", json!(true)),
                "wrong_type",
                "field `customer_id` must be a string or integer",
            ),
            (
                with("/user/id", json!("")),
                "customer_id_length",
                "`customer_id` must be 1 to 256 characters, got 0",
            ),
            (
                with("/user/id", json!("x".repeat(257))),
                "customer_id_length",
                "`customer_id` must be 1 to 256 characters, got 257",
            ),
            (without("action"), "missing_field", "missing field `event`"),
            (
                with("/action", json!(1)),
                "wrong_type",
                "field `event` must be a string",
            ),
            (
                with("/action", json!("")),
                "wrong_type",
                "field `event` must be a non-empty string",
            ),
            (without("at"), "missing_field", "missing field `ts`"),
            (
                with("/at", json!([])),
                "wrong_type",
                "field `ts` must be an RFC 3339 string or epoch milliseconds",
            ),
            (
                with("/at", json!("soon")),
                "bad_timestamp",
                "`ts` is not RFC 3339 or epoch milliseconds: `soon`",
            ),
            (
                with("/at", json!(5)),
                "timestamp_out_of_range",
                "`ts` 5 is outside the accepted range 2000-01-01 to 2100-01-01",
            ),
            (
                with("/origin", json!(3)),
                "wrong_type",
                "field `source` must be a string",
            ),
            (
                with("/msg", json!({})),
                "wrong_type",
                "field `event_id` must be a string or integer",
            ),
            (
                with("/details", json!("x")),
                "wrong_type",
                "field `attributes` must be an object",
            ),
            (
                "[1]".to_string(),
                "not_json",
                "record is not a JSON object: invalid type: sequence, expected a JSON object",
            ),
            (
                "{\"user\":".to_string(),
                "not_json",
                "record is not a JSON object: EOF while parsing a value",
            ),
        ];
        for (record, reason, message) in cases {
            let err = dec.decode(record.as_bytes()).unwrap_err();
            assert_eq!(shown(&err), (reason, message.to_string()), "{record}");
        }
        assert_eq!(
            dec.decode(b"{\"user\":\"\xff\"}").unwrap_err(),
            DecodeError::InvalidUtf8
        );
        let small = Decoder::new(
            Format::Mapping(orders_mapping()),
            "orders",
            DecodeLimits {
                max_record_bytes: 8,
                ..DecodeLimits::default()
            },
        );
        assert_eq!(
            small
                .decode(ok.to_string().as_bytes())
                .unwrap_err()
                .to_string(),
            format!(
                "record of {} bytes exceeds the limit of 8 bytes",
                ok.to_string().len()
            )
        );
    }
}
