// Helpers shared by the browser scripts (enfoque_ui.mjs, templates.mjs): start Debian's
// chromium with playwright-core against a live ComfyUI, load workflows, queue prompts and
// wait for them, measure the nodes the canvas draws, and report one "RESULT {json}" line.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith("--")) out[argv[i].slice(2)] = argv[i + 1];
  }
  return out;
}

/** A run of one script: progress lines, named steps, and the RESULT line at the end. */
export function session(result) {
  const t0 = Date.now();
  let step = "start";
  const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
  return {
    log,
    get step() {
      return step;
    },
    mark(name) {
      step = name;
      result.timings[name] = (Date.now() - t0) / 1000;
      log(name);
    },
    seconds: () => (Date.now() - t0) / 1000,
  };
}

export function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** Chromium on the live server, the Enfoque extension loaded, the tutorial marked done. */
export async function openComfy({ url, executablePath, result, viewport = { width: 1400, height: 900 } }) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "enfoque-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => result.console_errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /enfoque/i.test(m.text())) result.console_errors.push(m.text());
  });
  // a fresh server user sees the template browser first; mark the tutorial done
  const res = await fetch(`${url}/api/settings/Comfy.TutorialCompleted`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "true",
  });
  check(res.ok, `POST /api/settings failed: HTTP ${res.status}`);
  // screenshots of a whole graph are taken zoomed out: keep drawing text and widgets there
  for (const [id, value] of Object.entries({ "LiteGraph.Canvas.MinFontSizeForLOD": 1, "Comfy.Minimap.Visible": false })) {
    await fetch(`${url}/api/settings/${id}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });
  }
  await page.goto(url);
  await page.waitForFunction(
    () => window.app?.graph && window.app.extensions?.some((e) => e.name === "enfoque.WordChips"),
    null,
    { timeout: 60000 },
  );
  await listen(page);
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, page, close };
}

/** Reload the page as a user does: the frontend restores the open workflow from its storage (without outputs). */
export async function reloadComfy(page, nodeId) {
  await page.waitForTimeout(1500); // the frontend stores the open workflow shortly after each change
  await page.reload();
  await page.waitForFunction(
    (id) => window.app?.graph?.getNodeById(+id) && window.app.extensions?.some((e) => e.name === "enfoque.WordChips"),
    nodeId,
    { timeout: 60000 },
  );
  await listen(page);
}

/** Record what the server says while prompts run (again after each page load). */
export async function listen(page) {
  await page.evaluate(async () => {
    const { api } = await import("/scripts/api.js");
    window.__enfoque = { executed: {}, cached: [], errors: [], done: 0, notices: [] };
    api.addEventListener("execution_cached", ({ detail }) => window.__enfoque.cached.push(...(detail.nodes ?? []).map(String)));
    api.addEventListener("executed", ({ detail }) => {
      window.__enfoque.executed[String(detail.display_node ?? detail.node)] = detail.output;
    });
    api.addEventListener("execution_error", ({ detail }) => window.__enfoque.errors.push(detail));
    api.addEventListener("execution_success", () => window.__enfoque.done++);
    api.addEventListener("enfoque.notice", ({ detail }) => window.__enfoque.notices.push(detail));
  });
}

/**
 * Queue a prompt and wait until it succeeds or fails. `prompt` is an API-format graph, or null for
 * the graph on the canvas. Returns the execution errors (empty when it ran).
 */
export async function queueAndWait(page, prompt = null, timeout = 180000) {
  const before = await page.evaluate(() => {
    window.__enfoque.executed = {};
    window.__enfoque.cached = [];
    window.__enfoque.errors = [];
    return window.__enfoque.done;
  });
  await page.evaluate(async (p) => {
    if (p == null) return window.app.queuePrompt(0, 1);
    const { api } = await import("/scripts/api.js");
    const { workflow } = await window.app.graphToPrompt();
    await api.queuePrompt(0, { output: p, workflow });
  }, prompt);
  await page.waitForFunction((n) => window.__enfoque.done > n || window.__enfoque.errors.length > 0, before, {
    timeout,
  });
  await page.waitForTimeout(200);
  return page.evaluate(() => window.__enfoque.errors);
}

/** Every node's rectangle as the canvas draws it (title bar included), in canvas units. */
export function nodeRects(page) {
  return page.evaluate(() => {
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    return window.app.graph.nodes.map((n) => ({
      id: n.id,
      type: n.type,
      title: n.title,
      x: n.pos[0],
      y: n.pos[1] - title,
      w: n.size[0],
      h: n.size[1] + title,
      minH: (n.computeSize?.()?.[1] ?? 0) + title,
    }));
  });
}

/** Pairs of nodes whose rectangles overlap (by more than `slack` px each way). */
export function overlaps(rects, slack = 0) {
  const out = [];
  for (let i = 0; i < rects.length; i++) {
    for (let j = i + 1; j < rects.length; j++) {
      const a = rects[i];
      const b = rects[j];
      const dx = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
      const dy = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
      if (dx > slack && dy > slack) out.push(`${a.type}#${a.id} and ${b.type}#${b.id} (${Math.round(dx)}x${Math.round(dy)} px)`);
    }
  }
  return out;
}

