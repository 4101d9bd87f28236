/* The tables of a realfake report page.
 *
 * The rows are the JSON of the page's application/json script (see jobs/tasks/report/page.py, build_page_data):
 * arrays whose fields `row_fields` / `error_fields` name. A table keeps the rows that pass its filters,
 * sorted, and puts one page of them into the DOM at a time, so a page of 100,000 rows stays responsive.
 * When the first page is in the table, <body data-ready="true"> is set and the performance mark
 * "report-table-rendered" is recorded (tests and the load-time measurement wait for them).
 */
(function () {
  "use strict";

  const data = JSON.parse(document.querySelector('script[type="application/json"]').textContent);
  const fieldIndex = (names) => Object.fromEntries(names.map((name, i) => [name, i]));
  const R = fieldIndex(data.row_fields);
  const E = fieldIndex(data.error_fields);
  const PAGE_SIZES = [25, 50, 100, 250, 500, 1000];
  const FILTER_DELAY_MS = 150;

  const separator = data.root.includes("\\") && !data.root.includes("/") ? "\\" : "/";
  const rootPrefix = data.root ? data.root.replace(/[\\/]$/, "") + separator : "";

  function shownPath(path) {
    return rootPrefix && path.startsWith(rootPrefix) ? path.slice(rootPrefix.length) : path;
  }

  function fileUrl(path) {
    let p = path.replace(/\\/g, "/");
    if (!p.startsWith("/")) p = "/" + p;
    try {
      return "file://" + p.split("/").map(encodeURIComponent).join("/");
    } catch (err) {
      return null; // a file name that is not valid Unicode has no URL
    }
  }

  const formatCount = (n) => n.toLocaleString("en-US");
  const compareText = (x, y) => (x < y ? -1 : x > y ? 1 : 0);

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    (children || []).forEach((child) => node.append(child));
    return node;
  }

  class PagedTable {
    /* prefix: the ids' prefix (PREFIX-table, PREFIX-next, ...); sorts: key -> compare(a, b, dir). */
    constructor(prefix, rows, options) {
      this.prefix = prefix;
      this.rows = rows;
      this.sorts = options.sorts;
      this.matches = options.matches;
      this.renderRow = options.renderRow;
      this.emptyText = options.emptyText;
      this.sort = options.sort;
      this.dir = options.dir;
      this.page = 0;
      this.pageSize = options.pageSize;
      this.view = rows.slice();
      this.tbody = document.querySelector(`#${prefix}-table tbody`);
      this.headers = Array.from(document.querySelectorAll(`#${prefix}-table th[data-sort]`));
      this.headers.forEach((th) => th.addEventListener("click", () => this.sortBy(th.dataset.sort)));
      this.part("first").addEventListener("click", () => this.show(0));
      this.part("prev").addEventListener("click", () => this.show(this.page - 1));
      this.part("next").addEventListener("click", () => this.show(this.page + 1));
      this.part("last").addEventListener("click", () => this.show(Infinity));
      const pageBox = this.part("page");
      const goToTyped = () => {
        if (pageBox.value !== "") this.show(Number(pageBox.value) - 1);
      };
      pageBox.addEventListener("change", goToTyped);
      pageBox.addEventListener("keydown", (event) => {
        if (event.key === "Enter") goToTyped();
      });
      this.sortView();
    }

    part(name) {
      return document.getElementById(`${this.prefix}-${name}`);
    }

    sortBy(key) {
      // A new column starts in its natural direction (p_fake: highest first); the same column flips.
      if (key === this.sort) this.dir = -this.dir;
      else {
        this.sort = key;
        this.dir = key === "p_fake" ? -1 : 1;
      }
      // Sorted from the rows' own order, which a score output keeps by path (its folder walk is
      // sorted): the array sort takes runs already in order in linear time.
      this.refilter();
    }

    sortView() {
      const compare = this.sorts[this.sort];
      const dir = this.dir;
      this.view.sort((a, b) => compare(a, b, dir));
    }

    refilter() {
      this.view = this.rows.filter(this.matches);
      this.sortView();
      this.show(0);
    }

    setPageSize(size) {
      this.pageSize = size;
      this.show(0);
    }

    pages() {
      return Math.max(1, Math.ceil(this.view.length / this.pageSize));
    }

    show(page) {
      const pages = this.pages();
      this.page = Math.min(Math.max(0, Number.isFinite(page) ? Math.floor(page) : pages - 1), pages - 1);
      const start = this.page * this.pageSize;
      const slice = this.view.slice(start, start + this.pageSize);
      const fragment = document.createDocumentFragment();
      slice.forEach((row) => fragment.append(this.renderRow(row)));
      this.tbody.replaceChildren(fragment);

      this.part("page").value = String(this.page + 1);
      this.part("page").max = String(pages);
      this.part("pages").textContent = formatCount(pages);
      this.part("first").disabled = this.part("prev").disabled = this.page === 0;
      this.part("next").disabled = this.part("last").disabled = this.page >= pages - 1;
      let info = slice.length
        ? `rows ${formatCount(start + 1)}\u2013${formatCount(start + slice.length)} of ${formatCount(this.view.length)}`
        : `0 of ${formatCount(this.view.length)}`;
      if (this.view.length !== this.rows.length) info += ` (filtered from ${formatCount(this.rows.length)})`;
      this.part("info").textContent = info;
      const empty = this.part("empty");
      empty.hidden = slice.length > 0;
      empty.textContent = this.rows.length ? this.emptyText.filtered : this.emptyText.none;
      this.headers.forEach((th) => {
        const sorted = th.dataset.sort === this.sort;
        th.setAttribute("aria-sort", sorted ? (this.dir > 0 ? "ascending" : "descending") : "none");
      });
    }
  }

  // ------------------------------------------------------------------------------ the heat-map overlay

  const overlay = document.getElementById("overlay");
  const overlayImg = document.getElementById("overlay-img");

  function openHeatmap(row) {
    overlayImg.src = row[R.heatmap];
    const p = row[R.p_fake];
    document.getElementById("overlay-caption").textContent =
      `${row[R.path]} \u2014 p_fake ${p === null ? "-" : p.toFixed(4)} \u2014 ${row[R.decision]}`;
    overlay.hidden = false;
    document.getElementById("overlay-close").focus();
  }

  function closeHeatmap() {
    overlay.hidden = true;
    overlayImg.removeAttribute("src");
  }

  document.getElementById("overlay-close").addEventListener("click", closeHeatmap);
  overlay.addEventListener("click", (event) => {
    if (event.target === overlay) closeHeatmap();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !overlay.hidden) closeHeatmap();
  });

  // ------------------------------------------------------------------------------ the files table

  const hasThumbs = data.thumb_mode !== "none";
  const hasHeatmaps = data.rows.some((row) => row[R.heatmap]);
  if (!hasThumbs) document.querySelectorAll("#files-table th.thumb").forEach((th) => th.remove());
  if (!hasHeatmaps) document.querySelectorAll("#files-table th.heat").forEach((th) => th.remove());
  data.rows.forEach((row) => {
    row.lowerPath = row[R.path].toLowerCase();
  });

  function thumbCell(row) {
    const size = data.thumb_size;
    const url = row[R.thumb];
    if (!url) {
      const why = row[R.thumb_error];
      const box = el("div", { className: "placeholder", textContent: "no preview",
                              title: why ? `no thumbnail: ${why}` : "no thumbnail" });
      box.style.width = box.style.height = `${size}px`;
      return el("td", { className: "thumb" }, [box]);
    }
    const img = el("img", { src: url, alt: "", loading: "lazy", width: size, height: size });
    const link = fileUrl(row[R.path]);
    const content = link ? el("a", { href: link, target: "_blank", title: "open the image" }, [img]) : img;
    return el("td", { className: "thumb" }, [content]);
  }

  function fileRow(row) {
    const path = row[R.path];
    const p = row[R.p_fake];
    const decision = row[R.decision];
    const cells = [];
    if (hasThumbs) cells.push(thumbCell(row));
    cells.push(el("td", { className: "path", textContent: shownPath(path), title: path }));
    cells.push(el("td", { className: "num", textContent: p === null ? "-" : p.toFixed(4),
                          title: p === null ? "no p_fake" : String(p) }));
    const badge = el("span", { className: `badge badge-${decision.replace(/[^a-z0-9_-]/gi, "")}`,
                               textContent: decision });
    const decisionCell = el("td", { className: "decision" }, [badge]);
    if (row[R.reason]) decisionCell.append(el("span", { className: "reason", textContent: row[R.reason] }));
    cells.push(decisionCell);
    if (hasHeatmaps) {
      const heat = el("td", { className: "heat" });
      if (row[R.heatmap]) {
        const button = el("button", { type: "button", className: "heat", textContent: "show" });
        button.addEventListener("click", () => openHeatmap(row));
        heat.append(button);
      }
      cells.push(heat);
    }
    const tr = el("tr", {}, cells);
    tr.dataset.path = path;
    return tr;
  }

  const byPath = (a, b) => compareText(a[R.path], b[R.path]);
  const filters = { text: "", decision: "", heatmapOnly: false };
  const files = new PagedTable("files", data.rows, {
    sorts: {
      path: (a, b, dir) => dir * byPath(a, b),
      // Rows without p_fake go last in either direction; equal p_fake keeps path order.
      p_fake: (a, b, dir) => {
        const x = a[R.p_fake];
        const y = b[R.p_fake];
        if (x === null || y === null) return (x === null) - (y === null) || byPath(a, b);
        return dir * (x - y) || byPath(a, b);
      },
    },
    sort: "p_fake",
    dir: -1,
    pageSize: data.page_size,
    matches: (row) =>
      (!filters.decision || row[R.decision] === filters.decision) &&
      (!filters.heatmapOnly || Boolean(row[R.heatmap])) &&
      (!filters.text || row.lowerPath.includes(filters.text)),
    renderRow: fileRow,
    emptyText: { filtered: "No file matches the filters.", none: "No file was scored." },
  });

  const decisionSelect = document.getElementById("files-decision");
  const decisionCounts = {};
  data.rows.forEach((row) => {
    decisionCounts[row[R.decision]] = (decisionCounts[row[R.decision]] || 0) + 1;
  });
  data.decisions.forEach((decision) => {
    decisionSelect.append(el("option", { value: decision,
                                         textContent: `${decision} (${formatCount(decisionCounts[decision] || 0)})` }));
  });
  decisionSelect.addEventListener("change", () => {
    filters.decision = decisionSelect.value;
    files.refilter();
  });

  function debounced(fn) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, FILTER_DELAY_MS);
    };
  }

  const filesText = document.getElementById("files-text");
  filesText.addEventListener("input", debounced(() => {
    filters.text = filesText.value.trim().toLowerCase();
    files.refilter();
  }));

  if (hasHeatmaps) {
    document.getElementById("files-heatmap-only-label").hidden = false;
    const heatOnly = document.getElementById("files-heatmap-only");
    heatOnly.addEventListener("change", () => {
      filters.heatmapOnly = heatOnly.checked;
      files.refilter();
    });
  }

  const pageSizeSelect = document.getElementById("files-page-size");
  Array.from(new Set([...PAGE_SIZES, data.page_size])).sort((a, b) => a - b).forEach((size) => {
    pageSizeSelect.append(el("option", { value: String(size), textContent: String(size),
                                         selected: size === data.page_size }));
  });
  pageSizeSelect.addEventListener("change", () => files.setPageSize(Number(pageSizeSelect.value)));

  // ------------------------------------------------------------------------------ the errors table

  data.errors.forEach((row) => {
    row.lowerPath = row[E.path].toLowerCase();
  });
  const errorFilter = { text: "" };
  const errors = new PagedTable("errors", data.errors, {
    sorts: {
      path: (a, b, dir) => dir * compareText(a[E.path], b[E.path]),
      reason: (a, b, dir) => dir * compareText(a[E.reason], b[E.reason]) || compareText(a[E.path], b[E.path]),
    },
    sort: "path",
    dir: 1,
    pageSize: data.page_size,
    matches: (row) => !errorFilter.text || row.lowerPath.includes(errorFilter.text),
    renderRow: (row) => {
      const tr = el("tr", {}, [
        el("td", { className: "path", textContent: shownPath(row[E.path]), title: row[E.path] }),
        el("td", { className: "reason-cell", textContent: row[E.reason] }),
      ]);
      tr.dataset.path = row[E.path];
      return tr;
    },
    emptyText: { filtered: "No error matches the filter.", none: "No errors: every file was scored." },
  });
  document.getElementById("errors-count").textContent = `(${formatCount(data.errors.length)})`;
  const errorsText = document.getElementById("errors-text");
  errorsText.addEventListener("input", debounced(() => {
    errorFilter.text = errorsText.value.trim().toLowerCase();
    errors.refilter();
  }));

  files.show(0);
  errors.show(0);
  document.body.dataset.ready = "true";
  performance.mark("report-table-rendered");
})();
