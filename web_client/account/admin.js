// Account admin: create, bind to a school and classrooms, reset passwords, disable, and
// import a CSV (all rows or none).

import { api } from "../common/session.js";
import { $, errorText, initPage, t } from "./common.js";

const ROLES = ["teacher", "admin", "scheduler", "student"];

function notice(text, bad = false) {
  $("notice").textContent = text;
  $("notice").classList.toggle("bad", bad);
  $("notice").hidden = !text;
}

function roleSelect(value) {
  const select = document.createElement("select");
  for (const r of ROLES) select.append(new Option(t(`role_${r}`), r));
  select.value = value;
  return select;
}

function input(value, type = "text") {
  const el = document.createElement("input");
  el.type = type;
  el.value = value;
  return el;
}

async function load() {
  const { accounts } = await api("GET", "/api/accounts");
  const body = $("accounts");
  body.replaceChildren();
  for (const a of accounts) {
    const tr = document.createElement("tr");
    tr.dataset.username = a.username;
    tr.classList.toggle("off", a.disabled);
    const name = input(a.display_name);
    const role = roleSelect(a.role);
    const school = input(a.school);
    const rooms = input(a.classrooms.join(" "));
    const password = input("", "password");
    password.autocomplete = "new-password";
    const save = document.createElement("button");
    save.textContent = t("save");
    save.className = "primary";
    save.onclick = async () => {
      const changes = {
        display_name: name.value,
        role: role.value,
        school: school.value,
        classrooms: rooms.value.split(/\s+/).filter(Boolean),
      };
      if (password.value) changes.password = password.value;
      try {
        await api("PATCH", `/api/accounts/${encodeURIComponent(a.username)}`, changes);
        notice(t("saved"));
        await load();
      } catch (err) {
        notice(errorText(err), true);
      }
    };
    const toggle = document.createElement("button");
    toggle.textContent = t(a.disabled ? "enable" : "disable");
    toggle.onclick = async () => {
      try {
        await api("PATCH", `/api/accounts/${encodeURIComponent(a.username)}`, { disabled: !a.disabled });
        await load();
      } catch (err) {
        notice(errorText(err), true);
      }
    };
    const cells = [a.username, name, role, school, rooms, password, t(a.disabled ? "disabled" : "enabled")];
    for (const c of cells) {
      const td = document.createElement("td");
      if (typeof c === "string") td.textContent = c;
      else td.append(c);
      tr.append(td);
    }
    const actions = document.createElement("td");
    actions.className = "row";
    actions.append(save, toggle);
    tr.append(actions);
    body.append(tr);
  }
}

const who = await initPage();
if (who) {
  const form = $("create");
  for (const r of ROLES) form.role.append(new Option(t(`role_${r}`), r));
  form.onsubmit = async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    data.classrooms = data.classrooms.split(/\s+/).filter(Boolean);
    try {
      const account = await api("POST", "/api/accounts", data);
      notice(t("created", { name: account.display_name }));
      form.reset();
      await load();
    } catch (err) {
      notice(errorText(err), true);
    }
  };
  $("import").onsubmit = async (e) => {
    e.preventDefault();
    const file = $("csv").files[0];
    if (!file) return;
    try {
      const reply = await api("POST", "/api/accounts/import", await file.text(), { raw: true });
      notice(t("imported", { count: reply.imported }));
      await load();
    } catch (err) {
      notice(errorText(err), true);
    }
  };
  try {
    await load();
  } catch (err) {
    notice(errorText(err), true);
  }
}
