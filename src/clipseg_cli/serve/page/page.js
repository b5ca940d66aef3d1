// clipseg serve's page: one request per photo, every prompt its own soft map (or their union, when asked);
// each map is a layer in the CLI's colour, and its threshold, the views and the downloads are cut from
// that map in the browser, with no new request.
"use strict";
const $ = (id) => document.getElementById(id);
const SETTINGS = JSON.parse($("settings").textContent);  // the server's: {palette: [[r, g, b], ...], threshold}
const TINT = 0.5;  // the overlay: pixel * (1 - TINT) + colour * TINT, as clipseg segment's
const state = { file: null, photo: null, width: 0, height: 0, stem: "photo", layers: [], request: null,
                timer: 0, frame: 0 };

// ---- messages: the status line (work in progress) and errors, which replace the result ----

function say(text, working = false) {
  $("status-text").textContent = text;
  $("spinner").hidden = !working;
  $("elapsed").textContent = "";
}

function fail(message, field = null) {
  clearResult();
  say("");
  $("error").textContent = message;
  $("error").hidden = false;
  if (field) field.focus();
}

function clearError() {
  $("error").textContent = "";
  $("error").hidden = true;
}

function clearResult() {
  $("result").hidden = true;
  $("layers").replaceChildren();
  const canvas = $("view");
  canvas.width = canvas.height = 0;
  delete canvas.dataset.state;
  state.layers = [];
  state.photo = null;
}

// ---- the photo: picked, dropped anywhere or pasted ----

function choosePhoto(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    fail(`${file.name || "That"} is not an image: pick a photo (PNG, JPEG, WebP, ...).`, $("image"));
    return;
  }
  state.file = file;
  if ($("image").files[0] !== file) {  // dropped or pasted: the file input shows it too
    const transfer = new DataTransfer();
    transfer.items.add(file);
    $("image").files = transfer.files;
  }
  $("photo-name").textContent = `${file.name || "pasted image"}, ${Math.ceil(file.size / 1024)} KB`;
  URL.revokeObjectURL($("preview").src);
  $("preview").src = URL.createObjectURL(file);
  $("chosen").hidden = false;
  clearError();
}

function imageIn(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
}

function carriesFiles(event) {
  return Array.from(event.dataTransfer?.types || []).includes("Files");
}

// ---- the request ----

function list(text) {
  return text.split(",").map((part) => part.trim()).filter(Boolean);
}

function busy(on) {
  state.request = on ? state.request : null;
  $("go").disabled = on;
  $("cancel").hidden = !on;
  $("ask").setAttribute("aria-busy", String(on));
  clearInterval(state.timer);
  if (!on) return;
  const start = performance.now();
  state.timer = setInterval(() => {  // elapsed time for the eye; the live region announces only the start
    $("elapsed").textContent = `${((performance.now() - start) / 1000).toFixed(1)} s`;
  }, 100);
}

async function segment(event) {
  event.preventDefault();
  if (state.request) return;
  const file = state.file || $("image").files[0];
  const prompts = list($("prompt").value);
  if (!file) return fail("Pick a photo first: choose a file, drop one on the page or paste one.", $("image"));
  if (!prompts.length) return fail("Type what to cut out, e.g. red car.", $("prompt"));
  const union = $("union").checked;
  const body = new FormData();
  body.append("image", file, file.name || "pasted.png");
  prompts.forEach((prompt) => body.append("prompt", prompt));
  list($("negative").value).forEach((negative) => body.append("negative", negative));
  body.append("union", String(union));
  body.append("soft", "true");
  body.append("threshold", String(SETTINGS.threshold));  // where the negatives fire
  clearError();
  state.request = new AbortController();
  const started = performance.now();
  busy(true);
  say(`Segmenting ${prompts.length === 1 ? "1 prompt" : `${prompts.length} prompts`}${union ? " (merged)" : ""}…`,
      true);
  try {
    const answer = await fetch("v1/segment", { method: "POST", body, signal: state.request.signal,
                                               headers: { Accept: "application/json" } });
    const reply = await answer.json().catch(() => ({}));
    if (!answer.ok) throw new Error(reply.error || `the server answered ${answer.status} ${answer.statusText}`);
    await show(file, reply.masks, union);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    say(`${state.layers.length === 1 ? "1 layer" : `${state.layers.length} layers`} in ${seconds} s`);
  } catch (error) {
    if (error.name === "AbortError") say("Cancelled.");
    else fail(`Could not segment: ${error.message}`);
  } finally {
    busy(false);
  }
}

