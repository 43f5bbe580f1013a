// The duplicates view: near-duplicate groups side by side, keep one or delete any; uses app.js's helpers.
"use strict";

function showView(name) {
  const dup = name === "duplicates";
  $("dup-view").hidden = !dup;
  for (const id of ["query-info", "status", "results", "sentinel"]) $(id).hidden = dup;
  if (dup) $("more").hidden = true;
}

function dupStatus(text, isError = false) {
  $("dup-status").textContent = text;
  $("dup-status").classList.toggle("error", isError);
}

function dupItem(image, group, collection) {
  const item = document.createElement("figure");
  item.className = "dup-item";
  item.dataset.id = image.id;
  const img = document.createElement("img");
  img.src = withKey(`/images/${image.id}/thumbnail?size=256`);
  img.alt = image.uri;
  const caption = document.createElement("figcaption");
  const name = document.createElement("div");
  name.textContent = displayName(image.uri);
  name.title = image.uri;
  const facts = document.createElement("div");
  facts.textContent = `${image.width} × ${image.height} · ${image.byte_size.toLocaleString()} B · ${new Date(image.created_at).toLocaleDateString()}`;
  const keep = document.createElement("button");
  keep.type = "button";
  keep.className = "keep";
  keep.textContent = "Keep only this";
  keep.addEventListener("click", () => keepOnly(image.id, group, collection));
  const drop = document.createElement("button");
  drop.type = "button";
  drop.className = "delete";
  drop.textContent = "Delete";
  drop.addEventListener("click", () => deleteImages([image.id], collection));
  caption.append(name, facts, keep, drop);
  item.append(img, caption);
  return item;
}

async function deleteImages(ids, collection) {
  if (!confirm(`Delete ${ids.length} image${ids.length === 1 ? "" : "s"} from “${collection}”? This cannot be undone.`)) return;
  try {
    for (const id of ids) await api(`/images/${id}`, { method: "DELETE" });
  } catch (error) {
    dupStatus(error.message, true);
    return;
  }
  await showDuplicates(collection, `${ids.length} deleted. `);
}

function keepOnly(id, group, collection) {
  return deleteImages(group.images.map((i) => i.id).filter((other) => other !== id), collection);
}

// Bumped by each showDuplicates: an answer that arrives after a newer request was made is dropped,
// so a slow first load cannot add its groups beside the ones the user asked for since.
let dupRequest = 0;

async function showDuplicates(collection, prefix = "") {
  showView("duplicates");
  const request = ++dupRequest;
  const threshold = Number($("dup-threshold").value) || 0.99;
  dupStatus("Looking for near-duplicates…");
  $("dup-groups").replaceChildren();
  $("dup-exact").replaceChildren();
  let report;
  try {
    report = await api(`/collections/${encodeURIComponent(collection)}/duplicates?threshold=${threshold}&resolve=keep-largest`);
  } catch (error) {
    if (request === dupRequest) dupStatus(error.message, true);
    return;
  }
  if (request !== dupRequest) return;
  $("dup-groups").replaceChildren();
  $("dup-exact").replaceChildren();
  $("dup-groups").append(...report.groups.map((group) => {
    const row = document.createElement("li");
    row.className = "dup-group";
    const title = document.createElement("h3");
    title.textContent = `${group.images.length} images · cosine ${group.min_score.toFixed(3)}–${group.max_score.toFixed(3)}`;
    const items = document.createElement("div");
    items.className = "dup-items";
    items.append(...group.images.map((image) => dupItem(image, group, collection)));
    const largest = items.querySelector(`[data-id="${group.keep}"]`);
    if (largest) largest.classList.add("suggested");
    row.append(title, items);
    return row;
  }));
  $("dup-exact").append(...report.exact.map((shared) => {
    const item = document.createElement("li");
    item.textContent = `Image ${shared.image.id}: ${shared.uris.join(", ")}`;
    return item;
  }));
  $("dup-exact-title").hidden = report.exact.length === 0;
  const shown = report.groups.length < report.total_groups ? ` (showing ${report.groups.length})` : "";
  dupStatus(report.total_groups
    ? `${prefix}${report.total_groups} group${report.total_groups === 1 ? "" : "s"} of near-duplicates in “${collection}”${shown}. The largest of each is outlined.`
    : `${prefix}No near-duplicates at cosine ≥ ${report.threshold} in “${collection}”.`);
}
