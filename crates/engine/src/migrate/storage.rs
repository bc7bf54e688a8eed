//! `--copy-storage`: the QMP sequences that copy a running VM's disks to the target while it
//! keeps running, before its RAM moves (the way libvirt does it).
//!
//! - Target: the incoming QEMU serves its new, empty disks over NBD on a unix socket in its
//!   run dir (`nbd-server-start`, one writable `block-export-add` per disk, named after the
//!   disk target). hvd tunnels that socket to the source as the `nbd` channel.
//! - Source: per disk a `blockdev-add` of driver `nbd` (a unix socket hvd listens on and
//!   tunnels) and a `blockdev-mirror` (sync `full`) from the disk's top node into it. Once every
//!   job is ready (events, not polling) writes keep being mirrored while RAM migrates. When
//!   RAM migration has completed (the source is paused), `block-job-cancel` of a ready mirror
//!   leaves the target with a consistent copy and the source on its own disks (unlike
//!   `block-job-complete`, which would pivot the source onto the NBD node).
//! - Failure: the jobs are force-cancelled and the NBD nodes removed; the source keeps running
//!   on its own disks, untouched.
//!
//! The whole chain of a disk (`sync: full`) lands in one flat image on the target.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use qmp::{Qmp, QmpEvent};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::error::{EngineError, Result};

fn qemu(e: qmp::QmpError) -> EngineError {
    EngineError::Qemu(e.to_string())
}

/// How long cancelling a job may take before we give up on it.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the progress callback gets fresh figures while mirrors catch up.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The block job of a disk's mirror.
pub fn job_id(target: &str) -> String {
    format!("hv-mig-{target}")
}

/// The NBD client node on the source for a disk.
pub fn nbd_node(target: &str) -> String {
    format!("hv-mig-nbd-{target}")
}

/// The block export on the target for a disk.
pub fn export_id(target: &str) -> String {
    format!("hv-mig-exp-{target}")
}

/// One disk to copy: its target name (`vda`, also the NBD export name) and the block node
/// QEMU uses for it now (the top of its chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCopy {
    pub target: String,
    pub node: String,
}

/// Bytes of all mirrors together, from `query-block-jobs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskProgress {
    pub total: u64,
    pub transferred: u64,
}

/// The top block node of disk `target` in a `query-block` answer.
pub fn top_node(query_block: &Value, target: &str) -> Option<String> {
    let prefix = format!("/machine/peripheral/{target}/");
    query_block
        .as_array()?
        .iter()
        .find(|b| {
            b["qdev"]
                .as_str()
                .is_some_and(|q| q == target || q.starts_with(&prefix))
        })
        .and_then(|b| b["inserted"]["node-name"].as_str().map(str::to_string))
}

/// The disks' top nodes in the running QEMU, in the order given.
pub async fn disk_nodes(qmp: &Qmp, targets: &[String]) -> Result<Vec<DiskCopy>> {
    let blocks = qmp.execute("query-block", None).await.map_err(qemu)?;
    targets
        .iter()
        .map(|t| {
            top_node(&blocks, t)
                .map(|node| DiskCopy {
                    target: t.clone(),
                    node,
                })
                .ok_or_else(|| EngineError::Qemu(format!("QEMU has no disk {t}")))
        })
        .collect()
}

// ---- target ---------------------------------------------------------------------------------

/// Serves each disk's node over NBD on `socket`, writable, named after the disk target. On
/// failure nothing stays exported.
pub async fn export_start(qmp: &Qmp, socket: &Path, disks: &[DiskCopy]) -> Result<()> {
    qmp.execute(
        "nbd-server-start",
        // `nbd-server-start` still takes the legacy address form (`data` wraps the fields).
        Some(json!({ "addr": { "type": "unix", "data": { "path": socket.to_string_lossy() } } })),
    )
    .await
    .map_err(|e| EngineError::Qemu(format!("the target QEMU cannot serve its disks: {e}")))?;
    for (i, d) in disks.iter().enumerate() {
        let added = qmp
            .execute(
                "block-export-add",
                Some(json!({
                    "type": "nbd", "id": export_id(&d.target), "node-name": d.node,
                    "name": d.target, "writable": true,
                })),
            )
            .await;
        if let Err(e) = added {
            let done: Vec<String> = disks[..i].iter().map(|d| d.target.clone()).collect();
            export_stop(qmp, &done).await;
            return Err(EngineError::Qemu(format!(
                "the target QEMU cannot export disk {}: {e}",
                d.target
            )));
        }
    }
    Ok(())
}

