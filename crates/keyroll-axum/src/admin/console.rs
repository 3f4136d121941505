//! The web console: one page, its script and its style, all in this
//! crate, served with a content security policy that lets nothing else in.

use axum::extract::{OriginalUri, Path};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::no_such_route;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");
const ICON: &str = include_str!("console/favicon.svg");

/// The page's own files only; no frames; data shown as text.
const POLICY: &str = "default-src 'self'; frame-ancestors 'none'";

fn serve(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The web console. It holds no data: it asks for an admin token, keeps it
/// in memory only, and calls the API with it.
#[utoipa::path(get, path = "/console", tag = "console", security(()),
    responses((status = 200, description = "The web console", content_type = "text/html")))]
pub(crate) async fn page() -> Response {
    serve("text/html; charset=utf-8", PAGE)
}

/// The console's script (`app.js`), style (`app.css`) and icon
/// (`favicon.svg`).
#[utoipa::path(get, path = "/console/{file}", tag = "console", security(()),
    params(("file" = String, Path, description = "`app.js`, `app.css` or `favicon.svg`")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript"),
        (status = 404, description = "No such file")))]
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => serve("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => serve("text/css; charset=utf-8", STYLE),
        "favicon.svg" => serve("image/svg+xml", ICON),
        _ => no_such_route().into_response(),
    }
}

/// A redirect to `location`, relative to the request's URL, so that it
/// holds wherever the router is nested.
fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => no_such_route().into_response(),
    }
}

/// The router's root (`/admin` or `/admin/` where it is nested) leads to
/// the console.
#[utoipa::path(get, path = "/", tag = "console", security(()),
    responses((status = 303, description = "To the console",
        headers(("location" = String, description = "`console`, relative to this URL")))))]
pub(crate) async fn root(OriginalUri(uri): OriginalUri) -> Response {
    // Relative to `/admin`, `console` would be `/console`: name the last
    // segment too. Relative to `/admin/`, `console` is right.
    match uri.path().rsplit('/').next() {
        Some(last) if !last.is_empty() => see_other(&format!("{last}/console")),
        _ => see_other("console"),
    }
}

/// `/console/` leads to `/console`: the page's links are relative, and
/// would break one level too deep.
#[utoipa::path(get, path = "/console/", tag = "console", security(()),
    responses((status = 303, description = "To the console",
        headers(("location" = String, description = "`../console`")))))]
pub(crate) async fn page_with_slash() -> Response {
    see_other("../console")
}
