// Enfoque frontend: word chips on the attention-map nodes and on EnfoqueTokenWeights, pointing at
// the picture, notices on nodes, the probe sockets' colours, and the probe socket types of older
// workflows.
//
// Loaded by ComfyUI through WEB_DIRECTORY = "./js" (served as /extensions/<pack>/enfoque.js).
// Uses only the public frontend modules app.js and api.js and the node hooks
// of app.registerExtension; every prototype hook it sets calls the previous one.
//
// What the server knows, the frontend reads from it (GET /enfoque/info, once): the nodes' display
//   names, the probe socket types, and which CLIP loader `type` and which nodes name which model
//   family. Which words a words/weights text selects follows attention/selection.py, ported below
//   (`selectWords`, checked against it by tests/test_frontend.py).
// EnfoqueHeatmaps / EnfoqueAttentionMaps: after a run the node shows the
//   prompt's words as chips, one per position (a repeated word has a chip per occurrence), from
//   the node's `ui` output (enfoque_words, enfoque_shares, enfoque_word_images, enfoque_grid,
//   images; Heatmaps over steps/blocks/frames also enfoque_frames and enfoque_panels; Attention
//   Maps with capture_negative also enfoque_negative). Hovering a chip shows that word's heatmap:
//   inside Enfoque Heatmaps (under the chips, where its picture is), or in a small floating view
//   next to the chip on Enfoque Attention Maps, which keeps no picture area of its own. Clicking
//   pins a word (click again to unpin); the pin is kept in node.properties.enfoque_pinned ("a#2"
//   for the second of two chips "a"). Over steps, blocks or frames, a scrubber under the chips
//   picks the frame shown, and the chips show that frame's shares and heatmaps. Pointing at the
//   picture (or at the floating view) ranks the words by their share of the text attention at that
//   pixel, with their values, and the negative prompt's words beside them when they were captured;
//   clicking pins the pixel (node.properties.enfoque_pixel), and the chips then show the shares at
//   that pixel. The last output's chips are kept in node.properties.enfoque_output, so a reloaded
//   workflow shows them again; storing them marks the workflow changed, so the saved copy has them.
//   A node with no output shrinks to its widgets. When a run fails, the chips of every map node
//   that did not run again in it are cleared.
// EnfoqueTokenWeights: the words of the prompt feeding its conditioning
//   (found through the graph's links, split by POST /enfoque/tokenize for the model family the
//   graph names) as chips, one per position, with a weight each; mouse wheel (shift: bigger steps)
//   or vertical drag changes a weight, double-click resets it to 1. Every change is written to the
//   node's `weights` widget ("cat:1.25, a#2:0.8": the second "a" alone). Entries the server would
//   refuse (unreadable, negative, not a word of the prompt) are shown in red before Run.
// Notices: the server's "enfoque.notice" message ({node, text}) shows a warning
//   on that node (and a toast); an empty text removes it. A notice goes when the node's widgets
//   change, and when a run starts in which the node is not cached (the run says it again if it
//   still holds).
// Probe types: the model's and the CLIP's probe sockets get their own colours. Workflows saved
//   before the two probes got their own socket types carry "ENFOQUE_PROBE" on their links; on load
//   such a link gets the type of the slots it joins, or, where it joins a CLIP probe to a model
//   probe input (or the reverse), a notice on the node that says what to connect.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXT = "enfoque.WordChips";
const MAP_NODES = new Set(["EnfoqueAttentionMaps", "EnfoqueHeatmaps"]);
const WEIGHT_NODE = "EnfoqueTokenWeights";
const PIN = "enfoque_pinned";
const PIXEL = "enfoque_pixel";
const LAST_OUTPUT = "enfoque_output";
const NATIVE_PREVIEW = "$$canvas-image-preview";
const NOTICE_EVENT = "enfoque.notice";
const INFO_PATH = "/enfoque/info";
const LEGACY_PROBE = "ENFOQUE_PROBE";
// the probe sockets' colours (close to the MODEL's and the CLIP's), so a wrong link looks wrong
const SOCKET_COLOURS = {
  ENFOQUE_MODEL_PROBE: "#9575CD",
  ENFOQUE_CLIP_PROBE: "#F0A830",
  ENFOQUE_MAPS: "#4DB6AC",
  ENFOQUE_CONCEPTS: "#E57373",
};
const VIEW_MIN_HEIGHT = 240; // the picture area of Enfoque Heatmaps
const CHIP_H = 22; // one row of chips (line 14 px, padding, border)
const CHIP_GAP = 4;
const CHIP_ROWS = { floating: 2, view: 3 }; // the chip box's most rows before it scrolls
const FRAME_BAR_H = 22;
const KEPT_WORDS = 128; // chips kept in the workflow for a reload
const KEPT_BYTES = 400000; // past this, the frames' grids are not kept in the workflow
const GRID_LEVELS = 9999; // nodes/common/previews.py GRID_LEVELS
const READOUT_ROWS = 8;
const READOUT_ROWS_PINNED = 3; // the pinned pixel's readout in Heatmaps, while the pointer is elsewhere: compact
const MAX_WEIGHT = 10;
const WHEEL_STEP = 0.05;
const WHEEL_STEP_SHIFT = 0.25;
const DRAG_PX_PER_UNIT = 100; // dragging 100 px up adds 1.0
const TEXT_WIDGETS = ["text", "clip_l", "text_l", "clip_g", "text_g", "t5xxl", "prompt", "user_prompt"];
// same grammar as attention/formats.py parse_word_weights
const WEIGHT_RE = /^\s*(\S.*?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$/;

const chipBoxMax = (rows) => rows * CHIP_H + (rows - 1) * CHIP_GAP;

const CSS = `
.enfoque-root { display: flex; flex-direction: column; gap: 6px; box-sizing: border-box;
  width: 100%; height: 100%; padding: 4px 2px; font: 12px/1.2 Inter, Arial, sans-serif;
  color: var(--input-text, #ddd); overflow: hidden; }
.enfoque-chips { display: flex; flex-wrap: wrap; gap: ${CHIP_GAP}px; flex: 0 0 auto; max-height: ${chipBoxMax(CHIP_ROWS.view)}px;
  overflow-y: auto; overscroll-behavior: contain; scrollbar-width: thin; }
.enfoque-maps.enfoque-compact .enfoque-chips { max-height: ${chipBoxMax(CHIP_ROWS.floating)}px; }
.enfoque-chips.enfoque-more { box-shadow: inset 0 -10px 8px -8px rgba(127,178,255,0.7); }
.enfoque-chips:empty { display: none; }
.enfoque-weights .enfoque-chips { max-height: none; flex: 0 1 auto; align-content: flex-start; }
.enfoque-chip, .enfoque-pixel-tag { display: inline-flex; align-items: baseline; gap: 5px; box-sizing: border-box;
  height: ${CHIP_H}px; line-height: 14px; padding: 3px 8px; border-radius: 11px;
  border: 1px solid var(--border-color, #4a4a4a); background: var(--comfy-input-bg, #222);
  cursor: pointer; user-select: none; white-space: nowrap; touch-action: none; }
.enfoque-chip:hover, .enfoque-chip.enfoque-hover { border-color: #7fb2ff; background: #2b3a52; }
.enfoque-chip.enfoque-pinned { border-color: #ffcc4d; background: #4a3b12; color: #fff; }
.enfoque-chip .enfoque-val { opacity: 0.65; font-variant-numeric: tabular-nums; font-size: 11px; }
.enfoque-chip.enfoque-up { border-color: #e8894b; background: #4a2a17; }
.enfoque-chip.enfoque-down { border-color: #5f87b5; background: #1b2a3b; }
.enfoque-chip.enfoque-zero { opacity: 0.55; text-decoration: line-through; }
.enfoque-chip.enfoque-invalid { border-color: #e5484d; background: #4a1618; color: #ffb3b5; opacity: 1; text-decoration: none; }
.enfoque-chip.enfoque-invalid .enfoque-val { opacity: 1; color: #ff8a8e; }
.enfoque-pixel-tag { border-style: dashed; border-color: #ffcc4d; color: #ffe6a3; font-size: 11px; }
.enfoque-errors { color: #ff8a8e; font-size: 11px; line-height: 1.3; }
.enfoque-errors:empty { display: none; }
.enfoque-frames { display: flex; align-items: center; gap: 4px; height: ${FRAME_BAR_H}px; flex: 0 0 auto; font-size: 11px; }
.enfoque-frames[hidden] { display: none; }
.enfoque-frames button { height: 20px; min-width: 22px; padding: 0 4px; border-radius: 4px; cursor: pointer;
  border: 1px solid var(--border-color, #4a4a4a); background: var(--comfy-input-bg, #222); color: inherit; }
.enfoque-frames input[type=range] { flex: 1 1 auto; min-width: 40px; margin: 0; accent-color: #7fb2ff; }
.enfoque-frame-label { flex: 0 1 auto; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  max-width: 55%; font-variant-numeric: tabular-nums; }
.enfoque-view { position: relative; flex: 1 1 auto; min-height: 0; display: flex; flex-direction: column;
  background: rgba(0,0,0,0.25); border-radius: 4px; }
.enfoque-pic { position: relative; flex: 1 1 auto; min-height: 0; cursor: crosshair; }
.enfoque-pic img { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain; display: block; }
.enfoque-pic img[src=""], .enfoque-pic img:not([src]), .enfoque-pic img.enfoque-missing { display: none; }
.enfoque-overlay { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
.enfoque-view.enfoque-float { position: fixed; z-index: 1000; width: 240px; height: auto; flex: none;
  background: rgba(20,20,20,0.95); border: 1px solid #7fb2ff; }
.enfoque-float .enfoque-pic { flex: none; width: 240px; height: 240px; }
.enfoque-caption { position: absolute; left: 6px; bottom: 4px; padding: 1px 6px; border-radius: 3px;
  background: rgba(0,0,0,0.6); color: #fff; font-size: 11px; pointer-events: none; }
.enfoque-caption:empty { display: none; }
.enfoque-readout { position: absolute; z-index: 2; min-width: 120px; max-width: 330px; padding: 4px 6px; border-radius: 4px;
  background: rgba(12,12,12,0.88); border: 1px solid #555; color: #eee; font-size: 11px; line-height: 1.35;
  pointer-events: none; display: flex; gap: 10px; }
.enfoque-readout[hidden] { display: none; }
.enfoque-float .enfoque-readout { position: static; flex-direction: column; gap: 4px; border: 0; border-top: 1px solid #444;
  border-radius: 0; max-width: none; }
.enfoque-readout-col { display: flex; flex-direction: column; min-width: 0; }
.enfoque-readout-head { opacity: 0.7; white-space: nowrap; }
.enfoque-rank { display: flex; gap: 6px; white-space: nowrap; font-variant-numeric: tabular-nums; }
.enfoque-rank .enfoque-rank-word { flex: 1 1 auto; overflow: hidden; text-overflow: ellipsis; max-width: 110px; }
.enfoque-rank .enfoque-rank-share { width: 42px; text-align: right; }
.enfoque-rank .enfoque-rank-value { opacity: 0.6; width: 52px; text-align: right; }
.enfoque-rank.enfoque-here { color: #ffcc4d; font-weight: 600; }
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

/** Change node properties as one step of the workflow's history, so the workflow is marked changed (and stored). */
function asChange(change) {
  app.canvas?.emitBeforeChange?.();
  try {
    change();
  } finally {
    app.canvas?.emitAfterChange?.();
  }
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

// ------------------------------------------------------------------ what the server knows

let info = null;
/** GET /enfoque/info once: display names, probe sockets, and the model-family table (nodes/routes.py). */
const infoReady = (async () => {
  try {
    const res = await api.fetchApi(INFO_PATH);
    if (res.ok) info = await res.json();
  } catch (e) {
    console.warn(`Enfoque: ${INFO_PATH} is not available (${e?.message ?? e}); chips use SD1.5 words`);
  }
  return info;
})();

/** The display name of the node whose probe a socket type is (from the server), or null. */
function probeSource(type) {
  return info?.probe_sockets?.[type] ?? null;
}

// ------------------------------------------------------------------ which words (attention/selection.py)

const POSITION_RE = /^#\d+$/;
const OCCURRENCE_RE = /^(.*\S)\s*#(\d+)$/;
const ALNUM_RE = /^[\p{L}\p{N}]$/u;

/** Python's str.casefold, as close as JavaScript gets (ß -> ss, ς -> σ). */
function casefold(s) {
  return s.toUpperCase().toLowerCase();
}

/** A word as the rule compares it: case-folded, without punctuation at its ends (`#12` kept). */
function normalWord(word) {
  const w = String(word).trim();
  if (POSITION_RE.test(w)) return w;
  const chars = [...w];
  let a = 0;
  let b = chars.length;
  while (a < b && !ALNUM_RE.test(chars[a])) a++;
  while (b > a && !ALNUM_RE.test(chars[b - 1])) b--;
  return casefold(chars.slice(a, b).join(""));
}

/** The words of a label or an item as the rule compares them (words of punctuation alone dropped). */
function normalWords(text) {
  return String(text)
    .split(/\s+/)
    .filter(Boolean)
    .map(normalWord)
    .filter(Boolean);
}

const sameWords = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** The items of a words text, each once, in order: {text, words, occurrence (0: all)}. */
function parseItems(query) {
  const out = new Map();
  for (const part of String(query ?? "").split(",")) {
    const text = part.trim().replace(/\s+/g, " ");
    if (!text) continue;
    let occurrence = 0;
    let body = text;
    const m = OCCURRENCE_RE.exec(text);
    if (m && !POSITION_RE.test(text)) {
      body = m[1];
      occurrence = parseInt(m[2], 10);
    }
    const words = normalWords(body);
    const key = JSON.stringify(words.length ? [words, occurrence] : [text]);
    if (!out.has(key)) out.set(key, { text, words, occurrence });
  }
  return [...out.values()];
}

/** Every run of consecutive labels whose words spell the item's (labels that spell it alone, where some do). */
function matchRuns(labels, item) {
  const want = item.words;
  if (!want.length) return [];
  const words = labels.map((l) => normalWords(l));
  const whole = [];
  words.forEach((w, i) => {
    if (sameWords(w, want)) whole.push([i]);
  });
  if (whole.length) return whole;
  const found = [];
  for (let i = 0; i < words.length; i++) {
    let got = [];
    let j = i;
    while (j < words.length && got.length < want.length) {
      if (!words[j].length) break;
      got = got.concat(words[j]);
      j++;
      if (!sameWords(got, want.slice(0, got.length))) break;
    }
    if (sameWords(got, want)) found.push(Array.from({ length: j - i }, (_, k) => i + k));
  }
  return found;
}

/** The label indices an item selects: every match, or only its `occurrence`-th. */
function pickedBy(labels, item) {
  let runs = matchRuns(labels, item);
  if (item.occurrence) runs = runs.slice(item.occurrence - 1, item.occurrence);
  return [...new Set(runs.flat())];
}

/**
 * What a words text selects among `labels`, by the pack's one rule: [{label, indices}] per item, or each
 * label on its own for an empty text. Throws an Error with `.item` set for an item that selects nothing.
 */
function selectWords(labels, query) {
  const items = parseItems(query);
  if (!items.length) return labels.map((label, i) => ({ label, indices: [i] }));
  return items.map((item) => {
    const indices = pickedBy(labels, item);
    if (!indices.length) {
      const e = new Error(`'${item.text}' is not among the words`);
      e.item = item.text;
      throw e;
    }
    return { label: item.text, indices };
  });
}

/** The indices a words text selects (none: []), as the server's TokenLayout.find. */
function findWords(labels, text) {
  return [...new Set(parseItems(text).flatMap((item) => pickedBy(labels, item)))];
}

/** How chip `i` is named alone: its word, or `word#k` for the k-th of a repeated word. */
function spelling(labels, i) {
  const mine = normalWords(labels[i]);
  let k = 0;
  let count = 0;
  labels.forEach((l, j) => {
    if (sameWords(normalWords(l), mine)) {
      count++;
      if (j <= i) k++;
    }
  });
  const word = mine.join(" ") || String(labels[i]);
  return count > 1 ? `${word}#${k}` : word;
}

/** The pin of chip `i` as saved: its label, or `label#k` for the k-th of a label shown more than once. */
function pinKey(labels, i) {
  const same = labels.map((l, j) => [l, j]).filter(([l]) => l === labels[i]);
  return same.length > 1 ? `${labels[i]}#${same.findIndex(([, j]) => j === i) + 1}` : labels[i];
}

/** The chip a saved pin names (a label, or `label#k`), or -1. */
function pinIndex(labels, pin) {
  if (typeof pin !== "string" || !pin) return -1;
  const exact = labels.map((l, j) => [l, j]).filter(([l]) => l === pin);
  if (exact.length) return exact[0][1];
  const m = /^(.*)#(\d+)$/.exec(pin);
  if (!m) return -1;
  const same = labels.map((l, j) => [l, j]).filter(([l]) => l === m[1]);
  return same[parseInt(m[2], 10) - 1]?.[1] ?? -1;
}

// ------------------------------------------------------------------ map nodes

function emptyKept() {
  return { words: [], shares: [], images: [], base: null, bases: [], frames: [], grid: null, panels: null, negative: null };
}

function validGrid(g) {
  if (!g || !Number.isInteger(g.h) || !Number.isInteger(g.w) || !Array.isArray(g.values) || !Array.isArray(g.scales)) {
    return null;
  }
  return g;
}

function mapsWidget(node) {
  if (node.enfoque) return node.enfoque;
  const floating = node.comfyClass !== "EnfoqueHeatmaps"; // no picture area of its own
  const root = el("div", floating ? "enfoque-root enfoque-maps enfoque-compact" : "enfoque-root enfoque-maps");
  const chips = el("div", "enfoque-chips");
  const frameBar = el("div", "enfoque-frames");
  const prev = el("button", "enfoque-frame-prev", "‹");
  const next = el("button", "enfoque-frame-next", "›");
  const slider = el("input", "enfoque-frame-slider");
  slider.type = "range";
  slider.min = "0";
  slider.step = "1";
  const frameLabel = el("span", "enfoque-frame-label");
  frameBar.append(prev, slider, next, frameLabel);
  frameBar.hidden = true;
  const hint = el("div", "enfoque-hint", "Run the workflow to see the prompt's words here.");
  const view = el("div", floating ? "enfoque-view enfoque-float" : "enfoque-view");
  const pic = el("div", "enfoque-pic");
  const img = el("img");
  img.alt = "";
  img.draggable = false;
  const overlay = el("canvas", "enfoque-overlay");
  const caption = el("div", "enfoque-caption");
  const readout = el("div", "enfoque-readout");
  readout.hidden = true;
  pic.append(img, overlay, caption);
  view.append(pic, readout);
  root.append(chips, frameBar, hint);
  if (floating) {
    view.style.display = "none";
    document.body.append(view);
  } else {
    root.append(view);
  }
  const state = { root, chips, frameBar, slider, frameLabel, hint, view, pic, img, overlay, caption, readout, floating,
    kept: emptyKept(), frame: 0, hovered: null, anchor: null, pointer: null, inView: false, hideTimer: null };
  node.enfoque = state;
  // previews live in ComfyUI's temp folder, which is emptied when the server restarts
  img.addEventListener("error", () => {
    if (!img.getAttribute("src")) return;
    img.classList.add("enfoque-missing");
    caption.textContent = `${caption.textContent || "preview"} (gone from the server; run the workflow again)`;
  });
  img.addEventListener("load", () => {
    img.classList.remove("enfoque-missing");
    drawPointing(node);
  });
  // the frame scrubber (over steps / blocks / frames)
  const toFrame = (f) => setFrame(node, f);
  slider.addEventListener("input", () => toFrame(+slider.value));
  prev.addEventListener("click", (e) => {
    e.stopPropagation();
    toFrame(state.frame - 1);
  });
  next.addEventListener("click", (e) => {
    e.stopPropagation();
    toFrame(state.frame + 1);
  });
  for (const e of [frameBar, view]) e.addEventListener("pointerdown", (ev) => ev.stopPropagation()); // not a node drag
  // a long chip box scrolls under the wheel instead of zooming the canvas
  chips.addEventListener(
    "wheel",
    (e) => {
      if (chips.scrollHeight <= chips.clientHeight + 1) return;
      e.preventDefault();
      e.stopPropagation();
      chips.scrollTop += e.deltaY || e.deltaX;
    },
    { passive: false },
  );
  // a cue that more chips are below, while there are
  const more = () => {
    const hidden = chips.scrollHeight - chips.scrollTop - chips.clientHeight > 2;
    chips.classList.toggle("enfoque-more", hidden);
    chips.title = hidden ? "Scroll for more words" : "";
  };
  chips.addEventListener("scroll", more);
  if (typeof ResizeObserver === "function") new ResizeObserver(more).observe(chips);
  state.more = more;
  // pointing at the picture
  pic.addEventListener("pointermove", (e) => {
    const at = locate(node, e.clientX, e.clientY);
    state.pointer = at && { ...at, clientX: e.clientX, clientY: e.clientY };
    drawPointing(node);
  });
  pic.addEventListener("pointerleave", () => {
    state.pointer = null;
    drawPointing(node);
  });
  pic.addEventListener("click", (e) => {
    e.stopPropagation();
    const at = locate(node, e.clientX, e.clientY);
    if (at) togglePixel(node, at);
  });
  if (floating) {
    // the floating view stays while the pointer is on it, so its picture can be pointed at
    view.addEventListener("pointerenter", () => {
      state.inView = true;
      clearTimeout(state.hideTimer);
    });
    view.addEventListener("pointerleave", () => {
      state.inView = false;
      state.hovered = null;
      showView(node);
    });
  }
  const widget = node.addDOMWidget("enfoque_words", "enfoque-words", root, {
    serialize: false,
    hideOnZoom: true,
    getMinHeight: () => {
      const n = state.kept.words.length;
      const rows = floating ? CHIP_ROWS.floating : CHIP_ROWS.view;
      return widgetHeight([
        state.hint.textContent ? Math.max(17, laidOutHeight(hint, 17)) : 0,
        n ? Math.min(chipBoxMax(rows), Math.max(CHIP_H, laidOutHeight(chips, (CHIP_H + CHIP_GAP) * Math.ceil(n / 4)))) : 0,
        n && state.kept.frames.length > 1 ? FRAME_BAR_H : 0,
        !floating && n && state.kept.base ? VIEW_MIN_HEIGHT : 0,
      ]);
    },
  });
  widget.serialize = false;
  watchSize(node, hint, chips);
  if (typeof ResizeObserver === "function") new ResizeObserver(() => drawPointing(node)).observe(pic);
  const remove = widget.onRemove;
  widget.onRemove = function (...args) {
    view.remove(); // the floating view lives outside the node
    return remove?.apply(this, args);
  };
  state.widget = widget;
  return state;
}

/** What the node shows now: the mean, or frame `s.frame` over steps / blocks / frames. */
function shown(s) {
  const k = s.kept;
  const f = k.frames.length ? Math.max(0, Math.min(k.frames.length - 1, s.frame)) : -1;
  if (f < 0) return { f, shares: k.shares, images: k.images, base: k.base, grid: k.grid, caption: "" };
  const frame = k.frames[f];
  return { f, shares: frame.shares ?? [], images: frame.images ?? [], base: k.bases[f] ?? k.base,
    grid: frame.grid ?? k.grid, caption: frame.caption ?? "" };
}

function pinnedIndex(node) {
  return pinIndex(node.enfoque?.kept.words ?? [], node.properties?.[PIN]);
}

function currentIndex(node) {
  const s = node.enfoque;
  if (!s) return -1;
  return s.hovered ?? pinnedIndex(node);
}

/** The pinned pixel, {x, y} as fractions of the map, or null. */
function pinnedPixel(node) {
  const p = node.properties?.[PIXEL];
  return p && Number.isFinite(p.x) && Number.isFinite(p.y) && p.x >= 0 && p.x < 1 && p.y >= 0 && p.y < 1 ? p : null;
}

/** The value of word k at (u, v) in a pointing grid, and its cell. */
function gridCell(grid, u, v) {
  const gx = Math.min(grid.w - 1, Math.max(0, Math.floor(u * grid.w)));
  const gy = Math.min(grid.h - 1, Math.max(0, Math.floor(v * grid.h)));
  return { gx, gy, at: gy * grid.w + gx };
}

function gridValues(grid, u, v) {
  const { at } = gridCell(grid, u, v);
  return grid.values.map((row, k) => ((row?.[at] ?? 0) * (grid.scales[k] ?? 0)) / GRID_LEVELS);
}

/** Each word's share of the words' attention at (u, v), and its value: [{i, value, share}]. */
function sharesAt(grid, u, v) {
  const values = gridValues(grid, u, v);
  const total = values.reduce((a, b) => a + Math.max(0, b), 0);
  return values.map((value, i) => ({ i, value, share: total > 0 ? Math.max(0, value) / total : 0 }));
}

function formatShare(share) {
  return `${Math.round(100 * share)}%`;
}

function chipShares(node) {
  const view = shown(node.enfoque);
  const px = pinnedPixel(node);
  const at = px && view.grid ? sharesAt(view.grid, px.x, px.y) : null;
  return (i) => (at && i < at.length ? at[i].share : view.shares[i]);
}

/** The chips' values (the shown frame's shares, or the shares at the pinned pixel) and the pixel tag. */
function updateChipValues(node) {
  const s = node.enfoque;
  const px = pinnedPixel(node);
  const shareOf = chipShares(node);
  for (const chip of s.chips.querySelectorAll(".enfoque-chip")) {
    const share = shareOf(+chip.dataset.index);
    const val = chip.querySelector(".enfoque-val");
    if (val) val.textContent = share == null ? "" : formatShare(share);
    chip.dataset.share = share == null ? "" : String(share);
  }
  let tag = s.chips.querySelector(".enfoque-pixel-tag");
  const grid = shown(s).grid;
  if (px && grid && s.kept.words.length) {
    if (!tag) {
      tag = el("span", "enfoque-pixel-tag");
      tag.title = "The chips show the shares at this pixel; click to unpin it";
      tag.addEventListener("click", (e) => {
        e.stopPropagation();
        setPixel(node, null);
      });
      s.chips.prepend(tag);
    }
    const { gx, gy } = gridCell(grid, px.x, px.y);
    tag.textContent = `at cell ${gx}, ${gy} ✕`;
  } else {
    tag?.remove();
  }
}

function setFrame(node, f) {
  const s = node.enfoque;
  const n = s.kept.frames.length;
  if (!n) return;
  s.frame = Math.max(0, Math.min(n - 1, f));
  renderFrameBar(node);
  updateChipValues(node);
  showView(node);
}

function renderFrameBar(node) {
  const s = node.enfoque;
  const n = s.kept.frames.length;
  s.frameBar.hidden = !(n > 1 && s.kept.words.length);
  if (!n) return;
  s.slider.max = String(n - 1);
  s.slider.value = String(Math.max(0, Math.min(n - 1, s.frame)));
  const view = shown(s);
  s.frameLabel.textContent = `${view.caption} (${view.f + 1}/${n})`;
  s.frameBar.dataset.frame = String(view.f);
}

/** Show the current word's heatmap (hovered or pinned) in the view, or the node's own picture. */
function showView(node) {
  const s = node.enfoque;
  if (!s) return;
  const view = shown(s);
  const i = currentIndex(node);
  const word = i >= 0 ? s.kept.words[i] : null;
  let entry = null;
  let label = "";
  if (word != null) {
    entry = view.images[i] ?? null;
    const share = chipShares(node)(i);
    label = share == null ? word : `${word}  ${(100 * share).toFixed(1)}%`;
    if (pinnedPixel(node) && share != null) label += " here";
    if (view.f >= 0) label += `  (${view.caption})`;
    if (!entry) label += " (no preview for this word)";
  } else if (!s.floating) {
    entry = view.base; // the node's own picture (the Heatmaps panel grid), if any
  }
  const src = viewUrl(entry);
  if (s.img.getAttribute("src") !== src) {
    s.img.classList.remove("enfoque-missing");
    s.img.setAttribute("src", src);
  }
  s.img.dataset.word = word ?? "";
  s.img.dataset.index = word != null ? String(i) : "";
  s.img.dataset.frame = String(view.f);
  s.shownWord = word != null ? i : null;
  s.caption.textContent = label;
  if (src && s.img.classList.contains("enfoque-missing")) {
    s.caption.textContent = `${label || "preview"} (gone from the server; run the workflow again)`;
  }
  if (s.floating) {
    // next to the hovered chip, never over it
    const chip = s.hovered != null ? s.anchor : null;
    const box = chip?.isConnected ? chip.getBoundingClientRect() : null;
    const visible = !!(box && (src || label));
    s.view.style.display = visible ? "" : "none";
    if (visible) {
      const left = Math.min(window.innerWidth - 250, box.right + 8);
      const height = s.view.offsetHeight || 250;
      const top = Math.max(4, Math.min(window.innerHeight - height - 4, box.top - 100));
      s.view.style.left = `${Math.max(4, left)}px`;
      s.view.style.top = `${top}px`;
    }
  } else {
    s.view.style.display = s.kept.words.length && (src || label) ? "" : "none";
  }
  drawPointing(node);
}

/**
 * Where a point of the screen falls on the maps shown: {u, v} (fractions of the map), the word whose
 * panel it is on (or the word shown), and the image of a batch (0: the first); null off the maps.
 */
function locate(node, cx, cy) {
  const s = node.enfoque;
  const im = s.img;
  const nw = im.naturalWidth;
  const nh = im.naturalHeight;
  if (!nw || !nh || !im.getAttribute("src")) return null;
  const r = im.getBoundingClientRect();
  const scale = Math.min(r.width / nw, r.height / nh);
  if (!(scale > 0)) return null;
  const px = (cx - (r.left + (r.width - nw * scale) / 2)) / scale;
  const py = (cy - (r.top + (r.height - nh * scale) / 2)) / scale;
  if (px < 0 || py < 0 || px >= nw || py >= nh) return null;
  if (s.shownWord != null) return { u: px / nw, v: py / nh, word: s.shownWord, batch: 0 };
  const p = s.kept.panels;
  if (!p || !(p.width > 0) || !(p.cell_w > 0) || !(p.cell_h > 0)) return null;
  const batch = Math.floor(px / p.width);
  const lx = px - batch * p.width;
  const ly = py - p.top;
  if (ly < 0) return null;
  const col = Math.floor(lx / (p.cell_w + p.gap));
  const row = Math.floor(ly / (p.cell_h + p.gap));
  const mx = lx - col * (p.cell_w + p.gap);
  const my = ly - row * (p.cell_h + p.gap);
  const word = row * p.columns + col;
  if (col >= p.columns || word >= p.count || mx >= p.map_w || my >= p.map_h) return null;
  return { u: mx / p.map_w, v: my / p.map_h, word, batch };
}

/** The rectangles (in screen px, relative to the picture box) where maps are drawn: [{x, y, w, h, word}]. */
function mapRects(node) {
  const s = node.enfoque;
  const im = s.img;
  const nw = im.naturalWidth;
  const nh = im.naturalHeight;
  if (!nw || !nh || !im.getAttribute("src")) return [];
  const box = s.pic.getBoundingClientRect();
  const scale = Math.min(box.width / nw, box.height / nh);
  const ox = (box.width - nw * scale) / 2;
  const oy = (box.height - nh * scale) / 2;
  if (s.shownWord != null) return [{ x: ox, y: oy, w: nw * scale, h: nh * scale, word: s.shownWord }];
  const p = s.kept.panels;
  if (!p) return [];
  const out = [];
  for (let k = 0; k < p.count; k++) {
    const x = (k % p.columns) * (p.cell_w + p.gap);
    const y = p.top + Math.floor(k / p.columns) * (p.cell_h + p.gap);
    out.push({ x: ox + x * scale, y: oy + y * scale, w: p.map_w * scale, h: p.map_h * scale, word: k });
  }
  return out;
}

/** The negative prompt's words for pointing: this node's (Attention Maps), or those of the Attention Maps feeding it. */
function negativeFor(node) {
  const own = node.enfoque?.kept.negative;
  if (own) return own;
  const i = node.inputs?.findIndex((x) => x.name === "maps") ?? -1;
  const up = i >= 0 && node.inputs[i].link != null ? node.getInputNode?.(i) : null;
  if (!up || !MAP_NODES.has(up.comfyClass)) return null;
  return up.enfoque?.kept.negative ?? null;
}

function readoutColumn(title, words, grid, u, v, here, limit = READOUT_ROWS) {
  const col = el("div", "enfoque-readout-col");
  col.append(el("div", "enfoque-readout-head", title));
  const ranked = sharesAt(grid, u, v)
    .filter((r) => r.i < words.length)
    .sort((a, b) => b.value - a.value || a.i - b.i);
  const top = ranked.slice(0, limit);
  const mine = ranked.findIndex((r) => r.i === here);
  if (mine >= limit) top.push(ranked[mine]); // the word under the cursor, whatever its rank
  top.forEach((r, n) => {
    const row = el("div", r.i === here ? "enfoque-rank enfoque-here" : "enfoque-rank");
    row.dataset.index = String(r.i);
    row.dataset.word = words[r.i];
    row.dataset.value = String(r.value);
    row.dataset.share = String(r.share);
    const rank = n < limit ? n + 1 : mine + 1;
    row.append(
      el("span", "enfoque-rank-word", `${rank}. ${words[r.i]}`),
      el("span", "enfoque-rank-share", `${(100 * r.share).toFixed(1)}%`),
      el("span", "enfoque-rank-value", r.value.toPrecision(3)),
    );
    col.append(row);
  });
  if (ranked.length > top.length) col.append(el("div", "enfoque-readout-head", `+${ranked.length - top.length} more`));
  return col;
}

/** The readout of the words at the pointed (else the pinned) pixel, and the markers over the maps. */
function drawPointing(node) {
  const s = node.enfoque;
  if (!s) return;
  const view = shown(s);
  const grid = view.grid;
  const px = pinnedPixel(node);
  const at = s.pointer ?? (px ? { u: px.x, v: px.y, word: s.shownWord ?? null, batch: 0, pinned: true } : null);
  // markers: the pinned pixel's cell (yellow) and the pointed one (white), in every panel
  const c = s.overlay;
  const box = s.pic.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.round(box.width * dpr) || c.height !== Math.round(box.height * dpr)) {
    c.width = Math.max(1, Math.round(box.width * dpr));
    c.height = Math.max(1, Math.round(box.height * dpr));
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, box.width, box.height);
  if (grid && box.width > 0) {
    const rects = mapRects(node);
    const mark = (u, v, colour, dash) => {
      const { gx, gy } = gridCell(grid, u, v);
      g.strokeStyle = colour;
      g.lineWidth = 1.5;
      g.setLineDash(dash);
      for (const r of rects) {
        const cw = r.w / grid.w;
        const ch = r.h / grid.h;
        g.strokeRect(r.x + gx * cw, r.y + gy * ch, Math.max(2, cw), Math.max(2, ch));
      }
    };
    if (px) mark(px.x, px.y, "#ffcc4d", []);
    if (s.pointer && s.pointer.batch === 0) mark(s.pointer.u, s.pointer.v, "#ffffff", [3, 2]);
  }
  s.pic.dataset.pixel = px ? `${px.x},${px.y}` : "";
  // the readout
  const r = s.readout;
  if (!at || !grid || (s.floating && s.view.style.display === "none")) {
    r.hidden = true;
    r.replaceChildren();
    return;
  }
  r.replaceChildren();
  r.hidden = false;
  if (at.batch) {
    r.append(el("div", "enfoque-readout-head", "Pointing reads the maps of the first image only."));
  } else {
    const { gx, gy } = gridCell(grid, at.u, at.v);
    const head = `${at.pinned ? "pinned " : ""}cell ${gx}, ${gy} of ${grid.w}×${grid.h}${view.f >= 0 ? ` · ${view.caption}` : ""}`;
    const limit = at.pinned && !s.floating ? READOUT_ROWS_PINNED : READOUT_ROWS;
    r.append(readoutColumn(head, s.kept.words, grid, at.u, at.v, at.word ?? -1, limit));
    const neg = negativeFor(node);
    const negGrid = validGrid(neg?.grid);
    if (negGrid && Array.isArray(neg.words) && neg.words.length) {
      r.append(readoutColumn("negative prompt", neg.words, negGrid, at.u, at.v, -1, limit));
    }
  }
  r.dataset.u = String(at.u);
  r.dataset.v = String(at.v);
  if (!s.floating) {
    // next to the pointer, inside the picture box; the pinned pixel's in its top right corner
    const vb = s.view.getBoundingClientRect();
    const w = r.offsetWidth;
    const h = r.offsetHeight;
    let left = vb.width - w - 4;
    let top = 4;
    if (s.pointer) {
      const x = s.pointer.clientX - vb.left;
      const y = s.pointer.clientY - vb.top;
      left = x + 14 + w > vb.width - 2 ? x - 14 - w : x + 14;
      top = y + 14 + h > vb.height - 2 ? y - 14 - h : y + 14;
    }
    r.style.left = `${Math.max(2, Math.min(vb.width - w - 2, left))}px`;
    r.style.top = `${Math.max(2, Math.min(vb.height - h - 2, top))}px`;
  }
}

