// The rotation dashboard: redraws with the same markup as kmsd.http.console.render(),
// from the server-sent events of /ui/rotations/{id}/events.
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#x27;"}[c]));
function rows(title, list) {
  if (!list.length) return "";
  return `<h3>${esc(title)} (${list.length})</h3><table class=instances><tr><th>instance</th><th>path</th><th>role</th><th>ip</th><th>serves</th><th>last seen</th><th>processes</th></tr>` +
    list.map(r => `<tr><td>${esc(r.instance_id)}</td><td>${esc(r.path)}</td><td>${esc(r.role)}</td><td>${esc(r.ip)}</td><td><code>${esc(r.current)}</code></td><td>${esc(r.last_seen.slice(0,19))}</td><td>${esc(Object.entries(r.processes).map(([p,v]) => p + ": " + v).join(", "))}</td></tr>`).join("") + "</table>";
}
function draw(d) {
  const steps = ["pending", "promoted", "done"];
  let phases = steps.map(s => `<span class='phase${s === d.phase ? " on" : ""}'>${s}</span>`).join("");
  if (d.phase === "aborted" || d.phase === "rolled_back") phases += `<span class='phase bad'>${esc(d.phase)}</span>`;
  const flags = [[d.mode, true], ["paused", d.paused], ["leaked", d.leaked], ["gate timed out", d.timed_out], ["SM labels pending", d.labels_pending]]
    .filter(f => f[1]).map(f => `<span class=tag>${esc(f[0])}</span>`).join(" ");
  let gate = `<p>No gate: the rotation is ${esc(d.phase)}.</p>`;
  if (d.gate) {
    const c = d.gate.counts, total = Math.max(1, c.held + c.waiting + c.stale);
    const who = d.gate.gate === 1 ? "owner instances" : "owner and referencer instances";
    const target = d.gate.gate === 1 ? "hold the pending version" : "serve the new current";
    gate = `<h2>Gate ${d.gate.gate}: ${who} ${target}</h2><p id=gate-count><b>${c.held} / ${c.live}</b> live instances hold <code>${esc(d.gate.target_version)}</code> · ${c.stale} stale${d.gate.met ? " · <b>met</b>" : ""}</p><div class=bar>` +
      ["held", "waiting", "stale"].map(k => `<div class=${k} style='width:${(100 * c[k] / total).toFixed(1)}%'></div>`).join("") + "</div>" +
      rows("Waiting for", d.gate.waiting) + rows("Stale (not counted)", d.gate.stale) + rows("Holding", d.gate.held);
  }
  const versions = d.versions.map(v => `<tr><td><code>${esc(v.version_id)}</code></td><td>${esc(v.stage)}</td><td>${esc(v.role)}</td></tr>`).join("");
  const events = d.events.map(ev => `<tr><td>${esc(ev.at.slice(0,19))}</td><td>${esc(ev.action)}${ev.forced ? ' <span class="tag forced">forced</span>' : ""}</td><td>${esc(ev.phase)}</td><td>${esc(ev.actor)}</td></tr>`).join("");
  document.getElementById("view").innerHTML =
    `<h1>Rotation #${d.id}: ${esc(d.path)}/<b>${esc(d.name)}</b></h1><div class=phases id=phases>${phases}</div><div>${flags}</div>` +
    `<div class=card id=gate>${gate}</div><div class=card><h2>Versions</h2><table>${versions}</table></div>` +
    `<div class=card><h2>History</h2><table id=history>${events}</table></div>`;
  document.title = `Rotation ${d.id}: ${d.phase}`;
}
const stream = new EventSource(location.pathname + "/events");
stream.onmessage = m => draw(JSON.parse(m.data));
