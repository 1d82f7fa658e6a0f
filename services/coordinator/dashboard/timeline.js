// The patient's timeline as an inline SVG: pain scores over time, each medication trial as a bar
// segmented by its dose steps, side effects as markers and status changes as dashed lines.

import { formatInstant, s, words } from "./common.js";

const OUTCOME_COLOURS = {
  responded: "#2e7d32",
  in_progress: "#1565c0",
  inadequate: "#e07b00",
  unevaluable: "#78909c",
  failed: "#c62828",
  intolerant: "#7b1fa2",
};
const UNKNOWN_OUTCOME = "#cfd8dc"; // light, with dark labels: no determination judged it yet
const SEVERE = new Set(["severe", "life_threatening"]);

const WIDTH = 1000;
const LEFT = 150; // room for the y axis and the trials' names
const RIGHT = 28;
const PLOT_WIDTH = WIDTH - LEFT - RIGHT;
const CHART_HEIGHT = 200;
const LABEL_ROW = 17;
const LANE = 24;
const LANE_GAP = 8;
const DAY_MS = 86400000;

/** Draws `timeline` (GET /v1/patients/{id}/timeline) into `container`, replacing its content. */
export function drawTimeline(container, timeline) {
  const scores = sortedBy(timeline.scores ?? [], (score) => score.time);
  const trials = sortedBy(timeline.trials ?? [], (trial) => trial.started_at);
  const effects = sortedBy(timeline.side_effects ?? [], (effect) => effect.time);
  const changes = sortedBy(timeline.determinations ?? [], instantOf);

  const svg = s("svg", {
    class: "timeline-plot",
    role: "img",
    "aria-labelledby": "timeline-title timeline-desc",
    preserveAspectRatio: "xMinYMin meet",
  });
  container.replaceChildren(svg); // attached first, so that text can be measured
  svg.append(
    s("title", { id: "timeline-title" }, "Timeline of pain scores, medication trials, side effects and status changes"),
    s("desc", { id: "timeline-desc" }, describe(scores, trials, effects, changes)),
  );

  if (!scores.length && !trials.length && !effects.length && !changes.length) {
    drawEmpty(svg);
    return;
  }

  const domain = timeDomain(scores, trials, effects, changes);
  const x = (time) => LEFT + ((toMs(time) - domain.start) / (domain.end - domain.start)) * PLOT_WIDTH;
  const measure = measurer(svg);

  // Status-change labels take rows above the chart so that close changes never overlap.
  const labels = placeLabels(changes, x, measure);
  const rows = labels.reduce((most, label) => Math.max(most, label.row + 1), 0);
  const chartTop = 8 + rows * LABEL_ROW + (rows ? 10 : 0);
  const chartBottom = chartTop + CHART_HEIGHT;
  const effectsTop = chartBottom + 20;
  const trialsTop = effectsTop + LANE + 14;
  const lanes = Math.max(trials.length, 1);
  const trialsBottom = trialsTop + lanes * (LANE + LANE_GAP) - LANE_GAP;
  const axisTop = trialsBottom + 10;

  const ticks = timeTicks(domain.start, domain.end);
  svg.append(drawGrid(ticks, x, chartTop, trialsBottom));
  svg.append(drawScoreAxis(chartTop));
  svg.append(drawChanges(labels, trialsBottom)); // under the data: it must not hide a label
  svg.append(drawScores(scores, x, chartTop, chartBottom));
  svg.append(drawEffects(effects, x, effectsTop));
  svg.append(drawTrials(trials, x, trialsTop, domain, measure));
  const axisBottom = drawTimeAxis(svg, ticks, x, axisTop, measure);
  const legendBottom = drawLegend(svg, axisBottom + 16, scores, trials, effects, changes, measure);
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${legendBottom + 8}`);
}

function drawEmpty(svg) {
  svg.setAttribute("viewBox", `0 0 ${WIDTH} 150`);
  svg.classList.add("timeline-empty");
  svg.append(
    s("rect", { x: 1, y: 1, width: WIDTH - 2, height: 148, rx: 8, class: "empty-frame" }),
    s("text", { x: WIDTH / 2, y: 68, class: "empty-title", "text-anchor": "middle" }, "No data yet"),
    s(
      "text",
      { x: WIDTH / 2, y: 94, class: "empty-text", "text-anchor": "middle" },
      "Pain scores, medication trials, side effects and status changes appear here once recorded.",
    ),
  );
}

// --- parts of the plot ---------------------------------------------------------------------

function drawGrid(ticks, x, top, bottom) {
  return s(
    "g",
    { class: "grid", "aria-hidden": "true" },
    ticks.map((tick) => s("line", { x1: x(tick.ms), x2: x(tick.ms), y1: top, y2: bottom, class: "grid-line" })),
  );
}

function drawScoreAxis(top) {
  const y = (score) => top + CHART_HEIGHT - (score / 10) * CHART_HEIGHT;
  const group = s("g", { class: "score-axis" });
  for (let score = 0; score <= 10; score += 2) {
    group.append(
      s("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(score), y2: y(score), class: score ? "grid-line" : "axis-line" }),
      s("text", { x: LEFT - 10, y: y(score) + 4, class: "tick-label", "text-anchor": "end" }, String(score)),
    );
  }
  const middle = top + CHART_HEIGHT / 2;
  group.append(
    s("line", { x1: LEFT, x2: LEFT, y1: top, y2: top + CHART_HEIGHT, class: "axis-line" }),
    s(
      "text",
      { x: LEFT - 46, y: middle, class: "axis-title", "text-anchor": "middle", transform: `rotate(-90 ${LEFT - 46} ${middle})` },
      "Pain score (0–10)",
    ),
  );
  return group;
}

function drawScores(scores, x, top, bottom) {
  const group = s("g", { class: "scores" });
  if (!scores.length) {
    group.append(s("text", { x: LEFT + PLOT_WIDTH / 2, y: (top + bottom) / 2, class: "lane-empty", "text-anchor": "middle" }, "No pain scores yet"));
    return group;
  }
  const y = (score) => bottom - (Math.min(Math.max(score, 0), 10) / 10) * (bottom - top);
  const path = scores.map((score, index) => `${index ? "L" : "M"}${x(score.time).toFixed(1)},${y(score.score).toFixed(1)}`).join(" ");
  group.append(
    s("path", { d: path, class: "score-line" }, s("title", {}, `Pain scores: ${scores.length} recorded`)),
    ...scores.map((score) =>
      s(
        "circle",
        { cx: x(score.time), cy: y(score.score), r: 4, class: "score-point" },
        s("title", {}, `Pain ${round(score.score)}/10 (${score.instrument.toUpperCase()}), ${formatInstant(score.time)}`),
      ),
    ),
  );
  return group;
}

function drawEffects(effects, x, top) {
  const group = s("g", { class: "side-effects" });
  const middle = top + LANE / 2;
  group.append(s("text", { x: LEFT - 10, y: middle + 4, class: "lane-label", "text-anchor": "end" }, "Side effects"));
  if (!effects.length) {
    group.append(s("text", { x: LEFT + 8, y: middle + 4, class: "lane-empty" }, "None reported"));
    return group;
  }
  group.append(s("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: middle, y2: middle, class: "lane-line" }));
  for (const effect of effects) {
    const severe = effect.intolerable || SEVERE.has(effect.severity);
    const cx = x(effect.time);
    const marker = severe
      ? s("path", { d: `M${cx},${middle - 8} L${cx + 8},${middle} L${cx},${middle + 8} L${cx - 8},${middle} Z`, class: "side-effect side-effect-severe" })
      : s("path", { d: `M${cx},${middle - 7} L${cx + 7},${middle + 6} L${cx - 7},${middle + 6} Z`, class: "side-effect side-effect-mild" });
    const drug = effect.drug ?? effect.trial_id;
    marker.append(
      s(
        "title",
        {},
        `Side effect: ${effect.effect} (${words(effect.severity).toLowerCase()}${effect.intolerable ? ", intolerable" : ""})` +
          `${drug ? ` on ${drug}` : ""}, ${formatInstant(effect.time)}`,
      ),
    );
    group.append(marker);
  }
  return group;
}

function drawTrials(trials, x, top, domain, measure) {
  const group = s("g", { class: "trials" });
  if (!trials.length) {
    const middle = top + LANE / 2;
    group.append(
      s("text", { x: LEFT - 10, y: middle + 4, class: "lane-label", "text-anchor": "end" }, "Trials"),
      s("text", { x: LEFT + 8, y: middle + 4, class: "lane-empty" }, "No medication trials yet"),
    );
    return group;
  }
  trials.forEach((trial, index) => {
    const laneTop = top + index * (LANE + LANE_GAP);
    const colour = OUTCOME_COLOURS[trial.outcome] ?? UNKNOWN_OUTCOME;
    const end = trial.stopped_at ? toMs(trial.stopped_at) : domain.last;
    const lane = s("g", { class: "trial", "data-trial-id": trial.trial_id });
    const stopped = trial.stopped_at
      ? `stopped ${formatInstant(trial.stopped_at)}${trial.stop_reason ? ` (${words(trial.stop_reason).toLowerCase()})` : ""}`
      : "ongoing";
    lane.append(
      s("title", {}, `${trial.drug}: ${words(trial.outcome ?? "outcome not known").toLowerCase()}; started ${formatInstant(trial.started_at)}, ${stopped}`),
      s("text", { x: LEFT - 10, y: laneTop + LANE / 2 + 4, class: "lane-label", "text-anchor": "end" }, fit(trial.drug, LEFT - 24, measure, "lane-label")),
    );
    const steps = sortedBy(trial.doses ?? [], (dose) => dose.from);
    const segments = steps.length
      ? steps.map((dose, step) => ({ dose, from: Math.max(toMs(dose.from), toMs(trial.started_at)), to: step + 1 < steps.length ? toMs(steps[step + 1].from) : end }))
      : [{ dose: null, from: toMs(trial.started_at), to: end }];
    segments.forEach((segment, step) => {
      const left = x(segment.from);
      const width = Math.max(x(Math.max(segment.to, segment.from)) - left, 2);
      const dose = segment.dose ? `${round(segment.dose.daily_dose)} ${unit(segment.dose)}` : null;
      lane.append(
        s(
          "rect",
          { x: left, y: laneTop, width, height: LANE, rx: 3, fill: colour, "fill-opacity": step % 2 ? 0.72 : 1, class: "trial-dose", "data-outcome": trial.outcome ?? "unknown" },
          s("title", {}, `${trial.drug}${dose ? ` ${dose}` : ""} from ${formatInstant(new Date(segment.from).toISOString())}`),
        ),
      );
      if (dose && measure(dose, "dose-label") + 10 <= width) {
        const labelClass = trial.outcome in OUTCOME_COLOURS ? "dose-label" : "dose-label dose-label-dark";
        lane.append(s("text", { x: left + width / 2, y: laneTop + LANE / 2 + 4, class: labelClass, "text-anchor": "middle", "aria-hidden": "true" }, dose));
      }
    });
    if (!trial.stopped_at) {
      const tip = x(end);
      lane.append(s("path", { d: `M${tip + 2},${laneTop + 4} L${tip + 10},${laneTop + LANE / 2} L${tip + 2},${laneTop + LANE - 4} Z`, fill: colour, class: "trial-ongoing", "aria-hidden": "true" }));
    }
    group.append(lane);
  });
  return group;
}

function drawChanges(labels, bottom) {
  const group = s("g", { class: "determinations" });
  for (const label of labels) {
    const labelY = 8 + label.row * LABEL_ROW + 12;
    group.append(
      s(
        "g",
        { class: `determination status-${label.change.status}` },
        s("title", {}, `Status ${words(label.change.status).toLowerCase()} as of ${formatInstant(instantOf(label.change))}`),
        s("line", { x1: label.x, x2: label.x, y1: labelY + 4, y2: bottom, class: "determination-line" }),
        s("text", { x: label.textX, y: labelY, class: "determination-label", "text-anchor": label.anchor }, label.text),
      ),
    );
  }
  return group;
}

function drawTimeAxis(svg, ticks, x, top, measure) {
  const group = s("g", { class: "time-axis" });
  group.append(s("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: top, y2: top, class: "axis-line" }));
  let lastEnd = -Infinity;
  let lastYear = null;
  for (const tick of ticks) {
    const tickX = x(tick.ms);
    group.append(s("line", { x1: tickX, x2: tickX, y1: top, y2: top + 5, class: "axis-line" }));
    const width = measure(tick.label, "tick-label");
    if (tickX - width / 2 > lastEnd + 8) {
      group.append(s("text", { x: tickX, y: top + 19, class: "tick-label", "text-anchor": "middle" }, tick.label));
      lastEnd = tickX + width / 2;
    }
    if (tick.year !== null && tick.year !== lastYear) {
      group.append(s("text", { x: tickX, y: top + 35, class: "tick-year", "text-anchor": "middle" }, String(tick.year)));
      lastYear = tick.year;
    }
  }
  svg.append(group);
  return top + (ticks.some((tick) => tick.year !== null) ? 40 : 24);
}

function drawLegend(svg, top, scores, trials, effects, changes, measure) {
  const items = [];
  if (scores.length)
    items.push({ label: "Pain score", swatch: (sx, sy) => [s("line", { x1: sx, x2: sx + 22, y1: sy, y2: sy, class: "score-line" }), s("circle", { cx: sx + 11, cy: sy, r: 4, class: "score-point" })] });
  const outcomes = new Set(trials.map((trial) => trial.outcome ?? "unknown"));
  for (const outcome of [...Object.keys(OUTCOME_COLOURS), "unknown"].filter((name) => outcomes.has(name))) {
    const colour = OUTCOME_COLOURS[outcome] ?? UNKNOWN_OUTCOME;
    items.push({
      label: outcome === "unknown" ? "Trial, outcome not known" : `Trial ${words(outcome).toLowerCase()}`,
      swatch: (sx, sy) => [s("rect", { x: sx, y: sy - 7, width: 22, height: 14, rx: 3, fill: colour })],
    });
  }
  if (effects.some((effect) => !(effect.intolerable || SEVERE.has(effect.severity))))
    items.push({ label: "Side effect", swatch: (sx, sy) => [s("path", { d: `M${sx + 11},${sy - 7} L${sx + 18},${sy + 6} L${sx + 4},${sy + 6} Z`, class: "side-effect side-effect-mild" })] });
  if (effects.some((effect) => effect.intolerable || SEVERE.has(effect.severity)))
    items.push({ label: "Severe or intolerable side effect", swatch: (sx, sy) => [s("path", { d: `M${sx + 11},${sy - 8} L${sx + 19},${sy} L${sx + 11},${sy + 8} L${sx + 3},${sy} Z`, class: "side-effect side-effect-severe" })] });
  if (changes.length)
    items.push({ label: "Status change", swatch: (sx, sy) => [s("line", { x1: sx + 11, x2: sx + 11, y1: sy - 8, y2: sy + 8, class: "determination-line" })] });

  // Rows as wide as the plot allows, each centred under it.
  const GAP = 20;
  const rows = [[]];
  let used = 0;
  for (const item of items) {
    item.width = 30 + measure(item.label, "legend-label");
    if (rows.at(-1).length && used + GAP + item.width > WIDTH - 16) {
      rows.push([]);
      used = 0;
    }
    used += (rows.at(-1).length ? GAP : 0) + item.width;
    rows.at(-1).push(item);
  }
  const group = s("g", { class: "legend" });
  rows.forEach((row, index) => {
    const rowY = top + index * 22;
    let itemX = (WIDTH - row.reduce((total, item) => total + item.width, GAP * (row.length - 1))) / 2;
    for (const item of row) {
      group.append(
        s("g", { class: "legend-item" }, item.swatch(itemX, rowY), s("text", { x: itemX + 30, y: rowY + 4, class: "legend-label" }, item.label)),
      );
      itemX += item.width + GAP;
    }
  });
  svg.append(group);
  return top + (rows.length - 1) * 22 + 12;
}

// --- scales and text -----------------------------------------------------------------------

function timeDomain(scores, trials, effects, changes) {
  const times = [
    ...scores.map((score) => score.time),
    ...trials.flatMap((trial) => [trial.started_at, trial.stopped_at, ...(trial.doses ?? []).map((dose) => dose.from)]),
    ...effects.map((effect) => effect.time),
    ...changes.map(instantOf),
  ]
    .filter(Boolean)
    .map(toMs);
  const first = Math.min(...times);
  const last = Math.max(...times);
  const pad = Math.max((last - first) * 0.03, DAY_MS);
  return { start: first - pad, end: last + pad, last };
}

/** Status labels in rows: each goes in the first row where it does not touch another one. */
function placeLabels(changes, x, measure) {
  const rowEnds = [];
  return changes.map((change) => {
    const text = words(change.status);
    const width = measure(text, "determination-label");
    const at = x(instantOf(change));
    const rightward = at + 5 + width <= WIDTH - 4;
    const from = rightward ? at + 5 : at - 5 - width;
    let row = rowEnds.findIndex((end) => end + 10 <= from);
    if (row < 0) {
      row = rowEnds.length;
      rowEnds.push(0);
    }
    rowEnds[row] = from + width;
    return { change, text, x: at, row, textX: rightward ? at + 5 : at - 5, anchor: rightward ? "start" : "end" };
  });
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const STEPS = [
  { unit: "day", count: 1 },
  { unit: "day", count: 2 },
  { unit: "day", count: 7 },
  { unit: "day", count: 14 },
  { unit: "month", count: 1 },
  { unit: "month", count: 2 },
  { unit: "month", count: 3 },
  { unit: "month", count: 6 },
  { unit: "year", count: 1 },
  { unit: "year", count: 2 },
  { unit: "year", count: 5 },
  { unit: "year", count: 10 },
];

/** Calendar ticks (UTC) between start and end: at most about one per 90 units of width. */
function timeTicks(start, end) {
  const most = Math.floor(PLOT_WIDTH / 90);
  const length = { day: DAY_MS, month: 30.44 * DAY_MS, year: 365.25 * DAY_MS };
  const step = STEPS.find((candidate) => (end - start) / (length[candidate.unit] * candidate.count) <= most) ?? STEPS.at(-1);
  const ticks = [];
  const first = new Date(start);
  let cursor;
  if (step.unit === "day") {
    cursor = Date.UTC(first.getUTCFullYear(), first.getUTCMonth(), first.getUTCDate());
    if (step.count === 7 || step.count === 14) {
      const weekday = (new Date(cursor).getUTCDay() + 6) % 7; // Monday first
      cursor -= weekday * DAY_MS;
    }
    for (; cursor <= end; cursor += step.count * DAY_MS) {
      if (cursor < start) continue;
      const day = new Date(cursor);
      ticks.push({ ms: cursor, label: `${day.getUTCDate()} ${MONTHS[day.getUTCMonth()]}`, year: day.getUTCFullYear() });
    }
  } else if (step.unit === "month") {
    let month = first.getUTCFullYear() * 12 + first.getUTCMonth();
    month -= month % step.count;
    for (; ; month += step.count) {
      cursor = Date.UTC(Math.floor(month / 12), month % 12, 1);
      if (cursor > end) break;
      if (cursor >= start) ticks.push({ ms: cursor, label: MONTHS[month % 12], year: Math.floor(month / 12) });
    }
  } else {
    let year = first.getUTCFullYear();
    year -= year % step.count;
    for (; ; year += step.count) {
      cursor = Date.UTC(year, 0, 1);
      if (cursor > end) break;
      if (cursor >= start) ticks.push({ ms: cursor, label: String(year), year: null });
    }
  }
  return ticks;
}

function measurer(svg) {
  return (text, className) => {
    const probe = s("text", { class: className, x: -1000, y: -1000 }, text);
    svg.append(probe);
    const width = probe.getComputedTextLength() || text.length * 6.5;
    probe.remove();
    return width;
  };
}

function fit(text, width, measure, className) {
  if (measure(text, className) <= width) return text;
  let kept = text;
  while (kept.length > 1 && measure(`${kept}…`, className) > width) kept = kept.slice(0, -1);
  return `${kept}…`;
}

function describe(scores, trials, effects, changes) {
  if (!scores.length && !trials.length && !effects.length && !changes.length) return "No data yet.";
  const parts = [];
  if (scores.length) {
    const latest = scores.at(-1);
    parts.push(`${scores.length} pain score${scores.length === 1 ? "" : "s"} from ${formatInstant(scores[0].time)} to ${formatInstant(latest.time)}, latest ${round(latest.score)} of 10.`);
  } else parts.push("No pain scores yet.");
  if (trials.length)
    parts.push(`Trials: ${trials.map((trial) => `${trial.drug} (${words(trial.outcome ?? "outcome not known").toLowerCase()})`).join(", ")}.`);
  else parts.push("No medication trials yet.");
  if (effects.length) {
    const severe = effects.filter((effect) => effect.intolerable || SEVERE.has(effect.severity)).length;
    parts.push(`${effects.length} side effect${effects.length === 1 ? "" : "s"}, ${severe} severe or intolerable.`);
  }
  if (changes.length) parts.push(`Status changes: ${changes.map((change) => words(change.status).toLowerCase()).join(", then ")}.`);
  return parts.join(" ");
}

function unit(dose) {
  return dose.dose_unit === "mg" ? "mg/day" : `${dose.dose_unit}${dose.daily_dose === 1 ? "" : "s"}/day`;
}

function instantOf(change) {
  return change.as_of ?? change.received_at;
}

function toMs(time) {
  return typeof time === "number" ? time : Date.parse(time);
}

function round(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function sortedBy(items, key) {
  return [...items].sort((a, b) => toMs(key(a)) - toMs(key(b)));
}
