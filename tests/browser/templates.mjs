// Browser test of the example workflows (ComfyUI's template browser) against a live ComfyUI,
// driven by playwright-core in Debian's /usr/bin/chromium. Run by tests/test_templates.py:
//
//   node templates.mjs --url http://127.0.0.1:PORT --templates DIR --out DIR [--chromium PATH] [--only TEXT]
//
// First the template browser itself (Workflow > Browse Templates, the pack's category): each card's
// title, description and thumbnail as the page shows them (the thumbnail as a 32x24 picture, for the
// test to compare with the file it should be).
// Then, for each top-level *.json in DIR: open it as a user does, by clicking its card; read the
// missing-models dialog ComfyUI opens (each file it lists, with its folder and download address; the
// test server has none of the templates' model files) and close it; read the Note. Measure every
// node's rectangle as the canvas draws it (title bar included) and check that no two overlap, that
// none is smaller than its own content, and that no Enfoque DOM widget reaches outside its node; then
// run it and check the same with the outputs showing (previews, word chips). The run is the
// template's own graph as the canvas sends it (graphToPrompt), with the nodes that load model files
// swapped for the tiny models on the test server (a random tiny SD3, CLIP-L and TAESD3), 256 px and
// at most 3 steps, and with the worst case for Enfoque Attention Maps: its words empty (every word)
// and a long prompt, so that it grows all it can; after the run each Attention Maps is measured at
// least as tall as the frontend lets it grow (MAPS_CAP; its chips scroll beyond), and nothing may
// overlap it. Every other node runs with the template's values, and its outputs reach the
// template's nodes on the canvas through the frontend's own "executed" messages. Screenshots before
// and after go to --out. Prints progress lines and, last, "RESULT {json}".

import fs from "node:fs";
import path from "node:path";
import {
  check,
  domClipped,
  domOutside,
  finish,
  fitView,
  nodeRects,
  openComfy,
  overlaps,
  parseArgs,
  queueAndWait,
  session,
  undersized,
} from "./lib.mjs";

const args = parseArgs(process.argv.slice(2));
const outDir = args.out;
fs.mkdirSync(outDir, { recursive: true });
const files = fs
  .readdirSync(args.templates)
  .filter((f) => f.endsWith(".json") && (!args.only || f.includes(args.only)))
  .sort();
const result = { ok: false, name: "templates", screenshots: [], console_errors: [], timings: {}, templates: {}, cards: {} };
const s = session(result);
const PACK = args.pack || "enfoque"; // the pack's folder name under custom_nodes: its category in the template browser
const MAPS_CAP = 300; // the most Enfoque Attention Maps grows after a run (node.size[1]; js/enfoque.js), chips scroll beyond
// appended to every prompt of the run: the worst case for the word chips (about 60 tokens with the prompt)
const LONG_TAIL =
  "soft morning light, long shadows, wet cobblestones, distant hills, thin fog, tall pine trees, a wooden fence, " +
  "scattered leaves, a narrow river, old stone bridge, warm colours, cinematic composition, sharp focus";

const slug = (name) => name.replace(/[^A-Za-z0-9.]+/g, "_").replace(/^_|_$/g, "");

/** The template's prompt with its model loaders swapped for the test server's tiny models, and the worst
 * case for Enfoque Attention Maps: every word of a long prompt. */
