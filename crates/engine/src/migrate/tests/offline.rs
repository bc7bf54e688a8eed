//! Offline layer transfer with real qemu-img chains: a three-layer qcow2 chain arrives with
//! its links re-pointed at the new files and reads the same; a cut link, a wrong declaration
//! or a name taken leave nothing behind.

#[cfg(test)]
use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "hv-mig-offline-{tag}-{}-{}",
        std::process::id(),
        crate::now_ms()
    ));
    std::fs::create_dir_all(d.join("src")).unwrap();
    std::fs::create_dir_all(d.join("dst")).unwrap();
    Dir(d)
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("failed"),
        "{tool} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// base ← mid ← top, each layer with its own data.
fn make_chain(src: &Path) -> Vec<SourceLayer> {
    let p = |n: &str| src.join(n).to_string_lossy().into_owned();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &p("base.qcow2"), "32M"],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 2M", &p("base.qcow2")],
    );
    for (img, below, pat) in [
        ("mid.qcow2", "base.qcow2", "0x22"),
        ("top.qcow2", "mid.qcow2", "0x33"),
    ] {
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &p(below),
                "-F",
                "qcow2",
                &p(img),
            ],
        );
        let off = if img == "mid.qcow2" { "4M" } else { "8M" };
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pat} {off} 1M"),
                &p(img),
            ],
        );
    }
    ["top.qcow2", "mid.qcow2", "base.qcow2"]
        .iter()
        .map(|n| SourceLayer {
            path: src.join(n),
            format: DiskFormat::Qcow2,
            virtual_size: 32 << 20,
        })
        .collect()
}

