// Shared by the account pages: language, translations, the header's sign-out.

import { applyPage, translator } from "../common/i18n.js";
import { api, loginUrl, me } from "../common/session.js";
import { STRINGS } from "./i18n.js";

export const t = translator(STRINGS);
export const $ = (id) => document.getElementById(id);

export function errorText(err) {
  const key = `err_${err.code}`;
  return STRINGS.zh[key] ? t(key) : t("err_generic", { message: err.message });
}

/** Fill static texts, wire the language switch; with `signedIn`, require a session. */
export async function initPage({ signedIn = true } = {}) {
  applyPage(t);
  if (!signedIn) return null;
  const who = await me();
  if (!who) {
    window.location.href = loginUrl();
    return null;
  }
  $("who").textContent = t("signedInAs", {
    name: who.account.display_name,
    role: t(`role_${who.account.role}`),
  });
  $("signout").onclick = async () => {
    await api("POST", "/api/auth/logout").catch(() => {});
    window.location.href = "/login";
  };
  return who;
}
