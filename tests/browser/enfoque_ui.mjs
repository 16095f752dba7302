// Browser test of the Enfoque frontend extension (js/enfoque.js) against a live
// ComfyUI server, driven by playwright-core in Debian's /usr/bin/chromium.
// Run by tests/test_frontend.py:
//
//   node enfoque_ui.mjs --url http://127.0.0.1:PORT --workflow api.json --out DIR [--chromium PATH]
//
// Prints progress lines and, last, one line "RESULT {json}" with what it saw
// ({"ok": true, ...} or {"ok": false, "step": ..., "error": ...}). Writes
// screenshots into DIR. Never downloads a browser.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = args.url;
const workflow = JSON.parse(fs.readFileSync(args.workflow, "utf8"));
// a fresh seed: the server may hold this graph's outputs from an earlier run, and cached
// nodes send no "executed" message, so the chips would never appear
for (const node of Object.values(workflow)) {
  if (node.class_type === "KSampler") node.inputs.seed = Math.floor(Math.random() * 2 ** 31);
}
const outDir = args.out;
const executablePath = args.chromium || "/usr/bin/chromium";
fs.mkdirSync(outDir, { recursive: true });

const MAPS_NODE = "10"; // EnfoqueHeatmaps in example_workflows/api/tiny_sd3_maps.json
const ATTN_NODE = "9"; // its EnfoqueAttentionMaps
const AWAY = [760, 780]; // empty canvas, where the mouse rests off the chips
const TEXT_NODE = "4"; // its positive CLIPTextEncode
const t0 = Date.now();
const result = { ok: false, step: "start", screenshots: [], console_errors: [], timings: {} };
let step = "start";
const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
const mark = (name) => {
  step = name;
  result.timings[name] = (Date.now() - t0) / 1000;
  log(name);
};
const check = (cond, msg) => {
  if (!cond) throw new Error(msg);
};

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "enfoque-chromium-"));
let context;
try {
  mark("launch");
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1400, height: 900 },
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
  mark("settings");
  const res = await fetch(`${url}/api/settings/Comfy.TutorialCompleted`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "true",
  });
  check(res.ok, `POST /api/settings failed: HTTP ${res.status}`);

  mark("load page");
  await page.goto(url);
  await page.waitForFunction(
    () => window.app?.graph && window.app.extensions?.some((e) => e.name === "enfoque.WordChips"),
    null,
    { timeout: 60000 },
  );
  result.extension_loaded = true;

  mark("load workflow");
  await page.evaluate(async (wf) => {
    const { app } = window;
    const { api } = await import("/scripts/api.js");
    window.__enfoque = { executed: {}, errors: [], done: 0 };
    api.addEventListener("executed", ({ detail }) => {
      window.__enfoque.executed[String(detail.display_node ?? detail.node)] = detail.output;
    });
    api.addEventListener("execution_error", ({ detail }) => window.__enfoque.errors.push(detail));
    api.addEventListener("execution_success", () => window.__enfoque.done++);
    await app.loadApiJson(wf, "enfoque_browser_test.json");
  }, workflow);
  await page.waitForFunction((id) => window.app.graph.getNodeById(+id), MAPS_NODE);

  const queueAndWait = async (label) => {
    const before = await page.evaluate(() => {
      window.__enfoque.executed = {};
      return window.__enfoque.done;
    });
    await page.evaluate(() => window.app.queuePrompt(0, 1));
    await page.waitForFunction(
      (n) => window.__enfoque.done > n || window.__enfoque.errors.length > 0,
      before,
      { timeout: 120000 },
    );
    const errors = await page.evaluate(() => window.__enfoque.errors);
    check(errors.length === 0, `${label}: execution failed: ${JSON.stringify(errors).slice(0, 2000)}`);
  };

  // scale 1, node at a fixed spot of the canvas, so its DOM widget is on screen
  const focusNode = async (id) => {
    await page.evaluate((nid) => {
      const { app } = window;
      const node = app.graph.getNodeById(+nid);
      app.canvas.ds.scale = 1;
      app.canvas.ds.offset = [120 - node.pos[0], 140 - node.pos[1]];
      app.canvas.setDirty(true, true);
    }, id);
    await page.waitForTimeout(300);
  };

  mark("run workflow");
  await queueAndWait("first run");
  const out = await page.evaluate((id) => window.__enfoque.executed[id], MAPS_NODE);
  check(out && Array.isArray(out.enfoque_words), `no enfoque_words in node ${MAPS_NODE}'s ui output`);
  check(
    Array.isArray(out.enfoque_word_images) && out.enfoque_word_images.length === out.enfoque_words.length,
    "enfoque_word_images missing or not one per word",
  );
  result.words = out.enfoque_words;

  mark("chips");
  // room for the chips and the picture, in free space to the right of the graph
  await page.evaluate((id) => {
    const { graph } = window.app;
    const node = graph.getNodeById(+id);
    const right = Math.max(...graph.nodes.filter((n) => n !== node).map((n) => n.pos[0] + n.size[0]));
    const top = Math.min(...graph.nodes.map((n) => n.pos[1]));
    node.pos = [right + 120, top];
    node.setSize([Math.max(node.size[0], 420), Math.max(node.size[1], 560)]);
  }, MAPS_NODE);
  await focusNode(MAPS_NODE);
  const root = page.locator(`.enfoque-maps[data-enfoque-node="${MAPS_NODE}"]`);
  const chips = root.locator(".enfoque-chip");
  await chips.first().waitFor({ state: "visible" });
  const chipWords = await chips.evaluateAll((els) => els.map((e) => e.dataset.word));
  check(JSON.stringify(chipWords) === JSON.stringify(result.words), `chips ${chipWords} != words ${result.words}`);
  result.chip_words = chipWords;
  const img = root.locator(".enfoque-view img");

  // what the view shows: src, word, and a hash of its decoded pixels
  const view = () =>
    img.evaluate(async (im) => {
      if (im.getAttribute("src")) {
        await im.decode().catch(() => {});
      }
      let hash = null;
      if (im.naturalWidth > 0) {
        const c = document.createElement("canvas");
        c.width = im.naturalWidth;
        c.height = im.naturalHeight;
        const g = c.getContext("2d");
        g.drawImage(im, 0, 0);
        const data = g.getImageData(0, 0, c.width, c.height).data;
        let h = 2166136261;
        for (let i = 0; i < data.length; i += 1) h = Math.imul(h ^ data[i], 16777619) >>> 0;
        hash = h.toString(16);
      }
      return { src: im.getAttribute("src") || "", word: im.dataset.word || "", hash, w: im.naturalWidth };
    });
  const nativePreviewGone = () =>
    page.evaluate((id) => {
      const n = window.app.graph.getNodeById(+id);
      return !(n.widgets ?? []).some((w) => w.name === "$$canvas-image-preview");
    }, MAPS_NODE);

  await page.waitForTimeout(300);
  const base = await view();
  result.view_base = base;
  check(base.w > 0, "the node shows no picture before hovering (expected the panel grid)");
  check(await nativePreviewGone(), "the canvas image preview is drawn as well as the chips' view");

  mark("hover");
  const [w0, w1] = result.words;
  const chip0 = root.locator(`.enfoque-chip[data-word="${w0}"]`);
  const chip1 = root.locator(`.enfoque-chip[data-word="${w1}"]`);
  await chip0.hover();
  await page.waitForFunction(
    ([id, w]) => document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-view img`)?.dataset.word === w,
    [MAPS_NODE, w0],
  );
  const hovered0 = await view();
  check(hovered0.w > 0, `the heatmap of '${w0}' did not load (${hovered0.src})`);
  check(hovered0.src !== base.src && hovered0.hash !== base.hash, "hovering a chip did not change the picture");
  await chip1.hover();
  const hovered1 = await view();
  check(hovered1.word === w1 && hovered1.w > 0, `hovering '${w1}' did not show its heatmap`);
  check(hovered1.hash !== hovered0.hash, `'${w0}' and '${w1}' show the same pixels`);
  result.view_hover = { [w0]: hovered0, [w1]: hovered1 };
  await page.mouse.move(...AWAY);
  const left = await view();
  check(left.src === base.src, "leaving the chip did not restore the picture");

  mark("pin");
  await chip1.click();
  await page.mouse.move(...AWAY);
  const pinned = await view();
  check(pinned.word === w1, `after clicking '${w1}' and leaving, the view shows '${pinned.word}'`);
  check(await chip1.evaluate((e) => e.classList.contains("enfoque-pinned")), "the clicked chip is not marked pinned");
  const prop = await page.evaluate((id) => window.app.graph.getNodeById(+id).properties.enfoque_pinned, MAPS_NODE);
  check(prop === w1, `node.properties.enfoque_pinned is ${prop}`);
  await chip0.hover();
  check((await view()).word === w0, "hovering another word does not show it while a word is pinned");
  await page.mouse.move(...AWAY);
  check((await view()).word === w1, "the pinned word is not shown again after hovering another");
  const shot1 = path.join(outDir, "enfoque_heatmaps_pinned.png");
  await page.screenshot({ path: shot1 });
  result.screenshots.push(shot1);

  // EnfoqueAttentionMaps gets chips only when its ui output carries the words (reported, not required)
  mark("attention maps node");
  const attnOut = await page.evaluate((id) => window.__enfoque.executed[id], ATTN_NODE);
  if (!Array.isArray(attnOut?.enfoque_words)) {
    result.attention_maps = "no chips: EnfoqueAttentionMaps sends no enfoque_words in its ui output";
  } else {
    await page.evaluate(([id, mapsId]) => {
      const { graph } = window.app;
      const node = graph.getNodeById(+id);
      const maps = graph.getNodeById(+mapsId);
      node.pos = [maps.pos[0], maps.pos[1] + maps.size[1] + 80];
      node.setSize([Math.max(node.size[0], 420), Math.max(node.size[1], 420)]);
    }, [ATTN_NODE, MAPS_NODE]);
    await focusNode(ATTN_NODE);
    const attnRoot = page.locator(`.enfoque-maps[data-enfoque-node="${ATTN_NODE}"]`);
    const attnChips = attnRoot.locator(".enfoque-chip");
    await attnChips.first().waitFor({ state: "visible" });
    const words = await attnChips.evaluateAll((els) => els.map((e) => e.dataset.word));
    check(JSON.stringify(words) === JSON.stringify(attnOut.enfoque_words), `attention maps chips ${words}`);
    await attnChips.first().hover();
    const shown = await attnRoot.locator(".enfoque-view img").evaluate(async (im) => {
      await im.decode().catch(() => {});
      return { word: im.dataset.word, w: im.naturalWidth };
    });
    check(shown.word === words[0] && shown.w > 0, `hovering an EnfoqueAttentionMaps chip showed ${JSON.stringify(shown)}`);
    await page.mouse.move(...AWAY);
    const shot = path.join(outDir, "enfoque_attention_maps.png");
    await attnChips.first().hover();
    await page.screenshot({ path: shot });
    await page.mouse.move(...AWAY);
    result.screenshots.push(shot);
    result.attention_maps = { chips: words, hover: shown.word };
  }
  log(`attention maps node: ${JSON.stringify(result.attention_maps)}`);

  mark("reload workflow");
  const serialised = await page.evaluate(() => JSON.stringify(window.app.graph.serialize()));
  const saved = JSON.parse(serialised).nodes.find((n) => String(n.id) === MAPS_NODE);
  check(saved?.properties?.enfoque_pinned === w1, "the pinned word is not in the serialised workflow");
  check(
    !JSON.stringify(saved.widgets_values ?? []).includes("enfoque"),
    `the chips widget leaked into widgets_values: ${JSON.stringify(saved.widgets_values)}`,
  );
  await page.evaluate(async (wf) => {
    window.app.graph.clear();
    await window.app.loadGraphData(JSON.parse(wf), true, true, "enfoque_browser_test_reloaded.json");
  }, serialised);
  await page.waitForFunction((id) => window.app.graph.getNodeById(+id), MAPS_NODE);
  const afterReload = await page.evaluate(
    (id) => window.app.graph.getNodeById(+id).properties.enfoque_pinned,
    MAPS_NODE,
  );
  check(afterReload === w1, `after reloading, enfoque_pinned is ${afterReload}`);
  await focusNode(MAPS_NODE);
  const root2 = page.locator(`.enfoque-maps[data-enfoque-node="${MAPS_NODE}"]`);
  result.chips_kept_on_reload = await page.evaluate((id) => ({
    outputs: !!window.app.nodeOutputs?.[id]?.enfoque_words,
    chips: document.querySelectorAll(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-chip`).length,
    pinned: [...document.querySelectorAll(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-chip.enfoque-pinned`)].map((e) => e.dataset.word),
  }), MAPS_NODE);
  log(`after reload: ${JSON.stringify(result.chips_kept_on_reload)}`);
  // run again with another opacity (only the Heatmaps node re-executes): the new chips keep the pin
  await page.evaluate((id) => {
    const w = window.app.graph.getNodeById(+id).widgets.find((x) => x.name === "opacity");
    w.value = 0.7;
  }, MAPS_NODE);
  await queueAndWait("second run");
  await root2.locator(".enfoque-chip").first().waitFor({ state: "visible" });
  const pinnedChips = await root2.locator(".enfoque-chip.enfoque-pinned").evaluateAll((els) => els.map((e) => e.dataset.word));
  check(JSON.stringify(pinnedChips) === JSON.stringify([w1]), `after reload the pinned chips are ${pinnedChips}`);
  const reloadedView = await root2.locator(".enfoque-view img").evaluate((im) => im.dataset.word);
  check(reloadedView === w1, `after reload the view shows '${reloadedView}'`);
  result.pin_after_reload = w1;

  mark("token weights");
  const twId = await page.evaluate(([textId, mapsId]) => {
    const { app } = window;
    const LiteGraph = window.LiteGraph;
    const enc = app.graph.getNodeById(+textId);
    const maps = app.graph.getNodeById(+mapsId);
    const tw = LiteGraph.createNode("EnfoqueTokenWeights");
    tw.pos = [maps.pos[0] + maps.size[0] + 60, maps.pos[1]];
    app.graph.add(tw);
    tw.setSize([Math.max(tw.size[0], 400), Math.max(tw.size[1], 220)]);
    enc.connect(0, tw, 0);
    return String(tw.id);
  }, [TEXT_NODE, MAPS_NODE]);
  await focusNode(MAPS_NODE); // both nodes on screen
  const twRoot = page.locator(`.enfoque-weights[data-enfoque-node="${twId}"]`);
  await twRoot.locator(".enfoque-chip").first().waitFor({ state: "visible" });
  const twWords = await twRoot.locator(".enfoque-chip").evaluateAll((els) => els.map((e) => e.dataset.word));
  result.weight_chip_words = twWords;
  const prompt = workflow[TEXT_NODE].inputs.text;
  const expected = [...new Set(prompt.toLowerCase().split(/\s+/).filter(Boolean))];
  check(JSON.stringify(twWords) === JSON.stringify(expected), `weight chips ${twWords} != ${expected}`);
  const weightsValue = () =>
    page.evaluate((id) => window.app.graph.getNodeById(+id).widgets.find((w) => w.name === "weights").value, twId);

  const cat = twRoot.locator('.enfoque-chip[data-word="cat"]');
  await cat.hover();
  const scaleBefore = await page.evaluate(() => window.app.canvas.ds.scale);
  await page.mouse.wheel(0, -100);
  await page.mouse.wheel(0, -100);
  await page.waitForTimeout(100);
  const scaleAfter = await page.evaluate(() => window.app.canvas.ds.scale);
  check(scaleAfter === scaleBefore, `the wheel on a chip zoomed the canvas (${scaleBefore} -> ${scaleAfter})`);
  const afterUp = await weightsValue();
  check(afterUp === "cat:1.1", `two wheel steps up on 'cat' gave weights '${afterUp}'`);
  check((await cat.getAttribute("data-weight")) === "1.1", "the chip does not show the new weight");
  const chair = twRoot.locator('.enfoque-chip[data-word="chair"]');
  await chair.hover();
  for (let i = 0; i < 4; i++) await page.mouse.wheel(0, 100);
  await page.waitForTimeout(100);
  const afterDown = await weightsValue();
  check(afterDown === "cat:1.1, chair:0.8", `four wheel steps down on 'chair' gave '${afterDown}'`);
  // drag 'red' up by 50 px: +0.5
  const box = await twRoot.locator('.enfoque-chip[data-word="red"]').boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2 - 25, { steps: 3 });
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2 - 50, { steps: 3 });
  await page.mouse.up();
  const afterDrag = await weightsValue();
  check(afterDrag === "cat:1.1, chair:0.8, red:1.5", `dragging 'red' up 50 px gave '${afterDrag}'`);
  // the value reaches the prompt ComfyUI would run
  const apiWeights = await page.evaluate(async (id) => (await window.app.graphToPrompt()).output[id]?.inputs?.weights, twId);
  check(apiWeights === afterDrag, `graphToPrompt sends weights '${apiWeights}'`);
  await twRoot.locator('.enfoque-chip[data-word="chair"]').dblclick();
  const afterReset = await weightsValue();
  check(afterReset === "cat:1.1, red:1.5", `double-click on 'chair' gave '${afterReset}'`);
  result.weights = { afterUp, afterDown, afterDrag, afterReset };
  const twSaved = await page.evaluate(
    (id) => window.app.graph.serialize().nodes.find((n) => String(n.id) === id).widgets_values,
    twId,
  );
  check(JSON.stringify(twSaved) === JSON.stringify([afterReset]), `TokenWeights widgets_values ${JSON.stringify(twSaved)}`);
  // typing into the weights box updates the chips
  await page.evaluate((id) => {
    const n = window.app.graph.getNodeById(+id);
    n.widgets.find((w) => w.name === "weights").value = "cat:2, red fur:0.5";
    n.setDirtyCanvas(true, true);
  }, twId);
  await page.waitForFunction(
    (id) => document.querySelector(`.enfoque-weights[data-enfoque-node="${id}"] .enfoque-chip[data-word="cat"]`)?.dataset.weight === "2",
    twId,
  );
  const redTyped = await twRoot.locator('.enfoque-chip[data-word="red"]').getAttribute("data-weight");
  check(redTyped === "1", `after typing, 'red' shows weight ${redTyped}`);
  await twRoot.locator('.enfoque-chip[data-word="cat"]').hover();
  await page.mouse.wheel(0, 100);
  const kept = await weightsValue();
  check(kept === "cat:1.95, red fur:0.5", `a phrase the chips do not show was not kept: '${kept}'`);
  // a new prompt upstream gives new chips
  await page.evaluate((textId) => {
    window.app.graph.getNodeById(+textId).widgets.find((w) => w.name === "text").value = "a green dog, 2 hats";
    window.app.canvas.setDirty(true, true);
  }, TEXT_NODE);
  await page.waitForFunction(
    (id) =>
      [...document.querySelectorAll(`.enfoque-weights[data-enfoque-node="${id}"] .enfoque-chip`)]
        .map((e) => e.dataset.word)
        .join(" ") === "a green dog 2 hats",
    twId,
  );
  await page.evaluate(([textId, text]) => {
    window.app.graph.getNodeById(+textId).widgets.find((w) => w.name === "text").value = text;
    window.app.canvas.setDirty(true, true);
  }, [TEXT_NODE, prompt]);
  await page.waitForFunction(
    (id) => document.querySelectorAll(`.enfoque-weights[data-enfoque-node="${id}"] .enfoque-chip`).length === 6,
    twId,
  );
  await page.evaluate((id) => {
    window.app.graph.getNodeById(+id).widgets.find((w) => w.name === "weights").value = "cat:1.1, red:1.5, chair:0.8";
  }, twId);
  await page.mouse.move(...AWAY);
  await page.waitForTimeout(200);
  const shot2 = path.join(outDir, "enfoque_chips.png");
  await page.screenshot({ path: shot2 });
  result.screenshots.push(shot2);

  check(result.console_errors.length === 0, `errors in the page: ${result.console_errors.join(" | ")}`);
  result.ok = true;
  mark("done");
} catch (e) {
  result.ok = false;
  result.error = String(e?.stack ?? e);
  try {
    const page = context?.pages()[0];
    if (page) {
      const shot = path.join(outDir, "enfoque_failure.png");
      await page.screenshot({ path: shot });
      result.screenshots.push(shot);
    }
  } catch {}
} finally {
  result.step = step;
  result.seconds = (Date.now() - t0) / 1000;
  await context?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exitCode = result.ok ? 0 : 1;
}
