// The keyroll console: plain JavaScript, no build step, no dependency.
// The admin token lives in `adminToken` only (never in storage, a cookie
// or a URL). Data is rendered as text (textContent), never as HTML.
"use strict";

let adminToken = null;
// The page of keys shown: at most PAGE_SIZE, after the cursor `after`,
// of one owner if `owner`; `previous` holds the cursors of earlier pages.
const PAGE_SIZE = 50;
const page = { after: null, previous: [], next: null, owner: "", q: "", sort: "id", offset: 0, total: null };
let keys = [];
// The keys expiring or due within 14 days, by id: read at sign-in and on
// Refresh (finding them reads every key).
let expiring = [];

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Calls the admin API (relative to this page: the console is served beside
// it) with the admin token and `body` (a value, or JSON text already
// written); resolves to the JSON answer, or rejects with an ApiError whose
// message a person can act on.
async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + adminToken };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", "The service could not be reached. Check your connection, then try again.");
  }
  let answer = null;
  try {
    // A whole number JavaScript cannot hold exactly (credits above 2^53)
    // is kept as its digits.
    answer = JSON.parse(await response.text(), (_, value, context) =>
      typeof value === "number" && !Number.isSafeInteger(value) && context && /^\d+$/.test(context.source)
        ? context.source : value);
  } catch (e) {
    answer = null;
  }
  if (response.ok) return answer;
  const code = answer && answer.error ? answer.error : "error";
  const message = answer && answer.message ? answer.message : response.statusText;
  throw new ApiError(response.status, code, explain(response.status, code, message));
}

// What a refusal means, and what to do about it.
function explain(status, code, message) {
  switch (status) {
    case 401:
      return "The admin token was refused (wrong, revoked, expired, or a bootstrap token that has retired). Sign out and sign in with a valid token.";
    case 403:
      return "This token's key lacks the admin scope: " + message + ". Use a key that holds it.";
    case 404:
      return "Not found: " + message + ". It may have been deleted; refresh the list.";
    case 409:
      return "Refused: " + message + ". Refresh the list and try again.";
    case 429:
      return "Too many requests: " + message + ". Wait a little and try again.";
    case 503:
      return "The service is unavailable: " + message;
    default:
      return message + " (" + status + " " + code + ")";
  }
}

const enc = encodeURIComponent;

// Whether an id can be one URL path segment. A browser resolves the
// segments "." and ".." (written "%2E" too) before it sends a request, so
// such an id would send the call to another route, or another key: only
// keys stored before keyroll 0.4 can have one, and the console leaves them
// alone (rename them with keyctl).
const addressable = (id) => !/^\.{1,2}$/.test(id);

// The API path of the key `id`, every segment escaped.
function keyPath(id) {
  if (!addressable(id)) {
    throw new ApiError(0, "unaddressable", "The id \"" + id + "\" cannot be used in a URL: manage or rename this key with keyctl.");
  }
  return "keys/" + enc(id);
}

// ------------------------------------------------------------------ page state

function showError(text, where) {
  const box = where || $("error");
  box.textContent = text;
  box.hidden = !text;
  if (text && !where) box.scrollIntoView({ block: "nearest" });
}

// The row note: what the last action did to one key, shown beside its
// row until the next action, refresh or page.
let notice = null;

// Tells `text`; beside the row of key `id` when given (the page's status
// line still announces it to screen readers).
function say(text, id) {
  notice = id ? { id, text } : null;
  $("status").textContent = text;
  renderNotice();
}

// Puts the note beside its row; when there is none (no note, or its key
// left the page, deleted say), the page's status line shows the text.
function renderNotice() {
  for (const old of document.querySelectorAll("#keys .notice-row")) old.remove();
  const tr = notice && rowOf(notice.id);
  $("status").classList.toggle("visually-hidden", Boolean(tr));
  if (!tr) return;
  const note = el("tr", null, "notice-row");
  const td = el("td", notice.text, "row-status");
  td.colSpan = tr.cells.length;
  note.append(td);
  tr.after(note);
}

// The table row of key `id`, if it is on this page.
const rowOf = (id) => [...$("keys").tBodies[0].rows].find((tr) => tr.dataset.key === id);

// Gives the focus back to the Actions button of key `id`'s row (or, when
// the key is not on the page, to `fallback`): after every dialog, so that
// a keyboard user goes on from where they were.
function focusRow(id, fallback) {
  const summary = id && rowOf(id) && rowOf(id).querySelector("summary");
  (summary || $(fallback || "refresh")).focus();
}

// Runs `action`; shows its failure in `where` (the page's error line by
// default) and resolves to whether it succeeded.
async function attempt(action, where) {
  showError("", where);
  try {
    await action();
    return true;
  } catch (e) {
    showError(e instanceof ApiError ? e.message : String(e), where);
    return false;
  }
}

function formatDate(value) {
  if (!value) return "never";
  const d = new Date(value);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// ------------------------------------------------------------------ sign in

$("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("admin-token");
  adminToken = input.value.trim();
  input.value = "";
  recall();
  const ok = await attempt(loadAndCount);
  if (ok) {
    $("sign-in").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    $("create").focus();
    openOwnerFromAddress();
  } else {
    adminToken = null;
    input.focus();
  }
});

$("sign-out").addEventListener("click", () => {
  adminToken = null;
  keys = [];
  expiring = [];
  Object.assign(page, { after: null, previous: [], next: null, owner: "", q: "", sort: "id", offset: 0, total: null });
  $("owner-filter").value = "";
  $("search").value = "";
  $("sort").value = "id";
  $("usage-panel").hidden = true;
  $("owner-panel").hidden = true;
  $("key-panel").hidden = true;
  parked = [];
  renderParked();
  $("keys").tBodies[0].replaceChildren();
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  showError("");
  say("Signed out: the token is forgotten.");
  $("admin-token").focus();
});

