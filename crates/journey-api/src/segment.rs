//! The Segment HTTP tracking API, so website and app SDKs send straight to journeyd (SPEC §7).
//!
//! `POST /v1/batch` takes `{"batch": [call, ...], "sentAt": ..., "context": ...}`; `/v1/track`,
//! `/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/group` and `/v1/alias` take one call each
//! (the path gives its `type`). analytics.js posts to the one-letter paths `/v1/t`, `/v1/p`,
//! `/v1/s`, `/v1/i`, `/v1/g`, `/v1/a` and `/v1/b` when its `apiHost` points here: they are the
//! same endpoints.
//!
//! Calls are decoded by journey-ingest's Segment format, so HTTP, Kafka and files agree; the
//! request's arrival time is the `receivedAt` of the clock-skew correction. A batch's
//! `sentAt` and `context` apply to each call that has none of its own (a call's context keys win).
//!
//! Write keys, as Segment checks them: HTTP Basic with the key as user name (any password), or
//! `writeKey` in the body. Each configured key maps to the source its events get. With no keys
//! configured, any key (or none) is accepted and events get the source `web`, unless ingest
//! tokens are configured: then those tokens are the write keys, so configuring tokens closes
//! every ingest endpoint.
//!
//! The HTTP API is stricter than the shared decoder where the Segment spec is: times
//! (`timestamp`, `originalTimestamp`, `sentAt`, `receivedAt`) are RFC 3339 strings or integer
//! epoch milliseconds (`1796126778741.0` counts as an integer) from 2000 to 2100, also where
//! unused; `event` is a non-empty string and `traits` an object on every call. The OpenAPI
//! document describes exactly this (`SegmentCall`, `SegmentBatch`).
//!
//! Answers a Segment SDK understands: `200 {"success": true}`; every error is a problem
//! document that also carries Segment's `code` and `message`. A batch is applied whole or not at
//! all: one call that cannot become an event makes the batch `400` (each bad call is listed in
//! `errors` and dead-lettered; nothing of the batch is applied). A call dated more than
//! `ingest.max_future` after the wall clock is not a bad request (the limit moves with the
//! clock): it is dead-lettered as `timestamp_in_future`, the rest is applied and the answer is
//! `200`; `401` for a missing or unknown
//! write key, `413` over `http.max_body_bytes` (also decompressed) or `http.max_batch_events`,
//! `415` for an unknown `Content-Encoding`. Only a retry that can succeed gets `503` (no task
//! assigned yet, shutting down). SDKs do not retry 4xx answers.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use journey_core::time::Millis;
use journey_core::DecodeLimits;
use journey_ingest::{Decoder, Format};
use serde_json::{json, Map, Value};

use crate::{encoding, AppState, Problem};

/// Source of Segment events when no write keys are configured.
pub const DEFAULT_SOURCE: &str = "web";

/// Configured write keys, each with the source its events get.
#[derive(Clone, Default, PartialEq)]
pub struct WriteKeys {
    keys: Vec<(String, String)>,
}

impl std::fmt::Debug for WriteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sources only: a key must never reach a log line.
        let sources: Vec<&str> = self.keys.iter().map(|(_, s)| s.as_str()).collect();
        f.debug_struct("WriteKeys")
            .field("sources", &sources)
            .finish()
    }
}

impl WriteKeys {
    /// Keys and their sources, as configured (`http.segment_write_keys`).
    pub fn new(keys: impl IntoIterator<Item = (String, String)>) -> Self {
        WriteKeys {
            keys: keys.into_iter().collect(),
        }
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The source of `key`, in time that depends only on the keys' lengths.
    fn source_of(&self, key: &str) -> Option<&str> {
        let mut found = None;
        for (k, source) in &self.keys {
            if crate::auth::same(k.as_bytes(), key.as_bytes()) && found.is_none() {
                found = Some(source.as_str());
            }
        }
        found
    }
}

/// One of the calls a per-call endpoint takes, or a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /v1/batch`: many calls, each with its `type`.
    Batch,
    /// A single call of this Segment `type`.
    Single(&'static str),
}

/// Routes of the tracking API: path and call.
pub const ROUTES: [(&str, Call); 14] = [
    ("/v1/batch", Call::Batch),
    ("/v1/track", Call::Single("track")),
    ("/v1/page", Call::Single("page")),
    ("/v1/screen", Call::Single("screen")),
    ("/v1/identify", Call::Single("identify")),
    ("/v1/group", Call::Single("group")),
    ("/v1/alias", Call::Single("alias")),
    ("/v1/b", Call::Batch),
    ("/v1/t", Call::Single("track")),
    ("/v1/p", Call::Single("page")),
    ("/v1/s", Call::Single("screen")),
    ("/v1/i", Call::Single("identify")),
    ("/v1/g", Call::Single("group")),
    ("/v1/a", Call::Single("alias")),
];

/// Whether `path` is one of the tracking API's (authenticated by write keys, not tokens).
pub fn is_tracking_path(path: &str) -> bool {
    ROUTES.iter().any(|(p, _)| *p == path)
}

/// Segment's machine-readable error code for a status.
fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_content_encoding",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "invalid_request",
    }
}

