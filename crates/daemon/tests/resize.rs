//! Issue 14, item 4: resizing a running VM. A tiny TCG guest started with 1 of at most 2
//! vCPUs and 256M of at most 512M (a virtio balloon) gets a second vCPU hot-plugged and sees
//! it, gets 384M and its MemTotal follows, gives the vCPU back, and keeps a `--config`-only
//! change for its next start. Above a maximum, below 1 vCPU and a VM without a balloon are
//! refused, and nothing changes.

use api::{ErrorCode, ResizeRequest, ResourcesInfo};
use model::Size;
use testkit::{TestHvd, VmOpts};

const MIB: u64 = 1 << 20;

fn req(
    vcpus: Option<u32>,
    memory: Option<u64>,
    live: Option<bool>,
    config: Option<bool>,
) -> ResizeRequest {
    ResizeRequest {
        vcpus,
        memory: memory.map(|m| Size(m * MIB)),
        live,
        config,
    }
}

/// The number a guest command printed between `TAG-` and `-END`.
fn guest_number(h: &TestHvd, vm: &str, tag: &str, cmd: &str) -> u64 {
    let line = format!("echo {tag}-$({cmd})-END");
    let m = h
        .run_in_guest(vm, &line, &format!(r"{tag}-[0-9]+-END"))
        .unwrap();
    m.trim_start_matches(&format!("{tag}-"))
        .trim_end_matches("-END")
        .parse()
        .unwrap()
}

const MEMTOTAL_KB: &str = "awk '/MemTotal/{print $2}' /proc/meminfo";

fn live(r: &ResourcesInfo) -> api::ResourceValues {
    r.live.unwrap_or_else(|| panic!("no live values: {r:?}"))
}

#[test]
fn vcpus_and_memory_change_in_a_running_guest_within_their_maxima() {
    let h = TestHvd::start(env!("CARGO_BIN_EXE_hvd").as_ref()).unwrap();
    let c = h.client();
    let mut spec = h.tiny_spec("rs", VmOpts::default()).unwrap();
    spec.vcpus = 1;
    spec.max_vcpus = Some(2);
    spec.memory = Size(256 * MIB);
    spec.max_memory = Some(Size(512 * MIB));
    c.create(spec, true).unwrap();
    h.wait_ready("rs").unwrap();

    let r = c.resources("rs").unwrap();
    assert_eq!((r.config.vcpus, r.config.max_vcpus), (1, 2), "{r:?}");
    assert_eq!(live(&r).vcpus, 1, "{r:?}");
    assert_eq!(live(&r).max_memory_bytes, 512 * MIB, "{r:?}");
    // The balloon hvd set at the start leaves the guest its 256M (the driver may still be
    // inflating it when the shell is ready: wait in the guest, bounded).
    let kb = guest_number(
        &h,
        "rs",
        "M1",
        &format!("i=0; while [ $({MEMTOTAL_KB}) -gt 270000 ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done; {MEMTOTAL_KB}"),
    );
    assert!(
        (150_000..=262_144).contains(&kb),
        "MemTotal {kb} kB with 256M"
    );

    // A second vCPU, live and in the definition (the default for a running VM).
    let r = c.resize("rs", &req(Some(2), None, None, None)).unwrap();
    assert_eq!(live(&r).vcpus, 2, "{r:?}");
    assert_eq!(r.config.vcpus, 2, "{r:?}");
    // Linux does not online a hot-added CPU by itself (udev would): the guest does it.
    let online = h
        .run_in_guest(
            "rs",
            "i=0; while [ ! -e /sys/devices/system/cpu/cpu1/online ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done; echo 1 > /sys/devices/system/cpu/cpu1/online; echo C1-$(cat /sys/devices/system/cpu/online)-END",
            r"C1-\S+-END",
        )
        .unwrap();
    assert_eq!(online, "C1-0-1-END");
    assert_eq!(
        guest_number(&h, "rs", "N1", "grep -c ^processor /proc/cpuinfo"),
        2
    );

    // 384M: the balloon deflates and MemTotal grows.
    let r = c.resize("rs", &req(None, Some(384), None, None)).unwrap();
    assert_eq!(live(&r).memory_bytes, 384 * MIB, "{r:?}");
    assert_eq!(r.config.memory_bytes, 384 * MIB, "{r:?}");
    let kb2 = guest_number(&h, "rs", "M2", MEMTOTAL_KB);
    assert!(
        kb2 > kb + 100_000 && kb2 <= 384 * 1024,
        "MemTotal {kb} kB -> {kb2} kB with 384M"
    );

    // Refused, and nothing changes: above a maximum, below 1, a live change on a stopped
    // VM comes later.
    for (bad, what) in [
        (req(Some(3), None, None, None), "max_vcpus"),
        (req(Some(0), None, None, None), "at least 1"),
        (req(None, Some(1024), None, None), "max_memory"),
        (req(None, None, None, None), "nothing to change"),
    ] {
        let e = c.resize("rs", &bad).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    let r = c.resources("rs").unwrap();
    assert_eq!((live(&r).vcpus, live(&r).memory_bytes), (2, 384 * MIB));
    assert_eq!((r.config.vcpus, r.config.memory_bytes), (2, 384 * MIB));

    // The hot-plugged vCPU goes again (the guest ejects it through ACPI), live only.
    let r = c
        .resize("rs", &req(Some(1), None, Some(true), Some(false)))
        .unwrap();
    assert_eq!(live(&r).vcpus, 1, "{r:?}");
    assert_eq!(r.config.vcpus, 2, "live only: {r:?}");
    let online = h
        .run_in_guest(
            "rs",
            "echo C2-$(cat /sys/devices/system/cpu/online)-END",
            r"C2-\S+-END",
        )
        .unwrap();
    assert_eq!(online, "C2-0-END");
    // --config only: kept in the definition, applied at the next start.
    let r = c
        .resize("rs", &req(Some(2), Some(320), Some(false), Some(true)))
        .unwrap();
    assert_eq!((r.config.vcpus, r.config.memory_bytes), (2, 320 * MIB));
    assert_eq!((live(&r).vcpus, live(&r).memory_bytes), (1, 384 * MIB));
    c.destroy("rs").unwrap();
    let e = c
        .resize("rs", &req(Some(1), None, Some(true), None))
        .unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
    c.start("rs", false).unwrap();
    h.wait_ready("rs").unwrap();
    let r = c.resources("rs").unwrap();
    assert_eq!(live(&r).vcpus, 2, "{r:?}");
    assert_eq!(live(&r).max_vcpus, 2, "{r:?}");

    // A VM without a memory maximum has no balloon: its memory cannot change live.
    let nb = h.tiny_spec("nb", VmOpts::default()).unwrap();
    c.create(nb, true).unwrap();
    let e = c
        .resize("nb", &req(None, Some(64), None, None))
        .unwrap_err();
    assert!(e.to_string().contains("no memory balloon"), "{e}");
    assert_eq!(c.info("nb").unwrap().memory_mib, 128, "nothing changed");
    let r = c.resources("nb").unwrap();
    assert_eq!(
        (live(&r).vcpus, live(&r).max_vcpus, live(&r).memory_bytes),
        (1, 1, 128 * MIB)
    );
    for vm in ["rs", "nb"] {
        c.destroy(vm).unwrap();
    }
}
