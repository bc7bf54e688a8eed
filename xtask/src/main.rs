//! Project automation (`cargo xtask ...`), in Rust instead of ad-hoc scripts:
//!
//! - `deps`  installs the Debian packages hv and its tests need (when missing);
//! - `guest` builds (or finds cached) the tiny test guest; `guest debian` the Debian one;
//! - `demo`  the README's first command: deps, build, start hvd, boot a demo VM, show its
//!   console and `hv list`;
//! - `test`  the README's second command: deps, guest, the whole test suite, then the browser
//!   tests in `e2e/` (`node --test`, after `npm ci`);
//! - `e2e`   only the browser tests (after `cargo build -p daemon -p cli`);
//! - `e2e-assets` prints the guest files the browser tests boot (JSON);
//! - `deb [--profile release|debug]` the Debian package `target/deb/hv_VERSION_amd64.deb`;
//! - `tidy`  repository policy (dependency rules, process spawning, docs);
//! - `bench-deps` installs and configures libvirt for `hv-bench --vs libvirt` (no test needs it);
//! - `vendor-web` refreshes `web/vendor/` (noVNC, xterm.js) from `npm pack`.

mod bench_deps;
mod deb;
mod e2e;
mod tidy;
mod vendor_web;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Debian packages, in install order (qemu-utils after qemu-system-x86 so both are 7.2).
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "dnsmasq-base",
    "nftables",
    "busybox-static",
    "cpio",
    "curl",
    "openssl",
    "kmod",
    "iproute2",
    // UEFI and TPM (issue 14): OVMF, swtpm, and the EFI test disk's tools (objcopy, mtools,
    // sfdisk).
    "ovmf",
    "swtpm",
    "binutils",
    "mtools",
    "fdisk",
    // The Debian test guest (testkit::debian).
    "debootstrap",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn deps() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let qemu_img_matches = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("version 7."))
        .unwrap_or(false);
    if missing.is_empty() && qemu_img_matches {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    apt(&["update", "-qq"])?;
    for p in PACKAGES {
        if !installed(p) || (*p == "qemu-utils" && !qemu_img_matches) {
            apt(&["install", "-y", "-qq", p])?;
        }
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build_release() -> Result<PathBuf> {
    run(cargo()
        .current_dir(root())
        .args(["build", "--release", "-p", "daemon", "-p", "cli"]))?;
    Ok(root().join("target/release"))
}

fn hv(bin: &Path, args: &[&str]) -> Result<String> {
    hv_with_input(bin, args, None)
}

/// Runs `hv` with `input` on its stdin (a password: never in argv).
fn hv_with_input(bin: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin.join("hv"))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "hv {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the demo's hvd serves the HTTPS API and the web console.
const DEMO_LISTEN: &str = "127.0.0.1:8443";

/// Gives the demo's web console a login: user `demo`, admin, with a fresh random password
/// (set again on every run, printed once), and prints where to open it.
fn web_console_login(bin: &Path) -> Result<()> {
    let mut raw = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let input = format!("{password}\n");
    if hv_with_input(
        bin,
        &["user", "add", "demo", "--password-stdin"],
        Some(&input),
    )
    .is_err()
    {
        hv_with_input(bin, &["user", "passwd", "demo"], Some(&input))?;
    }
    if let Err(e) = hv(bin, &["user", "grant", "demo", "admin"]) {
        // A second demo run finds the grant there already.
        if !e.to_string().contains("already") {
            return Err(e);
        }
    }
    let fingerprint = hv(bin, &["host", "cert"]).unwrap_or_default();
    println!(
        "\n----- web console -----\n\
         open https://{DEMO_LISTEN}/ and log in as demo / {password}\n\
         (the certificate is hvd's own: its fingerprint is {}; from another machine:\n\
         ssh -L 8443:{DEMO_LISTEN} HOST, then open https://localhost:8443/)",
        fingerprint.trim()
    );
    Ok(())
}

/// The README's first command.
fn demo() -> Result<()> {
    deps()?;
    let guest = testkit::guest::tiny_guest()?;
    let bin = build_release()?;
    let socket = Path::new("/run/hv/hvd.sock");
    if hv(&bin, &["list"]).is_err() {
        let log_dir = Path::new("/var/log/hv");
        std::fs::create_dir_all(log_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join("hvd.log"))?;
        eprintln!(
            "starting hvd (socket {}, state /var/lib/hv, log /var/log/hv/hvd.log)",
            socket.display()
        );
        use std::os::unix::process::CommandExt;
        Command::new(bin.join("hvd"))
            // The web console (the KVM switch in a browser), on this host only: from another
            // machine, tunnel it (`ssh -L 8443:127.0.0.1:8443 HOST`) or run hvd with
            // `--listen 0.0.0.0:8443`.
            .args(["--listen", DEMO_LISTEN])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while hv(&bin, &["list"]).is_err() {
            if Instant::now() > deadline {
                bail!("hvd did not come up; see /var/log/hv/hvd.log");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    print!("{}", hv(&bin, &["host", "check"]).unwrap_or_default());
    let info = hv(&bin, &["info", "demo", "--format", "json"]);
    if info.is_err() {
        let kernel = guest.kernel.display().to_string();
        let initrd = guest.initrd.display().to_string();
        hv(
            &bin,
            &[
                "create",
                "demo",
                "--memory",
                "256M",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--cmdline",
                testkit::guest::CMDLINE,
            ],
        )?;
    }
    let state = hv(&bin, &["info", "demo", "--format", "json"])?;
    if !state.contains("\"running\"") {
        print!("{}", hv(&bin, &["start", "demo"])?);
    }
    hv(
        &bin,
        &[
            "wait",
            "demo",
            "--console",
            testkit::guest::PROMPT_REGEX,
            "--timeout",
            "60",
        ],
    )?;
    println!("----- console of demo (hv console demo --log) -----");
    print!(
        "{}",
        hv(&bin, &["console", "demo", "--log"])?.replace('\r', "")
    );
    println!("\n----- hv list -----");
    print!("{}", hv(&bin, &["list", "--all"])?);
    web_console_login(&bin)?;
    println!(
        "\nThe demo VM is running. Try: {0}/hv console demo   (Ctrl-] detaches)\n\
         {0}/hv shutdown demo   ·   {0}/hv undefine demo   ·   stop hvd: kill $(pidof hvd) (VMs keep running)",
        bin.display()
    );
    Ok(())
}

/// The README's second command.
/// The OpenAPI fuzzer a test runs against hvd's TLS listener, pinned so its findings do not
/// change under us.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The Prometheus parser the metrics test checks `GET /metrics` with, pinned likewise.
const PROMETHEUS_CLIENT: &str = "prometheus-client==0.21.1";

/// Installs the Debian packages of `list` that are missing.
fn apt_install(list: &[&str]) -> Result<()> {
    let missing: Vec<&str> = list.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn test_deps() -> Result<()> {
    // The package test (xtask/tests/deb.rs) builds the .deb and checks it.
    apt_install(deb::BUILD_PACKAGES)?;
    apt_install(deb::TEST_PACKAGES)?;
    let have = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .contains(SCHEMATHESIS.trim_start_matches("schemathesis=="))
        })
        .unwrap_or(false);
    if !have {
        eprintln!("installing {SCHEMATHESIS} (pip)");
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ]))?;
    }
    let have = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('prometheus-client'))",
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).trim()
                == PROMETHEUS_CLIENT.trim_start_matches("prometheus-client==")
        })
        .unwrap_or(false);
    if !have {
        eprintln!("installing {PROMETHEUS_CLIENT} (pip)");
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            PROMETHEUS_CLIENT,
        ]))?;
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    deps()?;
    test_deps()?;
    let g = testkit::guest::tiny_guest()?;
    eprintln!("tiny guest: {}", g.kernel.display());
    let d = testkit::debian::debian_guest()?;
    eprintln!("Debian guest: {}", d.image.display());
    // Build every test first, so the package holds the very hv and hvd the tests run (and
    // nothing is built twice); the package tests (xtask/tests/deb.rs, and daemon/tests/
    // systemd.rs, which installs it in the Debian guest) take it from HV_TEST_DEB.
    let cargo_args: Vec<&String> = extra.iter().take_while(|a| *a != "--").collect();
    let mut build = cargo();
    build
        .current_dir(root())
        .args(["test", "--workspace", "--no-run"])
        .args(&cargo_args);
    run(&mut build)?;
    apt_install(deb::BUILD_PACKAGES)?;
    let package = deb::deb(&root(), deb::Profile::Debug, None)?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["test", "--workspace"])
        .args(extra)
        .env("HV_TEST_DEB", &package)
        .stdout(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    let mut totals = [0u64; 3];
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(counts) = parse_test_result(&line) {
                for (t, c) in totals.iter_mut().zip(counts) {
                    *t += c;
                }
            }
        }
    }
    let status = child.wait()?;
    // The browser tests run after the Rust tests (also when those failed: both reports count).
    let browser = e2e::deps(&root(), installed).and_then(|()| e2e::run(&root()));
    if let Err(e) = &browser {
        eprintln!("{e:#}");
    }
    // One closing line for the whole run (the last `test result:` cargo prints is a doc-test
    // binary's, usually with 0 tests).
    println!(
        "hv tests: {} passed, {} failed, {} skipped",
        totals[0], totals[1], totals[2]
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    browser
}