/// Ends the exports and the NBD server (best effort: QEMU may be gone already).
pub async fn export_stop(qmp: &Qmp, targets: &[String]) {
    for t in targets {
        if let Err(e) = qmp
            .execute(
                "block-export-del",
                Some(json!({ "id": export_id(t), "mode": "hard" })),
            )
            .await
        {
            tracing::debug!(disk = %t, error = %e, "block-export-del");
        }
    }
    if let Err(e) = qmp.execute("nbd-server-stop", None).await {
        tracing::debug!(error = %e, "nbd-server-stop");
    }
}

// ---- source ---------------------------------------------------------------------------------

/// Connects an NBD node per disk to `socket` and starts its mirror (`speed` in bytes per
/// second, none = unlimited). Subscribe `events` before calling. On failure whatever started
/// is cancelled and removed again.
pub async fn mirror_start(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
    socket: &Path,
    disks: &[DiskCopy],
    speed: Option<u64>,
) -> Result<()> {
    let mut started: Vec<String> = Vec::new();
    let mut nodes: Vec<String> = Vec::new();
    let result = async {
        for d in disks {
            let node = nbd_node(&d.target);
            qmp.execute(
                "blockdev-add",
                Some(json!({
                    "driver": "nbd", "node-name": node, "export": d.target,
                    "server": { "type": "unix", "path": socket.to_string_lossy() },
                })),
            )
            .await
            .map_err(|e| {
                EngineError::Qemu(format!(
                    "cannot reach the target's copy of disk {}: {e}",
                    d.target
                ))
            })?;
            nodes.push(d.target.clone());
            let mut args = json!({
                "job-id": job_id(&d.target), "device": d.node, "target": node,
                "sync": "full", "auto-finalize": true, "auto-dismiss": false,
            });
            if let Some(s) = speed {
                args["speed"] = json!(s);
            }
            qmp.execute("blockdev-mirror", Some(args))
                .await
                .map_err(|e| {
                    EngineError::Qemu(format!("cannot start copying disk {}: {e}", d.target))
                })?;
            started.push(d.target.clone());
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        abort_jobs(qmp, events, &started).await;
        remove_nodes(qmp, &nodes).await;
    }
    result
}

/// The summed length and offset of the mirrors of `targets`.
pub async fn progress(qmp: &Qmp, targets: &[String]) -> Result<DiskProgress> {
    let jobs = qmp.execute("query-block-jobs", None).await.map_err(qemu)?;
    let ids: BTreeSet<String> = targets.iter().map(|t| job_id(t)).collect();
    let mut p = DiskProgress::default();
    for j in jobs.as_array().into_iter().flatten() {
        if j["device"].as_str().is_some_and(|d| ids.contains(d)) {
            p.total += j["len"].as_u64().unwrap_or(0);
            p.transferred += j["offset"].as_u64().unwrap_or(0);
        }
    }
    Ok(p)
}

/// What a job event says about one of our mirrors.
#[derive(Debug, PartialEq, Eq)]
enum JobNews {
    Ready(String),
    /// The job stopped (failed or was cancelled) before we asked it to.
    Ended(String),
    Other,
}

fn job_news(ev: &QmpEvent, ids: &BTreeMap<String, String>) -> JobNews {
    let job = match ev.event.as_str() {
        "JOB_STATUS_CHANGE" => ev.data["id"].as_str(),
        "BLOCK_JOB_READY" | "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_ERROR" => {
            ev.data["device"].as_str()
        }
        _ => None,
    };
    let Some(target) = job.and_then(|j| ids.get(j)) else {
        return JobNews::Other;
    };
    let status = ev.data["status"].as_str().unwrap_or_default();
    match ev.event.as_str() {
        "BLOCK_JOB_READY" => JobNews::Ready(target.clone()),
        "JOB_STATUS_CHANGE" if status == "ready" => JobNews::Ready(target.clone()),
        "JOB_STATUS_CHANGE" if matches!(status, "aborting" | "concluded" | "null") => {
            JobNews::Ended(target.clone())
        }
        "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" => JobNews::Ended(target.clone()),
        _ => JobNews::Other,
    }
}

/// The error QEMU recorded for a job, if it has one (`query-jobs`).
async fn job_error(qmp: &Qmp, id: &str) -> Option<String> {
    let jobs = qmp.execute("query-jobs", None).await.ok()?;
    jobs.as_array()?
        .iter()
        .find(|j| j["id"] == json!(id))
        .and_then(|j| j["error"].as_str().map(str::to_string))
}

/// Waits until every mirror is ready (the target holds a copy and writes are mirrored),
/// calling `on_progress` now and then. A job that ends first fails the wait with QEMU's
/// reason; the caller then calls [`mirror_abort`]. Dropping the future is safe (cancel).
pub async fn mirror_wait_ready(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
    targets: &[String],
    mut on_progress: impl FnMut(DiskProgress),
) -> Result<()> {
    use broadcast::error::RecvError;
    let ids: BTreeMap<String, String> = targets.iter().map(|t| (job_id(t), t.clone())).collect();
    let mut waiting: BTreeSet<String> = targets.iter().cloned().collect();
    // A job may have become ready before we listened: ask once, then follow events.
    let jobs = qmp.execute("query-block-jobs", None).await.map_err(qemu)?;
    for j in jobs.as_array().into_iter().flatten() {
        if j["ready"] == json!(true) {
            if let Some(t) = j["device"].as_str().and_then(|d| ids.get(d)) {
                waiting.remove(t);
            }
        }
    }
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    while !waiting.is_empty() {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => match job_news(&ev, &ids) {
                    JobNews::Ready(t) => { waiting.remove(&t); }
                    JobNews::Ended(t) if waiting.contains(&t) => {
                        let why = job_error(qmp, &job_id(&t)).await
                            .unwrap_or_else(|| "the job ended".into());
                        return Err(EngineError::Qemu(format!(
                            "copying disk {t} to the target failed: {why}"
                        )));
                    }
                    _ => {}
                },
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "mirror wait fell behind on QMP events");
                    // Catch up from QEMU's own view.
                    let jobs = qmp.execute("query-block-jobs", None).await.map_err(qemu)?;
                    for j in jobs.as_array().into_iter().flatten() {
                        if j["ready"] == json!(true) {
                            if let Some(t) = j["device"].as_str().and_then(|d| ids.get(d)) {
                                waiting.remove(t);
                            }
                        }
                    }
                }
                Err(RecvError::Closed) => {
                    return Err(EngineError::Qemu(
                        "QEMU ended while its disks were being copied".into(),
                    ))
                }
            },
            _ = tick.tick() => on_progress(progress(qmp, targets).await?),
        }
    }
    on_progress(progress(qmp, targets).await?);
    Ok(())
}

