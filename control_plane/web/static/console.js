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
