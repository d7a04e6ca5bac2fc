//! journey-api: the HTTP API of journeyd (SPEC §7).
//!
//! Queries read the partial aggregates the workers publish and merge them per request, so they
//! never wait for ingest. Every error is an RFC 9457 problem document built in [`problem`];
//! internal details are logged, never returned. Metrics are rendered by [`metrics`].
//!
//! In a consumer group ([`cluster`]), queries cover every task of the group: the partials of
//! tasks owned elsewhere are fetched from their owners, and an answer that lacks some says
//! `"partial": true` with the `missing_partitions`.

pub mod auth;
pub mod cluster;
pub mod encoding;
pub mod metrics;
mod openapi;
pub mod problem;
pub mod range;
pub mod segment;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use journey_core::agg::Aggregates;
use journey_core::query::{
    funnel, moments, timeseries, touchpoints, transitions, Figure, Include, SegmentFilter, Summary,
};
use journey_core::time::Millis;
use journey_core::{DecodeLimits, Rules};
use journey_ingest::{split_body, DeadLetter, DeadLetters, Decoder, Format, Position};
use journey_runtime::{RuntimeHandle, SubmitError};
use serde_json::{json, Value};

pub use metrics::Metrics;
pub use problem::Problem;

/// Limits, defaults and write keys of HTTP ingest.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    /// Write keys of the Segment tracking API and their sources ([`segment`]).
    pub write_keys: segment::WriteKeys,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub max_record_bytes: usize,
    /// Records dated more than this after [`AppState::clock`] are rejected as
    /// `timestamp_in_future` (milliseconds, `ingest.max_future`).
    pub max_future: Millis,
    /// `source` of events that name none, unless the request's `source` parameter does.
    pub default_source: String,
    /// Nice value of the threads decoding request bodies (as the workers': queries first).
    pub decode_nice: i32,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            write_keys: segment::WriteKeys::default(),
            max_body_bytes: 10 << 20,
            max_batch_events: 10_000,
            max_record_bytes: 1 << 20,
            max_future: journey_core::time::DAY,
            default_source: "http".into(),
            decode_nice: 0,
        }
    }
}

/// Wall-clock milliseconds; replaced in tests.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    })
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub runtime: RuntimeHandle,
    pub metrics: Arc<Metrics>,
    pub limits: IngestLimits,
    pub clock: Clock,
    pub tokens: auth::Tokens,
    /// Where rejected records of `POST /v1/events` go.
    pub dead_letters: DeadLetters,
    /// Drop-off alert evaluation, when `[alerts]` is enabled.
    pub alerts: Option<journey_alert::Board>,
    /// The consumer group this instance answers for (Kafka with a state store); `None`: one
    /// instance, whose answers cover its own tasks.
    pub cluster: Option<Arc<cluster::Cluster>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("runtime", &self.runtime)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .route(
            "/openapi.json",
            get(|State(s): State<AppState>| async move {
                // The goals `/v1/moments` accepts are the group's, as its handler reads them.
                let v = view(&s).await;
                Json(openapi::document(&s, &v.parts))
            }),
        )
        .route("/v1/funnel", get(get_funnel))
        .route("/v1/touchpoints", get(get_touchpoints))
        .route("/v1/transitions", get(get_transitions))
        .route("/v1/timeseries", get(get_timeseries))
        .route("/v1/moments", get(get_moments))
        .route("/v1/customers/{id}", get(get_customer))
        .route("/v1/alerts", get(get_alerts))
        .route("/v1/rules", get(get_rules).put(put_rules))
        .route("/v1/events", axum::routing::post(post_events))
        .route("/internal/v1/partials", get(get_partials));
    let app = segment::ROUTES.iter().fold(app, |app, (path, call)| {
        app.route(path, segment::route(*call))
    });
    app.fallback(|| async {
        Problem::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
    })
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authorize,
    ))
    .layer(axum::middleware::from_fn(segment::cors))
    .with_state(state)
}

/// The query parameters of a request, each given at most once.
///
/// A repeated parameter (`?state=firing&state=pending`) is refused with 400 naming it: every
/// parameter of the API takes one value, as the OpenAPI document says, and silently keeping
/// one of the values would answer a question that was not asked.
struct Params(HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        let mut q = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if q.contains_key(&k) {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("parameter `{k}` is given more than once: give it once"),
                ));
            }
            q.insert(k, v);
        }
        Ok(Params(q))
    }
}

/// Rejects parameters the endpoint does not know, naming the first.
fn known(q: &HashMap<String, String>, allowed: &[&'static str]) -> Result<(), Problem> {
    let mut unknown: Vec<&String> = q
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        Some(k) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown parameter `{k}` (expected one of: {})",
                allowed.join(", ")
            ),
        )
        .with("parameter", json!(k))),
        None => Ok(()),
    }
}

