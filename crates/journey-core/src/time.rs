//! Event-time helpers: milliseconds since the Unix epoch, durations written `"30m"`.

use std::fmt;

/// Milliseconds since 1970-01-01T00:00:00Z. Event time, never wall-clock time read here.
pub type Millis = i64;

pub const SECOND: Millis = 1_000;
pub const MINUTE: Millis = 60 * SECOND;
pub const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;

/// Earliest accepted event time: 2000-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: Millis = 946_684_800_000;
/// First rejected event time: 2100-01-01T00:00:00Z.
pub const MAX_EVENT_TIME: Millis = 4_102_444_800_000;

/// Floor `t` to a multiple of `step` (works for negative `t`).
#[inline]
pub fn floor_to(t: Millis, step: Millis) -> Millis {
    t.div_euclid(step) * step
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {why}")]
pub struct DurationError {
    pub input: String,
    pub why: &'static str,
}

/// Parse `"90s"`, `"30m"`, `"1h30m"`, `"7d"`, `"250ms"` into milliseconds.
pub fn parse_duration(input: &str) -> Result<Millis, DurationError> {
    let err = |why| DurationError {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let bytes = s.as_bytes();
    let mut total: Millis = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number, as in `30m`"));
        }
        let n: Millis = s[start..i].parse().map_err(|_| err("number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[ustart..i] {
            "ms" => 1,
            "s" => SECOND,
            "m" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            "w" => 7 * DAY,
            "" => return Err(err("missing unit (ms, s, m, h, d, w)")),
            _ => return Err(err("unknown unit (expected ms, s, m, h, d, w)")),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("too large"))?;
    }
    Ok(total)
}

/// Formats milliseconds the way [`parse_duration`] reads them.
#[derive(Debug, Clone, Copy)]
pub struct HumanDuration(pub Millis);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, name) in [
            (DAY, "d"),
            (HOUR, "h"),
            (MINUTE, "m"),
            (SECOND, "s"),
            (1, "ms"),
        ] {
            if ms >= unit {
                write!(f, "{}{}", ms / unit, name)?;
                ms %= unit;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30m"), Ok(30 * MINUTE));
        assert_eq!(parse_duration("1h30m"), Ok(90 * MINUTE));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("90d"), Ok(90 * DAY));
        assert_eq!(
            parse_duration("30").unwrap_err().to_string(),
            "invalid duration `30`: missing unit (ms, s, m, h, d, w)"
        );
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("3y").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for ms in [1, 999, 30 * MINUTE, 90 * MINUTE + 5 * SECOND, 3 * DAY] {
            assert_eq!(parse_duration(&HumanDuration(ms).to_string()), Ok(ms));
        }
    }

    #[test]
    fn floors_negative_times() {
        assert_eq!(floor_to(-1, MINUTE), -MINUTE);
        assert_eq!(floor_to(MINUTE + 5, MINUTE), MINUTE);
    }
}
