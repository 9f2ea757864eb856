// The playground: a chat over the server's own OpenAI endpoints (/v1/models, /v1/chat/completions with SSE).
// Plain browser JavaScript with no build step and no CDN, so `perkunas serve` ships it as three static files.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = [];  // the conversation sent with every request: {role, content}
let busy = false;

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

// The API's own error message (OpenAI shape: {"error": {"message": ...}}), else the HTTP status line.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function addMessage(role, content, cls) {
  const div = document.createElement("div");
  div.className = "message " + role + (cls ? " " + cls : "");
  div.innerHTML = '<div class="role"></div><div class="content"></div><div class="meta"></div>';
  div.querySelector(".role").textContent = role;
  div.querySelector(".content").textContent = content;
  $("transcript").appendChild(div);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return div;
}

function showError(text) { addMessage("error", text, "error"); setStatus("error"); }

async function loadModels() {
  setStatus("loading models…");
  const response = await fetch("v1/models", { headers: headers() });
  if (!response.ok) { showError(await errorMessage(response)); return; }
  const body = await response.json();
  const select = $("model");
  const previous = select.value;
  select.innerHTML = "";
  for (const model of body.data) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.id;
    select.appendChild(option);
  }
  if (previous) select.value = previous;
  setStatus(`${body.data.length} model(s)`);
}

// Yields each parsed `data:` payload of a server-sent-event stream until [DONE].
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

// max_tokens that fits the model's context after this conversation's prompt (the server's /tokenize counts it),
// so a small model's first reply is never refused for a default the page chose. null: the prompt fills it.
async function fitMaxTokens(model, messages, wanted) {
  const response = await fetch("tokenize", { method: "POST", headers: headers(), body: JSON.stringify({ model, messages }) });
  if (!response.ok) throw new Error(await errorMessage(response));
  const { count, max_model_len } = await response.json();
  const room = max_model_len - count;
  return room < 1 ? null : Math.min(wanted, room);
}

async function send(prompt) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  conversation.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const reply = addMessage("assistant", "");
  const content = reply.querySelector(".content");
  const meta = reply.querySelector(".meta");
  const request = {
    model: $("model").value, messages: messages.concat(conversation), stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value), top_p: Number($("top_p").value),
  };
  const wanted = Number($("max_tokens").value);
  let fitted;
  try { fitted = await fitMaxTokens(request.model, request.messages, wanted); } catch (err) { fitted = err; }
  if (fitted === null || fitted instanceof Error) {
    reply.remove();
    conversation.pop();
    showError(fitted === null ? "the conversation fills the model's context: clear the chat to go on" : fitted.message);
    return;
  }
  request.max_tokens = fitted;
  if (fitted < wanted) meta.textContent = `max tokens fitted to ${fitted} (the model's context)`;
  const started = performance.now();
  let firstTokenAt = null, chunks = 0, text = "";
  const response = await fetch("v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(request) });
  if (!response.ok) {
    reply.remove();
    conversation.pop();
    showError(await errorMessage(response));
    return;
  }
  setStatus("streaming…");
  for await (const event of sseEvents(response)) {
    if (event.error) { showError(event.error.message || "the stream failed"); break; }
    for (const choice of event.choices || []) {
      const delta = (choice.delta && choice.delta.content) || "";
      if (delta) {
        if (firstTokenAt === null) firstTokenAt = performance.now();
        text += delta;
        chunks += 1;
        content.textContent = text;
        meta.textContent = `tokens: ${chunks}`;
      }
    }
    if (event.usage) {
      const seconds = (performance.now() - (firstTokenAt ?? started)) / 1000;
      const tokens = event.usage.completion_tokens;
      const cached = (event.usage.prompt_tokens_details || {}).cached_tokens || 0;
      const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
      const ttft = firstTokenAt === null ? "–" : ((firstTokenAt - started) / 1000).toFixed(2);
      meta.textContent = `tokens: ${tokens} · ${rate} tok/s · first token ${ttft} s · ` +
                         `prompt ${event.usage.prompt_tokens} (cached ${cached})`;
    }
    $("transcript").scrollTop = $("transcript").scrollHeight;
  }
  conversation.push({ role: "assistant", content: text });
  setStatus("ready");
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || busy) return;
  busy = true;
  $("send").disabled = true;
  $("prompt").value = "";
  try { await send(prompt); } catch (err) { showError(String(err)); }
  busy = false;
  $("send").disabled = false;
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
});
$("reload").addEventListener("click", () => loadModels().catch((err) => showError(String(err))));
$("token").addEventListener("change", () => loadModels().catch((err) => showError(String(err))));
$("clear").addEventListener("click", () => { conversation.length = 0; $("transcript").innerHTML = ""; });
loadModels().catch((err) => showError(String(err)));