function tinyPrompt(tail) {
  return window.app.graphToPrompt().then(({ output }) => {
    const prompt = structuredClone(output);
    const graph = window.app.graph;
    const LOADERS = new Set(["CheckpointLoaderSimple", "TripleCLIPLoader", "DualCLIPLoader", "CLIPLoader", "UNETLoader", "VAELoader"]);
    const tiny = {
      MODEL: ["9001", { class_type: "UNETLoader", inputs: { unet_name: "tiny_sd3.safetensors", weight_dtype: "default" } }],
      CLIP: ["9002", { class_type: "CLIPLoader", inputs: { clip_name: "tiny_clip_l.safetensors", type: "sd3" } }],
      VAE: ["9003", { class_type: "VAELoader", inputs: { vae_name: "taesd3" } }],
    };
    const swapped = {};
    for (const [id, node] of Object.entries(prompt)) {
      if (!LOADERS.has(node.class_type)) continue;
      swapped[id] = graph.getNodeById(+id).outputs.map((o) => o.type);
      delete prompt[id];
    }
    for (const node of Object.values(prompt)) {
      for (const [name, value] of Object.entries(node.inputs)) {
        if (!Array.isArray(value) || !(value[0] in swapped)) continue;
        const type = swapped[value[0]][value[1]];
        node.inputs[name] = [tiny[type][0], 0];
      }
      if (/^Empty(SD3|Flux2)?LatentImage$|^EmptyHunyuanLatentVideo$/.test(node.class_type)) {
        node.class_type = "EmptySD3LatentImage"; // the tiny model is an SD3
        delete node.inputs.length; // a video latent (Wan) becomes an image one
        node.inputs.width = 256;
        node.inputs.height = 256;
      }
      if (node.class_type === "KSampler") node.inputs.steps = Math.min(3, node.inputs.steps);
      if (node.class_type === "CLIPTextEncode" && node.inputs.text) node.inputs.text += `, ${tail}`;
      if (node.class_type === "EnfoqueAttentionMaps" && node.inputs.kind !== "concept") node.inputs.words = "";
    }
    for (const [id, node] of Object.values(tiny)) prompt[id] = node;
    return prompt;
  });
}

/** Workflow > Browse Templates, the pack's category: its cards as the page shows them. */
async function openTemplateBrowser(page) {
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  await page.getByText(PACK, { exact: true }).first().click();
  await page.locator('[data-testid^="template-workflow-"]').first().waitFor();
}

/**
 * Click a template's card and wait until its workflow is loaded and the browser closed. A click that lands while
 * the cards are still laid out (thumbnails loading) can miss: while the card is still there, click it again.
 */
async function openCard(page, name) {
  const card = page.locator(`[data-testid="template-workflow-${name}"]`);
  const loaded = (n) =>
    window.app.graph?.extra?.info?.title === n && !document.querySelector('[data-testid^="template-workflow-"]');
  for (let attempt = 1; ; attempt++) {
    if (await card.count()) await card.click();
    try {
      await page.waitForFunction(loaded, name, { timeout: 20000 });
      return;
    } catch (e) {
      if (attempt === 3) throw e;
    }
  }
}

/** Each card of the category: title, description, and its thumbnail once loaded (size, a 32x24 copy). */
async function readCards() {
  const cards = [];
  for (const card of document.querySelectorAll('[data-testid^="template-workflow-"]')) {
    card.scrollIntoView();
    let img = null;
    for (let i = 0; i < 150 && !(img?.complete && img.naturalWidth); i++) {
      await new Promise((r) => setTimeout(r, 100)); // the card fetches its thumbnail when it comes into view
      img = card.querySelector("img");
    }
    let pixels = null;
    if (img?.naturalWidth) {
      const c = document.createElement("canvas");
      c.width = 32;
      c.height = 24;
      const ctx = c.getContext("2d");
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(img, 0, 0, 32, 24);
      pixels = [...ctx.getImageData(0, 0, 32, 24).data].filter((_, i) => i % 4 !== 3);
    }
    cards.push({
      name: card.dataset.testid.slice("template-workflow-".length),
      title: card.querySelector("h3")?.textContent ?? "",
      description: card.querySelector("p")?.textContent ?? "",
      thumbnail: img ? { width: img.naturalWidth, height: img.naturalHeight, pixels } : null,
    });
  }
  return cards;
}

/** The missing-models dialog's entries (label "folder / file", download address, whether it can download). */
function readMissingModels() {
  return [...document.querySelectorAll(".comfy-missing-models li")].map((li) => {
    const download = [...li.querySelectorAll("button")].find((b) => b.title);
    return {
      label: li.querySelector("span[title]")?.textContent.trim() ?? li.textContent.trim(),
      url: download?.title ?? "",
      enabled: Boolean(download) && !download.disabled,
      error: li.querySelector(".p-message, [class*=message]")?.textContent.trim() ?? "",
    };
  });
}

