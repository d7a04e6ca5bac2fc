//! Query time ranges: RFC 3339, epoch milliseconds, or relative to now (`now-24h`).

use std::collections::HashMap;

use journey_core::event::parse_rfc3339;
use journey_core::time::{parse_duration, Millis, DAY, HOUR, MINUTE};

use crate::problem::Problem;

/// A time as given in a query parameter, from 2000 to 2100 (the range of event times).
pub fn parse_time(s: &str, now: Millis) -> Result<Millis, String> {
    let t = parse_any_time(s, now)?;
    journey_core::event::check_time(t)
        .map_err(|_| format!("`{}` is outside 2000-01-01 to 2100-01-01", s.trim()))
}

fn parse_any_time(s: &str, now: Millis) -> Result<Millis, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    // Saturating: a duration may be as long as `parse_duration` allows, and the result is
    // then refused as outside the range of event times.
    if let Some(rest) = s.strip_prefix("now-") {
        return parse_duration(rest)
            .map(|d| now.saturating_sub(d))
            .map_err(|e| e.to_string());
    }
    if let Some(rest) = s.strip_prefix("now+") {
        return parse_duration(rest)
            .map(|d| now.saturating_add(d))
            .map_err(|e| e.to_string());
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("`{s}` is too large for epoch milliseconds"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("`{s}` is not a time: use RFC 3339 (2026-11-22T10:00:00Z), epoch milliseconds or now-24h")
    })
}

/// `from` and `to` (default: the last 24 hours; `from` alone: from then until now).
///
/// A range whose `to` is not after its `from` (`from=now`, `from=now&to=now-1h`) is the empty
/// range at `from`: it is answered, with nothing in it, and the answer's `to` equals its
/// `from`. Every pair of valid times is thus a valid range, as the OpenAPI document allows.
pub fn range(q: &HashMap<String, String>, now: Millis) -> Result<(Millis, Millis), Problem> {
    let to = match q.get("to") {
        Some(v) => parse_time(v, now).map_err(|e| Problem::bad_parameter("to", e))?,
        None => now,
    };
    let from = match q.get("from") {
        Some(v) => parse_time(v, now).map_err(|e| Problem::bad_parameter("from", e))?,
        None => to - DAY,
    };
    Ok((from, to.max(from)))
}

/// Most points a time series has.
pub const MAX_POINTS: Millis = 10_000;

/// The step of a time series: given, or chosen so that the range has at most ~300 points;
/// enlarged to a multiple of itself when the range would have more than [`MAX_POINTS`].
pub fn step(q: &HashMap<String, String>, from: Millis, to: Millis) -> Result<Millis, Problem> {
    let step = match q.get("step") {
        Some(v) => parse_duration(v).map_err(|e| Problem::bad_parameter("step", e.to_string()))?,
        None => {
            let span = to - from;
            [MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, 6 * HOUR, DAY]
                .into_iter()
                .find(|s| span / s <= 300)
                .unwrap_or(DAY)
        }
    };
    if step < MINUTE || step % MINUTE != 0 {
        return Err(Problem::bad_parameter(
            "step",
            "`step` must be a whole number of minutes, at least 1m",
        ));
    }
    // More than MAX_POINTS points: the smallest multiple of the step that gives at most
    // MAX_POINTS (the answer's `step_ms` says which step was used).
    let per = step.saturating_mul(MAX_POINTS) as u64;
    let factor = ((to - from).max(0) as u64).div_ceil(per).max(1);
    // At most the span over MAX_POINTS, rounded up to a step: within the span's range.
    Ok(step.saturating_mul(factor as Millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        let now = 1_795_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("now-24h", now), Ok(now - DAY));
        assert_eq!(parse_time("now+1m", now), Ok(now + MINUTE));
        assert_eq!(parse_time("1795000000000", now), Ok(now));
        assert_eq!(
            parse_time("2026-11-20T00:00:00Z", now),
            Ok(1_795_132_800_000)
        );
        assert!(parse_time("yesterday", now)
            .unwrap_err()
            .contains("`yesterday` is not a time"));
        assert!(parse_time("now-5x", now).is_err());
        // Outside the range of event times.
        assert!(parse_time("0", now)
            .unwrap_err()
            .contains("outside 2000-01-01"));
        assert!(parse_time("2100-01-01T00:00:00Z", now).is_err());
        // The longest durations `parse_duration` allows: refused, not an overflow.
        for s in [
            "now+106751991167d",
            "now-106751991167d",
            "now+9223372036854775807ms",
        ] {
            assert!(
                parse_time(s, now)
                    .unwrap_err()
                    .contains("outside 2000-01-01"),
                "{s}"
            );
        }
    }

    /// The longest step `parse_duration` allows: one point, not an overflow.
    #[test]
    fn a_step_longer_than_any_range_is_one_point() {
        let q = |step: &str| HashMap::from([("step".to_string(), step.to_string())]);
        let (from, to) = (1_795_000_000_000, 1_795_000_000_000 + DAY);
        for s in ["15372286728091m", "106751991167d"] {
            let got = step(&q(s), from, to).unwrap();
            assert!(got >= DAY, "{s}: {got}");
        }
        assert_eq!(step(&q("1m"), from, to).unwrap(), MINUTE);
        // 100 years at 1m: enlarged to a multiple of the minute with at most MAX_POINTS points.
        let century = 100 * 365 * DAY;
        let got = step(&q("1m"), from, from + century).unwrap();
        assert_eq!(got % MINUTE, 0);
        assert!(century / got <= MAX_POINTS, "{got}");
    }

    #[test]
    fn defaults_to_the_last_day_and_inverted_ranges_are_empty() {
        let now = 1_795_000_000_000;
        assert_eq!(range(&HashMap::new(), now).unwrap(), (now - DAY, now));
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // `from` alone: until now; `from=now` is the empty range at now.
        assert_eq!(
            range(&q(&[("from", "now-1h")]), now).unwrap(),
            (now - HOUR, now)
        );
        assert_eq!(range(&q(&[("from", "now")]), now).unwrap(), (now, now));
        // `to` before `from`: the empty range at `from`, not an error.
        assert_eq!(
            range(&q(&[("from", "now"), ("to", "now-1h")]), now).unwrap(),
            (now, now)
        );
        assert_eq!(
            range(&q(&[("from", "now+1m")]), now).unwrap(),
            (now + MINUTE, now + MINUTE)
        );
        assert_eq!(
            range(&q(&[("from", "x")]), now).unwrap_err().parameter,
            Some("from")
        );
    }
}