// ------------------------------------------------------------------ the list

// A search or a sort other than by id reads every key, a page at a time
// by offset, with a total (`GET /search`); otherwise keys are paged in id
// order by cursor (`GET /keys`, one owner's with the owner filter).
function searching() {
  return Boolean(page.q) || page.sort !== "id";
}

async function load() {
  if (searching()) {
    let query = "search?limit=" + PAGE_SIZE + "&offset=" + page.offset + "&sort=" + enc(page.sort);
    if (page.q) query += "&q=" + enc(page.q);
    const answer = await api("GET", query);
    keys = answer.keys;
    page.total = answer.total;
    page.next = page.offset + keys.length < answer.total ? page.offset + PAGE_SIZE : null;
  } else {
    let query = "keys?limit=" + PAGE_SIZE;
    if (page.after) query += "&after=" + enc(page.after);
    if (page.owner) query += "&owner=" + enc(page.owner);
    const answer = await api("GET", query);
    keys = answer.keys;
    page.total = null;
    page.next = answer.next;
  }
  remember();
  render();
}

// The search, sort and page, kept in the address (a reload or a shared
// link shows the same list).
function remember() {
  if (location.hash.startsWith("#owner=")) return;
  const kept = new URLSearchParams();
  if (page.q) kept.set("q", page.q);
  if (page.sort !== "id") kept.set("sort", page.sort);
  if (searching() && page.offset) kept.set("page", String(page.offset / PAGE_SIZE + 1));
  const hash = kept.toString();
  history.replaceState(null, "", location.pathname + location.search + (hash ? "#" + hash : ""));
}

// The search, sort and page an address names (`#q=acme&sort=due&page=2`).
function recall() {
  const kept = new URLSearchParams(location.hash.slice(1));
  page.q = kept.get("q") || "";
  const sort = kept.get("sort");
  page.sort = [...$("sort").options].some((o) => o.value === sort) ? sort : "id";
  const number = Number.parseInt(kept.get("page") || "1", 10);
  page.offset = searching() && number > 1 ? (number - 1) * PAGE_SIZE : 0;
  $("search").value = page.q;
  $("sort").value = page.sort;
}

// How many expiring keys the panel lists.
const EXPIRING_SHOWN = 5;

async function loadExpiring() {
  expiring = (await api("GET", "expiring?within=14d")).keys;
  render();
}

// ------------------------------------------------------------------ deliveries

// The deliveries given up on (parked outbox entries), oldest first.
let parked = [];

async function loadParked() {
  parked = (await api("GET", "outbox?state=parked")).entries;
  renderParked();
}

function renderParked() {
  $("parked").replaceChildren(...parked.map((entry, n) => {
    const item = el("li");
    const about = entry.event.key_id || (entry.event.owner ? "owner " + entry.event.owner : "");
    const retry = el("button", "Retry", "secondary");
    retry.type = "button";
    retry.setAttribute("aria-label", "Retry delivery evt_" + entry.id);
    retry.addEventListener("click", () => attempt(async () => {
      await api("POST", "outbox/" + entry.id + "/retry");
      say("Delivery evt_" + entry.id + " is pending again: it is sent at the next round.");
      await loadParked();
      // The focus goes to the next delivery's Retry, or back to Refresh.
      const buttons = $("parked").querySelectorAll("button");
      (buttons[Math.min(n, buttons.length - 1)] || $("refresh")).focus();
    }));
    const tried = entry.attempts + (entry.attempts === 1 ? " attempt" : " attempts");
    item.append(el("strong", "evt_" + entry.id), " ", el("span", entry.event.event, "flag"),
      " " + about + ": " + tried + ", last: " + (entry.last_error || "—") + " ", retry);
    return item;
  }));
  $("parked-panel").hidden = parked.length === 0;
}

function turn(after, previous, offset) {
  notice = null;
  const before = { after: page.after, previous: page.previous, offset: page.offset };
  Object.assign(page, { after, previous, offset });
  attempt(load).then((ok) => {
    if (!ok) Object.assign(page, before);
  });
}

$("next").addEventListener("click", () => searching()
  ? turn(null, [], page.next)
  : turn(page.next, [...page.previous, page.after], 0));
$("previous").addEventListener("click", () => searching()
  ? turn(null, [], Math.max(0, page.offset - PAGE_SIZE))
  : turn(page.previous.at(-1), page.previous.slice(0, -1), 0));

$("filter").addEventListener("submit", (event) => {
  event.preventDefault();
  page.owner = $("owner-filter").value.trim();
  page.q = $("search").value.trim();
  page.sort = $("sort").value;
  turn(null, [], 0);
});

// Loads the list and says how many keys it holds.
async function loadAndCount() {
  await load();
  await loadExpiring();
  await loadParked();
  say("Keys as of " + new Date().toLocaleTimeString() + ".");
}

$("refresh").addEventListener("click", () => attempt(loadAndCount));

function statusOf(key) {
  return key.expired ? "expired" : key.status;
}

function renewalOf(key) {
  if (!key.pending_deletion) return "—";
  if (key.old_token_deleted_at) return "Old token deleted " + formatDate(key.old_token_deleted_at);
  if (key.decision && key.decision.startsWith("after")) return "Old token deleted after the new one's first use";
  return "Old token kept until deleted";
}

