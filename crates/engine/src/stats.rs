//! Live figures of running VMs (`GET /v1/vms/{name}/stats`, `hv stats`, `/metrics`), read
//! cheaply: QEMU's CPU time from `/proc/PID/stat`, its RSS from `/proc/PID/statm`, disk
//! counters from one QMP `query-blockstats`, NIC counters from the taps' sysfs statistics. No
//! process is spawned. CPU % is over the interval since the previous sample of the VM hvd
//! kept (at most [`SAMPLE_MAX_AGE`] old), else since QEMU started.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api::{DiskStats, NicStats, VmStats};
use model::VmState;
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::{now_ms, Engine};

/// A previous CPU sample older than this is not used (the figure would be a long average).
pub const SAMPLE_MAX_AGE: Duration = Duration::from_secs(60);

/// How long one QMP query may take before the disks are reported without it.
const QMP_TIMEOUT: Duration = Duration::from_secs(2);

/// The last CPU sample of each running QEMU (by pid).
#[derive(Default)]
pub(crate) struct Samples(Mutex<HashMap<u32, (Instant, u64)>>);

/// utime + stime (clock ticks) and the start time (ticks after boot) from `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state is field 3; utime 14, stime 15, starttime 22 (1-based).
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    let start: u64 = f.get(22 - 3)?.parse().ok()?;
    Some((utime + stime, start))
}

