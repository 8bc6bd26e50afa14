/* loopdesk consoles: what the expert and operator pages share — DOM building with textContent
   only (never innerHTML with data), the JSON API with the session's CSRF token, dates, dialogs. */
"use strict";
var LoopConsole = (function () {
  var csrfToken = document.querySelector('meta[name="csrf-token"]').content;

  /** Build an element; attrs.text becomes textContent, attrs.on* become listeners. */
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === undefined || value === null || value === false) return;
      if (name === "text") node.textContent = value;
      else if (name.slice(0, 2) === "on") node.addEventListener(name.slice(2), value);
      else if (name === "className") node.className = value;
      else node.setAttribute(name, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.append(child);
    });
    return node;
  }

  /** Call the JSON API; resolves with the body, rejects with an Error carrying the server's message. */
  function api(method, path, body) {
    var init = {method: method, credentials: "same-origin", headers: {"Accept": "application/json"}};
    if (method !== "GET") init.headers["X-CSRF-Token"] = csrfToken;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      if (response.status === 401) {
        location.assign("/login?next=" + encodeURIComponent(location.pathname + location.hash));
      }
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.ok) return data;
        var message = (data.error && data.error.message) || ("the server answered " + response.status);
        var error = new Error(message);
        error.status = response.status;
        throw error;
      });
    }, function () {
      throw new Error("the server could not be reached; check your connection and try again");
    });
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  /** "2026-11-25 14:03" in the browser's time zone from epoch seconds. */
  function formatTime(epoch) {
    if (epoch === null || epoch === undefined) return "—";
    var d = new Date(epoch * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  /** Ask in the page's <dialog id="confirm">; resolves with the reason ("" if none asked) or null. */
  function confirmAction(text, askReason) {
    var dialog = document.getElementById("confirm");
    var reason = document.getElementById("confirm-reason");
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-reason-label").hidden = !askReason;
    reason.value = "";
    reason.required = !!askReason;
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise(function (resolve) {
      dialog.addEventListener("close", function () {
        resolve(dialog.returnValue === "ok" ? reason.value.trim() : null);
      }, {once: true});
    });
  }

  return {el: el, api: api, formatTime: formatTime, confirmAction: confirmAction};
})();

/* The sign-in page: an address's fragment (the expert console's #c=<id>) never reaches the server, so
   the form's next target gets it here; the server follows same-site paths only. */
(function () {
  var form = document.getElementById("sign-in");
  var next = form && form.elements.namedItem("next");
  if (next && next.value && location.hash && next.value.indexOf("#") < 0) next.value += location.hash;
})();