function render() {
  const soon = new Map(expiring.map((e) => [e.key.id, e]));
  const body = $("keys").tBodies[0];
  body.replaceChildren(...keys.map((key) => row(key, soon.get(key.id))));
  $("empty").hidden = keys.length > 0;
  $("previous").disabled = searching() ? page.offset === 0 : page.previous.length === 0;
  $("next").disabled = page.next === null || page.next === undefined;
  const first = (searching() ? page.offset : page.previous.length * PAGE_SIZE) + 1;
  const total = page.total === null ? "" : " of " + page.total + (page.q ? " found" : "");
  $("page-label").textContent = keys.length
    ? "Keys " + first + "–" + (first + keys.length - 1) + total + (page.owner && !searching() ? " of " + page.owner : "")
    : page.total === 0 ? "No key found" : "";
  // The soonest few, each a link to its key's row; the rest counted.
  const shown = expiring.slice(0, EXPIRING_SHOWN);
  $("expiring").replaceChildren(
    ...shown.map((e) => {
      const item = el("li");
      const link = el("a", e.key.id, "key-id");
      link.href = "#key=" + enc(e.key.id);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        const row = rowOf(e.key.id);
        if (row) row.scrollIntoView({ block: "center" });
        focusRow(e.key.id);
      });
      item.append(link, " ",
        el("span", e.reason === "key_expires" ? "expires" : "is due for renewal", "flag"),
        " " + formatDate(e.at));
      return item;
    }),
  );
  const more = expiring.length - shown.length;
  $("expiring-more").textContent = more > 0 ? "and " + more + " more (keyctl expiring lists them all)" : "";
  $("expiring-more").hidden = more <= 0;
  $("expiring-panel").hidden = expiring.length === 0;
  renderNotice();
}

function cell(label, content) {
  const td = el("td");
  td.dataset.label = label;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

// The settings a row shows in columns of their own.
const IN_COLUMNS = new Set(["label", "owner", "scopes", "expiry"]);

// A setting's value as a change takes it, as text: `100 a minute` reads
// `limit 100, period 60 s, burst 100`.
function settingText(value) {
  if (value === null) return "none";
  if (typeof value !== "object") return String(value);
  if (Array.isArray(value)) return value.map(settingText).join(" ");
  const keys = Object.keys(value);
  if (keys.includes("secs") && keys.every((k) => k === "secs" || k === "nanos")) return value.secs + " s";
  return keys.map((k) => k.replace(/_/g, " ") + " " + settingText(value[k])).join(", ");
}

function row(key, soon) {
  const tr = el("tr");
  tr.dataset.key = key.id;
  const name = el("div");
  name.append(el("strong", key.id, "key-id"));
  if (key.label) name.append(el("div", key.label, "hint"));
  if (soon) name.append(el("div", soon.reason === "key_expires" ? "Expires soon" : "Renewal due", "flag"));
  // Every other setting, whatever it is: a new one shows without a change here.
  for (const [setting, value] of Object.entries(key.settings || {})) {
    if (!IN_COLUMNS.has(setting)) name.append(el("div", setting.replace(/_/g, " ") + ": " + settingText(value), "hint setting"));
  }
  tr.append(cell("Key", name));
  tr.append(cell("Owner", ownerLink(key.owner)));
  tr.append(cell("Scopes", key.scopes.length ? key.scopes.join(" ") : "—"));
  const status = statusOf(key);
  const state = el("div");
  state.append(el("span", status, "badge badge-" + status));
  if (key.current_token.revoked_at) state.append(el("div", "token revoked", "flag"));
  tr.append(cell("Status", state));
  // The token duration: both tokens' due dates while a renewal is pending.
  const duration = el("div", null, "duration");
  if (key.old_token) {
    duration.append(el("div", "New token due " + formatDate(key.current_token.due_at)));
    duration.append(el("div", "Old token due " + formatDate(key.old_token.due_at), "hint"));
    duration.append(el("div", "Old token last used " + formatDate(key.old_token.last_used_at), "hint"));
  } else {
    duration.append(el("div", "Due " + formatDate(key.current_token.due_at)));
  }
  if (key.current_token.freshness !== "fresh") duration.append(el("div", "Renewal overdue", "flag"));
  tr.append(cell("Token duration", duration));
  tr.append(cell("Renewal", renewalOf(key)));
  tr.append(cell("Last use", formatDate(key.last_used_at)));
  tr.append(cell("Expiry", key.expires_at ? formatDate(key.expires_at) : "never"));
  // On a phone a card shows the key, its status and its due date; the
  // rest folds behind "Details".
  for (const td of tr.cells) {
    if (FOLDED.has(td.dataset.label)) td.classList.add("fold");
  }
  const toggle = el("button", "Details", "secondary");
  toggle.type = "button";
  toggle.setAttribute("aria-expanded", "false");
  toggle.setAttribute("aria-label", "Details of " + key.id);
  toggle.addEventListener("click", () => {
    const open = tr.classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  const details = cell("Details", toggle);
  details.classList.add("phone-only");
  tr.append(details);
  tr.append(cell("Actions", menu(key)));
  return tr;
}

// What a card folds on a phone.
const FOLDED = new Set(["Owner", "Scopes", "Renewal", "Last use", "Expiry"]);

// The menu of a key's row: only what the key's state allows.
function menu(key) {
  if (!addressable(key.id)) return el("span", "Use keyctl: this id cannot be used in a URL", "hint");
  const details = el("details", null, "menu");
  const summary = el("summary", "Actions");
  summary.setAttribute("aria-label", "Actions for " + key.id);
  details.append(summary);
  const items = el("div", null, "menu-items");
  const item = (text, action, className) => {
    const button = el("button", text, className);
    button.type = "button";
    button.addEventListener("click", () => {
      details.open = false;
      action();
    });
    items.append(button);
  };
  if (!key.pending_deletion) item("Renew token", () => renew(key));
  if (key.pending_deletion) {
    item("Delete old token", () => deleteOld(key), "danger");
    item("Delete old token if unused", () => deleteOldIfIdle(key), "danger");
    item("Undo renewal", () => undo(key));
  }
  item("Details", () => showKey(key.id));
  item("Usage", () => usage(key));
  if (key.status === "active") item("Deactivate", () => deactivate(key));
  else item("Activate", () => act(key, "POST", "/activate", "Activated " + key.id + "."));
  item("Delete key", () => deleteKey(key), "danger");
  details.append(items);
  details.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && details.open) {
      details.open = false;
      summary.focus();
    }
  });
  return details;
}

