// The rotation dashboard: kmsd sends the dashboard's HTML again, server-rendered, each time the
// rotation changes (server-sent events); this swaps it in. Buttons are wired by console.js.
(() => {
  const view = document.getElementById("view");
  if (!view || !view.dataset.events) return;
  const stream = new EventSource(view.dataset.events);
  stream.onmessage = m => {
    view.innerHTML = m.data;
    const h1 = view.querySelector("h1");
    if (h1) document.title = h1.textContent + " · kmsd console";
    document.dispatchEvent(new CustomEvent("kmsd:redrawn", { detail: view }));
  };
  stream.addEventListener("end", () => stream.close());
  // The time since the start of an active rotation, counted here (the server sends a fragment
  // only when the rotation changes).
  const tick = () => {
    for (const el of view.querySelectorAll(".clock[data-since]")) {
      const s = Math.max(0, Math.floor((Date.now() - Date.parse(el.dataset.since)) / 1000));
      el.textContent = `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m ${String(s % 60).padStart(2, "0")}s`;
    }
  };
  tick();
  setInterval(tick, 1000);
})();
