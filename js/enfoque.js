// Enfoque frontend: word chips on the attention-map nodes and on EnfoqueTokenWeights,
// notices on nodes, and the probe socket types of older workflows.
//
// Loaded by ComfyUI through WEB_DIRECTORY = "./js" (served as /extensions/<pack>/enfoque.js).
// Uses only the public frontend modules app.js and api.js and the node hooks
// of app.registerExtension; every prototype hook it sets calls the previous one.
//
// EnfoqueHeatmaps / EnfoqueAttentionMaps: after a run the node shows the
//   prompt's words as chips (from the node's `ui` output: enfoque_words,
//   enfoque_shares, enfoque_word_images, images). Hovering a chip shows that
//   word's heatmap: inside Enfoque Heatmaps (under the chips, where its picture
//   is), or in a small floating view next to the chip on Enfoque Attention Maps,
//   which keeps no picture area of its own. Clicking pins a word (click again to
//   unpin); the pin is kept in node.properties.enfoque_pinned. The last output's
//   chips are kept in node.properties.enfoque_output, so a reloaded workflow shows
//   them again; a node with no output shrinks to its widgets. When a run fails,
//   the chips of every map node that did not run again in it are cleared.
// EnfoqueTokenWeights: the words of the prompt feeding its conditioning
//   (found through the graph's links, split by POST /enfoque/tokenize) as chips
//   with a weight each; mouse wheel (shift: bigger steps) or vertical drag
//   changes a weight, double-click resets it to 1. Every change is written to
//   the node's `weights` widget as "word:1.25, other:0.8".
// Notices: the server's "enfoque.notice" message ({node, text}) shows a warning
//   on that node (and a toast); an empty text removes it.
// Probe types: workflows saved before the model and CLIP probes got their own
//   socket types carry "ENFOQUE_PROBE" on their links; on load such a link gets
//   the type of the slots it joins, or, where it joins a CLIP probe to a model
//   probe input (or the reverse), a notice on the node that says what to connect.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXT = "enfoque.WordChips";
const MAP_NODES = new Set(["EnfoqueAttentionMaps", "EnfoqueHeatmaps"]);
const WEIGHT_NODE = "EnfoqueTokenWeights";
const PIN = "enfoque_pinned";
const LAST_OUTPUT = "enfoque_output";
const NATIVE_PREVIEW = "$$canvas-image-preview";
const NOTICE_EVENT = "enfoque.notice";
const LEGACY_PROBE = "ENFOQUE_PROBE";
const PROBE_TYPES = { ENFOQUE_MODEL_PROBE: "Enfoque Patch Model", ENFOQUE_CLIP_PROBE: "Enfoque Patch CLIP" };
const VIEW_MIN_HEIGHT = 240; // the picture area of Enfoque Heatmaps
const KEPT_WORDS = 128; // chips kept in the workflow for a reload
const MAX_WEIGHT = 10;
const WHEEL_STEP = 0.05;
const WHEEL_STEP_SHIFT = 0.25;
const DRAG_PX_PER_UNIT = 100; // dragging 100 px up adds 1.0
const TEXT_WIDGETS = ["text", "clip_l", "text_l", "clip_g", "text_g", "t5xxl"];
// same grammar as attention/tokens.py parse_word_weights
const WEIGHT_RE = /^\s*(.+?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$/;

const CSS = `
.enfoque-root { display: flex; flex-direction: column; gap: 6px; box-sizing: border-box;
  width: 100%; height: 100%; padding: 4px 2px; font: 12px/1.2 Inter, Arial, sans-serif;
  color: var(--input-text, #ddd); overflow: hidden; }
.enfoque-chips { display: flex; flex-wrap: wrap; gap: 4px; flex: 0 0 auto; max-height: 96px; overflow-y: auto; }
.enfoque-chips:empty { display: none; }
.enfoque-weights .enfoque-chips { max-height: none; flex: 0 1 auto; align-content: flex-start; }
.enfoque-chip { display: inline-flex; align-items: baseline; gap: 5px; padding: 3px 8px; border-radius: 11px;
  border: 1px solid var(--border-color, #4a4a4a); background: var(--comfy-input-bg, #222);
  cursor: pointer; user-select: none; white-space: nowrap; touch-action: none; }
.enfoque-chip:hover, .enfoque-chip.enfoque-hover { border-color: #7fb2ff; background: #2b3a52; }
.enfoque-chip.enfoque-pinned { border-color: #ffcc4d; background: #4a3b12; color: #fff; }
.enfoque-chip .enfoque-val { opacity: 0.65; font-variant-numeric: tabular-nums; font-size: 11px; }
.enfoque-chip.enfoque-up { border-color: #e8894b; background: #4a2a17; }
.enfoque-chip.enfoque-down { border-color: #5f87b5; background: #1b2a3b; }
.enfoque-chip.enfoque-zero { opacity: 0.55; text-decoration: line-through; }
.enfoque-view { position: relative; flex: 1 1 auto; min-height: 0; display: flex; align-items: center;
  justify-content: center; background: rgba(0,0,0,0.25); border-radius: 4px; }
.enfoque-view img { width: 100%; height: 100%; object-fit: contain; display: block; }
.enfoque-view img[src=""], .enfoque-view img:not([src]), .enfoque-view img.enfoque-missing { display: none; }
.enfoque-view.enfoque-float { position: fixed; z-index: 1000; width: 240px; height: 240px; flex: none;
  background: rgba(20,20,20,0.95); border: 1px solid #7fb2ff; pointer-events: none; }
.enfoque-caption { position: absolute; left: 6px; bottom: 4px; padding: 1px 6px; border-radius: 3px;
  background: rgba(0,0,0,0.6); color: #fff; font-size: 11px; pointer-events: none; }
.enfoque-caption:empty { display: none; }
.enfoque-hint { opacity: 0.6; font-size: 11px; padding: 2px; }
.enfoque-hint:empty { display: none; }
.enfoque-notice { box-sizing: border-box; width: 100%; height: 100%; padding: 4px 6px; border-radius: 4px;
  border: 1px solid #d9a520; background: #3d3012; color: #ffe6a3; font: 11px/1.3 Inter, Arial, sans-serif;
  overflow: auto; }
.enfoque-notice-text { display: block; }
`;

function addStyle() {
  if (document.getElementById("enfoque-style")) return;
  const style = document.createElement("style");
  style.id = "enfoque-style";
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}

/** Wrap nodeType.prototype[name] so that the previous handler runs first. */
function chain(proto, name, after) {
  const previous = proto[name];
  proto[name] = function (...args) {
    const result = previous?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

function viewUrl(entry) {
  if (!entry?.filename) return "";
  const q = new URLSearchParams({
    filename: entry.filename,
    type: entry.type || "temp",
    subfolder: entry.subfolder || "",
  });
  return api.apiURL(`/view?${q}`);
}

function redraw(node) {
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

const DOM_MARGIN = 20; // what the frontend keeps around a DOM widget's element (above and below together)
const ROOT_PAD = 8; // .enfoque-root's padding, top and bottom together
const ROOT_GAP = 6; // .enfoque-root's gap between its parts

/** The height a DOM widget needs for `parts` (heights of the root's visible parts, in order). */
function widgetHeight(parts) {
  const shown = parts.filter((h) => h > 0);
  return DOM_MARGIN + ROOT_PAD + shown.reduce((a, b) => a + b, 0) + ROOT_GAP * Math.max(0, shown.length - 1);
}

/**
 * The height of an element's content, measured only while it is laid out at its width (a widget off
 * screen has none, and its chips would stack one per line); else the last such measure, else `guess`.
 */
function laidOutHeight(e, guess) {
  if (e.isConnected && e.clientWidth > 40 && e.getClientRects().length) e.enfoqueHeight = e.scrollHeight;
  return e.enfoqueHeight ?? guess;
}

/** Grow the node to what its widgets need now; with `shrink`, also down to it. */
function fitHeight(node, shrink = false) {
  const min = node.computeSize?.();
  if (!min) return;
  if (node.size[1] < min[1] || (shrink && node.size[1] > min[1])) {
    node.setSize([node.size[0], min[1]]);
    redraw(node);
  }
}

/** Draw the node again when these elements change size (laid out for the first time, new text, wrapping). */
function watchSize(node, ...elements) {
  if (typeof ResizeObserver !== "function") return;
  const observer = new ResizeObserver(() => redraw(node));
  for (const e of elements) observer.observe(e);
}

// ------------------------------------------------------------------ map nodes

function mapsWidget(node) {
  if (node.enfoque) return node.enfoque;
  const floating = node.comfyClass !== "EnfoqueHeatmaps"; // no picture area of its own
  const root = el("div", "enfoque-root enfoque-maps");
  const chips = el("div", "enfoque-chips");
  const hint = el("div", "enfoque-hint", "Run the workflow to see the prompt's words here.");
  const view = el("div", floating ? "enfoque-view enfoque-float" : "enfoque-view");
  const img = el("img");
  img.alt = "";
  img.draggable = false;
  const caption = el("div", "enfoque-caption");
  view.append(img, caption);
  root.append(chips, hint);
  if (floating) {
    view.style.display = "none";
    document.body.append(view);
  } else {
    root.append(view);
  }
  const state = { root, chips, hint, view, img, caption, floating, words: [], shares: [], images: [], base: null,
    hovered: null, anchor: null };
  node.enfoque = state;
  // previews live in ComfyUI's temp folder, which is emptied when the server restarts
  img.addEventListener("error", () => {
    if (!img.getAttribute("src")) return;
    img.classList.add("enfoque-missing");
    caption.textContent = `${caption.textContent || "preview"} (gone from the server; run the workflow again)`;
  });
  img.addEventListener("load", () => img.classList.remove("enfoque-missing"));
  const widget = node.addDOMWidget("enfoque_words", "enfoque-words", root, {
    serialize: false,
    hideOnZoom: true,
    getMinHeight: () =>
      widgetHeight([
        state.hint.textContent ? Math.max(17, laidOutHeight(hint, 17)) : 0,
        state.words.length ? Math.min(96, Math.max(24, laidOutHeight(chips, 26 * Math.ceil(state.words.length / 4)))) : 0,
        !floating && state.words.length && state.base ? VIEW_MIN_HEIGHT : 0,
      ]),
  });
  widget.serialize = false;
  watchSize(node, hint, chips);
  const remove = widget.onRemove;
  widget.onRemove = function (...args) {
    view.remove(); // the floating view lives outside the node
    return remove?.apply(this, args);
  };
  state.widget = widget;
  return state;
}

function showWord(node, word) {
  const s = node.enfoque;
  if (!s) return;
  const i = word == null ? -1 : s.words.indexOf(word);
  let entry = null;
  let label = "";
  if (i >= 0) {
    entry = s.images[i] ?? null;
    const share = s.shares[i];
    label = share == null ? word : `${word}  ${(100 * share).toFixed(1)}%`;
    if (!entry) label += " (no preview for this word)";
  } else if (!s.floating) {
    entry = s.base; // the node's own picture (the Heatmaps panel grid), if any
  }
  const src = viewUrl(entry);
  if (s.img.getAttribute("src") !== src) {
    s.img.classList.remove("enfoque-missing");
    s.img.setAttribute("src", src);
  }
  s.img.dataset.word = i >= 0 ? word : "";
  s.caption.textContent = label;
  if (src && s.img.classList.contains("enfoque-missing")) {
    s.caption.textContent = `${label || "preview"} (gone from the server; run the workflow again)`;
  }
  if (s.floating) {
    // next to the hovered chip, never over it
    const chip = s.hovered != null ? s.anchor : null;
    const box = chip?.getBoundingClientRect();
    s.view.style.display = box && (src || label) ? "" : "none";
    if (box) {
      const left = Math.min(window.innerWidth - 250, box.right + 8);
      const top = Math.max(4, Math.min(window.innerHeight - 250, box.top - 100));
      s.view.style.left = `${Math.max(4, left)}px`;
      s.view.style.top = `${top}px`;
    }
  } else {
    s.view.style.display = s.words.length && (src || label) ? "" : "none";
  }
}

function currentWord(node) {
  const s = node.enfoque;
  if (!s) return null;
  if (s.hovered != null) return s.hovered;
  const pinned = node.properties?.[PIN];
  return s.words.includes(pinned) ? pinned : null;
}

function refreshPins(node) {
  const s = node.enfoque;
  if (!s) return;
  s.root.dataset.enfoqueNode = String(node.id);
  s.view.dataset.enfoqueNode = String(node.id);
  const pinned = node.properties?.[PIN];
  for (const chip of s.chips.children) {
    chip.classList.toggle("enfoque-pinned", chip.dataset.word === pinned);
  }
  showWord(node, currentWord(node));
}

function setPinned(node, word) {
  node.properties = node.properties ?? {};
  const before = node.properties[PIN];
  app.canvas?.emitBeforeChange?.();
  if (word == null || before === word) delete node.properties[PIN];
  else node.properties[PIN] = word;
  app.canvas?.emitAfterChange?.();
  refreshPins(node);
  redraw(node);
}

function renderMapChips(node, hint = "") {
  const s = mapsWidget(node);
  s.root.dataset.enfoqueNode = String(node.id); // ids are assigned after onNodeCreated
  s.chips.replaceChildren();
  s.words.forEach((word, i) => {
    const chip = el("span", "enfoque-chip");
    chip.dataset.word = word;
    chip.title = "Hover to see where this word attends; click to pin it";
    chip.append(el("span", "enfoque-word", word));
    const share = s.shares[i];
    if (share != null) chip.append(el("span", "enfoque-val", `${Math.round(100 * share)}%`));
    chip.addEventListener("pointerenter", () => {
      s.hovered = word;
      s.anchor = chip;
      showWord(node, word);
    });
    chip.addEventListener("pointerleave", () => {
      if (s.hovered === word) s.hovered = null;
      showWord(node, currentWord(node));
    });
    chip.addEventListener("click", (e) => {
      e.stopPropagation();
      setPinned(node, word);
    });
    s.chips.append(chip);
  });
  s.hint.textContent = s.words.length ? "" : hint || "Run the workflow to see the prompt's words here.";
  refreshPins(node);
  fitHeight(node, !s.words.length);
  redraw(node);
}

/** The part of a map node's output the chips need, small enough to keep in the workflow. */
function chipsOutput(output) {
  const words = output.enfoque_words.map(String);
  const shares = Array.isArray(output.enfoque_shares?.[0]) ? output.enfoque_shares[0] : [];
  const images = Array.isArray(output.enfoque_word_images) ? output.enfoque_word_images : [];
  return {
    words: words.slice(0, KEPT_WORDS),
    shares: shares.slice(0, KEPT_WORDS),
    images: images.slice(0, KEPT_WORDS),
    base: Array.isArray(output.images) ? output.images[0] ?? null : null,
  };
}

function applyChips(node, kept) {
  const s = mapsWidget(node);
  const sig = JSON.stringify(kept);
  if (sig === s.sig && s.chips.children.length) return refreshPins(node);
  s.sig = sig;
  s.words = kept.words;
  s.shares = kept.shares;
  s.images = kept.images;
  s.base = kept.base;
  s.hovered = null;
  renderMapChips(node);
}

function applyMapsOutput(node, output) {
  if (!Array.isArray(output?.enfoque_words)) return;
  const kept = chipsOutput(output);
  node.properties = node.properties ?? {};
  node.properties[LAST_OUTPUT] = kept;
  applyChips(node, kept);
}

/** No output to show (a failed run, a workflow without one): no chips, and the node shrinks to its widgets. */
function clearMapChips(node, hint) {
  const s = mapsWidget(node);
  if (node.properties) delete node.properties[LAST_OUTPUT];
  s.sig = null;
  s.words = [];
  s.shares = [];
  s.images = [];
  s.base = null;
  s.hovered = null;
  renderMapChips(node, hint);
}

/** The chips widget shows this node's pictures; drop the canvas preview so they are not drawn twice. */
function hideNativePreview(node) {
  if (!node.enfoque?.words.length || !node.imgs?.length) return;
  node.imgs = undefined;
  const i = node.widgets?.findIndex((w) => w.name === NATIVE_PREVIEW) ?? -1;
  if (i > -1) {
    node.widgets[i].onRemove?.();
    node.widgets.splice(i, 1);
  }
}

function setupMapNode(nodeType) {
  chain(nodeType.prototype, "onNodeCreated", function () {
    mapsWidget(this);
  });
  chain(nodeType.prototype, "onExecuted", function (output) {
    applyMapsOutput(this, output);
  });
  chain(nodeType.prototype, "onConfigure", function () {
    // properties (the pin, the last output) are restored by now; outputs the frontend still holds
    // for this node (same session) come first, then the output kept in the workflow
    const output = app.nodeOutputs?.[String(this.id)];
    const kept = this.properties?.[LAST_OUTPUT];
    if (Array.isArray(output?.enfoque_words)) applyMapsOutput(this, output);
    else if (Array.isArray(kept?.words) && kept.words.length) applyChips(this, kept);
    else clearMapChips(this);
  });
  chain(nodeType.prototype, "onDrawBackground", function () {
    hideNativePreview(this);
    fitHeight(this); // chips laid out while the node was off screen measure only now
  });
  chain(nodeType.prototype, "onRemoved", function () {
    this.enfoque?.view.remove();
  });
}

// which map nodes ran in the current prompt: when it fails, the others show stale chips
const run = { id: null, executed: new Set() };

function onRunFailed(detail) {
  if (detail?.prompt_id && run.id && detail.prompt_id !== run.id) return;
  const where = app.graph?.getNodeById?.(detail?.node_id)?.title ?? detail?.node_type;
  const failed = where ? ` (${where} failed)` : "";
  for (const node of app.graph?.nodes ?? []) {
    if (!MAP_NODES.has(node.comfyClass) || run.executed.has(String(node.id))) continue;
    if (node.enfoque?.words.length || node.properties?.[LAST_OUTPUT]) {
      clearMapChips(node, `The last run did not finish${failed}; run the workflow again to see the words.`);
    }
  }
}

// ---------------------------------------------------------------------- notices

function setNotice(node, text) {
  node.enfoqueNoticeText = text || "";
  let s = node.enfoqueNotice;
  if (!text) {
    if (!s) return;
    const i = node.widgets?.indexOf(s.widget) ?? -1;
    if (i > -1) {
      node.widgets[i].onRemove?.();
      node.widgets.splice(i, 1);
    }
    node.enfoqueNotice = null;
    fitHeight(node, true);
    redraw(node);
    return;
  }
  if (!s) {
    const box = el("div", "enfoque-notice");
    const line = el("span", "enfoque-notice-text");
    box.append(line);
    const widget = node.addDOMWidget("enfoque_notice", "enfoque-notice", box, {
      serialize: false,
      hideOnZoom: false,
      // the text's own height (about 60 characters a line until it is laid out on screen), padding, border
      getMinHeight: () =>
        DOM_MARGIN + 10 + Math.min(110, laidOutHeight(line, 15 * Math.ceil((node.enfoqueNoticeText?.length ?? 0) / 60))),
    });
    widget.serialize = false;
    s = node.enfoqueNotice = { box, line, widget };
    watchSize(node, line);
    const draw = node.onDrawForeground;
    node.onDrawForeground = function (...args) {
      const out = draw?.apply(this, args);
      if (this.enfoqueNotice) fitHeight(this); // measured only now that it is on screen
      return out;
    };
  }
  s.box.dataset.enfoqueNode = String(node.id);
  s.line.enfoqueHeight = undefined; // a new text: measure again
  s.line.textContent = `⚠ ${text}`;
  s.box.title = text;
  fitHeight(node);
  redraw(node);
}

function onNotice({ detail }) {
  const node = app.graph?.getNodeById?.(detail?.node);
  if (!node) return;
  const text = String(detail.text ?? "");
  if (text && text !== node.enfoqueNoticeText) {
    app.extensionManager?.toast?.add?.({ severity: "warn", summary: node.title || "Enfoque", detail: text, life: 8000 });
  }
  setNotice(node, text);
}

// ---------------------------------------------------------- older workflows' probes

function linksOf(graph) {
  const links = graph?.links;
  if (!links) return [];
  return links instanceof Map ? [...links.values()] : Object.values(links).filter(Boolean);
}

/** Links saved with the one probe type of before: give them their slots' type, or say what to connect. */
function migrateProbeLinks(graph) {
  for (const link of linksOf(graph)) {
    if (link?.type !== LEGACY_PROBE) continue;
    const from = graph.getNodeById(link.origin_id)?.outputs?.[link.origin_slot]?.type;
    const target = graph.getNodeById(link.target_id);
    const to = target?.inputs?.[link.target_slot]?.type;
    if (from && from === to) {
      link.type = from;
    } else if (target && PROBE_TYPES[from] && PROBE_TYPES[to]) {
      setNotice(
        target,
        `${target.title}: its probe comes from ${PROBE_TYPES[from]}, but it needs the probe of ${PROBE_TYPES[to]} ` +
          `(a workflow from before the two probes got their own types). Connect the probe output of ${PROBE_TYPES[to]}.`,
      );
    }
  }
}

// ------------------------------------------------------------- token weights

function parseWeights(text) {
  const out = [];
  for (const frag of String(text ?? "").split(",")) {
    const raw = frag.trim();
    if (!raw) continue;
    const m = WEIGHT_RE.exec(frag);
    out.push(m ? { raw, key: m[1], norm: m[1].trim().toLowerCase(), weight: parseFloat(m[2]) } : { raw });
  }
  return out;
}

function formatNumber(x) {
  return String(Number(x.toFixed(2)));
}

/** `text` with `word`'s weight set (weight 1 removes the entry); other entries are kept verbatim. */
function withWeight(text, word, weight) {
  const out = [];
  let found = false;
  for (const e of parseWeights(text)) {
    if (e.norm === word) {
      if (found) continue;
      found = true;
      if (weight !== 1) out.push(`${e.key}:${formatNumber(weight)}`);
    } else {
      out.push(e.raw);
    }
  }
  if (!found && weight !== 1) out.push(`${word}:${formatNumber(weight)}`);
  return out.join(", ");
}

function weightsOf(text) {
  const map = new Map();
  for (const e of parseWeights(text)) if (e.norm != null && !map.has(e.norm)) map.set(e.norm, e.weight);
  return map;
}

/** The prompt text feeding this node's conditioning: follow links up to a text encode. */
function upstreamText(node, depth = 0, seen = new Set()) {
  if (!node || depth > 16 || seen.has(node)) return null;
  seen.add(node);
  if (depth > 0) {
    for (const name of TEXT_WIDGETS) {
      const w = node.widgets?.find((x) => x.name === name);
      if (w && typeof w.value === "string" && w.value.trim()) return w.value;
    }
  }
  const inputs = node.inputs ?? [];
  for (let i = 0; i < inputs.length; i++) {
    const input = inputs[i];
    if (input.link == null) continue;
    const passes = input.type === "CONDITIONING" || input.type === "*" || inputs.length === 1;
    if (!passes) continue;
    const text = upstreamText(node.getInputNode?.(i), depth + 1, seen);
    if (text != null) return text;
  }
  return null;
}

function weightsWidgetOf(node) {
  return node.widgets?.find((w) => w.name === "weights");
}

function weightState(node) {
  if (node.enfoqueWeights) return node.enfoqueWeights;
  const root = el("div", "enfoque-root enfoque-weights");
  const chips = el("div", "enfoque-chips");
  const hint = el("div", "enfoque-hint", "Connect a text encode to see its words.");
  root.append(hint, chips);
  const state = { root, chips, hint, words: [], text: null, pending: null, seq: 0, rendered: null };
  node.enfoqueWeights = state;
  const widget = node.addDOMWidget("enfoque_weight_chips", "enfoque-weights", root, {
    serialize: false,
    hideOnZoom: true,
    getMinHeight: () =>
      Math.min(
        260,
        widgetHeight([Math.max(17, laidOutHeight(hint, 17)), laidOutHeight(chips, 26 * Math.ceil(state.words.length / 5))]),
      ),
  });
  widget.serialize = false;
  state.widget = widget;
  watchSize(node, hint, chips);
  return state;
}

function setWeight(node, word, value) {
  const w = weightsWidgetOf(node);
  if (!w) return;
  const v = Math.min(MAX_WEIGHT, Math.max(0, Math.round(value * 100) / 100));
  const next = withWeight(w.value, word, v);
  if (next === w.value) return;
  w.value = next;
  w.callback?.(next, app.canvas, node);
  updateWeightChips(node);
  redraw(node);
}

function updateWeightChips(node) {
  const s = node.enfoqueWeights;
  const w = weightsWidgetOf(node);
  if (!s || !w) return;
  const weights = weightsOf(w.value);
  for (const chip of s.chips.children) {
    const v = weights.get(chip.dataset.word) ?? 1;
    chip.dataset.weight = formatNumber(v);
    chip.querySelector(".enfoque-val").textContent = v.toFixed(2);
    chip.classList.toggle("enfoque-up", v > 1);
    chip.classList.toggle("enfoque-down", v < 1 && v > 0);
    chip.classList.toggle("enfoque-zero", v === 0);
  }
  s.rendered = w.value;
}

function currentWeight(node, word) {
  return weightsOf(weightsWidgetOf(node)?.value).get(word) ?? 1;
}

function renderWeightChips(node) {
  const s = weightState(node);
  s.chips.replaceChildren();
  for (const word of s.words) {
    const chip = el("span", "enfoque-chip");
    chip.dataset.word = word;
    chip.title = "Wheel or drag up/down to change the weight (shift: bigger steps); double-click resets to 1";
    chip.append(el("span", "enfoque-word", word), el("span", "enfoque-val", "1.00"));
    chip.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        e.stopPropagation();
        const step = e.shiftKey ? WHEEL_STEP_SHIFT : WHEEL_STEP;
        const dir = (e.deltaY || e.deltaX) < 0 ? 1 : -1;
        app.canvas?.emitBeforeChange?.();
        setWeight(node, word, currentWeight(node, word) + dir * step);
        app.canvas?.emitAfterChange?.();
      },
      { passive: false },
    );
    chip.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      e.stopPropagation();
      chip.setPointerCapture?.(e.pointerId);
      const start = currentWeight(node, word);
      const y0 = e.clientY;
      app.canvas?.emitBeforeChange?.();
      const move = (ev) => {
        const units = (y0 - ev.clientY) / DRAG_PX_PER_UNIT;
        setWeight(node, word, Math.round((start + units) * 20) / 20);
      };
      const up = () => {
        chip.removeEventListener("pointermove", move);
        chip.removeEventListener("pointerup", up);
        chip.removeEventListener("pointercancel", up);
        app.canvas?.emitAfterChange?.();
      };
      chip.addEventListener("pointermove", move);
      chip.addEventListener("pointerup", up);
      chip.addEventListener("pointercancel", up);
    });
    chip.addEventListener("dblclick", (e) => {
      e.stopPropagation();
      app.canvas?.emitBeforeChange?.();
      setWeight(node, word, 1);
      app.canvas?.emitAfterChange?.();
    });
    s.chips.append(chip);
  }
  updateWeightChips(node);
  const min = node.computeSize?.();
  if (min && node.size[1] < min[1]) node.setSize([node.size[0], min[1]]);
  redraw(node);
}

