//! NICs changed on a defined VM (`hv nic attach|detach`): live through QMP (`netdev_add` on a
//! tap hvd makes, `device_add`; `device_del`, then `netdev_del` and the tap once the guest let
//! go), in the definition, or both, like libvirt's `attach-interface --live --config`.
//!
//! A NIC is named by its MAC. Live devices are found by asking QEMU (`qom-list` of
//! `/machine/peripheral`, `qom-get mac`), because a VM's live NICs and its definition can
//! differ after `--live`-only or `--config`-only changes. The device `nicN`, its backend
//! `hv-netN` and its tap `hvtap-ID-N` always share the number `N`.

use std::sync::Arc;
use std::time::Duration;

use api::VmInfo;
use model::{Mac, NicSpec};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::hotplug::ChangeScope;
use crate::vm::Vm;
use crate::Engine;

/// How long a guest may take to release a hot-unplugged NIC.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);

fn qemu(e: qmp::QmpError) -> EngineError {
    EngineError::Qemu(e.to_string())
}

/// The NIC devices QEMU has now: `(N of nicN, MAC)`.
async fn live_nics(qmp: &qmp::Qmp) -> Result<Vec<(usize, Option<Mac>)>> {
    let list = qmp
        .execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))
        .await
        .map_err(qemu)?;
    let mut out = Vec::new();
    for item in list.as_array().into_iter().flatten() {
        let name = item["name"].as_str().unwrap_or_default();
        let Some(n) = name.strip_prefix("nic").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let mac = qmp
            .execute(
                "qom-get",
                Some(json!({ "path": format!("/machine/peripheral/{name}"), "property": "mac" })),
            )
            .await
            .map_err(qemu)?;
        out.push((n, mac.as_str().and_then(|m| m.parse().ok())));
    }
    Ok(out)
}

impl Engine {
    /// `hv nic attach`: a MAC is generated when the spec has none.
    pub async fn nic_attach(
        &self,
        name: &str,
        nic: NicSpec,
        scope: ChangeScope,
    ) -> Result<api::NicAttached> {
        let vm = self.get(name)?;
        let _op = vm.begin("nic attach")?;
        let (live, config) = scope.resolve(&vm)?;
        let mut spec = vm.lock().spec.clone();
        let mut nic = nic;
        self.assign_macs(std::slice::from_mut(&mut nic));
        spec.nics.push(nic.clone());
        spec.validate()?;
        self.check_nics(&spec).await?;
        if live {
            self.plug_nic(&vm, &nic).await?;
        }
        if config {
            let mut stored = vm.lock().spec.clone();
            stored.nics.push(nic.clone());
            self.save_spec(&vm, stored)?;
        }
        let mac = nic.mac.map(|m| m.to_string()).unwrap_or_default();
        tracing::info!(vm = name, mac, live, config, "nic attached");
        Ok(api::NicAttached {
            nic,
            vm: self.info_of(&vm, true),
        })
    }

    async fn plug_nic(&self, vm: &Arc<Vm>, nic: &NicSpec) -> Result<()> {
        let qmp = vm.qmp()?;
        let live = live_nics(&qmp).await?;
        let taps = vm.lock().rec.taps.clone();
        // The lowest number no live device and no tap of this VM has.
        let n = (0..)
            .find(|n| {
                !live.iter().any(|(m, _)| m == n)
                    && !taps.contains(&host_net::tap_name(vm.id, *n as u32))
            })
            .unwrap_or(0);
        let tap = self.make_tap(vm.id, n, nic).await?;
        if tap.is_some() {
            if let Err(e) = self.grant(
                vm,
                std::path::Path::new("/dev/net/tun"),
                host_storage::access::Access::ReadWrite,
            ) {
                crate::network::remove_taps(&[tap]).await;
                return Err(e);
            }
        }
        let backend = qemu_argv::nic_backend(nic, n, tap.as_deref())
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let netdev = backend["id"].clone();
        let result = async {
            qmp.execute("netdev_add", Some(backend))
                .await
                .map_err(qemu)?;
            if let Err(e) = qmp
                .execute("device_add", Some(qemu_argv::nic_device(nic, n)))
                .await
            {
                let _ = qmp
                    .execute("netdev_del", Some(json!({ "id": netdev })))
                    .await;
                return Err(qemu(e));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            crate::network::remove_taps(&[tap]).await;
            return Err(e);
        }
        if let Some(t) = tap {
            vm.lock().rec.taps.push(t);
            self.persist_runtime_pub(vm)?;
        }
        Ok(())
    }

    /// `hv nic detach`: the guest is asked to release the device (ACPI); its backend and tap
    /// go once QEMU reports it gone.
    pub async fn nic_detach(&self, name: &str, mac: &str, scope: ChangeScope) -> Result<VmInfo> {
        let vm = self.get(name)?;
        let _op = vm.begin("nic detach")?;
        let (live, config) = scope.resolve(&vm)?;
        let mac: Mac = mac.parse().map_err(|e: model::SpecError| {
            EngineError::Invalid(format!("{e} (hv nic list {name} shows the MACs)"))
        })?;
        let mut stored = vm.lock().spec.clone();
        let pos = stored.nics.iter().position(|n| n.mac == Some(mac));
        let not_found = |what: &str| {
            EngineError::NotFound(format!(
                "VM {name} has no {what}NIC with MAC {mac} (hv nic list {name} shows them)"
            ))
        };
        if config && pos.is_none() {
            return Err(not_found(""));
        }
        if live {
            let qmp = vm.qmp()?;
            let n = live_nics(&qmp)
                .await?
                .into_iter()
                .find(|(_, m)| *m == Some(mac))
                .map(|(n, _)| n)
                .ok_or_else(|| not_found("running "))?;
            let id = qemu_argv::nic_id(n);
            let mut events = vm.subscribe_qmp_events();
            qmp.execute("device_del", Some(json!({ "id": id })))
                .await
                .map_err(qemu)?;
            let gone = Vm::wait_qmp_event(&mut events, UNPLUG_TIMEOUT, |ev| {
                ev.event == "DEVICE_DELETED" && ev.data["device"].as_str() == Some(id.as_str())
            })
            .await?;
            if !gone {
                return Err(EngineError::Timeout(format!(
                    "the guest of {name} did not release NIC {mac} within {} s (it needs ACPI hotplug support); nothing was changed",
                    UNPLUG_TIMEOUT.as_secs()
                )));
            }
            let netdev = format!("hv-net{n}");
            if let Err(e) = qmp
                .execute("netdev_del", Some(json!({ "id": netdev })))
                .await
            {
                tracing::warn!(vm = name, netdev, error = %e, "netdev_del failed");
            }
            let tap = host_net::tap_name(vm.id, n as u32);
            let had = {
                let mut st = vm.lock();
                let before = st.rec.taps.len();
                st.rec.taps.retain(|t| *t != tap);
                st.rec.taps.len() != before
            };
            if had {
                crate::network::remove_taps(&[Some(tap)]).await;
                self.persist_runtime_pub(&vm)?;
            }
        }
        if config {
            if let Some(p) = pos {
                stored.nics.remove(p);
                self.save_spec(&vm, stored)?;
            }
        }
        tracing::info!(vm = name, %mac, live, config, "nic detached");
        Ok(self.info_of(&vm, true))
    }
}
