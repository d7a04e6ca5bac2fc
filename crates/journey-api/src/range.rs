//! Query time ranges: RFC 3339, epoch milliseconds, or relative to now (`now-24h`).

use std::collections::HashMap;

use journey_core::event::parse_rfc3339;
use journey_core::time::{parse_duration, Millis, DAY, HOUR, MINUTE};

use crate::problem::Problem;

/// A time as given in a query parameter.
pub fn parse_time(s: &str, now: Millis) -> Result<Millis, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rest) = s.strip_prefix("now-") {
        return parse_duration(rest)
            .map(|d| now - d)
            .map_err(|e| e.to_string());
    }
    if let Some(rest) = s.strip_prefix("now+") {
        return parse_duration(rest)
            .map(|d| now + d)
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

/// `from` and `to` (default: the last 24 hours).
pub fn range(q: &HashMap<String, String>, now: Millis) -> Result<(Millis, Millis), Problem> {
    let to = match q.get("to") {
        Some(v) => parse_time(v, now).map_err(|e| Problem::bad_parameter("to", e))?,
        None => now,
    };
    let from = match q.get("from") {
        Some(v) => parse_time(v, now).map_err(|e| Problem::bad_parameter("from", e))?,
        None => to - DAY,
    };
    if from >= to {
        return Err(Problem::bad_parameter("from", "`from` must be before `to`"));
    }
    Ok((from, to))
}

/// The step of a time series: given, or chosen so that the range has at most ~300 points.
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
    if (to - from) / step > 10_000 {
        return Err(Problem::bad_parameter(
            "step",
            "too many points: use a larger `step` or a shorter range",
        ));
    }
    Ok(step)
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
    }

    #[test]
    fn defaults_to_the_last_day_and_rejects_inverted_ranges() {
        let now = 1_795_000_000_000;
        assert_eq!(range(&HashMap::new(), now).unwrap(), (now - DAY, now));
        let q: HashMap<String, String> = [
            ("from".to_string(), "now".to_string()),
            ("to".to_string(), "now-1h".to_string()),
        ]
        .into();
        assert_eq!(range(&q, now).unwrap_err().parameter, Some("from"));
    }
}
