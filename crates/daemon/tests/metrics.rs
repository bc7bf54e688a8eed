//! Issue 13: `GET /metrics` of a real hvd with a running TCG guest, parsed by a real parser
//! (Python's `prometheus-client`, strict OpenMetrics; `cargo xtask test` installs it pinned):
//! the expected series are there, counters never go down across scrapes, and only a caller
//! with Metrics.Read (admin on all VMs) may scrape, over the TLS listener with a token.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use api::CreateVolRequest;
use model::Size;
use testkit::{TestHvd, VmOpts};

/// A series: its name and labels (sorted), as text.
type Series = BTreeMap<String, f64>;

/// Parses an exposition with prometheus-client's OpenMetrics parser: every sample as
/// `name{k="v",...}` with its value, and each family's type.
fn parse(text: &str) -> (Series, BTreeMap<String, String>) {
    const PY: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {"samples": {}, "types": {}}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out["samples"]["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refuses the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = v["samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let types = v["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    (samples, types)
}

/// `GET /metrics` through curl: over the Unix socket as root, or over TLS with a token.
fn scrape(h: &TestHvd, tls: Option<(&str, &Path, &str)>) -> (u16, String, String) {
    let out = h.dir.join("metrics.out");
    let hdrs = h.dir.join("metrics.hdrs");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "30", "-o"])
        .arg(&out)
        .arg("-D")
        .arg(&hdrs)
        .args(["-w", "%{http_code}"]);
    match tls {
        None => {
            cmd.arg("--unix-socket")
                .arg(&h.socket)
                .arg("http://hvd/metrics");
        }
        Some((base, ca, token)) => {
            let auth = h.dir.join("auth.hdr");
            std::fs::write(&auth, format!("Authorization: Bearer {token}\n")).unwrap();
            cmd.arg("--cacert")
                .arg(ca)
                .arg("-H")
                .arg(format!("@{}", auth.display()))
                .arg(format!("{base}/metrics"));
        }
    }
    let o = cmd.output().expect("curl runs");
    let status = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        status,
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&hdrs).unwrap_or_default(),
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn token(h: &TestHvd, user: &str, role: &str, vm: Option<&str>) -> String {
    let c = h.client();
    c.user_add(&api::CreateUserRequest {
        name: user.into(),
        password: None,
    })
    .unwrap();
    c.user_grant(
        user,
        &api::GrantInfo {
            role: role.into(),
            vm: vm.map(str::to_string),
        },
    )
    .unwrap();
    c.token_create(&api::CreateTokenRequest {
        user: user.into(),
        expires_secs: None,
        description: None,
    })
    .unwrap()
    .token
}

#[test]
fn metrics_parse_hold_the_series_and_counters_never_go_down() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let h = TestHvd::start_with_args(env!("CARGO_BIN_EXE_hvd").as_ref(), &["--listen", &listen])
        .expect("hvd starts");
    let c = h.client();
    c.vol_create(
        "default",
        &CreateVolRequest {
            name: "m.qcow2".parse().unwrap(),
            size: Some(Size(16 << 20)),
            format: None,
            backing: None,
        },
    )
    .unwrap();
    let mut spec = h.tiny_spec("m", VmOpts::default()).unwrap();
    spec.disks.push("vol=default/m.qcow2".parse().unwrap());
    c.create(spec, true).unwrap();
    h.wait_ready("m").unwrap();
    c.create(h.tiny_spec("idle", VmOpts::default()).unwrap(), false)
        .unwrap();

    let (status, text, headers) = scrape(&h, None);
    assert_eq!(status, 200, "{text}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    let (first, types) = parse(&text);
    let get = |s: &Series, k: &str| -> f64 {
        *s.get(k)
            .unwrap_or_else(|| panic!("no series {k} in {:#?}", s.keys().collect::<Vec<_>>()))
    };
    assert_eq!(get(&first, r#"hv_vms{state="running"}"#), 1.0);
    assert_eq!(get(&first, r#"hv_vms{state="shutoff"}"#), 1.0);
    assert!(get(&first, r#"hv_vm_cpu_seconds_total{vm="m"}"#) > 0.0);
    assert!(get(&first, r#"hv_vm_memory_rss_bytes{vm="m"}"#) > 1e6);
    assert!(first.contains_key(r#"hv_vm_disk_write_bytes_total{disk="vda",vm="m"}"#));
    assert!(
        get(
            &first,
            r#"hv_operations_finished_total{kind="create",status="succeeded"}"#
        ) >= 2.0
    );
    assert!(
        get(
            &first,
            r#"hv_api_requests_total{method="POST",route="/v1/vms",status="201"}"#
        ) >= 2.0
    );
    assert_eq!(
        types.get("hv_vm_disk_write_bytes").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types
            .get("hv_api_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert!(
        !first.keys().any(|k| k.contains("vm=\"idle\"")),
        "no figures of a stopped VM"
    );

    // Work: the guest writes 1 MiB, the API answers more requests.
    h.run_in_guest(
        "m",
        "dd if=/dev/zero of=/dev/vda bs=1M count=1 2>/dev/null && sync && echo W-$((1+1))",
        "W-2",
    )
    .unwrap();
    c.list().unwrap();
    let (_, text2, _) = scrape(&h, None);
    let (second, _) = parse(&text2);
    for (k, v) in &first {
        let is_counter = k.contains("_total{")
            || k.contains("_bucket{")
            || k.contains("_count{")
            || k.contains("_sum{");
        if is_counter {
            let now = get(&second, k);
            assert!(now >= *v, "counter {k} went down: {v} -> {now}");
        }
    }
    let w = r#"hv_vm_disk_write_bytes_total{disk="vda",vm="m"}"#;
    assert!(get(&second, w) >= get(&first, w) + (1 << 20) as f64);

    // Over TLS: an admin's token may scrape, a viewer's may not.
    let base = format!("https://localhost:{port}");
    let ca = h.state_dir.join("tls/ca.pem");
    let admin = token(&h, "ada", "admin", None);
    let viewer = token(&h, "vic", "viewer", None);
    let (status, text, _) = scrape(&h, Some((&base, &ca, &admin)));
    assert_eq!(status, 200, "{text}");
    parse(&text);
    let (status, body, _) = scrape(&h, Some((&base, &ca, &viewer)));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Metrics.Read"), "{body}");
}

/// `curl http://ADDR/PATH`: status and body.
fn plain(addr: &str, path: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "30", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_plain_metrics_listener_serves_only_metrics_and_only_to_allowed_peers() {
    let addr = format!("127.0.0.1:{}", free_port());
    let h = TestHvd::start_with_args(
        env!("CARGO_BIN_EXE_hvd").as_ref(),
        &["--metrics-listen", &addr],
    )
    .expect("hvd starts");
    let (status, body) = plain(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let (samples, _) = parse(&body);
    assert!(samples.contains_key(r#"hv_vms{state="running"}"#));
    // Nothing else of the API is on it.
    assert_eq!(plain(&addr, "/v1/vms").0, 404);
    drop(h);

    let addr = format!("127.0.0.1:{}", free_port());
    let _h = TestHvd::start_with_args(
        env!("CARGO_BIN_EXE_hvd").as_ref(),
        &["--metrics-listen", &addr, "--metrics-allow", "192.0.2.0/24"],
    )
    .expect("hvd starts");
    let (status, body) = plain(&addr, "/metrics");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--metrics-allow"), "{body}");
}