/// The `segment` parameter (`DIM:VALUE`), checked against `breakdown.segment_dimensions`:
/// 400 naming the configured dimensions when `DIM` is not one of them.
fn segment_param(
    q: &HashMap<String, String>,
    cfg: &journey_core::EngineConfig,
) -> Result<Option<SegmentFilter>, Problem> {
    let Some(raw) = q.get("segment") else {
        return Ok(None);
    };
    let configured = if cfg.segment_dimensions.is_empty() {
        "none is configured (breakdown.segment_dimensions)".to_string()
    } else {
        format!(
            "configured in breakdown.segment_dimensions: {}",
            cfg.segment_dimensions.join(", ")
        )
    };
    let f = SegmentFilter::parse(raw).ok_or_else(|| {
        Problem::bad_parameter(
            "segment",
            format!("`segment` must be DIM:VALUE, got `{raw}`; dimensions {configured}"),
        )
    })?;
    if !cfg.segment_dimensions.contains(&f.dimension) {
        return Err(Problem::bad_parameter(
            "segment",
            format!("`{}` is not a segment dimension; {configured}", f.dimension),
        )
        .with("segment_dimensions", json!(cfg.segment_dimensions)));
    }
    Ok(Some(f))
}

/// Adds `"segment": {"dimension", "value"}` to an answer restricted to a segment.
fn with_segment(mut answer: Value, f: Option<&SegmentFilter>) -> Value {
    if let (Some(f), Some(map)) = (f, answer.as_object_mut()) {
        map.insert(
            "segment".into(),
            json!({ "dimension": f.dimension, "value": f.value }),
        );
    }
    answer
}

/// The partials one query merges.
struct View {
    parts: Vec<Arc<Aggregates>>,
    /// `None` outside a group; else the tasks whose partials could not be had.
    missing: Option<Vec<journey_runtime::TaskId>>,
}

/// The local partials, or in a group every task's (fetched from the owners in parallel, each
/// within `cluster.peer_timeout`).
async fn view(s: &AppState) -> View {
    let Some(c) = &s.cluster else {
        return View {
            parts: s.runtime.partials(),
            missing: None,
        };
    };
    let metrics = &s.metrics;
    let count = |ok: bool| {
        let outcome = if ok { "ok" } else { "failed" };
        metrics.peer_requests.with_label_values(&[outcome]).inc();
    };
    let g = c.gather(&s.runtime, (s.clock)(), &count).await;
    View {
        parts: g.partials.into_iter().map(|(_, _, a)| a).collect(),
        missing: Some(g.missing),
    }
}

impl View {
    fn summary(&self, from: Millis, to: Millis, include: &Include) -> Summary {
        Summary::collect(self.parts.iter().map(|p| p.as_ref()), from, to, include)
    }

    /// Adds `"truncated_from"` to a range answer whose `from` lies before the oldest time
    /// every task's retention (`retention.total`, counted back from its latest event time)
    /// still keeps: SPEC §7, the answer says so instead of silently returning smaller numbers.
    /// In a group, adds `"partial"` and `"missing_partitions"` the same way.
    fn finish(&self, from: Millis, mut answer: Value) -> Value {
        let kept = self.parts.iter().filter_map(|p| p.retained_from()).max();
        let Some(map) = answer.as_object_mut() else {
            return answer;
        };
        if let Some(kept) = kept.filter(|&k| from < k) {
            map.insert("truncated_from".into(), Value::from(iso(kept)));
        }
        if let Some(missing) = &self.missing {
            map.insert("partial".into(), Value::from(!missing.is_empty()));
            map.insert("missing_partitions".into(), json!(missing));
        }
        answer
    }
}

