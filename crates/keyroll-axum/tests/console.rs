//! The console in a real browser: Debian's Chromium, driven over
//! WebDriver by its ChromeDriver (`KEYROLL_CHROMEDRIVER`; `.ci/run`
//! installs both). It drives create → copy the token → renew (the old
//! token kept for later) → delete the old token → revoke → deactivate,
//! checking after each step what the page shows and what the API then
//! answers, then a renewal by keyboard alone closed before choosing
//! (which leaves the old token for later). Screenshots at 1440 and 390
//! pixels wide go to `target/console-screenshots/`.
#![cfg(feature = "admin")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use keyroll::store::InMemoryStore;
use keyroll::{KeyId, KeyManager, NewKey, OwnerId, Scopes};
use keyroll_axum::admin::Admin;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower::ServiceExt;

/// ChromeDriver, killed when the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> (Driver, Client) {
    let driver_path =
        std::env::var("KEYROLL_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let port = free_port();
    let driver = Driver(
        Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{driver_path} does not start: {e}")),
    );
    let chromium = std::env::var("KEYROLL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1440,1000",
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (driver, client),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("ChromeDriver at {url} did not answer");
}

/// Waits until the JavaScript expression `condition` holds on the page.
async fn until(c: &Client, condition: &str) {
    let script = format!("return Boolean({condition});");
    for _ in 0..100 {
        if c.execute(&script, vec![]).await.unwrap() == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = text(c, "#status").await;
    let error = text(c, "#error").await;
    panic!("the page never showed {condition} (status {status:?}, error {error:?})");
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Presses `key` in the element that has the focus.
async fn press(c: &Client, key: Key) {
    let focused = c.active_element().await.unwrap();
    focused.send_keys(&key).await.unwrap();
}

/// The value of the input `css`.
async fn value(c: &Client, css: &str) -> String {
    let input = c.find(Locator::Css(css)).await.unwrap();
    input.prop("value").await.unwrap().unwrap_or_default()
}

async fn displayed(c: &Client, css: &str) -> bool {
    let element = c.find(Locator::Css(css)).await.unwrap();
    element.is_displayed().await.unwrap()
}

async fn enabled(c: &Client, css: &str) -> bool {
    let element = c.find(Locator::Css(css)).await.unwrap();
    element.is_enabled().await.unwrap()
}

/// Clicks the element `css`; found again when the page drew it anew
/// between the finding and the click (a list refreshed).
async fn click(c: &Client, css: &str) {
    use fantoccini::error::{CmdError, ErrorStatus};
    for _ in 0..50 {
        match c.find(Locator::Css(css)).await.unwrap().click().await {
            Ok(_) => return,
            Err(CmdError::Standard(e)) if e.error == ErrorStatus::StaleElementReference => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{css}: {e}"),
        }
    }
    panic!("{css} kept being drawn anew");
}

/// Replaces the value of the input `css`, once it can take one (a page
/// still settling after a load may not let it yet).
async fn type_into(c: &Client, css: &str, value: &str) {
    until(
        c,
        &format!("document.querySelector(\"{css}\").offsetWidth > 0"),
    )
    .await;
    let input = c.find(Locator::Css(css)).await.unwrap();
    input.clear().await.unwrap_or_else(|e| panic!("{css}: {e}"));
    input.send_keys(value).await.unwrap();
}

/// The text of the row of key `id`.
async fn row(c: &Client, id: &str) -> String {
    text(c, &format!("tr[data-key='{id}']")).await
}

/// Opens the menu of `id`'s row and clicks the item `label`.
async fn menu(c: &Client, id: &str, label: &str) {
    click(c, &format!("tr[data-key='{id}'] summary")).await;
    let items = c
        .find_all(Locator::Css(&format!(
            "tr[data-key='{id}'] .menu-items button"
        )))
        .await
        .unwrap();
    for item in items {
        if item.text().await.unwrap() == label {
            return item.click().await.unwrap();
        }
    }
    panic!("no {label:?} in the menu of {id}");
}

/// The labels the menu of `id` offers.
async fn menu_items(c: &Client, id: &str) -> Vec<String> {
    let script = format!(
        "return [...document.querySelectorAll(\"tr[data-key='{id}'] .menu-items button\")].map(b => b.textContent);"
    );
    serde_json::from_value(c.execute(&script, vec![]).await.unwrap()).unwrap()
}

/// A main state of the page: checked by axe-core and saved as a
/// screenshot, at both widths.
async fn shoot(c: &Client, name: &str) {
    shoot_at(c, name, None).await;
}

/// As [`shoot`], with the element `css` scrolled to the top at each width.
async fn shoot_at(c: &Client, name: &str, css: Option<&str>) {
    let dir = screenshots();
    for (width, height) in [(1440, 1000), (390, 844)] {
        c.set_window_size(width, height).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        if let Some(css) = css {
            let scroll =
                format!("document.querySelector(\"{css}\").scrollIntoView(); return true;");
            c.execute(&scroll, vec![]).await.unwrap();
        }
        axe(c, &format!("{name} at {width} px")).await;
        let png = c.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
    }
    c.set_window_size(1440, 1000).await.unwrap();
}

/// Runs axe-core (its `axe.min.js` from npm, at `KEYROLL_AXE`; `.ci/run`
/// installs it) on the page, and fails naming every violation.
async fn axe(c: &Client, state: &str) {
    let path = std::env::var("KEYROLL_AXE")
        .expect("KEYROLL_AXE: the path of axe-core's axe.min.js (`bash .ci/run` installs it)");
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    c.execute(&format!("{source}\nreturn true;"), vec![])
        .await
        .unwrap();
    let violations = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
                 .then((r) => done(r.violations.map((v) => ({
                     id: v.id, impact: v.impact, help: v.help,
                     nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ': ' + n.failureSummary),
                 }))))
                 .catch((e) => done([{ id: 'axe-error', help: String(e) }]));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(violations, json!([]), "axe-core, {state}: {violations:#}");
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The token of `ops`, a key holding the admin scope, made in `keys`.
async fn admin_key(keys: &KeyManager<InMemoryStore>) -> String {
    let ops =
        NewKey::new(KeyId::new("ops").unwrap()).scopes(Scopes::new(["keyroll:admin"]).unwrap());
    let now = OffsetDateTime::now_utc();
    let (admin, _) = keys.create_key(ops, now, &mut rand::rng()).await.unwrap();
    admin.expose_secret().to_owned()
}

/// The admin router over `keys`, served on a loopback port: the router
/// (for calls in process) and the served address.
async fn serve_admin(keys: &Arc<KeyManager<InMemoryStore>>) -> (Router, String) {
    let app = Router::new().nest("/admin", Admin::new(keys.clone()).router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app.clone()).into_future());
    (app, base)
}

/// The console at `base` in a browser, signed in with the token `admin`
/// (typed, then Enter).
async fn signed_in(base: &str, admin: &str) -> (Driver, Client) {
    let (driver, c) = browser().await;
    c.goto(&format!("{base}/admin/console")).await.unwrap();
    until(&c, "document.querySelector('#admin-token')").await;
    type_into(&c, "#admin-token", admin).await;
    press(&c, Key::Enter).await;
    (driver, c)
}

/// What the API answers for key `id`.
async fn api_key(app: &Router, admin: &str, id: &str) -> (StatusCode, Value) {
    let request = Request::get(format!("/admin/keys/{id}"))
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keyroll_browser),
    ignore = "needs Chromium and ChromeDriver: `apt-get install chromium chromium-driver` and set KEYROLL_CHROMEDRIVER=/usr/bin/chromedriver (`bash .ci/run` does)"
)]
async fn the_console_renews_a_key_as_the_product_does_in_a_real_browser() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()).with_usage_recording(true));
    let now = OffsetDateTime::now_utc();
    let ops = NewKey::new(KeyId::new("ops").unwrap())
        .label("Operators")
        .scopes(Scopes::new(["keyroll:admin"]).unwrap());
    let (admin, _) = keys.create_key(ops, now, &mut rand::rng()).await.unwrap();
    let admin = admin.expose_secret().to_owned();
    // A key with settings the row has no column for.
    let fenced = NewKey::new(KeyId::new("fenced").unwrap())
        .with(keyroll::Change::Networks(Some(
            "10.0.0.0/8,2001:db8::/32".parse().unwrap(),
        )))
        .unwrap();
    keys.create_key(fenced, now, &mut rand::rng())
        .await
        .unwrap();
    // More keys than a page holds (after `ops` and `shop` in id order),
    // the first expiring in 3 days.
    for n in 0..55 {
        let mut bulk = NewKey::new(KeyId::new(format!("zz-bulk-{n:02}")).unwrap())
            .owner(OwnerId::new("bulk").unwrap());
        if n == 0 {
            bulk = bulk.expires_at(now + time::Duration::days(3));
        }
        keys.create_key(bulk, now, &mut rand::rng()).await.unwrap();
    }
    let (app, base) = serve_admin(&keys).await;
    let (_driver, c) = browser().await;

    // Sign in: the token typed, then Enter.
    c.goto(&format!("{base}/admin/console")).await.unwrap();
    shoot(&c, "0-sign-in").await;
    type_into(&c, "#admin-token", "kr_not_a_token").await;
    press(&c, Key::Enter).await;
    until(
        &c,
        "document.querySelector('#error').textContent.includes('admin token was refused')",
    )
    .await;
    type_into(&c, "#admin-token", &admin).await;
    press(&c, Key::Enter).await;
    until(&c, "!document.querySelector('#app').hidden").await;
    assert!(!c.current_url().await.unwrap().as_str().contains(&admin));
    assert!(row(&c, "ops").await.contains("Operators"));
    assert!(
        row(&c, "fenced")
            .await
            .contains("networks: 10.0.0.0/8,2001:db8::/32")
    );
    // Expiring soon, flagged.
    until(&c, "!document.querySelector('#expiring-panel').hidden").await;
    assert!(text(&c, "#expiring").await.contains("zz-bulk-00 expires"));
    assert!(row(&c, "zz-bulk-00").await.contains("Expires soon"));

    // Bad input is told as text the user can act on, and creates nothing.
    click(&c, "#create").await;
    type_into(&c, "#new-id", "has space").await;
    click(&c, "#create-submit").await;
    until(&c, "!document.querySelector('#create-error').hidden").await;
    assert!(text(&c, "#create-error").await.contains("has space"));

    // Create: the token shown once, copied.
    type_into(&c, "#new-id", "shop").await;
    type_into(&c, "#new-label", "Shop integration").await;
    type_into(&c, "#new-owner", "acme").await;
    type_into(&c, "#new-scopes", "orders:read orders:write").await;
    click(&c, "#create-submit").await;
    until(&c, "document.querySelector('#token-dialog').open").await;
    let first = value(&c, "#new-token").await;
    assert!(
        keys.authenticate(first.as_str(), OffsetDateTime::now_utc())
            .await
            .is_ok()
    );
    click(&c, "#copy").await;
    until(
        &c,
        "document.querySelector('#copy-status').textContent.length > 0",
    )
    .await;
    let copied = text(&c, "#copy-status").await;
    assert!(
        copied.contains("Copied") || copied.contains("Ctrl+C"),
        "{copied}"
    );
    assert!(!displayed(&c, "#deletion").await);
    shoot(&c, "1-created").await;
    click(&c, "#finish").await;
    until(&c, "document.querySelector(\"tr[data-key='shop']\")").await;
    until_focus_on_row(&c, "shop").await;
    let shown = row(&c, "shop").await;
    for expected in [
        "Shop integration",
        "acme",
        "orders:read orders:write",
        "active",
        "Due",
    ] {
        assert!(shown.contains(expected), "{expected:?} in {shown:?}");
    }
    assert!(
        !c.source().await.unwrap().contains(&first),
        "the token left the page"
    );
    let (status, key) = api_key(&app, &admin, "shop").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["owner"], "acme");

    // Renew, keeping the old token for later.
    assert_eq!(menu_items(&c, "shop").await[0], "Renew token");
    menu(&c, "shop", "Renew token").await;
    until(&c, "document.querySelector('#token-dialog').open").await;
    assert!(displayed(&c, "#deletion").await);
    let later = c
        .find(Locator::Css("input[name='delete-old'][value='later']"))
        .await
        .unwrap();
    assert!(later.is_selected().await.unwrap(), "Later is the default");
    let second = value(&c, "#new-token").await;
    assert_ne!(first, second);
    shoot(&c, "2-renewed").await;
    click(&c, "#finish").await;
    until(
        &c,
        "document.querySelector(\"tr[data-key='shop']\").textContent.includes('Old token due')",
    )
    .await;
    until_focus_on_row(&c, "shop").await;
    let shown = row(&c, "shop").await;
    assert!(
        shown.contains("New token due") && shown.contains("Old token kept until deleted"),
        "{shown}"
    );
    assert_eq!(
        menu_items(&c, "shop").await[..3],
        [
            "Delete old token",
            "Delete old token if unused",
            "Undo renewal"
        ]
    );
    let (_, key) = api_key(&app, &admin, "shop").await;
    assert_eq!(
        (key["pending_deletion"].clone(), key["decision"].clone()),
        (json!(true), json!("later"))
    );
    let now = OffsetDateTime::now_utc();
    assert!(
        keys.authenticate(first.as_str(), now).await.is_ok(),
        "the old token stays valid"
    );
    assert!(keys.authenticate(second.as_str(), now).await.is_ok());
    shoot(&c, "3-pending").await;

    // Delete the old token, confirmed, told that it cannot be undone.
    menu(&c, "shop", "Delete old token").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    assert!(text(&c, "#confirm-text").await.contains("cannot be undone"));
    shoot(&c, "4-confirm-delete-old").await;
    click(&c, "#confirm-ok").await;
    until(
        &c,
        "!document.querySelector(\"tr[data-key='shop']\").textContent.includes('Old token')",
    )
    .await;
    assert!(
        text(&c, "#status")
            .await
            .contains("Deleted the old token of shop")
    );
    let (_, key) = api_key(&app, &admin, "shop").await;
    assert_eq!(key["pending_deletion"], false);
    let now = OffsetDateTime::now_utc();
    assert!(
        keys.authenticate(first.as_str(), now).await.is_err(),
        "the old token is gone"
    );
    assert!(keys.authenticate(second.as_str(), now).await.is_ok());

    // Revoke the new token, as if it had leaked.
    click(&c, "#revoke").await;
    type_into(&c, "#revoke-token", &second).await;
    click(&c, "#revoke-submit").await;
    until(
        &c,
        "document.querySelector('#status').textContent.includes('Revoked the token of shop')",
    )
    .await;
    until(
        &c,
        "document.querySelector(\"tr[data-key='shop']\").textContent.includes('token revoked')",
    )
    .await;
    until_focus_on_row(&c, "shop").await;
    let (_, key) = api_key(&app, &admin, "shop").await;
    assert!(key["current_token"]["revoked_at"].is_string());
    assert!(
        keys.authenticate(second.as_str(), OffsetDateTime::now_utc())
            .await
            .is_err()
    );

    // Deactivate, confirmed.
    menu(&c, "shop", "Deactivate").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    click(&c, "#confirm-ok").await;
    until(
        &c,
        "document.querySelector(\"tr[data-key='shop'] .badge\").textContent === 'inactive'",
    )
    .await;
    let (_, key) = api_key(&app, &admin, "shop").await;
    assert_eq!(key["status"], "inactive");
    assert!(
        menu_items(&c, "shop")
            .await
            .contains(&"Activate".to_owned())
    );

    // The usage chart: the admin's own calls, as bars as wide as the
    // panel, with a tick at each midnight; the arrow keys read an hour.
    menu(&c, "ops", "Usage").await;
    until(
        &c,
        "document.querySelectorAll('#usage-chart svg rect.bar').length > 0",
    )
    .await;
    let title = text(&c, "#usage-legend").await;
    assert!(
        title.contains("Accepted") && !title.contains("Accepted 0"),
        "{title}"
    );
    let widths = "const svg = document.querySelector('#usage-chart svg'); \
        return svg.getBoundingClientRect().width / svg.parentElement.getBoundingClientRect().width;";
    assert_eq!(c.execute(widths, vec![]).await.unwrap(), json!(1));
    c.execute("document.querySelector('#usage-chart svg').focus()", vec![])
        .await
        .unwrap();
    press(&c, Key::End).await;
    let readout = text(&c, ".usage-readout").await;
    assert!(
        readout.contains("accepted") && !readout.starts_with("0 accepted"),
        "the current hour holds the admin's calls: {readout}"
    );
    press(&c, Key::Left).await;
    assert_ne!(text(&c, ".usage-readout").await, readout);
    shoot(&c, "5-usage").await;

    // By keyboard alone: a renewal of `ops` closed with Escape before
    // choosing, which leaves the old token for later.
    c.execute(
        "document.querySelector(\"tr[data-key='ops'] summary\").focus()",
        vec![],
    )
    .await
    .unwrap();
    press(&c, Key::Enter).await;
    // Tab to the menu's first item and press it.
    press(&c, Key::Tab).await;
    let item = c.active_element().await.unwrap();
    assert_eq!(item.text().await.unwrap(), "Renew token");
    item.send_keys(&Key::Enter).await.unwrap();
    until(&c, "document.querySelector('#token-dialog').open").await;
    let ops_new = value(&c, "#new-token").await;
    press(&c, Key::Escape).await;
    until(&c, "!document.querySelector('#token-dialog').open").await;
    until(&c, "document.querySelector(\"tr[data-key='ops']\").textContent.includes('Old token kept until deleted')").await;
    let (_, key) = api_key(&app, &admin, "ops").await;
    assert_eq!(
        key["decision"], "undecided",
        "closing before choosing decides nothing"
    );
    let now = OffsetDateTime::now_utc();
    assert!(
        keys.authenticate(admin.as_str(), now).await.is_ok(),
        "the old token stays, as with Later"
    );
    assert!(keys.authenticate(ops_new.as_str(), now).await.is_ok());

    // The menu offers only what the key's state allows.
    click(&c, "#usage-close").await;
    click(&c, "tr[data-key='ops'] summary").await;
    shoot(&c, "6-menu").await;
    click(&c, "tr[data-key='ops'] summary").await;

    // Pages of 50, and one owner's keys.
    assert_eq!(text(&c, "#page-label").await, "Keys 1–50");
    click(&c, "#next").await;
    until(&c, "document.querySelector(\"tr[data-key='zz-bulk-54']\")").await;
    assert_eq!(text(&c, "#page-label").await, "Keys 51–58");
    assert!(!enabled(&c, "#next").await);
    click(&c, "#previous").await;
    until(&c, "document.querySelector(\"tr[data-key='ops']\")").await;
    type_into(&c, "#owner-filter", "acme").await;
    press(&c, Key::Enter).await;
    until(
        &c,
        "document.querySelectorAll('#keys tbody tr').length === 1",
    )
    .await;
    assert!(row(&c, "shop").await.contains("acme"));
    assert_eq!(text(&c, "#page-label").await, "Keys 1–1 of acme");
    c.close().await.unwrap();
}

