// "My lessons": the signed-in teacher's lessons today and this week, one click to open
// the right console (master or teaching point) with a token minted from the session.

import { clock } from "../common/i18n.js";
import { api } from "../common/session.js";
import { $, errorText, initPage, t } from "./common.js";

const who = await initPage();
if (who) {
  $("admin-link").hidden = who.account.role !== "admin";
  $("supervisor-link").hidden = !["admin", "scheduler"].includes(who.account.role);
  try {
    const { lessons } = await api("GET", "/api/auth/lessons");
    window.tongkeLessons = lessons;
    $("empty").hidden = lessons.length > 0;
    for (const l of lessons) {
      const li = document.createElement("li");
      li.dataset.room = l.room_id;
      const start = Date.parse(l.start) / 1000;
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = `${new Date(start * 1000).toLocaleDateString([], { month: "numeric", day: "numeric" })} ${clock(start)}–${clock(Date.parse(l.end) / 1000)}`;
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = `${l.title} · ${t(l.role === "master" ? "asMaster" : "asPoint")}`;
      const open = document.createElement("a");
      open.href = l.url;
      open.textContent = t("open");
      li.append(when, what, open);
      $("lessons").append(li);
    }
  } catch (err) {
    $("error").textContent = errorText(err);
  }
}
