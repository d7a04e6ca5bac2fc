//! Dead letters: records that could not become events, kept with why and where they came from.
//!
//! Sources hand each rejected record to a [`DeadLetters`] handle; a writer elsewhere (the
//! binary's file or Kafka sink) drains the channel. The channel is bounded and sending waits
//! when it is full, so a slow sink slows ingest rather than losing records.

use base64::Engine as _;
use serde_json::{json, Value};

use journey_core::time::Millis;

/// Where a rejected record was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// The record's 1-based line (NDJSON) or element (JSON array) in one request body.
    Http {
        line: usize,
    },
    /// A whole request body that could not be split into records.
    HttpBody,
    File {
        path: String,
        line: u64,
    },
    /// Refused by the engine after decoding; the record is the event in canonical form.
    Engine,
}

/// One rejected record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// When it was rejected, epoch milliseconds.
    pub at: Millis,
    /// Stable reason label, the same as the `reason` label of the rejection counter.
    pub reason: &'static str,
    pub error: String,
    pub source: String,
    pub position: Position,
    /// The original bytes.
    pub record: Vec<u8>,
}

impl DeadLetter {
    /// The position as JSON, e.g. `{"kafka": {"topic": "web", "partition": 0, "offset": 7}}`.
    pub fn position_json(&self) -> Value {
        match &self.position {
            Position::Kafka {
                topic,
                partition,
                offset,
            } => json!({"kafka": {"topic": topic, "partition": partition, "offset": offset}}),
            Position::Http { line } => json!({"http": {"line": line}}),
            Position::HttpBody => json!({"http": {"body": true}}),
            Position::File { path, line } => json!({"file": {"path": path, "line": line}}),
            Position::Engine => json!({"engine": {}}),
        }
    }

    /// One NDJSON line (with its newline). The record is a string when it is UTF-8, and
    /// `record_base64` otherwise, so every byte survives.
    pub fn to_ndjson(&self) -> Vec<u8> {
        let at = chrono::DateTime::from_timestamp_millis(self.at).map_or_else(
            || self.at.to_string(),
            |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        let mut v = json!({
            "at": at,
            "reason": self.reason,
            "error": self.error,
            "source": self.source,
            "position": self.position_json(),
        });
        match std::str::from_utf8(&self.record) {
            Ok(s) => v["record"] = Value::String(s.to_string()),
            Err(_) => {
                v["record_base64"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&self.record))
            }
        }
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

/// A cloneable handle that sources send dead letters through; it may be disabled.
#[derive(Debug, Clone, Default)]
pub struct DeadLetters {
    tx: Option<flume::Sender<DeadLetter>>,
}

impl DeadLetters {
    /// Dead letters are counted by the sources but kept nowhere.
    pub fn disabled() -> DeadLetters {
        DeadLetters { tx: None }
    }

    /// A handle and the receiver a sink drains.
    pub fn channel(capacity: usize) -> (DeadLetters, flume::Receiver<DeadLetter>) {
        let (tx, rx) = flume::bounded(capacity.max(1));
        (DeadLetters { tx: Some(tx) }, rx)
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Sends, waiting while the sink is behind. Returns false if the sink has gone.
    pub fn send_blocking(&self, dl: DeadLetter) -> bool {
        match &self.tx {
            Some(tx) => tx.send(dl).is_ok(),
            None => true,
        }
    }

    /// [`DeadLetters::send_blocking`] for async callers.
    pub async fn send(&self, dl: DeadLetter) -> bool {
        match &self.tx {
            Some(tx) => tx.send_async(dl).await.is_ok(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(record: &[u8]) -> DeadLetter {
        DeadLetter {
            at: 1_795_000_000_000,
            reason: "not_json",
            error: "record is not a JSON object: expected value".into(),
            source: "web".into(),
            position: Position::Kafka {
                topic: "web".into(),
                partition: 2,
                offset: 17,
            },
            record: record.to_vec(),
        }
    }

    #[test]
    fn lines_keep_the_record_and_where_it_came_from() {
        let line = letter(b"{oops").to_ndjson();
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["reason"], "not_json");
        assert_eq!(v["record"], "{oops");
        assert_eq!(v["position"]["kafka"]["offset"], 17);
        assert_eq!(v["at"], "2026-11-18T11:06:40.000Z");
    }

    #[test]
    fn bytes_that_are_not_utf8_survive_as_base64() {
        let v: Value = serde_json::from_slice(&letter(&[0xff, 0xfe, b'a']).to_ndjson()).unwrap();
        assert!(v.get("record").is_none());
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["record_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, vec![0xff, 0xfe, b'a']);
    }
}
