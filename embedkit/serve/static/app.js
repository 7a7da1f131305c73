// embedkit explorer: browse a latent dataset, walk its neighbours, search by image, map it,
// edit attributes and interpolate. Plain JS, no build step, no network beyond this server.
//
// Every id and label reaches the page through textContent, DOM properties or
// encodeURIComponent / URLSearchParams: never through innerHTML.
"use strict";

(() => {
  const PAGE_SIZE = 60;
  const K = 12;
  const MAP_LIMIT = 20000;
  const TRAIL_MAX = 12;
  const LABEL_CHIPS = 4;
  const EDIT_NEAREST = 6; // real images shown for an edit when the backbone cannot decode
  // the Python report's palette, so a label keeps its colour between the two
  const PALETTE = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#469990", "#9a6324", "#800000", "#808000", "#000075",
  ];
  const OTHER = "#a9a9a9";
  const NAMED = {
    red: "#e6194b", green: "#3cb44b", blue: "#4363d8", yellow: "#e6c619",
    magenta: "#f032e6", cyan: "#42d4f4", orange: "#f58231", purple: "#911eb4",
    black: "#222222", gray: "#a9a9a9", grey: "#a9a9a9",
  };
  // a viridis-like ramp for numeric columns
  const RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  /** A new element: props are class, text, attrs {name: value}, on {event: fn}. */
  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    if (props.class) node.className = props.class;
    if (props.text !== undefined) node.textContent = props.text;
    for (const [name, value] of Object.entries(props.attrs || {})) {
      if (value !== undefined && value !== null && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const [event, fn] of Object.entries(props.on || {})) node.addEventListener(event, fn);
    for (const child of children) if (child) node.append(child);
    return node;
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  /** fetch that throws ApiError with the server's one-line message on a non-2xx status. */
  async function api(url, options = {}) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError("The server cannot be reached.", 0);
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`.trim();
      if ((response.headers.get("content-type") || "").includes("json")) {
        try {
          const body = await response.json();
          if (body && typeof body.error === "string") message = body.error;
        } catch (_) {
          // keep the status line
        }
      }
      throw new ApiError(message, response.status);
    }
    return response;
  }

  const getJSON = async (url, options) => (await api(url, options)).json();
  const isAbort = (error) => error && error.name === "AbortError";

  /** Cancels the previous request of the same kind when a new one starts. */
  function latest() {
    let controller = null;
    return () => {
      if (controller) controller.abort();
      controller = new AbortController();
      return controller.signal;
    };
  }

  const thumbUrl = (id, size = 128) => `/api/thumb/${encodeURIComponent(id)}?size=${size}`;

  function formatValue(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number" && !Number.isInteger(value)) {
      return String(Number(value.toPrecision(4)));
    }
    return String(value);
  }

  function formatScore(result) {
    if (typeof result.score === "number") return `score ${result.score.toFixed(3)}`;
    if (typeof result.distance === "number") return `dist ${result.distance.toFixed(3)}`;
    return "";
  }

  function debounce(fn, ms) {
    let timer = 0;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  let statusTimer = 0;
  function setStatus(text, isError = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
    clearTimeout(statusTimer);
    if (text && !isError) statusTimer = setTimeout(() => setStatus(""), 4000);
  }

  function reportError(error) {
    if (isAbort(error)) return;
    setStatus(error instanceof ApiError ? error.message : String(error), true);
  }

  // ---------------------------------------------------------------- state

  const state = {
    info: null,
    columns: [], // every column name
    categorical: [], // [{name, values}] with listed values
    offset: 0,
    total: 0,
    q: "",
    filters: {}, // column -> value (string)
    labels: new Map(), // id -> labels, from every payload seen
    trail: [], // [{kind: "item", id} | {kind: "query", name, url}], each may cache .results
    pos: -1,
    a: null,
    b: null,
  };

  const current = () => (state.pos >= 0 ? state.trail[state.pos] : null);
  const currentId = () => {
    const entry = current();
    return entry && entry.kind === "item" ? entry.id : null;
  };

  function remember(items) {
    for (const item of items || []) {
      if (item && item.labels && item.id !== undefined) state.labels.set(String(item.id), item.labels);
    }
  }

  async function labelsOf(id) {
    if (state.labels.has(id)) return state.labels.get(id);
    const params = new URLSearchParams({ offset: 0, limit: PAGE_SIZE, q: id });
    try {
      const page = await getJSON(`/api/items?${params}`);
      remember(page.items);
    } catch (error) {
      reportError(error);
    }
    return state.labels.get(id) || null;
  }

  /** A clickable thumbnail card (grid, neighbours, nearest lists). */
  function card(id, labels, { size = 128, extra = null, label = null, compact = false, onClick } = {}) {
    const names = state.categorical.length
      ? state.categorical.map((c) => c.name)
      : Object.keys(labels || {});
    const shown = names
      .filter((name) => labels && name in labels)
      .slice(0, LABEL_CHIPS);
    let chips;
    if (compact) {
      // one line of values, the rest in its tooltip
      const text = shown.map((name) => formatValue(labels[name])).join(" · ");
      const title = shown.map((name) => `${name}: ${formatValue(labels[name])}`).join("\n");
      chips = el("div", { class: "line", text, attrs: { title } });
    } else {
      chips = el("ul", { class: "chips" });
      for (const name of shown) {
        const text = formatValue(labels[name]);
        chips.append(el("li", { class: "chip", text, attrs: { title: `${name}: ${text}` } }));
      }
    }
    const img = el("img", {
      attrs: {
        src: thumbUrl(id, size), alt: "", width: size, height: size, loading: "lazy", decoding: "async",
      },
    });
    const meta = el("div", { class: "meta" }, [
      el("div", { class: "id", text: id, attrs: { title: id } }),
      extra ? el("div", { class: "score", text: extra }) : null,
      shown.length ? chips : null,
    ]);
    const name = [`Image ${id}`, label, extra].filter(Boolean).join(", ");
    const button = el(
      "button",
      { class: "card", attrs: { type: "button", "aria-label": name }, on: { click: onClick } },
      [img, meta],
    );
    button.dataset.id = id;
    return el("li", {}, [button]);
  }

  // ---------------------------------------------------------------- info and filters

  async function loadInfo() {
    const info = await getJSON("/api/info");
    state.info = info;
    state.columns = (info.columns || []).map((c) => c.name);
    // columns with listed values (null is listed too, but can be neither filtered nor edited to)
    state.categorical = (info.columns || [])
      .filter((c) => Array.isArray(c.values))
      .map((c) => ({ name: c.name, values: c.values.filter((v) => v !== null && v !== undefined) }))
      .filter((c) => c.values.length);
    document.title = `${info.name} · embedkit explorer`;
    const fact = (id, text, title) => {
      $(id).textContent = text;
      $(id).title = title || text;
    };
    fact("fact-name", info.name, info.path);
    fact("fact-rows", Number(info.rows).toLocaleString());
    fact("fact-dim", String(info.dim));
    const backbone = info.backbone && info.backbone.name ? info.backbone.name : "unknown";
    fact("fact-backbone", backbone);
    const index = info.index ? `${info.index.kind}` : "exact";
    const factory = info.index && info.index.factory ? info.index.factory : undefined;
    fact("fact-index", `${index} · ${info.metric}`, factory);

    const holder = $("filter-columns");
    holder.replaceChildren();
    for (const column of state.categorical) {
      const select = el("select", { attrs: { "data-column": column.name } }, [
        el("option", { text: "Any", attrs: { value: "" } }),
      ]);
      for (const value of column.values) {
        const text = String(value);
        select.append(el("option", { text, attrs: { value: text } }));
      }
      select.addEventListener("change", () => {
        if (select.value) state.filters[column.name] = select.value;
        else delete state.filters[column.name];
        state.offset = 0;
        loadItems();
      });
      holder.append(el("label", { class: "field" }, [el("span", { text: column.name }), select]));
    }

    // map methods: what the server can run (pca always; umap, tsne with their extras)
    const method = $("map-method");
    method.replaceChildren(
      ...(info.map_methods || ["pca"]).map((name) =>
        el("option", { text: name.toUpperCase(), attrs: { value: name } }),
      ),
    );

    // map colours: any column; a listed one first
    const colour = $("map-color");
    colour.replaceChildren(el("option", { text: "(none)", attrs: { value: "" } }));
    for (const name of state.columns) {
      colour.append(el("option", { text: name, attrs: { value: name } }));
    }
    // default: the listed column with the most values the palette still tells apart
    const fits = state.categorical.filter((c) => c.values.length <= PALETTE.length);
    const best = fits.reduce((a, c) => (!a || c.values.length > a.values.length ? c : a), null);
    if (best) colour.value = best.name;

    // edit attribute: listed columns only
    const editColumn = $("edit-column");
    editColumn.replaceChildren();
    for (const column of state.categorical) {
      editColumn.append(el("option", { text: column.name, attrs: { value: column.name } }));
    }
    fillEditValues();
    if (!state.categorical.length) {
      $("edit-note").textContent = "No label column with listed values to edit along.";
    }
  }

  // ---------------------------------------------------------------- browse

  const itemsSignal = latest();

  async function loadItems() {
    const params = new URLSearchParams({ offset: state.offset, limit: PAGE_SIZE });
    if (state.q) params.set("q", state.q);
    for (const [column, value] of Object.entries(state.filters)) params.set(`f.${column}`, value);
    const grid = $("grid");
    grid.setAttribute("aria-busy", "true");
    let page;
    try {
      page = await getJSON(`/api/items?${params}`, { signal: itemsSignal() });
    } catch (error) {
      grid.setAttribute("aria-busy", "false");
      reportError(error);
      return;
    }
    grid.setAttribute("aria-busy", "false");
    remember(page.items);
    state.total = page.total;
    state.offset = page.offset;
    const selected = currentId();
    grid.replaceChildren(
      ...page.items.map((item) => {
        const id = String(item.id);
        const li = card(id, item.labels, { onClick: () => select(id, "new") });
        if (id === selected) li.firstChild.setAttribute("aria-current", "true");
        return li;
      }),
    );
    $("grid-empty").hidden = page.items.length > 0;
    const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
    const number = Math.floor(page.offset / PAGE_SIZE) + 1;
    const filtered = state.q || Object.keys(state.filters).length;
    const count = `${Number(page.total).toLocaleString()} ${filtered ? "matching " : ""}`;
    const text = `Page ${number} of ${pages} · ${count}image${page.total === 1 ? "" : "s"}`;
    $("page-text").textContent = text;
    $("page-text-bottom").textContent = text;
    $("pager-bottom").hidden = pages < 2;
    for (const where of ["", "-bottom"]) {
      $(`page-prev${where}`).disabled = page.offset <= 0;
      $(`page-next${where}`).disabled = page.offset + PAGE_SIZE >= page.total;
    }
  }

  function markSelectedCards() {
    const selected = currentId();
    for (const button of document.querySelectorAll("#grid .card")) {
      if (button.dataset.id === selected) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  // ---------------------------------------------------------------- detail: items, queries, neighbours

  const neighboursSignal = latest();

  /** Show an item: how = "new" (fresh trail), "push" (walk on) or "jump" (to trail[index]). */
  async function select(id, how = "new", index = -1) {
    if (how === "jump") {
      state.pos = index;
    } else {
      const entry = { kind: "item", id };
      if (how === "new") state.trail = [];
      else state.trail = state.trail.slice(0, state.pos + 1);
      state.trail.push(entry);
      if (state.trail.length > TRAIL_MAX) state.trail.shift();
      state.pos = state.trail.length - 1;
    }
    renderDetail();
    markSelectedCards();
    map.render();
    scheduleEdit();
    if (how === "new" && window.matchMedia("(max-width: 700px)").matches) {
      $("detail").scrollIntoView({ block: "start" }); // one column: the details are below
    }
    await showNeighbours(current());
  }

  function showQuery(file) {
    const entry = { kind: "query", name: file.name || "upload", url: URL.createObjectURL(file) };
    for (const old of state.trail) if (old.kind === "query") URL.revokeObjectURL(old.url);
    state.trail = [entry];
    state.pos = 0;
    renderDetail();
    markSelectedCards();
    map.render();
    return entry;
  }

  function renderDetail() {
    const entry = current();
    $("detail-empty").hidden = Boolean(entry);
    $("detail-body").hidden = !entry;
    if (!entry) return;
    const isItem = entry.kind === "item";

    const trail = $("trail");
    trail.replaceChildren();
    if (state.trail.length > 1) {
      state.trail.forEach((step, i) => {
        if (i) {
          trail.append(el("span", { class: "sep", text: "›", attrs: { "aria-hidden": "true" } }));
        }
        const name = step.kind === "item" ? step.id : `⤒ ${step.name}`;
        const here = i === state.pos;
        trail.append(
          el("button", {
            text: name,
            attrs: { type: "button", title: name, "aria-current": here ? "true" : null },
            on: { click: () => (here ? null : jump(i)) },
          }),
        );
      });
    }

    const img = $("selected-img");
    img.src = isItem ? thumbUrl(entry.id, 256) : entry.url;
    img.alt = isItem ? `Image ${entry.id}` : `Query image ${entry.name}`;
    $("selected-id").textContent = isItem ? entry.id : `Query: ${entry.name}`;
    const labels = $("selected-labels");
    labels.replaceChildren();
    const known = isItem ? state.labels.get(entry.id) : null;
    if (known) {
      for (const [name, value] of Object.entries(known)) {
        labels.append(el("dt", { text: name }), el("dd", { text: formatValue(value) }));
      }
    } else if (isItem) {
      labelsOf(entry.id).then((found) => {
        if (found && current() === entry) renderDetail();
      });
    }
    $("ab-buttons").hidden = !isItem;
    $("edit").hidden = !isItem;
  }

  function jump(index) {
    const entry = state.trail[index];
    if (entry.kind === "item") {
      select(entry.id, "jump", index);
    } else {
      state.pos = index;
      renderDetail();
      markSelectedCards();
      map.render();
      renderNeighbours(entry.results || []);
    }
  }

  async function showNeighbours(entry) {
    if (entry.results) {
      renderNeighbours(entry.results);
      return;
    }
    const list = $("neighbours");
    list.setAttribute("aria-busy", "true");
    try {
      const params = new URLSearchParams({ id: entry.id, k: K });
      const found = await getJSON(`/api/neighbors?${params}`, { signal: neighboursSignal() });
      remember(found.results);
      entry.results = found.results;
      if (current() === entry) {
        renderNeighbours(found.results);
        renderDetail(); // labels may have arrived with the results
      }
    } catch (error) {
      list.setAttribute("aria-busy", "false");
      reportError(error);
    }
  }

  function renderNeighbours(results) {
    const list = $("neighbours");
    list.setAttribute("aria-busy", "false");
    list.replaceChildren(
      ...results.map((result) => {
        const id = String(result.id);
        return card(id, result.labels, {
          size: 128,
          extra: formatScore(result),
          label: `rank ${result.rank}`,
          compact: true,
          onClick: () => select(id, "push"),
        });
      }),
    );
    if (!results.length) list.append(el("li", { class: "hint", text: "No neighbours." }));
  }

  async function runQuery(file) {
    if (!file) return;
    const entry = showQuery(file);
    const list = $("neighbours");
    list.replaceChildren();
    list.setAttribute("aria-busy", "true");
    setStatus(`Searching with ${entry.name}…`);
    const body = new FormData();
    body.append("image", file, file.name || "upload");
    try {
      const found = await getJSON(`/api/query?k=${K}`, {
        method: "POST",
        body,
        signal: neighboursSignal(),
      });
      remember(found.results);
      entry.results = found.results;
      if (current() === entry) renderNeighbours(found.results);
      setStatus(`${found.results.length} neighbours of ${entry.name}`);
    } catch (error) {
      list.setAttribute("aria-busy", "false");
      if (isAbort(error)) return;
      entry.results = [];
      list.replaceChildren(el("li", { class: "hint error", text: "The image was rejected." }));
      reportError(error);
    }
  }

  // ---------------------------------------------------------------- edit along an attribute

  function fillEditValues() {
    const column = state.categorical.find((c) => c.name === $("edit-column").value);
    const select = $("edit-value");
    select.replaceChildren();
    for (const value of column ? column.values : []) {
      const text = String(value);
      select.append(el("option", { text, attrs: { value: text } }));
    }
  }

  let editLoader = null;
  const editSignal = latest();

  function runEdit() {
    const id = currentId();
    const column = $("edit-column").value;
    const value = $("edit-value").value;
    if (id === null || !column || !state.info) return;
    const alpha = Number($("alpha").value).toFixed(1);
    const params = new URLSearchParams({ id, column, value, alpha });
    if (!state.info.decodes) params.set("k", EDIT_NEAREST);
    const url = `/api/edit?${params}`;
    const note = $("edit-note");
    if (state.info.decodes) {
      // load into a fresh <img>, swapped in when it arrives; a newer request drops the older
      if (editLoader) {
        editLoader.onload = editLoader.onerror = null;
        editLoader.removeAttribute("src");
      }
      const loader = new Image(128, 128);
      editLoader = loader;
      loader.onload = () => {
        if (editLoader !== loader) return;
        editLoader = null;
        if (currentId() !== id) return;
        const shown = $("edit-img");
        loader.id = "edit-img";
        loader.alt = `Image ${id} with ${column} moved towards ${value}, α = ${alpha}`;
        loader.hidden = false;
        shown.replaceWith(loader);
        const what = alpha === "0.0" ? "the reconstruction" : `towards ${column} = ${value}`;
        note.textContent = `α = ${alpha}: ${what}`;
      };
      loader.onerror = () => {
        if (editLoader !== loader) return;
        editLoader = null;
        api(url).catch(reportError); // fetch again for the server's error message
      };
      loader.src = url;
    } else {
      getJSON(url, { signal: editSignal() })
        .then((found) => {
          if (currentId() !== id) return;
          remember(found.nearest);
          const list = $("edit-nearest");
          list.hidden = false;
          list.replaceChildren(
            ...(found.nearest || []).map((hit) => {
              const hitId = String(hit.id);
              return card(hitId, hit.labels || state.labels.get(hitId), {
                size: 96,
                extra: formatScore(hit),
                compact: true,
                onClick: () => select(hitId, "push"),
              });
            }),
          );
          note.textContent = `This backbone cannot decode: the nearest real images at α = ${alpha}.`;
        })
        .catch(reportError);
    }
  }

  const scheduleEdit = debounce(runEdit, 50);

  // ---------------------------------------------------------------- interpolate A -> B

  const interpSignal = latest();

  function setSlot(which) {
    const id = currentId();
    if (id === null) return;
    state[which] = id;
    const slot = $(`slot-${which}`);
    const img = slot.querySelector("img");
    img.src = thumbUrl(id, 96);
    img.alt = `${which.toUpperCase()}: ${id}`;
    img.hidden = false;
    const caption = slot.querySelector("figcaption");
    caption.textContent = id;
    caption.title = id;
    caption.classList.remove("muted");
    $("interp-go").disabled = !(state.a && state.b);
    if (state.a && state.b) runInterpolate();
  }

  async function runInterpolate() {
    if (!(state.a && state.b)) return;
    const steps = Math.min(32, Math.max(2, Number($("interp-steps").value) || 8));
    const mode = $("interp-mode").value;
    const params = new URLSearchParams({ a: state.a, b: state.b, steps, mode });
    const strip = $("interp-strip");
    strip.setAttribute("aria-busy", "true");
    let found;
    try {
      found = await getJSON(`/api/interpolate?${params}`, { signal: interpSignal() });
    } catch (error) {
      strip.setAttribute("aria-busy", "false");
      reportError(error);
      return;
    }
    strip.setAttribute("aria-busy", "false");
    const cells = [];
    if (Array.isArray(found.images)) {
      found.images.forEach((src, i) => {
        const t = found.images.length > 1 ? i / (found.images.length - 1) : 0;
        const safe = typeof src === "string" && src.startsWith("data:image/") ? src : "";
        cells.push(
          el("li", {}, [
            el("img", {
              attrs: { src: safe, alt: `Step ${i + 1}, t = ${t.toFixed(2)}`, width: 64, height: 64 },
            }),
            el("span", { text: t.toFixed(2) }),
          ]),
        );
      });
    } else if (Array.isArray(found.nearest)) {
      found.nearest.forEach((ids, i) => {
        const first = Array.isArray(ids) && ids.length ? String(ids[0]) : null;
        if (first === null) return;
        cells.push(
          el("li", { attrs: { title: ids.map(String).join(", ") } }, [
            el("img", {
              attrs: {
                src: thumbUrl(first, 96), alt: `Step ${i + 1}: nearest ${first}`, width: 64, height: 64,
              },
            }),
            el("span", { text: `${i + 1}` }),
          ]),
        );
      });
    }
    strip.replaceChildren(...cells);
  }

  // ---------------------------------------------------------------- map

  const map = (() => {
    const canvas = $("map-canvas");
    const ctx = canvas.getContext("2d");
    const tip = $("map-tip");
    const CELL = 10; // hit-test grid cell, CSS px
    const PAD = 18;
    let data = null; // the /api/map payload
    let colours = null; // per point: index into palette
    let palette = [];
    let px = null; // point positions, CSS px
    let py = null;
    let cells = null; // grid: cell -> [point indices]
    let cols = 0;
    let rows = 0;
    let radius = 3;
    let off = null; // the points, drawn once
    let picked = null; // the selected points, drawn once per selection
    let width = 0;
    let height = 0;
    let hover = -1;
    let drag = null;
    let frame = 0;
    let byId = new Map();
    const selection = new Set();
    const loadSignal = latest();

    function visible() {
      return !$("view-map").hidden;
    }

    async function load() {
      const column = $("map-color").value;
      const params = new URLSearchParams({ limit: MAP_LIMIT, method: $("map-method").value || "pca" });
      let next;
      if (column) params.set("color", column);
      setStatus("Computing the map…");
      try {
        next = await getJSON(`/api/map?${params}`, { signal: loadSignal() });
      } catch (error) {
        reportError(error);
        return;
      }
      setStatus("");
      const kept = data ? [...selection].map((i) => data.ids[i]) : []; // survives a recolour
      data = next;
      data.ids = data.ids.map(String);
      byId = new Map(data.ids.map((id, i) => [id, i]));
      const n = data.ids.length;
      radius = n <= 500 ? 4 : n <= 5000 ? 3 : 2;
      const sampled = data.sampled ? ` (a sample of ${Number(data.total).toLocaleString()})` : "";
      $("map-note").textContent = `${n.toLocaleString()} points${sampled} · ${data.method}`;
      selection.clear();
      for (const id of kept) if (byId.has(id)) selection.add(byId.get(id));
      updateSelection();
      buildColours(column);
      layout();
    }

    function buildColours(column) {
      const legend = $("map-legend");
      legend.replaceChildren();
      const n = data.ids.length;
      colours = new Uint8Array(n);
      const values = Array.isArray(data.color) ? data.color : null;
      if (!values) {
        const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent");
        palette = [accent.trim() || "#3b5bdb"];
        return;
      }
      const numeric = values.every((v) => v === null || typeof v === "number");
      const distinct = new Map();
      for (const v of values) {
        const key = v === null || v === undefined ? "—" : String(v);
        distinct.set(key, (distinct.get(key) || 0) + 1);
      }
      if (numeric && distinct.size > PALETTE.length) {
        const finite = values.filter((v) => typeof v === "number" && Number.isFinite(v));
        let lo = Infinity;
        let hi = -Infinity;
        for (const v of finite) {
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        const bins = 32;
        palette = Array.from({ length: bins }, (_, i) => rampAt(i / (bins - 1)));
        palette.push(OTHER);
        values.forEach((v, i) => {
          colours[i] = typeof v === "number" && Number.isFinite(v) && hi > lo
            ? Math.round(((v - lo) / (hi - lo)) * (bins - 1))
            : typeof v === "number" && Number.isFinite(v) ? 0 : bins;
        });
        const ramp = el("span", { class: "ramp" });
        ramp.style.background = `linear-gradient(to right, ${RAMP.join(", ")})`;
        legend.append(
          el("li", { class: "ramp-row" }, [
            el("span", { class: "name", text: `${column}: ${formatValue(lo)}` }),
            ramp,
            el("span", { class: "name", text: formatValue(hi) }),
          ]),
        );
        return;
      }
      const ranked = [...distinct.entries()].sort((x, y) => y[1] - x[1]);
      const keep = ranked.slice(0, PALETTE.length);
      const slot = new Map();
      palette = [];
      const used = new Set();
      keep.forEach(([key]) => {
        const named = NAMED[key.toLowerCase()];
        let colour = named && !used.has(named) ? named : PALETTE.find((c) => !used.has(c)) || OTHER;
        if (colour === OTHER && named) colour = named;
        used.add(colour);
        slot.set(key, palette.length);
        palette.push(colour);
      });
      const other = palette.length;
      palette.push(OTHER);
      values.forEach((v, i) => {
        const key = v === null || v === undefined ? "—" : String(v);
        colours[i] = slot.has(key) ? slot.get(key) : other;
      });
      for (const [key, count] of keep) {
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = palette[slot.get(key)];
        legend.append(
          el("li", { attrs: { title: `${column} = ${key}: ${count}` } }, [
            swatch,
            el("span", { class: "name", text: key }),
            el("span", { class: "muted", text: String(count) }),
          ]),
        );
      }
      if (ranked.length > keep.length) {
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = OTHER;
        const rest = ranked.slice(keep.length).reduce((sum, [, c]) => sum + c, 0);
        legend.append(
          el("li", {}, [
            swatch,
            el("span", { class: "name", text: "other" }),
            el("span", { class: "muted", text: String(rest) }),
          ]),
        );
      }
    }

    function rampAt(t) {
      const scaled = t * (RAMP.length - 1);
      const i = Math.min(RAMP.length - 2, Math.floor(scaled));
      const f = scaled - i;
      const a = hex(RAMP[i]);
      const b = hex(RAMP[i + 1]);
      const mix = a.map((v, k) => Math.round(v + (b[k] - v) * f));
      return `rgb(${mix[0]}, ${mix[1]}, ${mix[2]})`;
    }

    function hex(colour) {
      const n = parseInt(colour.slice(1), 16);
      return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
    }

    /** Place the points for the canvas's current size, build the hit grid, draw them once. */
    function layout() {
      if (!data || !visible()) return;
      const rect = canvas.getBoundingClientRect();
      width = Math.max(1, Math.round(rect.width));
      height = Math.max(1, Math.round(rect.height));
      const dpr = window.devicePixelRatio || 1;
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
      const n = data.ids.length;
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (let i = 0; i < n; i++) {
        const x = data.x[i];
        const y = data.y[i];
        if (Number.isFinite(x)) { if (x < x0) x0 = x; if (x > x1) x1 = x; }
        if (Number.isFinite(y)) { if (y < y0) y0 = y; if (y > y1) y1 = y; }
      }
      if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
      if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
      const scale = Math.min((width - 2 * PAD) / (x1 - x0), (height - 2 * PAD) / (y1 - y0));
      const ox = (width - scale * (x1 - x0)) / 2;
      const oy = (height - scale * (y1 - y0)) / 2;
      px = new Float32Array(n);
      py = new Float32Array(n);
      cols = Math.ceil(width / CELL);
      rows = Math.ceil(height / CELL);
      cells = new Array(cols * rows);
      for (let i = 0; i < n; i++) {
        const x = data.x[i];
        const y = data.y[i];
        if (!Number.isFinite(x) || !Number.isFinite(y)) { px[i] = py[i] = NaN; continue; }
        px[i] = ox + (x - x0) * scale;
        py[i] = height - (oy + (y - y0) * scale); // y up
        const c = Math.min(cols - 1, Math.max(0, Math.floor(px[i] / CELL)));
        const r = Math.min(rows - 1, Math.max(0, Math.floor(py[i] / CELL)));
        (cells[r * cols + c] ||= []).push(i);
      }
      off = document.createElement("canvas");
      off.width = canvas.width;
      off.height = canvas.height;
      const octx = off.getContext("2d");
      octx.setTransform(dpr, 0, 0, dpr, 0, 0);
      octx.globalAlpha = n > 5000 ? 0.7 : 0.85;
      const groups = palette.map(() => []);
      for (let i = 0; i < n; i++) if (!Number.isNaN(px[i])) groups[colours[i]].push(i);
      paint(octx, groups, radius);
      drawSelection();
    }

    /** Fill a few paths per colour (groups[g] lists the points of palette[g]), the colours
     *  taking turns so that no colour buries the others where points crowd. */
    function paint(target, groups, r) {
      const turns = Math.max(...groups.map((members) => members.length)) > 500 ? 8 : 1;
      for (let turn = 0; turn < turns; turn++) {
        groups.forEach((members, g) => {
          if (!members.length) return;
          target.fillStyle = palette[g];
          target.beginPath();
          for (let j = turn; j < members.length; j += turns) {
            const i = members[j];
            target.moveTo(px[i] + r, py[i]);
            target.arc(px[i], py[i], r, 0, 2 * Math.PI);
          }
          target.fill();
        });
      }
    }

    /** The selected points at full strength, over the others faded (drawn once per change). */
    function drawSelection() {
      picked = null;
      if (off && selection.size) {
        picked = document.createElement("canvas");
        picked.width = off.width;
        picked.height = off.height;
        const pctx = picked.getContext("2d");
        const dpr = off.width / width;
        pctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        const groups = palette.map(() => []);
        for (const i of selection) if (!Number.isNaN(px[i])) groups[colours[i]].push(i);
        if (selection.size <= 2000) {
          // a dark rim keeps a small selection visible among the faded points
          pctx.fillStyle = getComputedStyle(document.body).color;
          pctx.beginPath();
          for (const i of selection) {
            if (Number.isNaN(px[i])) continue;
            pctx.moveTo(px[i] + radius + 1, py[i]);
            pctx.arc(px[i], py[i], radius + 1, 0, 2 * Math.PI);
          }
          pctx.fill();
        }
        paint(pctx, groups, radius);
      }
      render();
    }

    function render() {
      if (frame) return;
      frame = requestAnimationFrame(draw);
    }

    function ring(i, r, colour, lineWidth) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = lineWidth;
      ctx.beginPath();
      ctx.arc(px[i], py[i], r, 0, 2 * Math.PI);
      ctx.stroke();
    }

    function draw() {
      frame = 0;
      if (!off || !visible()) return;
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (picked) {
        ctx.globalAlpha = 0.22;
        ctx.drawImage(off, 0, 0);
        ctx.globalAlpha = 1;
        ctx.drawImage(picked, 0, 0);
      } else {
        ctx.drawImage(off, 0, 0);
      }
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      const ink = getComputedStyle(document.body).color;
      const chosen = byId.get(currentId());
      if (chosen !== undefined && !Number.isNaN(px[chosen])) {
        ring(chosen, radius + 5, "#ffffff", 4);
        ring(chosen, radius + 5, "#111111", 2);
      }
      if (hover >= 0) ring(hover, radius + 3, ink, 1.5);
      if (drag && drag.moved) {
        const x = Math.min(drag.x0, drag.x1);
        const y = Math.min(drag.y0, drag.y1);
        ctx.fillStyle = "rgba(59, 91, 219, 0.12)";
        ctx.strokeStyle = "rgba(59, 91, 219, 0.9)";
        ctx.lineWidth = 1;
        ctx.fillRect(x, y, Math.abs(drag.x1 - drag.x0), Math.abs(drag.y1 - drag.y0));
        ctx.strokeRect(x + 0.5, y + 0.5, Math.abs(drag.x1 - drag.x0), Math.abs(drag.y1 - drag.y0));
      }
    }

    /** The point nearest (x, y) within a few pixels, or -1. */
    function hit(x, y) {
      if (!cells) return -1;
      const reach = Math.max(6, radius + 3);
      const span = Math.ceil(reach / CELL);
      const c0 = Math.floor(x / CELL);
      const r0 = Math.floor(y / CELL);
      let best = -1;
      let bestD = reach * reach;
      for (let r = r0 - span; r <= r0 + span; r++) {
        if (r < 0 || r >= rows) continue;
        for (let c = c0 - span; c <= c0 + span; c++) {
          if (c < 0 || c >= cols) continue;
          for (const i of cells[r * cols + c] || []) {
            const d = (px[i] - x) ** 2 + (py[i] - y) ** 2;
            if (d <= bestD) {
              bestD = d;
              best = i;
            }
          }
        }
      }
      return best;
    }

    function position(event) {
      const rect = canvas.getBoundingClientRect();
      return [event.clientX - rect.left, event.clientY - rect.top];
    }

    function showTip(i, x, y) {
      if (i < 0) {
        tip.hidden = true;
        return;
      }
      const id = data.ids[i];
      if (tip.dataset.id !== id) {
        tip.dataset.id = id;
        $("map-tip-img").src = thumbUrl(id, 96);
        const column = $("map-color").value;
        const colour = Array.isArray(data.color) && column ? ` · ${formatValue(data.color[i])}` : "";
        $("map-tip-text").textContent = `${id}${colour}`;
      }
      tip.hidden = false;
      const left = x + 14 + 130 > width ? x - 14 - tip.offsetWidth : x + 14;
      const top = y + 14 + tip.offsetHeight > height ? y - 14 - tip.offsetHeight : y + 14;
      tip.style.left = `${Math.max(0, left)}px`;
      tip.style.top = `${Math.max(0, top)}px`;
    }

    canvas.addEventListener("pointerdown", (event) => {
      if (!data || event.button !== 0) return;
      const [x, y] = position(event);
      drag = { x0: x, y0: y, x1: x, y1: y, box: event.shiftKey, moved: false };
      canvas.setPointerCapture(event.pointerId);
      if (event.shiftKey) event.preventDefault();
    });

    canvas.addEventListener("pointermove", (event) => {
      if (!data) return;
      const [x, y] = position(event);
      if (drag) {
        drag.x1 = x;
        drag.y1 = y;
        if (Math.abs(x - drag.x0) + Math.abs(y - drag.y0) > 4) drag.moved = true;
        if (drag.box) {
          tip.hidden = true;
          render();
          return;
        }
      }
      const found = hit(x, y);
      if (found !== hover) {
        hover = found;
        render();
      }
      canvas.style.cursor = found >= 0 ? "pointer" : "crosshair";
      showTip(found, x, y);
    });

    canvas.addEventListener("pointerleave", () => {
      if (hover >= 0) {
        hover = -1;
        render();
      }
      tip.hidden = true;
    });

    canvas.addEventListener("pointerup", (event) => {
      if (!drag) return;
      const done = drag;
      drag = null;
      if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
      if (done.box && done.moved) {
        const xa = Math.min(done.x0, done.x1);
        const xb = Math.max(done.x0, done.x1);
        const ya = Math.min(done.y0, done.y1);
        const yb = Math.max(done.y0, done.y1);
        if (!event.altKey) selection.clear();
        for (let i = 0; i < px.length; i++) {
          if (px[i] >= xa && px[i] <= xb && py[i] >= ya && py[i] <= yb) selection.add(i);
        }
        updateSelection();
        drawSelection();
        return;
      }
      if (done.moved) return;
      const found = hit(done.x0, done.y0);
      if (found >= 0) select(data.ids[found], "new");
    });

    canvas.addEventListener("pointercancel", () => {
      drag = null;
      render();
    });

    function updateSelection() {
      const n = selection.size;
      $("map-selection").textContent = n ? `${n.toLocaleString()} selected` : "Shift-drag to select";
      $("export-csv").disabled = !n;
      $("export-parquet").disabled = !n;
      $("selection-clear").disabled = !n;
    }

    function clearSelection() {
      selection.clear();
      updateSelection();
      drawSelection();
    }

    async function exportSelection(format) {
      if (!selection.size) return;
      const ids = [...selection].map((i) => data.ids[i]);
      try {
        const response = await api("/api/export", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ ids, format }),
        });
        const blob = await response.blob();
        const disposition = response.headers.get("content-disposition") || "";
        const named = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
        const name = named ? decodeURIComponent(named[1]) : `selection.${format}`;
        const link = el("a", { attrs: { href: URL.createObjectURL(blob), download: name } });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(link.href), 10000);
        setStatus(`Exported ${ids.length.toLocaleString()} rows as ${format}`);
      } catch (error) {
        reportError(error);
      }
    }

    new ResizeObserver(() => {
      if (visible() && data) layout();
    }).observe($("map-wrap"));

    return {
      load,
      layout,
      render,
      clearSelection,
      exportSelection,
      loaded: () => data !== null,
    };
  })();

  // ---------------------------------------------------------------- tabs

  function showView(name) {
    for (const view of ["grid", "map"]) {
      const on = view === name;
      const tab = $(`tab-${view}`);
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $(`view-${view}`).hidden = !on;
    }
    if (name === "map") {
      if (map.loaded()) map.layout();
      else map.load();
    }
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    for (const where of ["", "-bottom"]) {
      const turn = (step) => {
        const next = state.offset + step * PAGE_SIZE;
        if (next < 0 || next >= state.total) return;
        state.offset = next;
        loadItems();
        if (where) $("view-grid").scrollIntoView({ block: "start" });
      };
      $(`page-prev${where}`).addEventListener("click", () => turn(-1));
      $(`page-next${where}`).addEventListener("click", () => turn(1));
    }
    const search = debounce(() => {
      state.q = $("filter-q").value.trim();
      state.offset = 0;
      loadItems();
    }, 250);
    $("filter-q").addEventListener("input", search);
    $("filter-form").addEventListener("submit", (event) => event.preventDefault());
    $("filter-form").addEventListener("reset", () => {
      state.q = "";
      state.filters = {};
      state.offset = 0;
      setTimeout(loadItems); // after the form has reset its fields
    });

    const tabs = ["grid", "map"];
    for (const view of tabs) {
      const tab = $(`tab-${view}`);
      tab.addEventListener("click", () => showView(view));
      tab.addEventListener("keydown", (event) => {
        if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
        const step = event.key === "ArrowRight" ? 1 : tabs.length - 1;
        const next = tabs[(tabs.indexOf(view) + step) % tabs.length];
        showView(next);
        $(`tab-${next}`).focus();
      });
    }

    $("query-file").addEventListener("change", (event) => {
      const file = event.target.files && event.target.files[0];
      runQuery(file).finally(() => {
        event.target.value = "";
      });
    });

    // drag and drop anywhere on the page
    let depth = 0;
    const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
    window.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth += 1;
      $("drop").hidden = false;
    });
    window.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("dragleave", (event) => {
      if (!hasFiles(event)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) $("drop").hidden = true;
    });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      $("drop").hidden = true;
      const file = event.dataTransfer.files[0];
      if (file) runQuery(file);
    });

    $("set-a").addEventListener("click", () => setSlot("a"));
    $("set-b").addEventListener("click", () => setSlot("b"));
    $("interp-go").addEventListener("click", runInterpolate);
    $("interp-mode").addEventListener("change", runInterpolate);
    $("interp-steps").addEventListener("change", runInterpolate);

    $("edit-column").addEventListener("change", () => {
      fillEditValues();
      scheduleEdit();
    });
    $("edit-value").addEventListener("change", scheduleEdit);
    $("alpha").addEventListener("input", () => {
      $("alpha-out").textContent = Number($("alpha").value).toFixed(1);
      scheduleEdit();
    });

    $("map-color").addEventListener("change", () => map.load());
    $("map-method").addEventListener("change", () => map.load());
    $("export-csv").addEventListener("click", () => map.exportSelection("csv"));
    $("export-parquet").addEventListener("click", () => map.exportSelection("parquet"));
    $("selection-clear").addEventListener("click", () => map.clearSelection());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("view-map").hidden) map.clearSelection();
    });
  }

  async function start() {
    wire();
    try {
      await loadInfo();
    } catch (error) {
      reportError(error);
      return;
    }
    await loadItems();
    document.body.dataset.ready = "true";
  }

  start();
})();