function setPixel(node, at) {
  node.properties = node.properties ?? {};
  asChange(() => {
    if (at) node.properties[PIXEL] = { x: Math.round(at.u * 1e4) / 1e4, y: Math.round(at.v * 1e4) / 1e4 };
    else delete node.properties[PIXEL];
  });
  updateChipValues(node);
  showView(node);
  fitHeight(node);
  redraw(node);
}

/** Click on the maps: pin that pixel, or unpin it when it is the pinned one's cell. */
function togglePixel(node, at) {
  const grid = shown(node.enfoque).grid;
  if (!grid || at.batch) return;
  const px = pinnedPixel(node);
  const same = px && gridCell(grid, px.x, px.y).at === gridCell(grid, at.u, at.v).at;
  setPixel(node, same ? null : at);
}

function refreshPins(node) {
  const s = node.enfoque;
  if (!s) return;
  s.root.dataset.enfoqueNode = String(node.id);
  s.view.dataset.enfoqueNode = String(node.id);
  const pinned = pinnedIndex(node);
  for (const chip of s.chips.querySelectorAll(".enfoque-chip")) {
    chip.classList.toggle("enfoque-pinned", +chip.dataset.index === pinned);
  }
  updateChipValues(node);
  showView(node);
}

function setPinned(node, i) {
  node.properties = node.properties ?? {};
  const before = pinnedIndex(node);
  asChange(() => {
    if (i == null || before === i) delete node.properties[PIN];
    else node.properties[PIN] = pinKey(node.enfoque.kept.words, i);
  });
  refreshPins(node);
  redraw(node);
}

