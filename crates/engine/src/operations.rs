//! Operations: every mutating request's work runs as a task hvd owns, not as part of the HTTP
//! request that asked for it. A client that disconnects, is killed or times out only stops
//! watching; the work finishes (or rolls itself back) all the same. Each operation has an id,
//! a kind, a target, a status and an outcome, and is listed while it runs and for a while
//! after (`hv operation list|show|cancel`). Operations whose work can stop at any await
//! without leaving anything half-done (waits on a guest) can be cancelled; hvd stopping
//! cancels those and waits, bounded, for the others.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{OperationInfo, OperationStatus};
use tokio::sync::watch;

use crate::error::{EngineError, Result};
use crate::events::{object_change, EventLog};
use crate::now_ms;

/// Finished operations kept for `hv operation list|show`.
const KEEP_FINISHED: usize = 256;

struct Entry {
    info: OperationInfo,
    /// Set to true to cancel (cancellable operations only).
    cancel: watch::Sender<bool>,
}

/// The registry of running and recent operations.
#[derive(Clone, Default)]
pub struct Operations {
    inner: Arc<Mutex<Inner>>,
    /// Counts running operations, so a stopping hvd can wait for them.
    running: Arc<watch::Sender<usize>>,
    /// Where starts, progress and ends are published.
    events: EventLog,
}

#[derive(Default)]
struct Inner {
    next: u64,
    ops: BTreeMap<u64, Entry>,
}

/// Whether an operation's future may be dropped at any await (then it can be cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Stopping midway would leave something half-done: it always runs to its end.
    Never,
    /// Only waits (on a guest, a timeout) remain after any await: dropping it is safe.
    AtAnyAwait,
    /// The work watches [`cancel_signal`] and undoes itself (a migration).
    Cooperative,
}

