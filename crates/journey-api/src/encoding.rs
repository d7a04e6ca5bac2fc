//! Request bodies as producers send them: `Content-Encoding` (RFC 9110 §8.4) and the size limit.
//!
//! SDKs and collectors compress their batches (Segment's and RudderStack's SDKs send gzip). Every
//! ingest endpoint reads its body through [`read_body`]: `identity`, `gzip` (`x-gzip`),
//! `deflate` (zlib, and raw deflate as some clients send it) and `br` are decoded, a list of
//! codings is undone from the last applied to the first, and anything else is refused whole with
//! 415 before a byte is decoded, never split into "lines" of compressed bytes. Both the bytes on
//! the wire and the decoded bytes are limited by `http.max_body_bytes`, so a small compressed
//! body that expands without bound (a zip bomb) is refused with 413 after reading at most that
//! many decoded bytes, and nothing of it is applied.

use std::io::Read;

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};

use crate::Problem;

/// A content coding journeyd decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No coding.
    Identity,
    /// RFC 1952 gzip (also `x-gzip`).
    Gzip,
    /// RFC 1950 zlib; raw RFC 1951 deflate is accepted too.
    Deflate,
    /// RFC 7932 Brotli.
    Brotli,
}

/// The codings journeyd accepts, as listed in a 415 answer's `Accept-Encoding`.
pub const ACCEPTED: &str = "gzip, deflate, br";

impl Coding {
    /// One token of a `Content-Encoding` list (case-insensitive).
    pub fn parse(token: &str) -> Option<Coding> {
        match token.trim().to_ascii_lowercase().as_str() {
            "identity" | "" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            _ => None,
        }
    }
}

/// The codings of `headers`, in the order they were applied; 415 naming the first unknown one.
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, Problem> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| unsupported("(not ASCII)"))?;
        for token in text.split(',') {
            match Coding::parse(token) {
                Some(Coding::Identity) => {}
                Some(c) => out.push(c),
                None => return Err(unsupported(token.trim())),
            }
        }
    }
    Ok(out)
}

fn unsupported(coding: &str) -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("content coding `{coding}` is not supported (supported: {ACCEPTED}, identity)"),
    )
}

fn too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body exceeds {limit} bytes; send smaller batches"),
    )
}

/// Reads a request body of at most `limit` bytes on the wire and decoded: 415 for an unknown
/// coding, 413 over the limit (at once when `Content-Length` says so, before a client waiting
/// for `100 Continue` sends anything), 400 for a body that cannot be read (a malformed chunk)
/// or bytes that are not what the coding says.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let codings = codings(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let raw = to_bytes(body, limit).await.map_err(|e| {
        if over_limit(&e) {
            too_large(limit)
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        }
    })?;
    if codings.is_empty() {
        return Ok(raw);
    }
    // Decompressing up to 10 MiB takes milliseconds: off the async workers.
    tokio::task::spawn_blocking(move || decode_all(&codings, raw, limit))
        .await
        .map_err(|_| Problem::internal("the body decoder stopped"))?
}

/// Whether reading a body stopped at its size limit, rather than on a broken body.
fn over_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Undoes `codings` (in the order they were applied) on `raw`, at most `limit` decoded bytes.
pub fn decode_all(codings: &[Coding], raw: Bytes, limit: usize) -> Result<Bytes, Problem> {
    let mut bytes = raw;
    for &coding in codings.iter().rev() {
        bytes = decode_one(coding, &bytes, limit)?;
    }
    Ok(bytes)
}

fn decode_one(coding: Coding, raw: &[u8], limit: usize) -> Result<Bytes, Problem> {
    let result = match coding {
        Coding::Identity => return Ok(Bytes::copy_from_slice(raw)),
        Coding::Gzip => read_limited(flate2::read::MultiGzDecoder::new(raw), limit),
        Coding::Deflate => {
            // RFC 9110 says zlib; some clients send raw deflate. A zlib stream starts with a
            // header whose first two bytes are a multiple of 31 (RFC 1950 §2.2).
            let zlib = raw.len() >= 2
                && raw[0] & 0x0f == 8
                && (u16::from(raw[0]) << 8 | u16::from(raw[1])) % 31 == 0;
            if zlib {
                read_limited(flate2::read::ZlibDecoder::new(raw), limit)
            } else {
                read_limited(flate2::read::DeflateDecoder::new(raw), limit)
            }
        }
        Coding::Brotli => read_limited(brotli_decompressor::Decompressor::new(raw, 4096), limit),
    };
    match result {
        Ok(Some(bytes)) => Ok(Bytes::from(bytes)),
        Ok(None) => Err(too_large(limit)),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid {}: {e}", name(coding)),
        )),
    }
}

