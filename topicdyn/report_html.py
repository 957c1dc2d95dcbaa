"""RUN_DIR/report.html: report.md's content as one self-contained page.

Figures are embedded as data: URIs (PNG and GIF; the page needs no other file and no network)
and tables sort by any column on a click (numbers by value, the rest alphabetically; a small
inline script, no library). Written beside report.md by topicdyn.report.write_report.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 1.5em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.verdict { font-weight: 600; }
figure { margin: 1em 0; } figcaption { font-size: 12px; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f5f5f5; padding: 0 2px; }
"""

# Sorting: a click on a header sorts the body rows by that column (again: the other way).
# A cell's leading number is its key where it has one ("1.107 ± 0.12" sorts as 1.107).
SORT_JS = """
(function () {
  function key(cell) {
    var t = cell.textContent.trim();
    var m = t.match(/^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i);
    return m ? parseFloat(m[0]) : t.toLowerCase();
  }
  function sortBy(table, col, th) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.setAttribute("aria-sort", "none");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.setAttribute("aria-sort", "none");
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter") { sortBy(table, col, th); }
      });
    });
    table.setAttribute("data-sortable", "ready");
  });
})();
"""

MIME = {".png": "image/png", ".gif": "image/gif"}


def inline(text: str) -> str:
    """Markdown's inline marks (**bold**, *italic*, `code`) of report text as HTML, the rest
    escaped."""
    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", t)


def table(head: list[str], rows: list[list[str]], verdict_col: int | None = None) -> str:
    """A sortable HTML table of plain-text cells."""
    out = ['<table class="sortable"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(
            f'<td{" class=verdict" if i == verdict_col else ""}>{html.escape(str(c))}</td>'
            for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def data_uri(path: Path) -> str:
    return f"data:{MIME[path.suffix]};base64," + base64.b64encode(path.read_bytes()).decode()


def bullets(lines: list[str]) -> str:
    """Nested lists from report.md's '- item' / '  - sub-item' lines."""
    out, level = [], 0
    for ln in lines:
        depth = 2 if ln.startswith("  - ") else 1
        while level < depth:
            out.append("<ul>")
            level += 1
        while level > depth:
            out.append("</ul>")
            level -= 1
        out.append(f"<li>{inline(ln.strip()[2:])}</li>")
    out += ["</ul>"] * level
    return "".join(out)


def write_html(parts: dict, run_dir: Path, out: Path) -> Path:
    """report.html from topicdyn.report.report_parts(run_dir)."""
    from topicdyn.report import claims_cells

    head, rows = claims_cells(parts["claims"], parts["n_seeds"])
    body = [f"<h1>{html.escape(parts['title'])}</h1>", f"<p>{inline(parts['config'])}</p>"]
    body += [f"<p>{inline(n)}</p>" for n in parts["notes"]]
    body += [f"<h2>Claims at the last checkpoint (step {parts['step']})</h2>",
             "<p><small>Click a column header to sort.</small></p>",
             table(head, rows, verdict_col=6), f"<p>{inline(parts['verdict_note'])}</p>",
             "<h2>Figures</h2>"]
    if parts["figures"]:
        for f, caption in parts["figures"]:
            body.append(f'<figure><img alt="{html.escape(caption)}" '
                        f'src="{data_uri(Path(run_dir) / "figures" / f)}">'
                        f"<figcaption>{html.escape(caption)} (<code>{f}</code>)</figcaption>"
                        "</figure>")
    else:
        body.append(f"<p>No figures yet: <code>topicdyn plot {html.escape(str(run_dir))}"
                    "</code> writes them.</p>")
    body.append("<h2>Theory: what the predictions assume</h2>")
    body.append(bullets(parts["assumptions"]) if parts["assumptions"] else
                "<p>theory.json has no predictions for this config.</p>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(parts['title'])}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{SORT_JS}</script>\n</body></html>\n")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
