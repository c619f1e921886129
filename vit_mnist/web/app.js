// vit-mnist web app: draw on a canvas, send it (debounced) to POST /api/predict, show the answer.
"use strict";

const DEBOUNCE_MS = 150; // wait this long after the last stroke movement ...
const MAX_WAIT_MS = 400; // ... but never longer than this while the pen keeps moving
const BRUSH = 20; // px on the 280 px canvas: about MNIST's stroke width once scaled to 20x20

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const labelEl = document.getElementById("pred-label");
const confidenceEl = document.getElementById("pred-confidence");
const verdictEl = document.getElementById("pred-verdict");
const statusEl = document.getElementById("status");
const barsEl = document.getElementById("bars");

let classNames = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
let drawing = false;
let hasInk = false;
let last = null;
let timer = null;
let firstPending = 0; // when the oldest unsent change was made
let inFlight = false;
let queued = false;
let generation = 0; // bumped by Clear, so that late answers for an old drawing are dropped

function setState(state) {
  document.body.dataset.state = state;
}

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", isError);
}

function resetPad() {
  ctx.fillStyle = "#ffffff"; // an opaque white page: the server inverts it to MNIST's white-on-black
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#000000";
  ctx.fillStyle = "#000000";
  ctx.lineWidth = BRUSH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
}

function buildBars() {
  barsEl.replaceChildren();
  classNames.forEach((name, i) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.dataset.class = String(i);
    bar.dataset.probability = "0";
    bar.title = name;
    bar.innerHTML = '<div class="bar-value"></div><div class="bar-track"><div class="bar-fill" style="height:0%"></div></div>';
    const nameEl = document.createElement("div");
    nameEl.className = "bar-name";
    nameEl.textContent = name;
    bar.appendChild(nameEl);
    barsEl.appendChild(bar);
  });
}

function showResult(result) {
  const probabilities = result.probabilities;
  // The verdict decides what the answer says: a digit, two candidates, or not a digit at all. The server words
  // the message; the probability shown is the calibrated one.
  const verdict = result.verdict || "confident";
  document.body.dataset.verdict = verdict;
  verdictEl.textContent = verdict === "confident" ? "" : result.message || "";
  verdictEl.className = `verdict ${verdict}`;
  if (verdict === "out_of_domain") {
    labelEl.textContent = "?";
    confidenceEl.textContent = "";
  } else if (verdict === "unsure") {
    labelEl.textContent = (result.candidates || [result.class_name]).join(" or ") + "?";
    confidenceEl.textContent = `${(100 * probabilities[result.label]).toFixed(1)}% for ${result.class_name}`;
  } else {
    labelEl.textContent = result.class_name;
    confidenceEl.textContent = `${(100 * probabilities[result.label]).toFixed(1)}% sure`;
  }
  barsEl.querySelectorAll(".bar").forEach((bar, i) => {
    const p = probabilities[i] ?? 0;
    bar.dataset.probability = String(p);
    bar.classList.toggle("top", i === result.label);
    bar.querySelector(".bar-value").textContent = `${Math.round(100 * p)}%`;
    bar.querySelector(".bar-fill").style.height = `${(100 * p).toFixed(1)}%`;
  });
  const image = seen.createImageData(28, 28);
  result.image.forEach((row, y) => row.forEach((v, x) => {
    const k = 4 * (28 * y + x);
    image.data[k] = image.data[k + 1] = image.data[k + 2] = v;
    image.data[k + 3] = 255;
  }));
  seen.putImageData(image, 0, 0);
}

function clearResult() {
  labelEl.textContent = "–";
  confidenceEl.textContent = "";
  verdictEl.textContent = "";
  delete document.body.dataset.verdict;
  buildBars();
  seen.clearRect(0, 0, 28, 28);
}

async function predict() {
  timer = null;
  firstPending = 0;
  if (!hasInk) return;
  if (inFlight) { // one request at a time; the newest drawing is sent when it returns
    queued = true;
    return;
  }
  inFlight = true;
  setState("pending");
  const sentFor = generation;
  const started = performance.now();
  try {
    const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("file", blob, "digit.png");
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json();
    if (sentFor !== generation) return;
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    showResult(body);
    setStatus(`${Math.round(performance.now() - started)} ms`);
    setState("ready");
  } catch (err) {
    if (sentFor === generation) {
      setStatus(`Prediction failed: ${err.message}`, true);
      setState("error");
    }
  } finally {
    inFlight = false;
    if (queued) {
      queued = false;
      predict();
    }
  }
}

function schedule() {
  const now = performance.now();
  if (!firstPending) firstPending = now;
  clearTimeout(timer);
  const wait = Math.max(0, Math.min(DEBOUNCE_MS, firstPending + MAX_WAIT_MS - now));
  timer = setTimeout(predict, wait);
}

function point(event) {
  const box = pad.getBoundingClientRect(); // the canvas may be shown smaller than its 280 px
  return { x: (event.clientX - box.left) * (pad.width / box.width), y: (event.clientY - box.top) * (pad.height / box.height) };
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  try {
    pad.setPointerCapture(event.pointerId); // keep the stroke when the pen leaves the canvas
  } catch (err) {
    // not an active pointer (e.g. a synthetic event): draw without capture
  }
  drawing = true;
  last = point(event);
  ctx.beginPath(); // a dot, so that a tap leaves ink too
  ctx.arc(last.x, last.y, BRUSH / 2, 0, 2 * Math.PI);
  ctx.fill();
  hasInk = true;
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) {
    const p = point(e);
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    last = p;
  }
  schedule();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  clearTimeout(timer);
  predict(); // the finished stroke is answered at once
}

pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  queued = false;
  hasInk = false;
  resetPad();
  clearResult();
  setStatus("Draw a digit to start.");
  setState("idle");
});

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

async function loadInfo() {
  try {
    const response = await fetch("/healthz");
    const info = await response.json();
    if (Array.isArray(info.class_names) && info.class_names.length) classNames = info.class_names;
    const kind = info.model_name ? `${info.model_name}, ` : "";
    const verdicts = info.verdicts ? `verdicts by ${info.verdicts}` : "no out-of-domain detector";
    document.getElementById("model-info").textContent =
      `Model: ${info.run || info.checkpoint} (${kind}${info.dataset}, ${classNames.length} classes; ${verdicts})`;
    if (info.model_name) {
      document.getElementById("tagline").textContent =
        `Draw a digit in the box. ${capitalise(info.model_name)} reads it while you draw.`;
    }
  } catch (err) {
    setStatus("The server does not answer; is `python -m vit_mnist.serve` running?", true);
  }
  buildBars();
}

resetPad();
buildBars();
loadInfo();
