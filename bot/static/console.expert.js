/* Expert console: the queue, a transcript with an annotation form per bot turn, shortcuts.
   A typed annotation is kept as a draft in localStorage until the server confirms it. */
"use strict";
(function () {
  var C = LoopConsole, el = C.el;
  var me = document.querySelector('meta[name="console-user"]').content;
  var SCORES = [-2, -1, 0, 1, 2];
  var PAGE = 25;
  var state = {queue: [], offset: 0, convId: null, current: null};
  var filters = document.getElementById("queue-filters");

  function draftKey(convId, index) { return "loopdesk:draft:" + convId + ":" + index; }

  function readDraft(convId, index) {
    try { return JSON.parse(localStorage.getItem(draftKey(convId, index))); } catch (e) { return null; }
  }

  // ---- queue -------------------------------------------------------------------------
  function queryString() {
    var data = new FormData(filters), params = new URLSearchParams();
    ["csat_min", "csat_max", "since", "until", "adapter_version", "tag"].forEach(function (name) {
      if (data.get(name)) params.set(name, data.get(name));
    });
    params.set("include_annotated", data.get("include_annotated") ? "true" : "false");
    params.set("offset", state.offset);
    params.set("limit", PAGE);
    return params.toString();
  }

  function loadQueue(reset) {
    if (reset) { state.offset = 0; state.queue = []; }
    return C.api("GET", "/api/expert/queue?" + queryString()).then(function (page) {
      state.queue = state.queue.concat(page.conversations);
      state.offset += page.conversations.length;
      document.getElementById("queue-counts").textContent =
        page.unannotated + " unannotated · " + page.annotated + " annotated";
      document.getElementById("queue-more").hidden = page.conversations.length < PAGE;
      renderQueue();
    }, function (error) {
      document.getElementById("queue-counts").textContent = "Queue failed to load: " + C.messageOf(error);
    });
  }

  function renderQueue() {
    var list = document.getElementById("queue-list");
    list.replaceChildren.apply(list, state.queue.map(function (conv) {
      var label = (conv.csat ? "CSAT " + conv.csat : "unrated") + " · " + conv.adapter_version + " · " +
        C.formatTime(conv.created_at) + " · " + conv.n_turns + " turns";
      return el("li", {}, [el("button", {
        type: "button", text: label, className: conv.id === state.convId ? "cn-current" : "",
        "aria-current": conv.id === state.convId ? "true" : null,
        onclick: function () { openConversation(conv.id); },
      })]);
    }));
  }

  // ---- transcript --------------------------------------------------------------------
  function openConversation(convId) {
    state.convId = convId;
    history.replaceState(null, "", "#c=" + encodeURIComponent(convId));
    renderQueue();
    return C.api("GET", "/api/expert/conversations/" + encodeURIComponent(convId)).then(renderTranscript,
      function (error) {  // shown in place of the transcript, which is of another conversation now
        var empty = document.getElementById("transcript-empty");
        document.getElementById("transcript").hidden = true;
        empty.hidden = false;
        empty.classList.add("cn-error-text");
        empty.setAttribute("role", "alert");
        empty.textContent = "Could not open the conversation: " + C.messageOf(error);
      });
  }

  function renderTranscript(data) {
    var conv = data.conversation;
    var empty = document.getElementById("transcript-empty");
    empty.hidden = true;
    empty.classList.remove("cn-error-text");
    empty.removeAttribute("role");
    document.getElementById("transcript").hidden = false;
    document.getElementById("transcript-title").textContent = "Conversation " + conv.id.slice(0, 8);
    document.getElementById("transcript-meta").textContent = (conv.csat ? "CSAT " + conv.csat : "unrated") +
      " · adapter " + conv.adapter_version + " · " + C.formatTime(conv.created_at) + " · " + conv.status;
    var comment = document.getElementById("transcript-comment");
    comment.hidden = !conv.csat_comment;
    comment.textContent = conv.csat_comment ? "Customer's comment: " + conv.csat_comment : "";
    var turns = document.getElementById("turns");
    turns.replaceChildren.apply(turns, data.turns.map(renderTurn));
    var first = turns.querySelector(".cn-bot");
    state.current = null;
    if (first) selectTurn(first, false);
  }

  function renderTurn(turn) {
    var isBot = turn.role === "assistant", isAgent = turn.role === "agent";
    var who = isBot ? "Bot · " + turn.adapter_version : isAgent ? "Agent " + turn.agent_name : "Customer";
    var item = el("li", {className: "cn-turn " + (isBot ? "cn-bot" : isAgent ? "cn-agent" : "cn-user"),
      "data-index": turn.index}, [
      el("div", {className: "cn-who-line", text: who + " · turn " + turn.index}),
      el("p", {className: "cn-text", text: turn.text}),
    ]);
    if (!isBot) return item;
    item.append(renderGrounding(turn));
    item.tabIndex = -1;
    item.setAttribute("aria-label", "Bot reply, turn " + turn.index);
    item.addEventListener("focusin", function () { selectTurn(item, false); });
    item.addEventListener("click", function () { selectTurn(item, false); });
    item.append(renderAnnotations(turn));
    item.append(buildForm(turn));
    return item;
  }

  /** The help articles a reply saw (links to those versions), or the mark of a reply the model did not write. */
  function renderGrounding(turn) {
    if (turn.source === "fallback") {
      return el("p", {className: "cn-grounding"}, [el("span", {className: "cn-badge cn-fallback", text: "fallback"}),
        el("span", {text: " No help article fitted: the bot declined without generating (never a training sample)."})]);
    }
    if (turn.source === "handoff") {
      return el("p", {className: "cn-grounding"}, [el("span", {className: "cn-badge cn-fallback", text: "handoff"}),
        el("span", {text: " The bot's notice of a handoff to a person (never a training sample)."})]);
    }
    var line = el("p", {className: "cn-grounding"}, [el("span", {text: turn.articles.length ? "Saw: " : "Saw no help article."})]);
    turn.articles.forEach(function (a, i) {
      var href = "/knowledge?article=" + encodeURIComponent(a.id) + "&version=" + a.version;
      line.append(i ? ", " : "", el("a", {href: href, text: a.title}),
        el("span", {className: "cn-muted", text: " (" + a.id + " v" + a.version + ", score " + a.score.toFixed(2) + ")"}));
    });
    return line;
  }

  function signed(score) { return score > 0 ? "+" + score : String(score); }

  function renderAnnotations(turn) {
    var box = el("div", {className: "cn-annotations"});
    if (turn.agreement) {
      var a = turn.agreement;
      box.append(el("p", {className: "cn-agreement", text: a.n + " experts · mean " + signed(a.mean) +
        " · spread " + a.spread + " · pairwise agreement " + Math.round(a.pairwise * 100) + "%"}));
    }
    turn.annotations.forEach(function (ann) {
      var parts = [ann.expert_id + ": " + signed(ann.score)];
      if (ann.tags.length) parts.push(ann.tags.join(", "));
      var entry = el("div", {className: "cn-annotation"}, [el("span", {text: parts.join(" · ")})]);
      if (ann.corrected_reply) entry.append(el("p", {className: "cn-correction", text: "Correction: " + ann.corrected_reply}));
      if (ann.note) entry.append(el("p", {className: "cn-note", text: "Note: " + ann.note}));
      box.append(entry);
    });
    return box;
  }

  function buildForm(turn) {
    var form = document.getElementById("turn-form").content.firstElementChild.cloneNode(true);
    var scores = form.querySelector(".cn-scores");
    SCORES.forEach(function (score, i) {
      var id = "score-" + turn.index + "-" + i;
      scores.append(el("input", {type: "radio", name: "score", value: score, id: id}),
        el("label", {"for": id, text: signed(score), title: "key " + (i + 1)}));
    });
    var mine = turn.annotations.filter(function (a) { return a.expert_id === me; })[0];
    var draft = readDraft(state.convId, turn.index);
    fillForm(form, draft || mine);
    if (draft) setStatus(form, "Unsaved draft restored — press Save.", false);
    form.addEventListener("input", function () { keepDraft(form, turn.index); });
    form.addEventListener("submit", function (event) { event.preventDefault(); save(form, turn.index); });
    return form;
  }

  function fillForm(form, values) {
    if (!values) return;
    var radio = form.querySelector('input[name="score"][value="' + Number(values.score) + '"]');
    if (radio) radio.checked = true;
    form.querySelectorAll('input[name="tags"]').forEach(function (box) {
      box.checked = (values.tags || []).indexOf(box.value) >= 0;
    });
    form.elements.corrected_reply.value = values.corrected_reply || "";
    form.elements.note.value = values.note || "";
  }

  function formValues(form) {
    var checked = form.querySelector('input[name="score"]:checked');
    return {
      score: checked ? Number(checked.value) : null,
      tags: Array.from(form.querySelectorAll('input[name="tags"]:checked')).map(function (b) { return b.value; }),
      corrected_reply: form.elements.corrected_reply.value,
      note: form.elements.note.value,
    };
  }

  function keepDraft(form, index) {
    localStorage.setItem(draftKey(state.convId, index), JSON.stringify(formValues(form)));
    setStatus(form, "Draft (not saved yet)", false);
  }

  function setStatus(form, text, isError) {
    var status = form.querySelector(".cn-save-status");
    status.textContent = text;
    status.classList.toggle("cn-error-text", !!isError);
    status.setAttribute("role", isError ? "alert" : "status");
  }

  function save(form, index) {
    if (C.isBusy(form)) return;
    var values = formValues(form), convId = state.convId;
    if (values.score === null) { setStatus(form, "Choose a score first (keys 1–5).", true); return; }
    localStorage.setItem(draftKey(convId, index), JSON.stringify(values));
    setStatus(form, "Saving…", false);
    var path = "/api/expert/conversations/" + encodeURIComponent(convId) + "/turns/" + index + "/annotations";
    C.whileBusy(form, C.api("POST", path, values)).then(function () {
      localStorage.removeItem(draftKey(convId, index));
      return C.api("GET", "/api/expert/conversations/" + encodeURIComponent(convId)).then(function (data) {
        var turn = data.turns.filter(function (t) { return t.index === index; })[0];
        form.closest(".cn-turn").querySelector(".cn-annotations").replaceWith(renderAnnotations(turn));
        setStatus(form, "Saved ✓", false);
      });
    }).catch(function (error) {
      setStatus(form, "Not saved: " + C.messageOf(error) + " — your draft is kept.", true);
    });
  }

  // ---- keyboard ----------------------------------------------------------------------
  function selectTurn(item, focus) {
    if (state.current === item) return;
    if (state.current) state.current.classList.remove("cn-selected");
    state.current = item;
    item.classList.add("cn-selected");
    if (focus) { item.focus({preventScroll: true}); item.scrollIntoView({block: "nearest"}); }
  }

  function moveTurn(step) {
    var bots = Array.from(document.querySelectorAll("#turns .cn-bot"));
    var at = bots.indexOf(state.current) + step;
    if (at >= 0 && at < bots.length) { selectTurn(bots[at], true); return; }
    if (step > 0) nextConversation();
  }

  function nextConversation() {
    var ids = state.queue.map(function (c) { return c.id; });
    var next = ids[ids.indexOf(state.convId) + 1];
    if (next) openConversation(next);
  }

  document.addEventListener("keydown", function (event) {
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName) && event.target.type !== "radio" &&
      event.target.type !== "checkbox";
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && state.current) {
      event.preventDefault();
      state.current.querySelector("form").requestSubmit();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey || !state.current) return;
    if (event.key >= "1" && event.key <= "5") {
      var radio = state.current.querySelectorAll('input[name="score"]')[Number(event.key) - 1];
      radio.checked = true;
      radio.dispatchEvent(new Event("input", {bubbles: true}));
    } else if (event.key === "n" || event.key === "j") {
      moveTurn(1);
    } else if (event.key === "k" || event.key === "p") {
      moveTurn(-1);
    } else {
      return;
    }
    event.preventDefault();
  });

  filters.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!C.isBusy(filters)) C.whileBusy(filters, loadQueue(true));
  });
  document.getElementById("queue-more").addEventListener("click", function () { C.whileBusy(this, loadQueue(false)); });
  loadQueue(true).then(function () {
    var match = /^#c=([A-Za-z0-9_-]+)$/.exec(location.hash);
    if (match) openConversation(match[1]);
  });
})();
