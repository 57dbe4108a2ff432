// Sign in, then go where the person was going (a console) or to "my lessons".

import { $, errorText, initPage } from "./common.js";
import { api } from "../common/session.js";

function next() {
  const target = new URLSearchParams(window.location.search).get("next") || "/me";
  // Only paths on this site: a crafted link must not send a teacher elsewhere.
  return target.startsWith("/") && !target.startsWith("//") ? target : "/me";
}

initPage({ signedIn: false });
$("login").onsubmit = async (e) => {
  e.preventDefault();
  $("error").textContent = "";
  try {
    await api("POST", "/api/auth/login", {
      username: $("username").value.trim(),
      password: $("password").value,
    });
    window.location.href = next();
  } catch (err) {
    $("error").textContent = errorText(err);
  }
};
