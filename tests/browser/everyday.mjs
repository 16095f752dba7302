// Browser test of what a new user met with everyday prompts (issue "Step 18") and of the frontend side
// of the one word rule and the server's tables (issue "Step 15"), against a live ComfyUI server and
// its real frontend, driven by playwright-core in Debian's /usr/bin/chromium. Run by tests/test_frontend.py:
//
//   node everyday.mjs --url http://127.0.0.1:PORT --workflow api.json --legacy old.json --cases rule.json --out DIR
//
// The graph is example_workflows/api/tiny_sd3_maps.json with a prompt that repeats words ("a red circle
// on the left and a blue square on the right": "a", "on" and "the" twice), all words mapped, a negative
// prompt captured and each step kept. Each item is checked on its own and reported in
// result.items[name] = {ok, error, ...what it saw}, so one failing item does not hide the others:
//
//   repeated_words      a chip per position: hovering the second "a" shows its own map, pinning pins one chip
//   attention_maps_box  Enfoque Attention Maps grows by at most 36 px for 13 chips (the box scrolls), not over
//                       the node 36 px below it
//   reload              the chips are in the workflow the frontend saves right after a run, and a page reload
//                       shows them on both map nodes
//   cached              a run whose maps all come from the cache still gives Enfoque Attention Maps its chips
//   failed_run          chips cleared by a failed run stay cleared over a page reload
//   pointing            pointing at a pixel of Heatmaps' picture (and of Attention Maps' floating view) ranks
//                       the words there, with the negative prompt's beside them; a click pins the pixel, which
//                       is saved with the workflow and shown again after a page reload
//   frames              over steps: a scrubber walks the frames; the picture, the chips' shares and the
//                       hovered word's map follow the frame shown
//   stale_notice        the "reweight is off" notice goes when reweight is set back and a later run fails early
//   mask_notice         Enfoque Maps To Mask says why its mask is black for a word weighted 0
//   bad_weights         weights the server would refuse show in red before Run
//   weights_per_position  Token Weights: a chip per position, "Red:1.5" on every "red", "a#2:0.5" on the second
//                       "a" only, the wheel on the second "a" writes "a#2:..."
//   socket_colours      the model probe and the CLIP probe sockets are drawn in different colours
//   word_rule           the extension's selectWords on the cases of --cases (compared with Python by pytest)
//   server_names        the probe refusal notice names the nodes as GET /enfoque/info does
//
// Prints progress lines and, last, one line "RESULT {json}" ({"ok": true} once it ran to its end, whatever the
// items say; {"ok": false, "step", "error"} when it could not). Writes screenshots (everyday_*.png) and the
// result (everyday_result.json) into DIR.

import fs from "node:fs";
import path from "node:path";
import { check, finish, nodeRects, openComfy, overlaps, parseArgs, queueAndWait, reloadComfy, session, withClipProbeOnAttentionMaps } from "./lib.mjs";

const args = parseArgs(process.argv.slice(2));
const url = args.url;
const base = JSON.parse(fs.readFileSync(args.workflow, "utf8"));
const legacy = args.legacy ? JSON.parse(fs.readFileSync(args.legacy, "utf8")) : null;
const cases = args.cases ? JSON.parse(fs.readFileSync(args.cases, "utf8")) : [];
const outDir = args.out;
fs.mkdirSync(outDir, { recursive: true });

const PROMPT = "a red circle on the left and a blue square on the right";
const WORDS = PROMPT.split(" ");
const [CLIP, TEXT, NEG, PATCH, SAMPLER, ATTN, HEAT, MASK, SAVE] = ["3", "4", "5", "6", "8", "9", "10", "12", "15"];
const GAP = 36; // what the templates leave under Enfoque Attention Maps
const AWAY = [1300, 860];

function graph() {
  const wf = structuredClone(base);
  wf[TEXT].inputs.text = PROMPT;
  wf[NEG].inputs.text = "blurry, dark";
  Object.assign(wf[PATCH].inputs, { capture_negative: true, keep_steps: true });
  Object.assign(wf[SAMPLER].inputs, { steps: 3, seed: Math.floor(Math.random() * 2 ** 31) });
  wf[ATTN].inputs.words = "";
  wf[HEAT].inputs.over = "mean";
  wf[MASK].inputs.words = "circle";
  wf[SAVE].inputs.filename_prefix = `enfoque_everyday/maps_${Date.now()}`;
  return wf;
}
const workflow = graph();

const result = { ok: false, name: "everyday", step: "start", screenshots: [], console_errors: [], timings: {}, items: {} };
const s = session(result);
const { log } = s;

let page;
let close;

async function item(name, fn) {
  s.mark(name);
  const entry = { ok: false };
  result.items[name] = entry;
  try {
    await fn(entry);
    entry.ok = true;
  } catch (e) {
    entry.error = String(e?.stack ?? e).slice(0, 1500);
    log(`${name} FAILED: ${entry.error.split("\n")[0]}`);
    await shot(`${name}_failure`).catch(() => {});
    await page.keyboard.press("Escape").catch(() => {});
    await page.mouse.move(...AWAY).catch(() => {});
  }
}

async function shot(name) {
  const file = path.join(outDir, `everyday_${name}.png`);
  await page.screenshot({ path: file });
  result.screenshots.push(file);
  return file;
}

