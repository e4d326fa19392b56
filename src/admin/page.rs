//! The live status page on the admin listener's `/`: one HTML page, its script and its style
//! sheet, compiled into the binary (no CDN, no build step). The page holds no data: its
//! script reads `GET /status` every 2 s with the token the operator types in (kept in the
//! tab's `sessionStorage`), and its buttons call `PUT /services/S/backends/B/state`. So the
//! three files are served without the token, and everything they show or change still needs
//! it.
//!
//! Every answer carries a `Content-Security-Policy` that allows only this listener's own
//! scripts, styles and `fetch` calls, and no framing (`frame-ancestors 'none'`, with
//! `X-Frame-Options: DENY` for older browsers), so the buttons cannot be clickjacked.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;

/// The page's files: path, media type, contents.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("page/index.html"),
    ),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    ),
    (
        "/ui/style.css",
        "text/css; charset=utf-8",
        include_str!("page/style.css"),
    ),
];

/// Only this origin's files and `fetch` calls; no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the page's files, which `GET` serves without the token.
pub fn is_page(path: &str) -> bool {
    ASSETS.iter().any(|(asset, ..)| *asset == path)
}

/// The page file at `path` (one [`is_page`] accepts) with its headers, or `None`.
pub fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, media_type, body) = ASSETS.iter().find(|(asset, ..)| *asset == path)?;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A new stickyd binary may ship a new page: the browser asks again each time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_served() {
        let html = ASSETS[0].2;
        for path in ["/ui/app.js", "/ui/style.css"] {
            assert!(html.contains(path), "index.html loads {path}");
            assert!(is_page(path) && serve(path).is_some());
        }
        assert!(!is_page("/status") && serve("/status").is_none());
    }

    #[test]
    fn the_page_has_no_inline_script_the_policy_would_block() {
        let html = ASSETS[0].2;
        assert!(!html.contains("<script>"), "an inline script");
        // An event handler attribute: ` on` + letters + `=`.
        let handler = html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "an inline event handler");
    }
}