/// A problem document with Segment's `code` and `message` added (the SDKs log those).
fn answer(p: Problem) -> Response {
    let status = p.status;
    let message = p.detail.clone();
    let mut extra = match p.extra.clone() {
        Some((k, v)) => json!({ k: v }),
        None => json!({}),
    };
    extra["code"] = json!(code(status));
    extra["message"] = json!(message);
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": p.detail,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response();
    match status {
        StatusCode::UNAUTHORIZED => {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"journeyd\""),
            );
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            resp.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static(encoding::ACCEPTED),
            );
        }
        _ => {}
    }
    resp
}

/// The write key of HTTP Basic authentication (the user name), if the header has one.
fn basic_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "`Authorization` must be HTTP Basic with the write key as user name",
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    let (scheme, rest) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        // A bearer token: the ingest token of `POST /v1/events` works as a write key too.
        return if scheme.eq_ignore_ascii_case("bearer") {
            Ok(Some(rest.trim().to_string()))
        } else {
            Err(bad())
        };
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    Ok(Some(user.to_string()))
}

/// The source the write key grants, or 401.
fn authenticate(s: &AppState, key: Option<&str>) -> Result<String, Problem> {
    granted_source(s, key).ok_or_else(|| {
        s.metrics.unauthorized.with_label_values(&["segment"]).inc();
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown write key: send it as the HTTP Basic user name or as `writeKey`",
        )
    })
}

/// The source the write key grants (any key when none is configured), counting nothing.
fn granted_source(s: &AppState, key: Option<&str>) -> Option<String> {
    let keys = &s.limits.write_keys;
    let tokens = &s.tokens;
    if !keys.is_empty() {
        return key.and_then(|k| keys.source_of(k)).map(str::to_string);
    }
    if tokens.ingest.is_empty() && tokens.admin.is_empty() {
        return Some(DEFAULT_SOURCE.to_string());
    }
    let bearer = key.map(|k| format!("Bearer {k}"));
    tokens
        .allows(
            crate::auth::Access::Ingest,
            bearer.as_deref().map(str::as_bytes),
        )
        .ok()
        .map(|()| DEFAULT_SOURCE.to_string())
}

/// Handles one request of the tracking API.
pub(crate) async fn handle(s: AppState, call: Call, headers: HeaderMap, body: Body) -> Response {
    let arrived = (s.clock)();
    match ingest(&s, call, &headers, body, arrived).await {
        Ok(resp) => resp,
        Err(p) => answer(p),
    }
}

