// Language choice shared by the consoles: Chinese unless the user chose English (the
// choice is kept in localStorage; `?lang=en` in a link sets it). Each page keeps its own
// strings in one table {zh: {...}, en: {...}}.

const KEY = "tongke.lang";

export function currentLang() {
  const fromLink = new URLSearchParams(window.location.search).get("lang");
  if (fromLink === "en" || fromLink === "zh") {
    localStorage.setItem(KEY, fromLink);
    return fromLink;
  }
  return localStorage.getItem(KEY) === "en" ? "en" : "zh";
}

export function setLang(lang) {
  localStorage.setItem(KEY, lang);
}

/** A translator over one page's table: t("key", {name: "..."}) fills {name}. */
export function translator(table, lang = currentLang()) {
  const strings = table[lang] || table.zh;
  return (key, vars = {}) => {
    const text = strings[key] ?? table.zh[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
  };
}

/** Fill every element that has data-i18n="key" (text) or data-i18n-title (tooltip). */
export function applyStatic(t, root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  document.documentElement.lang = currentLang() === "en" ? "en" : "zh-CN";
}

/** Translate the page and make its #lang button switch language (the page reloads in it). */
export function applyPage(t) {
  applyStatic(t);
  const button = document.getElementById("lang");
  button.textContent = t("langSwitch");
  button.onclick = () => {
    setLang(currentLang() === "en" ? "zh" : "en");
    window.location.reload();
  };
}

export function clock(seconds) {
  const d = new Date(seconds * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}
