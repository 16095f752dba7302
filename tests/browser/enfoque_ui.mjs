// Browser test of the Enfoque frontend extension (js/enfoque.js) against a live
// ComfyUI server, driven by playwright-core in Debian's /usr/bin/chromium.
// Run by tests/test_frontend.py:
//
//   node enfoque_ui.mjs --url http://127.0.0.1:PORT --workflow api.json --legacy old.json --out DIR [--chromium PATH]
//
// Word chips (hover, pin, a workflow reloaded and the page reloaded keep them, a failed run clears
// them, Enfoque Attention Maps keeps no blank picture area), token-weight chips, the canvas refusing
// a CLIP probe in a model-probe input, a workflow saved before the probe types split, and the notice
// for weights that reweight=off ignores.
//
// Prints progress lines and, last, one line "RESULT {json}" with what it saw
// ({"ok": true, ...} or {"ok": false, "step": ..., "error": ...}). Writes
// screenshots into DIR. Never downloads a browser.

import fs from "node:fs";
import path from "node:path";
import { check, finish, openComfy, parseArgs, queueAndWait as queuePrompt, reloadComfy, session, withClipProbeOnAttentionMaps } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2));
const url = args.url;
const workflow = JSON.parse(fs.readFileSync(args.workflow, "utf8"));
const legacy = args.legacy ? JSON.parse(fs.readFileSync(args.legacy, "utf8")) : null;
// a fresh seed: the server may hold this graph's outputs from an earlier run, and cached
// nodes send no "executed" message, so the chips would never appear
for (const node of Object.values(workflow)) {
  if (node.class_type === "KSampler") node.inputs.seed = Math.floor(Math.random() * 2 ** 31);
}
const outDir = args.out;
fs.mkdirSync(outDir, { recursive: true });

const MAPS_NODE = "10"; // EnfoqueHeatmaps in example_workflows/api/tiny_sd3_maps.json
const ATTN_NODE = "9"; // its EnfoqueAttentionMaps
const AWAY = [760, 780]; // empty canvas, where the mouse rests off the chips
const TEXT_NODE = "4"; // its positive CLIPTextEncode
const result = { ok: false, name: "enfoque", step: "start", screenshots: [], console_errors: [], timings: {} };
const s = session(result);
const { log } = s;
const mark = (name) => s.mark(name);

