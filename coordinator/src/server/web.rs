//! The dashboard: static files built into the binary (no front-end build step), served at
//! `/` with a strict Content-Security-Policy. The page is a client of the REST API and does
//! nothing a script could not do with the same calls.
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");
const FAVICON: &str = include_str!("../../web/favicon.svg");

fn file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/index.html", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/assets/app.js", get(|| async { file("text/javascript; charset=utf-8", APP_JS) }))
        .route("/assets/app.css", get(|| async { file("text/css; charset=utf-8", APP_CSS) }))
        .route("/assets/favicon.svg", get(|| async { file("image/svg+xml", FAVICON) }))
}

/// Headers every response carries: the page runs only its own script, is never framed, and
/// no browser guesses content types.
pub async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(h, header::CACHE_CONTROL, "no-store");
    r
}
