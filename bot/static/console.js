/* loopdesk consoles: what the console pages share — DOM building with textContent only (never
   innerHTML with data), the JSON API with the session's CSRF token and the server's error message,
   buttons disabled while their request is in flight, tables whose rows stack on a phone, dates, dialogs. */
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
        var error = new Error(serverMessage(data, response));
        error.status = response.status;
        throw error;
      });
    }, function () {
      throw new Error("the server could not be reached; check your connection and try again");
    });
  }

  /** What a refused request's JSON error says, or the status when it says nothing readable. */
  function serverMessage(data, response) {
    var said = data && data.error && typeof data.error === "object" ? data.error.message : data && data.error;
    if (typeof said === "string" && said.trim()) return said;
    return "the server answered " + response.status + (response.statusText ? " " + response.statusText : "");
  }

  /** A failure as text for the page: an Error's message, a string as it is, never "[object Object]". */
  function messageOf(error) {
    if (error && typeof error.message === "string" && error.message) return error.message;
    return typeof error === "string" && error ? error : "something went wrong; reload the page and try again";
  }

  /** Disable ``controls`` (elements, or a form's buttons) until ``promise`` settles, so a request is sent
      once; controls that were disabled before stay so. Returns ``promise``. */
  function whileBusy(controls, promise) {
    var list = [].concat(controls).reduce(function (all, c) {
      return all.concat(c && c.tagName === "FORM" ? Array.from(c.querySelectorAll("button, input[type=submit]")) : [c]);
    }, []).filter(function (c) { return c && !c.disabled; });
    list.forEach(function (c) { c.disabled = true; c.setAttribute("aria-busy", "true"); });
    function done() { list.forEach(function (c) { c.disabled = false; c.removeAttribute("aria-busy"); }); }
    promise.then(done, done);
    return promise;
  }

  /** Whether a form's request is still in flight (whileBusy disabled its buttons). */
  function isBusy(form) {
    return !!form.querySelector("[aria-busy=true]");
  }

  /** Put ``rows`` in the table body ``body``, each cell labelled with its column's heading (``data-label``):
      on a narrow screen (console.css) a row becomes a card of labelled cells. */
  function fillTable(body, rows) {
    var headings = Array.from(body.closest("table").querySelectorAll("thead th"), function (th) {
      return th.textContent.trim();
    });
    body.replaceChildren.apply(body, rows);
    rows.forEach(function (row) {
      var column = 0;
      Array.from(row.cells).forEach(function (cell) {
        if (cell.colSpan === 1 && headings[column]) cell.setAttribute("data-label", headings[column]);
        column += cell.colSpan;
      });
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

  return {el: el, api: api, formatTime: formatTime, confirmAction: confirmAction, messageOf: messageOf,
          whileBusy: whileBusy, isBusy: isBusy, fillTable: fillTable};
})();

/* The sign-in page: an address's fragment (the expert console's #c=<id>) never reaches the server, so
   the form's next target gets it here (the server follows same-site paths only); the button is
   disabled while the form is sent, and enabled again when the browser comes back to the page. */
(function () {
  var form = document.getElementById("sign-in");
  if (!form) return;
  var next = form.elements.namedItem("next");
  if (next && next.value && location.hash && next.value.indexOf("#") < 0) next.value += location.hash;
  var button = form.querySelector("button[type=submit]");
  form.addEventListener("submit", function () { button.disabled = true; });
  window.addEventListener("pageshow", function () { button.disabled = false; });
})();
