/* Knowledge page: list and search help articles, read one (or an earlier version), create and edit
   with a server-rendered preview, retire, history with revert, and the retrieval check.
   Text goes in with textContent; the one HTML inserted is the server's rendering of an article
   (markdown-it with raw HTML off), parsed in a <template> so nothing in it runs. */
"use strict";
(function () {
  var C = LoopConsole, el = C.el;
  var canWrite = document.querySelector('meta[name="kb-can-write"]').content === "yes";
  var state = {current: null, shown: null, editing: null};  // editing: null, "new" or the base version
  var $ = function (id) { return document.getElementById(id); };

  function setHtml(box, html) {
    var holder = document.createElement("template");
    holder.innerHTML = html;
    box.replaceChildren(holder.content);
  }

  function path(id, rest) { return "/api/kb/articles/" + encodeURIComponent(id) + (rest || ""); }

  function status(text, isError) {
    var box = $("kb-save-status");
    box.textContent = text;
    box.classList.toggle("cn-error-text", !!isError);
    box.setAttribute("role", isError ? "alert" : "status");
  }

  // ---- the list -------------------------------------------------------------------------
  function loadList() {
    var params = new URLSearchParams({q: $("kb-q").value.trim(), status: $("kb-status").value});
    return C.api("GET", "/api/kb/articles?" + params).then(function (data) {
      $("kb-count").textContent = data.articles.length + " articles · knowledge-base revision " + data.revision;
      var list = $("kb-list");
      list.replaceChildren.apply(list, data.articles.map(function (a) {
        var current = state.current && state.current.id === a.id;
        return el("li", {}, [el("button", {type: "button", className: (current ? "cn-current " : "") + "cn-" + a.status,
          "aria-current": current ? "true" : null, text: a.title + " · " + a.id + " v" + a.version + " · " + a.status,
          onclick: function () { openArticle(a.id); }})]);
      }));
    }).catch(function (error) { $("kb-count").textContent = "The list failed to load: " + C.messageOf(error); });
  }

  // ---- one article ------------------------------------------------------------------------
  function openArticle(id, version) {
    return C.api("GET", path(id)).then(function (current) {
      state.current = current;
      var shown = version && version !== current.version ? C.api("GET", path(id, "/versions/" + version))
        : Promise.resolve(current);
      return shown.then(function (article) {
        showArticle(article);
        loadList();
        return loadHistory(id);
      });
    }).catch(function (error) {  // shown in place of the article, which is another one
      $("kb-article").hidden = true;
      $("kb-empty").hidden = false;
      $("kb-empty").classList.add("cn-error-text");
      $("kb-empty").setAttribute("role", "alert");
      $("kb-empty").textContent = "Could not open the article: " + C.messageOf(error);
    });
  }

  function showArticle(article) {
    var current = state.current;
    state.shown = article;
    history.replaceState(null, "", "?article=" + encodeURIComponent(article.id) +
      (article.version !== current.version ? "&version=" + article.version : ""));
    $("kb-empty").hidden = true;
    $("kb-empty").classList.remove("cn-error-text");
    $("kb-empty").removeAttribute("role");
    $("kb-article").hidden = false;
    $("kb-article-h").textContent = article.title;
    $("kb-meta").classList.remove("cn-error-text");
    $("kb-meta").textContent = article.id + " · version " + article.version + " · " + article.status +
      " · tags: " + (article.tags.join(", ") || "none") + " · saved by " + article.updated_by + " " +
      C.formatTime(article.updated_at);
    var old = $("kb-old-version");
    old.hidden = article.version === current.version;
    old.textContent = "This is version " + article.version + "; the current version is " + current.version + ".";
    setHtml($("kb-view"), article.html);
    if (canWrite) {
      $("kb-retire").hidden = current.status !== "published";
      $("kb-publish").hidden = current.status !== "retired";
    }
  }

  function loadHistory(id) {
    return C.api("GET", path(id, "/versions")).then(function (data) {
      $("kb-history-card").hidden = false;
      var body = document.querySelector("#kb-history tbody");
      C.fillTable(body, data.versions.map(function (v) {
        var actions = el("td", {className: "cn-actions"}, [el("button", {type: "button", text: "View",
          "aria-label": "View version " + v.version, onclick: function () { openArticle(v.id, v.version); }})]);
        if (canWrite && v.version !== state.current.version) {
          actions.append(el("button", {type: "button", text: "Revert to this", "aria-label": "Revert to version " + v.version,
            onclick: function () { revert(this, v.version); }}));
        }
        return el("tr", {className: v.version === state.current.version ? "cn-current" : ""}, [
          el("td", {text: "v" + v.version}), el("td", {text: v.status}), el("td", {text: v.title}),
          el("td", {text: v.updated_by}), el("td", {text: C.formatTime(v.updated_at)}), actions,
        ]);
      }));
    });
  }

  // ---- writing ------------------------------------------------------------------------------
  function startEditing(article) {
    state.editing = article ? article.version : "new";
    $("kb-editor").hidden = false;
    $("kb-editor-h").textContent = article ? "Edit " + article.id + " (from version " + article.version + ")" : "New article";
    $("kb-id").value = article ? article.id : "";
    $("kb-id").disabled = !!article;
    $("kb-title").value = article ? article.title : "";
    $("kb-tags").value = article ? article.tags.join(", ") : "";
    $("kb-body").value = article ? article.body : "";
    status("", false);
    (article ? $("kb-title") : $("kb-id")).focus();
  }

  function tags() {
    return $("kb-tags").value.split(",").map(function (t) { return t.trim(); }).filter(Boolean);
  }

  function save() {
    if (C.isBusy($("kb-editor"))) return;
    var fields = {title: $("kb-title").value, body: $("kb-body").value, tags: tags()};
    var request = state.editing === "new"
      ? C.api("POST", "/api/kb/articles", Object.assign({id: $("kb-id").value.trim()}, fields))
      : C.api("PUT", path(state.current.id), Object.assign({base_version: state.editing}, fields));
    status("Saving…", false);
    return C.whileBusy($("kb-editor"), request).then(function (article) {
      state.editing = null;
      $("kb-editor").hidden = true;
      return openArticle(article.id).then(function () { $("kb-meta").prepend("Saved · "); });
    }, function (error) {
      status("Not saved: " + C.messageOf(error) + (error.status === 409 ? ". Your text is kept here." : ""), true);
      if (error.status === 409) loadList();  // the list shows the version that was saved meanwhile
    });
  }

  function preview() {
    return C.whileBusy($("kb-preview-button"), C.api("POST", "/api/kb/preview", {body: $("kb-body").value})).then(function (data) {
      setHtml($("kb-preview"), data.html);
    }, function (error) { status("No preview: " + C.messageOf(error), true); });
  }

  /** Ask, then send ``request()`` with ``button`` disabled until it is answered; show the article or why not. */
  function change(button, question, request) {
    C.confirmAction(question, false).then(function (reason) {
      if (reason === null) return;
      C.whileBusy(button, request()).then(function (article) { return openArticle(article.id); }).catch(function (error) {
        $("kb-meta").textContent = "Not done: " + C.messageOf(error);
        $("kb-meta").classList.add("cn-error-text");
      });
    });
  }

  function revert(button, version) {
    var current = state.current;
    change(button, "Make version " + version + " of " + current.id + " current again (as version " + (current.version + 1) + ")?",
      function () { return C.api("POST", path(current.id, "/revert"), {to_version: version, base_version: current.version}); });
  }

  if (canWrite) {
    $("kb-new").addEventListener("click", function () { startEditing(null); });
    $("kb-edit").addEventListener("click", function () { startEditing(state.current); });
    $("kb-cancel").addEventListener("click", function () { state.editing = null; $("kb-editor").hidden = true; });
    $("kb-preview-button").addEventListener("click", preview);
    $("kb-editor").addEventListener("submit", function (event) { event.preventDefault(); save(); });
    $("kb-retire").addEventListener("click", function () {
      var current = state.current;
      change(this, "Retire " + current.id + "? The bot stops using it and the help centre stops showing it.", function () {
        return C.api("POST", path(current.id, "/retire"), {base_version: current.version});
      });
    });
    $("kb-publish").addEventListener("click", function () {
      var current = state.current;
      change(this, "Publish " + current.id + " again?", function () {
        return C.api("PUT", path(current.id), {base_version: current.version, status: "published"});
      });
    });
  }

  // ---- the retrieval check ---------------------------------------------------------------------
  $("kb-retrieve-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var question = $("kb-question").value.trim();
    if (!question || C.isBusy(this)) return;
    C.whileBusy(this, C.api("GET", "/api/kb/retrieve?q=" + encodeURIComponent(question))).then(function (data) {
      var used = data.results.filter(function (r) { return r.in_context; });
      var verdict = !data.fits
        ? "No article reaches " + data.min_score + ": the bot would not generate and would decline with the contact address"
        : used.length ? "A reply would have in its context: " + used.map(function (r) {
            return r.title + " (" + r.id + " v" + r.version + ")"; }).join(", ")
          : "No article matches: the model would answer with none in its context";
      $("kb-retrieve-summary").textContent = verdict + " · index at revision " + data.revision;
      var table = $("kb-retrieve-results"), body = table.querySelector("tbody");
      table.hidden = !data.results.length;
      C.fillTable(body, data.results.map(function (r) {
        return el("tr", {}, [
          el("td", {text: r.title + " (" + r.id + " v" + r.version + ")"}), el("td", {text: r.score.toFixed(3)}),
          el("td", {className: r.passes ? "cn-pass" : "cn-fail", text: r.passes ? "yes" : "no"}),
          el("td", {text: r.in_context ? "yes" : "—"}),
        ]);
      }));
    }).catch(function (error) { $("kb-retrieve-summary").textContent = "Retrieval failed: " + C.messageOf(error); });
  });

  $("kb-search").addEventListener("submit", function (event) {
    event.preventDefault();
    if (!C.isBusy(this)) C.whileBusy(this, loadList());
  });
  var params = new URLSearchParams(location.search);
  loadList();
  if (params.get("article")) openArticle(params.get("article"), Number(params.get("version")) || null);
})();
