//! Cutting input into records: HTTP bodies ([`split_body`]) and NDJSON streams
//! ([`for_each_line`]).
//!
//! Splitting only finds record boundaries; it does not decide whether a record is a valid
//! event. A line of garbage is still a record, so that the decoder rejects it with a reason
//! and the caller dead-letters it with its position instead of losing it.

use std::io::{self, BufRead};

use journey_core::DecodeError;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

/// One record of a body: its bytes and where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// 1-based: the line number for NDJSON (and a single object: the line it starts on),
    /// the element number for a JSON array.
    pub position: usize,
    /// The record exactly as it appears in the body (array elements without the separating
    /// commas and whitespace, NDJSON lines without `\n` and a trailing `\r`).
    pub bytes: &'a [u8],
}

/// The records of one body, in body order.
pub type Records<'a> = Vec<Record<'a>>;

/// Splits an HTTP ingest body into records, borrowing from `body`.
///
/// The shape is chosen by the first non-whitespace byte:
/// - `[`: a JSON array; each element is a record (elements that are not objects are kept and
///   fail later, in the decoder). A body that is not a well-formed array fails as a whole
///   with `not_json` (or `invalid_utf8`), since its record boundaries are unknown.
/// - anything else: NDJSON, one record per line; blank lines are skipped and a trailing `\r`
///   is trimmed. A body that is exactly one JSON object, even pretty-printed over many
///   lines, is one record.
///
/// A UTF-8 byte-order mark at the start of the body is skipped (Windows tools write one);
/// positions are unchanged by it. An empty or all-whitespace body has no records.
pub fn split_body(body: &[u8]) -> Result<Records<'_>, DecodeError> {
    let body = strip_bom(body);
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Ok(Vec::new());
    };
    match body[start] {
        b'[' => split_array(body),
        b'{' if memchr::memchr(b'\n', trim_end(&body[start..])).is_some()
            && is_one_value(&body[start..]) =>
        {
            let line = 1 + memchr::memchr_iter(b'\n', &body[..start]).count();
            Ok(vec![Record {
                position: line,
                bytes: trim_end(&body[start..]),
            }])
        }
        _ => Ok(split_lines(body)),
    }
}

fn split_array(body: &[u8]) -> Result<Records<'_>, DecodeError> {
    let text = simdutf8::basic::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
    let items: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| Record {
            position: i + 1,
            bytes: raw.get().as_bytes(),
        })
        .collect())
}

fn split_lines(body: &[u8]) -> Records<'_> {
    let mut records = Vec::new();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (i, end) in ends.enumerate() {
        let line = trim_line(&body[start..end]);
        if !is_blank(line) {
            records.push(Record {
                position: i + 1,
                bytes: line,
            });
        }
        start = end + 1;
    }
    records
}

/// Whether `bytes` is exactly one JSON value, surrounded by nothing but whitespace.
fn is_one_value(bytes: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    IgnoredAny::deserialize(&mut de).is_ok() && de.end().is_ok()
}

/// The UTF-8 byte-order mark, which some producers (Windows editors, PowerShell, .NET
/// `Encoding.UTF8`) write at the start of a file or message.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` without a leading UTF-8 byte-order mark.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// One record without its line ending: a trailing `\n`, then a trailing `\r` (a record that
/// a producer wrote with `\r\n`, e.g. one Kafka message per line of a Windows file).
pub fn trim_line_ending(record: &[u8]) -> &[u8] {
    trim_line(record.strip_suffix(b"\n").unwrap_or(record))
}

