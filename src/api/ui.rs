//! The web dashboard at `/ui/`: a few hand-written static files (`ui/` in the repository), built into the binary,
//! served unsigned. The page signs its own API calls in the browser (see `ui/sign.js` and `docs/dashboard.md`);
//! nothing here sees a key.
//!
//! Every answer under `/ui` carries a Content-Security-Policy that allows only this origin (no inline script or
//! style, no other host), `nosniff` and `no-referrer`. Files are revalidated on each load (`no-cache` with a
//! strong `ETag`), so a new binary's files are picked up at once while an unchanged file costs a `304`.

use std::sync::LazyLock;

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    http::header::{self, HeaderValue},
    middleware::DefaultHeaders,
    web,
};
use sha2::{Digest, Sha256};

use crate::error::{ErrorCode, Problem};

/// Only this origin: scripts and styles from files (never inline), API calls to the daemon itself, nothing framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file the dashboard has; `index.html` is also served at `/ui/`.
const ASSETS: &[Asset] = &[
    Asset { name: "index.html", content_type: HTML, body: include_bytes!("../../ui/index.html") },
    Asset { name: "app.js", content_type: JS, body: include_bytes!("../../ui/app.js") },
    Asset { name: "api.js", content_type: JS, body: include_bytes!("../../ui/api.js") },
    Asset { name: "sign.js", content_type: JS, body: include_bytes!("../../ui/sign.js") },
    Asset { name: "format.js", content_type: JS, body: include_bytes!("../../ui/format.js") },
    Asset { name: "style.css", content_type: CSS, body: include_bytes!("../../ui/style.css") },
    Asset { name: "favicon.svg", content_type: SVG, body: include_bytes!("../../ui/favicon.svg") },
];

/// Strong validators, computed once: the first 16 bytes of each file's SHA-256, quoted.
static ETAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..16]))).collect());

/// The `/ui` scope: `GET /ui` redirects to `/ui/`, `GET /ui/` is the page, `GET /ui/{file}` a file; anything else
/// is a problem document (with the same security headers).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/ui")
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::X_FRAME_OPTIONS, "DENY")),
            )
            .service(web::resource("").get(to_index).default_service(web::to(super::problem::method_not_allowed)))
            .service(web::resource("/").get(index).default_service(web::to(super::problem::method_not_allowed)))
            .service(web::resource("/{file}").get(file).default_service(web::to(super::problem::method_not_allowed)))
            .default_service(web::to(super::problem::not_found)),
    );
}

/// `GET /ui` → `/ui/`, so that the page's relative URLs resolve under `/ui/`.
async fn to_index() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/ui/")).finish()
}

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, "index.html")
}

async fn file(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    serve(&req, &name)
}

fn serve(req: &HttpRequest, name: &str) -> HttpResponse {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return Problem::new(ErrorCode::NotFound, format!("the dashboard has no file {name:?}")).error_response();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.insert_header((header::ETAG, v));
    }
    if fresh {
        return res.finish();
    }
    res.content_type(asset.content_type).body(asset.body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The page names only files that are served (a missing one would be a blank dashboard).
    #[test]
    fn every_file_the_page_and_its_modules_name_is_embedded() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        let mut named = 0;
        for asset in ASSETS.iter().filter(|a| a.content_type == HTML || a.content_type == JS) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for quoted in text.split(['"', '\'']).filter(|s| s.starts_with("./") || s.starts_with("/ui/")) {
                let name = quoted.trim_start_matches("./").trim_start_matches("/ui/");
                if name.is_empty() || name.contains(' ') {
                    continue;
                }
                assert!(names.contains(&name), "{} names {quoted}, which is not embedded", asset.name);
                named += 1;
            }
        }
        assert!(named >= 6, "the page and its modules name their files as ./NAME ({named} found)");
    }

    /// No inline script or style: the CSP forbids them, so they would silently not run.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains(" style="), "inline style attribute");
        assert!(!html.contains("<style"), "inline <style>");
        for (i, _) in html.match_indices(" on") {
            let name: String = html[i + 3..].chars().take_while(char::is_ascii_lowercase).collect();
            assert!(!html[i + 3 + name.len()..].starts_with('='), "inline event handler on{name}");
        }
        for script in html.split("<script").skip(1) {
            let open = &script[..script.find('>').unwrap()];
            assert!(open.contains("src="), "inline <script>: {open}");
        }
    }
}
