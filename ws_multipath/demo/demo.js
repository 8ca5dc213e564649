// The demo page: a chat on /chat (joined with ?name=) and an echo box on /echo.
"use strict";

const $ = (id) => document.getElementById(id);
const wsURL = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;

function status(id, text, live) {
  $(id).textContent = text;
  $(id).classList.toggle("live", live);
}

function append(list, cls, parts) {
  const item = document.createElement("li");
  item.className = cls;
  for (const [kind, text] of parts) {
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = text;
    item.append(span);
  }
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

// -- chat --------------------------------------------------------------------

let chat = null;

function setJoined(joined) {
  $("name").disabled = joined;
  $("join").disabled = joined;
  $("say").disabled = !joined;
  $("send").disabled = !joined;
}

function showRoster(names) {
  $("roster").replaceChildren(...names.map((name) => {
    const item = document.createElement("li");
    item.textContent = name;
    return item;
  }));
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  if (!name || chat) return;
  $("join").disabled = true;
  status("chat-status", "joining", false);
  chat = new WebSocket(wsURL(`/chat?name=${encodeURIComponent(name)}`));
  chat.onopen = () => {
    status("chat-status", `joined as ${name}`, true);
    setJoined(true);
    $("say").focus();
  };
  chat.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      message = { type: "message", name: null, text: String(event.data) };
    }
    if (message.type === "roster") {
      showRoster(message.names);
    } else if (message.type === "message") {
      append($("log"), message.name === null ? "anonymous" : "said", [["who", message.name ?? "(no name)"], ["text", message.text]]);
    }
  };
  chat.onclose = () => {
    chat = null;
    status("chat-status", "left", false);
    setJoined(false);
    showRoster([]);
  };
});

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("say").value;
  if (!text || !chat || chat.readyState !== WebSocket.OPEN) return;
  chat.send(text);
  $("say").value = "";
});

// -- echo --------------------------------------------------------------------

const echo = new WebSocket(wsURL("/echo"));
echo.onopen = () => {
  status("echo-status", "connected", true);
  $("echo-send").disabled = false;
};
echo.onmessage = (event) => append($("echo-log"), "echoed", [["who", "echo"], ["text", String(event.data)]]);
echo.onclose = () => {
  status("echo-status", "closed", false);
  $("echo-send").disabled = true;
};

$("echo-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("echo-input").value;
  if (!text || echo.readyState !== WebSocket.OPEN) return;
  echo.send(text);
  append($("echo-log"), "sent", [["who", "you"], ["text", text]]);
  $("echo-input").value = "";
});
