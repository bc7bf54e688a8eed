//! The event log: one numbered stream of everything that happens to VMs, operations, networks,
//! pools, volumes, snapshots and console control. Every event gets the next id (the first id
//! of a run is hvd's start time in ms × 1000, so ids also grow across restarts) and is kept in
//! a bounded ring and broadcast to followers. A follower that resumes with `since` subscribes
//! and reads the ring under one lock, so it gets every retained event after `since` once, in
//! order, then the live ones; a follower that falls behind the broadcast catches up from the
//! ring, and is told (a `gap` record) only when the ring no longer holds what it missed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use api::{Change, Event, EventKind, OperationInfo};
use tokio::sync::broadcast;

use crate::now_ms;

/// Events kept for followers that resume with `since`.
pub const RETAINED: usize = 10_000;

/// The log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Event>,
    capacity: usize,
}

struct Ring {
    next: u64,
    events: VecDeque<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(RETAINED, now_ms().saturating_mul(1000).max(1))
    }
}

impl EventLog {
    /// A log keeping `capacity` events whose first id is `first`.
    pub fn new(capacity: usize, first: u64) -> EventLog {
        let capacity = capacity.max(1);
        EventLog {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    next: first.max(1),
                    events: VecDeque::with_capacity(capacity.min(1024)),
                }),
                tx: broadcast::channel(1024).0,
                capacity,
            }),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event about `vm` (empty: about no VM) and hands it to the followers.
    pub fn publish(&self, vm: &str, kind: EventKind) -> u64 {
        let mut g = self.ring();
        let id = g.next;
        g.next += 1;
        let ev = Event {
            id,
            time_ms: now_ms(),
            vm: vm.to_string(),
            kind,
        };
        if g.events.len() >= self.inner.capacity {
            g.events.pop_front();
        }
        g.events.push_back(ev.clone());
        // Sent under the lock: followers see the events in id order.
        let _ = self.inner.tx.send(ev);
        id
    }

    /// An operation's news (start, progress, end), about its target's VM if it has one.
    pub(crate) fn operation(&self, info: &OperationInfo) {
        let vm = info.target.strip_prefix("vm/").unwrap_or("");
        self.publish(
            vm,
            EventKind::Operation {
                operation: info.clone(),
            },
        );
    }

    /// Follows the log: with `since`, the retained events after it first (0: all retained).
    pub fn follow(&self, since: Option<u64>) -> Follower {
        let g = self.ring();
        let rx = self.inner.tx.subscribe();
        let mut backlog = VecDeque::new();
        if let Some(since) = since {
            let oldest = g.events.front().map_or(g.next, |e| e.id);
            if since != 0 && since.saturating_add(1) < oldest {
                backlog.push_back(gap(oldest));
            }
            backlog.extend(g.events.iter().filter(|e| e.id > since).cloned());
        }
        // The receiver only gets events from `next` on: the backlog holds all before.
        let last = g.next - 1;
        drop(g);
        Follower {
            log: self.clone(),
            rx,
            backlog,
            last,
        }
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> u64 {
        self.ring().next
    }
}

fn gap(oldest: u64) -> Event {
    Event {
        id: 0,
        time_ms: now_ms(),
        vm: String::new(),
        kind: EventKind::Gap { oldest },
    }
}

/// One follower of the log.
pub struct Follower {
    log: EventLog,
    rx: broadcast::Receiver<Event>,
    backlog: VecDeque<Event>,
    /// The id of the last event handed out (or skipped as already replayed).
    last: u64,
}