// ------------------------------------------------------------------ actions

// Calls the API on key `key` (`method` on its path + `rest`), then says
// `done` beside its row, reloads the list and gives the focus back to the
// row.
async function act(key, method, rest, done) {
  if (await attempt(() => api(method, keyPath(key.id) + rest))) {
    say(done, key.id);
    await attempt(load);
  }
  focusRow(key.id);
}

// Asks `question` ({title, text, confirm}) first: acts only if confirmed;
// either way the focus goes back to the key's row.
async function confirmThen(key, question, method, rest, done) {
  if (await confirmWith(question)) await act(key, method, rest, done);
  else focusRow(key.id);
}

function confirmWith({ title, text, confirm }) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = confirm;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}

const deleteOld = (key) => confirmThen(
  key,
  {
    title: "Delete the old token of " + key.id + "?",
    text: "Integrations still using the old token will be refused at once. This cannot be undone.",
    confirm: "Delete old token",
  },
  "DELETE", "/old-token",
  "Deleted the old token of " + key.id + ": only the new token is valid.",
);

// Deletes the old token only if it went unused for a day, telling its
// last use first.
const deleteOldIfIdle = (key) => confirmWith({
  title: "Delete the old token of " + key.id + " if unused?",
  text: "The old token was last used: " + formatDate(key.old_token && key.old_token.last_used_at) +
    ". It is deleted only if it went unused for the last 24 hours; otherwise nothing changes.",
  confirm: "Delete if unused",
}).then(async (confirmed) => {
  if (!confirmed) return focusRow(key.id);
  const ok = await attempt(() => api("POST", keyPath(key.id) + "/old-token/delete-if-idle", { min_idle: "24h" }));
  if (ok) {
    say("Deleted the old token of " + key.id + ": it went unused for 24 hours.", key.id);
    await attempt(load);
  }
  focusRow(key.id);
});

const undo = (key) => confirmThen(
  key,
  {
    title: "Undo the renewal of " + key.id + "?",
    text: "The old token becomes the only valid token again, and the new token is deleted.",
    confirm: "Undo renewal",
  },
  "POST", "/undo-renewal",
  "Undid the renewal of " + key.id + ": the old token is current again.",
);

const deactivate = (key) => confirmThen(
  key,
  {
    title: "Deactivate " + key.id + "?",
    text: "None of its tokens verifies until it is activated again.",
    confirm: "Deactivate",
  },
  "POST", "/deactivate",
  "Deactivated " + key.id + ".",
);

const deleteKey = (key) => confirmThen(
  key,
  {
    title: "Delete " + key.id + "?",
    text: "The key, its tokens and its usage are deleted. This cannot be undone.",
    confirm: "Delete key",
  },
  "DELETE", "",
  "Deleted " + key.id + ".",
);

// ------------------------------------------------------------------ tokens shown once

let pendingRenewal = null;
// The key whose row gets the focus when the token dialog closes.
let tokenOf = null;
// Whether the token shown was copied: leaving the page before is warned.
let tokenCopied = false;

window.addEventListener("beforeunload", (event) => {
  if ($("token-dialog").open && !tokenCopied) {
    event.preventDefault();
    event.returnValue = "";
  }
});

function showToken(intro, issued, renewal) {
  pendingRenewal = renewal ? issued.id : null;
  tokenOf = issued.id;
  $("token-title").textContent = renewal ? "Token renewed" : "Key created";
  $("token-intro").textContent = intro;
  $("new-token").value = issued.token;
  $("copy-status").textContent = "";
  tokenCopied = false;
  $("deletion").hidden = !renewal;
  document.querySelector('input[name="delete-old"][value="later"]').checked = true;
  showError("", $("token-error"));
  $("token-dialog").showModal();
  $("copy").focus();
}

$("copy").addEventListener("click", async () => {
  const input = $("new-token");
  try {
    await navigator.clipboard.writeText(input.value);
    $("copy-status").textContent = "Copied to the clipboard.";
    tokenCopied = true;
  } catch (e) {
    input.focus();
    input.select();
    const copied = document.execCommand && document.execCommand("copy");
    tokenCopied = Boolean(copied);
    $("copy-status").textContent = copied
      ? "Copied to the clipboard."
      : "The browser did not allow copying: the token is selected, press Ctrl+C (or ⌘C).";
  }
});

// Finish: applies the deletion choice of a renewal. Closing the dialog
// otherwise (Escape) leaves it undecided, which behaves as "Later".
$("token-dialog-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = pendingRenewal;
  if (id) {
    const choice = document.querySelector('input[name="delete-old"]:checked').value;
    let decided;
    const ok = await attempt(async () => {
      decided = deletionChoice(choice);
      await api("POST", keyPath(id) + "/finalize", decided.body);
    }, $("token-error"));
    if (!ok) return;
    pendingRenewal = null;
    say("Renewed " + id + ": " + decided.told, id);
  }
  $("token-dialog").close();
});