/// Waits until the focus is on the Actions button of `id`'s row (a
/// dialog's closing gives it back once its handlers have run).
async fn until_focus_on_row(c: &Client, id: &str) {
    until(
        c,
        &format!(
            "document.activeElement.tagName === 'SUMMARY' && document.activeElement.closest('tr') \
             && document.activeElement.closest('tr').dataset.key === {id:?}"
        ),
    )
    .await;
}

/// A key stored by keyroll 0.3 under an id new keys may not have.
async fn legacy_key(keys: &KeyManager<InMemoryStore>, id: &str, renewing: bool) {
    let now = OffsetDateTime::now_utc();
    let (mut key, _, _) =
        keyroll::ApiKey::issue(KeyId::new("stand-in").unwrap(), now, &mut rand::rng()).unwrap();
    if renewing {
        key.renew(now, &mut rand::rng()).unwrap();
    }
    let mut record = serde_json::to_value(&key).unwrap();
    record["id"] = json!(id);
    let key: keyroll::ApiKey = serde_json::from_value(record).unwrap();
    keyroll::store::KeyStore::insert(keys.store(), &key, &[])
        .await
        .unwrap();
}

/// Actions reach the key they name, whatever its id: keys that only 0.3
/// could make (`.`, `..`: segments a browser collapses) offer no action,
/// and one named `.x` or `a.b` is acted on itself. After every dialog
/// (confirmed, cancelled, Escape, Finish) the focus is back on the row's
/// Actions button, and what happened is told beside the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keyroll_browser),
    ignore = "needs Chromium and ChromeDriver: `apt-get install chromium chromium-driver` and set KEYROLL_CHROMEDRIVER=/usr/bin/chromedriver (`bash .ci/run` does)"
)]
async fn the_console_acts_on_the_key_it_names_and_gives_the_focus_back() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()));
    let now = OffsetDateTime::now_utc();
    let admin = admin_key(&keys).await;
    for id in [".", "..", ".x"] {
        legacy_key(&keys, id, true).await;
    }
    for id in ["old-token", "a.b", "x"] {
        keys.create_key(KeyId::new(id).unwrap(), now, &mut rand::rng())
            .await
            .unwrap();
        keys.renew(&KeyId::new(id).unwrap(), now, &mut rand::rng())
            .await
            .unwrap();
    }
    let (_, base) = serve_admin(&keys).await;
    let (_driver, c) = browser().await;

    // The service's root and the console with a slash too many lead to it.
    c.goto(&format!("{base}/admin/console/")).await.unwrap();
    until(&c, "document.querySelector('#admin-token')").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/admin/console")
    );
    c.goto(&format!("{base}/admin")).await.unwrap();
    until(&c, "document.querySelector('#admin-token')").await;
    type_into(&c, "#admin-token", &admin).await;
    press(&c, Key::Enter).await;
    until(&c, "!document.querySelector('#app').hidden").await;

    // `.` and `..` cannot be named in a URL: no action is offered.
    for id in [".", ".."] {
        let shown = row(&c, id).await;
        assert!(shown.contains("Use keyctl"), "{id}: {shown}");
        assert!(menu_items(&c, id).await.is_empty());
    }
    let pending = |id: &str| {
        let keys = keys.clone();
        let id = KeyId::existing(id).unwrap();
        async move { keys.get(&id).await.unwrap().unwrap().old_token().is_some() }
    };

    // Delete the old token of `.x`, confirmed: it reaches `.x`, no other.
    menu(&c, ".x", "Delete old token").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    click(&c, "#confirm-ok").await;
    until(&c, "document.querySelector(\"tr[data-key='.x']\") && !document.querySelector(\"tr[data-key='.x']\").textContent.includes('Old token')").await;
    assert!(!pending(".x").await);
    for other in ["old-token", "a.b", "x", ".", ".."] {
        assert!(pending(other).await, "{other} untouched");
    }
    until_focus_on_row(&c, ".x").await;
    // Told beside the row it concerns, not far above.
    let note = text(&c, "tr[data-key='.x'] + tr.notice-row").await;
    assert!(note.contains("Deleted the old token of .x"), "{note}");
    shoot(&c, "7-told-beside-the-row").await;

    // Cancelled, by the button and by Escape: nothing happens, the focus
    // comes back, and the note of the last action stays beside its row.
    menu(&c, "a.b", "Undo renewal").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    click(&c, "#confirm-cancel").await;
    until(&c, "!document.querySelector('#confirm-dialog').open").await;
    until_focus_on_row(&c, "a.b").await;
    menu(&c, "a.b", "Undo renewal").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    press(&c, Key::Escape).await;
    until(&c, "!document.querySelector('#confirm-dialog').open").await;
    until_focus_on_row(&c, "a.b").await;
    assert!(pending("a.b").await);

    // Undo `a.b` for real, then renew it and Finish.
    menu(&c, "a.b", "Undo renewal").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    click(&c, "#confirm-ok").await;
    until(
        &c,
        "document.querySelector(\"tr[data-key='a.b'] + tr.notice-row\")",
    )
    .await;
    assert!(!pending("a.b").await);
    assert!(pending("old-token").await, "old-token untouched");
    until_focus_on_row(&c, "a.b").await;
    // The note of `.x` is gone: one note, for the last action.
    assert_eq!(
        c.execute(
            "return document.querySelectorAll('tr.notice-row').length",
            vec![]
        )
        .await
        .unwrap(),
        json!(1)
    );
    menu(&c, "a.b", "Renew token").await;
    until(&c, "document.querySelector('#token-dialog').open").await;
    click(&c, "#finish").await;
    until(&c, "!document.querySelector('#token-dialog').open").await;
    until_focus_on_row(&c, "a.b").await;
    let note = text(&c, "tr[data-key='a.b'] + tr.notice-row").await;
    assert!(note.contains("Renewed a.b"), "{note}");

    // A key deleted has no row to be told beside: the page's status line
    // tells it, visibly.
    menu(&c, "x", "Delete key").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    click(&c, "#confirm-ok").await;
    until(&c, "!document.querySelector(\"tr[data-key='x']\")").await;
    until(
        &c,
        "!document.querySelector('#status').classList.contains('visually-hidden')",
    )
    .await;
    assert!(text(&c, "#status").await.contains("Deleted x."));
    c.close().await.unwrap();
}