/// `test result: ok. 3 passed; 1 failed; 2 ignored; ...` → [passed, failed, ignored].
fn parse_test_result(line: &str) -> Option<[u64; 3]> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> u64 {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(word)
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    Some([count("passed"), count("failed"), count("ignored")])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("deps") => deps(),
        Some("guest") if args.get(1).map(String::as_str) == Some("debian") => {
            let g = testkit::debian::debian_guest()?;
            println!(
                "image {}\nkernel {}\ninitrd {}\ncmdline {}",
                g.image.display(),
                g.kernel.display(),
                g.initrd.display(),
                testkit::debian::CMDLINE
            );
            Ok(())
        }
        Some("guest") => {
            let g = testkit::guest::tiny_guest()?;
            println!(
                "kernel {}\ninitrd {}\ncmdline {}",
                g.kernel.display(),
                g.initrd.display(),
                testkit::guest::CMDLINE
            );
            Ok(())
        }
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("deb") => {
            let profile = deb::parse_args(&args[1..])?;
            apt_install(deb::BUILD_PACKAGES)?;
            let path = deb::deb(&root(), profile, Some(&mut cargo()))?;
            println!("{}", path.display());
            Ok(())
        }
        Some("bench-deps") => bench_deps::bench_deps(installed, run),
        Some("vendor-web") => vendor_web::vendor_web(&root()),
        Some("e2e") => {
            deps()?;
            e2e::deps(&root(), installed)?;
            run(cargo()
                .current_dir(root())
                .args(["build", "-p", "daemon", "-p", "cli"]))?;
            e2e::run(&root())
        }
        Some("e2e-assets") => {
            println!("{}", e2e::assets()?);
            Ok(())
        }
        Some("tidy") => {
            let problems = tidy::check(&root())?;
            if !problems.is_empty() {
                bail!(
                    "tidy found {} problem(s):\n{}",
                    problems.len(),
                    problems.join("\n")
                );
            }
            println!("tidy: ok");
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask deps|guest|demo|test [cargo test args]|e2e|e2e-assets|tidy|vendor-web|bench-deps|deb [--profile release|debug]"
            );
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cargo_test_result_lines() {
        let l = "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.10s";
        assert_eq!(super::parse_test_result(l), Some([3, 1, 2]));
        assert_eq!(super::parse_test_result("running 3 tests"), None);
    }
}
