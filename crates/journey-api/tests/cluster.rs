//! Global queries through the router over real HTTP between two "instances" in one process:
//! A owns tasks 0–2, B owns 3–5, and a reference runtime owns all six. Both are served on
//! 127.0.0.1 and list each other in their directories, so every query on A fetches B's
//! partials through `GET /internal/v1/partials` (and the other way round).
//!
//! Checked: the merged answers equal the reference's exactly; a dead peer, one that accepts
//! connections but never answers, and an expired entry each give `"partial": true` with the
//! missing partitions, within the peer timeout; `/v1/customers/{id}` is forwarded to the
//! owner; a one-instance service keeps its answers without the cluster fields.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use journey_api::auth::Tokens;
use journey_api::cluster::{Cluster, ClusterConfig, Member};
use journey_api::{router, AppState, IngestLimits, Metrics};
use journey_core::time::{Millis, DAY};
use journey_core::{EngineConfig, Event, Rules};
use journey_gen::{generate, GenConfig};
use journey_ingest::DeadLetters;
use journey_runtime::{Partitioner, Runtime, RuntimeConfig, RuntimeHandle, TaskId};
use serde_json::Value;
use tower::ServiceExt;

/// 2026-11-20T12:00:00Z: the API's "now".
const NOW: Millis = 1_795_176_000_000;
const TASKS: u32 = 6;
const PEER_TIMEOUT: Duration = Duration::from_millis(700);
const TOKEN: &str = "cluster-read-token-0123456789";

fn rules() -> Arc<Rules> {
    let text = include_str!("../../../config/rules.toml");
    Arc::new(Rules::from_toml(text).expect("the shipped rules"))
}

