// The patient page: the current determination in plain words, the timeline and the care plan.

import {
  ApiError,
  api,
  formatDate,
  formatInstant,
  h,
  isOverdue,
  showNotice,
  signedIn,
  words,
} from "./common.js";
import { drawTimeline } from "./timeline.js";

const PREFIX = "/dashboard/patients/";
const patientId = decodeURIComponent(location.pathname.slice(PREFIX.length));
const EMPTY_TIMELINE = { scores: [], trials: [], side_effects: [], determinations: [] };
const STATE_ORDER = { in_progress: 0, accepted: 1, proposed: 2, completed: 3, cancelled: 4 };

signedIn(start);

async function start(signal) {
  document.getElementById("patient-title").textContent = `Patient ${patientId}`;
  const path = `/v1/patients/${encodeURIComponent(patientId)}`;
  const [view, timeline] = await Promise.all([
    api(path, { signal }).catch(whenMissing(null)),
    api(`${path}/timeline`, { signal }).catch(whenMissing(EMPTY_TIMELINE)),
  ]);
  drawTimeline(document.getElementById("timeline"), timeline);
  if (view === null) {
    showNotice("There is no determination for this patient yet.");
    document.getElementById("determination").hidden = true;
    document.getElementById("care-plan").hidden = true;
    return;
  }
  showDetermination(view.determination);
  showTrials(view.determination.trials ?? []);
  showPlan(view.tasks);
  document.getElementById("plan-board-link").href = `/dashboard?${new URLSearchParams({ patient_id: patientId })}`;
}

function whenMissing(value) {
  return (error) => {
    if (error instanceof ApiError && error.status === 404) return value;
    throw error;
  };
}

function showDetermination(determination) {
  const status = document.getElementById("patient-status");
  status.textContent = words(determination.status);
  status.className = `status status-${determination.status}`;
  document.getElementById("patient-as-of").textContent =
    `as of ${formatInstant(determination.as_of)} · policy ${determination.policy}`;

  const figures = [
    ["Pain duration", determination.pain_days === null ? "Not known" : `${determination.pain_days} days${determination.pain_start ? ` (since ${formatDate(determination.pain_start)})` : ""}`],
    ["Current pain", determination.current_pain === null ? "No recent score" : `${determination.current_pain} / 10`],
    ["Classification", determination.classification ? words(determination.classification) : "Not yet classified"],
    ["Failed drugs", determination.failed_drugs.length ? determination.failed_drugs.join(", ") : "None"],
    ["Failed classes", determination.failed_classes?.length ? determination.failed_classes.join(", ") : "None"],
    ["Combination failed", determination.combination_failed ? "Yes" : "No"],
    ["Treatment criteria", `${determination.criteria_met ? "Met" : "Not met"} (${determination.criteria})`],
    ["Missing assessments", determination.missing_assessments?.length ? determination.missing_assessments.map(words).join(", ") : "None"],
  ];
  document
    .getElementById("figures")
    .replaceChildren(...figures.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]));

  const reasons = determination.reasons ?? [];
  document
    .getElementById("reasons")
    .replaceChildren(
      ...(reasons.length
        ? reasons.map((reason) => h("li", { "data-code": reason.code, title: reason.code }, reason.text))
        : [h("li", { class: "muted" }, "No reasons were given with this determination.")]),
    );
}

function showTrials(trials) {
  const container = document.getElementById("trials");
  if (!trials.length) {
    container.replaceChildren(h("p", { class: "muted" }, "No medication trials recorded."));
    return;
  }
  const percent = (value) => (value === null || value === undefined ? "—" : `${Math.round(value * 100)} %`);
  const score = (value) => (value === null || value === undefined ? "—" : String(value));
  container.replaceChildren(
    h(
      "table",
      { class: "table" },
      h("thead", {}, h("tr", {}, ["Drug", "Daily dose", "Outcome", "Pain before → on", "Reduction"].map((name) => h("th", { scope: "col" }, name)))),
      h(
        "tbody",
        {},
        trials.map((trial) =>
          h(
            "tr",
            {},
            h("td", {}, trial.drug),
            h("td", {}, `${trial.daily_dose} ${trial.dose_unit}`),
            h("td", {}, h("span", { class: "outcome", "data-outcome": trial.outcome }, h("span", { class: `swatch swatch-${trial.outcome}`, "aria-hidden": "true" }), words(trial.outcome))),
            h("td", {}, trial.baseline === null && trial.on_treatment === null ? "—" : `${score(trial.baseline)} → ${score(trial.on_treatment)}`),
            h("td", {}, percent(trial.reduction)),
          ),
        ),
      ),
    ),
  );
}

function showPlan(tasks) {
  const container = document.getElementById("plan");
  if (!tasks.length) {
    container.replaceChildren(h("p", { class: "muted" }, "No tasks in the care plan."));
    return;
  }
  const ordered = [...tasks].sort(
    (a, b) => STATE_ORDER[a.state] - STATE_ORDER[b.state] || a.due_on.localeCompare(b.due_on) || a.title.localeCompare(b.title),
  );
  container.replaceChildren(
    h(
      "table",
      { class: "table plan-table" },
      h("thead", {}, h("tr", {}, ["Task", "Role", "State", "Assignee", "Scheduled", "Due"].map((name) => h("th", { scope: "col" }, name)))),
      h(
        "tbody",
        {},
        ordered.map((task) =>
          h(
            "tr",
            { "data-task-id": task.id, class: isOverdue(task) ? "row-overdue" : "" },
            h("td", {}, h("div", { class: "plan-title" }, task.title), task.outcome && h("div", { class: "muted" }, `Outcome: ${task.outcome}`), task.cancel_reason && h("div", { class: "muted" }, `Cancelled: ${task.cancel_reason}`)),
            h("td", {}, words(task.role)),
            h("td", {}, h("span", { class: `state state-${task.state}` }, words(task.state))),
            h("td", {}, task.assignee ?? "Unassigned"),
            h("td", {}, formatDate(task.scheduled_on)),
            h("td", {}, formatDate(task.due_on), isOverdue(task) && h("span", { class: "badge badge-overdue" }, "Overdue")),
          ),
        ),
      ),
    ),
  );
}
