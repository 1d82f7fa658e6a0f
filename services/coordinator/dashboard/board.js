// The task board: columns by state, filters, the task actions, and live changes from the stream.

import {
  ApiError,
  ROLES,
  STATES,
  SignedOut,
  api,
  formatDate,
  h,
  isOverdue,
  patientHref,
  showNotice,
  signOut,
  signedIn,
  token,
  words,
} from "./common.js";

const ACTIONS = {
  proposed: { action: "accept", label: "Accept" },
  accepted: { action: "start", label: "Start" },
  in_progress: { action: "complete", label: "Complete" },
};
const PRIORITY_ORDER = { stat: 0, asap: 1, urgent: 2, routine: 3 };
// Without a byte for this long (the server sends a keep-alive every 15 s), the stream is dead.
const SILENCE_MS = 45000;
const RETRY_MAX_MS = 15000;

const tasks = new Map(); // task id -> the task as last seen (highest version)
const drafts = new Map(); // task id -> the outcome being typed, kept across re-renders
const columns = new Map(); // state -> { list, count }
let filters = { role: "", assignee: "", patient_id: "" };

signedIn(start);

async function start(signal) {
  buildBoard();
  readFilters();
  await follow(signal);
}

// --- board ---------------------------------------------------------------------------------

function buildBoard() {
  const board = document.getElementById("board");
  board.replaceChildren();
  columns.clear();
  tasks.clear();
  for (const state of STATES) {
    const count = h("span", { class: "count" }, "0");
    const list = h("ol", { class: "cards", "aria-labelledby": `heading-${state}` });
    board.append(
      h(
        "section",
        { class: `column column-${state}`, "data-state": state },
        h("h2", { id: `heading-${state}`, class: "column-title" }, words(state), count),
        list,
      ),
    );
    columns.set(state, { list, count });
  }
  const roles = document.getElementById("filter-role");
  roles.replaceChildren(h("option", { value: "" }, "All roles"));
  for (const role of ROLES) roles.append(h("option", { value: role }, words(role)));
}

function matches(task) {
  return (
    (!filters.role || task.role === filters.role) &&
    (!filters.assignee || task.assignee === filters.assignee) &&
    (!filters.patient_id || task.patient_id === filters.patient_id)
  );
}

/** Shows the task where its state says, unless an older version arrives after a newer one. */
function upsert(task) {
  const known = tasks.get(task.id);
  if (known && known.version > task.version) return;
  if (!matches(task)) {
    remove(task.id);
    return;
  }
  tasks.set(task.id, task);
  const card = renderCard(task);
  const old = document.querySelector(`[data-task-id="${task.id}"]`);
  const { list } = columns.get(task.state);
  if (old && old.parentElement === list) {
    old.replaceWith(card);
  } else {
    old?.remove();
    const after = [...list.children].find((other) => compare(task, tasks.get(other.dataset.taskId)) < 0);
    list.insertBefore(card, after ?? null);
  }
  updateCounts();
}

function remove(taskId) {
  tasks.delete(taskId);
  document.querySelector(`[data-task-id="${taskId}"]`)?.remove();
  updateCounts();
}

function compare(a, b) {
  return (
    a.due_on.localeCompare(b.due_on) ||
    (PRIORITY_ORDER[a.priority] ?? 9) - (PRIORITY_ORDER[b.priority] ?? 9) ||
    a.title.localeCompare(b.title) ||
    a.id.localeCompare(b.id)
  );
}

function updateCounts() {
  const byState = Object.fromEntries(STATES.map((state) => [state, 0]));
  let overdue = 0;
  for (const task of tasks.values()) {
    byState[task.state] += 1;
    if (isOverdue(task)) overdue += 1;
  }
  for (const [state, { count }] of columns) count.textContent = String(byState[state]);
  const total = tasks.size;
  document.getElementById("summary").textContent =
    `${total} task${total === 1 ? "" : "s"}` + (overdue ? ` · ${overdue} overdue` : "");
  const assignees = new Set([...tasks.values()].map((task) => task.assignee).filter(Boolean));
  document
    .getElementById("assignees")
    .replaceChildren(...[...assignees].sort().map((person) => h("option", { value: person })));
}