/// Resident pages from `/proc/PID/statm`.
pub fn parse_statm(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The disks' counters from QMP `query-blockstats`, named by their target (the node name
/// `hv-vda` gives `vda`) or device id; devices without a medium are left out.
pub fn parse_blockstats(v: &Value) -> Vec<DiskStats> {
    let mut out = Vec::new();
    for d in v.as_array().into_iter().flatten() {
        let node = d["node-name"].as_str().unwrap_or("");
        let name = match node.strip_prefix("hv-") {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => match d["qdev"].as_str().or(d["device"].as_str()) {
                Some(q) if !q.is_empty() => q
                    .trim_start_matches("/machine/peripheral/")
                    .split('/')
                    .next()
                    .unwrap_or(q)
                    .to_string(),
                _ => continue,
            },
        };
        let s = &d["stats"];
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        out.push(DiskStats {
            disk: name,
            rd_bytes: n("rd_bytes"),
            wr_bytes: n("wr_bytes"),
            rd_ops: n("rd_operations"),
            wr_ops: n("wr_operations"),
        });
    }
    out
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A tap's counters from sysfs, turned round to the guest's view (what the tap sends, the
/// guest receives).
fn tap_stats(nic: String, tap: &str) -> NicStats {
    let dir = Path::new("/sys/class/net").join(tap).join("statistics");
    NicStats {
        nic,
        tap: tap.to_string(),
        rx_bytes: read_u64(&dir.join("tx_bytes")),
        tx_bytes: read_u64(&dir.join("rx_bytes")),
        rx_packets: read_u64(&dir.join("tx_packets")),
        tx_packets: read_u64(&dir.join("rx_packets")),
    }
}

fn sysconf(name: libc::c_int, default: u64) -> u64 {
    // SAFETY: sysconf(3) reads a constant.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 {
        v as u64
    } else {
        default
    }
}

fn uptime_secs() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Engine {
    /// Live figures of a running VM.
    pub async fn vm_stats(&self, name: &str) -> Result<VmStats> {
        let vm = self.get(name)?;
        let (state, pid, taps, memory) = {
            let g = vm.lock();
            (g.state, g.rec.pid, g.rec.taps.clone(), g.spec.memory.0)
        };
        let pid = match (state, pid) {
            (VmState::Running | VmState::Paused, Some(pid)) => pid,
            _ => {
                return Err(EngineError::WrongState(format!(
                    "VM {name} is {state}; figures exist only while it runs (hv start {name})"
                )))
            }
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| EngineError::Host(format!("cannot read QEMU's /proc/{pid}/stat: {e}")))?;
        let (ticks, start) = parse_stat(&stat)
            .ok_or_else(|| EngineError::Host(format!("cannot parse QEMU's /proc/{pid}/stat")))?;
        let hz = sysconf(libc::_SC_CLK_TCK, 100) as f64;
        let page = sysconf(libc::_SC_PAGESIZE, 4096);
        let rss = std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|s| parse_statm(&s))
            .unwrap_or(0)
            * page;
        let now = Instant::now();
        let previous = {
            let mut g = self
                .inner
                .samples
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Forget samples nobody can use any more (QEMUs that are gone).
            g.retain(|_, (at, _)| now.duration_since(*at) < SAMPLE_MAX_AGE);
            g.insert(pid, (now, ticks))
        };
        let cpu_percent = match previous {
            Some((at, before)) if ticks >= before && now.duration_since(at) < SAMPLE_MAX_AGE => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    (ticks - before) as f64 / hz / secs * 100.0
                } else {
                    0.0
                }
            }
            _ => {
                let ran = uptime_secs().unwrap_or(0.0) - start as f64 / hz;
                if ran > 0.0 {
                    ticks as f64 / hz / ran * 100.0
                } else {
                    0.0
                }
            }
        };
        let disks = match vm.qmp() {
            Ok(qmp) => {
                match tokio::time::timeout(QMP_TIMEOUT, qmp.execute("query-blockstats", None)).await
                {
                    Ok(Ok(v)) => parse_blockstats(&v),
                    Ok(Err(e)) => {
                        return Err(EngineError::Qemu(format!("query-blockstats failed: {e}")))
                    }
                    Err(_) => {
                        return Err(EngineError::Qemu(format!(
                            "QEMU of VM {name} did not answer query-blockstats within {}s",
                            QMP_TIMEOUT.as_secs()
                        )))
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let nics = taps
            .iter()
            .map(|tap| {
                let n = (0..256u32)
                    .find(|n| host_net::tap_name(vm.id, *n) == *tap)
                    .map(|n| qemu_argv::nic_id(n as usize))
                    .unwrap_or_else(|| tap.clone());
                tap_stats(n, tap)
            })
            .collect();
        Ok(VmStats {
            vm: name.to_string(),
            time_ms: now_ms(),
            cpu_percent: (cpu_percent * 10.0).round() / 10.0,
            cpu_seconds: ticks as f64 / hz,
            memory_rss_bytes: rss,
            memory_configured_bytes: memory,
            balloon_actual_bytes: None,
            disks,
            nics,
        })
    }

    /// Figures of every running VM whose name `want` accepts (VMs that stop meanwhile are
    /// left out).
    pub async fn all_stats(&self, want: impl Fn(&str) -> bool) -> Vec<VmStats> {
        let names: Vec<String> = self
            .read_vms()
            .values()
            .filter(|v| v.state().is_active() && want(&v.name))
            .map(|v| v.name.clone())
            .collect();
        // Concurrently: each waits on its own QEMU's QMP answer.
        let mut set = tokio::task::JoinSet::new();
        for n in names {
            let e = self.clone();
            set.spawn(async move { e.vm_stats(&n).await });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(s)) = r {
                all.push(s);
            }
        }
        all.sort_by(|a, b| a.vm.cmp(&b.vm));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        let stat = "4242 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 3 0 777 0 0";
        assert_eq!(parse_stat(stat), Some((200, 777)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_statm("1000 250 30 1 0 100 0\n"), Some(250));
    }

    #[test]
    fn blockstats_are_named_by_target() {
        let v: Value = serde_json::from_str(
            r#"[{"device":"","qdev":"/machine/peripheral/vda/virtio-backend","node-name":"hv-vda",
                 "stats":{"rd_bytes":10,"wr_bytes":20,"rd_operations":1,"wr_operations":2}},
                {"device":"","qdev":"cdrom0","stats":{"rd_bytes":5}},
                {"device":"","stats":{}}]"#,
        )
        .unwrap();
        let d = parse_blockstats(&v);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (
                d[0].disk.as_str(),
                d[0].rd_bytes,
                d[0].wr_bytes,
                d[0].rd_ops,
                d[0].wr_ops
            ),
            ("vda", 10, 20, 1, 2)
        );
        assert_eq!((d[1].disk.as_str(), d[1].rd_bytes), ("cdrom0", 5));
    }
}
