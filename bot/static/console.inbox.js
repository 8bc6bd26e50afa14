/* Inbox: the agent's presence (a heartbeat), the waiting / claimed / reply-by-email lists, and one
   conversation live (server-sent events): claim, reply, transfer to the bot, resolve. */
"use strict";
(function () {
  var C = LoopConsole, el = C.el;
  var API = "/api/inbox";
  var LIST_MS = 3000;
  var heartbeatMs = Number(document.querySelector('meta[name="inbox-heartbeat"]').content) * 1000;
  var me = document.querySelector('meta[name="console-user"]').content;
  var REASONS = {customer_button: "pressed “Talk to a person”", customer_asked: "asked for a person",
    no_article: "no help article fitted", reasks: "asked again, unanswered"};
  var errorBox = document.getElementById("console-error");
  var presence = document.getElementById("presence");
  var current = {id: null, last: -1, status: null, handoff: null, stream: null};

  function report(error) {
    errorBox.hidden = false;
    errorBox.textContent = error.message;
  }

  function act(promise) {
    errorBox.hidden = true;
    return promise.catch(report);
  }

  function minutesSince(epoch) {
    var minutes = Math.max(0, Math.round((Date.now() / 1000 - epoch) / 60));
    return minutes < 1 ? "just now" : minutes + " min ago";
  }

  // ---- presence ----------------------------------------------------------------------
  function beat() {
    return C.api("PUT", API + "/presence", {status: presence.value}).then(function (data) {
      document.getElementById("presence-note").textContent =
        data.agents_online.length + " agent" + (data.agents_online.length === 1 ? "" : "s") + " online";
    }).catch(report);
  }

  // ---- lists -------------------------------------------------------------------------
  function item(h, label) {
    var words = label + (h.asked ? " · “" + h.asked.slice(0, 80) + "”" : "");
    return el("li", {}, [el("button", {type: "button", text: words,
      className: h.conversation_id === current.id ? "cn-current" : "",
      onclick: function () { openChat(h.conversation_id); }})]);
  }

  function loadLists() {
    return C.api("GET", API + "/conversations").then(function (data) {
      if (document.activeElement !== presence) presence.value = data.me.presence === "away" ? "away" : "online";
      document.getElementById("waiting-count").textContent = String(data.waiting.length);
      document.getElementById("waiting").replaceChildren.apply(document.getElementById("waiting"),
        data.waiting.map(function (h) { return item(h, REASONS[h.reason] + " · " + minutesSince(h.requested_at)); }));
      document.getElementById("claimed").replaceChildren.apply(document.getElementById("claimed"),
        data.claimed.map(function (h) { return item(h, (h.claimed_by === me ? "you" : h.agent_name) + " · " +
          REASONS[h.reason]); }));
      document.getElementById("contact").replaceChildren.apply(document.getElementById("contact"),
        data.contact_requests.map(function (h) { return item(h, h.contact_email + " · " + minutesSince(h.contact_at)); }));
    }).catch(report);
  }

  // ---- one conversation ----------------------------------------------------------------
  function renderTurn(turn) {
    var role = turn.role === "agent" ? "cn-agent" : turn.role === "user" ? "cn-user" : "cn-bot";
    var who = turn.role === "agent" ? turn.agent_name + " (agent)" : turn.role === "user" ? "Customer" :
      "Bot" + (turn.source && turn.source !== "model" ? " · " + turn.source : "");
    var notice = turn.source === "handoff" || turn.source === "fallback";
    return el("li", {className: "cn-turn " + role + (notice ? " cn-notice" : ""), "data-index": turn.index,
      "aria-label": who + ", turn " + turn.index}, [
      el("div", {className: "cn-who-line", text: who + " · turn " + turn.index + " · " + C.formatTime(turn.created_at)}),
      el("p", {className: "cn-text", text: turn.text})]);
  }

  function addTurn(turn) {
    if (turn.index <= current.last) return;
    current.last = turn.index;
    var list = document.getElementById("chat-turns");
    list.append(renderTurn(turn));
    list.lastChild.scrollIntoView({block: "nearest"});
  }

  function showState() {
    var h = current.handoff || {};
    var mine = current.status === "with_agent" && h.claimed_by === me;
    document.getElementById("claim").disabled = current.status !== "waiting_for_agent";
    document.getElementById("transfer").disabled = current.status !== "with_agent";
    document.getElementById("resolve").disabled = current.status !== "with_agent" && !(h.contact_email && !h.resolved_at);
    document.getElementById("reply-form").hidden = current.status !== "with_agent";
    document.getElementById("reply-text").placeholder = mine ? "" : "claimed by " + (h.agent_name || "another agent");
    document.getElementById("chat-meta").textContent = current.status.replace(/_/g, " ") +
      (h.reason ? " · " + REASONS[h.reason] + " · asked " + minutesSince(h.requested_at) : "") +
      (h.claimed_by ? " · with " + (h.claimed_by === me ? "you" : h.agent_name) : "") +
      (h.contact_email ? " · reply by email to " + h.contact_email + (h.resolved_at ? " (answered)" : "") : "");
  }

  function follow(convId) {
    if (current.stream) current.stream.close();
    var stream = new EventSource(API + "/conversations/" + encodeURIComponent(convId) + "/events?after=" + current.last);
    current.stream = stream;
    stream.addEventListener("turn", function (event) { addTurn(JSON.parse(event.data)); });
    stream.addEventListener("status", function (event) {
      if (JSON.parse(event.data).status === "ended") stream.close();
      reloadState(convId);
      loadLists();
    });
  }

  /** The status and handoff as they are now (after a status event), keeping the transcript shown. */
  function reloadState(convId) {
    return C.api("GET", API + "/conversations/" + encodeURIComponent(convId)).then(function (data) {
      if (convId !== current.id) return;
      current.status = data.conversation.status;
      current.handoff = data.handoffs[data.handoffs.length - 1] || null;
      showState();
    }).catch(report);
  }

  function openChat(convId) {
    return C.api("GET", API + "/conversations/" + encodeURIComponent(convId)).then(function (data) {
      current = {id: convId, last: -1, status: data.conversation.status,
        handoff: data.handoffs[data.handoffs.length - 1] || null, stream: current.stream};
      document.getElementById("chat-empty").hidden = true;
      document.getElementById("chat").hidden = false;
      document.getElementById("chat-title").textContent = "Conversation " + convId.slice(0, 8);
      document.getElementById("chat-turns").replaceChildren();
      data.turns.forEach(addTurn);
      showState();
      if (data.conversation.status !== "ended") follow(convId);
      else if (current.stream) current.stream.close();
      loadLists();
    }).catch(report);
  }

  function refresh() { return reloadState(current.id).then(loadLists); }

  document.getElementById("claim").addEventListener("click", function () {
    act(C.api("POST", API + "/conversations/" + current.id + "/claim", {}).then(refresh));
  });
  document.getElementById("transfer").addEventListener("click", function () {
    act(C.api("POST", API + "/conversations/" + current.id + "/transfer", {}).then(refresh));
  });
  document.getElementById("resolve").addEventListener("click", function () {
    act(C.api("POST", API + "/conversations/" + current.id + "/resolve", {}).then(refresh));
  });
  document.getElementById("reply-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var box = document.getElementById("reply-text"), text = box.value.trim();
    if (!text) return;
    act(C.api("POST", API + "/conversations/" + current.id + "/messages", {text: text}).then(function (turn) {
      box.value = "";
      addTurn(turn);
    }));
  });
  document.getElementById("reply-text").addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) document.getElementById("reply-form").requestSubmit();
  });
  presence.addEventListener("change", beat);

  beat();
  setInterval(beat, heartbeatMs);
  loadLists();
  setInterval(loadLists, LIST_MS);
})();
