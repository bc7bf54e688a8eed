//! The copy-storage sequences against two real QEMUs on this host, linked through plain unix
//! socket relays (what hvd's tunnel does, without hvd): the source mirrors into the target's
//! NBD export, RAM migrates, and the target's image ends up equal to the source's.

#[cfg(test)]
use super::*;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::net::{UnixListener, UnixStream};

struct Qemu {
    child: tokio::process::Child,
    qmp: Qmp,
    events: broadcast::Sender<QmpEvent>,
}

impl Qemu {
    fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "hv-mig-storage-{tag}-{}-{}",
        std::process::id(),
        crate::now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn qemu_io(image: &Path, cmd: &str) {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(image)
        .output()
        .expect("qemu-io runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmd}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn start_qemu(dir: &Path, name: &str, image: &Path, incoming: bool) -> Qemu {
    let sock = dir.join(format!("{name}.qmp"));
    let file = json!({"driver": "file", "filename": image, "node-name": "d0-file"});
    let fmt = json!({"driver": "qcow2", "node-name": "d0", "file": "d0-file"});
    // share-rw: the test writes through a second user of the node (HMP qemu-io).
    let dev = json!({"driver": "virtio-blk-pci", "drive": "d0", "id": "vda", "share-rw": true});
    let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-display", "none", "-machine", "pc-q35-7.2"])
        .args(["-accel", "tcg", "-m", "64"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args([
            "-blockdev",
            &file.to_string(),
            "-blockdev",
            &fmt.to_string(),
        ])
        .args(["-device", &dev.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if incoming {
        cmd.args(["-incoming", "defer"]);
    }
    let child = cmd.spawn().expect("qemu-system-x86_64 runs");
    let mut tries = 0;
    let stream = loop {
        match UnixStream::connect(&sock).await {
            Ok(s) => break s,
            Err(e) if tries < 200 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("QMP of {name}: {e}"),
        }
    };
    let (qmp, mut rx) = Qmp::handshake(stream, None).await.unwrap();
    let (tx, _) = broadcast::channel(256);
    let fwd = tx.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let _ = fwd.send(ev);
        }
    });
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
    )
    .await
    .unwrap();
    Qemu {
        child,
        qmp,
        events: tx,
    }
}

/// Accepts on `listen` and pumps every connection into `to`, as hvd's tunnel would. The
/// returned handle stops the relay (and cuts its connections) when aborted.
fn relay(listen: &Path, to: PathBuf) -> tokio::task::JoinHandle<()> {
    let l = UnixListener::bind(listen).unwrap();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut a, _)) = l.accept().await {
            let to = to.clone();
            conns.spawn(async move {
                if let Ok(mut b) = UnixStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    })
}

async fn wait_migration(q: &Qemu, ev: &mut broadcast::Receiver<QmpEvent>) {
    let done = crate::vm::Vm::wait_qmp_event(ev, Duration::from_secs(120), |e| {
        e.event == "MIGRATION" && matches!(e.data["status"].as_str(), Some("completed" | "failed"))
    })
    .await
    .unwrap();
    assert!(done, "migration did not finish");
    let info = q.qmp.execute("query-migrate", None).await.unwrap();
    assert_eq!(info["status"], "completed", "{info}");
}

fn vda() -> Vec<String> {
    vec!["vda".to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_storage_mirrors_into_the_target_export_and_migrates() {
    let dir = tmpdir("ok");
    let src_img = dir.0.join("src.qcow2");
    let dst_img = dir.0.join("dst.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &src_img.to_string_lossy(),
        "64M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &dst_img.to_string_lossy(),
        "64M",
    ]);
    qemu_io(&src_img, "write -P 0xab 0 4M");
    qemu_io(&src_img, "write -P 0x5c 60M 1M");

    let src = start_qemu(&dir.0, "src", &src_img, false).await;
    let dst = start_qemu(&dir.0, "dst", &dst_img, true).await;

    // Target: export the new disk; source: mirror into it through a relay.
    let nbd_target = dir.0.join("dst-nbd.sock");
    let dst_disks = disk_nodes(&dst.qmp, &vda()).await.unwrap();
    export_start(&dst.qmp, &nbd_target, &dst_disks)
        .await
        .unwrap();
    let nbd_source = dir.0.join("src-nbd.sock");
    let _nbd_relay = relay(&nbd_source, nbd_target.clone());

    let mut src_ev = src.subscribe();
    let disks = disk_nodes(&src.qmp, &vda()).await.unwrap();
    assert_eq!(disks[0].node, "d0");
    mirror_start(&src.qmp, &mut src_ev, &nbd_source, &disks, None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    mirror_wait_ready(&src.qmp, &mut src_ev, &vda(), |p| seen.push(p))
        .await
        .unwrap();
    let last = *seen.last().unwrap();
    assert_eq!(last.total, 64 << 20, "{seen:?}");
    assert_eq!(last.transferred, last.total, "{seen:?}");

    // A write while the mirror is ready reaches the target too.
    // (qemu-io prints to QEMU's stdout; the target's image is checked below.)
    src.qmp
        .hmp("qemu-io d0 \"write -P 0xcd 8M 64k\"")
        .await
        .unwrap();

    // RAM: target listens, source migrates through a relay.
    let mem_target = dir.0.join("dst-mem.sock");
    let mem_source = dir.0.join("src-mem.sock");
    let mut dst_ev = dst.subscribe();
    dst.qmp
        .execute(
            "migrate-incoming",
            Some(json!({"uri": format!("unix:{}", mem_target.display())})),
        )
        .await
        .unwrap();
    let _mem_relay = relay(&mem_source, mem_target.clone());
    src.qmp
        .execute(
            "migrate",
            Some(json!({"uri": format!("unix:{}", mem_source.display())})),
        )
        .await
        .unwrap();
    wait_migration(&src, &mut src_ev).await;
    mirror_finish(&src.qmp, &mut src_ev, &vda()).await.unwrap();
    let done = crate::vm::Vm::wait_qmp_event(&mut dst_ev, Duration::from_secs(60), |e| {
        e.event == "MIGRATION" && e.data["status"] == "completed"
    })
    .await
    .unwrap();
    assert!(done, "the target did not complete the migration");
    export_stop(&dst.qmp, &vda()).await;
    dst.qmp.cont().await.unwrap();
    assert_eq!(dst.qmp.query_status().await.unwrap(), "running");

    // Nothing of the copy is left on the source: no job, no NBD node.
    let jobs = src.qmp.execute("query-block-jobs", None).await.unwrap();
    assert_eq!(jobs, json!([]));
    let nodes = src
        .qmp
        .execute("query-named-block-nodes", None)
        .await
        .unwrap();
    assert!(
        !nodes.to_string().contains(&nbd_node("vda")),
        "NBD node left: {nodes}"
    );

    src.qmp.quit().await.unwrap();
    dst.qmp.quit().await.unwrap();
    drop(src);
    drop(dst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&src_img)
        .arg(&dst_img)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "images differ: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
    // The data written before and during the copy is on the target.
    qemu_io(&dst_img, "read -P 0xab 0 4M");
    qemu_io(&dst_img, "read -P 0xcd 8M 64k");
    qemu_io(&dst_img, "read -P 0x5c 60M 1M");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_fails_the_copy_and_leaves_the_source_running_alone() {
    let dir = tmpdir("cut");
    let src_img = dir.0.join("src.qcow2");
    let dst_img = dir.0.join("dst.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &src_img.to_string_lossy(),
        "64M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &dst_img.to_string_lossy(),
        "64M",
    ]);
    qemu_io(&src_img, "write -P 0xab 0 32M");

    let src = start_qemu(&dir.0, "src", &src_img, false).await;
    let dst = start_qemu(&dir.0, "dst", &dst_img, true).await;
    let nbd_target = dir.0.join("dst-nbd.sock");
    let dst_disks = disk_nodes(&dst.qmp, &vda()).await.unwrap();
    export_start(&dst.qmp, &nbd_target, &dst_disks)
        .await
        .unwrap();
    let nbd_source = dir.0.join("src-nbd.sock");
    let link = relay(&nbd_source, nbd_target.clone());

    let mut src_ev = src.subscribe();
    let disks = disk_nodes(&src.qmp, &vda()).await.unwrap();
    // 1 MiB/s: the copy of 32 MiB is still running when the link goes.
    mirror_start(&src.qmp, &mut src_ev, &nbd_source, &disks, Some(1 << 20))
        .await
        .unwrap();
    let targets = vda();
    let wait = mirror_wait_ready(&src.qmp, &mut src_ev, &targets, |_| {});
    // The target goes away mid-copy (its hvd killed takes the tunnel with it).
    let cut = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        link.abort();
        drop(dst);
        std::future::pending::<()>().await
    };
    let err = tokio::select! {
        r = wait => r.unwrap_err().to_string(),
        _ = cut => unreachable!(),
    };
    assert!(
        err.contains("copying disk vda to the target failed"),
        "{err}"
    );
    mirror_abort(&src.qmp, &mut src_ev, &vda()).await;

    assert_eq!(src.qmp.query_status().await.unwrap(), "running");
    let jobs = src.qmp.execute("query-block-jobs", None).await.unwrap();
    assert_eq!(jobs, json!([]));
    let nodes = src
        .qmp
        .execute("query-named-block-nodes", None)
        .await
        .unwrap();
    assert!(!nodes.to_string().contains(&nbd_node("vda")), "{nodes}");
    let blocks = src.qmp.execute("query-block", None).await.unwrap();
    assert_eq!(top_node(&blocks, "vda").as_deref(), Some("d0"));
    src.qmp.quit().await.unwrap();
}

#[test]
fn top_node_finds_the_disk_by_its_qdev_path() {
    let blocks = json!([
        {"qdev": "/machine/peripheral/vdb/virtio-backend", "inserted": {"node-name": "n2"}},
        {"qdev": "vda", "inserted": {"node-name": "n1"}},
    ]);
    assert_eq!(top_node(&blocks, "vda").as_deref(), Some("n1"));
    assert_eq!(top_node(&blocks, "vdb").as_deref(), Some("n2"));
    assert_eq!(top_node(&blocks, "vdc"), None);
    assert_eq!(top_node(&json!({}), "vda"), None);
}

#[test]
fn job_events_are_read_per_disk() {
    let ids: BTreeMap<String, String> = [(job_id("vda"), "vda".to_string())].into();
    let ev = |event: &str, data: Value| QmpEvent {
        event: event.into(),
        data,
    };
    assert_eq!(
        job_news(
            &ev("BLOCK_JOB_READY", json!({"device": "hv-mig-vda"})),
            &ids
        ),
        JobNews::Ready("vda".into())
    );
    assert_eq!(
        job_news(
            &ev(
                "JOB_STATUS_CHANGE",
                json!({"id": "hv-mig-vda", "status": "concluded"})
            ),
            &ids
        ),
        JobNews::Ended("vda".into())
    );
    assert_eq!(
        job_news(
            &ev(
                "JOB_STATUS_CHANGE",
                json!({"id": "hv-mig-vda", "status": "running"})
            ),
            &ids
        ),
        JobNews::Other
    );
    assert_eq!(
        job_news(&ev("BLOCK_JOB_READY", json!({"device": "other"})), &ids),
        JobNews::Other
    );
}
