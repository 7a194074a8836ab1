// The console's writes: a form or button with data-api="METHOD /path" calls kmsd's API with
// the session's CSRF token (the cookie alone opens nothing but pages), through the same
// handlers, access checks and audit rows as kmsctl.
//
//   data-api="PUT /v1/nodes/{path}"   placeholders are filled from the form's fields (encoded)
//   data-confirm="text"               asked first; nothing is sent unless confirmed
//   data-then="/ui/..."               where to go on success (default: reload the page)
//   data-body='{"force": true}'       a fixed JSON body (buttons)
// Form fields become a JSON object: name="a.b" nests, data-type="json" parses the text,
// data-type="bool" (checkbox) true/false, data-type="int", type=file with data-type="b64"
// sends the file's bytes in base64; empty fields are left out; data-path fields only fill the
// URL. Fields marked data-secret are cleared after every attempt, success or not: a value
// typed is never shown back.
(() => {
  const csrf = document.querySelector('meta[name="csrf"]')?.content ?? "";
  const problem = document.getElementById("problem");

  function show(text, where) {
    const box = where?.querySelector(".problem") ?? problem;
    if (!box) return;
    box.textContent = text;
    box.hidden = !text;
  }

  async function b64(file) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  function put(obj, name, value) {
    const keys = name.split(".");
    let at = obj;
    for (const k of keys.slice(0, -1)) at = at[k] ??= {};
    at[keys[keys.length - 1]] = value;
  }

  async function body(form) {
    const out = {};
    const path = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled) continue;
      const type = el.dataset.type ?? "";
      let value;
      if (el.type === "file") {
        if (!el.files.length) continue;
        value = type === "b64" ? await b64(el.files[0]) : await el.files[0].text();
      } else if (el.type === "checkbox") {
        if (type !== "bool" && !el.checked) continue;
        value = type === "bool" ? el.checked : el.value;
      } else if (el.type === "radio") {
        if (!el.checked) continue;
        value = el.value;
      } else {
        if (el.value === "") continue;
        value = el.value;
        if (type === "json") {
          // The parser's message quotes the text: never shown, it may be a value.
          try { value = JSON.parse(value); } catch { throw new Error(`${el.dataset.label ?? el.name}: not valid JSON`); }
        } else if (type === "int") value = Number.parseInt(value, 10);
        else if (type === "list") value = value.split(/[\s,]+/).filter(Boolean);
      }
      if (el.dataset.path !== undefined) path[el.name] = value;
      else put(out, el.name, value);
    }
    return [out, path];
  }

  function clearSecrets(form) {
    for (const el of form.querySelectorAll("[data-secret]")) el.value = "";
  }

  async function call(el, json, fields) {
    const [method, template] = el.dataset.api.split(" ");
    const url = template.replace(/\{(\w+)\}/g, (_, k) => String(fields[k] ?? "").split("/").map(encodeURIComponent).join("/"));
    const init = { method, headers: { "X-Kmsd-Csrf": csrf }, credentials: "same-origin", redirect: "manual" };
    if (json !== undefined && method !== "GET" && method !== "DELETE") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    const resp = await fetch(url, init);
    if (resp.ok || resp.type === "opaqueredirect") return resp;
    let detail = `${resp.status} ${resp.statusText}`;
    try { const p = await resp.json(); detail = p.detail ?? p.title ?? detail; } catch { /* not JSON */ }
    throw new Error(detail);
  }

  async function run(el, event) {
    event.preventDefault();
    if (el.dataset.confirm && !window.confirm(el.dataset.confirm)) return;
    const form = el.tagName === "FORM" ? el : null;
    show("", form);
    try {
      let json = el.dataset.body ? JSON.parse(el.dataset.body) : undefined;
      let fields = {};
      if (form) [json, fields] = await body(form);
      if (form && json && Object.keys(json).length === 0 && form.dataset.empty !== "send") json = undefined;
      await call(el, json, fields);
      if (form) clearSecrets(form);
      const then = el.dataset.then ? el.dataset.then.replace(/\{(\w+)\}/g, (_, k) => fields[k] ?? "") : "";
      if (then) window.location.assign(then); else window.location.reload();
    } catch (err) {
      if (form) clearSecrets(form);
      show(err.message, form);
    }
  }

  // data-copy="#id": copy that element's text (a generated IAM policy) to the clipboard.
  document.addEventListener("click", e => {
    const button = e.target.closest?.("button[data-copy]");
    if (!button) return;
    const from = document.querySelector(button.dataset.copy);
    if (from) navigator.clipboard?.writeText(from.textContent).then(() => { button.textContent = "copied"; });
  });

  document.addEventListener("submit", e => { if (e.target.dataset?.api) run(e.target, e); });
  document.addEventListener("click", e => {
    const button = e.target.closest?.("button[data-api]");
    if (button && !button.form?.dataset.api) run(button, e);
  });
})();
