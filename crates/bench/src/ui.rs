//! The web console's switch page with 200 VMs: from loading `/ui/` to every VM's card rendered
//! and the search box filtering them, in Debian's chromium driven by the browser tests' pinned
//! `playwright-core` (`e2e/bench-switch.mjs`; `npm ci` in `e2e/` first, as `cargo xtask test`
//! does).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use testkit::{TestHvd, VmOpts};

use crate::extra::{row, ExtraRow};

const VMS: usize = 200;
const PASSWORD: &str = "bench-ui-password";

pub fn measure(hvd: &Path, runs: usize) -> Vec<ExtraRow> {
    vec![row(
        "switch page with 200 VMs: load `/ui/` → all cards rendered and search filtering (chromium)",
        "ms",
        switch_page(hvd, runs),
        "—",
        "≤ 1000 ms",
    )]
}

fn switch_page(hvd: &Path, runs: usize) -> Result<Vec<f64>> {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    if !e2e.join("node_modules/playwright-core").exists() {
        bail!("run `npm ci` in e2e/ first (cargo xtask test does)");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let h = TestHvd::start_with_args(hvd, &["--listen", &listen])?;
    let c = h.client();
    for i in 0..VMS {
        c.create(
            h.tiny_spec(&format!("ui-{i:04}"), VmOpts::default())?,
            false,
        )?;
    }
    c.user_add(&api::CreateUserRequest {
        name: "bench".into(),
        password: Some(PASSWORD.into()),
    })?;
    c.user_grant(
        "bench",
        &api::GrantInfo {
            role: "operator".into(),
            vm: None,
        },
    )?;
    let out = Command::new("node")
        .arg(e2e.join("bench-switch.mjs"))
        .args([
            &format!("https://{listen}"),
            "bench",
            PASSWORD,
            &VMS.to_string(),
            &runs.to_string(),
        ])
        .output()
        .context("running node e2e/bench-switch.mjs")?;
    if !out.status.success() {
        bail!(
            "bench-switch.mjs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("bench-switch.mjs said {line:?}"))?;
    let ms: Option<Vec<f64>> = v["ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect());
    ms.filter(|m| !m.is_empty())
        .with_context(|| format!("bench-switch.mjs said {line:?}"))
}
