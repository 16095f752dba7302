// Browser test of the example workflows (ComfyUI's template browser) against a live ComfyUI,
// driven by playwright-core in Debian's /usr/bin/chromium. Run by tests/test_frontend.py:
//
//   node templates.mjs --url http://127.0.0.1:PORT --templates DIR --out DIR [--chromium PATH] [--thumbnails 1]
//
// For each top-level *.json in DIR: load it as the template browser does (app.loadGraphData),
// measure every node's rectangle as the canvas draws it (title bar included) and check that no
// two overlap, that none is smaller than its own content, and that no Enfoque DOM widget reaches
// outside its node; then run it and check the same with the outputs showing (previews, word
// chips). The run is the template's own graph as the canvas sends it (graphToPrompt), with the
// nodes that load model files swapped for the tiny models on the test server (a random tiny SD3,
// CLIP-L and TAESD3), 256 px and at most 3 steps; every other node runs with the template's
// values, and its outputs reach the template's nodes on the canvas through the frontend's own
// "executed" messages. Screenshots before and after go to --out; with --thumbnails 1 the
// before-run view is also written next to each template as its .jpg thumbnail.
// Prints progress lines and, last, "RESULT {json}".

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
const result = { ok: false, name: "templates", screenshots: [], console_errors: [], timings: {}, templates: {} };
const s = session(result);

const slug = (name) => name.replace(/[^A-Za-z0-9.]+/g, "_").replace(/^_|_$/g, "");

/** The template's prompt with its model loaders swapped for the test server's tiny models. */
function tinyPrompt() {
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
    }
    for (const [id, node] of Object.values(tiny)) prompt[id] = node;
    return prompt;
  });
}

let page;
let close;
try {
  s.mark("launch");
  ({ page, close } = await openComfy({ url: args.url, executablePath: args.chromium || "/usr/bin/chromium", result }));
  const load = async (file) => {
    const name = file.replace(/\.json$/, "");
    const wf = JSON.parse(fs.readFileSync(path.join(args.templates, file), "utf8"));
    await page.evaluate(async ([w, n]) => {
      window.app.graph.clear();
      await window.app.loadGraphData(w, true, true, n);
    }, [wf, name]);
    await page.waitForTimeout(500);
    return name;
  };
  if (args.thumbnails === "1") {
    // first, before any run leaves its queue panel on the page: each template as it opens
    for (const file of files) {
      const name = await load(file);
      s.mark(`thumbnail ${name}`);
      const box = await fitView(page);
      const pad = 12;
      const clip = { x: box.x - pad, y: box.y - pad, width: box.width + 2 * pad, height: box.height + 2 * pad };
      const thumb = path.join(args.templates, `${name}.jpg`);
      await page.screenshot({ path: thumb, type: "jpeg", quality: 75, clip });
      result.thumbnails = [...(result.thumbnails ?? []), thumb];
    }
  }
  for (const file of files) {
    const name = await load(file);
    const entry = (result.templates[name] = {});
    s.mark(`load ${name}`);
    await fitView(page);
    entry.groups = await page.evaluate(() => (window.app.graph.groups ?? []).map((g) => g.title));
    entry.notes = await page.evaluate(() =>
      window.app.graph.nodes.filter((n) => /Note/.test(n.type)).map((n) => n.widgets?.[0]?.value ?? ""),
    );
    const before = await nodeRects(page);
    entry.before = { nodes: before.length, overlaps: overlaps(before), undersized: undersized(before), dom: await domOutside(page), clipped: await domClipped(page) };
    const shot = path.join(outDir, `template_${slug(name)}_before.png`);
    await page.screenshot({ path: shot });
    result.screenshots.push(shot);

    s.mark(`run ${name}`);
    const prompt = await page.evaluate(tinyPrompt);
    const errors = await queueAndWait(page, prompt);
    check(errors.length === 0, `${name}: the run failed: ${JSON.stringify(errors).slice(0, 2000)}`);
    entry.outputs = await page.evaluate(() => Object.keys(window.__enfoque.executed).sort((a, b) => a - b));
    // previews load from /view; wait until every picture on the page has decoded
    await page.waitForTimeout(800);
    await page.evaluate(() => Promise.all([...document.images].map((im) => im.decode?.().catch(() => {}))));
    await page.waitForTimeout(400);
    await fitView(page);
    const after = await nodeRects(page);
    entry.after = { nodes: after.length, overlaps: overlaps(after), undersized: undersized(after), dom: await domOutside(page), clipped: await domClipped(page) };
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
    s.log(`${name}: ${JSON.stringify({ before: entry.before, after: entry.after, grown: entry.grown })}`);
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
