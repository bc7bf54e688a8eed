//! Resizing a VM (`hv set NAME --vcpus N --memory SIZE [--live] [--config]`, issue 14), like
//! `virsh setvcpus/setmem --live --config`.
//!
//! - vCPUs: the VM starts with `-smp vcpus,maxcpus=max_vcpus`. A live increase asks QEMU for
//!   its free CPU slots (`query-hotpluggable-cpus`) and `device_add`s the CPU type it names
//!   with the slot's socket/core/thread ids (device ids `vcpuN`, N the slot's place in the
//!   sorted slot list). The guest sees the new CPU offline (Linux does not online hot-added
//!   CPUs by itself; udev or `echo 1 > /sys/devices/system/cpu/cpuN/online` does). A live
//!   decrease `device_del`s CPUs that were hot-plugged (the guest ejects them through ACPI;
//!   hvd waits for `DEVICE_DELETED`); the CPUs a VM started with cannot be removed live.
//! - Memory: a VM with `max_memory` starts with `-m max_memory` and a virtio balloon that hvd
//!   inflates down to `memory` right after the start. A live change moves the balloon target
//!   (QMP `balloon`) and waits for the guest to follow (`BALLOON_CHANGE`). Without a balloon
//!   (no `max_memory` when it started) memory cannot change live.
//!
//! The live limits are what the running QEMU has (its CPU slots and its base memory), not the
//! definition, which a `--config` change may have raised for the next start.

use std::sync::Arc;
use std::time::Duration;

use api::{ResourceValues, ResourcesInfo};
use model::resources::{max_memory, max_vcpus, Resize};
use model::{Size, VmSpec};
use qmp::Qmp;
use serde_json::{json, Value};

use crate::error::{EngineError, Result};
use crate::hotplug::ChangeScope;
use crate::vm::Vm;
use crate::Engine;

/// How long a guest may take to eject a vCPU (about 10 s for the tiny guest under TCG).
const CPU_UNPLUG_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guest may take to move its balloon to a new target.
const BALLOON_TIMEOUT: Duration = Duration::from_secs(30);

fn qemu(e: qmp::QmpError) -> EngineError {
    EngineError::Qemu(e.to_string())
}

/// One CPU slot of `query-hotpluggable-cpus`.
#[derive(Debug, Clone)]
struct Slot {
    driver: String,
    props: Value,
    /// `(socket, die, core, thread)`, for a stable order.
    key: (u64, u64, u64, u64),
    /// The QOM path of the CPU in the slot, if one is plugged.
    qom_path: Option<String>,
}

fn parse_slots(v: &Value) -> Vec<Slot> {
    let mut out: Vec<Slot> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let p = &s["props"];
            let id = |k: &str| p[k].as_u64().unwrap_or(0);
            Slot {
                driver: s["type"].as_str().unwrap_or_default().to_string(),
                props: p.clone(),
                key: (
                    id("socket-id"),
                    id("die-id"),
                    id("core-id"),
                    id("thread-id"),
                ),
                qom_path: s["qom-path"].as_str().map(str::to_string),
            }
        })
        .collect();
    out.sort_by_key(|s| s.key);
    out
}

/// The device id hv gives the CPU in slot `i` (of the sorted slot list).
fn cpu_id(i: usize) -> String {
    format!("vcpu{i}")
}

/// What the running QEMU has now.
async fn live_values(qmp: &Qmp) -> Result<ResourceValues> {
    let slots = parse_slots(
        &qmp.execute("query-hotpluggable-cpus", None)
            .await
            .map_err(qemu)?,
    );
    let running = qmp
        .execute("query-cpus-fast", None)
        .await
        .map_err(qemu)?
        .as_array()
        .map_or(0, Vec::len);
    let base = base_memory(qmp).await?;
    let memory = match balloon_actual(qmp).await {
        Some(b) => b,
        None => base,
    };
    Ok(ResourceValues {
        vcpus: running as u32,
        max_vcpus: slots.len() as u32,
        memory_bytes: memory,
        max_memory_bytes: base,
    })
}

async fn base_memory(qmp: &Qmp) -> Result<u64> {
    let v = qmp
        .execute("query-memory-size-summary", None)
        .await
        .map_err(qemu)?;
    v["base-memory"]
        .as_u64()
        .ok_or_else(|| EngineError::Qemu("query-memory-size-summary has no base-memory".into()))
}

/// The guest's memory as the balloon leaves it; None without a balloon device.
async fn balloon_actual(qmp: &Qmp) -> Option<u64> {
    qmp.execute("query-balloon", None).await.ok()?["actual"].as_u64()
}

