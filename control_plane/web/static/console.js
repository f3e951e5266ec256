// Live refresh: a section marked data-live="N" is re-fetched every N seconds and replaced,
// unless someone is typing in it. Same origin, same session cookie; no inline script (CSP).
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !live.dataset.live) return;
  const every = Math.max(1, Number(live.dataset.live)) * 1000;
  function busy() {
    const el = document.activeElement;
    if (el && live.contains(el) && (el.tagName === "INPUT" || el.tagName === "BUTTON")) return true;
    return Array.from(live.querySelectorAll("input[type=text]")).some((i) => i.value !== "");
  }
  async function refresh() {
    if (document.hidden || busy()) return;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok || response.redirected) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("live");
      const current = document.getElementById("live");
      if (fresh && current && !busy()) {
        current.replaceWith(fresh);
        if (!fresh.dataset.live) clearInterval(timer);
      }
    } catch (e) {
      // the control plane may be restarting: try again at the next tick
    }
  }
  const timer = setInterval(refresh, every);
})();

// Live logs of the step shown in #step-detail: poll /runs/{id}/logs?step=KEY&after=N and append
// each line as text (textContent, never HTML) while the run is live; one last page after it ends.
(function () {
  const detail = document.getElementById("step-detail");
  const out = document.getElementById("step-log");
  if (!detail || !out) return;
  const run = detail.dataset.run;
  const step = detail.dataset.step;
  let after = 0;
  let finalPass = !detail.dataset.live;
  let stopped = false;
  function runIsLive() {
    const live = document.getElementById("live");
    return Boolean(detail.dataset.live && live && live.dataset.live);
  }
  function append(lines) {
    const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    for (const line of lines) {
      const row = document.createElement("span");
      row.className = "log-line " + (line.stream === "stderr" ? "stderr" : "stdout");
      row.dataset.id = String(line.id);
      row.textContent = line.text.endsWith("\n") ? line.text : line.text + "\n";
      out.appendChild(row);
    }
    if (stick) out.scrollTop = out.scrollHeight;
  }
  async function poll() {
    if (stopped) return;
    let more = false;
    try {
      const params = new URLSearchParams({ step: step, after: String(after) });
      const url = "/runs/" + encodeURIComponent(run) + "/logs?" + params.toString();
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        const page = await response.json();
        append(page.lines || []);
        after = page.next_after || after;
        more = Boolean(page.more);
      } else if (response.status === 401 || response.status === 403 || response.status === 404) {
        stopped = true;
        return;
      }
    } catch (e) {
      // the control plane may be restarting: try again at the next tick
    }
    if (more) {
      setTimeout(poll, 0);
    } else if (finalPass) {
      stopped = true;
    } else {
      if (!runIsLive()) finalPass = true;
      setTimeout(poll, 1000);
    }
  }
  poll();
})();
