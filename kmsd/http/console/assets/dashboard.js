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
})();