fn config_values(spec: &VmSpec) -> ResourceValues {
    ResourceValues {
        vcpus: spec.vcpus,
        max_vcpus: max_vcpus(spec),
        memory_bytes: spec.memory.0,
        max_memory_bytes: max_memory(spec).0,
    }
}

impl Engine {
    /// `GET /v1/vms/{name}/resources`: the definition's values and, while QEMU runs, the live
    /// ones.
    pub async fn resources(&self, name: &str) -> Result<ResourcesInfo> {
        let vm = self.get(name)?;
        let (spec, qmp) = {
            let st = vm.lock();
            (
                st.spec.clone(),
                st.qmp.clone().filter(|_| st.state.is_active()),
            )
        };
        let live = match qmp {
            Some(q) => Some(live_values(&q).await?),
            None => None,
        };
        Ok(ResourcesInfo {
            vm: vm.name.clone(),
            config: config_values(&spec),
            live,
        })
    }

    /// `hv set`: vCPUs and/or memory, live, in the definition, or both. Every check (the
    /// definition's and the running QEMU's limits, a balloon to move) is made before anything
    /// changes.
    pub async fn resize(
        &self,
        name: &str,
        req: Resize,
        scope: ChangeScope,
    ) -> Result<ResourcesInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("resize")?;
        let (live, config) = scope.resolve(&vm)?;
        let stored = vm.lock().spec.clone();
        req.check(&stored)?;
        let new_spec = req.apply(&stored);
        new_spec.validate()?;
        if live {
            let qmp = vm.qmp()?;
            let plan = self.plan_live(&vm, &qmp, req).await?;
            self.apply_live(&vm, &qmp, plan).await?;
        }
        if config {
            self.save_spec(&vm, new_spec)?;
        }
        tracing::info!(vm = name, vcpus = ?req.vcpus, memory = ?req.memory, live, config, "resized");
        drop(_op);
        self.resources(name).await
    }

    /// Checks a live change against the running QEMU and says what to do.
    async fn plan_live(&self, vm: &Vm, qmp: &Qmp, req: Resize) -> Result<LivePlan> {
        let name = &vm.name;
        let slots = parse_slots(
            &qmp.execute("query-hotpluggable-cpus", None)
                .await
                .map_err(qemu)?,
        );
        let mut plan = LivePlan::default();
        if let Some(n) = req.vcpus {
            let n = n as usize;
            let plugged: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].qom_path.is_some())
                .collect();
            if n > slots.len() {
                return Err(EngineError::Invalid(format!(
                    "VM {name} runs with at most {} vCPUs; {n} needs a higher \
                     maximum: set max_vcpus with `hv edit {name}` and restart it",
                    slots.len()
                )));
            }
            if n > plugged.len() {
                plan.plug = (0..slots.len())
                    .filter(|&i| slots[i].qom_path.is_none())
                    .take(n - plugged.len())
                    .map(|i| (i, slots[i].clone()))
                    .collect();
            } else if n < plugged.len() {
                // Only CPUs that were hot-plugged (peripheral devices) can go, the last first.
                let removable: Vec<(usize, String)> = plugged
                    .iter()
                    .rev()
                    .filter_map(|&i| {
                        let p = slots[i].qom_path.as_deref()?;
                        let id = p.strip_prefix("/machine/peripheral/")?;
                        Some((i, id.to_string()))
                    })
                    .collect();
                let drop = plugged.len() - n;
                if removable.len() < drop {
                    return Err(EngineError::Invalid(format!(
                        "VM {name} can drop at most {} vCPUs live (only vCPUs added with `hv set` \
                         can be removed from a running guest); use `hv set {name} --vcpus {n} --config` \
                         and restart it",
                        removable.len()
                    )));
                }
                plan.unplug = removable.into_iter().take(drop).map(|(_, id)| id).collect();
            }
        }
        if let Some(m) = req.memory {
            let base = base_memory(qmp).await?;
            let Some(actual) = balloon_actual(qmp).await else {
                return Err(EngineError::Invalid(format!(
                    "VM {name} has no memory balloon, so its memory cannot change while it runs; \
                     set max_memory with `hv edit {name}` (or `hv create --max-memory`) and \
                     restart it, or change only the definition with --config"
                )));
            };
            if m.0 > base {
                return Err(EngineError::Invalid(format!(
                    "{m} is above the {} VM {name} runs with; raise max_memory with `hv edit {name}` \
                     and restart it",
                    Size(base)
                )));
            }
            plan.balloon = Some((m.0, actual));
        }
        Ok(plan)
    }

    async fn apply_live(&self, vm: &Arc<Vm>, qmp: &Qmp, plan: LivePlan) -> Result<()> {
        let name = &vm.name;
        for (i, slot) in &plan.plug {
            let mut args = json!({ "driver": slot.driver, "id": cpu_id(*i) });
            if let (Some(a), Some(p)) = (args.as_object_mut(), slot.props.as_object()) {
                for (k, v) in p {
                    a.insert(k.clone(), v.clone());
                }
            }
            qmp.execute("device_add", Some(args)).await.map_err(qemu)?;
        }
        for id in &plan.unplug {
            let mut events = vm.subscribe_qmp_events();
            qmp.execute("device_del", Some(json!({ "id": id })))
                .await
                .map_err(qemu)?;
            // QEMU 7.2 reports the CPU's `lapic` child (`.../vcpuN/lapic`), not the CPU itself,
            // as deleted; the slot is then free, which is checked.
            let path = format!("/machine/peripheral/{id}");
            let deleted = Vm::wait_qmp_event(&mut events, CPU_UNPLUG_TIMEOUT, |ev| {
                let p = ev.data["path"].as_str().unwrap_or_default();
                ev.event == "DEVICE_DELETED"
                    && (ev.data["device"].as_str() == Some(id.as_str())
                        || p == path
                        || p.starts_with(&format!("{path}/")))
            })
            .await?;
            let gone = deleted
                && !parse_slots(
                    &qmp.execute("query-hotpluggable-cpus", None)
                        .await
                        .map_err(qemu)?,
                )
                .iter()
                .any(|s| s.qom_path.as_deref() == Some(path.as_str()));
            if !gone {
                return Err(EngineError::Timeout(format!(
                    "the guest of {name} did not release vCPU {id} within {} s (it needs ACPI \
                     CPU hotplug); the definition was not changed",
                    CPU_UNPLUG_TIMEOUT.as_secs()
                )));
            }
        }
        if let Some((target, before)) = plan.balloon {
            let mut events = vm.subscribe_qmp_events();
            qmp.execute("balloon", Some(json!({ "value": target })))
                .await
                .map_err(qemu)?;
            if target != before {
                let reached = Vm::wait_qmp_event(&mut events, BALLOON_TIMEOUT, |ev| {
                    ev.event == "BALLOON_CHANGE" && ev.data["actual"].as_u64() == Some(target)
                })
                .await?;
                let now = balloon_actual(qmp).await.unwrap_or(before);
                if !reached && now == before {
                    // The guest never moved: put the target back so nothing is left pending.
                    let _ = qmp
                        .execute("balloon", Some(json!({ "value": before })))
                        .await;
                    return Err(EngineError::Timeout(format!(
                        "the guest of {name} did not move its memory balloon within {} s (does it \
                         load the virtio_balloon driver?); its memory stays {}",
                        BALLOON_TIMEOUT.as_secs(),
                        Size(before)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Right after a start: inflate the balloon of a VM with a memory maximum down to its
    /// `memory` (the guest driver follows once it loads).
    pub(crate) async fn balloon_at_start(&self, vm: &Vm, spec: &VmSpec, qmp: &Qmp) {
        let Some(max) = spec.max_memory else { return };
        if spec.memory >= max {
            return;
        }
        if let Err(e) = qmp
            .execute("balloon", Some(json!({ "value": spec.memory.0 })))
            .await
        {
            tracing::error!(vm = %vm.name, error = %e, "cannot set the balloon target");
        }
    }
}

/// The QMP steps of a live change.
#[derive(Debug, Default)]
struct LivePlan {
    /// Free slots to fill: (place in the sorted slot list, slot).
    plug: Vec<(usize, Slot)>,
    /// Device ids of hot-plugged CPUs to remove.
    unplug: Vec<String>,
    /// (target, the guest's memory now).
    balloon: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_sorted_and_know_what_is_plugged() {
        // As QEMU 7.2 answers for `-smp 1,maxcpus=2` on pc (newest slot first).
        let v: Value = serde_json::from_str(
            r#"[{"props": {"core-id": 1, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"},
                {"props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]", "type": "qemu64-x86_64-cpu"}]"#,
        )
        .unwrap();
        let s = parse_slots(&v);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].key, (0, 0, 0, 0));
        assert!(s[0].qom_path.is_some() && s[1].qom_path.is_none());
        assert_eq!(s[1].driver, "qemu64-x86_64-cpu");
        assert_eq!(s[1].props["core-id"], 1);
        assert_eq!(cpu_id(1), "vcpu1");
    }
}
