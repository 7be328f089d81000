"""The report's HTML: a run's page and the index of runs. Plain HTML and CSS, with two small
scripts: the 3D view (static/viewer.min.js, three.js) and the index's column sort (inline).
Every link is relative, so a report opens from disk (file://) or any static server as it is."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

from threedgen.report.content import RunContent

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1.5em; color: #222; }
h1 { font-size: 1.6em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.8em 0 .6em; border-bottom: 1px solid #ddd; }
.sub, figcaption, .note { color: #666; font-size: .9em; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin-top: 1em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5em .9em; min-width: 7em; }
.card b { display: block; font-size: 1.3em; }
.row { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
figure { margin: 0; }
#viewer { width: 440px; height: 330px; border: 1px solid #ddd; border-radius: 6px; background: #eee; }
video { width: 280px; height: 280px; background: #fff; border: 1px solid #ddd; border-radius: 6px; }
img.pixels { image-rendering: pixelated; }
table { border-collapse: collapse; } td, th { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; background: #f6f6f6; }
table.sortable th[data-order=asc]::after { content: " \\25B2"; } table.sortable th[data-order=desc]::after { content: " \\25BC"; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
.val { display: flex; flex-wrap: wrap; gap: 1em; }
"""

SORT_JS = """
document.querySelectorAll("table.sortable").forEach((table) => {
  table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {
    const asc = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach((h) => delete h.dataset.order);
    th.dataset.order = asc ? "asc" : "desc";
    const key = (row) => {
      const cell = row.cells[col], text = cell.dataset.sort ?? cell.textContent.trim();
      const number = parseFloat(text);
      return text === "" ? null : isNaN(number) ? text.toLowerCase() : number;
    };
    const order = (a, b) => {
      if (a === null || b === null) return (a === null) - (b === null);  // empty cells last
      if (typeof a !== typeof b) return typeof a === "number" ? -1 : 1;
      return (a < b ? -1 : a > b ? 1 : 0) * (asc ? 1 : -1);
    };
    const body = table.tBodies[0];
    body.append(...[...body.rows].sort((r, s) => order(key(r), key(s))));
  }));
});
"""

e = html.escape


def page(title: str, body: str, head: str = "") -> str:
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n<title>{e(title)}</title>\n<style>{CSS}</style>\n{head}</head>\n'
            f'<body>\n{body}\n</body>\n</html>\n')