// The model family the graph names upstream (an encode node of one family, or a CLIP loader's `type`), so that
// /enfoque/tokenize splits words as that family's encode will (T5 and CLIP for Flux and SD3); null if unknown.
const ENCODE_FAMILY = { CLIPTextEncodeFlux: "flux", CLIPTextEncodeSD3: "sd3", CLIPTextEncodeSDXL: "sdxl",
  CLIPTextEncodeSDXLRefiner: "sdxl", TripleCLIPLoader: "sd3" };
const LOADER_FAMILY = { stable_diffusion: "sd15", sdxl: "sdxl", sd3: "sd3", flux: "flux" };

function upstreamFamily(node, depth = 0, seen = new Set()) {
  if (!node || depth > 16 || seen.has(node)) return null;
  seen.add(node);
  if (ENCODE_FAMILY[node.comfyClass]) return ENCODE_FAMILY[node.comfyClass];
  if (/CLIPLoader/.test(node.comfyClass ?? "")) {
    const type = node.widgets?.find((x) => x.name === "type")?.value;
    return LOADER_FAMILY[type] ?? null;
  }
  const inputs = node.inputs ?? [];
  for (let i = 0; i < inputs.length; i++) {
    if (inputs[i].link == null) continue;
    const family = upstreamFamily(node.getInputNode?.(i), depth + 1, seen);
    if (family) return family;
  }
  return null;
}