// ---- the result: the photo and one layer per mask ----

function loadImage(source) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = source;
  });
}

function pixelsOf(image) {
  const canvas = new OffscreenCanvas(state.width, state.height);
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, state.width, state.height);
  return context.getImageData(0, 0, state.width, state.height);
}

async function show(file, masks, union) {
  const address = URL.createObjectURL(file);
  try {
    const photo = await loadImage(address);
    state.width = photo.naturalWidth;
    state.height = photo.naturalHeight;
    state.photo = pixelsOf(photo);
  } finally {
    URL.revokeObjectURL(address);
  }
  state.stem = (file.name || "pasted").replace(/\.[^.]*$/, "") || "photo";
  state.layers = await Promise.all(masks.map(async (record, index) => {
    const soft = pixelsOf(await loadImage(`data:image/png;base64,${record.mask}`)).data;
    const grey = new Uint8Array(state.width * state.height);
    for (let i = 0; i < grey.length; i++) grey[i] = soft[4 * i];
    return { prompt: record.prompt, color: SETTINGS.palette[index % SETTINGS.palette.length], soft: grey,
             threshold: SETTINGS.threshold, visible: true, mask: null, rings: null };
  }));
  $("merged").hidden = !union;
  $("layers").replaceChildren(...state.layers.map(layerRow));
  $("result").hidden = false;
  draw();
}

function layerRow(layer, index) {
  const row = $("layer-row").content.firstElementChild.cloneNode(true);
  row.style.setProperty("--layer", `rgb(${layer.color.join(" ")})`);
  row.dataset.index = String(index);
  row.querySelectorAll(".name").forEach((name) => { name.textContent = layer.prompt; });
  const toggle = row.querySelector(".toggle input");
  toggle.addEventListener("change", () => {
    layer.visible = toggle.checked;
    row.classList.toggle("off", !layer.visible);
    schedule();
  });
  const slider = row.querySelector("input[type=range]");
  slider.min = "0.01";
  slider.value = String(layer.threshold);
  slider.addEventListener("input", () => {
    layer.threshold = Number(slider.value);
    layer.mask = layer.rings = null;
    updateRow(row, layer);
    schedule();
  });
  for (const kind of ["mask", "cutout"]) {
    const button = row.querySelector(`.download-${kind}`);
    button.setAttribute("aria-label", `Download the ${kind === "mask" ? "mask" : "cut-out"} of ${layer.prompt} (PNG)`);
    button.addEventListener("click", () => download(layer, kind));
  }
  updateRow(row, layer);
  return row;
}

function updateRow(row, layer) {
  const mask = maskOf(layer);
  let inside = 0;
  for (let i = 0; i < mask.length; i++) inside += mask[i];
  row.querySelector("output").textContent = layer.threshold.toFixed(2);
  row.querySelector(".coverage").textContent = `${(100 * inside / mask.length).toFixed(1)} %`;
  layer.coverage = inside / mask.length;
}

// The layer's mask at its threshold, as clipseg segment cuts it: 1 where round(p * 255) >= round(t * 255).
function maskOf(layer) {
  if (!layer.mask) {
    const cut = Math.round(layer.threshold * 255);
    layer.mask = new Uint8Array(layer.soft.length);
    for (let i = 0; i < layer.soft.length; i++) layer.mask[i] = layer.soft[i] >= cut ? 1 : 0;
  }
  return layer.mask;
}

// ---- drawing: the overlay (tint and outline, as the CLI's), the masks in their colours, the cut-out ----

// Per pixel: 0 outside the layer's mask, 1 its outermost pixel (a 4-neighbour outside; the image's border is
// not an edge), 2 the next one inward, 3 deeper inside: the CLI's 2-pixel outline.
function ringsOf(layer) {
  if (layer.rings) return layer.rings;
  const { width, height } = state, mask = maskOf(layer);
  const rings = new Uint8Array(mask.length);
  const touches = (i, x, y, level) => (x > 0 && level(i - 1)) || (x < width - 1 && level(i + 1))
    || (y > 0 && level(i - width)) || (y < height - 1 && level(i + width));
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i++) {
      if (mask[i]) rings[i] = touches(i, x, y, (j) => !mask[j]) ? 1 : 3;
    }
  }
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i++) {
      if (rings[i] === 3 && touches(i, x, y, (j) => rings[j] === 1)) rings[i] = 2;
    }
  }
  layer.rings = rings;
  return rings;
}