fn trim_line(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Whether a line holds only ASCII whitespace: NDJSON readers skip such lines.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The record of one line of an NDJSON input (without its `\n`), or `None` for a blank line:
/// a trailing `\r` trimmed, and a byte-order mark dropped from the input's first line. How
/// [`for_each_line`] and [`for_each_line_of_block`] both cut.
fn record_of(line: &[u8], first_of_input: bool) -> Option<&[u8]> {
    let line = trim_line(line);
    let line = if first_of_input {
        strip_bom(line)
    } else {
        line
    };
    (!is_blank(line)).then_some(line)
}

/// Largest line buffer kept between lines; a longer line's buffer is released after use.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

/// Calls `f` with each record of `block`, a run of whole lines of an input (only where the
/// input ends may the last one lack its `\n`), as [`for_each_line`] gives the same lines:
/// `\r\n` trimmed to the record, blank lines skipped, and a byte-order mark dropped from the
/// block's first line when the block `starts_input`. Returns how many records `f` got. For
/// readers that cut an input into blocks at line ends and hand them to other threads.
pub fn for_each_line_of_block(block: &[u8], starts_input: bool, mut f: impl FnMut(&[u8])) -> u64 {
    let mut records = 0;
    let mut start = 0;
    let mut emit = |line: &[u8], first: bool| {
        if let Some(record) = record_of(line, first && starts_input) {
            records += 1;
            f(record);
        }
    };
    for end in memchr::memchr_iter(b'\n', block) {
        emit(&block[start..end], start == 0);
        start = end + 1;
    }
    if start < block.len() {
        emit(&block[start..], start == 0);
    }
    records
}

/// Calls `f(line_number, line)` for every non-blank line of an NDJSON stream and returns the
/// number of lines passed to `f`.
///
/// Line numbers are 1-based and count blank lines too; `line` is without its `\n` and a
/// trailing `\r`, and the first line without a UTF-8 byte-order mark. Lines that lie inside the reader's buffer are passed without copying; only
/// lines that straddle a buffer refill go through one reused buffer. The last line need
/// not end with `\n`. Stops at the first I/O error (other than `Interrupted`, which is
/// retried).
pub fn for_each_line(mut reader: impl BufRead, mut f: impl FnMut(u64, &[u8])) -> io::Result<u64> {
    let mut pending: Vec<u8> = Vec::new();
    let mut line_no = 0u64;
    let mut records = 0u64;
    let mut emit = |pending: &[u8]| {
        line_no += 1;
        // A byte-order mark can only start the stream, i.e. the first line.
        if let Some(record) = record_of(pending, line_no == 1) {
            records += 1;
            f(line_no, record);
        }
    };
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            if !pending.is_empty() {
                emit(&pending);
            }
            return Ok(records);
        }
        let used = match memchr::memchr(b'\n', available) {
            Some(i) if pending.is_empty() => {
                emit(&available[..i]);
                i + 1
            }
            Some(i) => {
                pending.extend_from_slice(&available[..i]);
                emit(&pending);
                pending.clear();
                if pending.capacity() > KEEP_BUFFER_BYTES {
                    pending = Vec::new();
                }
                i + 1
            }
            None => {
                pending.extend_from_slice(available);
                available.len()
            }
        };
        reader.consume(used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor, Read};

    fn records(body: &str) -> Vec<(usize, &str)> {
        split_body(body.as_bytes())
            .unwrap()
            .into_iter()
            .map(|r| (r.position, std::str::from_utf8(r.bytes).unwrap()))
            .collect()
    }

    #[test]
    fn single_object() {
        assert_eq!(records(r#"{"a":1}"#), [(1, r#"{"a":1}"#)]);
        assert_eq!(records("  {\"a\":1}\r\n\n"), [(1, "  {\"a\":1}")]);
    }

    #[test]
    fn pretty_printed_object_is_one_record() {
        let body = "\n\n{\n  \"customer_id\": \"c-42\",\n  \"event\": \"x\"\n}\n\n";
        assert_eq!(
            records(body),
            [(3, "{\n  \"customer_id\": \"c-42\",\n  \"event\": \"x\"\n}")]
        );
        let crlf = "{\r\n  \"a\": [\r\n    1\r\n  ]\r\n}\r\n";
        assert_eq!(records(crlf), [(1, "{\r\n  \"a\": [\r\n    1\r\n  ]\r\n}")]);
    }

    #[test]
    fn array_elements_borrow_the_body() {
        let body = " [ {\"a\":1} ,\n{\"b\":[2, 3]}, 4, \"x\" ] ";
        let split = split_body(body.as_bytes()).unwrap();
        assert_eq!(
            split
                .iter()
                .map(|r| (r.position, std::str::from_utf8(r.bytes).unwrap()))
                .collect::<Vec<_>>(),
            [
                (1, "{\"a\":1}"),
                (2, "{\"b\":[2, 3]}"),
                (3, "4"),
                (4, "\"x\"")
            ]
        );
        let range = body.as_bytes().as_ptr_range();
        assert!(split.iter().all(|r| range.contains(&r.bytes.as_ptr())));
        assert_eq!(records("[]"), []);
    }

    #[test]
    fn ndjson_skips_blank_lines_and_trims_carriage_returns() {
        let body = "{\"a\":1}\r\n\n   \n{\"a\":2}\n\t\r\n{\"a\":3}";
        assert_eq!(
            records(body),
            [(1, "{\"a\":1}"), (4, "{\"a\":2}"), (6, "{\"a\":3}")]
        );
        assert_eq!(
            records("{\"a\":1}\n{\"a\":2}\n"),
            [(1, "{\"a\":1}"), (2, "{\"a\":2}")]
        );
    }

    #[test]
    fn garbage_lines_are_records_for_the_decoder_to_reject() {
        assert_eq!(records("hello\nworld\n"), [(1, "hello"), (2, "world")]);
        assert_eq!(
            records("{\"a\":1}\n{broken\n{\"a\":3}"),
            [(1, "{\"a\":1}"), (2, "{broken"), (3, "{\"a\":3}")]
        );
        // A multi-line body that is not one object falls back to lines.
        assert_eq!(records("{\n\"a\": }"), [(1, "{"), (2, "\"a\": }")]);
        let split = split_body(b"{\"a\":\"\xff\"}\n{\"a\":2}").unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(split[0].bytes, b"{\"a\":\"\xff\"}");
    }

    #[test]
    fn empty_bodies_have_no_records() {
        assert_eq!(records(""), []);
        assert_eq!(records(" \r\n\t\n"), []);
    }

    #[test]
    fn broken_arrays_fail_as_a_whole() {
        let err = split_body(b"[{\"a\":1}, {\"a\":").unwrap_err();
        assert_eq!(
            crate::decode::shown(&err),
            (
                "not_json",
                "record is not a JSON object: EOF while parsing a value".to_string()
            )
        );
        assert_eq!(split_body(b"[1,]").unwrap_err().reason(), "not_json");
        assert_eq!(split_body(b"[1] [2]").unwrap_err().reason(), "not_json");
        assert_eq!(
            split_body(b"[\"\xff\"]").unwrap_err(),
            DecodeError::InvalidUtf8
        );
    }

    fn lines(input: &str, capacity: usize) -> (u64, Vec<(u64, String)>) {
        let mut seen = Vec::new();
        let reader = BufReader::with_capacity(capacity, input.as_bytes());
        let n = for_each_line(reader, |no, line| {
            seen.push((no, String::from_utf8(line.to_vec()).unwrap()))
        })
        .unwrap();
        (n, seen)
    }

    /// A byte-order mark and `\r\n` line endings give the records of the plain body, in
    /// every shape of body and for every buffer size of a file (the mark may straddle a
    /// buffer refill); one record (a Kafka message) loses the same bytes.
    #[test]
    fn bom_and_crlf_give_the_records_of_the_plain_input() {
        let ndjson = "{\"a\":1}\n\n{\"a\":2}\n";
        let array = "[{\"a\":1},\n{\"a\":2}]\n";
        let pretty = "{\n  \"a\": 1\n}\n";
        for plain in [ndjson, array, pretty] {
            let windows = format!("\u{FEFF}{}", plain.replace('\n', "\r\n"));
            let expected: Vec<(usize, String)> = records(plain)
                .into_iter()
                .map(|(p, r)| (p, r.to_string()))
                .collect();
            let got: Vec<(usize, String)> = records(&windows)
                .into_iter()
                .map(|(p, r)| (p, r.replace("\r\n", "\n")))
                .collect();
            assert_eq!(got, expected, "{windows:?}");
            assert!(
                !records(&windows)[0].1.starts_with('\u{FEFF}'),
                "{windows:?}"
            );
        }
        let windows = format!("\u{FEFF}{}", ndjson.replace('\n', "\r\n"));
        for capacity in [1, 2, 3, 4, 5, 64] {
            assert_eq!(
                lines(&windows, capacity),
                lines(ndjson, capacity),
                "{capacity}"
            );
        }
        // Only the first line may carry the mark: later ones keep it (and fail to decode).
        let (_, later) = lines("{}\n\u{FEFF}{}\n", 64);
        assert_eq!(later[1].1, "\u{FEFF}{}");
        assert_eq!(trim_line_ending(b"{}\r\n"), b"{}");
        assert_eq!(trim_line_ending(b"{}\n"), b"{}");
        assert_eq!(trim_line_ending(b"{}"), b"{}");
        assert_eq!(strip_bom(b"\xEF\xBB\xBF{}"), b"{}");
    }

    #[test]
    fn for_each_line_numbers_lines_and_skips_blanks() {
        let input = "{\"a\":1}\r\n\n  \n{\"a\":22}\n{\"a\":333}";
        let expected = vec![
            (1, "{\"a\":1}".to_string()),
            (4, "{\"a\":22}".to_string()),
            (5, "{\"a\":333}".to_string()),
        ];
        // Tiny buffers make lines straddle refills; large ones hold the whole input.
        for capacity in [1, 2, 3, 5, 8, 64, 8192] {
            assert_eq!(lines(input, capacity), (3, expected.clone()), "{capacity}");
        }
        assert_eq!(lines("", 16), (0, vec![]));
        assert_eq!(lines("\n\r\n", 16), (0, vec![]));
        assert_eq!(lines("x\n", 16), (1, vec![(1, "x".to_string())]));
    }

    #[test]
    fn for_each_line_releases_a_huge_line_buffer() {
        let huge = "x".repeat(KEEP_BUFFER_BYTES + 10);
        let input = format!("{huge}\nsmall\n");
        let mut lens = Vec::new();
        let n = for_each_line(BufReader::with_capacity(1024, input.as_bytes()), |no, l| {
            lens.push((no, l.len()))
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(lens, [(1, KEEP_BUFFER_BYTES + 10), (2, 5)]);
    }

    /// Yields `Interrupted` once, then one chunk per read, then fails.
    struct Flaky {
        interrupted: bool,
        chunks: Vec<&'static [u8]>,
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.chunks.is_empty() {
                return Err(io::Error::other("disk on fire"));
            }
            let chunk = self.chunks.remove(0);
            buf[..chunk.len()].copy_from_slice(chunk);
            Ok(chunk.len())
        }
    }

    /// A block gives the records `for_each_line` gives for the same bytes, cut anywhere at
    /// a line end.
    #[test]
    fn a_block_gives_the_lines_for_each_line_gives() {
        let input: &[u8] =
            b"\xEF\xBB\xBF{\"a\":1}\r\n\n  \t\n{\"b\":2}\n\xEF\xBB\xBF{\"c\":3}\r\n{\"d\":4}";
        let mut want = Vec::new();
        for_each_line(input, |_, l| want.push(l.to_vec())).unwrap();
        assert_eq!(want.len(), 4);
        let ends: Vec<usize> = memchr::memchr_iter(b'\n', input).map(|i| i + 1).collect();
        for cut in ends {
            let mut got = Vec::new();
            let n = for_each_line_of_block(&input[..cut], true, |l| got.push(l.to_vec()))
                + for_each_line_of_block(&input[cut..], false, |l| got.push(l.to_vec()));
            assert_eq!((n as usize, &got), (want.len(), &want), "cut at {cut}");
        }
        let mut got = Vec::new();
        for_each_line_of_block(input, false, |l| got.push(l.to_vec()));
        assert!(
            got[0].starts_with(BOM),
            "a block that does not start the input keeps it"
        );
    }

    #[test]
    fn for_each_line_retries_interrupts_and_reports_errors() {
        let reader = Flaky {
            interrupted: false,
            chunks: vec![b"{\"a\"", b":1}\n{\"b\":2}\n"],
        };
        let mut seen = Vec::new();
        let err = for_each_line(BufReader::new(reader), |no, line| {
            seen.push((no, line.to_vec()))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(
            seen,
            [(1, b"{\"a\":1}".to_vec()), (2, b"{\"b\":2}".to_vec())]
        );
    }

    #[test]
    fn for_each_line_from_a_cursor() {
        let mut count = 0;
        let n = for_each_line(Cursor::new(b"a\nb\n\nc"), |_, _| count += 1).unwrap();
        assert_eq!((n, count), (3, 3));
    }
}