impl Follower {
    /// The next event, in id order without gaps (a `gap` record says when some were lost);
    /// `None` when the log is gone.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                if ev.id != 0 {
                    self.last = ev.id;
                }
                return Some(ev);
            }
            match self.rx.recv().await {
                // Already replayed from the ring.
                Ok(ev) if ev.id <= self.last => continue,
                Ok(ev) => {
                    self.last = ev.id;
                    return Some(ev);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// After falling behind the broadcast: what the ring still holds after `last`.
    fn catch_up(&mut self) {
        let g = self.log.ring();
        // Whatever the receiver still holds is older than or part of the ring's copy.
        self.rx = self.log.inner.tx.subscribe();
        let oldest = g.events.front().map_or(g.next, |e| e.id);
        if self.last.saturating_add(1) < oldest {
            self.backlog.push_back(gap(oldest));
        }
        let last = self.last;
        self.backlog
            .extend(g.events.iter().filter(|e| e.id > last).cloned());
    }
}

/// The change an operation that succeeded made to a network, pool or volume, as an event (the
/// operation's own events say the rest).
pub(crate) fn object_change(kind: &str, target: &str) -> Option<EventKind> {
    let change = match kind {
        "net-create" => Change::Defined,
        "net-start" => Change::Started,
        "net-stop" => Change::Stopped,
        "net-delete" => Change::Undefined,
        "pool-delete" | "vol-delete" => Change::Deleted,
        "pool-undefine" => Change::Undefined,
        "vol-create" => Change::Created,
        "vol-import" => Change::Imported,
        "vol-clone" => Change::Cloned,
        "vol-resize" => Change::Resized,
        "vol-upload" => Change::Uploaded,
        _ => return None,
    };
    let (class, rest) = target.split_once('/')?;
    match class {
        "network" => Some(EventKind::Network {
            network: rest.to_string(),
            change,
        }),
        "pool" => Some(EventKind::Pool {
            pool: rest.to_string(),
            change,
        }),
        "volume" => {
            let (pool, volume) = rest.split_once('/')?;
            Some(EventKind::Volume {
                pool: pool.to_string(),
                volume: volume.to_string(),
                change,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(evs: &[Event]) -> Vec<u64> {
        evs.iter().map(|e| e.id).collect()
    }

    async fn take(f: &mut Follower, n: usize) -> Vec<Event> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(f.next().await.expect("log alive"));
        }
        v
    }

    #[tokio::test]
    async fn resuming_replays_the_missed_events_once_then_live_ones() {
        let log = EventLog::new(100, 10);
        for _ in 0..5 {
            log.publish("a", EventKind::Updated);
        }
        // Ids 10..=14. A follower that saw 11 gets 12, 13, 14, then 15 live.
        let mut f = log.follow(Some(11));
        log.publish("a", EventKind::Reset);
        let got = take(&mut f, 4).await;
        assert_eq!(ids(&got), vec![12, 13, 14, 15]);
        assert!(matches!(got[3].kind, EventKind::Reset));
        // Without since: only live events.
        let mut live = log.follow(None);
        log.publish("b", EventKind::Updated);
        assert_eq!(live.next().await.unwrap().id, 16);
        // since=0: everything retained, no gap record.
        let mut all = log.follow(Some(0));
        assert_eq!(ids(&take(&mut all, 7).await), (10..=16).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn resuming_before_the_window_starts_with_a_gap_record() {
        let log = EventLog::new(3, 1);
        for _ in 0..6 {
            log.publish("a", EventKind::Updated);
        }
        // Retained: 4, 5, 6.
        let mut f = log.follow(Some(1));
        let got = take(&mut f, 4).await;
        assert!(matches!(got[0].kind, EventKind::Gap { oldest: 4 }));
        assert_eq!(ids(&got[1..]), vec![4, 5, 6]);
        // Exactly at the window's edge: no gap.
        let mut f = log.follow(Some(3));
        assert_eq!(f.next().await.unwrap().id, 4);
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_catches_up_from_the_ring() {
        let log = EventLog::new(5000, 1);
        let mut f = log.follow(None);
        // More than the broadcast channel holds (1024), fewer than the ring.
        for _ in 0..3000 {
            log.publish("a", EventKind::Updated);
        }
        let got = take(&mut f, 3000).await;
        assert_eq!(ids(&got), (1..=3000).collect::<Vec<_>>());
        // Falling behind the ring too: a gap record, then what is retained.
        let log = EventLog::new(1500, 1);
        let mut f = log.follow(None);
        for _ in 0..3000 {
            log.publish("a", EventKind::Updated);
        }
        let first = f.next().await.unwrap();
        assert!(
            matches!(first.kind, EventKind::Gap { oldest: 1501 }),
            "{first:?}"
        );
        assert_eq!(f.next().await.unwrap().id, 1501);
    }

    #[test]
    fn successful_operations_name_the_object_they_changed() {
        assert!(matches!(
            object_change("net-start", "network/lan"),
            Some(EventKind::Network { network, change: Change::Started }) if network == "lan"
        ));
        assert!(matches!(
            object_change("vol-upload", "volume/default/x.iso"),
            Some(EventKind::Volume { pool, volume, change: Change::Uploaded })
                if pool == "default" && volume == "x.iso"
        ));
        assert!(object_change("start", "vm/a").is_none());
        assert!(object_change("vol-create", "volume/nopool").is_none());
    }
}
