//! The target's pre-checks of an incoming migration, as pure logic: every refusal names the
//! problem and what to do, and all of them are reported at once.

use api::{IncomingRequest, MigrationMode};
use model::{Machine, NicKind};

/// What the target knows about itself, gathered before the checks.
#[derive(Debug, Clone)]
pub struct TargetFacts {
    pub hostname: String,
    pub qemu_version: (u32, u32, u32),
    /// The `-cpu` model this host would run the VM with (see [`cpu_model`]).
    pub cpu_model: String,
    pub networks: Vec<String>,
    pub vm_exists: bool,
    /// `MemAvailable` in bytes.
    pub free_memory: u64,
    /// Whether each disk's shared-storage probe read back the source's token (same order as
    /// `req.disks`).
    pub shared: Vec<bool>,
    /// Free bytes where copied disks would go, and how many bytes they need (`--copy-storage`,
    /// `--offline`); `None` when nothing is copied.
    pub disk_space: Option<(u64, u64)>,
}

/// The CPU model a VM runs with: `-cpu X` of its argv, or QEMU's default for the accelerator.
pub fn cpu_model(argv: &[String]) -> String {
    argv.iter()
        .position(|a| a == "-cpu")
        .and_then(|i| argv.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "default".into())
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Every reason the target refuses `req`; empty when it may go ahead.
pub fn check(req: &IncomingRequest, t: &TargetFacts) -> Vec<String> {
    let mut out = Vec::new();
    let host = &t.hostname;
    let (tmaj, tmin, tmic) = t.qemu_version;
    match parse_version(&req.source.qemu_version) {
        None => out.push(format!(
            "the source's QEMU version {:?} does not read as major.minor.micro",
            req.source.qemu_version
        )),
        Some(v) if (v.0, v.1) > (tmaj, tmin) => out.push(format!(
            "QEMU version: the source runs QEMU {}, {host} runs {tmaj}.{tmin}.{tmic}, which cannot load a newer QEMU's stream; upgrade QEMU on {host} or migrate to a host with QEMU {}.{} or newer",
            req.source.qemu_version, v.0, v.1
        )),
        Some(_) => {}
    }
    match req.source.machine.parse::<Machine>() {
        Ok(m) => match m.version {
            Some(mv) if mv > (tmaj, tmin) => out.push(format!(
                "machine type: the VM runs {}, which QEMU {tmaj}.{tmin} on {host} does not have; migrate to a host with QEMU {}.{} or newer",
                req.source.machine, mv.0, mv.1
            )),
            Some(_) => {
                if req.spec.machine.to_string() != req.source.machine {
                    out.push(format!(
                        "machine type: the VM runs {} but its definition says {}; restart it on the source (so it runs its definition) and try again",
                        req.source.machine, req.spec.machine
                    ));
                }
            }
            None => out.push(format!(
                "machine type: {} is not pinned to a QEMU version; restart the VM on the source (hv pins it at start) and try again",
                req.source.machine
            )),
        },
        Err(_) => out.push(format!(
            "machine type: {:?} is not a machine type hv knows",
            req.source.machine
        )),
    }
    // A stopped VM (--offline) starts afresh on the target: its CPU and memory are not moved.
    if req.mode == MigrationMode::Live && req.source.cpu_model != t.cpu_model {
        out.push(format!(
            "CPU model: the VM runs with CPU model {:?} on the source but would get {:?} on {host} (one uses KVM and the other TCG, or their KVM CPUs differ); migrate between hosts with the same accelerator",
            req.source.cpu_model, t.cpu_model
        ));
    }
    for (i, n) in req.spec.nics.iter().enumerate() {
        if n.kind != NicKind::Network {
            continue;
        }
        let net = n.source.as_deref().unwrap_or_default();
        if !t.networks.iter().any(|x| x == net) {
            out.push(format!(
                "network: nics[{i}] is on network {net:?}, which {host} does not have; define it there (hv net create {net} ...) and try again"
            ));
        }
    }
    if req.mode == MigrationMode::Live && !req.copy_storage {
        for (d, shared) in req.disks.iter().zip(&t.shared) {
            if !shared {
                out.push(format!(
                    "storage: disk {} is not on storage {host} shares with the source (it cannot read the source's probe file next to it); use --copy-storage, or put the disk on a shared pool",
                    d.target
                ));
            }
        }
    }
    if t.vm_exists {
        out.push(format!(
            "name: a VM named {:?} already exists on {host}; rename or remove it there first",
            req.vm.as_str()
        ));
    }
    if req.mode == MigrationMode::Live && req.spec.memory.0 > t.free_memory {
        out.push(format!(
            "memory: the VM needs {} MiB and {host} has {} MiB available; free memory there or pick another host",
            req.spec.memory.0 >> 20,
            t.free_memory >> 20
        ));
    }
    if let Some((free, need)) = t.disk_space {
        if need > free {
            out.push(format!(
                "disk: the VM's disks need {} MiB and {host} has {} MiB free in the target pool; free space there or pick another host",
                need >> 20,
                free >> 20
            ));
        }
    }
    // --offline carries the variable store and TPM state (the `vm-files` channel).
    if req.mode == MigrationMode::Live
        && (req.spec.firmware == model::Firmware::Uefi || req.spec.tpm)
    {
        out.push(
            "firmware: hv does not migrate UEFI or TPM VMs yet (their variable store and TPM state live in files next to the VM); shut the VM down and move it with --offline".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{IncomingDisk, SourceFacts};
    use model::{DiskFormat, NicSpec, Size, VmSpec};

    fn req() -> IncomingRequest {
        let mut spec = VmSpec::new("web".parse().unwrap());
        spec.machine = "pc-q35-7.2".parse().unwrap();
        spec.memory = Size(256 << 20);
        let nic: NicSpec = serde_json::from_value(serde_json::json!({
            "type": "network", "source": "lan"
        }))
        .unwrap();
        spec.nics = vec![nic];
        IncomingRequest {
            vm: "web".parse().unwrap(),
            spec,
            mode: MigrationMode::Live,
            copy_storage: false,
            source: SourceFacts {
                qemu_version: "7.2.22".into(),
                machine: "pc-q35-7.2".into(),
                cpu_model: "default".into(),
                hostname: "a".into(),
            },
            disks: vec![IncomingDisk {
                target: "vda".into(),
                format: DiskFormat::Qcow2,
                virtual_size: 1 << 30,
                shared: None,
                layers: vec![],
            }],
            snapshots: vec![],
            current_snapshot: None,
            autostart: false,
            reservations: vec![],
            forwards: vec![],
            check_only: true,
            paused: false,
            postcopy: false,
        }
    }

    fn facts() -> TargetFacts {
        TargetFacts {
            hostname: "b".into(),
            qemu_version: (7, 2, 22),
            cpu_model: "default".into(),
            networks: vec!["lan".into()],
            vm_exists: false,
            free_memory: 1 << 30,
            shared: vec![true],
            disk_space: None,
        }
    }

    #[test]
    fn a_compatible_target_passes() {
        assert_eq!(check(&req(), &facts()), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_named_with_what_to_do() {
        let mut r = req();
        r.source.qemu_version = "8.1.0".into();
        r.source.cpu_model = "host".into();
        let mut t = facts();
        t.networks.clear();
        t.vm_exists = true;
        t.shared = vec![false];
        t.free_memory = 100 << 20;
        let out = check(&r, &t);
        let all = out.join("\n");
        for want in [
            "QEMU version",
            "CPU model",
            "network \"lan\"",
            "--copy-storage",
            "already exists",
            "memory",
        ] {
            assert!(all.contains(want), "{want} missing in {all}");
        }
        assert_eq!(out.len(), 6, "{all}");
        // With --copy-storage, unshared disks are fine.
        r.copy_storage = true;
        assert!(!check(&r, &t).join("\n").contains("storage:"));
    }

    #[test]
    fn machine_newer_than_target_qemu_is_refused_and_bad_versions_named() {
        let mut r = req();
        r.source.machine = "pc-q35-8.0".into();
        r.spec.machine = "pc-q35-8.0".parse().unwrap();
        assert!(check(&r, &facts())[0].contains("pc-q35-8.0"));
        let mut r = req();
        r.source.qemu_version = "seven".into();
        assert!(check(&r, &facts())[0].contains("major.minor.micro"));
        let mut t = facts();
        t.disk_space = Some((1, 2 << 20));
        assert!(check(&req(), &t)[0].starts_with("disk:"));
    }

    #[test]
    fn cpu_model_reads_the_argv() {
        let argv: Vec<String> = ["qemu", "-cpu", "host", "-m", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(cpu_model(&argv), "host");
        assert_eq!(cpu_model(&argv[3..]), "default");
    }
}