fn iso(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Ready once this instance runs at least one task and every task assigned to it has been
/// restored from the state store.
async fn ready(State(s): State<AppState>) -> Response {
    let owned = s.runtime.owned_tasks().len();
    let restoring = s.runtime.restoring();
    if restoring > 0 {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("restoring {restoring} assigned task(s) from the state store"),
        )
        .into_response();
    }
    if owned > 0 {
        Json(json!({
            "status": "ready",
            "workers": s.runtime.workers(),
            "tasks": owned,
            "tasks_total": s.runtime.tasks(),
        }))
        .into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no task assigned to this instance yet",
        )
        .into_response()
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let body = s.metrics.render(&s.runtime, (s.clock)());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn get_funnel(State(s): State<AppState>, Params(q): Params) -> Result<Json<Value>, Problem> {
    known(&q, &["from", "to", "breakdown", "limit", "segment"])?;
    let (from, to) = range::range(&q, (s.clock)())?;
    let segment = segment_param(&q, s.runtime.engine_config())?;
    let dims = s.runtime.engine_config().dimension_names();
    let breakdown = match q.get("breakdown") {
        Some(b) if dims.contains(b) => Some(b.clone()),
        Some(b) => {
            return Err(Problem::bad_parameter(
                "breakdown",
                format!(
                    "unknown breakdown `{b}` (expected one of: {})",
                    dims.join(", ")
                ),
            ))
        }
        None => None,
    };
    let limit = match q.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                Problem::bad_parameter("limit", "`limit` must be a whole number from 1 to 1000")
            })?,
        None => s.runtime.engine_config().breakdown_max_values,
    };
    let include = Include {
        breakdowns: breakdown.iter().cloned().collect(),
        segment: segment.clone(),
    };
    let v = view(&s).await;
    let sum = v.summary(from, to, &include);
    let rules = s.runtime.rules();
    let report = funnel(&sum, rules.phases(), breakdown.as_deref(), limit);
    // `segment_dimensions`: what `segment=DIM:VALUE` accepts, so clients (the dashboard's
    // persona selector) find the dimensions, and their values with `breakdown=DIM`.
    let segment_dims = &s.runtime.engine_config().segment_dimensions;
    let answer = json!({
        "from": iso(from), "to": iso(to), "dimensions": dims,
        "segment_dimensions": segment_dims, "funnel": report,
    });
    let answer = with_segment(answer, segment.as_ref());
    Ok(Json(v.finish(from, answer)))
}

async fn get_touchpoints(
    State(s): State<AppState>,
    Params(q): Params,
) -> Result<Json<Value>, Problem> {
    known(&q, &["from", "to", "sort", "segment"])?;
    let (from, to) = range::range(&q, (s.clock)())?;
    let segment = segment_param(&q, s.runtime.engine_config())?;
    let include = Include {
        segment: segment.clone(),
        ..Include::default()
    };
    let v = view(&s).await;
    let sum = v.summary(from, to, &include);
    let mut list = touchpoints(&sum, &s.runtime.rules());
    match q.get("sort").map(String::as_str) {
        None | Some("rules") => {}
        Some("drop_off_rate") => list.sort_by(|a, b| {
            b.drop_off_rate
                .unwrap_or(-1.0)
                .total_cmp(&a.drop_off_rate.unwrap_or(-1.0))
        }),
        Some("visits") => list.sort_by_key(|t| std::cmp::Reverse(t.visits)),
        Some(other) => {
            return Err(Problem::bad_parameter(
                "sort",
                format!("unknown sort `{other}` (expected one of: rules, drop_off_rate, visits)"),
            ))
        }
    }
    let answer = json!({ "from": iso(from), "to": iso(to), "touchpoints": list });
    let answer = with_segment(answer, segment.as_ref());
    Ok(Json(v.finish(from, answer)))
}

/// Largest `limit` of `GET /v1/transitions` (the OpenAPI document's maximum): every
/// transition there can be, from `(start)` or a touchpoint to a touchpoint or `(exit)`.
pub const MAX_TRANSITIONS: usize = 16_785_409;
const _: () = assert!(MAX_TRANSITIONS == (journey_core::rules::MAX_TOUCHPOINTS + 1).pow(2));

async fn get_transitions(
    State(s): State<AppState>,
    Params(q): Params,
) -> Result<Json<Value>, Problem> {
    known(&q, &["from", "to", "limit", "segment"])?;
    let (from, to) = range::range(&q, (s.clock)())?;
    let segment = segment_param(&q, s.runtime.engine_config())?;
    let limit = match q.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TRANSITIONS).contains(n))
            .ok_or_else(|| {
                Problem::bad_parameter(
                    "limit",
                    format!("`limit` must be a whole number from 1 to {MAX_TRANSITIONS}"),
                )
            })?,
        None => 200,
    };
    let include = Include {
        segment: segment.clone(),
        ..Include::default()
    };
    let v = view(&s).await;
    let sum = v.summary(from, to, &include);
    let mut list = transitions(&sum);
    list.truncate(limit);
    let answer = json!({ "from": iso(from), "to": iso(to), "transitions": list });
    let answer = with_segment(answer, segment.as_ref());
    Ok(Json(v.finish(from, answer)))
}

