// clipseg serve's page: one request per photo and prompt; the threshold, the views and the downloads
// work on the soft map the server returned, in the browser, with no new request.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { photo: null, soft: null, width: 0, height: 0 };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function pixelsOf(image) {
  const canvas = new OffscreenCanvas(state.width, state.height);
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, state.width, state.height);
  return context.getImageData(0, 0, state.width, state.height);
}

function loadImage(source) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = source;
  });
}

// The mask cut from the soft map at the slider's threshold: one byte per pixel, 255 inside.
function currentMask() {
  const cut = Math.round(Number($("threshold").value) * 255);
  const soft = state.soft.data, mask = new Uint8ClampedArray(state.width * state.height);
  for (let i = 0; i < mask.length; i++) mask[i] = soft[4 * i] >= cut ? 255 : 0;
  return mask;
}

function render(view) {
  const mask = currentMask(), photo = state.photo.data;
  const out = new ImageData(state.width, state.height);
  for (let i = 0; i < mask.length; i++) {
    const p = 4 * i, inside = mask[i] === 255;
    if (view === "mask") {
      out.data.fill(mask[i], p, p + 3);
      out.data[p + 3] = 255;
    } else if (view === "cutout") {
      out.data.set(photo.subarray(p, p + 3), p);
      out.data[p + 3] = mask[i];
    } else {  // overlay: the masked pixels tinted, as clipseg segment's overlay
      for (let c = 0; c < 3; c++) out.data[p + c] = inside ? photo[p + c] * 0.5 + [255, 0, 80][c] * 0.5 : photo[p + c];
      out.data[p + 3] = 255;
    }
  }
  return out;
}

function draw() {
  const view = document.querySelector("input[name=view]:checked").value;
  const canvas = $("view");
  canvas.width = state.width;
  canvas.height = state.height;
  canvas.getContext("2d").putImageData(render(view), 0, 0);
  canvas.dataset.view = view;
  canvas.setAttribute("aria-label", `The photo: ${view} at threshold ${$("threshold").value}`);
  $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
}

function download(view, name) {
  const canvas = document.createElement("canvas");
  canvas.width = state.width;
  canvas.height = state.height;
  canvas.getContext("2d").putImageData(render(view), 0, 0);
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

function list(text) {
  return text.split(",").map((part) => part.trim()).filter(Boolean);
}

async function segment(event) {
  event.preventDefault();
  const file = $("image").files[0];
  const prompts = list($("prompt").value);
  if (!file || !prompts.length) {
    showError("Pick a photo and type what to cut out.");
    return;
  }
  const body = new FormData();
  body.append("image", file);
  prompts.forEach((prompt) => body.append("prompt", prompt));
  list($("negative").value).forEach((negative) => body.append("negative", negative));
  body.append("union", "true");
  body.append("soft", "true");
  $("go").disabled = true;
  $("view").dataset.state = "working";
  showError("");
  try {
    const answer = await fetch("/v1/segment", { method: "POST", body, headers: { Accept: "application/json" } });
    const reply = await answer.json().catch(() => ({ error: `the server answered ${answer.status}` }));
    if (!answer.ok) throw new Error(reply.error || `the server answered ${answer.status}`);
    const photo = await loadImage(URL.createObjectURL(file));
    state.width = photo.naturalWidth;
    state.height = photo.naturalHeight;
    state.photo = pixelsOf(photo);
    state.soft = pixelsOf(await loadImage("data:image/png;base64," + reply.masks[0].mask));
    $("result").hidden = false;
    draw();
    $("view").dataset.state = "ready";
  } catch (error) {
    $("view").dataset.state = "error";
    showError(error.message);
  } finally {
    $("go").disabled = false;
  }
}

$("ask").addEventListener("submit", segment);
$("threshold").addEventListener("input", draw);
document.querySelectorAll("input[name=view]").forEach((radio) => radio.addEventListener("change", draw));
$("download-mask").addEventListener("click", () => download("mask", "mask.png"));
$("download-cutout").addEventListener("click", () => download("cutout", "cutout.png"));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) $("image").files = event.dataTransfer.files;
});