async function fetchWords(node, text) {
  const s = weightState(node);
  const seq = ++s.seq;
  let words = [];
  let error = null;
  try {
    const family = upstreamFamily(node);
    const res = await api.fetchApi("/enfoque/tokenize", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(family ? { text, family } : { text }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) error = body.error || `HTTP ${res.status}`;
    else words = Array.isArray(body.words) ? body.words.map(String) : [];
  } catch (e) {
    error = String(e?.message ?? e);
  }
  if (seq !== s.seq) return; // a newer text is on its way
  const unique = [];
  for (const w of words) {
    const norm = w.trim().toLowerCase();
    if (norm && !unique.includes(norm)) unique.push(norm);
  }
  s.words = unique;
  s.hint.textContent = error
    ? `Cannot split the prompt: ${error}`
    : unique.length
      ? "Wheel or drag a word to weigh it; double-click resets."
      : "The prompt has no words.";
  renderWeightChips(node);
}

function pollPrompt(node) {
  const s = weightState(node);
  s.root.dataset.enfoqueNode = String(node.id);
  const text = upstreamText(node);
  if (text !== s.text) {
    s.text = text;
    clearTimeout(s.pending);
    if (text == null) {
      s.seq++;
      s.words = [];
      s.hint.textContent = "Connect a text encode to see its words.";
      renderWeightChips(node);
    } else {
      s.pending = setTimeout(() => fetchWords(node, text), 250);
    }
  }
  const w = weightsWidgetOf(node);
  if (w && w.value !== s.rendered) updateWeightChips(node);
}

function setupWeightNode(nodeType) {
  chain(nodeType.prototype, "onNodeCreated", function () {
    weightState(this);
  });
  chain(nodeType.prototype, "onConfigure", function () {
    weightState(this);
    pollPrompt(this);
  });
  chain(nodeType.prototype, "onConnectionsChange", function () {
    if (this.enfoqueWeights) pollPrompt(this);
  });
  // the prompt text can change anywhere upstream; check it (cheaply) whenever the node is drawn
  chain(nodeType.prototype, "onDrawForeground", function () {
    if (this.enfoqueWeights) pollPrompt(this);
    fitHeight(this); // chips laid out while the node was off screen measure only now
  });
}

app.registerExtension({
  name: EXT,
  setup() {
    addStyle();
    api.addEventListener(NOTICE_EVENT, onNotice);
    api.addEventListener("execution_start", ({ detail }) => {
      run.id = detail?.prompt_id ?? null;
      run.executed = new Set();
    });
    api.addEventListener("executed", ({ detail }) => {
      run.executed.add(String(detail?.display_node ?? detail?.node));
    });
    // a cached node's chips show the output the cache holds: still true
    api.addEventListener("execution_cached", ({ detail }) => {
      for (const id of detail?.nodes ?? []) run.executed.add(String(id));
    });
    api.addEventListener("execution_error", ({ detail }) => onRunFailed(detail));
    api.addEventListener("execution_interrupted", ({ detail }) => onRunFailed(detail));
  },
  // the frontend restores a workflow's outputs when its tab is shown again
  onNodeOutputsUpdated(outputs) {
    for (const node of app.graph?.nodes ?? []) {
      const output = outputs?.[String(node.id)];
      if (MAP_NODES.has(node.comfyClass) && Array.isArray(output?.enfoque_words)) applyMapsOutput(node, output);
    }
  },
  afterConfigureGraph() {
    migrateProbeLinks(app.graph);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (MAP_NODES.has(nodeData?.name)) setupMapNode(nodeType);
    else if (nodeData?.name === WEIGHT_NODE) setupWeightNode(nodeType);
  },
});
