// The Switchyard console: what the agent it is served from knows about its
// node, its modules and (in the lab) the whole cluster. It reads the admin
// API every two seconds; all text goes in through textContent, never HTML.

interface NodeView {
  name: string;
  ready: boolean;
  message: string;
  addresses: string[];
  podCidrs: string[];
  zone: string | null;
  pods: number;
  adminUrl: string | null;
}

interface PodView {
  namespace: string;
  name: string;
  node: string | null;
  phase: string;
  ready: boolean;
  ips: string[];
  restarts: number;
  reason: string | null;
  message: string | null;
  ports: string[];
  probes: ProbeStatus[];
}

/** One probe of a pod, as its node's prober last saw it. */
interface ProbeStatus {
  container: string;
  kind: "startup" | "liveness" | "readiness";
  handler: string;
  result: "Success" | "Failure" | "Unknown";
  consecutiveFailures: number;
  lastLatencyMs: number | null;
  lastMessage: string | null;
}

/** `readiness http-get http://:80/healthz: Failure ×3 (HTTP probe failed ...)`. */
function probeText(p: ProbeStatus): string {
  const latency = p.lastLatencyMs === null ? "" : ` ${p.lastLatencyMs.toFixed(1)} ms`;
  const failures = p.consecutiveFailures > 0 ? ` ×${p.consecutiveFailures}` : "";
  const why = p.lastMessage ? ` (${p.lastMessage})` : "";
  return `${p.container} ${p.kind} ${p.handler}: ${p.result}${failures}${latency}${why}`;
}

interface ServiceView {
  namespace: string;
  name: string;
  type: string;
  clusterIps: string[];
  ports: string[];
  endpoints: string[];
}

interface PolicyView {
  namespace: string;
  name: string;
  podSelector: string;
  policyTypes: string[];
}

interface ClusterView {
  name: string;
  model: string;
  ipFamily: string;
  external: string[];
  nodes: NodeView[];
  pods: PodView[];
  services: ServiceView[];
  networkPolicies: PolicyView[];
  problems: string[];
}

interface ModuleStatus {
  name: string;
  role: string | null;
  condition: { ready: boolean; reason: string; message: string };
  digest: string | null;
  module: string | null;
  version: string | null;
  calls: number;
  errors: number;
  latencyP50Us: number | null;
  latencyP99Us: number | null;
  lastError: { message: string; at: number } | null;
}

type Cell = string | number | Node;

function el(tag: string, text?: Cell, cls?: string): HTMLElement {
  const e = document.createElement(tag);
  if (text instanceof Node) {
    e.appendChild(text);
  } else if (text !== undefined) {
    e.textContent = String(text);
  }
  if (cls) {
    e.className = cls;
  }
  return e;
}

function badge(ok: boolean, yes: string, no: string): HTMLElement {
  return el("span", ok ? yes : no, ok ? "badge ok" : "badge bad");
}

function table(id: string, head: string[], rows: Cell[][], empty: string): void {
  const host = document.getElementById(id);
  if (!host) {
    return;
  }
  const t = el("table");
  const tr = el("tr");
  head.forEach((h) => tr.appendChild(el("th", h)));
  t.appendChild(el("thead", tr));
  const body = el("tbody");
  if (rows.length === 0) {
    const r = el("tr");
    const td = el("td", empty, "empty");
    td.setAttribute("colspan", String(head.length));
    r.appendChild(td);
    body.appendChild(r);
  }
  for (const row of rows) {
    const r = el("tr");
    row.forEach((c) => r.appendChild(el("td", c)));
    body.appendChild(r);
  }
  t.appendChild(body);
  host.replaceChildren(t);
}

async function getJson<T>(path: string): Promise<T | null> {
  try {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) {
      return null;
    }
    return (await r.json()) as T;
  } catch {
    return null;
  }
}

function micros(v: number | null): string {
  if (v === null || v === undefined) {
    return "-";
  }
  return v >= 1000 ? (v / 1000).toFixed(1) + " ms" : v + " µs";
}

