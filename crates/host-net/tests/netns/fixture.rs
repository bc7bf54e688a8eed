//! Network namespaces for tests. Each test re-runs itself (that one test, `--exact`) under
//! `ip netns exec` in a namespace it creates, so everything the body does (links, nft, dnsmasq,
//! `ip_forward`, sysfs reads) happens there and never in the host's namespace. The outer side
//! then kills whatever is still running in the test's namespaces, deletes them, and fails the
//! test if anything had been left behind. Setup commands here use `ip` and busybox: test
//! automation, not hv code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const INSIDE: &str = "HVNT_NS";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The namespace a test body runs in, and a scratch directory that the outer side removes.
pub struct Ns {
    pub name: String,
    pub dir: PathBuf,
}

/// Runs `body` inside a fresh network namespace (see the module docs). `test` must be the
/// test function's name.
pub fn in_netns(test: &str, body: impl FnOnce(&Ns)) {
    if let Ok(name) = std::env::var(INSIDE) {
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "host_net=debug,host_exec=debug".into()),
            )
            .with_test_writer()
            .try_init();
        sh(&["ip", "link", "set", "lo", "up"]);
        body(&Ns { name, dir });
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the netns tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    );
    let name = format!(
        "hvnt-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let guard = NsGuard::create(&name);
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &name])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, &name)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let leftover = guard.leftover_processes();
    drop(guard);
    assert!(out.status.success(), "test body failed in namespace {name}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the test body did not run in namespace {name}"
    );
    assert!(
        leftover.is_empty(),
        "processes left running in the test's namespaces: {leftover:?}"
    );
}

/// Deletes the test's namespace, and every sibling namespace named after it, killing what
/// still runs inside.
struct NsGuard {
    name: String,
}

impl NsGuard {
    fn create(name: &str) -> NsGuard {
        sh(&["ip", "netns", "add", name]);
        NsGuard { name: name.into() }
    }

    fn ours(&self) -> Vec<String> {
        let out = sh(&["ip", "netns", "list"]);
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| *n == self.name || n.starts_with(&format!("{}-", self.name)))
            .map(str::to_string)
            .collect()
    }

    fn leftover_processes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ns in self.ours() {
            for pid in pids(&ns) {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                out.push(format!(
                    "{ns}: {pid} {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
            }
        }
        out
    }
}

fn pids(ns: &str) -> Vec<i32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

fn kill_and_delete(ns: &str) {
    for pid in pids(ns) {
        // SAFETY: kill takes a pid and a signal, no memory; the pid runs in a namespace this
        // test created, so it was started by this test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        for ns in self.ours() {
            kill_and_delete(&ns);
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&self.name));
    }
}

/// A second namespace (a guest, the outside world) joined to the test's namespace by a veth:
/// `host_if` stays in the test's namespace, `eth0` (with `mac`) is inside.
pub struct Peer {
    pub ns: String,
    pub host_if: String,
    children: Vec<Child>,
}

impl Ns {
    pub fn peer(&self, suffix: &str, mac: &str) -> Peer {
        let ns = format!("{}-{suffix}", self.name);
        sh(&["ip", "netns", "add", &ns]);
        let host_if = format!("nt-{suffix}");
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "address", mac,
            "netns", &ns,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        let p = Peer {
            ns,
            host_if,
            children: Vec::new(),
        };
        p.exec(&["ip", "link", "set", "lo", "up"]);
        p.exec(&["ip", "link", "set", "eth0", "up"]);
        p
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Peer {
    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.ns.as_str()];
        v.extend_from_slice(args);
        v
    }

    /// Runs a command inside; panics when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        sh(&self.argv(args))
    }

    /// Runs a command inside and returns its output, failing or not.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        run(&self.argv(args))
    }

    /// Starts a long-running command inside; it is killed when the peer is dropped.
    pub fn spawn(&mut self, args: &[&str]) {
        let argv = self.argv(args);
        let child = Command::new(argv[0]).args(&argv[1..]).spawn().unwrap();
        self.children.push(child);
    }

    /// Gets a lease with busybox udhcpc and configures it; returns the address.
    pub fn dhcp(&self, scratch: &Path) -> String {
        let script = scratch.join("udhcpc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in bound|renew)\n\
             /usr/sbin/ip addr add \"$ip/$mask\" dev \"$interface\"\n\
             [ -n \"$router\" ] && /usr/sbin/ip route add default via \"$router\"\n\
             echo \"lease $ip\";;\nesac\nexit 0\n",
        )
        .unwrap();
        sh(&["chmod", "+x", script.to_str().unwrap()]);
        let out = self.exec(&[
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-s",
            script.to_str().unwrap(),
        ]);
        out.lines()
            .find_map(|l| l.strip_prefix("lease "))
            .unwrap_or_else(|| panic!("no lease in udhcpc output: {out}"))
            .to_string()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_and_delete(&self.ns);
    }
}

/// Runs a command and returns its output, failing or not.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command; panics with its stderr when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sysfs attribute of a link in the current namespace.
pub fn sys(link: &str, attr: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{link}/{attr}"))
        .unwrap_or_else(|e| panic!("/sys/class/net/{link}/{attr}: {e}"))
        .trim()
        .to_string()
}