const setWidget = (id, name, value) =>
  page.evaluate(([id, name, value]) => {
    const w = window.app.graph.getNodeById(+id).widgets.find((x) => x.name === name);
    w.value = value;
    w.callback?.(value);
  }, [id, name, value]);

/** Attention Maps at its own size, Heatmaps GAP px under it (as the templates place them), right of the rest. */
async function arrange() {
  return page.evaluate(([attnId, heatId, gap]) => {
    const { graph } = window.app;
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const attn = graph.getNodeById(+attnId);
    const heat = graph.getNodeById(+heatId);
    const rest = graph.nodes.filter((n) => n !== attn && n !== heat);
    const right = Math.max(...rest.map((n) => n.pos[0] + n.size[0]));
    const top = Math.min(...rest.map((n) => n.pos[1]));
    attn.pos = [right + 120, top];
    attn.setSize([340, attn.computeSize()[1]]);
    heat.pos = [right + 120, top + attn.size[1] + gap + title];
    heat.setSize([460, Math.max(560, heat.computeSize()[1])]);
    window.app.canvas.setDirty(true, true);
    return { attn: attn.size[1], heat: heat.size[1] };
  }, [ATTN, HEAT, GAP]);
}

async function focusNode(id, x = 120, y = 140) {
  await page.evaluate(([nid, x, y]) => {
    const { app } = window;
    const node = app.graph.getNodeById(+nid);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [x - node.pos[0], y - node.pos[1]];
    app.canvas.setDirty(true, true);
  }, [id, x, y]);
  await page.waitForTimeout(300);
}

async function loadWorkflow(wf) {
  await page.evaluate(async (wf) => {
    window.app.graph.clear();
    await window.app.loadApiJson(wf, "enfoque_everyday.json");
  }, wf);
  await page.waitForFunction((id) => window.app.graph.getNodeById(+id), HEAT);
  return arrange();
}

async function run(label, allowErrors = false) {
  const errors = await queueAndWait(page);
  if (!allowErrors) check(errors.length === 0, `${label}: the run failed: ${JSON.stringify(errors).slice(0, 1500)}`);
  return errors;
}

async function reloadPage() {
  await reloadComfy(page, HEAT);
  await page.waitForTimeout(500);
}

/** The chips a map node shows: words, the pinned ones, the values, and the picture shown. */
const chipsOf = (id) =>
  page.evaluate((id) => {
    const root = document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"]`);
    const chips = [...(root?.querySelectorAll(".enfoque-chip") ?? [])];
    const img = document.querySelector(`.enfoque-view[data-enfoque-node="${id}"] img`) ?? root?.querySelector("img");
    return {
      words: chips.map((c) => c.dataset.word),
      pinned: chips.map((c, i) => (c.classList.contains("enfoque-pinned") ? i : -1)).filter((i) => i >= 0),
      values: chips.map((c) => c.querySelector(".enfoque-val")?.textContent ?? ""),
      src: img?.getAttribute("src") ?? "",
      hint: root?.querySelector(".enfoque-hint")?.textContent ?? "",
      kept: window.app.graph.getNodeById(+id)?.properties?.enfoque_output ?? null,
    };
  }, id);

const filename = (src) => new URLSearchParams(src.split("?")[1] ?? "").get("filename") ?? "";