/// A runtime with `owned` tasks (all when `None`), fed the events of its tasks in time order
/// (so no event is late in either split), published.
async fn runtime(owned: Option<&[TaskId]>, events: &[Event<'static>]) -> Runtime {
    runtime_with(EngineConfig::default(), owned, events).await
}

/// [`runtime`] under the engine settings `cfg`.
async fn runtime_with(
    cfg: EngineConfig,
    owned: Option<&[TaskId]>,
    events: &[Event<'static>],
) -> Runtime {
    let rc = RuntimeConfig {
        workers: 2,
        tasks: TASKS,
        own_all_tasks: owned.is_none(),
        live: false,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::start(Arc::new(cfg), rules(), rc, Vec::new());
    let h = rt.handle();
    if let Some(tasks) = owned {
        for &t in tasks {
            h.assign_blocking(t, None, Vec::new()).unwrap();
        }
        // The workers take the tasks over asynchronously.
        h.sync().await.unwrap();
    }
    let mine: Vec<Event<'static>> = events
        .iter()
        .filter(|e| owned.is_none_or(|o| o.contains(&h.task_for(&e.customer_id))))
        .cloned()
        .collect();
    h.submit_blocking(mine).unwrap();
    h.sync().await.unwrap();
    rt
}

fn state(rt: RuntimeHandle, cluster: Option<Arc<Cluster>>) -> AppState {
    AppState {
        runtime: rt,
        metrics: Arc::new(Metrics::new()),
        limits: IngestLimits::default(),
        clock: Arc::new(|| NOW),
        tokens: Tokens {
            read: vec![TOKEN.into()],
            ..Tokens::default()
        },
        dead_letters: DeadLetters::channel(10).0,
        alerts: None,
        cluster,
    }
}

fn cluster(id: &str, url: &str) -> Arc<Cluster> {
    Arc::new(
        Cluster::new(ClusterConfig {
            id: id.into(),
            url: url.into(),
            peer_timeout: PEER_TIMEOUT,
            member_expiry: 10_000,
            token: Some(TOKEN.into()),
        })
        .unwrap(),
    )
}

fn member(id: &str, url: &str, tasks: &[TaskId], updated_at: Millis) -> Member {
    Member {
        id: id.into(),
        url: url.into(),
        tasks: tasks.to_vec(),
        task_count: tasks.len(),
        tasks_total: TASKS,
        assigned_at: tasks.iter().map(|&t| (t, NOW - 60_000)).collect(),
        updated_at,
    }
}

/// Two instances, A and B, each served over HTTP and listing both as members.
struct Pair {
    a_cluster: Arc<Cluster>,
    a_app: Router,
    b_app: Router,
    a_member: Member,
    b_url: String,
    _servers: [tokio::task::JoinHandle<()>; 2],
}

async fn pair(a: &Runtime, a_tasks: &[TaskId], b: &Runtime, b_tasks: &[TaskId]) -> Pair {
    let a_cluster = cluster("a", "http://unused");
    let b_cluster = cluster("b", "http://unused");
    let a_app = router(state(a.handle(), Some(a_cluster.clone())));
    let b_app = router(state(b.handle(), Some(b_cluster.clone())));
    let (a_url, a_server) = serve(a_app.clone()).await;
    let (b_url, b_server) = serve(b_app.clone()).await;
    let a_member = member("a", &a_url, a_tasks, NOW);
    let b_member = member("b", &b_url, b_tasks, NOW);
    a_cluster.set_members(vec![a_member.clone(), b_member.clone()]);
    b_cluster.set_members(vec![a_member.clone(), b_member.clone()]);
    Pair {
        a_cluster,
        a_app,
        b_app,
        a_member,
        b_url,
        _servers: [a_server, b_server],
    }
}

/// Serves `app` on a free loopback port; the task ends when the handle is aborted.
async fn serve(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

const RANGE: &str = "from=1794700800000&to=1795132800000";

/// Funnel, touchpoints, transitions and a timeseries over the test data's range.
async fn figures(app: &Router) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        format!("/v1/funnel?{RANGE}"),
        format!("/v1/touchpoints?{RANGE}"),
        format!("/v1/transitions?{RANGE}&limit=100000"),
        format!("/v1/timeseries?{RANGE}&figure=sessions&touchpoint=cart&step=1h"),
        format!("/v1/moments?{RANGE}"),
    ] {
        let (status, v) = get(app, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        out.push(v);
    }
    out
}

fn without_cluster_fields(mut answers: Vec<Value>) -> Vec<Value> {
    for a in &mut answers {
        let map = a.as_object_mut().unwrap();
        assert_eq!(map.remove("partial"), Some(Value::Bool(false)), "{map:?}");
        assert_eq!(
            map.remove("missing_partitions"),
            Some(serde_json::json!([]))
        );
    }
    answers
}

fn event(customer: &str, ts: Millis, name: &'static str) -> Event<'static> {
    Event {
        event_id: None,
        customer_id: Cow::Owned(customer.into()),
        ts,
        source: Cow::Borrowed("web"),
        name: Cow::Borrowed(name),
        attributes: serde_json::json!({ "utm_medium": "cpc" }),
    }
}

/// A customer id whose task is in `tasks`.
fn customer_of(prefix: &str, tasks: &[TaskId]) -> String {
    (0..)
        .map(|i| format!("{prefix} {i}"))
        .find(|c| tasks.contains(&Partitioner::Murmur2.partition(c.as_bytes(), TASKS)))
        .unwrap()
}

/// Time of the watermark events: every split's stream time gets there, so all sessions and
/// journeys of the data are closed in each, as in the reference.
const WATERMARK: Millis = 1_794_787_200_000 + 40 * DAY;

/// A day of generated journeys from 2026-11-16, in time order, then one unclassified event
/// 40 days later into A's tasks and one into B's.
fn events() -> Vec<Event<'static>> {
    let mut events = generate(&GenConfig {
        customers: 400,
        start: 1_794_787_200_000,
        span: DAY,
        out_of_order: 0.0,
        ..GenConfig::default()
    });
    events.retain(|e| e.ts < WATERMARK - DAY);
    events.sort_by_key(|e| e.ts);
    for tasks in [[0, 1, 2], [3, 4, 5]] {
        events.push(event(
            &customer_of("watermark", &tasks),
            WATERMARK,
            "watermark",
        ));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_answers_over_all_tasks_and_says_what_is_missing() {
    let events = events();
    let all = runtime(None, &events).await;
    let (a_tasks, b_tasks): (&[TaskId], &[TaskId]) = (&[0, 1, 2], &[3, 4, 5]);
    let a_rt = runtime(Some(a_tasks), &events).await;
    let b_rt = runtime(Some(b_tasks), &events).await;

    // The reference: one instance with every task, no cluster fields in its answers.
    let reference = router(state(all.handle(), None));
    let want = figures(&reference).await;
    assert!(want.iter().all(|v| v.get("partial").is_none()));
    assert!(
        want[4]["moments"][0]["touched"]["journeys"]
            .as_u64()
            .unwrap()
            > 0,
        "moments of truth merged over the tasks: {}",
        want[4]
    );
    assert!(
        want[1]["touchpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["sessions"].as_u64().unwrap())
            .sum::<u64>()
            > 300,
        "a meaningful data set"
    );

    // Each instance is served over HTTP; each lists the other.
    let Pair {
        a_cluster,
        a_app,
        b_app,
        a_member,
        b_url,
        _servers,
    } = pair(&a_rt, a_tasks, &b_rt, b_tasks).await;

    // Merged exactly as the one-instance path merges: equal answers on both instances.
    assert_eq!(without_cluster_fields(figures(&a_app).await), want);
    assert_eq!(without_cluster_fields(figures(&b_app).await), want);

    // The internal endpoint needs the same token as queries.
    let req = Request::builder()
        .uri("/internal/v1/partials?tasks=3")
        .body(Body::empty())
        .unwrap();
    let resp = b_app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, v) = get(&b_app, "/internal/v1/partials?tasks=9").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["parameter"], "tasks");

    // A customer of B's tasks, asked on A: B's answer, forwarded.
    let id = customer_of("live/customer", b_tasks);
    let visit = event(&id, WATERMARK + 60_000, "page_view");
    b_rt.handle().submit_blocking(vec![visit]).unwrap();
    b_rt.handle().sync().await.unwrap();
    let path = format!(
        "/v1/customers/{}",
        id.replace('/', "%2F").replace(' ', "%20")
    );
    let (status, direct) = get(&b_app, &path).await;
    assert_eq!(status, StatusCode::OK, "{direct}");
    let (status, forwarded) = get(&a_app, &path).await;
    assert_eq!((status, &forwarded), (StatusCode::OK, &direct));
    // Unknown customers of B's tasks: B's 404, through A.
    let ghost = (0..)
        .map(|i| format!("ghost-{i}"))
        .find(|c| b_rt.handle().task_for(c) >= 3)
        .unwrap();
    let (status, v) = get(&a_app, &format!("/v1/customers/{ghost}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    // A peer that accepts connections but never answers (a SIGSTOPped process): partial,
    // within the peer timeout.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    a_cluster.set_members(vec![a_member.clone(), member("b", &hung_url, b_tasks, NOW)]);
    let started = Instant::now();
    let (status, v) = get(&a_app, &format!("/v1/funnel?{RANGE}")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(v["missing_partitions"], serde_json::json!([3, 4, 5]));
    assert!(
        took >= PEER_TIMEOUT && took < PEER_TIMEOUT + Duration::from_millis(500),
        "answered after {took:?}, peer timeout {PEER_TIMEOUT:?}"
    );
    // The figures are A's own tasks', not silently presented as the whole.
    let (_, a_only) = get(
        &router(state(a_rt.handle(), None)),
        &format!("/v1/funnel?{RANGE}"),
    )
    .await;
    assert_eq!(v["funnel"], a_only["funnel"]);
    assert_ne!(v["funnel"], want[0]["funnel"]);
    let (status, v) = get(&a_app, &path).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["partition"], b_rt.handle().task_for(&id));
    drop(hung);

    // An expired entry is not asked at all: missing at once.
    a_cluster.set_members(vec![member("b", &b_url, b_tasks, NOW - 10_001)]);
    let started = Instant::now();
    let (_, v) = get(&a_app, &format!("/v1/touchpoints?{RANGE}")).await;
    assert!(started.elapsed() < PEER_TIMEOUT);
    assert_eq!(v["partial"], true);
    assert_eq!(v["missing_partitions"], serde_json::json!([3, 4, 5]));

    // A dead peer (nothing listens at its address): partial as well.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    a_cluster.set_members(vec![member("b", &closed_url, b_tasks, NOW)]);
    let (_, v) = get(&a_app, &format!("/v1/transitions?{RANGE}")).await;
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(v["missing_partitions"], serde_json::json!([3, 4, 5]));
    let (_, v) = get(&a_app, &format!("/v1/moments?{RANGE}")).await;
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(v["missing_partitions"], serde_json::json!([3, 4, 5]));
    let (_, a_only) = get(
        &router(state(a_rt.handle(), None)),
        &format!("/v1/moments?{RANGE}"),
    )
    .await;
    assert_eq!(v["moments"], a_only["moments"]);
    let (status, v) = get(&a_app, &path).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");

    all.shutdown();
    a_rt.shutdown();
    b_rt.shutdown();
}

/// During a rolling change of `moments.goal_phases` instances track different goals: each
/// accepts every goal some task of the group tracks, and its OpenAPI document lists exactly
/// those, as its handler reads them (the group's partials, not only its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_goals_are_the_goals_the_group_tracks() {
    let events = events();
    let goals = |g: &str| EngineConfig {
        goal_phases: vec![g.into()],
        ..EngineConfig::default()
    };
    let (a_tasks, b_tasks): (&[TaskId], &[TaskId]) = (&[0, 1, 2], &[3, 4, 5]);
    let a_rt = runtime_with(goals("decision"), Some(a_tasks), &events).await;
    let b_rt = runtime_with(goals("retention"), Some(b_tasks), &events).await;
    let Pair {
        a_app, _servers, ..
    } = pair(&a_rt, a_tasks, &b_rt, b_tasks).await;

    let (status, doc) = get(&a_app, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let params = doc["paths"]["/v1/moments"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let goal = params.iter().find(|p| p["name"] == "goal").unwrap();
    let mut listed: Vec<&str> = goal["schema"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no enum: {goal}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["decision", "retention"]);
    for g in listed {
        let (status, v) = get(&a_app, &format!("/v1/moments?{RANGE}&goal={g}")).await;
        assert_eq!(status, StatusCode::OK, "{g}: {v}");
    }
}

/// Events the runtime's tasks have applied, once everything queued so far has been.
async fn events_applied(rt: &RuntimeHandle) -> u64 {
    rt.sync().await.unwrap();
    rt.partials().iter().map(|p| p.counters.events).sum()
}

/// A request refused because a partition of its events is not assigned here (503, "retry")
/// leaves nothing behind: no event applied, none counted, no dead letter sent. A retry once
/// the partition is assigned then counts each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_for_an_unassigned_partition_leaves_no_trace() {
    let rt = runtime(Some(&[0, 1, 2]), &[]).await;
    let (dead_letters, letters) = DeadLetters::channel(10);
    let metrics = Arc::new(Metrics::new());
    let app = router(AppState {
        metrics: metrics.clone(),
        dead_letters,
        ..state(rt.handle(), None)
    });
    let mine = customer_of("mine", &[0, 1, 2]);
    let theirs = customer_of("theirs", &[3, 4, 5]);
    let body = format!(
        "{{\"customer_id\":\"{mine}\",\"ts\":{NOW},\"event\":\"login\"}}\n\
         {{\"customer_id\":\"{theirs}\",\"ts\":{NOW},\"event\":\"login\"}}\n\
         not json\n"
    );
    let req = Request::builder()
        .method("POST")
        .uri("/v1/events")
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        events_applied(&rt.handle()).await,
        0,
        "no event of the refused request was applied"
    );
    assert!(letters.try_recv().is_err(), "no dead letter was sent");
    let text = metrics.render(&rt.handle(), NOW);
    let counted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("journeyd_ingest_") && !l.ends_with(" 0"))
        .collect();
    assert_eq!(counted, Vec::<&str>::new(), "nothing counted");
}

/// A request dropped while its events are being queued (as `http.request_timeout` drops
/// it) has them applied in full or not at all, never in part: its submission runs to its
/// end on a task of its own. The request's whole time is measured first; it is then dropped
/// at 30 … 95 % of that, so some drops land while its parts are queued to the tasks one
/// after another (a worker queue of one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_while_queued_is_applied_whole_or_not_at_all() {
    let n: u64 = 40_000;
    let body: String = (0..n)
        .map(|i| {
            let ts = NOW - i as Millis;
            format!("{{\"customer_id\":\"c{i}\",\"ts\":{ts},\"event\":\"login\"}}\n")
        })
        .collect();
    // Runs the request, dropped after `limit`; returns whether it was answered and how many
    // of its events were applied once everything queued has been.
    let run = |limit: Duration| {
        let body = body.clone();
        async move {
            let rc = RuntimeConfig {
                workers: 2,
                tasks: 64,
                channel_capacity: 1,
                live: false,
                ..RuntimeConfig::default()
            };
            let rt = Runtime::start(Arc::new(EngineConfig::default()), rules(), rc, Vec::new());
            let mut state = state(rt.handle(), None);
            state.limits.max_batch_events = n as usize;
            let app = router(state);
            let req = Request::builder()
                .method("POST")
                .uri("/v1/events")
                .body(Body::from(body))
                .unwrap();
            let started = Instant::now();
            let answered = tokio::time::timeout(limit, app.oneshot(req)).await.is_ok();
            let took = started.elapsed();
            // A submission still running queues the rest meanwhile.
            let deadline = Instant::now() + Duration::from_secs(20);
            let applied = loop {
                let applied = events_applied(&rt.handle()).await;
                if applied == 0 || applied == n || Instant::now() > deadline {
                    break applied;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            rt.shutdown();
            (answered, took, applied)
        }
    };
    let (answered, whole, applied) = run(Duration::from_secs(60)).await;
    assert!(answered && applied == n, "{answered} {applied}");
    let mut outcomes = Vec::new();
    for percent in [30, 40, 50, 60, 70, 75, 80, 85, 90, 95] {
        let limit = whole * percent / 100;
        let (answered, _, applied) = run(limit).await;
        assert!(
            applied == 0 || applied == n,
            "dropped after {limit:?} of {whole:?}: {applied} of {n} events applied"
        );
        outcomes.push((percent, answered, applied));
    }
    eprintln!("request {whole:?}; (percent, answered, applied): {outcomes:?}");
}
