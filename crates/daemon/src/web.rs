//! The web UI: the static files of `web/` (plain ES modules, HTML, CSS and the vendored noVNC
//! and xterm.js), embedded in hvd at build time and served at `/ui/` on both listeners with a
//! strict Content-Security-Policy. They hold no data, so they need no credentials (their
//! rule is `Action::Public`); everything they show comes from the API, which checks rights.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::routes::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "../../web/"]
struct Assets;

/// The policy of every page: nothing but this server, no inline script or style, no eval,
/// no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// The one relaxation, for the VM page alone: xterm.js 6 renders rows with `<style>`
/// elements and `style` attributes (its DOM renderer), which `style-src 'self'` blocks.
/// Scripts stay `'self'` only; a style cannot run code.
pub const CSP_CONSOLE: &str = "default-src 'none'; script-src 'self'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Pages that host the serial console (xterm.js).
const CONSOLE_PAGES: &[&str] = &["vm.html"];

pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/ui/{*path}",
            get(|Path(p): Path<String>, h: HeaderMap| async move { serve(&p, &h) }),
        )
}

/// The content type of a file we ship, by its extension (no guessing from bytes).
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt" | "md") | None => "text/plain; charset=utf-8",
        Some(e) if e.starts_with("MPL") || e.starts_with("BSD") => "text/plain; charset=utf-8",
        Some(_) => "application/octet-stream",
    }
}

/// A path the UI may ask for: relative, plain segments (no `..`, `.`, empty segment,
/// backslash or control character). Anything else is not a file of ours.
fn valid(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 256
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.contains('\\')
                && !seg.chars().any(char::is_control)
        })
}

fn not_found(path: &str) -> Response {
    ApiError(
        api::ErrorCode::NotFound,
        format!("the web UI has no file {path:?}; open /ui/"),
    )
    .into_response()
}

fn serve(path: &str, req: &HeaderMap) -> Response {
    if !valid(path) {
        return not_found(path);
    }
    let Some(file) = Assets::get(path) else {
        return not_found(path);
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let page = path.rsplit('/').next().unwrap_or(path);
    let csp = if CONSOLE_PAGES.contains(&page) {
        CSP_CONSOLE
    } else {
        CSP
    };
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, content_type(path))],
            file.data.into_owned(),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    let mut set = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(header::CONTENT_SECURITY_POLICY, csp);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    // Revalidate every time (cheap: the ETag is the file's hash), so a new hvd's UI is never
    // mixed with an old one's cached modules.
    set(header::CACHE_CONTROL, "no-cache");
    set(header::ETAG, &etag);
    set(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_ui_are_not_valid() {
        for bad in [
            "",
            "../Cargo.toml",
            "js/../../x",
            "./index.html",
            "a//b",
            "a\\b",
            "/etc/passwd",
            "a\0b",
        ] {
            assert!(!valid(bad), "{bad:?} must be refused");
        }
        assert!(valid("vendor/novnc/core/rfb.js"));
    }

    /// The relative URLs a page or module names: `src="..."`/`href="..."` in HTML,
    /// `from '...'`/`import '...'` in JS (absolute `/v1/...` API paths and `#`/`?` links are
    /// not files).
    fn references(path: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let pats: &[&str] = if path.ends_with(".html") {
            &["src=\"", "href=\""]
        } else {
            &["from '", "from \"", "import '", "import \""]
        };
        for pat in pats {
            let close = pat.chars().last().unwrap_or('"');
            for (i, _) in text.match_indices(pat) {
                let rest = &text[i + pat.len()..];
                let Some(end) = rest.find(close) else {
                    continue;
                };
                let url = &rest[..end];
                if url.is_empty()
                    || url.starts_with('/')
                    || url.starts_with('#')
                    || url.contains("://")
                    || url.contains('$')
                    || !(url.starts_with('.') || url.contains('.'))
                {
                    continue;
                }
                let url = url.split(['?', '#']).next().unwrap_or(url);
                let url = if url.ends_with('/') {
                    format!("{url}index.html")
                } else {
                    url.to_string()
                };
                out.push(url);
            }
        }
        out
    }

    /// `base`'s folder joined with a relative URL, `..` resolved.
    fn resolve(base: &str, rel: &str) -> String {
        let mut parts: Vec<&str> = base.split('/').collect();
        parts.pop();
        for seg in rel.split('/') {
            match seg {
                "." | "" => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        parts.join("/")
    }

    #[test]
    fn every_file_the_pages_load_is_embedded() {
        let mut todo: Vec<String> = ["index.html", "login.html", "vm.html"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut missing = Vec::new();
        while let Some(path) = todo.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let Some(file) = Assets::get(&path) else {
                missing.push(path);
                continue;
            };
            if path.ends_with(".html") || path.ends_with(".js") || path.ends_with(".mjs") {
                let text = String::from_utf8_lossy(&file.data).into_owned();
                for r in references(&path, &text) {
                    todo.push(resolve(&path, &r));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "referenced but not embedded: {missing:?}"
        );
        for must in [
            "vendor/novnc/core/rfb.js",
            "vendor/novnc/vendor/pako/lib/zlib/inflate.js",
            "vendor/xterm/lib/xterm.mjs",
            "vendor/xterm/css/xterm.css",
            "vendor/xterm-addon-fit/lib/addon-fit.mjs",
            "js/api.js",
        ] {
            assert!(
                seen.contains(must),
                "{must} is not loaded by any page: {seen:?}"
            );
        }
    }

    #[test]
    fn pages_have_no_inline_script_or_style() {
        for page in Assets::iter().filter(|p| p.ends_with(".html")) {
            let text =
                String::from_utf8_lossy(&Assets::get(&page).expect("embedded").data).into_owned();
            for bad in [
                "<script>",
                "style=",
                "<style",
                " onclick=",
                " onload=",
                "javascript:",
            ] {
                assert!(
                    !text.contains(bad),
                    "{page} has {bad:?}: the CSP forbids it"
                );
            }
            for script in text.match_indices("<script") {
                let tag = &text[script.0..];
                let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
                assert!(tag.contains(" src="), "{page}: inline <script>");
            }
        }
    }

    #[test]
    fn shipped_files_get_their_content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("vendor/xterm/lib/xterm.mjs"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("css/app.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("vendor/VERSIONS"), "text/plain; charset=utf-8");
        assert_eq!(content_type("x.bin"), "application/octet-stream");
    }
}