try {
  s.mark("launch");
  ({ page, close } = await openComfy({ url, executablePath: args.chromium || "/usr/bin/chromium", result }));

  s.mark("first run");
  await loadWorkflow(workflow);
  await focusNode(ATTN);
  const before = await page.evaluate((id) => window.app.graph.getNodeById(+id).size[1], ATTN);
  await run("first run");
  const out = await page.evaluate(([a, h, v]) => {
    const e = window.__enfoque.executed;
    return { attn: e[a], heat: e[h], save: e[v] };
  }, [ATTN, HEAT, SAVE]);
  check(JSON.stringify(out.heat?.enfoque_words) === JSON.stringify(WORDS), `Heatmaps' words: ${out.heat?.enfoque_words}`);
  result.saved_maps = out.save?.enfoque_files?.[0] ?? null;
  result.grid = { w: out.heat.enfoque_grid?.[0]?.w, h: out.heat.enfoque_grid?.[0]?.h };

  await item("reload", async (r) => {
    // what Save writes (the workflow store's activeState) has the run's chips, with no other change made
    const saved = await page.evaluate(([a, h]) => {
      const wf = window.app.extensionManager?.workflow?.activeWorkflow;
      const state = wf?.activeState ?? wf?.changeTracker?.activeState;
      const node = (id) => state?.nodes?.find((n) => String(n.id) === id);
      return { modified: wf?.isModified ?? null, attn: node(a)?.properties?.enfoque_output ?? null,
        heat: node(h)?.properties?.enfoque_output ?? null, state: state ? JSON.stringify(state) : null };
    }, [ATTN, HEAT]);
    r.modified = saved.modified;
    check(saved.heat?.images?.[0]?.filename === out.heat.enfoque_word_images[0].filename,
      `the workflow Save writes lacks Heatmaps' chips of this run: ${JSON.stringify(saved.heat)?.slice(0, 200)}`);
    check(saved.attn?.images?.[0]?.filename === out.attn.enfoque_word_images[0].filename,
      `the workflow Save writes lacks Attention Maps' chips of this run: ${JSON.stringify(saved.attn)?.slice(0, 200)}`);
    // loading that saved copy shows them
    await page.evaluate(async (state) => {
      window.app.graph.clear();
      await window.app.loadGraphData(JSON.parse(state), true, true, "enfoque_everyday_saved.json");
    }, saved.state);
    await page.waitForFunction((id) => window.app.graph.getNodeById(+id), HEAT);
    r.loaded = { heat: (await chipsOf(HEAT)).words, attn: (await chipsOf(ATTN)).words };
    check(JSON.stringify(r.loaded.heat) === JSON.stringify(WORDS) && JSON.stringify(r.loaded.attn) === JSON.stringify(WORDS),
      `the saved copy, loaded, shows ${JSON.stringify(r.loaded)}`);
    // and a page reload shows them
    await reloadPage();
    const heat = await chipsOf(HEAT);
    const attn = await chipsOf(ATTN);
    r.after_reload = { heat: heat.words, attn: attn.words, hint: attn.hint };
    check(JSON.stringify(heat.words) === JSON.stringify(WORDS), `after a page reload Heatmaps shows ${heat.words}`);
    check(JSON.stringify(attn.words) === JSON.stringify(WORDS),
      `after a page reload Attention Maps shows ${JSON.stringify(attn.words)} ("${attn.hint}")`);
    check(heat.kept?.images?.[0]?.filename === out.heat.enfoque_word_images[0].filename,
      "after a page reload Heatmaps shows the chips of an older run");
  });

  await item("attention_maps_box", async (r) => {
    const now = await page.evaluate(([a, h]) => {
      const n = window.app.graph.getNodeById(+a);
      const box = document.querySelector(`.enfoque-maps[data-enfoque-node="${a}"] .enfoque-chips`);
      return { h: n.size[1], min: n.computeSize()[1], box: box?.clientHeight ?? 0, scroll: box?.scrollHeight ?? 0,
        heatTop: window.app.graph.getNodeById(+h).pos[1] };
    }, [ATTN, HEAT]);
    r.before = before;
    r.after = now;
    r.grown = now.h - before;
    await focusNode(ATTN);
    const rects = await nodeRects(page);
    const pair = rects.filter((x) => [ATTN, HEAT].includes(String(x.id)));
    r.overlaps = overlaps(pair);
    await shot("attention_maps_box");
    check(r.grown <= GAP, `Enfoque Attention Maps grew ${r.grown} px with 13 chips (the templates leave ${GAP} px)`);
    check(r.overlaps.length === 0, `Enfoque Attention Maps covers the node below: ${r.overlaps}`);
    check(now.box <= 50 && now.scroll > now.box, `the chip box is ${now.box} px of ${now.scroll} px (expected it to scroll)`);
    // the wheel scrolls the box (not the canvas) so the last chip can be reached
    const box = page.locator(`.enfoque-maps[data-enfoque-node="${ATTN}"] .enfoque-chips`);
    const bb = await box.boundingBox();
    const scale0 = await page.evaluate(() => window.app.canvas.ds.scale);
    await page.mouse.move(bb.x + bb.width / 2, bb.y + bb.height / 2);
    await page.mouse.wheel(0, 200);
    await page.waitForTimeout(200);
    r.scrolled = await box.evaluate((e) => e.scrollTop);
    const scale1 = await page.evaluate(() => window.app.canvas.ds.scale);
    check(r.scrolled > 0 && scale1 === scale0, `the wheel on the chip box: scrollTop ${r.scrolled}, zoom ${scale0} -> ${scale1}`);
    const last = box.locator(".enfoque-chip").last();
    const lb = await last.boundingBox();
    const vb = await box.boundingBox();
    check(lb && lb.y >= vb.y - 1 && lb.y + lb.height <= vb.y + vb.height + 1, "the last chip cannot be scrolled to");
    await page.mouse.move(...AWAY);
  });

  await item("repeated_words", async (r) => {
    await focusNode(HEAT);
    const root = page.locator(`.enfoque-maps[data-enfoque-node="${HEAT}"]`);
    const chips = root.locator(".enfoque-chip");
    await chips.first().waitFor({ state: "visible" });
    const words = await chips.evaluateAll((els) => els.map((e) => e.dataset.word));
    check(JSON.stringify(words) === JSON.stringify(WORDS), `one chip per position expected, got ${words}`);
    const second = WORDS.indexOf("a", 1); // the second "a"
    await chips.nth(second).hover();
    await page.waitForTimeout(300);
    const shownSrc = await root.locator(".enfoque-view img").getAttribute("src");
    r.second_a = { shown: filename(shownSrc), expected: out.heat.enfoque_word_images[second].filename,
      first: out.heat.enfoque_word_images[0].filename };
    r.caption = await root.locator(".enfoque-caption").textContent();
    check(r.second_a.shown === r.second_a.expected,
      `hovering the second "a" shows ${r.second_a.shown}, not its own map ${r.second_a.expected}`);
    const share = (100 * out.heat.enfoque_shares[0][second]).toFixed(1);
    check(r.caption.includes(`${share}%`), `the caption '${r.caption}' does not give the second "a"'s share ${share}%`);
    await shot("repeated_words_hover");
    // clicking one "on" pins that one only
    const on2 = WORDS.indexOf("on", WORDS.indexOf("on") + 1);
    await chips.nth(on2).click();
    await page.mouse.move(...AWAY);
    const after = await chipsOf(HEAT);
    r.pinned = after.pinned;
    r.pin = await page.evaluate((id) => window.app.graph.getNodeById(+id).properties.enfoque_pinned, HEAT);
    check(JSON.stringify(after.pinned) === JSON.stringify([on2]), `clicking the second "on" pinned chips ${after.pinned}`);
    check(filename(after.src) === out.heat.enfoque_word_images[on2].filename, "the pinned second 'on' is not the one shown");
    check(r.pin === "on#2", `the pin is saved as ${r.pin}`);
    await chips.nth(on2).click(); // unpin
    // Attention Maps' floating view too
    await focusNode(ATTN);
    const achips = page.locator(`.enfoque-maps[data-enfoque-node="${ATTN}"] .enfoque-chip`);
    await achips.nth(second).hover();
    const floating = page.locator(`.enfoque-view[data-enfoque-node="${ATTN}"]`);
    await floating.waitFor({ state: "visible" });
    r.attn_second_a = filename(await floating.locator("img").getAttribute("src"));
    check(r.attn_second_a === out.attn.enfoque_word_images[second].filename,
      `Attention Maps' second "a" shows ${r.attn_second_a}`);
    await page.mouse.move(...AWAY);
  });

  await item("pointing", async (r) => {
    await focusNode(HEAT);
    const root = page.locator(`.enfoque-maps[data-enfoque-node="${HEAT}"]`);
    await page.mouse.move(...AWAY);
    // the middle of the panel of "circle" (word 2) in the panel grid
    const target = await page.evaluate((id) => {
      const node = window.app.graph.getNodeById(+id);
      const p = node.properties.enfoque_output.panels;
      const img = document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-view img`);
      const rect = img.getBoundingClientRect();
      const scale = Math.min(rect.width / img.naturalWidth, rect.height / img.naturalHeight);
      const ox = rect.left + (rect.width - img.naturalWidth * scale) / 2;
      const oy = rect.top + (rect.height - img.naturalHeight * scale) / 2;
      const k = 2;
      const x = (k % p.columns) * (p.cell_w + p.gap) + p.map_w * 0.3;
      const y = p.top + Math.floor(k / p.columns) * (p.cell_h + p.gap) + p.map_h * 0.6;
      return { x: ox + x * scale, y: oy + y * scale, panels: p };
    }, HEAT);
    r.panels = target.panels;
    await page.mouse.move(target.x, target.y, { steps: 3 });
    const readout = root.locator(".enfoque-readout");
    await readout.waitFor({ state: "visible", timeout: 5000 });
    const read = () =>
      readout.evaluate((e) => ({
        heads: [...e.querySelectorAll(".enfoque-readout-col")].map((c) => c.querySelector(".enfoque-readout-head")?.textContent),
        cols: [...e.querySelectorAll(".enfoque-readout-col")].map((c) =>
          [...c.querySelectorAll(".enfoque-rank")].map((x) => ({ index: +x.dataset.index, word: x.dataset.word,
            value: +x.dataset.value, share: +x.dataset.share, here: x.classList.contains("enfoque-here") }))),
      }));
    const hovered = await read();
    r.hovered = hovered;
    const rows = hovered.cols[0] ?? [];
    check(rows.length >= 5, `the readout lists ${rows.length} words`);
    check(rows.every((x, i) => i === 0 || rows[i - 1].value >= x.value), "the words are not ranked by their value");
    check(rows.some((x) => x.here && x.word === "circle"), "the word of the panel under the cursor is not marked");
    check(/cell (\d+), (\d+) of (\d+)×(\d+)/.test(hovered.heads[0] ?? ""), `no cell in '${hovered.heads[0]}'`);
    const [, gx, gy, gw, gh] = /cell (\d+), (\d+) of (\d+)×(\d+)/.exec(hovered.heads[0]).map(Number);
    r.cell = { gx, gy, gw, gh };
    check(hovered.cols.length === 2 && /negative/.test(hovered.heads[1] ?? ""), `no negative prompt column: ${hovered.heads}`);
    check(JSON.stringify(hovered.cols[1].map((x) => x.word).sort()) === JSON.stringify(["blurry", "dark"]),
      `the negative column lists ${hovered.cols[1].map((x) => x.word)}`);
    await shot("pointing_heatmaps");
    // a click pins the pixel: the chips show the shares there
    const before = (await chipsOf(HEAT)).values;
    await page.mouse.click(target.x, target.y);
    await page.mouse.move(...AWAY);
    await page.waitForTimeout(200);
    const pinned = await chipsOf(HEAT);
    r.pixel = await page.evaluate((id) => window.app.graph.getNodeById(+id).properties.enfoque_pixel ?? null, HEAT);
    check(r.pixel && r.pixel.x > 0 && r.pixel.y > 0, `no pixel pinned: ${JSON.stringify(r.pixel)}`);
    check(await readout.isVisible(), "the pinned pixel's readout is not shown");
    check(JSON.stringify(pinned.values) !== JSON.stringify(before), "the chips do not show the shares at the pinned pixel");
    r.tag = await root.locator(".enfoque-pixel-tag").textContent();
    const saved = await page.evaluate((id) =>
      JSON.parse(JSON.stringify(window.app.graph.serialize())).nodes.find((n) => String(n.id) === id).properties.enfoque_pixel,
    HEAT);
    check(JSON.stringify(saved) === JSON.stringify(r.pixel), `the serialised workflow has pixel ${JSON.stringify(saved)}`);
    await shot("pointing_pinned");
    // a pinned word's own map can be pointed at too
    await root.locator(".enfoque-chip").nth(1).click();
    const img = await root.locator(".enfoque-view img").boundingBox();
    await page.mouse.move(img.x + img.width / 2, img.y + img.height / 2, { steps: 2 });
    await page.waitForTimeout(200);
    const onWord = await read();
    check(onWord.cols[0]?.some((x) => x.here && x.word === "red"), `pointing at 'red's own map: ${JSON.stringify(onWord.cols[0])}`);
    await root.locator(".enfoque-chip").nth(1).click(); // unpin
    await page.mouse.move(...AWAY);
    // Attention Maps: point at the floating view
    await focusNode(ATTN);
    const achip = page.locator(`.enfoque-maps[data-enfoque-node="${ATTN}"] .enfoque-chip`).nth(2);
    await achip.hover();
    const floating = page.locator(`.enfoque-view[data-enfoque-node="${ATTN}"]`);
    await floating.waitFor({ state: "visible" });
    const fb = await floating.locator(".enfoque-pic").boundingBox();
    await page.mouse.move(fb.x + fb.width * 0.5, fb.y + fb.height * 0.5, { steps: 4 });
    await page.waitForTimeout(200);
    check(await floating.isVisible(), "the floating view went away when the pointer moved onto it");
    const fr = floating.locator(".enfoque-readout");
    check(await fr.isVisible(), "no readout in Attention Maps' floating view");
    r.floating = await fr.evaluate((e) => [...e.querySelectorAll(".enfoque-readout-col")].map((c) =>
      [...c.querySelectorAll(".enfoque-rank")].map((x) => x.dataset.word)));
    check(r.floating.length === 2 && r.floating[0].length >= 5, `Attention Maps' readout: ${JSON.stringify(r.floating)}`);
    await shot("pointing_attention_maps");
    await page.mouse.move(...AWAY);
    // the pin comes back with the page
    await reloadPage();
    await focusNode(HEAT);
    const back = await page.evaluate((id) => ({
      pixel: window.app.graph.getNodeById(+id).properties.enfoque_pixel ?? null,
      tag: document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-pixel-tag`)?.textContent ?? null,
      readout: !document.querySelector(`.enfoque-maps[data-enfoque-node="${id}"] .enfoque-readout`)?.hidden,
    }), HEAT);
    r.after_reload = back;
    check(JSON.stringify(back.pixel) === JSON.stringify(r.pixel) && back.tag && back.readout,
      `after a page reload the pinned pixel is ${JSON.stringify(back)}`);
    // the values the readout gave for the hovered pixel, for pytest to compare with the saved maps
    r.values = rows.map((x) => ({ index: x.index, word: x.word, value: x.value }));
    await page.evaluate((id) => {
      const n = window.app.graph.getNodeById(+id);
      delete n.properties.enfoque_pixel;
    }, HEAT);
  });

  await item("cached", async (r) => {
    // the same graph as a fresh copy (no kept chips), run again: every node comes from the cache
    await loadWorkflow(workflow);
    const empty = await chipsOf(ATTN);
    check(empty.words.length === 0, `a fresh copy shows chips ${empty.words}`);
    await run("cached run");
    r.cached = await page.evaluate(() => window.__enfoque.cached);
    check(r.cached.includes(String(ATTN)), `Attention Maps was not taken from the cache: cached ${r.cached}`);
    await page.waitForTimeout(300);
    r.attn = (await chipsOf(ATTN)).words;
    r.heat = (await chipsOf(HEAT)).words;
    check(JSON.stringify(r.attn) === JSON.stringify(WORDS), `after a cached run Attention Maps shows ${JSON.stringify(r.attn)}`);
    check(JSON.stringify(r.heat) === JSON.stringify(WORDS), `after a cached run Heatmaps shows ${JSON.stringify(r.heat)}`);
  });

  await item("failed_run", async (r) => {
    // a change the workflow remembers while the chips show (a pin), then a run that fails
    await focusNode(HEAT);
    await page.locator(`.enfoque-maps[data-enfoque-node="${HEAT}"] .enfoque-chip`).nth(1).click();
    await page.mouse.move(...AWAY);
    await setWidget(ATTN, "words", "purple");
    const errors = await run("failing run", true);
    check(errors.length === 1, `the run with a wrong word did not fail: ${JSON.stringify(errors).slice(0, 300)}`);
    // no key or click after it (either makes the frontend look for changes): the clearing itself must count
    await page.waitForTimeout(300);
    const cleared = await chipsOf(HEAT);
    check(cleared.words.length === 0, `after the failed run Heatmaps shows ${cleared.words}`);
    await reloadPage();
    const heat = await chipsOf(HEAT);
    const attn = await chipsOf(ATTN);
    r.after_reload = { heat: heat.words, attn: attn.words };
    check(heat.words.length === 0 && attn.words.length === 0,
      `after the failed run and a page reload, stale chips: ${JSON.stringify(r.after_reload)}`);
    await setWidget(ATTN, "words", "");
  });

  await item("frames", async (r) => {
    await setWidget(ATTN, "words", "");
    await setWidget(HEAT, "over", "steps");
    await page.evaluate((id) => delete window.app.graph.getNodeById(+id).properties.enfoque_pinned, HEAT);
    await run("over steps");
    const heatOut = await page.evaluate((id) => window.__enfoque.executed[id], HEAT);
    check(heatOut?.enfoque_frames?.length === 3, `expected 3 frames, got ${heatOut?.enfoque_frames?.length}`);
    r.captions = heatOut.enfoque_frames.map((f) => f.caption);
    await focusNode(HEAT);
    const root = page.locator(`.enfoque-maps[data-enfoque-node="${HEAT}"]`);
    const bar = root.locator(".enfoque-frames");
    await bar.waitFor({ state: "visible", timeout: 5000 });
    const state = async () => ({ label: await bar.locator(".enfoque-frame-label").textContent(), ...(await chipsOf(HEAT)) });
    const pct = (x) => `${Math.round(100 * x)}%`;
    const first = await state();
    r.first = { label: first.label, values: first.values };
    check(/\(1\/3\)/.test(first.label) && filename(first.src) === heatOut.images[0].filename, `frame 1: ${JSON.stringify(first)}`);
    check(JSON.stringify(first.values) === JSON.stringify(heatOut.enfoque_frames[0].shares.map(pct)),
      `frame 1's chips show ${first.values}, not its shares`);
    await bar.locator(".enfoque-frame-next").click();
    await page.waitForTimeout(200);
    const second = await state();
    r.second = { label: second.label, values: second.values };
    check(/\(2\/3\)/.test(second.label) && filename(second.src) === heatOut.images[1].filename, `frame 2: ${JSON.stringify(second)}`);
    check(JSON.stringify(second.values) === JSON.stringify(heatOut.enfoque_frames[1].shares.map(pct)),
      `frame 2's chips show ${second.values}, not its shares ${heatOut.enfoque_frames[1].shares.map(pct)}`);
    await root.locator(".enfoque-chip").nth(2).hover();
    await page.waitForTimeout(200);
    const hovered = filename(await root.locator(".enfoque-view img").getAttribute("src"));
    check(hovered === heatOut.enfoque_frames[1].word_images[2].filename, `hovering 'circle' on frame 2 shows ${hovered}`);
    await page.mouse.move(...AWAY);
    // the slider walks them too
    await root.locator(".enfoque-frame-slider").evaluate((e) => {
      e.value = "2";
      e.dispatchEvent(new Event("input", { bubbles: true }));
    });
    const third = await state();
    check(/\(3\/3\)/.test(third.label) && filename(third.src) === heatOut.images[2].filename, `frame 3: ${JSON.stringify(third)}`);
    await bar.locator(".enfoque-frame-prev").click();
    await shot("frames");
    await setWidget(HEAT, "over", "mean");
  });

  await item("stale_notice", async (r) => {
    await setWidget(HEAT, "over", "mean");
    await setWidget(PATCH, "blocks", "all");
    const notice = () =>
      page.evaluate((id) => document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`)?.textContent ?? null, PATCH);
    await setWidget(PATCH, "reweight", "off");
    await setWidget(TEXT, "text", "a (red:1.5) circle on the left and a blue square on the right");
    await run("reweight off");
    await page.waitForFunction((id) => document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`), PATCH);
    r.notice = await notice();
    check(/reweight is off/.test(r.notice ?? ""), `no reweight notice: ${r.notice}`);
    // reweight back on, and a run that fails before the sampler (blocks out of range)
    await setWidget(PATCH, "reweight", "bias");
    await setWidget(PATCH, "blocks", "99");
    await focusNode(PATCH);
    const errors = await run("failing early", true);
    await page.keyboard.press("Escape");
    check(errors.length === 1 && /blocks/.test(errors[0].exception_message ?? ""), `the run did not fail early: ${JSON.stringify(errors).slice(0, 300)}`);
    await page.waitForTimeout(300);
    r.after = await notice();
    await shot("stale_notice");
    check(r.after === null, `the notice stays: ${r.after}`);
    await setWidget(PATCH, "blocks", "all");
    await setWidget(TEXT, "text", PROMPT);
  });

  await item("mask_notice", async (r) => {
    await setWidget(PATCH, "reweight", "bias");
    await setWidget(PATCH, "blocks", "all");
    await setWidget(TEXT, "text", "a (red:0) circle on the left and a blue square on the right");
    await setWidget(MASK, "words", "red");
    await run("red weighted 0");
    await page.waitForFunction((id) => document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`), MASK, { timeout: 5000 })
      .catch(() => {});
    r.notice = await page.evaluate((id) => document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`)?.textContent ?? null, MASK);
    await focusNode(MASK);
    await shot("mask_notice");
    check(/'red' gets no attention anywhere/.test(r.notice ?? "") && /weighted 0/.test(r.notice), `Maps To Mask says: ${r.notice}`);
    // a word with attention: the notice goes
    await setWidget(MASK, "words", "circle");
    await run("circle");
    await page.waitForTimeout(300);
    r.after = await page.evaluate((id) => document.querySelector(`.enfoque-notice[data-enfoque-node="${id}"]`)?.textContent ?? null, MASK);
    check(r.after === null, `the notice stays for a word with attention: ${r.after}`);
    await setWidget(TEXT, "text", PROMPT);
  });

  // an Enfoque Token Weights node on the prompt (not wired to the sampler: its chips are what is tested)
  const twId = await page.evaluate(([textId, heatId]) => {
    const { app } = window;
    const enc = app.graph.getNodeById(+textId);
    const heat = app.graph.getNodeById(+heatId);
    const tw = window.LiteGraph.createNode("EnfoqueTokenWeights");
    tw.pos = [heat.pos[0] + heat.size[0] + 60, heat.pos[1]];
    app.graph.add(tw);
    tw.setSize([520, 260]);
    enc.connect(0, tw, 0);
    return String(tw.id);
  }, [TEXT, HEAT]);
  const twRoot = page.locator(`.enfoque-weights[data-enfoque-node="${twId}"]`);
  const weights = (value) => setWidget(twId, "weights", value);
  const twChips = () =>
    twRoot.locator(".enfoque-chip").evaluateAll((els) =>
      els.map((e) => ({ word: e.dataset.word, weight: e.dataset.weight, invalid: e.classList.contains("enfoque-invalid"),
        val: e.querySelector(".enfoque-val")?.textContent })));
  const settle = () => page.evaluate(() => window.app.canvas.setDirty(true, true)).then(() => page.waitForTimeout(300));

  await item("bad_weights", async (r) => {
    await focusNode(twId);
    await twRoot.locator(".enfoque-chip").first().waitFor({ state: "visible" });
    await weights("red:-1, cat:abc, purple:2, blue:1.5");
    await settle();
    const chips = await twChips();
    r.chips = chips;
    r.errors = await twRoot.locator(".enfoque-error").evaluateAll((els) => els.map((e) => e.textContent));
    await shot("bad_weights");
    const red = chips.find((c) => c.word === "red");
    check(red?.invalid && red.val === "-1.00", `'red' at -1 is not shown as invalid: ${JSON.stringify(red)}`);
    check(!chips.find((c) => c.word === "blue").invalid, "'blue' at 1.5 is shown as invalid");
    check(r.errors.some((e) => /cat:abc/.test(e)) && r.errors.some((e) => /purple/.test(e) && /not a word/.test(e))
      && r.errors.some((e) => /negative/.test(e)), `the errors shown: ${JSON.stringify(r.errors)}`);
    const color = await twRoot.locator(".enfoque-error").first().evaluate((e) => getComputedStyle(e).color);
    r.error_colour = color;
    check(/rgb\(255, 1[0-9]{2}, 1[0-9]{2}\)/.test(color), `the errors are not red: ${color}`);
    // fixing them clears the red
    await weights("blue:1.5");
    await settle();
    check((await twChips()).every((c) => !c.invalid) && (await twRoot.locator(".enfoque-error").count()) === 0,
      "fixed weights still show in red");
  });

  await item("weights_per_position", async (r) => {
    await setWidget(TEXT, "text", "a red circle on the left and a red square on the right");
    await weights("");
    const shownWords = () =>
      page.evaluate((id) => {
        window.app.canvas.setDirty(true, true); // the node reads its prompt when it is drawn
        return [...document.querySelectorAll(`.enfoque-weights[data-enfoque-node="${id}"] .enfoque-chip`)].map((e) => e.dataset.word);
      }, twId);
    const want = "a red circle on the left and a red square on the right".split(" ");
    for (let i = 0; i < 40 && JSON.stringify(await shownWords()) !== JSON.stringify(want); i++) await page.waitForTimeout(250);
    r.words = await shownWords();
    check(JSON.stringify(r.words) === JSON.stringify(want), `one chip per position expected, got ${r.words}`);
    const show = async (text) => {
      await weights(text);
      await settle();
      return (await twChips()).map((c) => c.weight);
    };
    r.red = await show("Red:1.5");
    check(r.red[1] === "1.5" && r.red[8] === "1.5" && r.red.filter((x) => x === "1.5").length === 2, `'Red:1.5' shows ${r.red}`);
    r.a2 = await show("a#2:0.5");
    check(r.a2[7] === "0.5" && r.a2[0] === "1" && r.a2.filter((x) => x === "0.5").length === 1, `'a#2:0.5' shows ${r.a2}`);
    r.phrase = await show("red square:2");
    check(r.phrase[8] === "2" && r.phrase[9] === "2" && r.phrase[1] === "1", `'red square:2' shows ${r.phrase}`);
    await weights("");
    await settle();
    const chip = twRoot.locator(".enfoque-chip").nth(7); // the second "a"
    await chip.hover();
    await page.mouse.wheel(0, -100);
    await page.waitForTimeout(150);
    r.wheel = await page.evaluate((id) => window.app.graph.getNodeById(+id).widgets.find((w) => w.name === "weights").value, twId);
    check(r.wheel === "a#2:1.05", `the wheel on the second 'a' wrote '${r.wheel}'`);
    // on a word that is there once, its plain spelling
    await twRoot.locator(".enfoque-chip").nth(2).hover();
    await page.mouse.wheel(0, 100);
    await page.waitForTimeout(150);
    r.wheel2 = await page.evaluate((id) => window.app.graph.getNodeById(+id).widgets.find((w) => w.name === "weights").value, twId);
    check(r.wheel2 === "a#2:1.05, circle:0.95", `then the wheel on 'circle' wrote '${r.wheel2}'`);
    // resetting a chip that a broader entry also weighs keeps it at 1
    await weights("a:1.5");
    await settle();
    await twRoot.locator(".enfoque-chip").nth(7).dblclick();
    r.reset = await page.evaluate((id) => window.app.graph.getNodeById(+id).widgets.find((w) => w.name === "weights").value, twId);
    check(r.reset === "a:1.5, a#2:1", `double-click on the second 'a' under 'a:1.5' wrote '${r.reset}'`);
    await shot("weights_per_position");
    await page.mouse.move(...AWAY);
    await setWidget(TEXT, "text", PROMPT);
  });

  await item("socket_colours", async (r) => {
    // a Patch Model and a Patch CLIP side by side, nothing connected: only their probe types differ
    const ids = await page.evaluate(() => {
      const { app } = window;
      const right = Math.max(...app.graph.nodes.map((n) => n.pos[0] + n.size[0]));
      const model = window.LiteGraph.createNode("EnfoquePatchModel");
      const clip = window.LiteGraph.createNode("EnfoquePatchCLIP");
      model.pos = [right + 200, 0];
      clip.pos = [right + 200, model.size[1] + 80];
      app.graph.add(model);
      app.graph.add(clip);
      return { model: String(model.id), clip: String(clip.id) };
    });
    await focusNode(ids.model, 500, 250);
    await page.waitForTimeout(400);
    // the colour drawn at the middle of each probe output's dot
    const sample = await page.evaluate(([modelId, clipId]) => {
      const { app } = window;
      app.canvas.draw(true, true);
      const canvas = app.canvas.canvas;
      const g = canvas.getContext("2d");
      const ratio = canvas.width / canvas.getBoundingClientRect().width;
      const at = (id) => {
        const n = app.graph.getNodeById(+id);
        const [x, y] = n.getConnectionPos(false, 1);
        const { scale, offset } = app.canvas.ds;
        const cx = Math.round((x + offset[0]) * scale * ratio);
        const cy = Math.round((y + offset[1]) * scale * ratio);
        const d = g.getImageData(cx, cy, 1, 1).data;
        return [d[0], d[1], d[2]];
      };
      return { model: at(modelId), clip: at(clipId), byType: { ...app.canvas.default_connection_color_byType } };
    }, [ids.model, ids.clip]);
    r.model = sample.model;
    r.clip = sample.clip;
    r.types = { model: sample.byType.ENFOQUE_MODEL_PROBE, clip: sample.byType.ENFOQUE_CLIP_PROBE };
    await shot("socket_colours");
    r.distance = Math.hypot(...r.model.map((v, i) => v - r.clip[i]));
    check(r.distance > 60, `the probe sockets are drawn in about the same colour: ${r.model} and ${r.clip}`);
    await page.evaluate((ids) => {
      for (const id of Object.values(ids)) window.app.graph.remove(window.app.graph.getNodeById(+id));
    }, ids);
  });

  await item("word_rule", async (r) => {
    const has = await page.evaluate(() =>
      typeof window.app.extensions.find((e) => e.name === "enfoque.WordChips")?.wordRule?.selectWords === "function");
    check(has, "the extension has no word rule (wordRule.selectWords)");
    r.results = await page.evaluate((cases) => {
      const ext = window.app.extensions.find((e) => e.name === "enfoque.WordChips");
      return cases.map(({ labels, query }) => {
        try {
          return { picks: ext.wordRule.selectWords(labels, query).map((p) => p.indices) };
        } catch (e) {
          return { error: e.item ?? String(e) };
        }
      });
    }, cases);
  });

  await item("server_names", async (r) => {
    check(legacy, "no --legacy workflow given");
    // the server's names, changed on the way: the notice must say what the server says
    await page.route("**/enfoque/info", async (route) => {
      const res = await route.fetch();
      const body = await res.json();
      body.probe_sockets = { ENFOQUE_MODEL_PROBE: "Model Patcher (from the server)", ENFOQUE_CLIP_PROBE: "CLIP Patcher (from the server)" };
      await route.fulfill({ response: res, json: body });
    });
    await reloadPage();
    const { wrong, attnNode } = withClipProbeOnAttentionMaps(legacy);
    r.notice = await page.evaluate(async ([wf, attnId]) => {
      const { app } = window;
      app.graph.clear();
      await app.loadGraphData(wf, true, true, "enfoque_v0.1_wrong.json");
      for (let i = 0; i < 20 && !document.querySelector(`.enfoque-notice[data-enfoque-node="${attnId}"]`); i++) {
        await new Promise((res) => setTimeout(res, 100));
      }
      return document.querySelector(`.enfoque-notice[data-enfoque-node="${attnId}"]`)?.textContent ?? null;
    }, [wrong, String(attnNode.id)]);
    await page.unroute("**/enfoque/info");
    check(/comes from CLIP Patcher \(from the server\), but it needs the probe of Model Patcher \(from the server\)/.test(r.notice ?? ""),
      `the notice does not use the server's names: ${r.notice}`);
  });

  // the script ran to its end: ok; each item says whether it passed (pytest checks them one by one)
  result.failed = Object.entries(result.items).filter(([, v]) => !v.ok).map(([k]) => k);
  check(result.console_errors.length === 0, `errors in the page: ${result.console_errors.join(" | ")}`);
  result.ok = true;
  s.mark("done");
  fs.writeFileSync(path.join(outDir, "everyday_result.json"), JSON.stringify(result, null, 1));
  await finish(result, s, page, outDir);
} catch (e) {
  await finish(result, s, page, outDir, e);
} finally {
  await close?.();
}