function renderCard(task) {
  const overdue = isOverdue(task);
  const next = ACTIONS[task.state];
  const card = h(
    "li",
    {
      class: `card${overdue ? " card-overdue" : ""}`,
      "data-task-id": task.id,
      "data-state": task.state,
    },
    h(
      "div",
      { class: "card-badges" },
      task.priority !== "routine" && h("span", { class: `priority priority-${task.priority}` }, words(task.priority)),
      overdue && h("span", { class: "badge badge-overdue" }, "Overdue"),
      task.late && task.state !== "completed" && task.state !== "cancelled" &&
        h("span", { class: "badge badge-late", title: "Scheduled after its due date: the team is at capacity" }, "Late"),
    ),
    h("h3", { class: "card-title" }, task.title),
    h("a", { class: "card-patient", href: patientHref(task.patient_id) }, task.patient_id),
    h(
      "dl",
      { class: "card-meta" },
      h("dt", {}, "Role"),
      h("dd", {}, words(task.role)),
      h("dt", {}, "Assignee"),
      h("dd", {}, task.assignee ?? "Unassigned"),
      h("dt", {}, "Scheduled"),
      h("dd", {}, formatDate(task.scheduled_on)),
      h("dt", {}, "Due"),
      h("dd", { class: overdue ? "due-overdue" : "" }, formatDate(task.due_on)),
    ),
    task.outcome && h("p", { class: "card-note" }, h("strong", {}, "Outcome: "), task.outcome),
    task.cancel_reason && h("p", { class: "card-note" }, h("strong", {}, "Cancelled: "), task.cancel_reason),
  );
  if (next) {
    if (drafts.has(task.id) && task.state === "in_progress") card.append(outcomeForm(task));
    else
      card.append(
        h(
          "div",
          { class: "card-actions" },
          h(
            "button",
            {
              class: "button button-small button-primary",
              type: "button",
              "data-action": next.action,
              onclick: () => (next.action === "complete" ? openOutcome(task) : act(task, next.action)),
            },
            next.label,
          ),
        ),
      );
  }
  card.append(h("p", { class: "card-error error", role: "alert", hidden: true }));
  return card;
}

function outcomeForm(task) {
  const input = h("input", {
    class: "outcome-input",
    name: "outcome",
    required: true,
    placeholder: "What was done or found",
    "aria-label": `Outcome of ${task.title}`,
    value: drafts.get(task.id) ?? "",
    oninput: (event) => drafts.set(task.id, event.target.value),
  });
  return h(
    "form",
    {
      class: "outcome-form",
      onsubmit: (event) => {
        event.preventDefault();
        const outcome = input.value.trim();
        if (outcome) act(task, "complete", { outcome });
      },
    },
    h("label", { class: "outcome-label" }, "Outcome", input),
    h(
      "div",
      { class: "card-actions" },
      h("button", { class: "button button-small button-primary", type: "submit" }, "Save outcome"),
      h(
        "button",
        {
          class: "button button-small",
          type: "button",
          onclick: () => {
            drafts.delete(task.id);
            upsert(tasks.get(task.id));
          },
        },
        "Cancel",
      ),
    ),
  );
}

function openOutcome(task) {
  drafts.set(task.id, drafts.get(task.id) ?? "");
  upsert(task);
  document.querySelector(`[data-task-id="${task.id}"] .outcome-input`)?.focus();
}

async function act(task, action, body) {
  const card = document.querySelector(`[data-task-id="${task.id}"]`);
  card?.querySelectorAll("button").forEach((button) => (button.disabled = true));
  try {
    const changed = await api(`/v1/tasks/${task.id}/${action}`, { method: "POST", body });
    drafts.delete(task.id);
    upsert(changed);
  } catch (error) {
    if (error instanceof SignedOut) return;
    const current = document.querySelector(`[data-task-id="${task.id}"]`);
    current?.querySelectorAll("button").forEach((button) => (button.disabled = false));
    const message = current?.querySelector(".card-error");
    if (message) {
      message.textContent =
        error instanceof ApiError && error.status === 409
          ? `Not possible now: ${error.message}`
          : `Could not ${action} the task: ${error.message}`;
      message.hidden = false;
    }
    if (error instanceof ApiError && error.status === 409) refreshTask(task.id);
  }
}

async function refreshTask(taskId) {
  try {
    upsert(await api(`/v1/tasks/${taskId}`));
  } catch {
    // the stream brings the task's change anyway
  }
}

// --- filters -------------------------------------------------------------------------------

function readFilters() {
  const query = new URLSearchParams(location.search);
  filters = {
    role: query.get("role") ?? "",
    assignee: query.get("assignee") ?? "",
    patient_id: query.get("patient_id") ?? "",
  };
  document.getElementById("filter-role").value = filters.role;
  document.getElementById("filter-assignee").value = filters.assignee;
  document.getElementById("filter-patient").value = filters.patient_id;
}