/// After RAM migration completed (the source paused): stops each ready mirror so the target
/// keeps a consistent copy and the source stays on its own disks, then removes the NBD nodes.
/// An error means a copy may be incomplete: the caller must not hand the VM over.
pub async fn mirror_finish(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
    targets: &[String],
) -> Result<()> {
    let mut failed: Option<String> = None;
    let jobs = qmp.execute("query-block-jobs", None).await.map_err(qemu)?;
    for t in targets {
        let ready = jobs
            .as_array()
            .into_iter()
            .flatten()
            .any(|j| j["device"] == json!(job_id(t)) && j["ready"] == json!(true));
        if !ready && failed.is_none() {
            failed = Some(format!("the copy of disk {t} was not in sync"));
        }
    }
    if failed.is_none() {
        for t in targets {
            if let Err(e) = qmp
                .execute("block-job-cancel", Some(json!({ "device": job_id(t) })))
                .await
            {
                failed.get_or_insert(format!("cannot finish the copy of disk {t}: {e}"));
            }
        }
        for t in targets {
            match wait_concluded(qmp, events, t).await {
                Ok(None) => {}
                Ok(Some(why)) => {
                    failed.get_or_insert(format!("the copy of disk {t} failed: {why}"));
                }
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                }
            }
        }
    }
    if failed.is_some() {
        abort_jobs(qmp, events, targets).await;
    } else {
        for t in targets {
            let _ = qmp
                .execute("job-dismiss", Some(json!({ "id": job_id(t) })))
                .await;
        }
    }
    remove_nodes(qmp, targets).await;
    match failed {
        None => Ok(()),
        Some(why) => Err(EngineError::Qemu(why)),
    }
}

