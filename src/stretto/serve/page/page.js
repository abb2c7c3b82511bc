// The stretto page: plain DOM + fetch + WebSocket, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

async function errorText(response) {
  try { return (await response.json()).error.message; } catch { return `HTTP ${response.status}`; }
}

// --- world: one action per key press, a frame back per action
const KEYS = { ArrowLeft: "L", ArrowRight: "R", ArrowUp: "U", ArrowDown: "D", a: "L", d: "R", w: "U", s: "D", " ": "N" };
const view = $("world-view");
const ctx = view.getContext("2d");
ctx.imageSmoothingEnabled = false;
let socket = null;
let frames = 0;

function connectWorld() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/v1/world`);
  socket.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "ready") {
      $("world-line").textContent = `ready: ${msg.model}, ${msg.frame_size}x${msg.frame_size}; press a key`;
      view.focus();
    } else if (msg.type === "frame") {
      const img = new Image();
      img.onload = () => ctx.drawImage(img, 0, 0, view.width, view.height);
      img.src = "data:image/png;base64," + msg.png;
      frames += 1;
      view.dataset.frames = frames;
      $("world-line").textContent =
        `frame ${msg.index} (${msg.action})  ${msg.latency_ms.toFixed(1)} ms  KV cache ${(msg.kv_bytes / 1024).toFixed(0)} KiB`;
    } else if (msg.type === "error") {
      $("world-line").innerHTML = `<span class="error">${msg.message}</span>`;
    }
  };
  socket.onclose = (event) => {
    $("world-line").textContent += `  (closed ${event.code}${event.reason ? ": " + event.reason : ""}; click to reconnect)`;
    socket = null;
  };
}

view.addEventListener("keydown", (event) => {
  const action = KEYS[event.key];
  if (!action) return;
  event.preventDefault();
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(action);
});
view.addEventListener("click", () => { if (!socket) connectWorld(); view.focus(); });

// --- text: stream the completion as server-sent events and unmask in place
// The canvas and the example prompt come from the served text model (/v1/models): the length it was trained on.
let maxTokens = 64;
let textModel = null;  // null: the server's default text model
fetch("/v1/models").then((r) => r.json()).then((list) => {
  const text = list.data.find((m) => m.gen_length);
  if (!text) return;
  textModel = text.id;
  maxTokens = text.gen_length;
  if (text.example_prompt) $("text-prompt").value = text.example_prompt;
  $("text-block").max = maxTokens;
  $("text-model").textContent = `${text.id}, ${maxTokens} tokens`;
}).catch(() => {});

$("text-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const slots = Array(maxTokens).fill(null);
  const answer = $("answer");
  const draw = (fresh) => {
    answer.innerHTML = "";
    slots.forEach((ch, i) => {
      const span = document.createElement("span");
      span.textContent = ch === null ? "_" : ch;
      span.className = ch === null ? "mask" : (fresh.has(i) ? "new" : "");
      answer.appendChild(span);
    });
  };
  draw(new Set());
  $("text-line").textContent = "";
  const response = await fetch("/v1/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: $("text-prompt").value, max_tokens: maxTokens, stream: true, model: textModel,
                           decode: $("text-decode").value,
                           block_length: $("text-block").value ? Number($("text-block").value) : null }),
  });
  if (!response.ok) { $("text-line").innerHTML = `<span class="error">${await errorText(response)}</span>`; return; }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let events = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      if (data === "[DONE]") continue;
      const msg = JSON.parse(data);
      if (msg.error) { $("text-line").innerHTML = `<span class="error">${msg.error.message}</span>`; continue; }
      events += 1;
      answer.dataset.events = events;
      const fresh = new Set();
      for (const token of msg.choices[0].tokens) { slots[token.position] = token.text; fresh.add(token.position); }
      if (msg.choices[0].finish_reason) {
        const s = msg.stretto;
        const end = slots.findIndex((ch) => ch === null);
        if (end >= 0) slots.length = end;  // after the end-of-text nothing is shown
        $("text-line").textContent = `${s.tokens} tokens in ${s.seconds.toFixed(3)} s = ` +
          `${s.tokens_per_s.toFixed(0)} tokens/s; ${s.model_calls} model calls, ${s.steps} steps`;
        answer.dataset.done = "1";
      }
      draw(fresh);
    }
  }
});

// --- images: generate with a cache setting and show the speed / quality line
$("image-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const cache = $("image-cache").value.trim();
  $("image-line").textContent = "generating…";
  const response = await fetch("/v1/images/generations", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: $("image-prompt").value, n: Number($("image-n").value),
                           steps: Number($("image-steps").value), cache: cache === "none" ? null : cache }),
  });
  if (!response.ok) { $("image-line").innerHTML = `<span class="error">${await errorText(response)}</span>`; return; }
  const body = await response.json();
  const box = $("images");
  box.innerHTML = "";
  for (const item of body.data) {
    const img = document.createElement("img");
    img.className = "pixels";
    img.src = "data:image/png;base64," + item.b64_json;
    box.appendChild(img);
  }
  const s = body.stretto;
  const c = s.cache;
  const reused = c.computed !== undefined ? `, ${(100 * (c.reused + c.forecast) / (c.computed + c.reused + c.forecast)).toFixed(0)}% of block evaluations cached` : "";
  const scored = s.prompt_match.filter((m) => m !== null);
  const quality = scored.length ? `; prompt match ${scored.filter(Boolean).length}/${scored.length} (shapes classifier)` : "";
  $("image-line").textContent = `${c.policy}: ${s.wall_s.toFixed(2)} s, ${s.model_calls} model calls, ` +
    `${s.block_evals} block evaluations${reused}; batch of ${s.batch_images}${quality}`;
});

// cache policies for the suggestions; the world stream starts right away
fetch("/v1/models").then((r) => r.json()).then((models) => {
  for (const name of models.cache_policies) {
    const option = document.createElement("option");
    option.value = name;
    $("cache-policies").appendChild(option);
  }
});
connectWorld();