/// An owner's page, reached from a key's row and from the address: the
/// limits its keys share, set and cleared in place, what they allow, its
/// keys and their usage summed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keyroll_browser),
    ignore = "needs Chromium and ChromeDriver: `apt-get install chromium chromium-driver` and set KEYROLL_CHROMEDRIVER=/usr/bin/chromedriver (`bash .ci/run` does)"
)]
async fn the_console_shows_an_owner_and_sets_the_limits_its_keys_share() {
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()).with_usage_recording(true));
    let now = OffsetDateTime::now_utc();
    let admin = admin_key(&keys).await;
    let acme = OwnerId::new("acme").unwrap();
    let mut tokens = Vec::new();
    for id in ["prod", "staging", "ci"] {
        let new = NewKey::new(KeyId::new(id).unwrap()).owner(acme.clone());
        tokens.push(keys.create_key(new, now, &mut rand::rng()).await.unwrap().0);
    }
    for token in [&tokens[0], &tokens[0], &tokens[2]] {
        keys.authenticate(token.expose_secret(), now).await.unwrap();
    }
    let (_, base) = serve_admin(&keys).await;
    let (_driver, c) = signed_in(&base, &admin).await;
    until(&c, "!document.querySelector('#app').hidden").await;

    // The key list links each owner to its page.
    click(&c, "tr[data-key='prod'] a.owner-link").await;
    until(&c, "!document.querySelector('#owner-panel').hidden").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("#owner=acme")
    );
    let facts = text(&c, "#owner-facts").await;
    assert!(
        facts.contains("none: each key is metered by its own"),
        "{facts}"
    );
    assert!(
        facts.contains("Keys\n3") || facts.contains("Keys 3"),
        "{facts}"
    );
    let listed = text(&c, "#owner-keys").await;
    for id in ["ci", "prod", "staging"] {
        assert!(listed.contains(id), "{listed}");
    }
    let legend = text(&c, "#owner-legend").await;
    assert!(legend.contains("Accepted 3"), "{legend}");

    // Bad input is refused on the page, naming the field; nothing is set.
    type_into(&c, "#owner-credits", "12a").await;
    click(&c, "#owner-save").await;
    until(&c, "!document.querySelector('#owner-error').hidden").await;
    assert!(text(&c, "#owner-error").await.contains("Credits \"12a\""));
    assert_eq!(keys.owner_limits(&acme).await.unwrap(), None);

    // Set: 100 a minute and 4 credits, shared by the three keys.
    type_into(&c, "#owner-rate-limit", "100").await;
    type_into(&c, "#owner-rate-period", "1m").await;
    type_into(&c, "#owner-credits", "4").await;
    click(&c, "#owner-save").await;
    until(
        &c,
        "document.querySelector('#owner-facts').textContent.includes('4 credits')",
    )
    .await;
    let set = keys.owner_limits(&acme).await.unwrap().unwrap();
    assert_eq!(set.credits_as_set().map(|c| c.remaining()), Some(4));
    assert_eq!(set.rate().map(|r| r.limit()), Some(100));
    for token in [&tokens[1], &tokens[2], &tokens[0], &tokens[1]] {
        keys.authenticate(token.expose_secret(), now).await.unwrap();
    }
    assert!(matches!(
        keys.authenticate(tokens[0].expose_secret(), now).await,
        Err(keyroll::AuthError::UsageExceeded {
            subject: keyroll::meter::Subject::Owner,
            ..
        })
    ));
    click(&c, "tr[data-key='ci'] a.owner-link").await;
    until(
        &c,
        "document.querySelector('#owner-facts').textContent.includes('0 credits left')",
    )
    .await;
    shoot(&c, "8-owner-page").await;

    // Cleared, confirmed: the keys are metered by their own limits alone.
    click(&c, "#owner-clear").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    click(&c, "#confirm-ok").await;
    until(
        &c,
        "document.querySelector('#owner-facts').textContent.includes('none: each key')",
    )
    .await;
    assert!(keys.owner_limits(&acme).await.unwrap().unwrap().is_empty());
    keys.authenticate(tokens[0].expose_secret(), now)
        .await
        .unwrap();
    click(&c, "#owner-close").await;
    until(&c, "document.querySelector('#owner-panel').hidden").await;

    // The address opens an owner's page once signed in (on a new page:
    // the token is gone with the old one).
    c.goto(&format!("{base}/admin/openapi.json")).await.unwrap();
    c.goto(&format!("{base}/admin/console#owner=acme"))
        .await
        .unwrap();
    until(&c, "document.querySelector('#admin-token')").await;
    type_into(&c, "#admin-token", &admin).await;
    press(&c, Key::Enter).await;
    until(&c, "!document.querySelector('#owner-panel').hidden").await;
    assert!(text(&c, "#owner-title").await.contains("acme"));
    c.close().await.unwrap();
}