# ---------------------------------------------------------------------- values
def fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def flatten(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested metrics as (dotted key, value) rows; lists stay whole."""
    rows = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def key_metrics(m: dict | None) -> list[tuple[str, str, float | None]]:
    """(label, shown value, sort value) of the numbers that say whether a run worked; a value
    the run does not have is ("", None). 4D runs give the minimum over their times."""
    m = m or {}

    def views(key):
        right, n = m.get(key, m.get(f"min_{key}")), m.get("views")
        if right is None:
            return "", None
        return (f"{right}/{n}", right / n) if n else (str(right), float(right))

    def number(key, pattern="{:.3f}"):
        v = m.get(key)
        return ("", None) if v is None else (pattern.format(v), float(v))

    iou = "iou" if "iou" in m else "min_iou"
    return [("IoU", *number(iou)), ("shape right", *views("shape_correct_views")),
            ("colour right", *views("colour_correct_views")), ("colour error", *number("colour_error")),
            ("motion corr.", *number("motion_correlation")), ("fit time", *number("fit_seconds", "{:.0f} s"))]


def size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB" if n >= 2**10 else f"{n} B"


# ---------------------------------------------------------------------- the run's page
def run_page(c: RunContent, curves: str | None, viewer: dict | None) -> str:
    """The run's report; ``curves``: the curves image's path, ``viewer``: {"glb": path of the glb
    shown, "data": its base64 script, "script": the viewer} (paths relative to the run)."""
    head = ""
    if viewer:
        head = f'<script src="{e(viewer["data"])}"></script>\n<script src="{e(viewer["script"])}"></script>\n'
    sections = [header(c), views_section(c, viewer), curves_section(c, curves), validation_section(c),
                exports_section(c), metrics_section(c), config_section(c), footer(c, viewer)]
    return page(f"{c.prompt} - threedgen report", "\n".join(sections), head)


def header(c: RunContent) -> str:
    done = len(c.log.get("step", []))
    status = "finished" if c.metrics is not None else f"not finished: {done} of {c.max_steps} steps logged"
    cards = "".join(f'<div class="card">{e(label)}<b>{e(shown)}</b></div>'
                    for label, shown, _ in key_metrics(c.metrics) if shown)
    return (f"<header><h1>{e(c.prompt)}</h1>\n<p class=\"sub\">{e(c.recipe)} ({e(c.representation)}, "
            f"{e(c.guidance)}) &middot; {e(c.run.name)} &middot; {e(status)}</p>\n"
            f'<div class="cards">{cards}</div></header>')


def views_section(c: RunContent, viewer: dict | None) -> str:
    figures = []
    if viewer:
        figures.append(f'<figure><div id="viewer">loading {e(viewer["glb"])} ...</div>'
                       f'<figcaption><a href="{e(viewer["glb"])}">{e(viewer["glb"])}</a>: drag to turn, '
                       'scroll to zoom, right-drag to pan</figcaption></figure>')
    else:
        figures.append('<p class="note">No glb exported, so no 3D view: <code>threedgen export RUN '
                       '--format glb</code> writes one, then <code>threedgen report RUN</code>.</p>')
    for v in c.videos:
        figures.append(f'<figure><video src="{e(v)}" controls muted loop autoplay playsinline preload="auto">'
                       f'</video><figcaption><a href="{e(v)}">{e(v)}</a></figcaption></figure>')
    for g in c.gifs:
        figures.append(f'<figure><img src="{e(g)}" alt="{e(g)}" width="360"><figcaption>{e(g)}</figcaption></figure>')
    return f'<h2 id="views">The object</h2>\n<div class="row">{"".join(figures)}</div>'


def curves_section(c: RunContent, curves: str | None) -> str:
    body = (f'<img src="{e(curves)}" alt="training curves" width="1000">' if curves else
            '<p class="note">No training log yet (logs/metrics.csv).</p>')
    return (f'<h2 id="curves">Training curves</h2>\n{body}\n<p class="note">Raw values (faint) and their moving '
            'average, from <a href="logs/metrics.csv">logs/metrics.csv</a>.</p>')


def validation_section(c: RunContent) -> str:
    if not c.val_images:
        return '<h2 id="validation">Validation renders</h2>\n<p class="note">None (trainer.val_every=0).</p>'
    figures = "".join(f'<figure><img class="pixels" src="{e(p)}" alt="step {s}" width="{2 * w}">'
                      f'<figcaption>step {s}</figcaption></figure>' for s, p, w in c.val_images)
    return f'<h2 id="validation">Validation renders over time</h2>\n<div class="val">{figures}</div>'


def exports_section(c: RunContent) -> str:
    if not c.exports:
        return ('<h2 id="exports">Exports</h2>\n<p class="note">None: <code>threedgen export RUN --format glb obj '
                'ply splat mp4 views</code> writes them into export/.</p>')
    groups: dict[str, list[tuple[str, int]]] = {}
    for path, n in c.exports:
        top = "/".join(path.split("/")[:2])
        groups.setdefault(top, []).append((path, n))
    rows = []
    for top, files in groups.items():
        if len(files) == 1 and files[0][0] == top:
            rows.append(f'<tr><td><a href="{e(top)}">{e(top)}</a></td><td class="num">{size(files[0][1])}</td></tr>')
        else:  # a folder (obj/, views/): the folder and each file
            links = ", ".join(f'<a href="{e(p)}">{e(p[len(top) + 1:])}</a>' for p, _ in files)
            rows.append(f'<tr><td><a href="{e(top)}/">{e(top)}/</a> ({len(files)} files: {links})</td>'
                        f'<td class="num">{size(sum(n for _, n in files))}</td></tr>')
    return f'<h2 id="exports">Exports</h2>\n<table>{"".join(rows)}</table>'


def metrics_section(c: RunContent) -> str:
    if c.metrics is None:
        return '<h2 id="metrics">Metrics</h2>\n<p class="note">Written when the run finishes (metrics.json).</p>'
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(fmt(v))}</td></tr>" for k, v in flatten(c.metrics))
    return (f'<h2 id="metrics">Metrics</h2>\n<table>{rows}</table>\n'
            '<p class="note">From <a href="metrics.json">metrics.json</a>; <code>threedgen eval RUN</code> '
            'computes them again.</p>')


def config_section(c: RunContent) -> str:
    command = f"<p>Command: <code>{e(c.command)}</code></p>" if c.command else ""
    return f'<h2 id="config">Config</h2>\n{command}<pre>{e(c.config_text)}</pre>'


def footer(c: RunContent, viewer: dict | None) -> str:
    licence = (f' The 3D view is three.js (<a href="{e(str(Path(viewer["script"]).parent))}/three.LICENSE.txt">'
               'MIT licence</a>).') if viewer else ""
    return (f'<footer><h2>More</h2><p class="note">TensorBoard: <code>tensorboard --logdir '
            f'{e(str(c.run / "logs"))}</code>.{licence} Written by <code>threedgen report</code>.</p></footer>')


# ---------------------------------------------------------------------- the index
def index_page(root: Path, runs: list[RunContent]) -> str:
    """The table of runs; a metric no run has gets no column."""
    metrics = [key_metrics(c.metrics) for c in runs]
    keep = [k for k in range(len(metrics[0])) if any(m[k][2] is not None for m in metrics)]
    names = ["", "prompt", "recipe", "run", "steps", *(metrics[0][k][0] for k in keep)]
    head = "".join(f"<th>{e(h)}</th>" for h in names)
    rows = "\n".join(index_row(root, c, [m[k] for k in keep]) for c, m in zip(runs, metrics))
    body = (f"<h1>threedgen runs</h1>\n<p class=\"sub\">{len(runs)} run{'s' * (len(runs) != 1)} under "
            f"{e(str(root))}; click a column to sort.</p>\n"
            f'<table class="sortable" id="runs"><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>\n'
            f"<script>{SORT_JS}</script>")
    return page("threedgen runs", body)


def index_row(root: Path, c: RunContent, metrics: list[tuple[str, str, float | None]]) -> str:
    rel = c.run.relative_to(root).as_posix()
    thumb = (f'<img class="pixels" src="{e(rel)}/{e(c.thumbnail)}" alt="" width="96" height="96">'
             if c.thumbnail else "")
    stamp = re.search(r"@(\d{8}-\d{6})", c.run.name)
    cells = [f'<td data-sort="">{thumb}</td>', f'<td><a href="{e(rel)}/report.html">{e(c.prompt)}</a></td>',
             f"<td>{e(c.recipe)}</td>", f'<td data-sort="{stamp.group(1) if stamp else ""}">{e(c.run.name)}</td>',
             f'<td class="num">{len(c.log.get("step", []))}</td>']
    cells += [f'<td class="num" data-sort="{"" if v is None else v}">{e(shown)}</td>' for _, shown, v in metrics]
    return f"<tr>{''.join(cells)}</tr>"