function unhover(node) {
  const s = node.enfoque;
  s.hovered = null;
  showView(node);
}

function renderMapChips(node, hint = "") {
  const s = mapsWidget(node);
  s.root.dataset.enfoqueNode = String(node.id); // ids are assigned after onNodeCreated
  s.chips.replaceChildren();
  s.kept.words.forEach((word, i) => {
    const chip = el("span", "enfoque-chip");
    chip.dataset.word = word;
    chip.dataset.index = String(i);
    chip.title = "Hover to see where this word attends; click to pin it";
    chip.append(el("span", "enfoque-word", word), el("span", "enfoque-val", ""));
    chip.addEventListener("pointerenter", () => {
      clearTimeout(s.hideTimer);
      s.hovered = i;
      s.anchor = chip;
      showView(node);
    });
    chip.addEventListener("pointerleave", () => {
      if (s.hovered !== i) return;
      if (s.floating) {
        // a moment to reach the floating view and point at its picture
        s.hideTimer = setTimeout(() => {
          if (!s.inView && s.hovered === i) unhover(node);
        }, 250);
      } else {
        unhover(node);
      }
    });
    chip.addEventListener("click", (e) => {
      e.stopPropagation();
      setPinned(node, i);
    });
    s.chips.append(chip);
  });
  s.hint.textContent = s.kept.words.length ? "" : hint || "Run the workflow to see the prompt's words here.";
  requestAnimationFrame(() => s.more?.());
  renderFrameBar(node);
  refreshPins(node);
  fitHeight(node, !s.kept.words.length);
  redraw(node);
}