fn name(coding: Coding) -> &'static str {
    match coding {
        Coding::Identity => "identity",
        Coding::Gzip => "gzip",
        Coding::Deflate => "deflate",
        Coding::Brotli => "br",
    }
}

/// Everything `reader` yields, or `None` once it yields more than `limit` bytes.
fn read_limited(reader: impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out)?;
    Ok((out.len() <= limit).then_some(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;

    use super::*;

    /// Over the limit is 413, whether the header says so (nothing is read) or the bytes do;
    /// a body that breaks off is 400.
    #[tokio::test]
    async fn a_body_over_the_limit_is_413_and_a_broken_one_400() {
        let mut declared = HeaderMap::new();
        declared.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from_static("999999999"),
        );
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let e = read_body(&declared, never, 1000).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);

        let long = Body::from(vec![b'x'; 1001]);
        let e = read_body(&HeaderMap::new(), long, 1000).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);

        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{}")),
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "invalid chunk size",
            )),
        ];
        let broken = Body::from_stream(futures_util::stream::iter(chunks));
        let e = read_body(&HeaderMap::new(), broken, 1000)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.detail.contains("could not be read"), "{}", e.detail);

        let fits = Body::from(vec![b'x'; 1000]);
        assert_eq!(
            read_body(&HeaderMap::new(), fits, 1000)
                .await
                .unwrap()
                .len(),
            1000
        );
    }

    fn gzip(bytes: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn headers(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_str(coding).unwrap(),
        );
        h
    }

    #[test]
    fn every_coding_round_trips() {
        let text = b"{\"a\":1}\n".repeat(100);
        assert_eq!(
            decode_all(&[Coding::Gzip], gzip(&text), 1 << 20).unwrap(),
            text
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        let zlib = Bytes::from(z.finish().unwrap());
        assert_eq!(decode_all(&[Coding::Deflate], zlib, 1 << 20).unwrap(), text);
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(&text).unwrap();
        let raw = Bytes::from(d.finish().unwrap());
        assert_eq!(decode_all(&[Coding::Deflate], raw, 1 << 20).unwrap(), text);
        // "gzip, gzip": undone last first.
        let twice = gzip(&gzip(&text));
        assert_eq!(
            decode_all(&[Coding::Gzip, Coding::Gzip], twice, 1 << 20).unwrap(),
            text
        );
        // Brotli's "10x10y" test vector (ten X, ten Y), so no encoder is needed.
        let br = Bytes::from_static(&[
            0x1b, 0x13, 0x00, 0x00, 0xa4, 0xb0, 0xb2, 0xea, 0x81, 0x47, 0x02, 0x8a,
        ]);
        assert_eq!(
            decode_all(&[Coding::Brotli], br.clone(), 100).unwrap(),
            "XXXXXXXXXXYYYYYYYYYY"
        );
        assert_eq!(
            decode_all(&[Coding::Brotli], br, 19).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn a_zip_bomb_is_refused_at_the_limit() {
        let bomb = gzip(&vec![b' '; 8 << 20]);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let err = decode_all(&[Coding::Gzip], bomb.clone(), 1 << 20).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            decode_all(&[Coding::Gzip], bomb, 8 << 20).unwrap().len(),
            8 << 20
        );
    }

    #[test]
    fn unknown_codings_and_broken_bytes() {
        assert_eq!(codings(&headers("GZIP")).unwrap(), [Coding::Gzip]);
        assert_eq!(
            codings(&headers("identity, deflate")).unwrap(),
            [Coding::Deflate]
        );
        assert!(codings(&HeaderMap::new()).unwrap().is_empty());
        let err = codings(&headers("zstd")).unwrap_err();
        assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            err.detail,
            "content coding `zstd` is not supported (supported: gzip, deflate, br, identity)"
        );
        let err = decode_all(&[Coding::Gzip], Bytes::from_static(b"{\"a\":1}"), 100).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}