/** Nodes drawn smaller than their own content needs (widgets, previews, chips). */
export function undersized(rects) {
  return rects.filter((r) => r.h + 0.5 < r.minH).map((r) => `${r.type}#${r.id}: ${Math.round(r.h)} < ${Math.round(r.minH)} px`);
}

/**
 * The whole graph on screen (right of the side bar, under the top menu and the queue panel, above the
 * canvas controls), nodes and groups. Returns its box on the page.
 */
export async function fitView(page) {
  const box = await page.evaluate(() => {
    const { app } = window;
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const boxes = app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]);
    for (const g of app.graph.groups ?? []) boxes.push(g._bounding ? [...g._bounding] : g.bounding);
    const x0 = Math.min(...boxes.map((b) => b[0]));
    const y0 = Math.min(...boxes.map((b) => b[1]));
    const x1 = Math.max(...boxes.map((b) => b[0] + b[2]));
    const y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
    const el = app.canvas.canvas;
    const [left, top, right, bottom] = [80, 140, el.clientWidth - 20, el.clientHeight - 80];
    const scale = Math.min((right - left) / (x1 - x0), (bottom - top) / (y1 - y0), 1);
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [
      (left + (right - left - (x1 - x0) * scale) / 2) / scale - x0,
      (top + (bottom - top - (y1 - y0) * scale) / 2) / scale - y0,
    ];
    app.canvas.setDirty(true, true);
    const c = el.getBoundingClientRect();
    const sx = (x) => (x + app.canvas.ds.offset[0]) * scale + c.left;
    const sy = (y) => (y + app.canvas.ds.offset[1]) * scale + c.top;
    return { x: sx(x0), y: sy(y0), width: (x1 - x0) * scale, height: (y1 - y0) * scale };
  });
  await page.waitForTimeout(400);
  return box;
}

/** Finish a script: screenshot on failure, the RESULT line, the exit code. */
export async function finish(result, s, page, outDir, error) {
  if (error) {
    result.ok = false;
    result.error = String(error?.stack ?? error);
    try {
      if (page) {
        const shot = path.join(outDir, `${result.name ?? "enfoque"}_failure.png`);
        await page.screenshot({ path: shot });
        result.screenshots.push(shot);
      }
    } catch {}
  }
  result.step = s.step;
  result.seconds = s.seconds();
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exitCode = result.ok ? 0 : 1;
}

