/* Users page: add accounts, change roles and passwords, disable / enable, sign out everywhere, remove.
   Every change ends the account's sessions; the server refuses to leave no enabled admin. */
"use strict";
(function () {
  var C = LoopConsole, el = C.el;
  var API = "/api/admin/users";
  var addForm = document.getElementById("add-user");
  var roles = Array.prototype.map.call(addForm.elements.namedItem("role").options, function (o) { return o.value; });
  var errorBox = document.getElementById("console-error");

  function report(error) {
    errorBox.hidden = false;
    errorBox.textContent = C.messageOf(error);
  }

  /** Send a change with ``control`` disabled until it is answered, then reload (or show the server's message). */
  function act(control, promise) {
    errorBox.hidden = true;
    return C.whileBusy(control, promise).then(load).catch(report);
  }

  function path(user, suffix) {
    return API + "/" + encodeURIComponent(user.name) + (suffix || "");
  }

  function confirmed(question, then) {
    C.confirmAction(question, false).then(function (answer) { if (answer !== null) then(); });
  }

  function roleCell(user) {
    var select = el("select", {"aria-label": "Role of " + user.name}, roles.map(function (role) {
      return el("option", {value: role, text: role, selected: role === user.role});
    }));
    var save = el("button", {type: "button", text: "Set role", "aria-label": "Set role of " + user.name,
      onclick: function () {
        if (select.value === user.role) return;
        confirmed("Make " + user.name + " " + select.value + "? Their sessions end.", function () {
          act([save, select], C.api("PUT", path(user, "/role"), {role: select.value}));
        });
      }});
    return el("td", {}, [select, " ", save]);
  }

  function askPassword(user, button) {
    var dialog = document.getElementById("password-dialog");
    var input = document.getElementById("new-password");
    document.getElementById("password-user").textContent = user.name;
    input.value = "";
    dialog.returnValue = "";
    dialog.showModal();
    dialog.addEventListener("close", function () {
      if (dialog.returnValue === "ok") act(button, C.api("PUT", path(user, "/password"), {password: input.value}));
    }, {once: true});
  }

  /** A row's button; ``onclick`` gets the button, to keep it disabled while its request is in flight. */
  function button(label, user, onclick, className) {
    var node = el("button", {type: "button", text: label, className: className, "aria-label": label + " " + user.name,
      onclick: function () { onclick(node); }});
    return node;
  }

  function actions(user) {
    var toggle = user.disabled ? "Enable" : "Disable";
    return el("td", {}, [el("div", {className: "cn-row"}, [
      button(toggle, user, function (self) {
        confirmed(toggle + " " + user.name + "?" + (user.disabled ? "" : " Their sessions end."), function () {
          act(self, C.api("PUT", path(user, "/disabled"), {disabled: !user.disabled}));
        });
      }),
      button("Reset password", user, function (self) { askPassword(user, self); }),
      button("Sign out everywhere", user, function (self) {
        confirmed("End every session of " + user.name + "?", function () {
          act(self, C.api("POST", path(user, "/sign-out"), {}));
        });
      }),
      button("Remove", user, function (self) {
        confirmed("Remove the account " + user.name + "? This cannot be undone.", function () {
          act(self, C.api("DELETE", path(user)));
        });
      }, "cn-danger"),
    ])]);
  }

  function row(user) {
    return el("tr", {className: user.disabled ? "cn-disabled-row" : ""}, [
      el("td", {text: user.name}), roleCell(user), el("td", {text: user.disabled ? "disabled" : "enabled"}),
      el("td", {text: C.formatTime(user.created_at)}), actions(user),
    ]);
  }

  function load() {
    return C.api("GET", API).then(function (data) {
      var body = document.querySelector("#users tbody");
      C.fillTable(body, data.users.map(row));
    });
  }

  addForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var field = function (name) { return addForm.elements.namedItem(name); };
    var status = document.getElementById("add-status");
    var body = {name: field("name").value.trim(), role: field("role").value, password: field("password").value,
      display_name: field("display_name").value.trim()};
    if (C.isBusy(addForm)) return;
    errorBox.hidden = true;
    C.whileBusy(addForm, C.api("POST", API, body)).then(function (user) {
      status.textContent = "Added " + user.role + " " + user.name + ".";
      addForm.reset();
      return load();
    }).catch(report);
  });

  load().catch(report);
})();