impl Operations {
    /// A registry publishing its operations' news to `events`.
    pub fn with_events(events: EventLog) -> Operations {
        Operations {
            events,
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` as an operation in its own task and waits for its outcome. Dropping the
    /// returned future (the client went away) does not stop the work.
    pub async fn run<T, F>(&self, kind: &str, target: String, cancel: Cancel, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.run_then(kind, target, cancel, work, |_, _| {}).await
    }

    /// Like [`Operations::run`]; `done` gets the operation's id and outcome in the operation's
    /// own task when it finishes (for the audit log), even if nobody waits for it any more.
    pub async fn run_then<T, F, D>(
        &self,
        kind: &str,
        target: String,
        cancel: Cancel,
        work: F,
        done: D,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
        D: FnOnce(u64, std::result::Result<(), &EngineError>) + Send + 'static,
    {
        let (tx, mut rx) = watch::channel(false);
        let id = {
            let mut g = self.lock();
            g.next += 1;
            let id = g.next;
            g.ops.insert(
                id,
                Entry {
                    info: OperationInfo {
                        id,
                        kind: kind.to_string(),
                        target: target.clone(),
                        status: OperationStatus::Running,
                        created_ms: now_ms(),
                        finished_ms: None,
                        cancellable: cancel != Cancel::Never,
                        progress_percent: None,
                        migration: None,
                        error: None,
                    },
                    cancel: tx,
                },
            );
            if let Some(e) = g.ops.get(&id) {
                self.events.operation(&e.info);
            }
            id
        };
        self.running.send_modify(|n| *n += 1);
        let ops = self.clone();
        let kind = kind.to_string();
        let progress = Progress {
            ops: self.clone(),
            id,
        };
        let task = CURRENT.scope(progress, async move {
            let result = match cancel {
                Cancel::Never | Cancel::Cooperative => work.await,
                Cancel::AtAnyAwait => tokio::select! {
                    r = work => r,
                    _ = rx.wait_for(|c| *c) => Err(EngineError::Cancelled(format!(
                        "operation {id} ({kind} of {target}) was cancelled; what it had done stays, nothing is half-done"
                    ))),
                },
            };
            ops.finish(id, &result);
            done(id, result.as_ref().map(|_| ()));
            result
        });
        tokio::spawn(task)
            .await
            .map_err(|e| EngineError::Internal(format!("operation {id} failed: {e}")))?
    }

    fn finish<T>(&self, id: u64, result: &Result<T>) {
        {
            let mut g = self.lock();
            if let Some(e) = g.ops.get_mut(&id) {
                e.info.finished_ms = Some(now_ms());
                match result {
                    Ok(_) => e.info.status = OperationStatus::Succeeded,
                    Err(err) => {
                        e.info.status = if matches!(err, EngineError::Cancelled(_)) {
                            OperationStatus::Cancelled
                        } else {
                            OperationStatus::Failed
                        };
                        e.info.error = Some(err.to_string());
                    }
                }
                if e.info.status == OperationStatus::Succeeded {
                    if let Some(kind) = object_change(&e.info.kind, &e.info.target) {
                        self.events.publish("", kind);
                    }
                }
                self.events.operation(&e.info);
            }
            let finished: Vec<u64> = g
                .ops
                .iter()
                .filter(|(_, e)| e.info.status != OperationStatus::Running)
                .map(|(id, _)| *id)
                .collect();
            for old in finished
                .iter()
                .take(finished.len().saturating_sub(KEEP_FINISHED))
            {
                g.ops.remove(old);
            }
        }
        self.running.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Running operations first, then finished ones, newest first.
    pub fn list(&self) -> Vec<OperationInfo> {
        let mut v: Vec<OperationInfo> = self.lock().ops.values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|o| {
            (
                o.status != OperationStatus::Running,
                std::cmp::Reverse(o.id),
            )
        });
        v
    }

    pub fn get(&self, id: u64) -> Result<OperationInfo> {
        self.lock()
            .ops
            .get(&id)
            .map(|e| e.info.clone())
            .ok_or_else(|| not_found(id))
    }

    /// Cancels a running, cancellable operation.
    pub fn cancel(&self, id: u64) -> Result<OperationInfo> {
        let g = self.lock();
        let e = g.ops.get(&id).ok_or_else(|| not_found(id))?;
        if e.info.status != OperationStatus::Running {
            return Err(EngineError::Invalid(format!(
                "operation {id} has already finished ({})",
                e.info.status
            )));
        }
        if !e.info.cancellable {
            return Err(EngineError::Invalid(format!(
                "operation {id} ({}) cannot be cancelled: stopping it midway would leave it half-done; it finishes by itself",
                e.info.kind
            )));
        }
        e.cancel.send_replace(true);
        Ok(e.info.clone())
    }

    /// For a stopping hvd: cancels what can be cancelled and waits, at most `limit`, for the
    /// rest to finish. Returns how many were still running.
    pub async fn drain(&self, limit: Duration) -> usize {
        for e in self.lock().ops.values() {
            if e.info.cancellable && e.info.status == OperationStatus::Running {
                e.cancel.send_replace(true);
            }
        }
        let mut rx = self.running.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
        let left = *rx.borrow();
        left
    }
}

tokio::task_local! {
    /// The operation the current task works for.
    static CURRENT: Progress;
}

/// Where work reports how far it is.
#[derive(Clone)]
struct Progress {
    ops: Operations,
    id: u64,
}

/// Reports the progress (0 to 100) of the operation this task works for, if any.
pub(crate) fn report_progress(percent: f64) {
    let _ = CURRENT.try_with(|p| {
        if let Some(e) = p.ops.lock().ops.get_mut(&p.id) {
            let percent = percent.clamp(0.0, 100.0);
            let before = e.info.progress_percent.map(|b| b.floor());
            e.info.progress_percent = Some(percent);
            // Whole percents only: a copy reports far more often than anyone reads.
            if before != Some(percent.floor()) {
                p.ops.events.operation(&e.info);
            }
        }
    });
}

/// For [`Cancel::Cooperative`] work: turns true when the operation is cancelled.
pub(crate) fn cancel_signal() -> Option<watch::Receiver<bool>> {
    CURRENT
        .try_with(|p| p.ops.lock().ops.get(&p.id).map(|e| e.cancel.subscribe()))
        .ok()
        .flatten()
}

/// Publishes a migration's progress on the operation this task works for, if any.
pub(crate) fn report_migration(m: &api::MigrationProgress) {
    let _ = CURRENT.try_with(|p| {
        if let Some(e) = p.ops.lock().ops.get_mut(&p.id) {
            e.info.migration = Some(m.clone());
            p.ops.events.operation(&e.info);
        }
    });
}

fn not_found(id: u64) -> EngineError {
    EngineError::NotFound(format!(
        "operation {id} does not exist (hv operation list shows the running and recent ones)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_outlives_the_caller_and_cancel_stops_only_waits() {
        let ops = Operations::default();
        // The caller gives up at once; the work still ends and is recorded.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let run = ops.run("demo", "vm/x".into(), Cancel::Never, async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
            Ok(7)
        });
        drop(tokio::time::timeout(Duration::from_millis(1), run).await);
        done_rx.await.unwrap();
        assert_eq!(ops.drain(Duration::from_secs(5)).await, 0);
        let l = ops.list();
        assert_eq!(
            (l[0].kind.as_str(), l[0].status),
            ("demo", OperationStatus::Succeeded)
        );
        assert!(ops.cancel(l[0].id).is_err(), "finished");

        let o2 = ops.clone();
        let waiting = tokio::spawn(async move {
            o2.run("wait", "vm/x".into(), Cancel::AtAnyAwait, async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await
        });
        let id = loop {
            if let Some(o) = ops
                .list()
                .into_iter()
                .find(|o| o.status == OperationStatus::Running)
            {
                break o.id;
            }
            tokio::task::yield_now().await;
        };
        ops.cancel(id).unwrap();
        let r = waiting.await.unwrap();
        assert!(matches!(r, Err(EngineError::Cancelled(_))), "{r:?}");
        assert_eq!(ops.get(id).unwrap().status, OperationStatus::Cancelled);
        assert!(ops.get(9999).is_err());
    }
}
