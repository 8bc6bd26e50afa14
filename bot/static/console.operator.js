/* Operator console: adapters (promote / canary / roll back, canary share), CSAT per version, handoff and
   resolution rates per version, whether a worker and a scheduler are alive, "train now", schedules with cron
   preview, runs (a queued one with why it waits) with live progress charts. */
"use strict";
(function () {
  var C = LoopConsole, el = C.el;
  var REFRESH_MS = 5000, POLL_MS = 1500;
  var CATEGORIES = [  // a field goes to the first category whose pattern it matches
    ["Evaluation", /eval|held_out|score|csat|win|accuracy/i], ["Reward", /reward|return|advantage/i],
    ["KL", /kl/i], ["Losses", /loss|entropy|clip/i],
  ];
  var run = {id: null, events: [], last: "-", timer: null};
  var waits = {};  // run id -> why that queued run waits (the liveness answer's "queued")
  var errorBox = document.getElementById("console-error");

  function report(error) {
    errorBox.hidden = false;
    errorBox.textContent = C.messageOf(error);
  }

  /** Send a change with ``control`` disabled until it is answered; then ``then``, or the server's message. */
  function act(control, promise, then) {
    errorBox.hidden = true;
    return C.whileBusy(control, promise).then(then).catch(report);
  }

  function fmt(value) {
    return typeof value === "number" ? String(+value.toFixed(4)) : String(value);
  }

  // ---- adapters ----------------------------------------------------------------------
  function csatText(stats) {
    if (!stats) return "—";
    if (stats.mean === null) return "— n=" + stats.n + " (none counted)";
    return stats.mean.toFixed(2) + (stats.lo !== null ? " (" + stats.lo.toFixed(2) + "–" + stats.hi.toFixed(2) + ")" : "") +
      " n=" + stats.n + (stats.n_eff !== stats.n ? ", effective " + stats.n_eff.toFixed(1) +
      ", unweighted " + stats.unweighted_mean.toFixed(2) : "");
  }

  function metricsText(metrics) {
    return Object.keys(metrics).filter(function (k) { return typeof metrics[k] === "number"; })
      .map(function (k) { return k + "=" + fmt(metrics[k]); }).join(" · ") || "—";
  }

  function deltaCell(delta) {
    if (!delta) return el("td", {text: "(active)"});
    var cell = el("td");
    Object.keys(delta).forEach(function (k) {
      cell.append(el("span", {className: delta[k] > 0 ? "cn-up" : delta[k] < 0 ? "cn-down" : "",
        text: k + " " + (delta[k] > 0 ? "+" : "") + fmt(delta[k]) + " "}));
    });
    if (!cell.childNodes.length) cell.textContent = "—";
    return cell;
  }

  function adapterButton(label, adapter, path, question, className) {
    var button = el("button", {type: "button", text: label, className: className, "aria-label": label + " " + adapter.version,
      onclick: function () {
        C.confirmAction(question, false).then(function (reason) {
          if (reason === null) return;
          act(button, C.api("POST", "/api/operator/adapters/" + encodeURIComponent(adapter.version) + path, {}),
            loadAdapters);
        });
      }});
    return button;
  }

  function loadAdapters() {
    return C.api("GET", "/api/operator/adapters").then(function (data) {
      document.getElementById("active-version").textContent = data.active;
      document.getElementById("canary-version").textContent = data.canary || "none";
      document.getElementById("base-csat").textContent = csatText(data.base_csat);
      var share = document.getElementById("canary-share");
      if (document.activeElement !== share) share.value = Math.round(data.canary_share * 100);
      document.getElementById("rollback").disabled = data.active === "base";
      var rows = data.adapters.map(function (a) {
        var actions = el("td", {className: "cn-actions"});
        if (a.status !== "active" && a.status !== "rejected") {
          actions.append(adapterButton("Promote", a, "/promote",
            "Promote " + a.version + "? New conversations will be pinned to it.", "cn-primary"));
        }
        if (a.status === "candidate" || a.status === "retired") {
          actions.append(adapterButton("Canary", a, "/canary",
            "Send " + a.version + " to canary? It gets " + Math.round(data.canary_share * 100) + "% of new conversations."));
        }
        return el("tr", {className: a.status === "active" ? "cn-active-row" : ""}, [
          el("td", {text: a.version}), el("td", {}, [el("span", {className: "cn-badge cn-" + a.status, text: a.status})]),
          el("td", {text: a.parent}), el("td", {text: C.formatTime(a.created_at)}),
          el("td", {text: csatText(a.live_csat)}), el("td", {className: "cn-metrics", text: metricsText(a.metrics)}),
          deltaCell(a.vs_active), actions,
        ]);
      });
      if (!rows.length) rows = [el("tr", {}, [el("td", {colspan: 8, className: "cn-muted", text: "No adapters yet: base model serving."})])];
      var body = document.querySelector("#adapters tbody");
      C.fillTable(body, rows);
    });
  }

  document.getElementById("rollback").addEventListener("click", function () {
    var active = document.getElementById("active-version").textContent;
    C.confirmAction("Roll back " + active + "? It will be rejected and its parent reactivated.", true).then(function (reason) {
      if (reason) act(document.getElementById("rollback"), C.api("POST", "/api/operator/rollback", {reason: reason}),
        loadAdapters);
    });
  });

  document.getElementById("canary-share-save").addEventListener("click", function () {
    var percent = Number(document.getElementById("canary-share").value);
    act(this, C.api("PUT", "/api/operator/canary-share", {share: percent / 100}), loadAdapters);
  });

  // ---- CSAT per version --------------------------------------------------------------
  function loadCsat() {
    var bucket = document.getElementById("csat-bucket").value, days = document.getElementById("csat-days").value || 14;
    var query = new URLSearchParams({bucket: bucket, days: days});
    return C.api("GET", "/api/operator/csat?" + query).then(function (data) {
      LoopCharts.line(document.getElementById("csat-chart"), {
        title: "Weighted mean CSAT per " + data.bucket + " (bands: 95% CI)", time: true, yMin: 1, yMax: 5,
        series: data.series.map(function (s) {
          return {name: s.version, points: s.points.filter(function (p) { return p.mean !== null; }).map(function (p) {
            return {x: p.t + data.bucket_s / 2, y: p.mean, lo: p.lo, hi: p.hi, n: p.n};
          })};
        }),
      });
    });
  }
  document.getElementById("csat-bucket").addEventListener("change", function () { loadCsat().catch(report); });
  document.getElementById("csat-days").addEventListener("change", function () { loadCsat().catch(report); });

  // ---- handoffs per version ------------------------------------------------------------
  function rateText(rate) {
    if (rate.rate === null) return "—";
    return (100 * rate.rate).toFixed(1) + "% (" + (100 * rate.lo).toFixed(1) + "–" + (100 * rate.hi).toFixed(1) +
      "%) n=" + rate.n;
  }

  function loadHandoffs() {
    var days = document.getElementById("csat-days").value || 14;
    return C.api("GET", "/api/operator/handoffs?days=" + days).then(function (data) {
      var body = document.querySelector("#handoffs tbody");
      C.fillTable(body, Object.keys(data.versions).map(function (version) {
        var v = data.versions[version];
        return el("tr", {}, [el("td", {text: version}), el("td", {text: String(v.conversations)}),
          el("td", {text: rateText(v.handoff_rate)}), el("td", {text: rateText(v.resolution_rate)}),
          el("td", {text: csatText(v.csat_bot_only)}), el("td", {text: csatText(v.csat_handed_off)})]);
      }));
    });
  }
  document.getElementById("csat-days").addEventListener("change", function () { loadHandoffs().catch(report); });

  // ---- training and schedules ---------------------------------------------------------
  document.getElementById("train-now").addEventListener("click", function () {
    act(this, C.api("POST", "/api/operator/train"), function (queued) {
      document.getElementById("train-status").textContent = "Queued run " + queued.id;
      return loadRuns().then(function () { selectRun(queued.id); });
    });
  });

  var cron = document.getElementById("cron"), preview = document.getElementById("cron-preview"), previewTimer;
  function showPreview() {
    var expr = cron.value.trim();
    if (!expr) { preview.textContent = ""; cron.setCustomValidity(""); return Promise.resolve(); }
    return C.api("GET", "/api/operator/cron-preview?cron=" + encodeURIComponent(expr)).then(function (data) {
      cron.setCustomValidity("");
      preview.classList.remove("cn-error-text");
      preview.textContent = "Next runs: " + data.next_runs.map(function (t) { return C.formatTime(Date.parse(t) / 1000); }).join(", ");
    }, function (error) {
      cron.setCustomValidity(error.message);
      preview.classList.add("cn-error-text");
      preview.textContent = error.message;
    });
  }
  cron.addEventListener("input", function () { clearTimeout(previewTimer); previewTimer = setTimeout(showPreview, 250); });

  document.getElementById("schedule-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (C.isBusy(this)) return;
    act(this, C.api("POST", "/api/operator/schedules", {cron: cron.value.trim()}), function () {
      cron.value = ""; preview.textContent = "";
      return loadSchedules();
    });
  });

  function schedulePath(id) { return "/api/operator/schedules/" + encodeURIComponent(id); }

  function deleteScheduleButton(id, what) {
    var button = el("button", {type: "button", text: "Delete", "aria-label": "Delete schedule " + what,
      onclick: function () {
        C.confirmAction("Delete the schedule " + what + "?", false).then(function (reason) {
          if (reason !== null) act(button, C.api("DELETE", schedulePath(id)), loadSchedules);
        });
      }});
    return button;
  }

  function loadSchedules() {
    return C.api("GET", "/api/operator/schedules").then(function (data) {
      var rows = data.schedules.map(function (s) {
        var toggle = el("input", {type: "checkbox", checked: s.enabled, "aria-label": "Enabled: " + s.cron,
          onchange: function () {  // reloaded either way, so a refused change shows the stored state again
            act(toggle, C.api("PATCH", schedulePath(s.id), {enabled: toggle.checked})).then(loadSchedules).catch(report);
          }});
        var when = s.problem ? el("td", {className: "cn-error-text", text: s.problem})
          : el("td", {text: s.next_runs.map(function (t) { return C.formatTime(Date.parse(t) / 1000); }).join(", ")});
        return el("tr", {}, [el("td", {}, [el("code", {text: s.cron})]), when, el("td", {}, [toggle]),
          el("td", {}, [deleteScheduleButton(s.id, s.cron)])]);
      });
      (data.unreadable || []).forEach(function (u) {
        rows.push(el("tr", {}, [el("td", {}, [el("code", {text: u.id})]),
          el("td", {colspan: 2, className: "cn-error-text", text: u.problem}), el("td", {}, [deleteScheduleButton(u.id, u.id)])]));
      });
      var body = document.querySelector("#schedules tbody");
      C.fillTable(body, rows);
    });
  }

  // ---- workers and schedulers ----------------------------------------------------------
  var ROLES = {
    worker: {name: "Worker", command: "loopdesk worker", none: "No worker alive: runs will wait until one starts "},
    scheduler: {name: "Scheduler", command: "loopdesk scheduler",
                none: "No scheduler alive: schedules do not fire and the canary is not decided until one starts "},
  };

  function ago(seconds) {
    if (seconds < 90) return Math.round(seconds) + " s";
    return seconds < 5400 ? Math.round(seconds / 60) + " min" : Math.round(seconds / 3600) + " h";
  }

  function sentence(text) { return text.charAt(0).toUpperCase() + text.slice(1); }

  function processLine(role, p) {
    var name = ROLES[role].name + " " + p.id + " on " + p.host + " (pid " + p.pid + "): ";
    if (!p.alive) {
      return el("li", {className: "cn-stale", text: name + "stale, no heartbeat for " + ago(p.age_s) +
        " (stopped or stuck; it was " + (p.doing || "starting") + ")"});
    }
    return el("li", {text: name + "alive, beat " + ago(p.age_s) + " ago, " +
      (p.run_id ? "running run " + p.run_id : p.doing)});
  }

  function showProcesses(data) {
    var lines = [];
    ["worker", "scheduler"].forEach(function (role) {
      var listed = data[role + "s"];
      if (!listed.some(function (p) { return p.alive; })) {
        lines.push(el("li", {className: "cn-error-text"}, [ROLES[role].none + "(",
          el("code", {text: ROLES[role].command}), ")."]));
      }
      listed.forEach(function (p) { lines.push(processLine(role, p)); });
    });
    var list = document.getElementById("processes");
    list.replaceChildren.apply(list, lines);
    waits = {};
    data.queued.forEach(function (w) { waits[w.run_id] = w; });
  }

  // ---- runs and their progress ---------------------------------------------------------
  function loadRuns() {
    return Promise.all([C.api("GET", "/api/operator/runs"), C.api("GET", "/api/operator/liveness")]).then(function (answers) {
      var data = answers[0];
      showProcesses(answers[1]);
      var body = document.querySelector("#runs tbody");
      C.fillTable(body, data.runs.map(function (r) {
        var wait = r.status === "queued" && waits[r.id];
        return el("tr", {className: r.id === run.id ? "cn-current" : ""}, [
          el("td", {}, [el("button", {type: "button", className: "cn-link", text: r.id, onclick: function () { selectRun(r.id); }})]),
          el("td", {}, [el("span", {className: "cn-badge cn-" + r.status, text: r.status}),
            wait ? el("div", {className: "cn-wait", text: sentence(wait.message)}) : null]),
          el("td", {text: r.trigger}), el("td", {text: C.formatTime(r.created_at)}), el("td", {text: r.adapter_version || "—"}),
        ]);
      }));
    });
  }

  function selectRun(id) {
    clearTimeout(run.timer);
    run = {id: id, events: [], last: "-", timer: null};
    document.getElementById("run-detail").hidden = false;
    document.getElementById("run-h").textContent = "Run " + id;
    pollRun();
  }

  function pollRun() {
    var id = run.id;
    C.api("GET", "/api/operator/runs/" + encodeURIComponent(id) + "/progress?after=" + encodeURIComponent(run.last))
      .then(function (data) {
        if (id !== run.id) return;
        run.events = run.events.concat(data.events);
        run.last = data.last;
        var r = data.run;
        var wait = r.status === "queued" && waits[r.id];
        var summary = r.status + (wait ? " (" + wait.message + ")" : "") + " · trigger " + r.trigger +
          " · created " + C.formatTime(r.created_at) +
          (r.adapter_version ? " · adapter " + r.adapter_version : "") + (r.error ? " · error: " + r.error : "");
        var metrics = metricsText(r.metrics);
        document.getElementById("run-summary").textContent = summary + (metrics !== "—" ? " · metrics: " + metrics : "");
        drawRunCharts();
        if (r.status === "queued" || r.status === "running") run.timer = setTimeout(pollRun, POLL_MS);
      }).catch(report);
  }

  function drawRunCharts() {
    var fields = {};
    run.events.forEach(function (event, i) {
      var x = typeof event.step === "number" ? event.step : i;
      Object.keys(event).forEach(function (k) {
        if (k === "step" || k === "id" || typeof event[k] !== "number" || !isFinite(event[k])) return;
        (fields[k] = fields[k] || []).push({x: x, y: event[k]});
      });
    });
    var box = document.getElementById("run-charts"), used = {};
    box.replaceChildren();
    CATEGORIES.concat([["Other", /./]]).forEach(function (category) {
      var names = Object.keys(fields).filter(function (k) { return !used[k] && category[1].test(k); });
      names.forEach(function (k) { used[k] = true; });
      if (!names.length && category[0] === "Other") return;
      var holder = el("div", {className: "cn-chart", "aria-label": category[0] + " chart"});
      box.append(holder);
      LoopCharts.line(holder, {title: category[0], xLabel: "step",
        series: names.map(function (k) { return {name: k, points: fields[k]}; })});
    });
  }

  function refresh() {
    return Promise.all([loadAdapters(), loadRuns(), loadHandoffs()]).catch(report);
  }

  Promise.all([refresh(), loadSchedules(), loadCsat()]).catch(report);
  setInterval(refresh, REFRESH_MS);
})();