/// Sends every layer of `plan` through an in-memory pipe into `dst`, as the tunnel would.
async fn transfer(plan: &DiskPlan, dst: &Path) -> Result<Vec<PathBuf>> {
    let mut done: Vec<PathBuf> = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate() {
        let (mut a, mut b) = tokio::io::duplex(64 << 10);
        let file = plan.files[i].clone();
        let sender = tokio::spawn(async move { send_layer(&file, &mut a, |_| {}).await });
        let backing = layer
            .backing
            .map(|j| (done[j].as_path(), plan.layers[j].format));
        let got = receive_layer(&mut b, dst, layer, backing).await;
        if got.is_ok() {
            confirm(&mut b).await.unwrap();
        }
        drop(b);
        let sent = sender.await.unwrap();
        let path = got?;
        sent?;
        done.push(path);
    }
    Ok(done)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qcow2_chain_arrives_with_its_links_on_the_new_files() {
    let d = tmpdir("chain");
    let chain = make_chain(&d.0.join("src"));
    let plan = plan_disk("vda", &chain).unwrap();
    assert_eq!(
        plan.layers
            .iter()
            .map(|l| l.file_name.as_str())
            .collect::<Vec<_>>(),
        ["base.qcow2", "mid.qcow2", "top.qcow2"]
    );
    assert_eq!(
        plan.layers.iter().map(|l| l.backing).collect::<Vec<_>>(),
        [None, Some(0), Some(1)]
    );
    let dst = d.0.join("dst");
    let got = transfer(&plan, &dst).await.unwrap();
    assert_eq!(listing(&dst), ["base.qcow2", "mid.qcow2", "top.qcow2"]);

    // The chain now lives entirely on the target's files.
    let top = got[2].to_string_lossy().into_owned();
    let info = run(
        "qemu-img",
        &["info", "--output=json", "--backing-chain", &top],
    );
    let chain: serde_json::Value = serde_json::from_str(&info).unwrap();
    let names: Vec<&str> = chain
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["filename"].as_str().unwrap())
        .collect();
    let want: Vec<String> = got.iter().rev().map(|p| p.display().to_string()).collect();
    assert_eq!(names, want);
    assert!(
        !info.contains("/src/"),
        "a link to the source's files: {info}"
    );
    // And it reads the same as the source's chain.
    let src_top = d.0.join("src/top.qcow2").to_string_lossy().into_owned();
    run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "qcow2", &src_top, &top],
    );
    run("qemu-io", &["-f", "qcow2", "-c", "read -P 0x11 0 2M", &top]);
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0x22 4M 1M", &top],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0x33 8M 1M", &top],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_leaves_nothing_on_the_target() {
    let d = tmpdir("cut");
    let chain = make_chain(&d.0.join("src"));
    let plan = plan_disk("vda", &chain).unwrap();
    let dst = d.0.join("dst");
    // The source announces the base's length, sends part of it and goes away.
    let (mut a, mut b) = tokio::io::duplex(64 << 10);
    let len = std::fs::metadata(&plan.files[0]).unwrap().len();
    let bytes = std::fs::read(&plan.files[0]).unwrap();
    let sender = tokio::spawn(async move {
        a.write_all(&len.to_be_bytes()).await.unwrap();
        a.write_all(&bytes[..(len / 2) as usize]).await.unwrap();
    });
    let err = receive_layer(&mut b, &dst, &plan.layers[0], None)
        .await
        .unwrap_err()
        .to_string();
    sender.await.unwrap();
    assert!(err.contains("the link broke"), "{err}");
    assert_eq!(listing(&dst), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_declaration_or_a_taken_name_is_refused_and_leaves_nothing() {
    let d = tmpdir("bad");
    let chain = make_chain(&d.0.join("src"));
    let dst = d.0.join("dst");
    let mut plan = plan_disk("vda", &chain).unwrap();

    // A virtual size that is not the file's.
    plan.layers[0].virtual_size = 1 << 30;
    let err = transfer(&plan, &dst).await.unwrap_err().to_string();
    assert!(err.contains("virtual size"), "{err}");
    assert_eq!(listing(&dst), Vec::<String>::new());

    // A layer that claims no backing but has one in its header.
    let mut plan = plan_disk("vda", &chain[..1]).unwrap();
    plan.layers[0].file_name = "top.qcow2".into();
    let err = transfer(&plan, &dst).await.unwrap_err().to_string();
    assert!(err.contains("names a backing image"), "{err}");
    assert_eq!(listing(&dst), Vec::<String>::new());

    // A raw file declared as qcow2.
    let raw = d.0.join("src/disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let plan = plan_disk(
        "vdb",
        &[SourceLayer {
            path: raw,
            format: DiskFormat::Qcow2,
            virtual_size: 1 << 20,
        }],
    )
    .unwrap();
    let err = transfer(&plan, &dst).await.unwrap_err().to_string();
    assert!(err.contains("does not read as the qcow2 image"), "{err}");
    assert_eq!(listing(&dst), Vec::<String>::new());

    // A name that is taken on the target.
    std::fs::write(dst.join("base.qcow2"), b"mine").unwrap();
    let plan = plan_disk("vda", &chain).unwrap();
    let err = transfer(&plan, &dst).await.unwrap_err().to_string();
    assert!(err.contains("already exists on the target"), "{err}");
    assert_eq!(std::fs::read(dst.join("base.qcow2")).unwrap(), b"mine");
    assert_eq!(listing(&dst), ["base.qcow2"]);
}

#[test]
fn names_must_be_plain_and_unique() {
    for bad in ["", ".hidden", "a/b", "../x"] {
        assert!(check_file_name(bad).is_err(), "{bad:?}");
    }
    check_file_name("web.s1.qcow2").unwrap();
    let layer = |p: &str| SourceLayer {
        path: PathBuf::from(p),
        format: DiskFormat::Qcow2,
        virtual_size: 1,
    };
    let a = plan_disk("vda", &[layer("/p/a.qcow2")]).unwrap();
    let b = plan_disk("vdb", &[layer("/q/a.qcow2")]).unwrap();
    let err = check_names(&[a.clone(), b]).unwrap_err().to_string();
    assert!(err.contains("\"a.qcow2\" (disk vdb)"), "{err}");
    check_names(&[a]).unwrap();
    let raw_below = [
        layer("/p/top.qcow2"),
        SourceLayer {
            path: "/p/base.img".into(),
            format: DiskFormat::Raw,
            virtual_size: 1,
        },
    ];
    plan_disk("vda", &raw_below).unwrap();
}

#[test]
fn layers_are_numbered_across_disks_and_arrive_base_first() {
    let l = |name: &str, backing: Option<usize>| LayerPlan {
        file_name: name.into(),
        format: DiskFormat::Qcow2,
        virtual_size: 1,
        backing,
    };
    let a = vec![l("a0", None), l("a1", Some(0))];
    let b = vec![l("b0", None)];
    let lists = vec![a.clone(), b.clone()];
    assert_eq!(layer_index(&lists, 0), Some((0, 0)));
    assert_eq!(layer_index(&lists, 1), Some((0, 1)));
    assert_eq!(layer_index(&lists, 2), Some((1, 0)));
    assert_eq!(layer_index(&lists, 3), None);

    let mut r = Received::new(vec![("/p".into(), a), ("/q".into(), b)]);
    let e = r.next(1).unwrap_err().to_string();
    assert!(e.contains("before its backing layer"), "{e}");
    let (dir, layer, backing) = r.next(0).unwrap();
    assert_eq!(
        (dir.as_path(), layer.file_name.as_str(), backing),
        (Path::new("/p"), "a0", None)
    );
    r.arrived(0, "/p/a0".into());
    let (_, _, backing) = r.next(1).unwrap();
    assert_eq!(backing, Some((PathBuf::from("/p/a0"), DiskFormat::Qcow2)));
    assert!(r.next(0).is_err(), "twice");
    r.arrived(1, "/p/a1".into());
    assert!(!r.complete());
    let (dir, _, _) = r.next(2).unwrap();
    assert_eq!(dir, Path::new("/q"));
    r.arrived(2, "/q/b0".into());
    assert!(r.complete());
    assert!(r.next(3).is_err());
    assert_eq!(
        r.map(Path::new("/src/pool/a1")),
        Some(PathBuf::from("/p/a1"))
    );
    assert_eq!(r.map(Path::new("/src/pool/zz")), None);
    assert_eq!(r.files().len(), 3);
}