async fn ingest(
    s: &AppState,
    call: Call,
    headers: &HeaderMap,
    body: Body,
    arrived: Millis,
) -> Result<Response, Problem> {
    let header_key = basic_key(headers)?;
    let bytes = encoding::read_body(headers, body, s.limits.max_body_bytes).await?;
    let (envelope, body_key) = match envelope(&bytes) {
        Ok(read) => read,
        // Counted and kept when the header's key names the sender; an unknown sender's bytes
        // are kept nowhere.
        Err((reason, p)) => {
            return Err(match granted_source(s, header_key.as_deref()) {
                Some(source) => crate::reject_body(s, &source, reason, p, &bytes, arrived).await,
                None => p,
            })
        }
    };
    let source = authenticate(s, header_key.as_deref().or(body_key.as_deref()))?;
    let calls = match calls(call, envelope, s.limits.max_batch_events) {
        Ok(calls) => calls,
        Err(p) if p.status == StatusCode::BAD_REQUEST => {
            return Err(crate::reject_body(s, &source, INVALID_REQUEST, p, &bytes, arrived).await)
        }
        Err(p) => return Err(p),
    };

    let decoder = Decoder::new(
        Format::Segment,
        source.clone(),
        DecodeLimits {
            max_record_bytes: s.limits.max_record_bytes,
            max_future: s.limits.max_future,
        },
    )
    .with_clock(s.clock.clone())
    .with_received_at(arrived);
    let records: Vec<Vec<u8>> = calls
        .into_iter()
        .map(|c| serde_json::to_vec(&Value::Object(c)).unwrap_or_default())
        .collect();
    let src = source.clone();
    let nice = s.limits.decode_nice;
    let decoded = tokio::task::spawn_blocking(move || {
        if let Err(e) = journey_runtime::set_thread_nice(nice) {
            tracing::debug!("cannot lower the decoding thread's priority: {e}");
        }
        crate::decode_records(
            records
                .iter()
                .enumerate()
                .map(|(i, r)| (i + 1, r.as_slice())),
            &decoder,
            &src,
            arrived,
        )
    })
    .await
    .map_err(|_| Problem::internal("the decoder stopped"))?;

    // A call dated more than `ingest.max_future` after the wall clock is a device-clock
    // problem, not a bad request (the limit moves with the clock, so no client can check it
    // beforehand): it is dead-lettered as `timestamp_in_future` and the rest is applied.
    let invalid = decoded
        .errors
        .iter()
        .filter(|e| e["reason"] != FUTURE)
        .count();
    if invalid > 0 {
        // All or nothing: the bad calls (and any dated too far ahead) are counted and
        // dead-lettered, the rest not applied.
        let errors = decoded.errors.clone();
        crate::apply(
            s,
            &source,
            crate::Decoded {
                events: Vec::new(),
                ..decoded
            },
        )
        .await?;
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{invalid} call(s) of the request are not valid Segment calls; nothing was applied"
            ),
        )
        .with("errors", Value::Array(errors)));
    }
    crate::apply(s, &source, decoded).await?;
    Ok((StatusCode::OK, axum::Json(json!({ "success": true }))).into_response())
}

/// Reason label of a body that is JSON but no valid request of the tracking API (a missing
/// `batch`, a call that breaks [`check_call`]); counted and dead-lettered whole.
const INVALID_REQUEST: &str = "invalid_request";

/// A request refused as a whole: its reason label (`not_json`, [`INVALID_REQUEST`]) and answer.
type Refusal = (&'static str, Problem);

/// The body's JSON object without its `writeKey`, and the key.
fn envelope(bytes: &[u8]) -> Result<(Map<String, Value>, Option<String>), Refusal> {
    // A byte-order mark (and `\r\n`, which JSON allows as whitespace) as in every ingest path.
    let value: Value = serde_json::from_slice(journey_ingest::strip_bom(bytes)).map_err(|e| {
        let text = e.to_string();
        // Valid JSON by RFC 8259, but beyond what a parsed body can hold.
        let limits = if text.starts_with("number out of range")
            || text.starts_with("recursion limit exceeded")
        {
            " (journeyd reads numbers that fit a 64-bit float and nesting up to 128 levels; \
             one such value anywhere refuses the whole request)"
        } else {
            ""
        };
        let p = Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON journeyd can read: {e}{limits}"),
        );
        ("not_json", p)
    })?;
    let Value::Object(mut envelope) = value else {
        let p = Problem::new(StatusCode::BAD_REQUEST, "the body is not a JSON object");
        return Err(("not_json", p));
    };
    let key = match envelope.remove("writeKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k),
        Some(_) => {
            let p = Problem::new(StatusCode::BAD_REQUEST, "`writeKey` must be a string");
            return Err((INVALID_REQUEST, p));
        }
    };
    Ok((envelope, key))
}

