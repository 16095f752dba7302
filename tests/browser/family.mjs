// Browser check: the EnfoqueTokenWeights chips ask POST /enfoque/tokenize for the model family the graph
// names upstream (a CLIP loader's type, or a node only one family uses), by the server's family table (GET
// /enfoque/info). Run by tests/test_words.py:
//
//   node family.mjs --url http://127.0.0.1:PORT [--chromium PATH]
//
// Loads small API-format graphs (loader -> text encode -> EnfoqueTokenWeights; nothing is queued), records
// the JSON body of each tokenize request, and prints one line "RESULT {json}":
// {"ok": true, "cases": {name: body sent, or null for none}} or {"ok": false, "step": ..., "error": ...}.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = args.url;
const executablePath = args.chromium || "/usr/bin/chromium";

const encode = (text, clip) => ({ class_type: "CLIPTextEncode", inputs: { text, clip } });
const weights = { class_type: "EnfoqueTokenWeights", inputs: { conditioning: ["2", 0], weights: "" } };
const CASES = {
  flux: {
    1: { class_type: "DualCLIPLoader", inputs: { clip_name1: "a.safetensors", clip_name2: "b.safetensors", type: "flux" } },
    2: encode("a flux prompt", ["1", 0]),
    3: weights,
  },
  sd15: {
    1: { class_type: "CLIPLoader", inputs: { clip_name: "a.safetensors", type: "stable_diffusion" } },
    2: encode("an sd15 prompt", ["1", 0]),
    3: weights,
  },
  sd3_encode: {
    1: { class_type: "TripleCLIPLoader", inputs: { clip_name1: "a", clip_name2: "b", clip_name3: "c" } },
    2: { class_type: "CLIPTextEncodeSD3",
      inputs: { clip: ["1", 0], clip_l: "an sd3 prompt", clip_g: "an sd3 prompt", t5xxl: "an sd3 prompt",
        empty_padding: "none" } },
    3: weights,
  },
  // every CLIP loader type of the support table (the server's table, GET /enfoque/info)
  ...Object.fromEntries(
    ["qwen_image", "flux2", "chroma", "lumina2", "wan"].map((type) => [
      `loader_${type}`,
      {
        1: { class_type: "CLIPLoader", inputs: { clip_name: "a.safetensors", type } },
        2: encode(`a ${type} prompt`, ["1", 0]),
        3: weights,
      },
    ]),
  ),
  qwen_edit: {
    1: { class_type: "CLIPLoader", inputs: { clip_name: "a.safetensors", type: "stable_diffusion" } },
    2: { class_type: "TextEncodeQwenImageEdit", inputs: { clip: ["1", 0], prompt: "a qwen edit prompt" } },
    3: weights,
  },
  checkpoint: {
    1: { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "model.safetensors" } },
    2: encode("a checkpoint prompt", ["1", 1]),
    3: weights,
  },
};

const result = { ok: false, step: "start", cases: {} };
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "enfoque-chromium-"));
let context;
try {
  result.step = "launch";
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(30000);
  const bodies = [];
  page.on("request", (req) => {
    if (req.url().includes("/enfoque/tokenize") && req.method() === "POST") bodies.push(JSON.parse(req.postData()));
  });
  result.step = "settings";
  await fetch(`${url}/api/settings/Comfy.TutorialCompleted`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: "true",
  });
  result.step = "load page";
  await page.goto(url);
  await page.waitForFunction(
    () => window.app?.graph && window.app.extensions?.some((e) => e.name === "enfoque.WordChips"),
    null,
    { timeout: 60000 },
  );
  for (const [name, graph] of Object.entries(CASES)) {
    result.step = `case ${name}`;
    const text = graph[2].inputs.text ?? graph[2].inputs.clip_l ?? graph[2].inputs.prompt;
    await page.evaluate(async (wf) => {
      await window.app.loadApiJson(wf, "enfoque_family.json");
      const node = window.app.graph.getNodeById(3);
      window.app.canvas.ds.scale = 1;
      window.app.canvas.ds.offset = [200 - node.pos[0], 200 - node.pos[1]];
      window.app.canvas.setDirty(true, true);
    }, graph);
    const deadline = Date.now() + 20000;
    while (!bodies.some((b) => b.text === text) && Date.now() < deadline) {
      await page.evaluate(() => window.app.canvas.setDirty(true, true));
      await page.waitForTimeout(200);
    }
    const sent = bodies.filter((b) => b.text === text);
    result.cases[name] = sent.length ? sent[sent.length - 1] : null; // null: no tokenize request at all
  }
  result.ok = true;
} catch (e) {
  result.error = String(e?.stack ?? e);
} finally {
  await context?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
  console.log(`RESULT ${JSON.stringify(result)}`);
}