/// Deliveries given up on are listed with what their receiver said, and
/// retried one by one, the focus moving to the next one, then to Refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keyroll_browser),
    ignore = "needs Chromium and ChromeDriver: `apt-get install chromium chromium-driver` and set KEYROLL_CHROMEDRIVER=/usr/bin/chromedriver (`bash .ci/run` does)"
)]
async fn the_console_lists_deliveries_given_up_on_and_retries_them() {
    use keyroll::outbox::EntryState;
    use keyroll::store::KeyStore;
    let keys = Arc::new(KeyManager::new(InMemoryStore::new()).with_outbox());
    let admin = admin_key(&keys).await;
    let now = OffsetDateTime::now_utc();
    keys.create_key(KeyId::new("acme").unwrap(), now, &mut rand::rng())
        .await
        .unwrap();
    // Both keys' issue events, given up on after 16 refusals.
    let mut given_up = keys
        .store()
        .claim_outbox(10, now, time::Duration::ZERO)
        .await
        .unwrap();
    for entry in &mut given_up {
        entry.state = EntryState::Parked;
        entry.attempts = 16;
        entry.last_error = Some("POST https://hooks.example.com/keyroll: answered 503".into());
    }
    keys.store().update_outbox(&given_up).await.unwrap();
    let (_, base) = serve_admin(&keys).await;
    let (_driver, c) = signed_in(&base, &admin).await;
    until(&c, "!document.querySelector('#parked-panel').hidden").await;
    let listed = text(&c, "#parked").await;
    for expected in [
        "evt_1",
        "key_issued",
        "ops",
        "evt_2",
        "acme",
        "16 attempts",
        "answered 503",
    ] {
        assert!(listed.contains(expected), "{expected} in {listed}");
    }
    shoot(&c, "9-deliveries-given-up-on").await;

    click(&c, "button[aria-label='Retry delivery evt_1']").await;
    until(&c, "document.querySelectorAll('#parked li').length === 1").await;
    until(
        &c,
        "document.activeElement.getAttribute('aria-label') === 'Retry delivery evt_2'",
    )
    .await;
    let pending = keys
        .store()
        .outbox(EntryState::Pending, None, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id.get(), pending[0].attempts), (1, 0));
    press(&c, Key::Enter).await;
    until(&c, "document.querySelector('#parked-panel').hidden").await;
    until(&c, "document.activeElement.id === 'refresh'").await;
    assert!(text(&c, "#status").await.contains("evt_2 is pending again"));
    let counts = keys.store().outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.parked), (2, 0));
}