/** The part of a map node's output the chips and pointing need, small enough to keep in the workflow. */
function chipsOutput(output) {
  const words = output.enfoque_words.map(String).slice(0, KEPT_WORDS);
  const n = words.length;
  const shares = Array.isArray(output.enfoque_shares?.[0]) ? output.enfoque_shares[0].slice(0, n) : [];
  const images = Array.isArray(output.enfoque_word_images) ? output.enfoque_word_images.slice(0, n) : [];
  const pictures = Array.isArray(output.images) ? output.images : [];
  const frames = (Array.isArray(output.enfoque_frames) ? output.enfoque_frames : []).map((f) => ({
    caption: String(f?.caption ?? ""),
    shares: Array.isArray(f?.shares) ? f.shares.slice(0, n) : [],
    images: Array.isArray(f?.word_images) ? f.word_images.slice(0, n) : [],
    grid: validGrid(f?.grid),
  }));
  const neg = output.enfoque_negative?.[0];
  const kept = {
    words,
    shares,
    images,
    base: pictures[0] ?? null,
    bases: frames.length ? pictures.slice(0, frames.length) : [],
    frames,
    grid: validGrid(output.enfoque_grid?.[0]),
    panels: output.enfoque_panels?.[0] ?? null,
    negative: neg && Array.isArray(neg.words) ? { words: neg.words.map(String), grid: validGrid(neg.grid) } : null,
  };
  if (JSON.stringify(kept).length > KEPT_BYTES) for (const f of kept.frames) f.grid = null; // pointing then reads the mean
  return kept;
}