async fn get_timeseries(
    State(s): State<AppState>,
    Params(q): Params,
) -> Result<Json<Value>, Problem> {
    known(
        &q,
        &[
            "from",
            "to",
            "step",
            "figure",
            "touchpoint",
            "phase",
            "segment",
        ],
    )?;
    let (from, to) = range::range(&q, (s.clock)())?;
    let segment = segment_param(&q, s.runtime.engine_config())?;
    let step = range::step(&q, from, to)?;
    let names: Vec<&str> = Figure::ALL.iter().map(|f| f.0).collect();
    let figure_name = q.get("figure").map(String::as_str).unwrap_or("visits");
    let figure = Figure::parse(figure_name).ok_or_else(|| {
        Problem::bad_parameter(
            "figure",
            format!(
                "unknown figure `{figure_name}` (expected one of: {})",
                names.join(", ")
            ),
        )
    })?;
    let rules = s.runtime.rules();
    // Both are checked when given, also the one the figure does not use.
    if let Some(p) = q.get("phase") {
        if !rules.phases().contains(p) {
            return Err(Problem::bad_parameter(
                "phase",
                format!(
                    "unknown phase `{p}` (expected one of: {})",
                    rules.phases().join(", ")
                ),
            ));
        }
    }
    if let Some(t) = q.get("touchpoint") {
        if !rules.touchpoints().iter().any(|x| &x.name == t) {
            return Err(Problem::bad_parameter(
                "touchpoint",
                format!("unknown touchpoint `{t}`"),
            ));
        }
    }
    let target = if figure.is_phase_figure() {
        // Without `phase`: the first phase of the rules.
        let p = q.get("phase").or(rules.phases().first()).ok_or_else(|| {
            Problem::bad_parameter("phase", "the rules in force define no phases")
        })?;
        p.clone()
    } else {
        // Without `touchpoint`: the first touchpoint of the rules.
        let first = rules.touchpoints().first().map(|t| &t.name);
        let t = q.get("touchpoint").or(first).ok_or_else(|| {
            Problem::bad_parameter("touchpoint", "the rules in force define no touchpoints")
        })?;
        t.clone()
    };
    let v = view(&s).await;
    let refs: Vec<&Aggregates> = v.parts.iter().map(|p| p.as_ref()).collect();
    let include = Include {
        segment: segment.clone(),
        ..Include::default()
    };
    let points = timeseries(
        &refs,
        from,
        to,
        step,
        figure,
        &target,
        rules.phases(),
        &include,
    );
    let points: Vec<Value> = points
        .into_iter()
        .map(|p| json!({ "t": iso(p.t), "value": p.value }))
        .collect();
    let answer = json!({ "from": iso(from), "to": iso(to), "step_ms": step, "figure": figure_name, "target": target, "points": points });
    let answer = with_segment(answer, segment.as_ref());
    Ok(Json(v.finish(from, answer)))
}

/// The goal phases whose moments of truth the partials track, in order of first appearance
/// (`Aggregates::moment_goals`); without partials, those a new task would track.
pub(crate) fn tracked_goals(
    parts: &[Arc<Aggregates>],
    cfg: &journey_core::EngineConfig,
    rules: &Rules,
) -> Vec<String> {
    let mut goals: Vec<String> = Vec::new();
    for g in parts.iter().flat_map(|p| &p.moment_goals) {
        if !goals.contains(g) {
            goals.push(g.clone());
        }
    }
    if parts.is_empty() {
        goals = cfg.moment_goals(rules);
    }
    goals
}

/// `GET /v1/moments`: per touchpoint, conversion to the goal phase of the journeys (starting
/// in the range) that touched it before converting against those that did not, with lift, odds
/// ratio, its 95 % interval and Fisher's p-value, ranked (docs/semantics.md §6 "Moments of
/// truth", `journey_core::query::moments`).
async fn get_moments(State(s): State<AppState>, Params(q): Params) -> Result<Json<Value>, Problem> {
    known(&q, &["from", "to", "goal", "segment"])?;
    let (from, to) = range::range(&q, (s.clock)())?;
    let cfg = s.runtime.engine_config();
    let segment = segment_param(&q, cfg)?;
    let rules = s.runtime.rules();
    let v = view(&s).await;
    let goals = tracked_goals(&v.parts, cfg, &rules);
    let goal = match q.get("goal") {
        Some(g) if goals.contains(g) => g.clone(),
        Some(g) => {
            return Err(Problem::bad_parameter(
                "goal",
                format!(
                    "moments of truth are not tracked for goal phase `{g}` (tracked: {}; set \
                     moments.goal_phases)",
                    goals.join(", ")
                ),
            )
            .with("goal_phases", json!(goals)))
        }
        None => goals.first().cloned().ok_or_else(|| {
            Problem::bad_parameter(
                "goal",
                "no goal phase is tracked: the rules define no phases",
            )
        })?,
    };
    let include = Include {
        segment: segment.clone(),
        ..Include::default()
    };
    let sum = v.summary(from, to, &include);
    let report = moments(&sum, &rules, &goal);
    let mut answer = serde_json::to_value(&report).unwrap_or(Value::Null);
    if let Some(map) = answer.as_object_mut() {
        map.insert("from".into(), json!(iso(from)));
        map.insert("to".into(), json!(iso(to)));
    }
    let answer = with_segment(answer, segment.as_ref());
    let mut answer = v.finish(from, answer);
    mark_untracking_tasks(&mut answer, &v.parts, &goal);
    Ok(Json(answer))
}

