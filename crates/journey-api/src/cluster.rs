//! Global queries in a consumer group: every instance answers over all tasks.
//!
//! The choice is **fan-out to peers discovered through the state store**. Each instance
//! registers itself as `members/<id>.json` ([`Member`]: its advertised URL and the tasks it
//! owns), rewritten when its tasks change and on a heartbeat; journeyd's membership thread
//! keeps the directory it reads from there in [`Cluster::set_members`]. A query takes the
//! local partials of the owned tasks and fetches the others from their owners
//! (`GET /internal/v1/partials?tasks=…`, [`encode_partials`]), in parallel, each request
//! bounded by `cluster.peer_timeout`. A task without a reachable owner is reported missing:
//! the answer says `"partial": true` instead of silently counting less.
//!
//! Nothing here touches the store: the directory is pushed in, so queries never wait on it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bincode::Options;
use journey_core::agg::Aggregates;
use journey_core::time::Millis;
use journey_runtime::{RuntimeHandle, TaskId};
use serde::{Deserialize, Serialize};

/// Where members register, under the state store's root.
pub const MEMBERS_PREFIX: &str = "members/";

/// The path of `members/<id>.json`.
pub fn member_path(id: &str) -> String {
    format!("{MEMBERS_PREFIX}{id}.json")
}

/// Header of a request one instance forwards to another, naming the sender; the receiver
/// then answers from its own state only, so a stale directory can never make a loop.
pub const FORWARDED_BY: &str = "x-journeyd-forwarded-by";

/// One instance of the group as registered in the state store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `cluster.instance_id`.
    pub id: String,
    /// Base URL its API is reached at (`cluster.advertise_url`), e.g. `http://10.0.0.7:8080`.
    pub url: String,
    /// Tasks it owns, ascending.
    pub tasks: Vec<TaskId>,
    /// `tasks.len()`, for people reading the object.
    pub task_count: usize,
    /// Number of tasks of the group (the input topics' partition count).
    pub tasks_total: u32,
    /// When it took each owned task (epoch ms, its clock): when two members list one task
    /// (a paused instance that has not noticed the move yet), the later taker owns it.
    pub assigned_at: BTreeMap<TaskId, Millis>,
    /// When the object was written (epoch ms); older than `cluster.member_expiry`: ignored.
    pub updated_at: Millis,
}

impl Member {
    /// Whether the entry is recent enough to be believed at `now` (epoch ms).
    pub fn is_live(&self, now: Millis, expiry: Millis) -> bool {
        now.saturating_sub(self.updated_at) <= expiry
    }
}

/// For each task, the member to ask for it: among the live members other than `self_id`
/// listing it, the one that took it last (then the freshest entry, then the smallest id).
pub fn owners<'a>(
    members: &'a [Member],
    self_id: &str,
    now: Millis,
    expiry: Millis,
) -> BTreeMap<TaskId, &'a Member> {
    let mut out: BTreeMap<TaskId, &Member> = BTreeMap::new();
    let key = |m: &Member, t: TaskId| {
        (
            m.assigned_at.get(&t).copied().unwrap_or(Millis::MIN),
            m.updated_at,
            std::cmp::Reverse(m.id.clone()),
        )
    };
    for m in members
        .iter()
        .filter(|m| m.id != self_id && m.is_live(now, expiry))
    {
        for &t in &m.tasks {
            match out.get(&t) {
                Some(cur) if key(cur, t) >= key(m, t) => {}
                _ => {
                    out.insert(t, m);
                }
            }
        }
    }
    out
}

/// Version of the partials' wire format; a peer answering another one counts as missing.
/// Version 2: buckets carry segment aggregates and time to convert (issue 17); version 3: the
/// moments of truth (`Aggregates::moment_goals`, `Bucket::moments`).
const WIRE_VERSION: u32 = 3;
/// Largest partials reply decoded, in bytes.
const MAX_REPLY_BYTES: u64 = 1 << 30;

/// The body of `GET /internal/v1/partials`.
#[derive(Serialize)]
struct ReplyOut<'a> {
    version: u32,
    tasks_total: u32,
    /// Task, watermark (epoch ms), partial aggregates.
    partials: &'a [(TaskId, Millis, Arc<Aggregates>)],
}