function renderCluster(c: ClusterView): void {
  const title = document.getElementById("title");
  if (title) {
    title.textContent = `cluster "${c.name}" · ${c.model} model · ${c.ipFamily}`;
  }
  const ready = c.nodes.filter((n) => n.ready).length;
  const running = c.pods.filter((p) => p.phase === "Running").length;
  const summary = document.getElementById("summary");
  if (summary) {
    summary.textContent =
      `${ready}/${c.nodes.length} nodes ready · ${running}/${c.pods.length} pods running · ` +
      `${c.services.length} services · ${c.networkPolicies.length} network policies` +
      (c.external.length ? ` · external host ${c.external.join(", ")}` : "");
  }
  table(
    "nodes",
    ["node", "ready", "addresses", "pod CIDRs", "zone", "pods", "message"],
    c.nodes.map((n) => [
      n.name,
      badge(n.ready, "Ready", "NotReady"),
      n.addresses.join(" "),
      n.podCidrs.join(" "),
      n.zone ?? "",
      n.pods,
      n.message,
    ]),
    "no nodes",
  );
  table(
    "pods",
    ["pod", "node", "phase", "ready", "IPs", "ports", "restarts", "probes", "reason"],
    c.pods.map((p) => [
      `${p.namespace}/${p.name}`,
      p.node ?? "-",
      p.phase,
      badge(p.ready, "yes", "no"),
      p.ips.join(" "),
      p.ports.join(" "),
      p.restarts,
      (p.probes ?? []).map(probeText).join("; ") || "-",
      [p.reason, p.message].filter((x) => x).join(": "),
    ]),
    "no pods: switchyard lab apply -f deploy/lab/",
  );
  table(
    "services",
    ["service", "type", "cluster IPs", "ports", "endpoints"],
    c.services.map((s) => [
      `${s.namespace}/${s.name}`,
      s.type,
      s.clusterIps.join(" "),
      s.ports.join(" "),
      s.endpoints.length ? s.endpoints.join(" ") : "<none>",
    ]),
    "no services",
  );
  table(
    "policies",
    ["policy", "pod selector", "types"],
    c.networkPolicies.map((p) => [
      `${p.namespace}/${p.name}`,
      p.podSelector || "(all pods)",
      p.policyTypes.join(", "),
    ]),
    "no network policies",
  );
  const problems = document.getElementById("problems");
  if (problems) {
    problems.textContent = c.problems.join("\n");
  }
}

function renderModules(ms: ModuleStatus[]): void {
  table(
    "modules",
    ["binding", "role", "module", "condition", "digest", "calls", "errors", "p50", "p99", "last error"],
    ms.map((m) => [
      m.name,
      m.role ?? "-",
      m.module ? `${m.module} ${m.version ?? ""}` : "-",
      badge(m.condition.ready, m.condition.reason, m.condition.reason),
      m.digest ? m.digest.slice(0, 19) : "-",
      m.calls,
      m.errors,
      micros(m.latencyP50Us),
      micros(m.latencyP99Us),
      m.lastError ? m.lastError.message : "",
    ]),
    "no modules",
  );
}

async function refresh(): Promise<void> {
  const [cluster, node, modules] = await Promise.all([
    getJson<ClusterView>("/api/v1/cluster"),
    getJson<{ name: string }>("/api/v1/node"),
    getJson<ModuleStatus[]>("/api/v1/modules"),
  ]);
  const status = document.getElementById("status");
  if (status) {
    status.textContent = node
      ? `served by the agent of ${node.name} · updated ${new Date().toLocaleTimeString()}`
      : "the agent does not answer";
    status.className = node ? "status" : "status bad";
  }
  if (cluster) {
    renderCluster(cluster);
  }
  if (modules) {
    renderModules(modules);
  }
}

void refresh();
setInterval(() => void refresh(), 2000);