function applyChips(node, kept) {
  const s = mapsWidget(node);
  const full = { ...emptyKept(), ...kept };
  const sig = JSON.stringify(full);
  if (sig === s.sig && s.chips.children.length) return refreshPins(node);
  s.sig = sig;
  s.kept = full;
  if (s.frame >= full.frames.length) s.frame = 0;
  s.hovered = null;
  s.pointer = null;
  renderMapChips(node);
}

/** A run's output: shown, and kept in the workflow; `live` (a run just ended) marks the workflow changed. */
function applyMapsOutput(node, output, live = false) {
  if (!Array.isArray(output?.enfoque_words)) return;
  const kept = chipsOutput(output);
  node.properties = node.properties ?? {};
  const store = () => {
    node.properties[LAST_OUTPUT] = kept;
  };
  if (live && JSON.stringify(node.properties[LAST_OUTPUT] ?? null) !== JSON.stringify(kept)) asChange(store);
  else store();
  applyChips(node, kept);
}

/** No output to show (a failed run, a workflow without one): no chips, and the node shrinks to its widgets. */
function clearMapChips(node, hint, live = false) {
  const s = mapsWidget(node);
  if (node.properties && LAST_OUTPUT in node.properties) {
    const drop = () => delete node.properties[LAST_OUTPUT];
    if (live) asChange(drop);
    else drop();
  }
  s.sig = null;
  s.kept = emptyKept();
  s.frame = 0;
  s.hovered = null;
  s.pointer = null;
  renderMapChips(node, hint);
}

