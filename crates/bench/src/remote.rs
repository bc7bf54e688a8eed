//! Remote access figures: `hv --remote X info NAME` as a new process (TLS handshake included),
//! authenticated `GET /v1/vms/{name}` per second over one keep-alive TLS connection and across
//! 50 connections, and one password login (Argon2id, slow by design).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testkit::{TestHvd, VmOpts};

use crate::extra::{row, ExtraRow};
use crate::procs::{Bins, TempDir};
use crate::stats::ms;

/// How long each throughput run lasts.
const WINDOW: Duration = Duration::from_secs(2);
const CONNECTIONS: usize = 50;

pub fn measure(bins: &Bins, runs: usize) -> Vec<ExtraRow> {
    let (mut cli, mut one, mut many, mut login) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let res = (|| -> Result<()> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let h = TestHvd::start_with_args(&bins.hvd, &["--listen", &listen])?;
        let c = h.client();
        c.create(h.tiny_spec("b", VmOpts::default())?, false)?;
        c.user_add(&api::CreateUserRequest {
            name: "bench".into(),
            password: Some("bench-password".into()),
        })?;
        c.user_grant(
            "bench",
            &api::GrantInfo {
                role: "admin".into(),
                vm: None,
            },
        )?;
        let token = c
            .token_create(&api::CreateTokenRequest {
                user: "bench".into(),
                expires_secs: None,
                description: Some("hv-bench".into()),
            })?
            .token;
        let pin = c.host_cert()?.fingerprint;
        let url = format!("https://127.0.0.1:{port}");
        // The CLI as a user runs it: its own config dir with the remote added.
        let home = TempDir::new()?;
        hv(
            bins,
            home.path(),
            &[
                "remote",
                "add",
                "x",
                &url,
                "--token",
                &token,
                "--fingerprint",
                &pin,
            ],
        )?;
        for _ in 0..runs {
            let t0 = Instant::now();
            hv(bins, home.path(), &["--remote", "x", "info", "b"])?;
            cli.push(ms(t0.elapsed()));
        }
        for _ in 0..runs.min(3) {
            let k = client::Client::https(&url, &token, Some(&pin))?;
            one.push(rate(|| k.info("b").map(drop).map_err(Into::into))?);
            many.push(parallel_rate(&url, &token, &pin)?);
        }
        let k = client::Client::https(&url, "", Some(&pin))?;
        let body = br#"{"user":"bench","password":"bench-password"}"#;
        for _ in 0..runs.min(5) {
            let t0 = Instant::now();
            let r = k.send("POST", "/v1/login", Some(body))?;
            login.push(ms(t0.elapsed()));
            drop(r);
        }
        Ok(())
    })();
    let err = |v: Vec<f64>| match &res {
        Ok(()) => Ok(v),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    vec![
        row(
            "`hv --remote X info NAME` (new process, TLS handshake)",
            "ms",
            err(cli),
            "—",
            "≤ 10 ms",
        ),
        row(
            "authenticated `GET /v1/vms/{name}`, one keep-alive TLS connection",
            "req/s",
            err(one),
            "—",
            "≥ 5000/s",
        ),
        row(
            "authenticated `GET /v1/vms/{name}`, 50 TLS connections",
            "req/s",
            err(many),
            "—",
            "≥ 2000/s",
        ),
        row(
            "password login (`POST /v1/login`, Argon2id)",
            "ms",
            err(login),
            "—",
            "≥ 50 ms by design",
        ),
    ]
}

fn hv(bins: &Bins, config: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(&bins.hv)
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("HV_SOCKET")
        .env_remove("HV_REMOTE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running hv")?;
    if !out.status.success() {
        bail!(
            "hv {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Requests per second that `call` completes in a [`WINDOW`].
fn rate(mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    call()?; // the handshake is not part of the rate
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < WINDOW {
        call()?;
        n += 1;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Requests per second across [`CONNECTIONS`] clients, each on its own connection.
fn parallel_rate(url: &str, token: &str, pin: &str) -> Result<f64> {
    let rates: Vec<Result<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                s.spawn(|| {
                    let k = client::Client::https(url, token, Some(pin))?;
                    rate(|| k.info("b").map(drop).map_err(Into::into))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let mut total = 0.0;
    for r in rates {
        total += r?;
    }
    Ok(total)
}