/// Tasks created under other rules or `moments.goal_phases` may track other goals; their
/// journeys are missing from the figures of `goal`. Then the answer says `"partial": true` and
/// how many tasks (`tasks_not_tracking_goal`).
fn mark_untracking_tasks(answer: &mut Value, parts: &[Arc<Aggregates>], goal: &str) {
    let not_tracking = parts
        .iter()
        .filter(|p| !p.moment_goals.iter().any(|g| g == goal))
        .count();
    if let (Some(map), true) = (answer.as_object_mut(), not_tracking > 0) {
        map.insert("partial".into(), Value::Bool(true));
        map.insert("tasks_not_tracking_goal".into(), json!(not_tracking));
    }
}

async fn get_customer(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    // A path segment that does not percent-decode to UTF-8 gets a problem like every other
    // bad parameter, not axum's plain-text rejection.
    let Path(id) = id.map_err(|e| Problem::bad_parameter("id", e.body_text()))?;
    if journey_core::event::check_customer_id(&id).is_err() {
        return Err(Problem::bad_parameter(
            "id",
            "customer ids are 1 to 256 characters",
        ));
    }
    let task = s.runtime.task_for(&id);
    if let Some(c) = s.cluster.as_ref().filter(|_| !s.runtime.owns(task)) {
        let forwarded = headers.contains_key(cluster::FORWARDED_BY);
        return forward_to_owner(&s, c, task, &["v1", "customers", &id], None, forwarded).await;
    }
    match s
        .runtime
        .customer(&id)
        .await
        .map_err(|_| Problem::internal("runtime stopped"))?
    {
        Some(view) => Ok(Json(serde_json::to_value(view).unwrap_or(Value::Null)).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no live state for this customer: unknown, or its journey has ended",
        )),
    }
}

/// Sends a request for `task`'s data to the instance that owns it and returns its answer as
/// it is; 503 when no live instance lists the task, or its owner does not answer within
/// `cluster.peer_timeout`. A request that was itself forwarded is not forwarded again.
async fn forward_to_owner(
    s: &AppState,
    c: &cluster::Cluster,
    task: journey_runtime::TaskId,
    segments: &[&str],
    query: Option<&str>,
    forwarded: bool,
) -> Result<Response, Problem> {
    let unavailable = |detail: String| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail).with("partition", json!(task))
    };
    if forwarded {
        return Err(unavailable(format!(
            "partition {task} is not owned by this instance (any more); retry"
        )));
    }
    let Some(owner) = c.owner_of(task, (s.clock)()) else {
        return Err(unavailable(format!(
            "the owner of partition {task} is unknown: no live instance of the group lists it; \
             retry once the group has rebalanced"
        )));
    };
    match c.forward(&owner, segments, query).await {
        Ok((status, ctype, body)) => {
            s.metrics.peer_requests.with_label_values(&["ok"]).inc();
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = (status, body).into_response();
            if let Some(v) = ctype.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            Ok(resp)
        }
        Err(e) => {
            s.metrics.peer_requests.with_label_values(&["failed"]).inc();
            tracing::warn!(task, owner = %owner.id, "forwarding to the owner failed: {e}");
            Err(unavailable(format!(
                "the owner of partition {task}, instance `{}`, did not answer in time; retry",
                owner.id
            )))
        }
    }
}