/** The chips widget shows this node's pictures; drop the canvas preview so they are not drawn twice. */
function hideNativePreview(node) {
  if (!node.enfoque?.kept.words.length || !node.imgs?.length) return;
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
    applyMapsOutput(this, output, true);
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
    if (node.enfoque?.kept.words.length || node.properties?.[LAST_OUTPUT]) {
      clearMapChips(node, `The last run did not finish${failed}; run the workflow again to see the words.`, true);
    }
  }
}

// ---------------------------------------------------------------------- notices

/** The node's widget values, to tell when a notice about its settings no longer holds. */
function widgetSignature(node) {
  try {
    return JSON.stringify((node.widgets ?? []).filter((w) => w.serialize !== false && !w.name?.startsWith("enfoque")).map((w) => w.value));
  } catch {
    return "";
  }
}

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
    if (!node.enfoqueNoticeHooked) {
      node.enfoqueNoticeHooked = true;
      const draw = node.onDrawForeground;
      node.onDrawForeground = function (...args) {
        const out = draw?.apply(this, args);
        if (this.enfoqueNotice) {
          // a notice about this node's settings goes when they change
          if (this.enfoqueNotice.widgets !== widgetSignature(this)) setNotice(this, "");
          else fitHeight(this); // measured only now that it is on screen
        }
        return out;
      };
    }
  }
  s.widgets = widgetSignature(node);
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

