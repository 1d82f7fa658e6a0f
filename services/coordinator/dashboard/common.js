// What every dashboard page shares: the sign-in, authenticated calls to the JSON API, building
// DOM nodes (text always goes in as text, never as markup) and the words shown for API values.

const TOKEN_KEY = "painpath.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** Raised (and the sign-in shown) when the API refuses the token. */
export class SignedOut extends Error {}

let session = null; // { controller: AbortController } while signed in
let startPage = null; // the page's own start, called with an AbortSignal once signed in

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Calls the JSON API with the bearer token; a 401 signs out and throws SignedOut. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Bearer ${token()}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (response.status === 401) {
    signOut("Your token was not accepted (it may have been revoked). Please sign in again.");
    throw new SignedOut();
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const answer = await response.json();
      if (typeof answer.detail === "string") detail = answer.detail;
      else if (Array.isArray(answer.detail)) detail = answer.detail.map((d) => d.msg).join("; ");
    } catch {
      // not JSON: the status line says enough
    }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

/** Runs `start(signal)` once signed in; shows the sign-in form until then. */
export function signedIn(start) {
  startPage = start;
  document.getElementById("sign-out").addEventListener("click", () => signOut(""));
  document.getElementById("sign-in-form").addEventListener("submit", submitSignIn);
  if (token()) begin();
  else showSignIn("");
}

export function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session?.controller.abort();
  session = null;
  showSignIn(message);
}

function begin() {
  document.getElementById("sign-in").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("sign-out").hidden = false;
  session = { controller: new AbortController() };
  const { signal } = session.controller;
  startPage(signal).catch((error) => {
    if (!(error instanceof SignedOut) && !signal.aborted) showNotice(error.message);
  });
}

function showSignIn(message) {
  document.getElementById("app").hidden = true;
  document.getElementById("sign-out").hidden = true;
  const live = document.getElementById("live");
  if (live) live.hidden = true;
  document.getElementById("sign-in").hidden = false;
  const error = document.getElementById("sign-in-error");
  error.textContent = message;
  error.hidden = !message;
  document.getElementById("token").focus();
}

async function submitSignIn(event) {
  event.preventDefault();
  const field = document.getElementById("token");
  const button = event.target.querySelector("button");
  const error = document.getElementById("sign-in-error");
  const presented = field.value.trim();
  if (!presented) return;
  button.disabled = true;
  try {
    // Any authenticated call tells whether the token is valid; this one is the cheapest.
    const response = await fetch("/v1/tasks?limit=1", {
      headers: { Authorization: `Bearer ${presented}` },
      cache: "no-store",
    });
    if (response.status === 401) {
      error.textContent = "That token was not accepted. Check it and try again.";
      error.hidden = false;
      field.select();
      return;
    }
    if (!response.ok) throw new Error(`the API answered ${response.status}`);
    sessionStorage.setItem(TOKEN_KEY, presented);
    field.value = "";
    begin();
  } catch (failure) {
    error.textContent = `Could not reach the coordinator: ${failure.message}.`;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

/** Shows a message above the page's content (an empty one hides it). */
export function showNotice(message) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.hidden = !message;
}

/** A DOM element: `h("a", { href, class: "x" }, "text", child)`. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attributes);
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element, like `h`. */
export function s(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  setAttributes(element, attributes);
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

function setAttributes(element, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
}

export const STATES = ["proposed", "accepted", "in_progress", "completed", "cancelled"];
export const OPEN_STATES = new Set(["proposed", "accepted", "in_progress"]);
export const ROLES = [
  "care_coordinator",
  "pain_specialist",
  "physical_therapist",
  "pain_psychologist",
  "pharmacist",
  "interventionalist",
];

/** "pain_specialist" -> "Pain specialist". */
export function words(value) {
  if (value === null || value === undefined || value === "") return "—";
  const text = String(value).replaceAll("_", " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Today in the browser's time zone, as YYYY-MM-DD (comparable with the API's dates). */
export function today() {
  const now = new Date();
  const pad = (number) => String(number).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

export function isOverdue(task) {
  return OPEN_STATES.has(task.state) && task.due_on < today();
}

const DAY = new Intl.DateTimeFormat("en-GB", {
  day: "numeric",
  month: "short",
  year: "numeric",
  timeZone: "UTC",
});
const INSTANT = new Intl.DateTimeFormat("en-GB", {
  day: "numeric",
  month: "short",
  year: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});

/** "2026-03-09" -> "9 Mar 2026". */
export function formatDate(value) {
  return value ? DAY.format(new Date(`${value.slice(0, 10)}T00:00:00Z`)) : "—";
}

/** An ISO 8601 instant in the reader's time zone. */
export function formatInstant(value) {
  return value ? INSTANT.format(new Date(value)) : "—";
}

export function patientHref(patientId) {
  return `/dashboard/patients/${encodeURIComponent(patientId)}`;
}