/// The old token's choices beyond Later and Now (in 24 hours, at a time,
/// after the new token's first use), "delete if unused" telling the old
/// token's last use, a warning before leaving with a token not copied,
/// the expiring panel's limit and links, one primary toolbar button and a
/// focus ring that shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keyroll_browser),
    ignore = "needs Chromium and ChromeDriver: `apt-get install chromium chromium-driver` and set KEYROLL_CHROMEDRIVER=/usr/bin/chromedriver (`bash .ci/run` does)"
)]
async fn the_console_offers_every_old_token_choice_and_guards_an_uncopied_token() {
    let keys = Arc::new(
        KeyManager::new(InMemoryStore::new())
            .with_usage_recording(true)
            .with_outbox(),
    );
    let now = OffsetDateTime::now_utc();
    let admin = admin_key(&keys).await;
    for id in ["timed", "graced", "idle"] {
        keys.create_key(KeyId::new(id).unwrap(), now, &mut rand::rng())
            .await
            .unwrap();
    }
    keys.renew(&KeyId::new("idle").unwrap(), now, &mut rand::rng())
        .await
        .unwrap();
    for n in 0..7 {
        let soon = NewKey::new(KeyId::new(format!("soon-{n}")).unwrap())
            .expires_at(now + time::Duration::days(n + 1));
        keys.create_key(soon, now, &mut rand::rng()).await.unwrap();
    }
    let (app, base) = serve_admin(&keys).await;
    let (_driver, c) = signed_in(&base, &admin).await;
    until(&c, "!document.querySelector('#app').hidden").await;

    // One primary button in the toolbar; a focus ring of 3:1 at least.
    let secondary = "['create', 'revoke', 'refresh'].map(id => document.getElementById(id).classList.contains('secondary'))";
    assert_eq!(
        c.execute(&format!("return {secondary};"), vec![])
            .await
            .unwrap(),
        json!([false, true, true])
    );
    press(&c, Key::Tab).await;
    let ring = c
        .execute(
            "return getComputedStyle(document.activeElement).outlineColor;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ring, json!("rgb(180, 83, 9)"));

    // The expiring panel: the soonest 5, each a link to its row.
    until(&c, "!document.querySelector('#expiring-panel').hidden").await;
    assert_eq!(
        c.execute(
            "return document.querySelectorAll('#expiring li').length;",
            vec![]
        )
        .await
        .unwrap(),
        json!(5)
    );
    assert!(text(&c, "#expiring-more").await.contains("and 2 more"));
    click(&c, "#expiring li a").await;
    until_focus_on_row(&c, "soon-0").await;

    // Renewed, the old token deleted in 24 hours; leaving before the
    // token is copied is warned against.
    menu(&c, "timed", "Renew token").await;
    until(&c, "document.querySelector('#token-dialog').open").await;
    let leaving = "const e = new Event('beforeunload', { cancelable: true }); window.dispatchEvent(e); return e.defaultPrevented;";
    assert_eq!(c.execute(leaving, vec![]).await.unwrap(), json!(true));
    click(&c, "input[name='delete-old'][value='in-24h']").await;
    click(&c, "#finish").await;
    until(&c, "!document.querySelector('#token-dialog').open").await;
    assert_eq!(c.execute(leaving, vec![]).await.unwrap(), json!(false));
    let (_, key) = api_key(&app, &admin, "timed").await;
    let at = OffsetDateTime::parse(
        key["old_token_deleted_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let from_now = at - OffsetDateTime::now_utc();
    assert!(
        from_now > time::Duration::hours(23) && from_now <= time::Duration::hours(24),
        "{from_now}"
    );

    // "At a time" without one is refused in the dialog; then "after the
    // new token's first use", with a grace of 2 hours.
    menu(&c, "graced", "Renew token").await;
    until(&c, "document.querySelector('#token-dialog').open").await;
    click(&c, "input[name='delete-old'][value='at']").await;
    click(&c, "#finish").await;
    until(&c, "!document.querySelector('#token-error').hidden").await;
    assert!(text(&c, "#token-error").await.contains("Give the time"));
    click(&c, "input[name='delete-old'][value='after-use']").await;
    type_into(&c, "#delete-grace", "2h").await;
    click(&c, "#finish").await;
    until(&c, "!document.querySelector('#token-dialog').open").await;
    let (_, key) = api_key(&app, &admin, "graced").await;
    assert!(
        key["decision"].as_str().unwrap().starts_with("after"),
        "{key}"
    );

    // Deleted if unused: the confirmation tells the old token's last use.
    menu(&c, "idle", "Delete old token if unused").await;
    until(&c, "document.querySelector('#confirm-dialog').open").await;
    assert!(text(&c, "#confirm-text").await.contains("last used: never"));
    click(&c, "#confirm-ok").await;
    until(
        &c,
        "document.querySelector('#status').textContent.includes('Deleted the old token of idle')",
    )
    .await;
    until_focus_on_row(&c, "idle").await;
    assert_eq!(
        api_key(&app, &admin, "idle").await.1["pending_deletion"],
        false
    );

    // A key's page: its tokens with their last use, what it allows, and
    // its settings edited in place, in one write; bad input is refused
    // there, naming it, and changes nothing.
    menu(&c, "graced", "Details").await;
    until(&c, "!document.querySelector('#key-panel').hidden").await;
    let facts = text(&c, "#key-facts").await;
    assert!(
        facts.contains("Old token") && facts.contains("last used never"),
        "{facts}"
    );
    until(&c, "document.activeElement.id === 'key-title'").await;
    type_into(&c, "#key-scopes", "orders:read orders\"write").await;
    click(&c, "#key-save").await;
    until(&c, "!document.querySelector('#key-error').hidden").await;
    assert!(
        text(&c, "#key-error").await.contains("orders\\\"write"),
        "{}",
        text(&c, "#key-error").await
    );
    assert_eq!(api_key(&app, &admin, "graced").await.1["scopes"], json!([]));
    type_into(&c, "#key-label", "graced v2").await;
    type_into(&c, "#key-scopes", "orders:read orders:write").await;
    type_into(&c, "#key-owner", "acme").await;
    click(&c, "#key-save").await;
    until(
        &c,
        "document.querySelector('#status').textContent.includes('Saved the settings of graced')",
    )
    .await;
    let (_, key) = api_key(&app, &admin, "graced").await;
    assert_eq!(
        (
            key["label"].clone(),
            key["scopes"].clone(),
            key["owner"].clone()
        ),
        (
            json!("graced v2"),
            json!(["orders:read", "orders:write"]),
            json!("acme")
        )
    );

    // Its limits and networks, in the same form and one write; numbers
    // are sent digit for digit, a bad one refused naming its field.
    type_into(&c, "#key-rate-limit", "ten").await;
    click(&c, "#key-save").await;
    until(
        &c,
        "document.querySelector('#key-error').textContent.includes('Requests \"ten\"')",
    )
    .await;
    type_into(&c, "#key-rate-limit", "100").await;
    type_into(&c, "#key-rate-period", "1m").await;
    type_into(&c, "#key-rate-burst", "10").await;
    type_into(&c, "#key-credits", "9007199254740993").await;
    type_into(&c, "#key-networks", "10.1.2.3/8, 192.0.2.7").await;
    click(&c, "#key-save").await;
    until(
        &c,
        "document.querySelector('#key-networks').value === '10.0.0.0/8,192.0.2.7/32'",
    )
    .await;
    let (_, key) = api_key(&app, &admin, "graced").await;
    assert_eq!(
        (
            key["rate_limit"].clone(),
            key["credits"]["remaining"].clone(),
            key["settings"]["networks"].clone()
        ),
        (
            json!({"limit": 100, "period": "1m", "burst": 10}),
            json!(9_007_199_254_740_993_u64),
            json!("10.0.0.0/8,192.0.2.7/32")
        )
    );
    // Read back digit for digit too (JavaScript's numbers stop at 2^53).
    let credits = "return document.querySelector('#key-credits').value;";
    assert_eq!(
        c.execute(credits, vec![]).await.unwrap(),
        json!("9007199254740993")
    );
    let facts = text(&c, "#key-facts").await;
    assert!(facts.contains("9007199254740993 credits left"), "{facts}");
    // Its usage, and its recent events from the outbox, newest first.
    until(&c, "document.querySelector('#key-chart svg')").await;
    let events = text(&c, "#key-events").await;
    let order = [
        "credits set",
        "label changed",
        "token renewed",
        "key issued",
    ]
    .map(|name| {
        events
            .find(name)
            .unwrap_or_else(|| panic!("{name}: {events}"))
    });
    assert!(order.is_sorted(), "{events}");
    assert!(events.contains("not delivered yet"), "{events}");
    shoot(&c, "11-key-page").await;
    shoot_at(&c, "12-key-events", Some("#key-events")).await;
    // A limit emptied is removed.
    type_into(&c, "#key-rate-limit", "").await;
    click(&c, "#key-save").await;
    until(
        &c,
        "document.querySelector('#key-events li').textContent.startsWith('rate limit changed')",
    )
    .await;
    assert_eq!(
        api_key(&app, &admin, "graced").await.1["rate_limit"],
        Value::Null
    );
    // Older events a page of 20 at a time, down to the first.
    let labels = (0..24)
        .map(|n| keyroll::Change::Label(format!("v{n}")))
        .collect();
    keys.apply_all(
        &KeyId::new("graced").unwrap(),
        labels,
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    menu(&c, "graced", "Details").await;
    until(
        &c,
        "document.querySelectorAll('#key-events li').length === 20",
    )
    .await;
    click(&c, "#key-older").await;
    until(&c, "document.querySelector('#key-older').hidden").await;
    let events = text(&c, "#key-events").await;
    assert!(events.ends_with("not delivered yet"), "{events}");
    let last = "return document.querySelector('#key-events li:last-child').textContent;";
    let last = c.execute(last, vec![]).await.unwrap();
    assert!(last.as_str().unwrap().starts_with("key issued"), "{last}");
    click(&c, "#key-close").await;
    until_focus_on_row(&c, "graced").await;

    // Search and sort, with a total, kept in the address: a reload shows
    // the same list.
    type_into(&c, "#search", "SOON").await;
    c.execute(
        "document.getElementById('sort').value = 'expiry'; return true;",
        vec![],
    )
    .await
    .unwrap();
    press(&c, Key::Enter).await;
    until(
        &c,
        "document.querySelector('#page-label').textContent.includes('found')",
    )
    .await;
    assert_eq!(text(&c, "#page-label").await, "Keys 1–7 of 7 found");
    let first = "return document.querySelector('#keys tbody tr').dataset.key;";
    assert_eq!(c.execute(first, vec![]).await.unwrap(), json!("soon-0"));
    let address = c.current_url().await.unwrap();
    assert_eq!(address.fragment(), Some("q=SOON&sort=expiry"));
    c.refresh().await.unwrap();
    until(&c, "document.querySelector('#admin-token')").await;
    type_into(&c, "#admin-token", &admin).await;
    press(&c, Key::Enter).await;
    until(
        &c,
        "document.querySelector('#page-label').textContent.includes('found')",
    )
    .await;
    assert_eq!(value(&c, "#search").await, "SOON");
    assert_eq!(c.execute(first, vec![]).await.unwrap(), json!("soon-0"));
    shoot(&c, "10-expiring-and-choices").await;

    // On a phone a card shows the key, its status and its due date; the
    // rest folds behind "Details".
    c.set_window_size(390, 844).await.unwrap();
    let owner_shown = "return getComputedStyle(document.querySelector(\"tr[data-key='soon-0'] td[data-label='Owner']\")).display !== 'none';";
    assert_eq!(c.execute(owner_shown, vec![]).await.unwrap(), json!(false));
    click(&c, "button[aria-label='Details of soon-0']").await;
    assert_eq!(c.execute(owner_shown, vec![]).await.unwrap(), json!(true));
    let toggle = c
        .find(Locator::Css("button[aria-label='Details of soon-0']"))
        .await
        .unwrap();
    assert_eq!(
        toggle.attr("aria-expanded").await.unwrap().as_deref(),
        Some("true")
    );
    c.set_window_size(1440, 1000).await.unwrap();
}
