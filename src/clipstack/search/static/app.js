// clipstack search page: talks to /indices-info, /knn-service and /thumbnail. No external assets.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { modality: "image", image: null, indices: {} };

async function loadIndices() {
  const res = await fetch("/indices-info");
  state.indices = await res.json();
  const pick = $("index");
  pick.innerHTML = "";
  for (const name of Object.keys(state.indices)) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = name;
    pick.appendChild(opt);
  }
  showIndexMeta();
}

function showIndexMeta() {
  const info = state.indices[$("index").value];
  if (!info) return;
  const recall = Object.entries(info.recall_at_10 || {})
    .map(([m, r]) => `${m} recall@10 ${r === null ? "?" : r.toFixed(3)}`).join(" · ");
  $("index-meta").textContent =
    `${info.rows.toLocaleString()} items · dim ${info.dim} · ${recall}` +
    (info.encodes_queries ? "" : " · no model: text/image queries unavailable");
}

function setModality(m) {
  state.modality = m;
  for (const b of document.querySelectorAll(".toggle button")) {
    const on = b.dataset.modality === m;
    b.classList.toggle("on", on);
    b.setAttribute("aria-checked", String(on));
  }
  if ($("query").value || state.image) search();
}

function setImage(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.image = String(reader.result);
    $("query-image").src = state.image;
    $("query-image").hidden = false;
    $("drop-hint").hidden = true;
    $("clear-image").hidden = false;
    $("query").value = "";
    search();
  };
  reader.readAsDataURL(file);
}

function clearImage() {
  state.image = null;
  $("query-image").hidden = true;
  $("drop-hint").hidden = false;
  $("clear-image").hidden = true;
}

async function search() {
  const name = $("index").value;
  const text = $("query").value.trim();
  if (!text && !state.image) return;
  const body = {
    indice_name: name, modality: state.modality, num_images: Number($("count").value),
    // As clip-retrieval's front end: fetch more neighbours than shown, so deduplication leaves enough.
    num_result_ids: Math.min(10000, 5 * Number($("count").value)), deduplicate: $("dedup").checked,
  };
  if (state.image) body.image = state.image.split(",")[1]; else body.text = text;
  $("status").textContent = "searching…";
  $("status").classList.remove("error");
  const t0 = performance.now();
  let res, data;
  try {
    res = await fetch("/knn-service", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    data = await res.json();
  } catch (err) {
    $("status").textContent = `request failed: ${err}`;
    $("status").classList.add("error");
    return;
  }
  if (!res.ok) {
    $("status").textContent = `${data.field ? data.field + ": " : ""}${data.error}`;
    $("status").classList.add("error");
    return;
  }
  const ms = Math.round(performance.now() - t0);
  $("status").textContent = `${data.length} results in ${ms} ms`;
  render(name, data);
}

function render(name, results) {
  const grid = $("results");
  grid.innerHTML = "";
  $("empty").hidden = results.length > 0;
  if (!results.length) $("empty").textContent = "No results.";
  const info = state.indices[name] || {};
  for (const r of results) {
    const card = document.createElement("article");
    card.className = "card result";
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    if (info.thumbnails) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = r.caption || "";
      img.src = `/thumbnail/${encodeURIComponent(name)}/${r.id}`;
      thumb.appendChild(img);
    } else {
      const none = document.createElement("span");
      none.className = "none";
      none.textContent = "no thumbnail";
      thumb.appendChild(none);
    }
    const sim = document.createElement("span");
    sim.className = "sim";
    sim.textContent = r.similarity.toFixed(3);
    thumb.appendChild(sim);
    const meta = document.createElement("div");
    meta.className = "meta";
    const cap = document.createElement("div");
    cap.className = "caption";
    cap.textContent = r.caption || "(no caption)";
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = `${Math.max(0, Math.min(1, r.similarity)) * 100}%`;
    bar.appendChild(fill);
    const ids = document.createElement("div");
    ids.className = "ids";
    ids.textContent = `#${r.id}${r.key ? " · " + r.key : ""}`;
    meta.append(cap, bar, ids);
    card.append(thumb, meta);
    grid.appendChild(card);
  }
}

function wire() {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); if ($("query").value.trim()) clearImage(); search(); });
  $("index").addEventListener("change", () => { showIndexMeta(); search(); });
  for (const b of document.querySelectorAll(".toggle button")) b.addEventListener("click", () => setModality(b.dataset.modality));
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", (e) => setImage(e.target.files[0]));
  $("clear-image").addEventListener("click", clearImage);
  for (const ev of ["dragenter", "dragover"]) {
    document.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    document.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  document.addEventListener("drop", (e) => setImage(e.dataTransfer.files[0]));
}

wire();
loadIndices().catch((err) => { $("status").textContent = `cannot load indices: ${err}`; });