/// `GET /internal/v1/partials?tasks=1,4,7`: the published partials of the listed tasks (all
/// when `tasks` is absent) that this instance owns, for peers answering global queries. A
/// listed task not owned here is left out; the asking peer reports it missing.
async fn get_partials(State(s): State<AppState>, Params(q): Params) -> Result<Response, Problem> {
    known(&q, &["tasks"])?;
    let total = s.runtime.tasks();
    let wanted = match q.get("tasks") {
        Some(t) => {
            cluster::parse_tasks(t, total).map_err(|e| Problem::bad_parameter("tasks", e))?
        }
        None => (0..total).collect(),
    };
    let parts: Vec<_> = s
        .runtime
        .publications()
        .into_iter()
        .filter(|(t, _, _)| wanted.binary_search(t).is_ok())
        .collect();
    // Encoding large aggregates takes a while: off the async workers.
    let bytes = tokio::task::spawn_blocking(move || cluster::encode_partials(total, &parts))
        .await
        .map_err(|_| Problem::internal("the encoder stopped"))?
        .map_err(|e| Problem::internal(&format!("cannot encode partials: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn get_alerts(
    State(s): State<AppState>,
    Params(q): Params,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, Problem> {
    known(&q, &["state"])?;
    // The parameter is checked whether or not alerts are enabled.
    let wanted = match q.get("state").map(String::as_str) {
        None => None,
        Some(st @ ("pending" | "firing" | "resolved")) => Some(st),
        Some(other) => {
            return Err(Problem::bad_parameter(
                "state",
                format!("unknown state `{other}` (expected one of: pending, firing, resolved)"),
            ))
        }
    };
    let Some(board) = &s.alerts else {
        return Ok(
            Json(json!({ "evaluation": { "enabled": false }, "alerts": [] })).into_response(),
        );
    };
    // In a group the owner of task 0 evaluates; the others show its alerts.
    let role = match &s.cluster {
        None => None,
        Some(_) if s.runtime.owns(0) => Some("leader"),
        Some(c) => {
            let forwarded = headers.contains_key(cluster::FORWARDED_BY);
            match forward_to_owner(&s, c, 0, &["v1", "alerts"], uri.query(), forwarded).await {
                Ok(resp) => return Ok(resp),
                Err(_) => Some("follower"),
            }
        }
    };
    let report = board.report();
    let c = &board.config;
    let alerts: Vec<Value> = report
        .alerts
        .iter()
        .filter(|a| wanted.is_none_or(|w| a.state.as_str() == w))
        .map(|a| match a.kind {
            journey_alert::Kind::DropOff => json!({
                "kind": a.kind,
                "touchpoint": a.touchpoint, "phase": a.phase, "state": a.state,
                "drop_off_rate": a.drop_off_rate, "baseline_rate": a.baseline_rate,
                "sessions": a.sessions, "baseline_sessions": a.baseline_sessions,
                "active_since": iso(a.active_since), "fired_at": a.fired_at.map(iso),
                "resolved_at": a.resolved_at.map(iso), "summary": a.summary,
            }),
            // A phase's conversion: no touchpoint; rates as conversions, counts as journeys.
            journey_alert::Kind::Conversion => json!({
                "kind": a.kind,
                "touchpoint": null, "phase": a.phase, "state": a.state,
                "conversion": 1.0 - a.drop_off_rate,
                "baseline_conversion": 1.0 - a.baseline_rate,
                "journeys": a.sessions, "baseline_journeys": a.baseline_sessions,
                "active_since": iso(a.active_since), "fired_at": a.fired_at.map(iso),
                "resolved_at": a.resolved_at.map(iso), "summary": a.summary,
            }),
        })
        .collect();
    let baseline = match c.baseline {
        journey_alert::Baseline::DayBefore => json!("day_before"),
        journey_alert::Baseline::Trailing(ms) => json!({ "trailing_ms": ms }),
    };
    let mut answer = json!({
        "evaluation": {
            "enabled": true,
            "evaluated_at": report.evaluated_at.map(iso),
            "window_ms": c.window,
            "baseline": baseline,
            "threshold_relative": c.threshold_relative,
            "threshold_absolute": c.threshold_absolute,
            "min_sessions": c.min_sessions,
            "for_ms": c.for_,
            "conversion": match c.conversion {
                journey_alert::ConversionAlerts::Step => "step",
                journey_alert::ConversionAlerts::FromStart => "from_start",
                journey_alert::ConversionAlerts::Off => "off",
            },
            "conversion_relative": c.conversion_relative,
            "conversion_absolute": c.conversion_absolute,
            // `alerts.segment`: the journeys judged; null for all of them.
            "segment": c.segment.as_ref().map(|f| json!({ "dimension": f.dimension, "value": f.value })),
        },
        "alerts": alerts,
    });
    if let Some(role) = role {
        // A follower whose leader cannot be reached shows no alerts of its own.
        answer["evaluation"]["role"] = json!(role);
        if role == "follower" {
            answer["alerts"] = json!([]);
            answer["evaluation"]["leader_reachable"] = json!(false);
        }
    }
    Ok(Json(answer).into_response())
}

async fn get_rules(State(s): State<AppState>) -> Json<Value> {
    let rules = s.runtime.rules();
    Json(rules_json(&rules))
}

fn rules_json(rules: &Rules) -> Value {
    let tps: Vec<Value> = rules
        .touchpoints()
        .iter()
        .map(|t| {
            json!({
                "name": t.name, "phase": rules.phases()[t.phase], "channel": t.channel,
                "goal": t.goal, "moment_of_truth": t.moment_of_truth, "description": t.description,
                "score": t.score.as_ref().map(|x| json!({ "path": x.path, "nps": x.nps })),
            })
        })
        .collect();
    json!({ "phases": rules.phases(), "touchpoints": tps })
}

async fn put_rules(State(s): State<AppState>, req: Request) -> Result<Json<Value>, Problem> {
    let body = to_bytes(req.into_body(), 1 << 20).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a rules file may be at most 1 MiB",
        )
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "the rules file is not UTF-8"))?;
    let rules = Rules::from_toml(text).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "rules rejected, the current rules stay: {} problem(s)",
                e.problems.len()
            ),
        )
        .with("errors", json!(e.problems))
    })?;
    let out = rules_json(&rules);
    s.runtime
        .set_rules(Arc::new(rules))
        .await
        .map_err(|_| Problem::internal("runtime stopped"))?;
    tracing::info!("rules replaced through the API");
    Ok(Json(out))
}

