// The search page: text or image in, a grid of results out; the query lives in the URL.
// A query can be refined with "more like" / "less like" a result, ordered by date, and paged by cursor.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, shown: 0, cursor: null, exhausted: false, loading: false, collections: [] };
const ORDERS = ["score", "-created_at", "created_at"];

function pageSize() {
  const k = Number(new URLSearchParams(location.search).get("k"));
  return Number.isInteger(k) && k > 0 && k <= 200 ? k : 24;
}

function ids(text) {
  return (text || "").split(",").map(Number).filter((n) => Number.isInteger(n) && n > 0);
}

function hasQuery(query) {
  return Boolean(query.text || query.image || query.image_id || query.like?.length);
}

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
  const query = { collection: params.get("collection") || "default", like: ids(params.get("like")), unlike: ids(params.get("unlike")) };
  const order = params.get("order");
  query.order = ORDERS.includes(order) ? order : "score";
  if (params.get("id")) query.image_id = Number(params.get("id"));
  else if (params.get("q")) query.text = params.get("q");
  if (params.get("view") === "duplicates") query.view = "duplicates";
  return query;
}

function urlFor(query) {
  const params = new URLSearchParams();
  if (query.view) params.set("view", query.view);
  if (query.text) params.set("q", query.text);
  if (query.image_id) params.set("id", query.image_id);
  if (query.like?.length) params.set("like", query.like.join(","));
  if (query.unlike?.length) params.set("unlike", query.unlike.join(","));
  if (query.order && query.order !== "score") params.set("order", query.order);
  if (query.collection && query.collection !== "default") params.set("collection", query.collection);
  const k = new URLSearchParams(location.search).get("k");
  if (k) params.set("k", k);
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

function chip(id, sign, query) {
  const item = document.createElement("span");
  item.className = `chip ${sign === "+" ? "like" : "unlike"}`;
  item.dataset.id = id;
  const img = document.createElement("img");
  img.src = withKey(`/images/${id}/thumbnail?size=128`);
  img.alt = `${sign === "+" ? "more like" : "less like"} image ${id}`;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.title = "Remove from the query";
  remove.setAttribute("aria-label", `Remove image ${id} from the query`);
  remove.addEventListener("click", () => {
    const key = sign === "+" ? "like" : "unlike";
    navigate({ ...query, [key]: query[key].filter((other) => other !== id) });
  });
  item.append(sign, img, remove);
  return item;
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
  for (const id of query.like || []) info.append(chip(id, "+", query));
  for (const id of query.unlike || []) info.append(chip(id, "−", query));
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

function searchBody(query) {
  const body = { collection: query.collection, top_k: pageSize(), order: query.order || "score" };
  for (const key of ["text", "image", "image_id"]) if (query[key]) body[key] = query[key];
  if (query.like?.length) body.positive = query.like.map((id) => ({ image_id: id }));
  if (query.unlike?.length) body.negative = query.unlike.map((id) => ({ image_id: id }));
  return body;
}

async function runSearch(query, append = false) {
  if (state.loading) return;
  state.loading = true;
  showView("search");
  if (!append) {
    state.query = query;
    state.shown = 0;
    state.cursor = null;
    state.exhausted = false;
    $("results").replaceChildren();
    describeQuery(query);
  }
  setStatus("Searching…");
  // The next page comes from the cursor: the server neither re-encodes the query nor re-sends earlier results.
  const body = append ? { cursor: state.cursor, top_k: pageSize() } : searchBody(query);
  try {
    const answer = await api("/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    $("results").append(...answer.results.map(card));
    state.shown += answer.results.length;
    state.cursor = answer.next_cursor;
    state.exhausted = !answer.next_cursor;
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
  $("order").value = query.order;
  if (query.view === "duplicates") showDuplicates(query.collection);
  else if (hasQuery(query)) runSearch(query);
  else { showView("search"); idle(query.collection); }
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
    $("more-like-this").onclick = () => { dialog.close(); navigate({ collection: image.collection, image_id: image.id, order: $("order").value }); };
    const refine = (key) => () => {
      dialog.close();
      const query = { like: [], unlike: [], ...(state.query || { collection: image.collection }) };
      delete query.image;  // an uploaded image is not in the URL; a refined query must be shareable
      const other = key === "like" ? "unlike" : "like";
      navigate({ ...query, [other]: query[other].filter((x) => x !== image.id), [key]: [...new Set([...query[key], image.id])] });
    };
    $("refine-like").onclick = refine("like");
    $("refine-unlike").onclick = refine("unlike");
    $("refine-like").hidden = $("refine-unlike").hidden = !state.query || !hasQuery(state.query);
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
    if (text) navigate({ collection, text, order: $("order").value });
    else { history.pushState(null, "", urlFor({ collection })); idle(collection); }
  });
  $("collection").addEventListener("change", () => {
    const collection = $("collection").value;
    if (queryFromUrl().view === "duplicates") { history.pushState(null, "", urlFor({ view: "duplicates", collection })); showDuplicates(collection); return; }
    // Stored ids belong to the collection they came from: a refinement does not carry over.
    const query = { ...(state.query || {}), collection, like: [], unlike: [] };
    delete query.image;
    if (hasQuery(query)) navigate(query); else { history.pushState(null, "", urlFor(query)); idle(query.collection); }
  });
  $("order").addEventListener("change", () => {
    const query = { ...(state.query || queryFromUrl()), order: $("order").value };
    if (hasQuery(query) && !query.image) navigate(query);
    else if (query.image) runSearch(query);
  });
  $("duplicates-link").addEventListener("click", (event) => {
    event.preventDefault();
    const collection = $("collection").value || "default";
    history.pushState(null, "", urlFor({ view: "duplicates", collection }));
    showDuplicates(collection);
  });
  $("dup-form").addEventListener("submit", (event) => { event.preventDefault(); showDuplicates($("collection").value || "default"); });
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
