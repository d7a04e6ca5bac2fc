//! Membership of the consumer group through the state store, for global queries.
//!
//! This instance's entry `members/<id>.json` ([`journey_api::cluster::Member`]) is rewritten
//! as soon as its tasks change (a rebalance assigned or revoked partitions) and on every
//! heartbeat, and deleted on a clean shutdown; every heartbeat also reads all entries into the
//! API's directory, and deletes entries expired long ago (instances that were killed and
//! never came back under the same id). The store's API blocks, so this runs on a thread of
//! its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use journey_api::cluster::{member_path, Cluster, Member, MEMBERS_PREFIX};
use journey_core::time::Millis;
use journey_runtime::{RuntimeHandle, TaskId};
use journey_state::StateStore;

/// How often the owned tasks are compared with the last entry written.
const POLL: Duration = Duration::from_millis(50);
/// An entry this many member expiries old is deleted: its instance is gone for good.
const FORGET_AFTER_EXPIRIES: Millis = 30;

/// Starts the membership thread; it deletes the entry and ends once `stop` is set.
pub fn start(
    store: StateStore,
    cluster: Arc<Cluster>,
    rt: RuntimeHandle,
    heartbeat: Duration,
    stop: &'static AtomicBool,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("journeyd-members".into())
        .spawn(move || run(&store, &cluster, &rt, heartbeat, stop))
}

fn run(
    store: &StateStore,
    cluster: &Cluster,
    rt: &RuntimeHandle,
    heartbeat: Duration,
    stop: &AtomicBool,
) {
    let cfg = cluster.config();
    let path = member_path(&cfg.id);
    let mut assigned_at: BTreeMap<TaskId, Millis> = BTreeMap::new();
    let mut written: Option<Vec<TaskId>> = None;
    let mut next_beat = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let owned = rt.owned_tasks();
        if written.as_ref() != Some(&owned) || Instant::now() >= next_beat {
            next_beat = Instant::now() + heartbeat;
            let now = crate::now_ms();
            assigned_at.retain(|t, _| owned.contains(t));
            for &t in &owned {
                assigned_at.entry(t).or_insert(now);
            }
            let entry = Member {
                id: cfg.id.clone(),
                url: cfg.url.clone(),
                task_count: owned.len(),
                tasks: owned.clone(),
                tasks_total: rt.tasks(),
                assigned_at: assigned_at.clone(),
                updated_at: now,
            };
            match serde_json::to_vec(&entry).map(|bytes| store.put(&path, bytes)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("cannot register this instance in the state store: {e}")
                }
                Err(e) => tracing::warn!("cannot encode this instance's membership entry: {e}"),
            }
            // Retried on the next heartbeat when the write failed.
            written = Some(owned);
            let forget =
                now.saturating_sub(cfg.member_expiry.saturating_mul(FORGET_AFTER_EXPIRIES));
            match read_members(store, forget) {
                Ok(members) => cluster.set_members(members),
                Err(e) => {
                    tracing::warn!("cannot read the group's members from the state store: {e}")
                }
            }
        }
        std::thread::sleep(POLL);
    }
    if let Err(e) = store.delete(&path) {
        tracing::warn!("cannot remove this instance's membership entry: {e}");
    }
}

/// Every readable entry under `members/`; a damaged one is skipped (its writer rewrites it),
/// one last written before `forget` (epoch ms) is deleted.
fn read_members(
    store: &StateStore,
    forget: Millis,
) -> Result<Vec<Member>, journey_state::StateError> {
    let mut out = Vec::new();
    for l in store.list(MEMBERS_PREFIX)? {
        if !l.path.ends_with(".json") {
            continue;
        }
        let Some(bytes) = store.get(&l.path)? else {
            continue;
        };
        match serde_json::from_slice::<Member>(&bytes) {
            Ok(m) if m.updated_at < forget => {
                tracing::info!(id = %m.id, "removing the membership entry of an instance gone long ago");
                store.delete(&l.path)?;
            }
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::debug!(path = %l.path, "skipping an unreadable membership entry: {e}")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, updated_at: Millis) -> Vec<u8> {
        serde_json::to_vec(&Member {
            id: id.into(),
            url: format!("http://{id}:8080"),
            tasks: vec![1],
            task_count: 1,
            tasks_total: 4,
            assigned_at: [(1, 0)].into_iter().collect(),
            updated_at,
        })
        .unwrap()
    }

    #[test]
    fn entries_are_read_and_those_gone_long_ago_removed() {
        let store = StateStore::in_memory().unwrap();
        store.put("members/a.json", entry("a", 5_000)).unwrap();
        store.put("members/old.json", entry("old", 999)).unwrap();
        store.put("members/broken.json", b"{".to_vec()).unwrap();
        store.put("members/notes.txt", b"x".to_vec()).unwrap();
        let members = read_members(&store, 1_000).unwrap();
        assert_eq!(
            members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(store.get("members/old.json").unwrap(), None);
        assert!(store.exists("members/broken.json").unwrap());
    }
}