/// The leading fields of every version's reply, read first so that a peer of another version
/// is named as such rather than as damaged bytes.
#[derive(Deserialize)]
struct Header {
    version: u32,
    tasks_total: u32,
}

/// The whole reply; its header was checked through [`Header`] (bincode reads by position).
#[derive(Deserialize)]
struct ReplyIn {
    _version: u32,
    _tasks_total: u32,
    partials: Vec<(TaskId, Millis, Aggregates)>,
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_REPLY_BYTES)
}

/// Encodes partials for `GET /internal/v1/partials`: bincode (varint integers), exact, with
/// the format version and the sender's task count.
///
/// # Errors
/// When the aggregates cannot be encoded (larger than 1 GiB).
pub fn encode_partials(
    tasks_total: u32,
    partials: &[(TaskId, Millis, Arc<Aggregates>)],
) -> Result<Vec<u8>, bincode::Error> {
    codec().serialize(&ReplyOut {
        version: WIRE_VERSION,
        tasks_total,
        partials,
    })
}

/// Why a peer's partials could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("request to {url} failed: {}", causes(source))]
    Request { url: String, source: reqwest::Error },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("cannot decode the partials from {url}: {why}")]
    Decode { url: String, why: String },
}

/// `e` and its sources, so that "error sending request" says why (timed out, refused, reset).
fn causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// Decodes [`encode_partials`]' bytes of a group with `tasks_total` tasks.
///
/// # Errors
/// A description of the problem: damaged bytes, another version or task count.
pub fn decode_partials(
    bytes: &[u8],
    tasks_total: u32,
) -> Result<Vec<(TaskId, Millis, Aggregates)>, String> {
    let h: Header = codec().deserialize_from(bytes).map_err(|e| e.to_string())?;
    if h.version != WIRE_VERSION {
        return Err(format!(
            "wire version {}, expected {WIRE_VERSION}",
            h.version
        ));
    }
    if h.tasks_total != tasks_total {
        return Err(format!(
            "the peer has {} tasks, this instance {tasks_total}",
            h.tasks_total
        ));
    }
    let r: ReplyIn = codec().deserialize(bytes).map_err(|e| e.to_string())?;
    Ok(r.partials)
}

/// How this instance takes part in global queries.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `cluster.instance_id`.
    pub id: String,
    /// `cluster.advertise_url`.
    pub url: String,
    /// Bound of each request to a peer (`cluster.peer_timeout`).
    pub peer_timeout: Duration,
    /// Entries not rewritten for longer are ignored (`cluster.member_expiry`, milliseconds).
    pub member_expiry: Millis,
    /// Bearer token sent to peers: this instance's first read (else admin) token.
    pub token: Option<String>,
}

/// Partials of every task the group could give.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Task, watermark (epoch ms), partial; in task order.
    pub partials: Vec<(TaskId, Millis, Arc<Aggregates>)>,
    /// Tasks whose owner is unknown, unreachable or no longer has them, ascending.
    pub missing: Vec<TaskId>,
}

/// This instance's view of the group: the directory and an HTTP client for peers.
pub struct Cluster {
    cfg: ClusterConfig,
    client: reqwest::Client,
    members: RwLock<Vec<Member>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.cfg.id)
            .field("url", &self.cfg.url)
            .finish()
    }
}