/// The calls of a request body: a batch's (with its `sentAt` and `context`), or the one call.
fn calls(
    call: Call,
    mut envelope: Map<String, Value>,
    max: usize,
) -> Result<Vec<Map<String, Value>>, Problem> {
    if let Call::Single(kind) = call {
        check_call(&envelope).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e))?;
        envelope.insert("type".into(), Value::String(kind.into()));
        return Ok(vec![envelope]);
    }
    let items = match envelope.remove("batch") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "missing field `batch`: a batch is {\"batch\": [call, ...]}",
            ))
        }
        Some(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "field `batch` must be an array of calls",
            ))
        }
    };
    if items.len() > max {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} calls in one batch, at most {max} allowed", items.len()),
        ));
    }
    check_time_field(&envelope, "sentAt").map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e))?;
    let sent_at = envelope.get("sentAt").filter(|v| !v.is_null()).cloned();
    let context = match envelope.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => Some(c.clone()),
        Some(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "field `context` must be an object",
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut c) = item else {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("batch[{i}] is not a JSON object"),
            ));
        };
        check_call(&c)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("batch[{i}]: {e}")))?;
        if let Some(sent) = &sent_at {
            if c.get("sentAt").is_none_or(Value::is_null) {
                c.insert("sentAt".into(), sent.clone());
            }
        }
        if let Some(shared) = &context {
            match c.get_mut("context") {
                Some(Value::Object(own)) => {
                    for (k, v) in shared {
                        own.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                None | Some(Value::Null) => {
                    c.insert("context".into(), Value::Object(shared.clone()));
                }
                Some(_) => {} // the decoder names the bad field
            }
        }
        out.push(c);
    }
    Ok(out)
}

/// The reason of a call dated too far ahead (see [`ingest`]).
const FUTURE: &str = "timestamp_in_future";

/// The times of a call: RFC 3339 strings, as Segment's spec and SDKs write them.
const TIME_FIELDS: [&str; 4] = ["timestamp", "originalTimestamp", "sentAt", "receivedAt"];

/// `field` of `map` is absent, `null`, an RFC 3339 string or epoch milliseconds (an integer,
/// also written with a zero fraction such as `1796126778741.0`, as the decoder reads it) in
/// the range every event time must lie in (2000-01-01 to 2100-01-01, exclusive). Checked for
/// every time of a call, also where the decoder does not use it (`sentAt` next to
/// `timestamp`), so the answer does not depend on which times a call happens to carry. How
/// far ahead of the wall clock a time may be (`ingest.max_future`) is not checked here.
fn check_time_field(map: &Map<String, Value>, field: &str) -> Result<(), String> {
    let millis = match map.get(field) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(t)) => journey_core::event::parse_rfc3339(t),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Some(i),
            (None, Some(f)) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                Some(f as Millis)
            }
            _ => None,
        },
        Some(_) => None,
    };
    match millis {
        Some(t) if journey_core::event::check_time(t).is_ok() => Ok(()),
        Some(_) => Err(format!(
            "`{field}` must lie in 2000-01-01 to 2100-01-01 (exclusive), also where it is not used"
        )),
        None => Err(format!(
            "`{field}` must be an RFC 3339 string or integer epoch milliseconds"
        )),
    }
}

/// What the HTTP API requires of a call beyond journey-ingest's Segment decoder, which is
/// lenient for files and Kafka (fields it does not use): times are RFC 3339 strings or integer
/// epoch milliseconds, `userId` and `anonymousId` strings (at most 256 characters) or numbers, `event` is a non-empty string whenever it is given, `traits` an object. The
/// OpenAPI document (`SegmentCall`) says the same; the decoder checks the rest.
fn check_call(c: &Map<String, Value>) -> Result<(), String> {
    for field in TIME_FIELDS {
        check_time_field(c, field)?;
    }
    for field in ["userId", "anonymousId"] {
        // Checked even where unused (`anonymousId` next to a `userId`).
        match c.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if journey_core::event::id_number_text(n).is_some() => {}
            Some(Value::String(id))
                if id.chars().count() <= journey_core::event::MAX_CUSTOMER_ID_CHARS => {}
            Some(_) => {
                return Err(format!(
                    "`{field}` must be a string of at most 256 characters or an integer"
                ))
            }
        }
    }
    match c.get("event") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) if !e.is_empty() => {}
        Some(_) => return Err("`event` must be a non-empty string".into()),
    }
    match c.get("traits") {
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(_) => Err("`traits` must be an object".into()),
    }
}

/// Adds CORS headers to the tracking API's answers and answers its preflight requests, so
/// analytics.js on any website can send (write keys, not cookies, authenticate).
pub(crate) async fn cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !is_tracking_path(req.uri().path()) {
        return next.run(req).await;
    }
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Content-Encoding"),
    );
    resp
}

/// `State` extractor wrapper for the routes, one per call.
pub(crate) fn route(call: Call) -> axum::routing::MethodRouter<AppState> {
    axum::routing::post(
        move |State(s): State<AppState>, headers: HeaderMap, body: Body| {
            handle(s, call, headers, body)
        },
    )
}