async fn post_events(
    State(s): State<AppState>,
    Params(q): Params,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let arrived = (s.clock)();
    known(&q, &["source", "format"])?;
    let source = q
        .get("source")
        .cloned()
        .unwrap_or_else(|| s.limits.default_source.clone());
    if source.is_empty() || source.len() > 64 {
        return Err(Problem::bad_parameter(
            "source",
            "`source` must be 1 to 64 characters",
        ));
    }
    let format = Format::parse(
        q.get("format").map(String::as_str).unwrap_or("canonical"),
        None,
    )
    .map_err(|e| Problem::bad_parameter("format", e))?;
    let bytes = encoding::read_body(&headers, body, s.limits.max_body_bytes).await?;
    // Held until the batch is submitted: a rules swap meanwhile waits, so these events, decoded
    // with the current rules' attributes, are applied under those rules.
    let _decoding = s.runtime.decoding().await;
    // Splitting and decoding a batch takes milliseconds of CPU: done on the blocking pool,
    // so queries on the async workers never wait behind an ingest request.
    let decoder = Decoder::new(
        format,
        source.clone(),
        DecodeLimits {
            max_record_bytes: s.limits.max_record_bytes,
            max_future: s.limits.max_future,
        },
    )
    .with_clock(s.clock.clone())
    .with_received_at(arrived)
    .with_projection(s.runtime.projection());
    let (max_batch, now) = (s.limits.max_batch_events, arrived);
    let src = source.clone();
    let nice = s.limits.decode_nice;
    let decoded = tokio::task::spawn_blocking(move || {
        if let Err(e) = journey_runtime::set_thread_nice(nice) {
            tracing::debug!("cannot lower the decoding thread's priority: {e}");
        }
        let decoded = decode_batch(&bytes, &decoder, &src, max_batch, now);
        (decoded, bytes)
    })
    .await
    .map_err(|_| Problem::internal("the decoder stopped"))?;
    let decoded = match decoded {
        (Ok(decoded), _) => decoded,
        (Err((Some(reason), p)), bytes) => {
            return Err(reject_body(&s, &source, reason, p, &bytes, arrived).await)
        }
        (Err((None, p)), _) => return Err(p),
    };
    let errors = decoded.errors.clone();
    let accepted = apply(&s, &source, decoded).await?;
    let status = if accepted == 0 && !errors.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({ "accepted": accepted, "rejected": errors.len(), "errors": errors })),
    )
        .into_response())
}

/// Submits, counts and dead-letters one decoded request; the number of events applied.
/// `NotAssigned` is retryable (503): the consumer group assigns the partitions in a moment,
/// and nothing of the request was applied, counted or dead-lettered, so a retry counts once.
///
/// Runs on a task of its own, so a request abandoned meanwhile (`http.request_timeout`)
/// still has its events applied, counted and dead-lettered in full, never in part: a
/// submission queues its tasks' parts one after another.
pub(crate) async fn apply(s: &AppState, source: &str, decoded: Decoded) -> Result<usize, Problem> {
    let (s, source) = (s.clone(), source.to_string());
    tokio::spawn(async move { apply_whole(&s, &source, decoded).await })
        .await
        .unwrap_or_else(|e| Err(Problem::internal(&format!("ingest failed: {e}"))))
}