impl Cluster {
    /// A cluster view with an empty directory.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS backend).
    pub fn new(cfg: ClusterConfig) -> Result<Cluster, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(cfg.peer_timeout)
            .connect_timeout(cfg.peer_timeout)
            .no_proxy()
            .build()?;
        Ok(Cluster {
            cfg,
            client,
            members: RwLock::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Replaces the directory (every entry read from the store, this instance's included).
    pub fn set_members(&self, members: Vec<Member>) {
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
    }

    /// The directory as last read.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The live peer that owns `task` at `now` (epoch ms), if any.
    pub fn owner_of(&self, task: TaskId, now: Millis) -> Option<Member> {
        let members = self.members();
        owners(&members, &self.cfg.id, now, self.cfg.member_expiry)
            .get(&task)
            .map(|m| (*m).clone())
    }

    /// Every task's partial: the local ones of the tasks `rt` owns, the others from their
    /// owners, fetched in parallel, each request within `peer_timeout`. `on_request` is told
    /// each request's outcome (for metrics).
    pub async fn gather(
        &self,
        rt: &RuntimeHandle,
        now: Millis,
        on_request: &(dyn Fn(bool) + Sync),
    ) -> Gathered {
        let mut out = Gathered {
            partials: rt.publications(),
            missing: Vec::new(),
        };
        let total = rt.tasks();
        let local: std::collections::BTreeSet<TaskId> =
            out.partials.iter().map(|(t, _, _)| *t).collect();
        let members = self.members();
        let owners = owners(&members, &self.cfg.id, now, self.cfg.member_expiry);
        let mut asks: BTreeMap<&str, (&Member, Vec<TaskId>)> = BTreeMap::new();
        for t in (0..total).filter(|t| !local.contains(t)) {
            match owners.get(&t) {
                Some(m) => asks.entry(&m.id).or_insert((m, Vec::new())).1.push(t),
                None => out.missing.push(t),
            }
        }
        let fetches = asks.values().map(|(m, tasks)| async move {
            let got = self.fetch(m, tasks, total).await;
            (tasks, got)
        });
        for (asked, got) in futures_util::future::join_all(fetches).await {
            on_request(got.is_ok());
            match got {
                Ok(parts) => {
                    let mut parts: BTreeMap<TaskId, (Millis, Aggregates)> =
                        parts.into_iter().map(|(t, w, a)| (t, (w, a))).collect();
                    for &t in asked {
                        match parts.remove(&t) {
                            Some((w, a)) => out.partials.push((t, w, Arc::new(a))),
                            // The peer gave the task up since it last registered.
                            None => out.missing.push(t),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(tasks = ?asked, "partials of a peer missing: {e}");
                    out.missing.extend(asked);
                }
            }
        }
        out.partials.sort_by_key(|(t, _, _)| *t);
        out.missing.sort_unstable();
        out
    }

    fn request(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let req = self
            .client
            .get(url)
            .header(FORWARDED_BY, self.cfg.id.as_str());
        match &self.cfg.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// `GET <peer>/internal/v1/partials?tasks=…`, bounded by `peer_timeout` as a whole.
    async fn fetch(
        &self,
        peer: &Member,
        tasks: &[TaskId],
        total: u32,
    ) -> Result<Vec<(TaskId, Millis, Aggregates)>, PeerError> {
        let list: Vec<String> = tasks.iter().map(u32::to_string).collect();
        let url = format!(
            "{}/internal/v1/partials?tasks={}",
            peer.url.trim_end_matches('/'),
            list.join(",")
        );
        let parsed = reqwest::Url::parse(&url).map_err(|e| PeerError::Decode {
            url: url.clone(),
            why: format!("bad advertised URL: {e}"),
        })?;
        let timeout = self.cfg.peer_timeout;
        let call = async {
            let resp = self
                .request(parsed)
                .send()
                .await
                .map_err(|source| PeerError::Request {
                    url: url.clone(),
                    source,
                })?;
            if !resp.status().is_success() {
                return Err(PeerError::Status {
                    url: url.clone(),
                    status: resp.status(),
                });
            }
            resp.bytes().await.map_err(|source| PeerError::Request {
                url: url.clone(),
                source,
            })
        };
        let bytes =
            tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| PeerError::Timeout {
                    url: url.clone(),
                    timeout,
                })??;
        decode_partials(&bytes, total).map_err(|why| PeerError::Decode { url, why })
    }

    /// Forwards `GET <path>` (absolute path, percent-encoded segments given separately) to
    /// `peer`, returning its status, content type and body.
    ///
    /// # Errors
    /// [`PeerError`] when the peer cannot be reached or does not answer in time.
    pub async fn forward(
        &self,
        peer: &Member,
        segments: &[&str],
        query: Option<&str>,
    ) -> Result<(u16, Option<String>, Vec<u8>), PeerError> {
        let mut url = reqwest::Url::parse(&peer.url).map_err(|e| PeerError::Decode {
            url: peer.url.clone(),
            why: format!("bad advertised URL: {e}"),
        })?;
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        url.set_query(query);
        let shown = url.to_string();
        let timeout = self.cfg.peer_timeout;
        let call = async {
            let resp = self
                .request(url)
                .send()
                .await
                .map_err(|source| PeerError::Request {
                    url: shown.clone(),
                    source,
                })?;
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.bytes().await.map_err(|source| PeerError::Request {
                url: shown.clone(),
                source,
            })?;
            Ok((status, ctype, body.to_vec()))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| PeerError::Timeout {
                url: shown.clone(),
                timeout,
            })?
    }
}

/// Parses the `tasks` parameter of the internal endpoint: task ids below `total`, comma
/// separated, each at most once.
pub fn parse_tasks(text: &str, total: u32) -> Result<Vec<TaskId>, String> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let t: TaskId = part
            .trim()
            .parse()
            .map_err(|_| format!("`{part}` is not a task number"))?;
        if t >= total {
            let last = total.saturating_sub(1);
            return Err(format!("task {t} does not exist (tasks 0 to {last})"));
        }
        if out.contains(&t) {
            return Err(format!("task {t} is listed twice"));
        }
        out.push(t);
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, tasks: &[(TaskId, Millis)], updated_at: Millis) -> Member {
        Member {
            id: id.into(),
            url: format!("http://{id}:8080"),
            tasks: tasks.iter().map(|(t, _)| *t).collect(),
            task_count: tasks.len(),
            tasks_total: 6,
            assigned_at: tasks.iter().copied().collect(),
            updated_at,
        }
    }

    #[test]
    fn expired_members_and_this_instance_are_never_asked() {
        let ms = vec![
            member("a", &[(0, 1), (1, 1)], 10_000),
            member("b", &[(2, 1)], 3_000),
            member("me", &[(3, 1)], 10_000),
        ];
        let o = owners(&ms, "me", 10_500, 5_000);
        assert_eq!(o.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        // Exactly at the expiry the entry still counts; one millisecond later it does not.
        assert!(ms[1].is_live(8_000, 5_000));
        assert!(!ms[1].is_live(8_001, 5_000));
        assert_eq!(owners(&ms, "me", 8_000, 5_000)[&2].id, "b");
    }

    #[test]
    fn a_task_listed_twice_goes_to_whoever_took_it_last() {
        // `old` was paused: it still lists task 4, which `new` took over later.
        let ms = vec![
            member("old", &[(4, 1_000), (5, 1_000)], 9_000),
            member("new", &[(4, 7_000)], 8_000),
        ];
        let o = owners(&ms, "x", 9_500, 5_000);
        assert_eq!(o[&4].id, "new");
        assert_eq!(o[&5].id, "old");
    }

    #[test]
    fn partials_round_trip_exactly_and_other_task_counts_are_refused() {
        let mut a = Aggregates::new(&["persona".into()], 48 * 3_600_000, 90 * 86_400_000);
        a.counters.events = 42;
        let parts = vec![(3, 1_795_000_000_000, Arc::new(a.clone()))];
        let bytes = encode_partials(6, &parts).unwrap();
        let back = decode_partials(&bytes, 6).unwrap();
        assert_eq!(back, vec![(3, 1_795_000_000_000, a)]);
        assert!(decode_partials(&bytes, 7).unwrap_err().contains("6 tasks"));
        assert!(decode_partials(&bytes[..bytes.len() / 2], 6).is_err());
        assert!(decode_partials(b"", 6).is_err());
    }

    /// A peer of another wire version (version 2, before moments of truth, during a rolling
    /// upgrade) is refused by its version, whatever the shape of the rest of its reply.
    #[test]
    fn partials_of_another_wire_version_are_refused_by_name() {
        #[derive(Serialize)]
        struct Old {
            version: u32,
            tasks_total: u32,
            partials: Vec<(u32, i64, String)>,
        }
        let bytes = codec()
            .serialize(&Old {
                version: 2,
                tasks_total: 6,
                partials: vec![(3, 0, "an older shape".into())],
            })
            .unwrap();
        assert_eq!(
            decode_partials(&bytes, 6).unwrap_err(),
            "wire version 2, expected 3"
        );
    }

    #[test]
    fn task_lists_are_checked() {
        assert_eq!(parse_tasks("4,1,7", 8), Ok(vec![1, 4, 7]));
        assert_eq!(parse_tasks("", 8), Ok(vec![]));
        assert!(parse_tasks("8", 8).unwrap_err().contains("does not exist"));
        assert!(parse_tasks("1,1", 8).unwrap_err().contains("twice"));
        assert!(parse_tasks("x", 8).unwrap_err().contains("not a task"));
        assert!(
            parse_tasks("0", 0).is_err(),
            "no tasks: nothing to ask for, no panic"
        );
    }
}
