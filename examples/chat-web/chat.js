// A chat room page for wasmwire's `chat` service, through the gateway: a WebSocket that is
// a session with the room (`say` out, `said` in), and the room's `members` event over
// HTTP. Plain JavaScript, no build step. A token, if the gateway needs one, is given after
// the page address's `#`: `/?name=ann#token=...` (a fragment is never sent to a server,
// so it stays out of logs and Referer headers); the page sends it as `access_token` on
// the WebSocket, which a browser cannot give headers, and as a bearer header on calls.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
let socket = null;
let room = null;
let membersTimer = null;

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function addLine(from, text, cls) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  const who = document.createElement("span");
  who.className = "from";
  who.textContent = from;
  li.append(who, document.createTextNode(text));
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

async function refreshMembers() {
  if (!room) return;
  const headers = token ? { Authorization: "Bearer " + token } : {};
  try {
    const r = await fetch(`/v1/services/${encodeURIComponent(room)}/events/members`, { method: "POST", headers });
    if (!r.ok) return;
    const names = await r.json();
    $("members").replaceChildren(...names.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      return li;
    }));
  } catch (_) { /* the next refresh tries again */ }
}

function join(name, roomName) {
  if (socket) socket.close();
  room = roomName;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ name });
  if (token) query.set("access_token", token);
  socket = new WebSocket(`${scheme}//${location.host}/v1/services/${encodeURIComponent(roomName)}/session?${query}`);
  setStatus("connecting", "joining " + roomName + "…");
  socket.onmessage = (ev) => {
    if (typeof ev.data !== "string") return;
    const frame = JSON.parse(ev.data);
    if (frame.accepted) {
      setStatus("connected", `${name} in ${roomName}`);
      $("text").disabled = false;
      $("send").disabled = false;
      $("text").focus();
      refreshMembers();
      return;
    }
    if (frame.kind === "said") {
      const said = JSON.parse(frame.payload);
      addLine(said.from, said.text, said.replay ? "replay" : "");
      refreshMembers();
    }
  };
  socket.onclose = (ev) => {
    setStatus("closed", "closed" + (ev.reason ? ": " + ev.reason : ""));
    $("text").disabled = true;
    $("send").disabled = true;
  };
  clearInterval(membersTimer);
  membersTimer = setInterval(refreshMembers, 2000);
}

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  join($("name").value.trim(), $("room").value.trim());
});

$("say-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ kind: "say", payload: text }));
  // The room sends `said` to the other members only: show our own line here.
  addLine($("name").value.trim(), text, "mine");
  $("text").value = "";
});

if (params.get("name")) {
  $("name").value = params.get("name");
  if (params.get("room")) $("room").value = params.get("room");
  join($("name").value, $("room").value);
}