/// Undoes a copy: force-cancels the mirrors of `targets` and removes their NBD nodes (best
/// effort). The source keeps running on its own disks.
pub async fn mirror_abort(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
    targets: &[String],
) {
    abort_jobs(qmp, events, targets).await;
    remove_nodes(qmp, targets).await;
}

/// Waits for the job of `target` to conclude; its error, if any. Gone already = concluded.
async fn wait_concluded(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
    target: &str,
) -> Result<Option<String>> {
    let id = job_id(target);
    let status = |jobs: &Value| -> Option<String> {
        jobs.as_array()?
            .iter()
            .find(|j| j["id"] == json!(id))
            .and_then(|j| j["status"].as_str().map(str::to_string))
    };
    let jobs = qmp.execute("query-jobs", None).await.map_err(qemu)?;
    match status(&jobs).as_deref() {
        None => return Ok(None),
        Some("concluded") => return Ok(job_error(qmp, &id).await),
        _ => {}
    }
    let concluded = crate::vm::Vm::wait_qmp_event(events, CANCEL_TIMEOUT, |ev| {
        ev.event == "JOB_STATUS_CHANGE"
            && ev.data["id"] == json!(id)
            && matches!(ev.data["status"].as_str(), Some("concluded" | "null"))
    })
    .await?;
    if !concluded {
        // The event may have come between query and subscribe in a lagged stream: ask again.
        let jobs = qmp.execute("query-jobs", None).await.map_err(qemu)?;
        if !matches!(status(&jobs).as_deref(), None | Some("concluded")) {
            return Err(EngineError::Timeout(format!(
                "the copy job of disk {target} did not stop within {} s",
                CANCEL_TIMEOUT.as_secs()
            )));
        }
    }
    Ok(job_error(qmp, &id).await)
}

async fn abort_jobs(qmp: &Qmp, events: &mut broadcast::Receiver<QmpEvent>, targets: &[String]) {
    for t in targets {
        let _ = qmp
            .execute(
                "block-job-cancel",
                Some(json!({ "device": job_id(t), "force": true })),
            )
            .await;
    }
    for t in targets {
        if let Err(e) = wait_concluded(qmp, events, t).await {
            tracing::warn!(disk = %t, error = %e, "mirror did not stop");
        }
        let _ = qmp
            .execute("job-dismiss", Some(json!({ "id": job_id(t) })))
            .await;
    }
}

async fn remove_nodes(qmp: &Qmp, targets: &[String]) {
    for t in targets {
        if let Err(e) = qmp
            .execute("blockdev-del", Some(json!({ "node-name": nbd_node(t) })))
            .await
        {
            tracing::debug!(disk = %t, error = %e, "blockdev-del of the NBD node");
        }
    }
}

#[cfg(test)]
#[path = "tests/storage.rs"]
mod tests;