/** Enfoque DOM widgets (chips, notices) drawn outside their node's rectangle: they would catch other nodes' clicks. */
export function domOutside(page, slack = 2) {
  return page.evaluate((slack) => {
    const { app } = window;
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const { scale, offset } = app.canvas.ds;
    const c = app.canvas.canvas.getBoundingClientRect();
    const out = [];
    for (const e of document.querySelectorAll(".enfoque-root[data-enfoque-node], .enfoque-notice[data-enfoque-node]")) {
      const box = e.getBoundingClientRect();
      if (!box.width || !box.height || getComputedStyle(e).display === "none" || !e.isConnected) continue;
      const node = app.graph.getNodeById(+e.dataset.enfoqueNode);
      if (!node) continue;
      const x0 = (node.pos[0] + offset[0]) * scale + c.left;
      const y0 = (node.pos[1] - title + offset[1]) * scale + c.top;
      const x1 = x0 + node.size[0] * scale;
      const y1 = y0 + (node.size[1] + title) * scale;
      if (box.left < x0 - slack || box.top < y0 - slack || box.right > x1 + slack || box.bottom > y1 + slack) {
        out.push(`${node.type}#${node.id}: ${e.className} at ${Math.round(box.left)},${Math.round(box.top)} ` +
          `${Math.round(box.width)}x${Math.round(box.height)} outside ${Math.round(x0)},${Math.round(y0)} ` +
          `${Math.round(x1 - x0)}x${Math.round(y1 - y0)}`);
      }
    }
    return out;
  }, slack);
}

/**
 * Enfoque DOM widgets whose content does not fit the room the node gives them (cut off, or scrolled away).
 * With `chipsScroll`, a maps node's word chips may scroll: past the height the frontend lets Enfoque Attention
 * Maps grow to, they do, so only the part shown counts.
 */
export function domClipped(page, slack = 2, chipsScroll = false) {
  return page.evaluate(([slack, chipsScroll]) => {
    const out = [];
    for (const e of document.querySelectorAll(".enfoque-root[data-enfoque-node]")) {
      if (!e.isConnected || !e.clientHeight || getComputedStyle(e).display === "none") continue;
      const node = window.app.graph.getNodeById(+e.dataset.enfoqueNode);
      const parts = [...e.children].filter((c) => getComputedStyle(c).display !== "none");
      const style = getComputedStyle(e);
      const fixed = parts.filter((c) => !c.classList.contains("enfoque-view")); // the picture may shrink
      const chips = (c) => c.matches(".enfoque-maps .enfoque-chips");
      const height = (c) => (chipsScroll && chips(c) ? Math.min(c.scrollHeight, c.clientHeight) : c.scrollHeight);
      const need =
        fixed.reduce((sum, c) => sum + height(c), 0) +
        parseFloat(style.paddingTop) + parseFloat(style.paddingBottom) +
        parseFloat(style.rowGap || "0") * Math.max(0, parts.length - 1);
      const hidden = fixed.filter((c) => c.scrollHeight > c.clientHeight + slack && !chips(c));
      if (need > e.clientHeight + slack || hidden.length) {
        out.push(`${node?.type}#${node?.id}: ${e.className} needs ${Math.round(need)} px, has ${e.clientHeight}` +
          (hidden.length ? ` (${hidden.map((c) => c.className).join(", ")} cut)` : ""));
      }
    }
    return out;
  }, [slack, chipsScroll]);
}

/** A copy of a saved workflow whose Enfoque Attention Maps' probe link comes from Enfoque Patch CLIP's probe
 * (output 1) instead of Enfoque Patch Model's: the wrong probe, as an old workflow of one probe type may hold. */
export function withClipProbeOnAttentionMaps(workflow) {
  const wrong = structuredClone(workflow);
  const clipNode = wrong.nodes.find((n) => n.type === "EnfoquePatchCLIP");
  const attnNode = wrong.nodes.find((n) => n.type === "EnfoqueAttentionMaps");
  const link = wrong.links.find((l) => l[3] === attnNode.id && l[4] === 0);
  const modelNode = wrong.nodes.find((n) => n.id === link[1]);
  modelNode.outputs[link[2]].links = modelNode.outputs[link[2]].links.filter((id) => id !== link[0]);
  link[1] = clipNode.id;
  link[2] = 1;
  clipNode.outputs[1].links = [link[0]];
  return { wrong, attnNode };
}