// The finalize body of a deletion choice, and what to tell once done.
function deletionChoice(choice) {
  const inHours = { "in-1h": 1, "in-24h": 24, "in-7d": 168 }[choice];
  if (choice === "now") return { body: { delete_old: "now" }, told: "the old token is deleted." };
  if (choice === "later") {
    return { body: { delete_old: "later" }, told: "the old token stays valid until you delete it." };
  }
  if (inHours || choice === "at") {
    const at = inHours
      ? new Date(Date.now() + inHours * 3600 * 1000)
      : new Date($("delete-at").value);
    if (isNaN(at.getTime())) throw new ApiError(0, "bad_input", "Give the time to delete the old token at.");
    return {
      body: { delete_old: "at", at: at.toISOString() },
      told: "the old token is deleted " + formatDate(at.toISOString()) + ".",
    };
  }
  const grace = $("delete-grace").value.trim();
  return {
    body: { delete_old: "after_new_token_use", grace },
    told: "the old token is deleted " + grace + " after the new one's first use.",
  };
}

// However the dialog closes, the token leaves the page, and the focus goes
// back to the key's row.
$("token-dialog").addEventListener("close", async () => {
  if (pendingRenewal) say("Renewed " + pendingRenewal + ": the old token stays valid until you delete it.", pendingRenewal);
  pendingRenewal = null;
  $("new-token").value = "";
  tokenCopied = false;
  const id = tokenOf;
  tokenOf = null;
  await attempt(load);
  focusRow(id, "create");
});

async function renew(key) {
  const ok = await attempt(async () => {
    const issued = await api("POST", keyPath(key.id) + "/renew");
    showToken(
      "The new token of " + key.id + ". The old token stays valid until it is deleted.",
      issued,
      true,
    );
  });
  if (!ok) focusRow(key.id);
}

// ------------------------------------------------------------------ create

$("create").addEventListener("click", () => {
  $("create-form").reset();
  showError("", $("create-error"));
  $("create-dialog").showModal();
  $("new-id").focus();
});

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = (name) => $(name).value.trim();
  const body = { label: value("new-label"), scopes: value("new-scopes").split(/\s+/).filter(Boolean) };
  if (value("new-id")) body.id = value("new-id");
  if (value("new-owner")) body.owner = value("new-owner");
  if (value("new-expiry")) body.expires_at = new Date(value("new-expiry")).toISOString();
  await attempt(async () => {
    const issued = await api("POST", "keys", body);
    $("create-dialog").close();
    say("Created " + issued.id + ".", issued.id);
    showToken("The token of " + issued.id + ".", issued, false);
  }, $("create-error"));
});

// ------------------------------------------------------------------ revoke

$("revoke").addEventListener("click", () => {
  $("revoke-form").reset();
  showError("", $("revoke-error"));
  $("revoke-dialog").showModal();
  $("revoke-token").focus();
});

$("revoke-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("revoke-token").value.trim();
  await attempt(async () => {
    const answer = await api("POST", "tokens/revoke", { token });
    $("revoke-token").value = "";
    $("revoke-dialog").close();
    const id = answer.revoked ? answer.event.key_id : null;
    say(answer.revoked
      ? "Revoked the token of " + id + ": it never verifies again."
      : "That is not a live token of any key: nothing was revoked.", id);
    await load();
    focusRow(id, "revoke");
  }, $("revoke-error"));
});

for (const button of document.querySelectorAll("[data-close]")) {
  button.addEventListener("click", () => button.closest("dialog").close());
}

// A dialog opened from the toolbar gives the focus back to its button when
// it is cancelled (Cancel or Escape).
for (const [dialog, opener] of [["create-dialog", "create"], ["revoke-dialog", "revoke"]]) {
  $(dialog).addEventListener("cancel", () => setTimeout(() => $(opener).focus()));
  for (const button of $(dialog).querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => $(opener).focus());
  }
}

// ------------------------------------------------------------------ usage chart

$("usage-close").addEventListener("click", () => {
  $("usage-panel").hidden = true;
  $("refresh").focus();
});

const SERIES = [
  ["accepted", "Accepted"],
  ["rate_limited", "Rate limited"],
  ["usage_exceeded", "Usage exceeded"],
  ["refused", "Refused"],
];

async function usage(key) {
  await attempt(async () => {
    const answer = await api("GET", keyPath(key.id) + "/usage?since=7d");
    $("usage-title").textContent = "Usage of " + key.id + ", last 7 days by hour";
    drawUsage(key.id, answer.hours, "usage-chart", "usage-legend");
    $("usage-panel").hidden = false;
    $("usage-panel").scrollIntoView({ block: "start" });
    $("usage-title").focus();
  });
}

// The last 7 days by hour of `what`, each outcome a line of its own,
// drawn as SVG into `chart`, with its totals in `legend`.
// The charts drawn, by element id: drawn again at the new width when the
// window is resized.
const drawn = new Map();
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => {
    for (const args of drawn.values()) if (!$(args[2]).closest("section").hidden) drawUsage(...args);
  }, 100);
});

