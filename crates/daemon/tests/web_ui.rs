//! Issue 11: hvd serves the web console's static files on both listeners, without
//! credentials, with the strict CSP and security headers, the right content types, and
//! nothing outside the embedded UI. Real hvd, real TLS (curl verifying hvd's CA) and the
//! real Unix socket.

use std::path::PathBuf;
use std::process::Command;

use testkit::TestHvd;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Ui {
    h: TestHvd,
    base: String,
    ca: PathBuf,
}

/// One answer: status, headers (lowercase names) and body.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn ui() -> Ui {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let h = TestHvd::start_with_args(
        env!("CARGO_BIN_EXE_hvd").as_ref(),
        &["--listen", &format!("127.0.0.1:{port}")],
    )
    .expect("hvd starts");
    let ca = h.state_dir.join("tls/ca.pem");
    Ui {
        h,
        base: format!("https://localhost:{port}"),
        ca,
    }
}

impl Ui {
    /// GETs `path` without credentials, over TLS or (with `unix`) hvd's socket as root.
    fn get(&self, path: &str, unix: bool, extra: &[&str]) -> Got {
        let hdr = self.h.dir.join("ui.hdr");
        let out = self.h.dir.join("ui.out");
        let _ = std::fs::remove_file(&hdr);
        let _ = std::fs::remove_file(&out);
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "--path-as-is", "-D"])
            .arg(&hdr)
            .arg("-o")
            .arg(&out)
            .args(extra);
        let url = if unix {
            cmd.arg("--unix-socket").arg(&self.h.socket);
            format!("http://localhost{path}")
        } else {
            cmd.arg("--cacert").arg(&self.ca);
            format!("{}{path}", self.base)
        };
        let o = cmd.arg(url).output().expect("curl runs");
        assert!(o.status.success(), "curl {path}: {o:?}");
        let head = std::fs::read_to_string(&hdr).unwrap_or_default();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Got {
            status,
            headers,
            body: std::fs::read(&out).unwrap_or_default(),
        }
    }
}

#[test]
fn the_ui_is_served_on_both_listeners_with_a_strict_csp_and_without_credentials() {
    let u = ui();
    for unix in [false, true] {
        let root = u.get("/", unix, &[]);
        assert_eq!(root.status, 303, "{root:?}");
        assert_eq!(root.header("location"), Some("/ui/"), "{root:?}");

        let index = u.get("/ui/", unix, &[]);
        assert_eq!(index.status, 200, "{index:?}");
        assert_eq!(
            index.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(index.header("content-security-policy"), Some(CSP));
        assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(index.header("x-frame-options"), Some("DENY"));
        let html = String::from_utf8_lossy(&index.body);
        assert!(html.contains("data-testid=\"vm-card\"") || html.contains("id=\"grid\""));
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "inline code"
        );

        for (path, ctype) in [
            ("/ui/login.html", "text/html; charset=utf-8"),
            ("/ui/js/api.js", "text/javascript; charset=utf-8"),
            ("/ui/css/app.css", "text/css; charset=utf-8"),
            (
                "/ui/vendor/novnc/core/rfb.js",
                "text/javascript; charset=utf-8",
            ),
            (
                "/ui/vendor/xterm/lib/xterm.mjs",
                "text/javascript; charset=utf-8",
            ),
            ("/ui/vendor/VERSIONS", "text/plain; charset=utf-8"),
            ("/ui/img/hv.svg", "image/svg+xml"),
        ] {
            let g = u.get(path, unix, &[]);
            assert_eq!(g.status, 200, "{path}: {g:?}");
            assert_eq!(g.header("content-type"), Some(ctype), "{path}");
            assert_eq!(
                g.header("x-content-type-options"),
                Some("nosniff"),
                "{path}"
            );
            assert!(g.header("content-security-policy").is_some(), "{path}");
            assert!(!g.body.is_empty(), "{path}");
        }
    }
    // The VM page hosts xterm.js, whose renderer needs inline styles: only style-src relaxes.
    let vm = u.get("/ui/vm.html", false, &[]);
    let csp = vm.header("content-security-policy").expect("csp");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("style-src 'self' 'unsafe-inline';"), "{csp}");
    // The ETag revalidates.
    let js = u.get("/ui/js/api.js", false, &[]);
    let etag = js.header("etag").expect("etag").to_string();
    let again = u.get(
        "/ui/js/api.js",
        false,
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(again.status, 304, "{again:?}");
    assert!(again.body.is_empty());
}

#[test]
fn paths_outside_the_embedded_ui_answer_404() {
    let u = ui();
    for path in [
        "/ui/no-such-file.html",
        "/ui/../Cargo.toml",
        "/ui/js/../../Cargo.toml",
        "/ui/%2e%2e/%2e%2e/etc/passwd",
        "/ui/..%2f..%2fetc%2fpasswd",
        "/ui/js//api.js",
        "/ui/vendor/",
        "/ui/vendor",
        "/ui/./index.html",
        "/ui/%5c..%5cCargo.toml",
    ] {
        let g = u.get(path, false, &[]);
        assert!(
            g.status == 404 || g.status == 400,
            "{path} must not be served: {g:?}"
        );
        let body = String::from_utf8_lossy(&g.body);
        assert!(
            !body.contains("[workspace]") && !body.contains("root:"),
            "{path} leaked a host file: {body}"
        );
    }
    // The API itself still needs credentials.
    let api = u.get("/v1/vms", false, &[]);
    assert_eq!(api.status, 401, "{api:?}");
}
