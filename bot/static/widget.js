/* loopdesk chat widget: one <script src=".../static/widget.js" data-bot-url data-title data-color
   data-idle-timeout> tag adds a chat bubble, streams the bot's replies (server-sent events read from
   the fetch body) and asks for a 1-5 rating when the chat ends or goes idle.
   Everything typed or received is rendered with textContent, never as HTML. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || document.querySelector(".ld-root")) return;

  var scriptUrl = new URL(script.src, location.href);
  var botUrl = new URL(script.dataset.botUrl || "/", scriptUrl).href.replace(/\/?$/, "/");
  var api = botUrl + "api/conversations";
  var title = script.dataset.title || "Chat with us";
  var color = script.dataset.color || "#2f5d4e";
  var idleMs = Math.max(5, Number(script.dataset.idleTimeout) || 120) * 1000;
  var storageKey = "loopdesk:" + botUrl;
  var RATINGS = ["very poor", "poor", "okay", "good", "great"];

  var state = load();
  var busy = false;
  var idleTimer = null;
  var historyShown = false;

  function load() {
    try { return JSON.parse(sessionStorage.getItem(storageKey)) || {}; } catch (e) { return {}; }
  }
  function save() {
    try { sessionStorage.setItem(storageKey, JSON.stringify(state)); } catch (e) { /* private mode */ }
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else if (name === "hidden") node.hidden = attrs[name];
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function icon(path) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    var shape = document.createElementNS(ns, "path");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    shape.setAttribute("fill", "currentColor");
    shape.setAttribute("d", path);
    svg.appendChild(shape);
    return svg;
  }

  /* ---- building the widget ---- */
  var css = el("link", { rel: "stylesheet", href: new URL("widget.css", scriptUrl).href });
  document.head.appendChild(css);

  var launcher = el("button", {
    type: "button", class: "ld-launcher", "aria-label": "Open chat: " + title,
    "aria-expanded": "false", "aria-controls": "ld-panel"
  });
  launcher.appendChild(icon("M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"));

  var endButton = el("button", { type: "button", class: "ld-end", text: "End chat" });
  var closeButton = el("button", { type: "button", class: "ld-close", "aria-label": "Close chat", text: "\u00d7" });
  var log = el("div", { class: "ld-log", role: "log", "aria-live": "polite", "aria-label": "Conversation", tabindex: "0" });
  var typing = el("div", { class: "ld-typing", role: "status", "aria-label": "The assistant is typing", hidden: true },
    [el("span"), el("span"), el("span")]);
  var status = el("p", { class: "ld-status", role: "alert" });
  var input = el("textarea", {
    id: "ld-input", class: "ld-input", rows: "1", maxlength: "2000", placeholder: "Type your question…",
    "aria-label": "Your message"
  });
  var sendButton = el("button", { type: "submit", class: "ld-send", text: "Send" });
  var composer = el("form", { class: "ld-composer", "aria-label": "Send a message" }, [input, sendButton]);

  var stars = el("div", { class: "ld-stars" });
  RATINGS.forEach(function (words, i) {
    var score = String(i + 1);
    var radio = el("input", { type: "radio", name: "ld-score", value: score, id: "ld-score-" + score, class: "ld-sr-only" });
    var label = el("label", { for: "ld-score-" + score, title: score + " – " + words },
      [el("span", { "aria-hidden": "true", text: "\u2605" }), el("span", { class: "ld-sr-only", text: score + " star" + (i ? "s" : "") + ", " + words })]);
    stars.appendChild(radio);
    stars.appendChild(label);
  });
  var comment = el("textarea", { id: "ld-comment", class: "ld-input", rows: "2", maxlength: "2000" });
  var survey = el("form", { class: "ld-survey", "aria-labelledby": "ld-survey-title", hidden: true }, [
    el("h3", { id: "ld-survey-title", text: "How did we do?" }),
    el("fieldset", {}, [el("legend", { text: "Rate this chat from 1 (very poor) to 5 (great)" }), stars]),
    el("label", { for: "ld-comment", text: "Comment (optional)" }), comment,
    el("button", { type: "submit", class: "ld-send", text: "Send rating" })
  ]);
  var newChat = el("button", { type: "button", class: "ld-send", text: "Start a new chat" });
  var thanks = el("div", { class: "ld-thanks", hidden: true, tabindex: "-1" },
    [el("p", { text: "Thank you for your feedback!" }), newChat]);

  var panel = el("section", {
    id: "ld-panel", class: "ld-panel", role: "dialog", "aria-labelledby": "ld-title", hidden: true
  }, [
    el("header", { class: "ld-header" }, [el("h2", { id: "ld-title", text: title }), endButton, closeButton]),
    log, typing, status, composer, survey, thanks
  ]);
  var root = el("div", { class: "ld-root" }, [panel, launcher]);
  root.style.setProperty("--ld-color", color);
  document.body.appendChild(root);

  /* ---- showing things ---- */
  function addMessage(role, text) {
    var bubble = el("div", { class: "ld-msg ld-" + role }, [
      el("span", { class: "ld-sr-only", text: role === "user" ? "You: " : "Assistant: " }),
      el("span", { class: "ld-text", text: text })
    ]);
    log.appendChild(bubble);
    log.scrollTop = log.scrollHeight;
    return bubble.querySelector(".ld-text");
  }
  function showStatus(message) { status.textContent = message || ""; }
  function setTyping(on) { typing.hidden = !on; if (on) log.scrollTop = log.scrollHeight; }
  function refreshControls() {
    var ended = !!state.ended;
    composer.hidden = ended;
    survey.hidden = !ended || !!state.rated;
    thanks.hidden = !state.rated;
    endButton.disabled = !state.id || ended;
    sendButton.disabled = busy;
  }

  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", "Close chat: " + title);
    if (!historyShown) restoreHistory();
    refreshControls();
    (state.rated ? newChat : state.ended ? survey.querySelector("input") : input).focus();
  }
  function close() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", "Open chat: " + title);
    launcher.focus();
  }

  /* ---- talking to the API ---- */
  function call(path, method, body) {
    var headers = { "Content-Type": "application/json", "Accept": "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return fetch(api + path, { method: method, headers: headers, body: body && JSON.stringify(body) })
      .then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (data) {
          if (!res.ok) throw new Error((data.error && data.error.message) || "request failed (" + res.status + ")");
          return data;
        });
      });
  }

  function restoreHistory() {
    historyShown = true;
    if (!state.id) return;
    call("/" + state.id, "GET").then(function (conv) {
      conv.turns.forEach(function (turn) { addMessage(turn.role === "user" ? "user" : "bot", turn.text); });
      state.ended = conv.status === "ended";
      state.rated = conv.csat !== null;
      save();
      refreshControls();
    }).catch(function () { state = {}; save(); refreshControls(); });
  }

  function ensureConversation() {
    if (state.id) return Promise.resolve();
    /* the page without its query string and fragment, where tokens and e-mail addresses travel */
    var page = (location.origin + location.pathname).slice(0, 500);
    return call("", "POST", { meta: { page: page } }).then(function (conv) {
      state = { id: conv.conversation_id, token: conv.token };
      save();
    });
  }

  /* Read "event: x\ndata: {...}\n\n" blocks from the response body as they arrive. */
  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function pump() {
      return reader.read().then(function (chunk) {
        buffer += decoder.decode(chunk.value || new Uint8Array(), { stream: !chunk.done });
        var blocks = buffer.split("\n\n");
        buffer = blocks.pop();
        blocks.forEach(function (block) {
          var event = "message", data = "";
          block.split("\n").forEach(function (line) {
            if (line.indexOf("event:") === 0) event = line.slice(6).trim();
            else if (line.indexOf("data:") === 0) data += line.slice(5).trim();
          });
          if (data) onEvent(event, JSON.parse(data));
        });
        if (!chunk.done) return pump();
      });
    }
    return pump();
  }

  function send(text) {
    busy = true;
    refreshControls();
    showStatus("");
    addMessage("user", text);
    setTyping(true);
    var reply = null;
    ensureConversation().then(function () {
      return fetch(api + "/" + state.id + "/messages", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": "Bearer " + state.token },
        body: JSON.stringify({ text: text })
      });
    }).then(function (res) {
      if (!res.ok) {
        return res.json().catch(function () { return {}; }).then(function (data) {
          if (res.status === 409) { state.ended = true; save(); }
          throw new Error((data.error && data.error.message) || "the message could not be sent (" + res.status + ")");
        });
      }
      return readEvents(res, function (event, data) {
        if (event === "error") throw new Error(data.error.message);
        setTyping(false);
        if (!reply) reply = addMessage("bot", "");
        if (event === "delta") reply.textContent += data.text;
        if (event === "done") reply.textContent = data.text;
        log.scrollTop = log.scrollHeight;
      });
    }).catch(function (err) {
      showStatus(err.message);
    }).then(function () {
      busy = false;
      setTyping(false);
      refreshControls();
      resetIdle();
      if (!composer.hidden) input.focus();
    });
  }

  function endChat() {
    if (!state.id || state.ended) return Promise.resolve();
    clearTimeout(idleTimer);
    return call("/" + state.id + "/end", "POST").then(function () {
      state.ended = true;
      save();
      refreshControls();
      if (!panel.hidden) survey.querySelector("input").focus();
    }).catch(function (err) { showStatus(err.message); });
  }

  function resetIdle() {
    clearTimeout(idleTimer);
    if (state.id && !state.ended) idleTimer = setTimeout(function () {
      if (busy) return resetIdle();
      endChat().then(function () { if (panel.hidden) open(); });
    }, idleMs);
  }

  /* ---- wiring ---- */
  launcher.addEventListener("click", function () { if (panel.hidden) open(); else close(); });
  closeButton.addEventListener("click", close);
  endButton.addEventListener("click", endChat);
  panel.addEventListener("keydown", function (event) { if (event.key === "Escape") close(); });
  input.addEventListener("input", resetIdle);
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  composer.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text || busy) return;
    input.value = "";
    send(text);
  });
  stars.addEventListener("change", function () {
    var score = Number(survey.elements["ld-score"].value);
    stars.querySelectorAll("label").forEach(function (label, i) { label.classList.toggle("ld-on", i < score); });
  });
  survey.addEventListener("submit", function (event) {
    event.preventDefault();
    var score = Number(survey.elements["ld-score"].value);
    if (!score) { showStatus("Please choose 1 to 5 stars."); return; }
    call("/" + state.id + "/rating", "POST", { score: score, comment: comment.value.trim() }).then(function () {
      state.rated = true;
      save();
      showStatus("");
      refreshControls();
      thanks.focus();
    }).catch(function (err) { showStatus(err.message); });
  });
  newChat.addEventListener("click", function () {
    state = {};
    save();
    log.textContent = "";
    survey.reset();
    stars.querySelectorAll("label").forEach(function (label) { label.classList.remove("ld-on"); });
    refreshControls();
    input.focus();
  });
  refreshControls();
  resetIdle();
})();