// Draws the hourly counts of the last 7 days as stacked bars, as wide as
// the panel (text stays readable on a phone), with a tick at each local
// midnight. Hovering an hour, or moving through them with the arrow keys
// once the chart has the focus, tells its counts in the readout.
function drawUsage(what, hours, chart, legend) {
  drawn.set(chart, [what, hours, chart, legend]);
  const HOUR = 3600 * 1000;
  const end = Math.floor(Date.now() / HOUR) * HOUR;
  const start = end - 167 * HOUR;
  const counts = new Map(hours.map((h) => [Date.parse(h.hour), h]));
  const points = [];
  for (let t = start; t <= end; t += HOUR) points.push({ at: t, counts: counts.get(t) || null });
  const total = (p) => (p.counts ? SERIES.reduce((sum, [k]) => sum + p.counts[k], 0) : 0);
  const max = Math.max(1, ...points.map(total));
  // Measured with its panel shown (it may be about to be).
  const panel = $(chart).closest("section");
  const hidden = panel.hidden;
  panel.hidden = false;
  const width = Math.max(320, Math.round($(chart).clientWidth || 720));
  panel.hidden = hidden;
  const height = 220, left = 44, bottom = 24, top = 10, right = 8;
  const slot = (width - left - right) / points.length;
  const x = (i) => left + i * slot;
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("role", "img");
  svg.setAttribute("tabindex", "0");
  const totals = SERIES.map(([k, label]) => label + " " + points.reduce((s, p) => s + (p.counts ? p.counts[k] : 0), 0));
  const title = document.createElementNS(ns, "title");
  title.textContent = "Requests of " + what + " by hour, last 7 days: " + totals.join(", ") +
    ". Use the arrow keys to read each hour.";
  svg.append(title);
  const shape = (name, attributes, cls) => {
    const node = document.createElementNS(ns, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (cls) node.setAttribute("class", cls);
    svg.append(node);
    return node;
  };
  const text = (tx, ty, content, anchor) => {
    shape("text", { x: tx, y: ty, "text-anchor": anchor }, "axis-label").textContent = content;
  };
  shape("line", { x1: left, y1: y(max), x2: width - right, y2: y(max) }, "grid");
  text(left - 4, y(0) + 4, "0", "end");
  text(left - 4, y(max) + 4, String(max), "end");
  // Stacked bars: each hour's outcomes, accepted at the bottom.
  points.forEach((p, i) => {
    let base = 0;
    for (const [k] of SERIES) {
      const v = p.counts ? p.counts[k] : 0;
      if (v > 0) {
        const barHeight = y(base) - y(base + v);
        shape("rect", { x: x(i) + 0.5, y: y(base + v), width: Math.max(1, slot - 1), height: barHeight }, "bar series-" + k);
      }
      base += v;
    }
  });
  shape("line", { x1: left, y1: y(0), x2: width - right, y2: y(0) }, "axis");
  // A tick at each local midnight, named by the day it starts.
  for (let i = 0; i < points.length; i++) {
    const d = new Date(points[i].at);
    if (d.getHours() !== 0) continue;
    shape("line", { x1: x(i), y1: y(0), x2: x(i), y2: y(0) + 5 }, "axis");
    if (x(i) + 30 < width) text(x(i) + 2, height - 6, d.toLocaleDateString(undefined, { weekday: "short" }), "start");
  }
  const mark = shape("rect", { x: 0, y: top, width: slot, height: height - top - bottom, visibility: "hidden" }, "hour-mark");
  const readout = el("p", "Hover over an hour, or focus the chart and use the arrow keys.", "usage-readout");
  readout.setAttribute("aria-live", "polite");
  let shown = points.length - 1;
  const tell = (i) => {
    shown = Math.max(0, Math.min(points.length - 1, i));
    const p = points[shown];
    mark.setAttribute("x", x(shown));
    mark.setAttribute("visibility", "visible");
    const when = new Date(p.at).toLocaleString(undefined, { weekday: "short", hour: "2-digit", minute: "2-digit" });
    readout.textContent = when + ": " + SERIES.map(([k, label]) => (p.counts ? p.counts[k] : 0) + " " + label.toLowerCase()).join(", ");
  };
  svg.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const at = ((event.clientX - box.left) / box.width) * width;
    tell(Math.floor((at - left) / slot));
  });
  svg.addEventListener("focus", () => tell(shown));
  svg.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -1, ArrowRight: 1, Home: -points.length, End: points.length }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    tell(shown + step);
  });
  $(chart).replaceChildren(svg, readout);
  $(legend).replaceChildren(
    ...SERIES.map(([k], i) => {
      const item = el("li");
      item.append(el("span", null, "swatch series-" + k), totals[i]);
      return item;
    }),
  );
}

// ------------------------------------------------------------------ a key

// The key whose page is open, as the API last answered it.
let keyShown = null;

async function showKey(id) {
  await attempt(async () => {
    const [key, used, events] = await Promise.all([
      api("GET", keyPath(id)),
      api("GET", keyPath(id) + "/usage?since=7d"),
      api("GET", keyPath(id) + "/events"),
    ]);
    keyShown = key;
    renderKey(key);
    drawUsage(key.id, used.hours, "key-chart", "key-legend");
    $("key-events").replaceChildren();
    renderEvents(events.entries);
    showError("", $("key-error"));
    $("key-panel").hidden = false;
    $("key-panel").scrollIntoView({ block: "start" });
    $("key-title").focus();
  });
}

// A token's dates, as a person reads them.
function tokenText(token) {
  return token.id + ": issued " + formatDate(token.created_at) + ", due " + formatDate(token.due_at) +
    ", last used " + formatDate(token.last_used_at) + (token.revoked_at ? ", revoked " + formatDate(token.revoked_at) : "");
}

// An instant as a datetime-local input takes it: the person's own time.
function localInput(value) {
  if (!value) return "";
  const d = new Date(value);
  const pad = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
}

// The settings the form edits; the others are shown as they are.
const EDITED = new Set(["label", "scopes", "owner", "expiry", "networks", "rate_limit", "credits"]);

