//! The wire formats a source can be configured with.

use std::collections::BTreeMap;
use std::fmt;

use crate::Mapping;

/// How the records of one source are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// journeyd's own event: `customer_id`, `event`, `ts`, `source`, `event_id`, `attributes`.
    Canonical,
    /// Segment / RudderStack `track`, `page`, `screen` and `identify` calls.
    Segment,
    /// CloudEvents 1.0, structured JSON mode.
    CloudEvents,
    /// Any JSON object whose canonical fields are found by JSON pointers.
    Mapping(Mapping),
}

impl Format {
    /// The configuration names, in the order error messages list them.
    pub const NAMES: [&'static str; 4] = ["canonical", "segment", "cloudevents", "mapping"];

    /// Reads a format from configuration: its name and, for `mapping` only, the field
    /// mapping (canonical field → JSON pointer). An empty mapping counts as none.
    pub fn parse(name: &str, mapping: Option<&BTreeMap<String, String>>) -> Result<Format, String> {
        let mapping = mapping.filter(|m| !m.is_empty());
        let format = match name {
            "canonical" => Format::Canonical,
            "segment" => Format::Segment,
            "cloudevents" => Format::CloudEvents,
            "mapping" => {
                let fields = mapping.ok_or_else(|| {
                    "format `mapping` needs a field mapping with at least the keys customer_id, \
                     event and ts"
                        .to_string()
                })?;
                return Mapping::new(fields).map(Format::Mapping);
            }
            other => {
                return Err(format!(
                    "unknown format `{other}` (expected one of: {})",
                    Self::NAMES.join(", ")
                ))
            }
        };
        match mapping {
            Some(_) => Err(format!(
                "a field mapping is only used by format `mapping`, not by format `{name}`"
            )),
            None => Ok(format),
        }
    }

    /// The configuration name of this format.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Canonical => "canonical",
            Format::Segment => "segment",
            Format::CloudEvents => "cloudevents",
            Format::Mapping(_) => "mapping",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_name_and_names_round_trip() {
        let fields = map(&[("customer_id", "/u"), ("event", "/e"), ("ts", "/t")]);
        for name in Format::NAMES {
            let mapping = (name == "mapping").then_some(&fields);
            let format = Format::parse(name, mapping).unwrap();
            assert_eq!(format.name(), name);
            assert_eq!(format.to_string(), name);
        }
        assert_eq!(Format::parse("segment", None), Ok(Format::Segment));
        assert_eq!(
            Format::parse("mapping", Some(&fields)),
            Ok(Format::Mapping(Mapping::new(&fields).unwrap()))
        );
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        assert_eq!(
            Format::parse("avro", None).unwrap_err(),
            "unknown format `avro` (expected one of: canonical, segment, cloudevents, mapping)"
        );
        assert_eq!(
            Format::parse("Segment", None).unwrap_err(),
            "unknown format `Segment` (expected one of: canonical, segment, cloudevents, mapping)"
        );
        assert_eq!(
            Format::parse("", None).unwrap_err(),
            "unknown format `` (expected one of: canonical, segment, cloudevents, mapping)"
        );
    }

    #[test]
    fn mapping_is_required_by_mapping_and_refused_elsewhere() {
        let expected = "format `mapping` needs a field mapping with at least the keys \
                        customer_id, event and ts";
        assert_eq!(Format::parse("mapping", None).unwrap_err(), expected);
        assert_eq!(
            Format::parse("mapping", Some(&BTreeMap::new())).unwrap_err(),
            expected
        );
        let fields = map(&[("customer_id", "/u"), ("event", "/e"), ("ts", "/t")]);
        assert_eq!(
            Format::parse("segment", Some(&fields)).unwrap_err(),
            "a field mapping is only used by format `mapping`, not by format `segment`"
        );
        assert_eq!(
            Format::parse("canonical", Some(&BTreeMap::new())),
            Ok(Format::Canonical)
        );
    }

    #[test]
    fn mapping_errors_come_through() {
        let fields = map(&[("customer_id", "u"), ("event", "/e"), ("ts", "/t")]);
        assert_eq!(
            Format::parse("mapping", Some(&fields)).unwrap_err(),
            "invalid JSON pointer `u` for mapping key `customer_id`: must start with `/`"
        );
    }
}
