/* loopdesk chat widget: one <script src=".../static/widget.js" data-bot-url data-title data-color
   data-idle-timeout> tag adds a chat bubble, streams the bot's replies (server-sent events read from
   the fetch body) and asks for a 1-5 rating when the chat ends; when it goes idle it offers the rating
   (rate now, or keep chatting: the chat stays open, and the server ends none for idleness). Each message
   carries an Idempotency-Key, the same on each automatic retry, so it is logged once. "Talk to a person" (or
   the bot itself) hands the chat to the team: the widget then shows the status and the agents'
   replies live (an SSE stream read with fetch, so the token goes in the Authorization header), or,
   when nobody is available, when the team is back and a form to leave an email address.
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
  var RETRY_MS = [1000, 2000, 4000, 8000];  /* waits before retrying a message the server could not answer */
  var WITH_A_PERSON = { waiting_for_agent: true, with_agent: true };

  var state = load();
  var busy = false;
  var idleTimer = null;
  var historyShown = false;
  var following = null;  /* the AbortController of the live stream while the chat is with a person */

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

  function svgEl(tag, attrs, children) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }
  function icon(path) {
    return svgEl("svg", { viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" },
      [svgEl("path", { fill: "currentColor", d: path })]);
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
  var personButton = el("button", { type: "button", class: "ld-person", text: "Talk to a person" });
  var notice = el("p", { class: "ld-notice", "aria-live": "polite", hidden: true });
  var email = el("input", { id: "ld-email", class: "ld-input", type: "email", maxlength: "254", required: "",
    autocomplete: "email" });
  var contact = el("form", { class: "ld-contact", "aria-label": "Leave your email address", hidden: true }, [
    el("label", { for: "ld-email", text: "Your email address" }), email,
    el("button", { type: "submit", class: "ld-send", text: "Send address" })
  ]);

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
  var rateNow = el("button", { type: "button", class: "ld-send", text: "Rate this chat" });
  var keepChatting = el("button", { type: "button", class: "ld-person", text: "Keep chatting" });
  var offer = el("div", { class: "ld-offer", role: "group", "aria-label": "Done for now?", hidden: true }, [
    el("p", { text: "Done for now? Rate this chat, or keep chatting: it stays open." }), rateNow, keepChatting]);
  var newChat = el("button", { type: "button", class: "ld-send", text: "Start a new chat" });
  var thanks = el("div", { class: "ld-thanks", hidden: true, tabindex: "-1" },
    [el("p", { text: "Thank you for your feedback!" }), newChat]);

  var panel = el("section", {
    id: "ld-panel", class: "ld-panel", role: "dialog", "aria-labelledby": "ld-title", hidden: true
  }, [
    el("header", { class: "ld-header" }, [el("h2", { id: "ld-title", text: title }), endButton, closeButton]),
    log, typing, notice, contact, status, offer, personButton, composer, survey, thanks
  ]);
  var root = el("div", { class: "ld-root" }, [panel, launcher]);
  root.style.setProperty("--ld-color", color);
  document.body.appendChild(root);

  /* ---- showing things ---- */
  function addMessage(role, text, agentName) {
    var who = role === "user" ? "You: " : role === "agent" ? "" : "Assistant: ";
    var bubble = el("div", { class: "ld-msg ld-" + role }, [
      role === "agent" ? el("span", { class: "ld-name", text: agentName + " (our team)" })
        : el("span", { class: "ld-sr-only", text: who }),
      el("span", { class: "ld-text", text: text })
    ]);
    log.appendChild(bubble);
    log.scrollTop = log.scrollHeight;
    return bubble.querySelector(".ld-text");
  }
  function showStatus(message) { status.textContent = message || ""; }
  function wait(ms) { return new Promise(function (resume) { setTimeout(resume, ms); }); }
  function setTyping(on) { typing.hidden = !on; if (on) log.scrollTop = log.scrollHeight; }
  function refreshControls() {
    var ended = !!state.ended;
    composer.hidden = ended;
    if (ended) offer.hidden = true;
    personButton.hidden = ended || !!WITH_A_PERSON[state.status];
    personButton.disabled = busy;
    survey.hidden = !ended || !!state.rated;
    thanks.hidden = !state.rated;
    endButton.disabled = !state.id || ended;
    sendButton.disabled = busy;
  }

  function showPanel(shown) {
    panel.hidden = !shown;
    launcher.setAttribute("aria-expanded", String(shown));
    launcher.setAttribute("aria-label", (shown ? "Close chat: " : "Open chat: ") + title);
  }
  function open() {
    showPanel(true);
    if (!historyShown) restoreHistory();
    refreshControls();
    (state.rated ? newChat : state.ended ? survey.querySelector("input") : input).focus();
  }
  function close() { showPanel(false); launcher.focus(); }

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
      conv.turns.forEach(function (turn) {
        addMessage(turn.role === "assistant" ? "bot" : turn.role, turn.text, turn.agent_name);
        state.seen = turn.index;
      });
      state.rated = conv.csat !== null;
      showHandoff(conv.status, conv.handoff);
    }).catch(function () { state = {}; save(); refreshControls(); });
  }

  /* ---- a person instead of the bot ---- */
  function showHandoff(status, handoff) {
    var was = state.status;
    state.status = status;
    state.ended = status === "ended";
    state.handoff = handoff;
    save();
    var offline = status === "open" && handoff && !handoff.available;
    notice.hidden = !WITH_A_PERSON[status] && !offline && !(was === "with_agent" && status === "open");
    if (status === "waiting_for_agent") notice.textContent = "Waiting for a person… You can keep writing: they will read it here.";
    else if (status === "with_agent") notice.textContent = "You are chatting with " + handoff.agent_name + " from our team.";
    else if (offline) {
      notice.textContent = "Nobody from our team is available right now" + (handoff.back ? "; they are back " + handoff.back : "") +
        ". " + (handoff.contact_email ? "They will reply to " + handoff.contact_email + "." :
        "Leave your email address and they will reply by email.");
    } else if (!notice.hidden) notice.textContent = "You are back with our assistant.";
    contact.hidden = !offline || !!handoff.contact_email;
    refreshControls();
    resetIdle();
    if (WITH_A_PERSON[status]) follow(); else if (following) { following.abort(); following = null; }
  }

  /* Agents' replies and status changes as they happen; reconnects while the chat is with a person. */
  function follow() {
    if (following) return;
    var controller = new AbortController();
    following = controller;
    fetch(api + "/" + state.id + "/events?after=" + (state.seen === undefined ? -1 : state.seen), {
      headers: { "Accept": "text/event-stream", "Authorization": "Bearer " + state.token }, signal: controller.signal
    }).then(function (res) {
      if (res.status === 404) {  /* erased (or past its retention period): nothing left to follow */
        state = {};
        save();
        notice.hidden = true;
        refreshControls();
        showStatus("This conversation is no longer stored.");
        return null;
      }
      if (!res.ok) throw new Error("the live connection was refused (" + res.status + ")");
      return readEvents(res, function (event, data) {
        if (event === "turn" && data.index > (state.seen === undefined ? -1 : state.seen)) {
          addMessage("agent", data.text, data.agent_name);
          state.seen = data.index;
          save();
        } else if (event === "status") showHandoff(data.status, data.handoff || state.handoff);
      }).then(function () { return 300; });
    }).catch(function () { return controller.signal.aborted ? null : 2000; })
      .then(function (retryMs) {
        if (following === controller) following = null;
        if (retryMs !== null && !controller.signal.aborted && WITH_A_PERSON[state.status]) setTimeout(follow, retryMs);
      });
  }

  function askForPerson() {
    busy = true;
    refreshControls();
    showStatus("");
    ensureConversation().then(function () { return call("/" + state.id + "/handoff", "POST"); }).then(function (data) {
      if (data.notice) { addMessage("bot", data.notice.text); state.seen = data.notice.index; }
      showHandoff(data.status, data.handoff);
    }).catch(function (err) { showStatus(err.message); }).then(function () { busy = false; refreshControls(); });
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

  function messageKey() {
    var bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
  }
  function failure(message, retry) { var err = new Error(message); err.retry = retry; return err; }

  /* One message, sent until answered: a network failure, a 5xx or "still answering" is retried with the
     same key (the server answers a retry from its log), anything else is shown. */
  function send(text) {
    busy = true;
    refreshControls();
    showStatus("");
    offer.hidden = true;
    addMessage("user", text);
    setTyping(!WITH_A_PERSON[state.status]);
    var key = messageKey(), reply = null;
    function attempt(tries) {
      return ensureConversation().then(function () {
        return fetch(api + "/" + state.id + "/messages", {
          method: "POST", body: JSON.stringify({ text: text }),
          headers: { "Content-Type": "application/json", "Accept": "text/event-stream",
            "Authorization": "Bearer " + state.token, "Idempotency-Key": key }
        }).catch(function () { throw failure("the message could not be sent: no connection", true); });
      }).then(function (res) {
        if (!res.ok) {
          return res.json().catch(function () { return {}; }).then(function (data) {
            var code = data.error && data.error.code;
            if (code === "conflict") { state.ended = true; save(); }
            throw failure((data.error && data.error.message) || "the message could not be sent (" + res.status + ")",
              res.status >= 500 || code === "still_answering");
          });
        }
        if (res.status === 202) return res.json().then(function (queued) { showHandoff(queued.status, state.handoff); });
        return readEvents(res, function (event, data) {
          if (event === "error") throw failure(data.error.message, /^(generation_failed|store_)/.test(data.error.code));
          setTyping(false);
          if (!reply) reply = addMessage("bot", "");
          if (event === "delta") reply.textContent += data.text;
          if (event === "done") {
            reply.textContent = data.text;
            state.seen = data.turn_index;
            if (data.handoff) showHandoff(data.status, data.handoff);
          }
          log.scrollTop = log.scrollHeight;
        });
      }).catch(function (err) {
        if (!err.retry || tries >= RETRY_MS.length) throw err;
        if (reply) { reply.parentNode.remove(); reply = null; }
        setTyping(true);
        return wait(RETRY_MS[tries]).then(function () { return attempt(tries + 1); });
      });
    }
    attempt(0).catch(function (err) {
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
      showHandoff("ended", state.handoff);
      if (!panel.hidden) survey.querySelector("input").focus();
    }).catch(function (err) { showStatus(err.message); });
  }

  /* Idle for idleMs: offer the rating; the chat stays open (a closed panel stays closed) until the customer
     ends it. */
  function resetIdle() {
    clearTimeout(idleTimer);
    if (state.id && !state.ended && !WITH_A_PERSON[state.status]) idleTimer = setTimeout(function () {
      if (busy) return resetIdle();
      offer.hidden = false;
    }, idleMs);
  }

  /* ---- wiring ---- */
  launcher.addEventListener("click", function () { if (panel.hidden) open(); else close(); });
  closeButton.addEventListener("click", close);
  endButton.addEventListener("click", endChat);
  rateNow.addEventListener("click", endChat);
  keepChatting.addEventListener("click", function () { offer.hidden = true; resetIdle(); input.focus(); });
  personButton.addEventListener("click", askForPerson);
  contact.addEventListener("submit", function (event) {
    event.preventDefault();
    call("/" + state.id + "/contact", "POST", { email: email.value.trim() }).then(function (data) {
      state.handoff.contact_email = data.contact_email;
      showHandoff(state.status, state.handoff);
      notice.textContent = data.text;
    }).catch(function (err) { showStatus(err.message); });
  });
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
    if (following) { following.abort(); following = null; }
    state = {};
    save();
    log.textContent = "";
    notice.hidden = true;
    contact.hidden = true;
    survey.reset();
    stars.querySelectorAll("label").forEach(function (label) { label.classList.remove("ld-on"); });
    refreshControls();
    input.focus();
  });
  refreshControls();
  resetIdle();
})();