// An outbox entry as a person reads it: the event, when, and whether it
// was delivered.
function eventText(entry) {
  const e = entry.event;
  const delivery = entry.state === "delivered" ? "delivered " + formatDate(entry.delivered_at)
    : entry.state === "parked" ? "given up on: " + (entry.last_error || "no answer")
      : entry.attempts ? "not delivered yet (" + entry.attempts + " failed)" : "not delivered yet";
  // A setting without an event of its own names itself.
  const what = e.change && typeof e.change === "object" ? " (" + Object.keys(e.change).join(", ") + ")" : "";
  return e.event.replaceAll("_", " ") + what + ", " + formatDate(e.at) + "; " + delivery;
}

// Appends a page of a key's events, and offers older ones when it was full.
const EVENTS_PAGE = 20;
function renderEvents(entries) {
  $("key-events").append(...entries.map((entry) => el("li", eventText(entry))));
  if (!$("key-events").children.length) $("key-events").append(el("li", "None kept: the outbox is off, or they were pruned."));
  $("key-older").hidden = entries.length < EVENTS_PAGE;
  $("key-older").dataset.before = entries.length ? entries[entries.length - 1].id : "";
}

$("key-older").addEventListener("click", async () => {
  const before = $("key-older").dataset.before;
  await attempt(async () => {
    const events = await api("GET", keyPath(keyShown.id) + "/events?before=" + before);
    renderEvents(events.entries);
  }, $("key-error"));
  ($("key-older").hidden ? $("key-events") : $("key-older")).focus();
});

function renderKey(key) {
  $("key-title").textContent = "Key " + key.id;
  const facts = $("key-facts");
  facts.replaceChildren();
  const fact = (term, value) => facts.append(el("dt", term), el("dd", value));
  fact("Status", statusOf(key));
  fact(key.old_token ? "New token" : "Token", tokenText(key.current_token));
  if (key.old_token) fact("Old token", tokenText(key.old_token) + "; " + renewalOf(key).toLowerCase());
  fact("Allowed now", allowanceText(key.allowance));
  if (key.owner_allowance) fact("Its owner allows", allowanceText(key.owner_allowance));
  for (const [name, value] of Object.entries(key.settings)) {
    if (!EDITED.has(name)) fact(name.replace("_", " "), settingText(value));
  }
  $("key-label").value = key.label;
  $("key-scopes").value = key.scopes.join(" ");
  $("key-owner").value = key.owner || "";
  $("key-expiry").value = localInput(key.expires_at);
  $("key-networks").value = key.settings.networks || "";
  fillLimits("key", key.rate_limit, key.credits);
  // What the limit fields say as saved: a field edited back says it again.
  key.shownLimits = [rateJson("key"), creditsJson("key")];
}

// Saves what the form changed, as one PATCH of changes (all or none).
$("key-settings-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = keyShown;
  const changes = [];
  const label = $("key-label").value;
  if (label !== key.label) changes.push({ label });
  const scopes = $("key-scopes").value.split(/\s+/).filter(Boolean);
  if (scopes.join(" ") !== key.scopes.join(" ")) changes.push({ scopes });
  const owner = $("key-owner").value.trim();
  if (owner !== (key.owner || "")) changes.push({ owner: owner || null });
  const expiry = $("key-expiry").value;
  if (expiry !== localInput(key.expires_at)) {
    changes.push({ expiry: expiry ? new Date(expiry).toISOString() : null });
  }
  const networks = $("key-networks").value.trim();
  if (networks !== (key.settings.networks || "")) changes.push({ networks: networks || null });
  // Limits are written as JSON text, so that numbers keep every digit.
  const saved = await attempt(async () => {
    const written = changes.map((change) => JSON.stringify(change));
    const [rate, credits] = [rateJson("key"), creditsJson("key")];
    if (rate !== key.shownLimits[0]) written.push('{"rate_limit":' + (rate || "null") + "}");
    if (credits !== key.shownLimits[1]) written.push('{"credits":' + (credits || "null") + "}");
    if (written.length === 0) throw new ApiError(0, "unchanged", "Nothing to save: the settings are as they were.");
    return api("PATCH", keyPath(key.id), "[" + written.join(",") + "]");
  }, $("key-error"));
  if (!saved) return;
  say("Saved the settings of " + key.id + ".", key.id);
  await attempt(load);
  await showKey(key.id);
});

$("key-close").addEventListener("click", () => {
  const id = keyShown && keyShown.id;
  $("key-panel").hidden = true;
  keyShown = null;
  focusRow(id);
});

// ------------------------------------------------------------------ owners

// The owner whose page is open.
let ownerShown = null;

// The API path of the owner `owner`, escaped as a key's is.
function ownerPath(owner) {
  if (!addressable(owner)) {
    throw new ApiError(0, "unaddressable", "The owner id \"" + owner + "\" cannot be used in a URL: use keyctl owner.");
  }
  return "owners/" + enc(owner);
}

// The owner cell of a key's row: a link to the owner's page.
function ownerLink(owner) {
  if (!owner) return "—";
  const link = el("a", owner, "owner-link");
  link.href = "#owner=" + enc(owner);
  link.addEventListener("click", (event) => {
    event.preventDefault();
    history.replaceState(null, "", "#owner=" + enc(owner));
    showOwner(owner);
  });
  return link;
}

async function showOwner(owner) {
  await attempt(async () => {
    const answer = await api("GET", ownerPath(owner) + "?since=7d");
    ownerShown = owner;
    renderOwner(answer);
    showError("", $("owner-error"));
    $("owner-panel").hidden = false;
    $("owner-panel").scrollIntoView({ block: "start" });
    $("owner-title").focus();
  });
}

// The limits as a person reads them.
function limitsText(limits) {
  const parts = [];
  if (limits && limits.rate_limit) {
    const r = limits.rate_limit;
    parts.push(r.limit + " requests per " + settingText(r.period) + ", " + r.burst + " at once");
  }
  if (limits && limits.credits) {
    const c = limits.credits;
    const refill = c.refill ? ", set back to " + c.refill.amount + " every " + settingText(c.refill.every) : "";
    parts.push(c.remaining + " credits" + refill);
  }
  return parts.length ? parts.join("; ") : "none: each key is metered by its own limits";
}