function contrastOf([red, green, blue]) {
  return 0.299 * red + 0.587 * green + 0.114 * blue >= 128 ? [0, 0, 0] : [255, 255, 255];
}

function render(view, layers) {
  const photo = state.photo.data, out = new ImageData(state.width, state.height), data = out.data;
  if (view === "cutout") {
    const masks = layers.map(maskOf);
    data.set(photo);
    for (let i = 0; i < state.width * state.height; i++) data[4 * i + 3] = masks.some((mask) => mask[i]) ? 255 : 0;
    return out;
  }
  if (view === "mask") {
    for (let i = 3; i < data.length; i += 4) data[i] = 255;
  } else {
    data.set(photo);
  }
  for (const layer of layers) {
    const color = layer.color, edge = contrastOf(color);
    const rings = view === "mask" ? maskOf(layer) : ringsOf(layer);
    for (let i = 0; i < rings.length; i++) {
      if (!rings[i]) continue;
      const p = 4 * i;
      for (let c = 0; c < 3; c++) {
        if (view === "mask" || rings[i] === 2) data[p + c] = color[c];
        else if (rings[i] === 1) data[p + c] = edge[c];
        else data[p + c] = Math.round(data[p + c] * (1 - TINT) + color[c] * TINT);
      }
      data[p + 3] = 255;
    }
  }
  return out;
}

function schedule() {
  if (!state.frame) state.frame = requestAnimationFrame(() => { state.frame = 0; draw(); });
}

function draw() {
  if (!state.photo) return;
  const view = document.querySelector("input[name=view]:checked").value;
  const shown = state.layers.filter((layer) => layer.visible);
  const canvas = $("view");
  canvas.width = state.width;
  canvas.height = state.height;
  canvas.getContext("2d").putImageData(render(view, shown), 0, 0);
  canvas.dataset.view = view;
  canvas.dataset.state = "ready";
  const names = shown.map((layer) => `${layer.prompt} (${(100 * layer.coverage).toFixed(1)} %)`).join(", ");
  const what = { overlay: "The photo with", mask: "The masks of", cutout: "The photo cut out to" }[view];
  canvas.setAttribute("aria-label", shown.length ? `${what} ${names}` : "The photo, no layer shown");
}

function download(layer, kind) {
  const canvas = document.createElement("canvas");
  canvas.width = state.width;
  canvas.height = state.height;
  const out = new ImageData(state.width, state.height), mask = maskOf(layer);
  for (let i = 0; i < mask.length; i++) {
    const p = 4 * i;
    if (kind === "mask") out.data.fill(mask[i] * 255, p, p + 3);
    else out.data.set(state.photo.data.subarray(p, p + 3), p);
    out.data[p + 3] = kind === "mask" ? 255 : mask[i] * 255;
  }
  canvas.getContext("2d").putImageData(out, 0, 0);
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.stem}.${layer.prompt.replace(/[^\w.-]+/g, "_")}.${kind}.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

// ---- wiring ----

$("ask").addEventListener("submit", segment);
$("cancel").addEventListener("click", () => state.request?.abort());
$("image").addEventListener("change", () => choosePhoto($("image").files[0]));
$("preview").addEventListener("load", () => { $("preview").hidden = false; });
$("preview").addEventListener("error", () => { $("preview").hidden = true; });  // not an image the browser shows
document.querySelectorAll("input[name=view]").forEach((radio) => radio.addEventListener("change", schedule));
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") state.request?.abort();
});
document.addEventListener("paste", (event) => {
  const file = imageIn(event.clipboardData?.items);
  if (!file) return;  // text: pasted where the cursor is, as usual
  event.preventDefault();
  choosePhoto(file);
});
let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  $("dropping").hidden = false;
});
document.addEventListener("dragleave", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  $("dropping").hidden = dragDepth > 0;
});
document.addEventListener("dragover", (event) => {
  if (carriesFiles(event)) event.preventDefault();
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  $("dropping").hidden = true;
  const file = event.dataTransfer?.files[0];
  if (file) choosePhoto(file);
});
