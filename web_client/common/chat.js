// The chat pane the master console and the point console share: both pages use the same
// element ids (chat-log, chat-text, chat-to, chat-error), so one renderer and one sender
// keep what a teacher sees identical on both sides.

const $ = (id) => document.getElementById(id);

/** Show the lesson's chat, a private message tagged with `privateLabel`. */
export function renderChatLog(messages, privateLabel) {
  const log = $("chat-log");
  log.replaceChildren();
  for (const m of messages) {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m.name;
    li.append(who);
    if (m.private_with) {
      const tag = document.createElement("span");
      tag.className = "private";
      tag.textContent = privateLabel;
      li.append(tag);
    }
    li.append(document.createTextNode(m.text));
    log.append(li);
  }
  log.scrollTop = log.scrollHeight;
}

/** Send what is typed to whom is chosen; the input is cleared only once the server took it. */
export async function sendChatInput(conn, errorText) {
  const input = $("chat-text");
  const text = input.value.trim();
  $("chat-error").textContent = "";
  if (!text || !conn) return;
  const to = $("chat-to").value;
  try {
    await conn.action("chat", to ? { text, to } : { text });
    input.value = "";
  } catch (err) {
    $("chat-error").textContent = errorText(err.code, err.serverMessage);
  }
}
