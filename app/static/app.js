// The search page: text or image in, a grid of results out; the query lives in the URL.
"use strict";

const PAGE = 24;
const $ = (id) => document.getElementById(id);
const state = { query: null, shown: 0, exhausted: false, loading: false, collections: [] };

function apiKey() { return localStorage.getItem("pe-search-key") || ""; }

function withKey(url) {
  const key = apiKey();
  return key ? `${url}${url.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(key)}` : url;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("key-dialog").showModal();
    throw new Error("This server needs an API key.");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const message = body?.message || (Array.isArray(body?.detail) ? body.detail.map((d) => d.msg).join("; ") : response.statusText);
    throw new Error(message);
  }
  return body;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function queryFromUrl() {
  const params = new URLSearchParams(location.search);
  const collection = params.get("collection") || "default";
  if (params.get("id")) return { collection, image_id: Number(params.get("id")) };
  if (params.get("q")) return { collection, text: params.get("q") };
  return { collection };
}

function urlFor(query) {
  const params = new URLSearchParams();
  if (query.text) params.set("q", query.text);
  if (query.image_id) params.set("id", query.image_id);
  if (query.collection && query.collection !== "default") params.set("collection", query.collection);
  const search = params.toString();
  return search ? `/?${search}` : "/";
}

async function loadCollections(selected) {
  try {
    state.collections = await api("/collections");
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  const select = $("collection");
  select.replaceChildren(...state.collections.map((c) => new Option(`${c.name} (${c.count})`, c.name)));
  if (!state.collections.some((c) => c.name === selected)) select.append(new Option(selected, selected));
  select.value = selected;
}

function describeQuery(query) {
  const info = $("query-info");
  info.replaceChildren();
  if (query.image) {
    const img = document.createElement("img");
    img.src = `data:image/*;base64,${query.image.value}`;
    img.alt = "Your image";
    info.append(img, "Images like yours");
  } else if (query.image_id) {
    const img = document.createElement("img");
    img.src = withKey(`/images/${query.image_id}/thumbnail?size=128`);
    img.alt = `Image ${query.image_id}`;
    info.append(img, `More like image ${query.image_id}`);
  }
}

function displayName(uri) {
  if (uri.startsWith("upload://")) return `upload ${uri.slice(9, 17)}`;
  return uri.split("/").pop() || uri;
}

function card(result) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.id = result.id;
  button.dataset.score = result.score.toFixed(4);
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = withKey(`/images/${result.id}/thumbnail?size=256`);
  const name = displayName(result.uri);
  img.alt = name;
  const caption = document.createElement("div");
  caption.className = "caption";
  const label = document.createElement("span");
  label.textContent = name;
  const score = document.createElement("span");
  score.textContent = result.score.toFixed(3);
  score.title = "cosine similarity";
  caption.append(label, score);
  button.append(img, caption);
  button.addEventListener("click", () => openDetail(result.id));
  item.append(button);
  return item;
}

async function runSearch(query, append = false) {
  if (state.loading) return;
  state.loading = true;
  if (!append) {
    state.query = query;
    state.shown = 0;
    state.exhausted = false;
    $("results").replaceChildren();
    describeQuery(query);
  }
  setStatus("Searching…");
  const want = state.shown + PAGE;
  const body = { collection: query.collection, top_k: want };
  for (const key of ["text", "image", "image_id"]) if (query[key]) body[key] = query[key];
  try {
    const answer = await api("/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const fresh = answer.results.slice(state.shown);
    $("results").append(...fresh.map(card));
    state.shown = answer.results.length;
    state.exhausted = answer.results.length < want;
    setStatus(state.shown ? `${state.shown} result${state.shown === 1 ? "" : "s"} in ${(answer.time * 1000).toFixed(0)} ms` : "No images match. Try other words, or another collection.");
  } catch (error) {
    setStatus(error.message, true);
    state.exhausted = true;
  } finally {
    state.loading = false;
    $("more").hidden = state.exhausted || state.shown === 0;
  }
}

function idle(collection) {
  $("results").replaceChildren();
  $("query-info").replaceChildren();
  $("more").hidden = true;
  const info = state.collections.find((c) => c.name === collection);
  if (!state.collections.length) setStatus("No images yet: add some with `pe-search ingest FOLDER` or POST /images.");
  else setStatus(info ? `${info.count} images in “${collection}”. Describe what you are looking for, or drop an image.` : "Describe what you are looking for, or drop an image.");
}

function fromUrl() {
  const query = queryFromUrl();
  $("q").value = query.text || "";
  if (query.text || query.image_id) runSearch(query);
  else idle(query.collection);
}

function navigate(query) {
  history.pushState(null, "", urlFor(query));
  runSearch(query);
}

async function openDetail(id) {
  const dialog = $("detail");
  try {
    const image = await api(`/images/${id}`);
    $("detail-title").textContent = displayName(image.uri);
    $("detail-image").src = withKey(`/images/${id}/thumbnail?size=512`);
    $("detail-image").alt = image.uri;
    $("detail-open").href = withKey(image.file_url);
    const rows = { id: image.id, collection: image.collection, uri: image.uri, size: `${image.width} × ${image.height}`,
      format: image.format || "?", bytes: image.byte_size.toLocaleString(), added: new Date(image.created_at).toLocaleString(),
      ...Object.fromEntries(Object.entries(image.metadata).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)])) };
    $("detail-meta").replaceChildren(...Object.entries(rows).flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      return [dt, dd];
    }));
    $("more-like-this").onclick = () => { dialog.close(); navigate({ collection: image.collection, image_id: image.id }); };
    dialog.showModal();
  } catch (error) {
    setStatus(error.message, true);
  }
}

function searchByFile(file) {
  if (!file || !file.type.startsWith("image/")) { setStatus("That is not an image file.", true); return; }
  const reader = new FileReader();
  reader.onload = () => {
    const value = String(reader.result).split(",", 2)[1];
    history.pushState(null, "", urlFor({ collection: $("collection").value }));
    $("q").value = "";
    runSearch({ collection: $("collection").value, image: { type: "base64", value } });
  };
  reader.readAsDataURL(file);
}

function wire() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    const collection = $("collection").value || "default";
    if (text) navigate({ collection, text });
    else { history.pushState(null, "", urlFor({ collection })); idle(collection); }
  });
  $("collection").addEventListener("change", () => {
    const query = { ...(state.query || {}), collection: $("collection").value };
    delete query.image;
    if (query.text || query.image_id) navigate(query); else { history.pushState(null, "", urlFor(query)); idle(query.collection); }
  });
  $("file").addEventListener("change", (event) => searchByFile(event.target.files[0]));
  $("more").addEventListener("click", () => runSearch(state.query, true));
  new IntersectionObserver((entries) => {
    if (entries[0].isIntersecting && state.query && !state.exhausted && !state.loading && state.shown) runSearch(state.query, true);
  }).observe($("sentinel"));
  let depth = 0;
  document.addEventListener("dragenter", (e) => { if (e.dataTransfer?.types.includes("Files")) { depth++; $("drop").hidden = false; } });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("drop").hidden = true; } });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => { e.preventDefault(); depth = 0; $("drop").hidden = true; searchByFile(e.dataTransfer.files[0]); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== $("q") && !$("detail").open) { e.preventDefault(); $("q").focus(); }
  });
  $("key-form").addEventListener("submit", () => { localStorage.setItem("pe-search-key", $("key").value); location.reload(); });
  window.addEventListener("popstate", fromUrl);
}

window.addEventListener("DOMContentLoaded", async () => {
  wire();
  await loadCollections(queryFromUrl().collection);
  fromUrl();
});
