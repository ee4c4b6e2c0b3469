// The chat page: the OpenAI-compatible API of this server, streamed, with the twin's sources.
// No build step and no third-party code; text is always set as text (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "llm-twin-api-key";
let history = [];
let busy = false;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

const READABLE = {
  401: "This server needs an API key.",
  403: "Your key may not do that.",
  404: "That twin does not exist (any more). Pick another one.",
  413: "That was too long for the server.",
  503: "The server is busy right now. Try again in a moment.",
};

async function failure(response) {
  let detail = "";
  try { detail = (await response.json()).error.message || ""; } catch (_) { /* not JSON */ }
  if (response.status === 401) askForKey(detail);
  const base = READABLE[response.status] || `The server answered ${response.status}.`;
  return new Error(detail && response.status !== 503 ? `${base} (${detail})` : base);
}

function askForKey(detail) {
  $("key-form").hidden = false;
  $("key").focus();
  if (detail) showError(`${READABLE[401]} ${detail}`);
}

async function loadTwins() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) throw await failure(response);
  const twins = (await response.json()).data;
  const select = $("twin");
  select.replaceChildren(...twins.map((t) => {
    const option = document.createElement("option");
    option.value = t.id;
    option.textContent = `${t.name} (${t.documents} documents)`;
    option.dataset.name = t.name;
    return option;
  }));
  if (!twins.length) showError("No twins yet: crawl and index someone's writing first (twin crawl, twin index).");
  updateStatus();
}

function bubble(kind, text) {
  const div = document.createElement("div");
  div.className = `message ${kind}`;
  const who = document.createElement("span");
  who.className = "who";
  const option = $("twin").selectedOptions[0];
  who.textContent = kind === "user" ? "You" : (option && option.dataset.name) || "Twin";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showSources(div, sources) {
  if (!sources.length) {
    div.classList.add("nothing");  // the twin said it has not written about this
    return;
  }
  const list = document.createElement("ol");
  list.className = "sources";
  list.setAttribute("aria-label", "Sources");
  for (const s of sources) {
    const item = document.createElement("li");
    // Only http(s) links are followed; a piece from an export (archive://...) or a local file is named.
    const link = document.createElement(/^https?:\/\//i.test(s.link || "") ? "a" : "span");
    if (link.tagName === "A") {
      link.href = s.link;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
    }
    link.textContent = s.title || s.link;
    item.append(link);
    list.append(item);
  }
  div.append(list);
}

// A thumb drawn as SVG, not the emoji: a browser without an emoji font (headless Chromium, many
// Linux desktops) showed an empty box.
const SVG = "http://www.w3.org/2000/svg";
const THUMB = "M3 10h3v11H3z M8 10l4-7c1.6 0 2.6 1.2 2.2 2.8L13.4 10H19a2 2 0 0 1 1.9 2.6l-2 6.9A2 2 0 0 1 17 21H8z";

function thumb(down) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", THUMB);
  path.setAttribute("fill", "currentColor");
  if (down) path.setAttribute("transform", "rotate(180 12 12)");
  svg.append(path);
  return svg;
}

function addFeedback(div, answerId) {
  // Thumbs up/down: POST /v1/feedback with the answer's id (it joins the answer's monitoring record).
  const bar = document.createElement("div");
  bar.className = "feedback";
  for (const [score, label] of [[1, "Good answer"], [-1, "Bad answer"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "vote";
    button.dataset.score = String(score);
    button.setAttribute("aria-label", label);
    button.title = label;
    button.append(thumb(score < 0));
    button.addEventListener("click", async () => {
      for (const b of bar.querySelectorAll("button")) b.disabled = true;
      try {
        const response = await fetch("/v1/feedback", {
          method: "POST", headers: headers(), body: JSON.stringify({ response_id: answerId, score }),
        });
        if (!response.ok) throw await failure(response);
        button.setAttribute("aria-pressed", "true");
        bar.dataset.sent = String(score);
      } catch (error) {
        for (const b of bar.querySelectorAll("button")) b.disabled = false;
        showError(`Feedback not recorded: ${error.message}`);
      }
    });
    bar.append(button);
  }
  div.append(bar);
}

async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function ask(question) {
  const twin = $("twin").value;
  if (!twin) throw new Error("Pick a twin first.");
  bubble("user", question);
  history.push({ role: "user", content: question });
  const answer = bubble("twin", "");
  const text = answer.querySelector(".text");
  const started = performance.now();
  let first = null;
  let usage = null;
  let sources = [];
  let answerId = null;
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: twin, messages: history, stream: true, max_tokens: 256,
                           stream_options: { include_usage: true } }),
  });
  if (!response.ok) {
    answer.remove();
    history.pop();
    throw await failure(response);
  }
  for await (const data of events(response)) {
    if (data === "[DONE]") break;
    const event = JSON.parse(data);
    if (event.error) throw new Error(READABLE[event.error.code] || event.error.message);
    if (event.sources) sources = event.sources;
    if (event.id) answerId = event.id;
    if (event.usage) usage = event.usage;
    const delta = event.choices && event.choices[0] && event.choices[0].delta;
    if (delta && delta.content) {
      if (first === null) first = performance.now();
      text.textContent += delta.content;
      answer.scrollIntoView({ block: "end" });
    }
  }
  showSources(answer, sources);
  if (answerId) addFeedback(answer, answerId);
  answer.dataset.done = "true";
  history.push({ role: "assistant", content: text.textContent });
  const ended = performance.now();
  const tokens = usage ? usage.completion_tokens : 0;
  const ttft = first === null ? null : (first - started) / 1000;
  const rate = tokens && first !== null && ended > first ? tokens / ((ended - first) / 1000) : null;
  $("status-speed").textContent = `last answer: ${tokens} tokens` +
    (rate ? `, ${rate.toFixed(1)} tokens/s` : "") + (ttft !== null ? `, first token after ${ttft.toFixed(2)} s` : "");
  updateStatus();
}

async function updateStatus() {
  const twin = $("twin").value;
  $("status-model").textContent = `model: ${twin || "-"}`;
  try {
    const response = await fetch("/v1/stats", { headers: headers() });
    if (!response.ok) return;
    const adapters = (await response.json()).generation.adapters || {};
    const version = adapters[twin];
    $("status-adapter").textContent = twin in adapters
      ? `adapter: ${version || "base model (no fine-tuned version yet)"}` : "adapter: loads with the first answer";
  } catch (_) { /* the status strip is a nicety */ }
}

async function send(event) {
  if (event) event.preventDefault();
  const question = $("question").value.trim();
  if (!question || busy) return;
  busy = true;
  $("send").disabled = true;
  showError("");
  $("question").value = "";
  try {
    await ask(question);
  } catch (error) {
    showError(error.message);
  } finally {
    busy = false;
    $("send").disabled = false;
    $("question").focus();
  }
}

$("ask-form").addEventListener("submit", send);
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
});
$("new-chat").addEventListener("click", () => {
  history = [];
  $("messages").replaceChildren();
  showError("");
  $("question").focus();
});
$("twin").addEventListener("change", () => { history = []; $("messages").replaceChildren(); updateStatus(); });
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  showError("");
  loadTwins().catch((error) => showError(error.message));
});

loadTwins().catch((error) => showError(error.message));