/** A run starts: the notices of nodes it does not take from the cache are of an earlier run; it says them again. */
function clearStaleNotices(cached) {
  for (const node of app.graph?.nodes ?? []) {
    if (node.enfoqueNotice && !cached.has(String(node.id))) setNotice(node, "");
  }
}

// ---------------------------------------------------------- probe sockets, and older workflows' probes

/** The probe (and maps) sockets and links in their own colours, unless the colour palette gives them one. */
function ensureSocketColours() {
  const byType = app.canvas?.default_connection_color_byType;
  const links = app.canvas?.constructor?.link_type_colors;
  for (const [type, colour] of Object.entries(SOCKET_COLOURS)) {
    if (byType && !byType[type]) byType[type] = colour;
    if (links && !links[type]) links[type] = colour;
  }
}

function linksOf(graph) {
  const links = graph?.links;
  if (!links) return [];
  return links instanceof Map ? [...links.values()] : Object.values(links).filter(Boolean);
}

/** Links saved with the one probe type of before: give them their slots' type, or say what to connect. */
function migrateProbeLinks(graph) {
  const wrong = [];
  for (const link of linksOf(graph)) {
    if (link?.type !== LEGACY_PROBE) continue;
    const from = graph.getNodeById(link.origin_id)?.outputs?.[link.origin_slot]?.type;
    const target = graph.getNodeById(link.target_id);
    const to = target?.inputs?.[link.target_slot]?.type;
    if (from && from === to) link.type = from;
    else if (target && from && to) wrong.push({ target, from, to });
  }
  if (!wrong.length) return;
  // the names of the nodes whose probe each type is come from the server
  infoReady.then(() => {
    for (const { target, from, to } of wrong) {
      const [have, need] = [probeSource(from), probeSource(to)];
      if (!have || !need || app.graph?.getNodeById?.(target.id) !== target) continue;
      setNotice(
        target,
        `${target.title}: its probe comes from ${have}, but it needs the probe of ${need} ` +
          `(a workflow from before the two probes got their own types). Connect the probe output of ${need}.`,
      );
    }
  });
}

// ------------------------------------------------------------- token weights

/**
 * A weights text as the server reads it (attention/formats.py parse_word_weights): one entry per
 * comma-separated fragment, {raw, key, weight} or {raw, error}.
 */
function parseWeights(text) {
  const out = [];
  for (const frag of String(text ?? "").split(",")) {
    const raw = frag.trim();
    if (!raw) continue;
    const m = WEIGHT_RE.exec(frag);
    if (!m) {
      out.push({ raw, error: `cannot read '${raw}'; write word:weight, e.g. 'cat:1.5'` });
      continue;
    }
    const weight = parseFloat(m[2]);
    const e = { raw, key: m[1], weight };
    if (!Number.isFinite(weight)) e.error = `weight '${m[2]}' for '${m[1]}' is too large`;
    else if (weight < 0) e.bad = `weight ${formatNumber(weight)} for '${m[1]}' is negative; use 0 to remove a word`;
    out.push(e);
  }
  return out;
}

function formatNumber(x) {
  return String(Number(x.toFixed(2)));
}

/**
 * The weight of each word (chip) by the server's rule: the entries in order, each setting the words it
 * selects (the last one wins); and what the server would refuse: [{raw, message, indices}].
 */
function weighWords(labels, text) {
  const weights = labels.map(() => 1);
  const invalid = new Set();
  const errors = [];
  for (const e of parseWeights(text)) {
    if (e.error) {
      errors.push({ raw: e.raw, message: e.error, indices: [] });
      continue;
    }
    e.indices = findWords(labels, e.key);
    if (!e.indices.length) {
      if (labels.length) errors.push({ raw: e.raw, message: `'${e.key}' is not a word of the prompt`, indices: [] });
      continue;
    }
    for (const i of e.indices) {
      weights[i] = e.weight;
      if (e.bad) invalid.add(i);
      else invalid.delete(i);
    }
    if (e.bad) errors.push({ raw: e.raw, message: e.bad, indices: e.indices });
  }
  return { weights, invalid, errors };
}