let page;
let close;
try {
  mark("launch");
  ({ page, close } = await openComfy({ url, executablePath: args.chromium || "/usr/bin/chromium", result }));
  result.extension_loaded = true;

  mark("load workflow");
  await page.evaluate(async (wf) => window.app.loadApiJson(wf, "enfoque_browser_test.json"), workflow);
  await page.waitForFunction((id) => window.app.graph.getNodeById(+id), MAPS_NODE);

  // queue the canvas' graph and wait until it succeeds or fails
  const queueAndWait = async (label) => {
    const errors = await queuePrompt(page);
    check(errors.length === 0, `${label}: execution failed: ${JSON.stringify(errors).slice(0, 2000)}`);
  };
  const queueAndWaitAllowingErrors = () => queuePrompt(page);

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
    // the node as the run left it (no size set here): its own widgets and a row of chips, no blank area
    const attnSize = await page.evaluate(([id, mapsId]) => {
      const { graph } = window.app;
      const node = graph.getNodeById(+id);
      const maps = graph.getNodeById(+mapsId);
      node.pos = [maps.pos[0], maps.pos[1] + maps.size[1] + 80];
      const min = node.computeSize();
      return { h: node.size[1], min: min[1], widgets: node.widgets.length };
    }, [ATTN_NODE, MAPS_NODE]);
    check(attnSize.h <= attnSize.min + 1, `EnfoqueAttentionMaps is ${attnSize.h} px tall, its content ${attnSize.min} px`);
    check(attnSize.min < 330, `EnfoqueAttentionMaps reserves ${attnSize.min} px for 5 widgets and 2 chips`);
    result.attention_maps_height = attnSize;
    await focusNode(ATTN_NODE);
    const attnRoot = page.locator(`.enfoque-maps[data-enfoque-node="${ATTN_NODE}"]`);
    const attnChips = attnRoot.locator(".enfoque-chip");
    await attnChips.first().waitFor({ state: "visible" });
    const words = await attnChips.evaluateAll((els) => els.map((e) => e.dataset.word));
    check(JSON.stringify(words) === JSON.stringify(attnOut.enfoque_words), `attention maps chips ${words}`);
    const floating = page.locator(`.enfoque-view[data-enfoque-node="${ATTN_NODE}"]`);
    check(!(await floating.isVisible()), "EnfoqueAttentionMaps shows a picture area before hovering");
    await attnChips.first().hover();
    await floating.waitFor({ state: "visible" });
    const shown = await floating.locator("img").evaluate(async (im) => {
      await im.decode().catch(() => {});
      return { word: im.dataset.word, w: im.naturalWidth };
    });
    check(shown.word === words[0] && shown.w > 0, `hovering an EnfoqueAttentionMaps chip showed ${JSON.stringify(shown)}`);
    const chipBox = await attnChips.first().boundingBox();
    const viewBox = await floating.boundingBox();
    check(viewBox.x >= chipBox.x + chipBox.width || viewBox.y + viewBox.height <= chipBox.y,
      "the floating view covers the chip it shows");
    await page.mouse.move(...AWAY);
    await floating.waitFor({ state: "hidden" });
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

  mark("page reload");
  // the browser reloads the page: the frontend restores the open workflow from its storage, without outputs
  await reloadComfy(page, MAPS_NODE);
  await focusNode(MAPS_NODE);
  const afterPageReload = await page.evaluate((id) => ({
    outputs: !!window.app.nodeOutputs?.[id]?.enfoque_words,
    chips: [...document.querySelectorAll(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-chip`)].map((e) => e.dataset.word),
    pinned: [...document.querySelectorAll(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-chip.enfoque-pinned`)].map((e) => e.dataset.word),
    shown: document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-view img`)?.dataset.word ?? null,
  }), MAPS_NODE);
  result.chips_after_page_reload = afterPageReload;
  check(!afterPageReload.outputs, "the frontend kept the outputs over a page reload (this check needs a fresh page)");
  check(JSON.stringify(afterPageReload.chips) === JSON.stringify(result.words),
    `after a page reload the chips are ${JSON.stringify(afterPageReload.chips)}, not the last output's ${result.words}`);
  check(JSON.stringify(afterPageReload.pinned) === JSON.stringify([w1]) && afterPageReload.shown === w1,
    `after a page reload the pin is ${JSON.stringify(afterPageReload)}`);
  const reloadShot = path.join(outDir, "enfoque_chips_after_page_reload.png");
  await page.screenshot({ path: reloadShot });
  result.screenshots.push(reloadShot);

  mark("failed run clears chips");
  // a word that is not in the prompt: Enfoque Attention Maps fails, Enfoque Heatmaps does not run
  const setWords = (words) =>
    page.evaluate(([id, w]) => {
      window.app.graph.getNodeById(+id).widgets.find((x) => x.name === "words").value = w;
    }, [ATTN_NODE, words]);
  await setWords("red cat, purple dog");
  const failErrors = await queueAndWaitAllowingErrors();
  check(failErrors.length === 1 && /purple dog/.test(failErrors[0].exception_message ?? ""),
    `the run with a wrong word did not fail as expected: ${JSON.stringify(failErrors).slice(0, 500)}`);
  result.failed_run_error = failErrors[0].exception_message;
  await page.waitForFunction((id) => !document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-chip`), MAPS_NODE);
  const cleared = await page.evaluate(([id, attn]) => ({
    heat: document.querySelectorAll(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-chip`).length,
    attn: document.querySelectorAll(`.enfoque-maps[data-enfoque-node="${attn}"] .enfoque-chip`).length,
    hint: document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-hint`)?.textContent,
    kept: window.app.graph.getNodeById(+id).properties.enfoque_output ?? null,
    h: window.app.graph.getNodeById(+id).size[1],
    min: window.app.graph.getNodeById(+id).computeSize()[1],
  }), [MAPS_NODE, ATTN_NODE]);
  result.after_failed_run = cleared;
  check(cleared.heat === 0 && cleared.attn === 0 && cleared.kept === null, `stale chips after a failed run: ${JSON.stringify(cleared)}`);
  check(/did not finish/.test(cleared.hint ?? ""), `no hint after a failed run: ${cleared.hint}`);
  check(cleared.h <= cleared.min + 1, `after a failed run the node stays ${cleared.h} px tall for ${cleared.min} px of widgets`);
  const failShot = path.join(outDir, "enfoque_chips_cleared_after_failed_run.png");
  await page.screenshot({ path: failShot });
  result.screenshots.push(failShot);
  // ComfyUI's error dialog for the failed run
  const dialog = page.locator(".p-dialog");
  result.failed_run_dialog = (await dialog.count()) ? await dialog.first().innerText() : null;
  await page.keyboard.press("Escape");
  await dialog.first().waitFor({ state: "hidden" }).catch(() => {});
  await setWords("red cat, blue chair");
  const sent = await page.evaluate(async (id) => (await window.app.graphToPrompt()).output[id].inputs.words, ATTN_NODE);
  check(sent === "red cat, blue chair", `the words widget sends ${sent}`);
  await queueAndWait("run after the failed one");
  await root2.locator(".enfoque-chip").first().waitFor({ state: "visible" });

  mark("wrong probe link");
  const probe = await page.evaluate(([attnId]) => {
    const { app } = window;
    const attn = app.graph.getNodeById(+attnId);
    const clip = window.LiteGraph.createNode("EnfoquePatchCLIP");
    clip.pos = [attn.pos[0] - 420, attn.pos[1] + 40];
    app.graph.add(clip);
    const before = attn.inputs[0].link;
    const origin = app.graph.getLink?.(before)?.origin_id ?? app.graph.links[before]?.origin_id;
    // through the API the canvas uses for every new link: refused for the wrong type
    const refused = clip.connect(1, attn, 0);
    return { clip: String(clip.id), before, origin: String(origin), api: refused == null ? null : String(refused),
      types: [clip.outputs[1].type, attn.inputs[0].type] };
  }, [ATTN_NODE]);
  check(probe.api === null, `LiteGraph linked a CLIP probe to a model-probe input: ${JSON.stringify(probe)}`);
  // and with the mouse, as a user drags it
  await focusNode(ATTN_NODE);
  await page.evaluate(([clipId, attnId]) => {
    const { app } = window;
    const attn = app.graph.getNodeById(+attnId);
    app.canvas.ds.offset = [420 - attn.pos[0] + 40, 260 - attn.pos[1]];
    app.canvas.setDirty(true, true);
  }, [probe.clip, ATTN_NODE]);
  await page.waitForTimeout(300);
  const slot = (id, input, index) =>
    page.evaluate(([id, input, index]) => {
      const { app } = window;
      const n = app.graph.getNodeById(+id);
      const [x, y] = n.getConnectionPos(input, index);
      const c = app.canvas.canvas.getBoundingClientRect();
      const { scale, offset } = app.canvas.ds;
      return [(x + offset[0]) * scale + c.left, (y + offset[1]) * scale + c.top];
    }, [id, input, index]);
  const drag = async (from, to, shotName) => {
    await page.mouse.move(...from);
    await page.mouse.down();
    await page.mouse.move((from[0] + to[0]) / 2, (from[1] + to[1]) / 2, { steps: 5 });
    await page.mouse.move(...to, { steps: 5 });
    if (shotName) {
      const shot = path.join(outDir, shotName);
      await page.screenshot({ path: shot });
      result.screenshots.push(shot);
    }
    await page.mouse.up();
    await page.waitForTimeout(200);
  };
  const linkOrigin = () =>
    page.evaluate((attnId) => {
      const { app } = window;
      const id = app.graph.getNodeById(+attnId).inputs[0].link;
      const link = app.graph.getLink?.(id) ?? app.graph.links[id];
      return link ? [String(link.origin_id), link.origin_slot, link.type] : null;
    }, ATTN_NODE);
  await drag(await slot(probe.clip, false, 1), await slot(ATTN_NODE, true, 0), "enfoque_wrong_probe_link_dragged.png");
  const afterWrongDrag = await linkOrigin();
  check(afterWrongDrag && afterWrongDrag[0] === probe.origin && afterWrongDrag[1] === 1,
    `dragging the CLIP probe onto Enfoque Attention Maps changed its link: ${JSON.stringify(afterWrongDrag)}`);
  // the right probe is taken: drag the model probe again (it replaces the same link)
  await drag(await slot(probe.origin, false, 1), await slot(ATTN_NODE, true, 0));
  const afterRightDrag = await linkOrigin();
  check(afterRightDrag && afterRightDrag[0] === probe.origin && afterRightDrag[2] === "ENFOQUE_MODEL_PROBE",
    `dragging the model probe did not link it: ${JSON.stringify(afterRightDrag)}`);
  result.wrong_probe = { types: probe.types, api: probe.api, drag: afterWrongDrag, right: afterRightDrag };
  await page.evaluate((clipId) => window.app.graph.remove(window.app.graph.getNodeById(+clipId)), probe.clip);

  mark("reweight off notice");
  // a weighted word in the prompt with reweight off: the run works, the node says the weight is ignored
  const patchId = await page.evaluate(() => String(window.app.graph.nodes.find((n) => n.type === "EnfoquePatchModel").id));
  const setWidget = (id, name, value) =>
    page.evaluate(([id, name, value]) => {
      window.app.graph.getNodeById(+id).widgets.find((w) => w.name === name).value = value;
    }, [id, name, value]);
  await setWidget(patchId, "reweight", "off");
  await setWidget(TEXT_NODE, "text", "a (red:1.5) cat on a blue chair");
  await queueAndWait("run with reweight off");
  await page.waitForFunction((id) => document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`), patchId);
  await focusNode(patchId);
  await page
    .waitForFunction((id) => {
      const n = window.app.graph.getNodeById(+id);
      return n.size[1] + 1 >= n.computeSize()[1];
    }, patchId, { timeout: 5000 })
    .catch(() => {});
  const notice = await page.evaluate((id) => ({
    text: document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`)?.textContent,
    h: window.app.graph.getNodeById(+id).size[1],
    min: window.app.graph.getNodeById(+id).computeSize()[1],
    own: Object.hasOwn(window.app.graph.getNodeById(+id), "onDrawForeground"),
    drawn: window.app.graph.getNodeById(+id).enfoqueDrawn ?? 0,
    sent: window.__enfoque.notices,
  }), patchId);
  check(/Enfoque Patch Model: reweight is off, so the diffusion model ignores the word weights of the prompt \('red' 1\.5\)/.test(notice.text ?? ""),
    `no notice on Enfoque Patch Model: ${JSON.stringify(notice)}`);
  check(notice.h + 1 >= notice.min, `the notice does not fit its node: ${JSON.stringify(notice)}`);
  result.notice = notice.text;
  const noticeShot = path.join(outDir, "enfoque_notice_reweight_off.png");
  await page.screenshot({ path: noticeShot });
  result.screenshots.push(noticeShot);
  await setWidget(patchId, "reweight", "bias");
  await queueAndWait("run with reweight on");
  await page.waitForFunction((id) => !document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`), patchId);
  await setWidget(TEXT_NODE, "text", workflow[TEXT_NODE].inputs.text);

  if (legacy) {
    mark("legacy workflow");
    // a template saved before the probes got their own types loads, and its links get the new types
    const migrated = await page.evaluate(async (wf) => {
      const { app } = window;
      app.graph.clear();
      await app.loadGraphData(structuredClone(wf), true, true, "enfoque_v0.1.json");
      const links = [...(app.graph.links instanceof Map ? app.graph.links.values() : Object.values(app.graph.links))];
      return links.filter((l) => /PROBE/.test(l?.type ?? "")).map((l) => l.type);
    }, legacy);
    check(migrated.length && migrated.every((t) => t === "ENFOQUE_MODEL_PROBE"), `old probe links after loading: ${migrated}`);
    // the same workflow with its CLIP probe wired into Enfoque Attention Maps: a notice says what to connect
    const { wrong, attnNode } = withClipProbeOnAttentionMaps(legacy);
    const legacyNotice = await page.evaluate(async ([wf, attnId]) => {
      const { app } = window;
      app.graph.clear();
      await app.loadGraphData(wf, true, true, "enfoque_v0.1_wrong.json");
      await new Promise((r) => setTimeout(r, 300));
      return document.querySelector(`.enfoque-notice[data-enfoque-node="${attnId}"]`)?.textContent ?? null;
    }, [wrong, String(attnNode.id)]);
    check(/its probe comes from Enfoque Patch CLIP, but it needs the probe of Enfoque Patch Model/.test(legacyNotice ?? ""),
      `no clear message for an old wrong probe link: ${legacyNotice}`);
    result.legacy = { migrated, notice: legacyNotice };
    await focusNode(String(attnNode.id));
    const legacyShot = path.join(outDir, "enfoque_legacy_wrong_probe_notice.png");
    await page.screenshot({ path: legacyShot });
    result.screenshots.push(legacyShot);
    // back to the test graph for the token weights
    await page.evaluate(async (wf) => {
      window.app.graph.clear();
      await window.app.loadApiJson(wf, "enfoque_browser_test.json");
    }, workflow);
    await page.waitForFunction((id) => window.app.graph.getNodeById(+id), MAPS_NODE);
  }

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
  const expected = prompt.toLowerCase().split(/\s+/).filter(Boolean); // one chip per position, "a" twice
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
  // "red fur" is not in the prompt: shown as an error before Run
  const errors = await twRoot.locator(".enfoque-error").evaluateAll((els) => els.map((e) => e.textContent));
  check(errors.length === 1 && /'red fur' is not a word of the prompt/.test(errors[0]), `errors shown: ${errors}`);
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
    (id) => document.querySelectorAll(`.enfoque-weights[data-enfoque-node="${id}"] .enfoque-chip`).length === 7,
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
  await finish(result, s, page, outDir);
} catch (e) {
  await finish(result, s, page, outDir, e);
} finally {
  await close?.();
}