// What an allowance leaves, as a person reads it.
function allowanceText(allowance) {
  if (!allowance) return "—";
  const parts = [];
  if (allowance.rate_remaining != null) parts.push(allowance.rate_remaining + " requests left at once");
  if (allowance.credits_remaining != null) {
    const refill = allowance.next_refill ? ", refilled " + formatDate(allowance.next_refill) : "";
    parts.push(allowance.credits_remaining + " credits left" + refill);
  }
  return parts.join("; ") || "—";
}

// A duration as the form takes it: whole days, hours, minutes or seconds.
function durationInput(duration) {
  const s = duration.secs;
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s % size === 0) return s / size + unit;
  }
  return s + "s";
}

function renderOwner(answer) {
  $("owner-title").textContent = "Owner " + answer.owner;
  const facts = $("owner-facts");
  facts.replaceChildren();
  const fact = (term, value) => facts.append(el("dt", term), el("dd", value));
  fact("Limits its keys share", limitsText(answer.limits));
  fact("Allowed now", allowanceText(answer.allowance));
  fact("Keys", String(answer.keys.length) + (answer.more_keys ? " (the first shown)" : ""));
  const limits = answer.limits || {};
  const rate = limits.rate_limit, credits = limits.credits;
  const refill = credits && credits.refill;
  fillLimits(
    "owner",
    rate && { limit: rate.limit, period: durationInput(rate.period), burst: rate.burst },
    credits && { remaining: credits.remaining, refill: refill && { amount: refill.amount, every: durationInput(refill.every) } },
  );
  $("owner-clear").disabled = !rate && !credits;
  $("owner-keys").replaceChildren(...answer.keys.map((key) => {
    const item = el("li");
    item.append(el("strong", key.id, "key-id"), " ", el("span", statusOf(key), "badge badge-" + statusOf(key)));
    return item;
  }));
  drawUsage("the keys of " + answer.owner, answer.usage, "owner-chart", "owner-legend");
}

// Digits as a JSON number, exactly (a JavaScript number loses integers
// above 2^53), or the refusal that names the field.
function whole(field, text) {
  if (!/^\d+$/.test(text)) throw new ApiError(0, "bad_input", field + " \"" + text + "\" is not a whole number.");
  return text;
}

// The limit fields of a form, `PREFIX-rate-limit` and so on: filled from
// a rate limit and credits (durations as text), and read back as JSON
// text written by hand, so that numbers keep every digit (null when
// empty).
function fillLimits(prefix, rate, credits) {
  const set = (name, value) => { $(prefix + "-" + name).value = value == null ? "" : value; };
  const refill = credits && credits.refill;
  set("rate-limit", rate && rate.limit);
  set("rate-period", rate ? rate.period : "1m");
  set("rate-burst", rate && rate.burst);
  set("credits", credits && credits.remaining);
  set("refill-amount", refill && refill.amount);
  set("refill-every", refill ? refill.every : "30d");
}

function rateJson(prefix) {
  const v = (name) => $(prefix + "-" + name).value.trim();
  if (!v("rate-limit")) return null;
  const burst = v("rate-burst") ? ',"burst":' + whole("At once", v("rate-burst")) : "";
  return '{"limit":' + whole("Requests", v("rate-limit")) + ',"period":' + JSON.stringify(v("rate-period") || "1m") + burst + "}";
}

function creditsJson(prefix) {
  const v = (name) => $(prefix + "-" + name).value.trim();
  if (!v("credits")) return null;
  const refill = v("refill-amount")
    ? ',"refill":{"amount":' + whole("Set back to", v("refill-amount")) + ',"every":' + JSON.stringify(v("refill-every") || "30d") + "}"
    : "";
  return '{"remaining":' + whole("Credits", v("credits")) + refill + "}";
}

$("owner-limits-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const owner = ownerShown;
  await attempt(async () => {
    const [rate, credits] = [rateJson("owner"), creditsJson("owner")];
    const parts = [];
    if (rate) parts.push('"rate_limit":' + rate);
    if (credits) parts.push('"credits":' + credits);
    if (!parts.length) throw new ApiError(0, "empty", "Give a rate limit, credits or both; Clear limits removes them.");
    await api("PUT", ownerPath(owner) + "/limits", "{" + parts.join(",") + "}");
    say("Saved the limits of " + owner + ": its keys share them now.");
    await showOwner(owner);
  }, $("owner-error"));
});

$("owner-clear").addEventListener("click", async () => {
  const owner = ownerShown;
  const confirmed = await confirmWith({
    title: "Clear the limits of " + owner + "?",
    text: "Its keys stop sharing a rate limit and credits: each is then metered by its own limits alone.",
    confirm: "Clear limits",
  });
  if (confirmed && await attempt(() => api("DELETE", ownerPath(owner) + "/limits"), $("owner-error"))) {
    say("Cleared the limits of " + owner + ".");
    await showOwner(owner);
  }
  ($("owner-clear").disabled ? $("owner-title") : $("owner-clear")).focus();
});

$("owner-close").addEventListener("click", () => {
  $("owner-panel").hidden = true;
  ownerShown = null;
  history.replaceState(null, "", location.pathname + location.search);
  $("refresh").focus();
});

// An owner's page named in the address (`#owner=ID`) opens once signed in.
function openOwnerFromAddress() {
  const match = /^#owner=(.+)$/.exec(location.hash);
  if (match) showOwner(decodeURIComponent(match[1]));
}