/** `text` with chip `i`'s weight set (by its own entry, `word` or `word#k`); other entries are kept verbatim. */
function withChipWeight(text, labels, i, weight) {
  const entries = parseWeights(text);
  const picks = entries.map((e) => (!e.error && findWords(labels, e.key)) || []);
  let own = -1; // the last entry that is chip i's own
  picks.forEach((idx, j) => {
    if (idx.length === 1 && idx[0] === i) own = j;
  });
  const later = own >= 0 && picks.slice(own + 1).some((idx) => idx.includes(i));
  const others = picks.some((idx, j) => j !== own && idx.includes(i));
  const out = entries.map((e) => e.raw);
  const entry = (key) => `${key}:${formatNumber(weight)}`;
  if (own >= 0 && !later) {
    if (weight === 1 && !others) out.splice(own, 1);
    else out[own] = entry(entries[own].key);
  } else {
    if (own >= 0) out.splice(own, 1);
    if (weight !== 1 || others) out.push(entry(spelling(labels, i)));
  }
  return out.join(", ");
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
  const errors = el("div", "enfoque-errors");
  root.append(hint, chips, errors);
  const state = { root, chips, hint, errors, words: [], text: null, pending: null, seq: 0, rendered: null };
  node.enfoqueWeights = state;
  const widget = node.addDOMWidget("enfoque_weight_chips", "enfoque-weights", root, {
    serialize: false,
    hideOnZoom: true,
    getMinHeight: () =>
      Math.min(
        300,
        widgetHeight([
          Math.max(17, laidOutHeight(hint, 17)),
          laidOutHeight(chips, (CHIP_H + CHIP_GAP) * Math.ceil(state.words.length / 5)),
          errors.textContent ? laidOutHeight(errors, 15 * errors.childElementCount) : 0,
        ]),
      ),
  });
  widget.serialize = false;
  state.widget = widget;
  watchSize(node, hint, chips, errors);
  return state;
}

function setWeight(node, i, value) {
  const w = weightsWidgetOf(node);
  const s = node.enfoqueWeights;
  if (!w || !s) return;
  const v = Math.min(MAX_WEIGHT, Math.max(0, Math.round(value * 100) / 100));
  const next = withChipWeight(w.value, s.words, i, v);
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
  const { weights, invalid, errors } = weighWords(s.words, w.value);
  for (const chip of s.chips.children) {
    const i = +chip.dataset.index;
    const v = weights[i] ?? 1;
    chip.dataset.weight = formatNumber(v);
    chip.querySelector(".enfoque-val").textContent = v.toFixed(2);
    chip.classList.toggle("enfoque-invalid", invalid.has(i));
    chip.classList.toggle("enfoque-up", v > 1);
    chip.classList.toggle("enfoque-down", v < 1 && v > 0);
    chip.classList.toggle("enfoque-zero", v === 0);
    chip.title = invalid.has(i)
      ? "A negative weight: the run would stop here. Wheel or drag it to 0 or more."
      : "Wheel or drag up/down to change the weight (shift: bigger steps); double-click resets to 1";
  }
  s.errors.replaceChildren(
    ...errors.map((e) => {
      const line = el("div", "enfoque-error", `✕ ${e.message}`);
      line.dataset.raw = e.raw;
      return line;
    }),
  );
  s.errors.enfoqueHeight = undefined;
  s.rendered = w.value;
}

function currentWeight(node, i) {
  const s = node.enfoqueWeights;
  return weighWords(s?.words ?? [], weightsWidgetOf(node)?.value).weights[i] ?? 1;
}

function renderWeightChips(node) {
  const s = weightState(node);
  s.chips.replaceChildren();
  s.words.forEach((word, i) => {
    const chip = el("span", "enfoque-chip");
    chip.dataset.word = word;
    chip.dataset.index = String(i);
    chip.append(el("span", "enfoque-word", word), el("span", "enfoque-val", "1.00"));
    chip.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        e.stopPropagation();
        const step = e.shiftKey ? WHEEL_STEP_SHIFT : WHEEL_STEP;
        const dir = (e.deltaY || e.deltaX) < 0 ? 1 : -1;
        asChange(() => setWeight(node, i, Math.max(0, currentWeight(node, i)) + dir * step));
      },
      { passive: false },
    );
    chip.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      e.stopPropagation();
      chip.setPointerCapture?.(e.pointerId);
      const start = Math.max(0, currentWeight(node, i));
      const y0 = e.clientY;
      app.canvas?.emitBeforeChange?.();
      const move = (ev) => {
        const units = (y0 - ev.clientY) / DRAG_PX_PER_UNIT;
        setWeight(node, i, Math.round((start + units) * 20) / 20);
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
      asChange(() => setWeight(node, i, 1));
    });
    s.chips.append(chip);
  });
  updateWeightChips(node);
  const min = node.computeSize?.();
  if (min && node.size[1] < min[1]) node.setSize([node.size[0], min[1]]);
  redraw(node);
}

// The model family the graph names upstream (a node only one family uses, or a CLIP loader's `type`),
// by the server's table (GET /enfoque/info), so that /enfoque/tokenize splits words as that family's
// encode will (T5 and CLIP for Flux and SD3, an LLM's words for Qwen-Image); null if unknown.
function upstreamFamily(node, depth = 0, seen = new Set()) {
  if (!node || depth > 16 || seen.has(node)) return null;
  seen.add(node);
  const byNode = info?.node_families?.[node.comfyClass];
  if (byNode) return byNode;
  if (/CLIPLoader/.test(node.comfyClass ?? "")) {
    const type = node.widgets?.find((x) => x.name === "type")?.value;
    return info?.loader_types?.[type] ?? null;
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
    await infoReady;
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
  s.words = words.filter((w) => w.trim());
  s.hint.textContent = error
    ? `Cannot split the prompt: ${error}`
    : s.words.length
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
  wordRule: { selectWords }, // the word rule as attention/selection.py has it (the browser test runs it)
  setup() {
    addStyle();
    ensureSocketColours();
    api.addEventListener(NOTICE_EVENT, onNotice);
    api.addEventListener("execution_start", ({ detail }) => {
      run.id = detail?.prompt_id ?? null;
      run.executed = new Set();
    });
    api.addEventListener("executed", ({ detail }) => {
      run.executed.add(String(detail?.display_node ?? detail?.node));
    });
    // a cached node's chips show the output the cache holds: still true; so do its notices
    api.addEventListener("execution_cached", ({ detail }) => {
      const cached = new Set((detail?.nodes ?? []).map(String));
      for (const id of cached) run.executed.add(id);
      clearStaleNotices(cached);
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
    ensureSocketColours();
    migrateProbeLinks(app.graph);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (MAP_NODES.has(nodeData?.name)) setupMapNode(nodeType);
    else if (nodeData?.name === WEIGHT_NODE) setupWeightNode(nodeType);
    if (String(nodeData?.name ?? "").startsWith("Enfoque")) {
      // the colour palette may be (re)loaded after setup, and it clears colours it does not name
      chain(nodeType.prototype, "onDrawBackground", ensureSocketColours);
    }
  },
});