let page;
let close;
try {
  s.mark("launch");
  ({ page, close } = await openComfy({ url: args.url, executablePath: args.chromium || "/usr/bin/chromium", result }));

  s.mark("template browser");
  await openTemplateBrowser(page);
  for (const card of await page.evaluate(readCards)) result.cards[card.name] = card;
  const shot = path.join(outDir, "templates_browser.png");
  await page.screenshot({ path: shot });
  result.screenshots.push(shot);
  await page.keyboard.press("Escape");

  for (const file of files) {
    const name = file.replace(/\.json$/, "");
    const entry = (result.templates[name] = {});
    s.mark(`open ${name}`);
    // as a user opens it: the card in the template browser
    await openTemplateBrowser(page);
    await openCard(page, name);
    await page.waitForTimeout(1500); // the missing-models dialog follows the load (ComfyUI asks for the folders first)
    entry.missing_models = await page.evaluate(readMissingModels);
    if (await page.locator(".comfy-missing-models").count()) {
      const shot = path.join(outDir, `template_${slug(name)}_missing_models.png`);
      await page.screenshot({ path: shot });
      result.screenshots.push(shot);
      await page.keyboard.press("Escape");
      await page.locator(".comfy-missing-models").waitFor({ state: "detached" });
    }
    await page.waitForTimeout(300);
    entry.workflow_name = await page.evaluate(() => window.app.extensionManager?.workflow?.activeWorkflow?.filename ?? null);
    s.mark(`load ${name}`);
    await fitView(page);
    entry.groups = await page.evaluate(() => (window.app.graph.groups ?? []).map((g) => g.title));
    entry.notes = await page.evaluate(() =>
      window.app.graph.nodes.filter((n) => /Note/.test(n.type)).map((n) => n.widgets?.[0]?.value ?? ""),
    );
    const before = await nodeRects(page);
    entry.before = { nodes: before.length, overlaps: overlaps(before), undersized: undersized(before), dom: await domOutside(page), clipped: await domClipped(page) };
    const shotBefore = path.join(outDir, `template_${slug(name)}_before.png`);
    await page.screenshot({ path: shotBefore });
    result.screenshots.push(shotBefore);

    s.mark(`run ${name}`);
    const prompt = await page.evaluate(tinyPrompt, LONG_TAIL);
    const errors = await queueAndWait(page, prompt);
    check(errors.length === 0, `${name}: the run failed: ${JSON.stringify(errors).slice(0, 2000)}`);
    entry.outputs = await page.evaluate(() => Object.keys(window.__enfoque.executed).sort((a, b) => a - b));
    // previews load from /view; wait until every picture on the page has decoded
    await page.waitForTimeout(800);
    await page.evaluate(() => Promise.all([...document.images].map((im) => im.decode?.().catch(() => {}))));
    await page.waitForTimeout(400);
    await fitView(page);
    const after = await nodeRects(page);
    // the worst case: every Enfoque Attention Maps as tall as the frontend lets it grow, or taller if it grew more
    const title = await page.evaluate(() => window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30);
    const worst = after.map((r) => (r.type === "EnfoqueAttentionMaps" ? { ...r, h: Math.max(r.h, MAPS_CAP + title) } : r));
    entry.maps_heights = after.filter((r) => r.type === "EnfoqueAttentionMaps").map((r) => Math.round(r.h - title));
    entry.after = { nodes: after.length, overlaps: overlaps(worst), undersized: undersized(after), dom: await domOutside(page), clipped: await domClipped(page, 2, true) };
    entry.grown = after
      .map((r) => [r, before.find((b) => b.id === r.id)])
      .filter(([a, b]) => b && (a.h !== b.h || a.w !== b.w))
      .map(([a, b]) => `${a.type}#${a.id} ${Math.round(b.w)}x${Math.round(b.h)} -> ${Math.round(a.w)}x${Math.round(a.h)}`);
    entry.chips = await page.evaluate(() =>
      [...document.querySelectorAll(".enfoque-maps[data-enfoque-node]")].map((e) => ({
        node: e.dataset.enfoqueNode,
        chips: [...e.querySelectorAll(".enfoque-chip")].map((c) => c.dataset.word),
      })),
    );
    const shotAfter = path.join(outDir, `template_${slug(name)}_after_run.png`);
    await page.screenshot({ path: shotAfter });
    result.screenshots.push(shotAfter);
    s.log(`${name}: ${JSON.stringify({ missing: entry.missing_models.length, before: entry.before, after: entry.after, maps_heights: entry.maps_heights, grown: entry.grown })}`);
  }
  check(result.console_errors.length === 0, `errors in the page: ${result.console_errors.join(" | ")}`);
  result.ok = true;
  s.mark("done");
  await finish(result, s, page, outDir);
} catch (e) {
  await finish(result, s, page, outDir, e);
} finally {
  await close?.();
}