document.getElementById("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  applyFilters({
    role: document.getElementById("filter-role").value,
    assignee: document.getElementById("filter-assignee").value.trim(),
    patient_id: document.getElementById("filter-patient").value.trim(),
  });
});

document.getElementById("filter-clear").addEventListener("click", () => {
  document.getElementById("filters").reset();
  applyFilters({ role: "", assignee: "", patient_id: "" });
});

function applyFilters(chosen) {
  filters = chosen;
  const query = new URLSearchParams(Object.entries(filters).filter(([, value]) => value));
  const search = query.toString();
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
  load().catch(reportLoadError);
}

function reportLoadError(error) {
  if (!(error instanceof SignedOut)) showNotice(`Could not load the tasks: ${error.message}`);
}

/** Every task the filters select, page after page; replaces what the board shows. */
async function load(signal) {
  const found = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: "200" });
    for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
    if (cursor) query.set("cursor", cursor);
    const page = await api(`/v1/tasks?${query}`, { signal });
    found.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  const kept = new Set(found.map((task) => task.id));
  for (const taskId of [...tasks.keys()]) if (!kept.has(taskId)) remove(taskId);
  for (const task of found) upsert(task);
  showNotice("");
}

// --- live changes --------------------------------------------------------------------------

function setLive(state) {
  const live = document.getElementById("live");
  live.hidden = false;
  live.dataset.state = state;
  live.textContent = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" }[state];
}

/**
 * Follows GET /v1/stream for as long as the page is signed in.
 *
 * The stream is opened before the tasks are loaded: the server fixes where a new subscriber
 * starts before it answers, so a change is either in the loaded list or on the stream (or both:
 * versions make showing it twice harmless). After a disconnect, `Last-Event-ID` resumes after
 * the last change seen, so nothing is missed; without one, the board is loaded again.
 */
async function follow(signal) {
  let lastId = null;
  let retry = 2000;
  let failures = 0;
  setLive("connecting");
  while (!signal.aborted) {
    const connection = new AbortController();
    const abort = () => connection.abort();
    signal.addEventListener("abort", abort);
    let watchdog = null;
    const heard = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(abort, SILENCE_MS);
    };
    try {
      const headers = { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
      const response = await fetch("/v1/stream", { headers, signal: connection.signal, cache: "no-store" });
      if (response.status === 401) {
        signOut("Your token was not accepted (it may have been revoked). Please sign in again.");
        return;
      }
      if (!response.ok) throw new ApiError(response.status, `the stream answered ${response.status}`);
      heard();
      // A refused filter (a clinician asking for another role) is shown; the stream goes on.
      if (lastId === null) await load(signal).catch(reportLoadError);
      setLive("live");
      failures = 0;
      await readEvents(response.body, heard, (event) => {
        if (event.retry !== null) retry = event.retry;
        if (event.id !== null) lastId = Number(event.id);
        if (event.data === null) return;
        const change = JSON.parse(event.data);
        upsert(change.task);
        flash(change.task.id);
      });
    } catch (error) {
      if (signal.aborted || error instanceof SignedOut) return;
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener("abort", abort);
    }
    if (signal.aborted) return;
    setLive("reconnecting");
    failures += 1;
    await sleep(Math.min(retry * failures, RETRY_MAX_MS), signal);
  }
}

/** Parses a text/event-stream body, calling `onEvent({id, event, data, retry})` per event. */
async function readEvents(body, heard, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = blankEvent();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    heard();
    buffer += value;
    for (;;) {
      const end = buffer.search(/[\r\n]/);
      // A lone "\r" at the end may be the first half of "\r\n": wait for the next chunk.
      if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (event.data !== null || event.id !== null || event.retry !== null) onEvent(event);
        event = blankEvent();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") event.data = event.data === null ? text : `${event.data}\n${text}`;
      else if (field === "id" && !text.includes("\0")) event.id = text;
      else if (field === "event") event.event = text;
      else if (field === "retry" && /^\d+$/.test(text)) event.retry = Number(text);
    }
  }
}

function blankEvent() {
  return { id: null, event: "message", data: null, retry: null };
}

function flash(taskId) {
  const card = document.querySelector(`[data-task-id="${taskId}"]`);
  if (!card) return;
  card.classList.remove("card-flash");
  void card.offsetWidth; // restart the animation
  card.classList.add("card-flash");
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