async fn apply_whole(s: &AppState, source: &str, decoded: Decoded) -> Result<usize, Problem> {
    let Decoded {
        events,
        errors,
        letters,
    } = decoded;
    let accepted = events.len();
    // First: a submission refused for want of partitions leaves no trace to double on retry.
    if !events.is_empty() {
        s.runtime.submit(events).await.map_err(|e| match e {
            SubmitError::Stopped => Problem::internal("runtime stopped"),
            SubmitError::NotAssigned(tasks) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "partitions {tasks:?} are not assigned to this instance yet; nothing was \
                     applied, retry"
                ),
            ),
        })?;
    }
    let source = s.metrics.source_label(source);
    for l in &letters {
        s.metrics
            .ingest_rejected
            .with_label_values(&[source, l.reason])
            .inc();
    }
    s.metrics
        .ingest_events
        .with_label_values(&[source, "accepted"])
        .inc_by(accepted as u64);
    s.metrics
        .ingest_events
        .with_label_values(&[source, "rejected"])
        .inc_by(errors.len() as u64);
    for dl in letters {
        if !s.dead_letters.send(dl).await {
            return Err(Problem::internal("the dead-letter sink stopped"));
        }
    }
    Ok(accepted)
}

/// A request body that could not be split into records (not JSON, a malformed JSON array, no
/// valid tracking-API request): counted as one rejected record of `source` under `reason`
/// and dead-lettered whole (position `{"http": {"body": true}}`); the answer is `problem`,
/// unless the dead-letter sink has stopped.
pub(crate) async fn reject_body(
    s: &AppState,
    source: &str,
    reason: &'static str,
    problem: Problem,
    body: &[u8],
    at: Millis,
) -> Problem {
    let letter = DeadLetter {
        at,
        reason,
        error: problem.detail.clone(),
        source: source.to_string(),
        position: Position::HttpBody,
        record: body.to_vec(),
    };
    let rejected = Decoded {
        events: Vec::new(),
        errors: vec![json!({ "reason": reason, "error": problem.detail })],
        letters: vec![letter],
    };
    match apply(s, source, rejected).await {
        Ok(_) => problem,
        Err(stopped) => stopped,
    }
}

/// One request body, decoded: the events, a problem per rejected record, and its dead letter.
pub(crate) struct Decoded {
    events: Vec<journey_core::Event<'static>>,
    errors: Vec<Value>,
    letters: Vec<DeadLetter>,
}

fn decode_batch(
    bytes: &[u8],
    decoder: &Decoder,
    source: &str,
    max_batch: usize,
    now: Millis,
) -> Result<Decoded, (Option<&'static str>, Problem)> {
    let records = split_body(bytes).map_err(|e| {
        let p = Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON, a JSON array or NDJSON: {e}"),
        );
        (Some(e.reason()), p)
    })?;
    if records.len() > max_batch {
        return Err((
            None,
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} records in one request, at most {max_batch} allowed",
                    records.len(),
                ),
            ),
        ));
    }
    Ok(decode_records(
        records.iter().map(|r| (r.position, r.bytes)),
        decoder,
        source,
        now,
    ))
}

/// Decodes records given with their 1-based positions.
pub(crate) fn decode_records<'a>(
    records: impl ExactSizeIterator<Item = (usize, &'a [u8])>,
    decoder: &Decoder,
    source: &str,
    now: Millis,
) -> Decoded {
    let mut out = Decoded {
        events: Vec::with_capacity(records.len()),
        errors: Vec::new(),
        letters: Vec::new(),
    };
    let decoder = decoder.batch();
    for (position, bytes) in records {
        match decoder.decode(bytes) {
            Ok(e) => out.events.push(e.into_owned()),
            Err(e) => {
                out.errors.push(
                    json!({ "line": position, "reason": e.reason(), "error": e.to_string() }),
                );
                out.letters.push(DeadLetter {
                    at: now,
                    reason: e.reason(),
                    error: e.to_string(),
                    source: source.to_string(),
                    position: Position::Http { line: position },
                    record: bytes.to_vec(),
                });
            }
        }
    }
    out
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A goal some tasks do not track makes the moments answer partial, naming how many.
    #[test]
    fn moments_of_a_goal_some_tasks_do_not_track_are_partial() {
        let part = |goals: &[&str]| {
            let mut a = Aggregates::new(&[], journey_core::time::HOUR, journey_core::time::DAY);
            a.moment_goals = goals.iter().map(|g| g.to_string()).collect();
            Arc::new(a)
        };
        let parts = [
            part(&["decision"]),
            part(&["retention"]),
            part(&["decision", "retention"]),
        ];
        let mut answer = json!({"goal": "decision"});
        mark_untracking_tasks(&mut answer, &parts, "decision");
        assert_eq!(answer["partial"], true);
        assert_eq!(answer["tasks_not_tracking_goal"], 1);
        let mut answer = json!({"goal": "decision", "partial": false});
        mark_untracking_tasks(&mut answer, &parts[..1], "decision");
        assert_eq!(answer, json!({"goal": "decision", "partial": false}));
    }
}
