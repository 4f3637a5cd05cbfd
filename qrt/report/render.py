"""How a :class:`~qrt.report.compare.Report` reads: the verdict, the text rows, the HTML page, the figure.

The HTML page is one self-contained file: inline CSS, the per-layer chart as inline SVG, no scripts and no
network references, so it opens the same from a mail attachment as from a CI artifact. It is responsive:
the page never scrolls sideways; wide tables scroll inside their own container and the chart scales to the
width. The summary comes first (verdict, size, latency, int8 coverage), then the outputs with the metrics
their kind calls for, then the layers, latency, size and coverage in detail.

Verdict, per output, the weakest one deciding (thresholds are conventions, stated so readers can disagree):
- scores: top-1 agreement with float >= 99% good, >= 97% fair, else poor; with labels, an accuracy
  drop over 0.5 points is at best fair and over 2 points poor; scores whose SQNR is under 20 dB are at
  best fair even when every top class agrees (the probabilities a caller thresholds have drifted);
- regression: SQNR >= 30 dB good (noise power 0.1% of the signal's), >= 20 dB fair, else poor;
- indices: equal values >= 99% good, >= 95% fair, else poor.
"""
from __future__ import annotations

import html
import math

from .coverage import op_counts

_LEVELS = ("good", "fair", "poor")
_SQNR_GOOD, _SQNR_FAIR = 30.0, 20.0
_CHART_CLAMP_DB = 80.0   # identical tensors have infinite SQNR; the chart draws them at the top


# ---- verdict -----------------------------------------------------------------------------------------

def _output_verdict(output, report):
    if output.kind == "scores":
        agree = output.top1_agreement
        level = "good" if agree >= 0.99 else "fair" if agree >= 0.97 else "poor"
        reason = f"{output.name}: int8 picks float's top class on {agree:.2%} of rows"
        if report.accuracy_float is not None:
            drop = (report.accuracy_float - report.accuracy_int8) * 100
            by_accuracy = "good" if drop <= 0.5 else "fair" if drop <= 2.0 else "poor"
            level = max(level, by_accuracy, key=_LEVELS.index)
            reason += f"; accuracy {report.accuracy_int8:.2%} vs float {report.accuracy_float:.2%}"
        if output.sqnr_db < _SQNR_FAIR:
            level = max(level, "fair", key=_LEVELS.index)
            reason += f"; the scores themselves drift (SQNR {_db(output.sqnr_db)})"
        return level, reason
    if output.kind == "indices":
        agree = output.exact_agreement
        level = "good" if agree >= 0.99 else "fair" if agree >= 0.95 else "poor"
        return level, f"{output.name}: {agree:.2%} of values equal to float's"
    level = "good" if output.sqnr_db >= _SQNR_GOOD else "fair" if output.sqnr_db >= _SQNR_FAIR else "poor"
    return level, f"{output.name}: SQNR {_db(output.sqnr_db)} against float (good from {_SQNR_GOOD:.0f} dB)"


def verdict(report):
    """("good" | "fair" | "poor", reason) from the weakest output; ("none", ...) without outputs."""
    if not report.outputs:
        return "none", "no outputs compared"
    judged = [_output_verdict(o, report) for o in report.outputs]
    return max(judged, key=lambda item: _LEVELS.index(item[0]))


# ---- formatting --------------------------------------------------------------------------------------

def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _db(value):
    return "identical" if math.isinf(value) and value > 0 else f"{value:.1f} dB"


def _pct(value):
    return "n/a" if value is None else f"{value:.2%}"


def _speed(report):
    """(int8 ms, float ms, float/int8) for qrt, or None without timings."""
    f, q = report.latency_ms.get("qrt float"), report.latency_ms.get("qrt int8")
    if not f or not q:
        return None
    return q, f, f / q


def _output_metrics(o):
    """[(label, value)] for one output, the metrics its kind calls for first."""
    if o.kind == "scores":
        first = [("top-1 agree", _pct(o.top1_agreement))]
        if o.top5_agreement is not None:
            first.append(("top-5 agree", _pct(o.top5_agreement)))
        return first + [("SQNR", _db(o.sqnr_db)), ("cos", f"{o.cosine:.5f}")]
    if o.kind == "indices":
        return [("equal", _pct(o.exact_agreement)), ("max|err|", f"{o.max_abs:.4g}")]
    return [("SQNR", _db(o.sqnr_db)), ("max|err|", f"{o.max_abs:.4g}"), ("mean|err|", f"{o.mean_abs:.4g}"),
            ("cos", f"{o.cosine:.5f}")]


def _op_counts(nodes):
    return ", ".join(f"{op} x{count}" for op, count in op_counts(nodes))


# ---- text --------------------------------------------------------------------------------------------

def text_rows(report):
    level, reason = verdict(report)
    summary = [("verdict", f"{level} ({reason})"), ("samples", str(report.samples))]
    if report.accuracy_float is not None:
        summary += [("accuracy float", f"{report.accuracy_float:.2%}"),
                    ("accuracy int8", f"{report.accuracy_int8:.2%}"),
                    ("accuracy change", f"{(report.accuracy_int8 - report.accuracy_float) * 100:+.2f} points")]
    summary += [("file size float", _size(report.size_float)), ("file size int8", _size(report.size_int8)),
                ("int8 / float size", f"{report.size_int8 / max(report.size_float, 1):.1%}")]
    speed = _speed(report)
    if speed:
        summary.append(("qrt int8 vs float", f"{speed[0]:.3f} ms vs {speed[1]:.3f} ms ({speed[2]:.2f}x)"))
    outputs = [(f"{o.name} [{o.kind}]", "  ".join(f"{k} {v}" for k, v in _output_metrics(o)))
               for o in report.outputs]
    latency = []
    base = report.latency_ms.get("qrt float")
    for name, ms in report.latency_ms.items():
        ratio = f"  ({base / ms:.2f}x vs qrt float)" if base and ms else ""
        latency.append((name, f"{ms:.3f} ms{ratio}"))
    layers = [(f"{l.tensor} ({l.op_type})", _db(l.sqnr_db)) for l in report.layers[:10]]
    coverage = [("int8 compute nodes", f"{len(report.quantized_nodes)} ({report.int8_share:.0%} of compute nodes)"),
                ("float compute nodes", f"{len(report.float_nodes)}" + (
                    f": {_op_counts(report.float_nodes)}" if report.float_nodes else "")),
                ("shape computation", f"{len(report.shape_nodes)}" + (
                    f": {_op_counts(report.shape_nodes)}" if report.shape_nodes else ""))]
    weights = [(f"weights {dtype}", f"float model {_size(report.weight_bytes_float.get(dtype, 0))}, "
                                    f"int8 model {_size(report.weight_bytes_int8.get(dtype, 0))}")
               for dtype in _dtypes(report)]
    return [("Summary", summary), ("Outputs (int8 vs float)", outputs), ("Latency (median)", latency),
            ("Worst layers (SQNR, lowest first)", layers), ("Size by dtype", weights), ("Coverage", coverage)]


def _dtypes(report):
    return sorted(set(report.weight_bytes_float) | set(report.weight_bytes_int8))


# ---- HTML --------------------------------------------------------------------------------------------

# Every rule is scoped to .qrt-report, so the fragment can sit in a Jupyter page without restyling it.
_CSS = """
.qrt-report { --fg:#1f2328; --muted:#59636e; --bg:#ffffff; --panel:#f6f8fa; --line:#d1d9e0; --accent:#0969da;
  --good:#1a7f37; --good-bg:#dafbe1; --fair:#9a6700; --fair-bg:#fff8c5; --poor:#cf222e; --poor-bg:#ffebe9;
  color: var(--fg); background: var(--bg); line-height: 1.45; max-width: 1120px;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.qrt-report * { box-sizing: border-box; }
.qrt-report h1 { font-size: 1.5rem; margin: 0 0 4px; }
.qrt-report h2 { font-size: 1.15rem; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.qrt-report h3 { font-size: 1rem; margin: 20px 0 8px; }
.qrt-report .sub { color: var(--muted); margin: 0 0 18px; overflow-wrap: anywhere; }
.qrt-report .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em; }
.qrt-report .verdict { border-radius: 10px; padding: 14px 16px; margin: 0 0 16px; border: 1px solid var(--line);
  overflow-wrap: anywhere; }
.qrt-report .verdict strong { text-transform: uppercase; letter-spacing: .04em; margin-right: .5em; }
.qrt-report .good { color: var(--good); } .qrt-report .fair { color: var(--fair); }
.qrt-report .poor { color: var(--poor); }
.qrt-report .verdict.good { background: var(--good-bg); border-color: var(--good); }
.qrt-report .verdict.fair { background: var(--fair-bg); border-color: var(--fair); }
.qrt-report .verdict.poor { background: var(--poor-bg); border-color: var(--poor); }
.qrt-report .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; }
.qrt-report .card { background: var(--panel); border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 14px; min-width: 0; }
.qrt-report .card .label { color: var(--muted); font-size: .82rem; text-transform: uppercase; letter-spacing: .04em; }
.qrt-report .card .value { font-size: 1.55rem; font-weight: 600; margin: 2px 0; overflow-wrap: anywhere; }
.qrt-report .card .note { color: var(--muted); font-size: .88rem; overflow-wrap: anywhere; }
.qrt-report .scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 8px; }
.qrt-report table { border-collapse: collapse; width: 100%; font-size: .92rem; margin: 0; }
.qrt-report th, .qrt-report td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
.qrt-report th { background: var(--panel); font-weight: 600; white-space: nowrap; }
.qrt-report tr:last-child td { border-bottom: 0; }
.qrt-report td.num, .qrt-report th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.qrt-report td.name { overflow-wrap: anywhere; min-width: 10ch; }
.qrt-report .bar { height: 10px; border-radius: 5px; background: var(--line); min-width: 60px; margin-top: 5px; }
.qrt-report .bar > span { display: block; height: 100%; border-radius: 5px; }
.qrt-report .bar .good { background: var(--good); } .qrt-report .bar .fair { background: var(--fair); }
.qrt-report .bar .poor { background: var(--poor); } .qrt-report .bar .plain { background: var(--accent); }
.qrt-report figure { margin: 0; }
.qrt-report figure svg { display: block; width: 100%; max-width: 100%; height: auto; color: var(--fg); }
.qrt-report figcaption { color: var(--muted); font-size: .88rem; margin-top: 4px; }
.qrt-report .chart { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 10px; }
.qrt-report details { margin-top: 10px; }
.qrt-report summary { cursor: pointer; color: var(--accent); }
.qrt-report .kind { display: inline-block; font-size: .75rem; padding: 1px 7px; border-radius: 9px;
  border: 1px solid var(--line); color: var(--muted); margin-left: 6px; white-space: nowrap; font-family: inherit; }
.qrt-report p.note { color: var(--muted); font-size: .9rem; }
.qrt-report .metric { display: inline-block; white-space: nowrap; margin-right: 1.1em; }
.qrt-report svg.narrow { display: none; }
@media (max-width: 640px) {
  .qrt-report svg.wide, .qrt-report .barcol { display: none; }
  .qrt-report svg.narrow { display: block; }
  .qrt-report .card .value { font-size: 1.3rem; }
  .qrt-report th, .qrt-report td { padding: 5px 7px; }
}
"""

# The stand-alone page only: the page around the report, and a dark scheme where the reader's system asks.
_PAGE_CSS = """
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: #ffffff; }
main.qrt-report { margin: 0 auto; padding: 24px 20px 48px; }
@media (max-width: 640px) { main.qrt-report { padding: 16px 12px 32px; } }
@media (prefers-color-scheme: dark) {
  body { background: #0d1117; }
  .qrt-report { --fg:#e6edf3; --muted:#9198a1; --bg:#0d1117; --panel:#151b23; --line:#3d444d; --accent:#4493f8;
    --good:#3fb950; --good-bg:#12261e; --fair:#d29922; --fair-bg:#272115; --poor:#f85149; --poor-bg:#2c1417; } }
"""


def _e(text):
    return html.escape(str(text), quote=True)


def _table(header, rows, classes=None, caption=None):
    """A table inside its own horizontal scroller; ``classes`` names each column's td class."""
    classes = classes or [""] * len(header)
    head = "".join(f"<th class='{c}'>{_e(h)}</th>" for h, c in zip(header, classes))
    body = "".join("<tr>" + "".join(f"<td class='{c}'>{cell}</td>" for cell, c in zip(row, classes)) + "</tr>"
                   for row in rows)
    cap = f"<caption class='sub'>{_e(caption)}</caption>" if caption else ""
    return f"<div class='scroll'><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _bar(fraction, level="plain"):
    fraction = min(max(fraction, 0.0), 1.0)
    return f"<div class='bar'><span class='{level}' style='width:{fraction * 100:.1f}%'></span></div>"


def _sqnr_level(db):
    return "good" if db >= _SQNR_GOOD else "fair" if db >= _SQNR_FAIR else "poor"


def _card(label, value, note=""):
    return (f"<div class='card'><div class='label'>{_e(label)}</div><div class='value'>{_e(value)}</div>"
            f"<div class='note'>{_e(note)}</div></div>")


def _summary_cards(report):
    level, reason = verdict(report)
    cards = []
    if report.accuracy_float is not None:
        cards.append(_card("accuracy int8", f"{report.accuracy_int8:.2%}",
                           f"float {report.accuracy_float:.2%} "
                           f"({(report.accuracy_int8 - report.accuracy_float) * 100:+.2f} points)"))
    cards.append(_card("size int8", _size(report.size_int8),
                       f"{report.size_int8 / max(report.size_float, 1):.1%} of float ({_size(report.size_float)})"))
    speed = _speed(report)
    if speed:
        q, f, ratio = speed
        faster = f"{ratio:.2f}x faster than float" if ratio >= 1 else f"{1 / ratio:.2f}x slower than float"
        ort = report.latency_ms.get("onnxruntime int8")
        reference = f"; onnxruntime int8 {ort:.2f} ms" if ort else ""
        cards.append(_card("latency int8 (qrt)", f"{q:.2f} ms", f"float {f:.2f} ms: {faster}{reference}"))
    compute = len(report.quantized_nodes) + len(report.float_nodes)
    cards.append(_card("int8 compute nodes", f"{report.int8_share:.0%}",
                       f"{len(report.quantized_nodes)} of {compute}; {len(report.shape_nodes)} shape-computation "
                       f"node(s) counted apart"))
    banner = (f"<div class='verdict {level}'><strong>{_e(level)}</strong>{_e(reason)}</div>")
    return banner + "<div class='cards'>" + "".join(cards) + "</div>"


def _outputs_section(report):
    rows = []
    for o in report.outputs:
        metrics = _output_metrics(o)
        level, _ = _output_verdict(o, report)
        cells = " ".join(f"<span class='metric'>{_e(k)} <strong>{_e(v)}</strong></span>" for k, v in metrics)
        rows.append([f"<span class='mono'>{_e(o.name)}</span><span class='kind'>{_e(o.kind)}</span>",
                     f"<span class='{level}'>{_e(level)}</span>", cells])
    note = ("Metrics follow each output's kind: class scores by top-1/top-5 agreement, regression outputs "
            "(boxes, feature maps, embeddings) by SQNR, max |error| and cosine, integer outputs by equal values. "
            "The kind is guessed from name, shape and values; compare(output_kinds=...) or "
            "qrt report --output-kind NAME=KIND overrides it.")
    return ("<h2>Outputs: int8 against float</h2>" + _table(["output", "verdict", "metrics"], rows,
                                                              ["name", "", ""])
            + f"<p class='note'>{_e(note)}</p>")


def _layer_chart(layers, width, height):
    """Inline SVG: SQNR of every int8 tensor, in graph order, with the 20 and 30 dB guides.

    Drawn at the proportions of the screen it is shown on (see _layers_section): SVG text scales with
    the picture, so one drawing cannot stay legible on both a laptop and a phone."""
    ordered = sorted(layers, key=lambda l: l.position)
    left, right, top, bottom = 44, 12, 12, 34
    top_db = min(max([l.sqnr_db for l in ordered if math.isfinite(l.sqnr_db)] + [40.0]) + 5, _CHART_CLAMP_DB)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i):
        return left + (plot_w * (i + 0.5) / len(ordered))

    def y(db):
        db = top_db if not math.isfinite(db) or db > top_db else max(db, 0.0)
        return top + plot_h * (1 - db / top_db)

    parts = [f"<svg class='{'wide' if width > 600 else 'narrow'}' viewBox='0 0 {width} {height}' "
             f"xmlns='http://www.w3.org/2000/svg' role='img' aria-label='SQNR per layer in graph order' "
             f"font-family='system-ui, sans-serif' font-size='12'>"]
    step = 10 if top_db <= 60 else 20
    for db in range(0, int(top_db) + 1, step):
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y(db):.1f}' y2='{y(db):.1f}' "
                     f"stroke='currentColor' stroke-opacity='0.12'/>"
                     f"<text x='{left - 6}' y='{y(db) + 4:.1f}' text-anchor='end' fill='currentColor' "
                     f"fill-opacity='0.7'>{db}</text>")
    for db, color in ((_SQNR_GOOD, "#1a7f37"), (_SQNR_FAIR, "#cf222e")):
        if db <= top_db:
            parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y(db):.1f}' y2='{y(db):.1f}' "
                         f"stroke='{color}' stroke-dasharray='5 4' stroke-opacity='0.8'/>")
    points = " ".join(f"{x(i):.1f},{y(l.sqnr_db):.1f}" for i, l in enumerate(ordered))
    parts.append(f"<polyline points='{points}' fill='none' stroke='#0969da' stroke-width='1.5' "
                 f"stroke-opacity='0.6'/>")
    colors = {"good": "#1a7f37", "fair": "#bf8700", "poor": "#cf222e"}
    radius = 3.2 if len(ordered) <= 60 else 2.2
    for i, l in enumerate(ordered):
        parts.append(f"<circle cx='{x(i):.1f}' cy='{y(l.sqnr_db):.1f}' r='{radius}' "
                     f"fill='{colors[_sqnr_level(l.sqnr_db)]}'><title>{_e(l.tensor)} ({_e(l.op_type)}): "
                     f"{_e(_db(l.sqnr_db))}</title></circle>")
    parts.append(f"<text x='{left + plot_w / 2:.0f}' y='{height - 8}' text-anchor='middle' fill='currentColor' "
                 f"fill-opacity='0.7'>{len(ordered)} int8 tensors, input to output</text>"
                 f"<text x='12' y='{top + plot_h / 2:.0f}' transform='rotate(-90 12 {top + plot_h / 2:.0f})' "
                 f"text-anchor='middle' fill='currentColor' fill-opacity='0.7'>SQNR (dB)</text></svg>")
    return "".join(parts)


def _layers_section(report, narrow_chart, worst=15):
    if not report.layers:
        return ("<h2>Layers</h2><p class='note'>No int8 tensor of the int8 model could be matched to a float "
                "tensor by name (T_quantized, T_dequantized or T_DequantizeLinear_Output).</p>")
    finite = [l.sqnr_db for l in report.layers if math.isfinite(l.sqnr_db)]
    scale = max(finite + [_SQNR_GOOD + 10])

    def rows(layers):
        return [[str(l.position), f"<span class='mono'>{_e(l.tensor)}</span>", _e(l.op_type),
                 f"<span class='{_sqnr_level(l.sqnr_db)}'>{_e(_db(l.sqnr_db))}</span>",
                 _bar(1.0 if not math.isfinite(l.sqnr_db) else l.sqnr_db / scale, _sqnr_level(l.sqnr_db))]
                for l in layers]

    header, classes = ["node #", "tensor", "op", "SQNR", ""], ["num", "name", "", "num", "barcol"]
    narrow = _layer_chart(report.layers, 400, 260) if narrow_chart else ""
    chart = (f"<figure class='chart'>{_layer_chart(report.layers, 900, 250)}{narrow}<figcaption>Where the "
             f"error enters: each dot is one int8 tensor against its float counterpart (hover for its name); "
             f"dashed lines at {_SQNR_FAIR:.0f} and {_SQNR_GOOD:.0f} dB.</figcaption></figure>")
    every = sorted(report.layers, key=lambda l: l.position)
    return ("<h2>Layer by layer</h2>" + chart
            + f"<h3>Worst {min(worst, len(report.layers))} of {len(report.layers)}</h3>"
            + _table(header, rows(report.layers[:worst]), classes)
            + f"<details><summary>All {len(every)} int8 tensors in graph order</summary>"
            + _table(header, rows(every), classes) + "</details>")


def _latency_section(report):
    if not report.latency_ms:
        return ""
    slowest = max(report.latency_ms.values())
    base = report.latency_ms.get("qrt float")
    rows = [[_e(name), f"{ms:.3f} ms", f"{base / ms:.2f}x" if base and ms else "",
             _bar(ms / slowest if slowest else 0, "plain")] for name, ms in report.latency_ms.items()]
    return ("<h2>Latency (median of repeated runs, one batch)</h2>"
            + _table(["runtime", "median", "speed vs qrt float", ""], rows, ["", "num", "num", "barcol"]))


def _size_section(report):
    largest = max(list(report.weight_bytes_float.values()) + list(report.weight_bytes_int8.values()) + [1])
    rows = [[_e(dtype), _size(report.weight_bytes_float.get(dtype, 0)), _size(report.weight_bytes_int8.get(dtype, 0)),
             _bar(report.weight_bytes_int8.get(dtype, 0) / largest, "plain")] for dtype in _dtypes(report)]
    rows.append(["<strong>file</strong>", f"<strong>{_size(report.size_float)}</strong>",
                 f"<strong>{_size(report.size_int8)}</strong>", _bar(report.size_int8 / max(report.size_float, 1))])
    return ("<h2>Size</h2>" + _table(["weights", "float model", "int8 model", "int8 model, to scale"], rows,
                                      ["", "num", "num", "barcol"]))


def _coverage_section(report):
    groups = [("int8 compute", report.quantized_nodes), ("float compute", report.float_nodes),
              ("shape computation", report.shape_nodes)]
    rows = [[_e(label), str(len(nodes)), _e(_op_counts(nodes) or "none")] for label, nodes in groups]
    listing = ""
    if report.float_nodes:
        listing = (f"<details><summary>The {len(report.float_nodes)} float compute nodes</summary>"
                   + _table(["node", "op"], [[f"<span class='mono'>{_e(n)}</span>", _e(op)]
                                             for n, op in report.float_nodes], ["name", ""]) + "</details>")
    note = ("Shape computation (Shape/Size and the integer nodes computed only from them and from constants, "
            "an exporter's reshape arithmetic) carries sizes, not activations: it is neither int8 nor float "
            "compute. Data movement (Reshape, Transpose, Slice, Q/DQ, ...) is not counted.")
    return ("<h2>Coverage</h2>" + _table(["nodes", "count", "by op"], rows, ["", "num", ""]) + listing
            + f"<p class='note'>{_e(note)}</p>")


def _body(report, narrow_chart):
    return (f"<h1>qrt report</h1><p class='sub'><span class='mono'>{_e(report.float_model)}</span> (float) vs "
            f"<span class='mono'>{_e(report.int8_model)}</span> (int8), {report.samples} samples</p>"
            + _summary_cards(report) + _outputs_section(report) + _layers_section(report, narrow_chart)
            + _latency_section(report) + _size_section(report) + _coverage_section(report))


def html_fragment(report):
    """The report for Jupyter's rich display: its scoped style, then the body. One chart, drawn wide: a
    notebook is not read on a phone, and a viewer that drops styles (GitHub's) would otherwise show both."""
    return f"<div class='qrt-report'><style>{_CSS}</style>{_body(report, narrow_chart=False)}</div>"


def html_page(report):
    title = f"qrt report: {report.float_model} vs {report.int8_model}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}{_PAGE_CSS}</style></head><body><main class='qrt-report'>"
            + _body(report, narrow_chart=True) + "</main></body></html>\n")


# ---- matplotlib --------------------------------------------------------------------------------------

def summary_figure(report):
    """Per-layer SQNR in graph order, weight bytes by dtype and latency, as one matplotlib figure."""
    import os

    import matplotlib
    import matplotlib.ticker
    if not os.environ.get("DISPLAY") and "ipykernel" not in matplotlib.get_backend().lower() \
            and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [2, 1, 1.3]})
    ordered = sorted(report.layers, key=lambda l: l.position)
    values = [min(l.sqnr_db, _CHART_CLAMP_DB) for l in ordered]
    axes[0].plot(range(len(values)), values, color="tab:blue", alpha=0.5)
    axes[0].scatter(range(len(values)), values, s=14,
                    c=[{"good": "tab:green", "fair": "goldenrod", "poor": "tab:red"}[_sqnr_level(v)]
                       for v in values], zorder=3)
    axes[0].axhline(_SQNR_GOOD, color="tab:green", linestyle="--", linewidth=1)
    axes[0].axhline(_SQNR_FAIR, color="tab:red", linestyle="--", linewidth=1)
    axes[0].set_xlabel("int8 tensors in graph order")
    axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("SQNR (dB), int8 vs float")
    axes[0].set_title("Layer by layer")
    dtypes = _dtypes(report)
    x = np.arange(2)
    bottom = np.zeros(2)
    for dtype in dtypes:
        sizes = np.array([report.weight_bytes_float.get(dtype, 0), report.weight_bytes_int8.get(dtype, 0)]) / 1024
        axes[1].bar(x, sizes, bottom=bottom, label=dtype)
        bottom += sizes
    axes[1].set_xticks(x, ["float", "int8"])
    axes[1].set_ylabel("weights (KiB)")
    axes[1].set_title("Size by dtype")
    axes[1].legend(fontsize="small")
    names = list(report.latency_ms)
    axes[2].barh(names[::-1], [report.latency_ms[n] for n in names][::-1],
                 color=["tab:blue", "tab:orange", "tab:gray", "tab:gray"][:len(names)][::-1])
    axes[2].set_xlabel("median latency (ms)")
    axes[2].set_title("Latency")
    fig.tight_layout()
    return fig


# ---- techniques (qrt.report.compare_techniques) -------------------------------------------------------

_TECHNIQUE_COLORS = ("#6e7781", "#0969da", "#1a7f37", "#8250df", "#bf3989", "#bc4c00", "#0a7d8c", "#4d2d00")


def _gain(value):
    if math.isnan(value):
        return "n/a"
    return "identical" if math.isinf(value) and value > 0 else f"{value:+.1f} dB"


def _gain_level(value):
    return "" if math.isnan(value) or abs(value) < 0.5 else "good" if value > 0 else "poor"


def _measured(report):
    """The runs with a model of their own (plain int8 first)."""
    return [run for run in report.runs if not run.same_as_plain]


def _changed(run):
    return "same model as plain int8 (nothing to change)" if run.same_as_plain else ""


def technique_text(report):
    lines = [f"qrt techniques: {report.model} ({report.samples} sample(s); SQNR of the worst output against float)"]
    width = max(len(run.name) for run in report.runs)
    for run in report.runs:
        gain = "" if run is report.plain else f"  {_gain(report.gain(run)):>10} vs plain"
        lines.append(f"  {run.name:<{width}}  {_db(run.output_sqnr_db):>10}{gain}  {run.seconds:6.1f} s  "
                     f"{run.size_ratio:.1%} of float" + (f"  ({_changed(run)})" if run.same_as_plain else ""))
    runs = _measured(report)[1:]
    worst = sorted(report.plain.layers.items(), key=lambda item: item[1])[:10]
    if worst and runs:
        lines.append("\nWorst int8 tensors of plain int8, and the dB each technique adds to them")
        lines.append("  " + "tensor".ljust(28) + "plain".rjust(10) + "".join(r.name[:14].rjust(16) for r in runs))
        for tensor, db in worst:
            lines.append("  " + tensor[:28].ljust(28) + _db(db).rjust(10)
                         + "".join(_gain(report.gain(r, tensor)).rjust(16) for r in runs))
    return "\n".join(lines)


def _technique_summary(report):
    top = max([r.output_sqnr_db for r in report.runs if math.isfinite(r.output_sqnr_db)] + [_SQNR_GOOD])
    rows = []
    for run in report.runs:
        gain = "" if run is report.plain else (
            f"<span class='{_gain_level(report.gain(run))}'>{_e(_gain(report.gain(run)))}</span>")
        notes = "; ".join(run.notes)
        what = _e(run.description) + (f"<div class='note'>{_e(_changed(run))}</div>" if run.same_as_plain else "")
        if notes:
            what += f"<details><summary>notes</summary><p class='note'>{_e(notes)}</p></details>"
        rows.append([f"<strong>{_e(run.name)}</strong>", what,
                     f"<span class='{_sqnr_level(run.output_sqnr_db)}'>{_e(_db(run.output_sqnr_db))}</span>",
                     gain, _bar(run.output_sqnr_db / top if math.isfinite(run.output_sqnr_db) else 1.0,
                                _sqnr_level(run.output_sqnr_db)),
                     f"{run.seconds:.1f} s", f"{run.size_ratio:.1%}"])
    return _table(["technique", "what it does", "output SQNR", "vs plain", "", "quantization", "size"], rows,
                  ["", "name", "num", "num", "barcol", "num", "num"])


def _technique_chart(report, width, height):
    """Inline SVG: per-layer SQNR in graph order, one line per technique with a model of its own."""
    runs = _measured(report)
    order = [t for t, _ in report.tensors]
    if not order:
        return ""
    finite = [db for run in runs for db in run.layers.values() if math.isfinite(db)]
    top_db = min(max(finite + [40.0]) + 5, _CHART_CLAMP_DB)
    left, right, top, bottom = 44, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i):
        return left + plot_w * (i + 0.5) / len(order)

    def y(db):
        db = top_db if not math.isfinite(db) or db > top_db else max(db, 0.0)
        return top + plot_h * (1 - db / top_db)

    parts = [f"<svg class='{'wide' if width > 600 else 'narrow'}' viewBox='0 0 {width} {height}' "
             f"xmlns='http://www.w3.org/2000/svg' role='img' aria-label='SQNR per layer and technique' "
             f"font-family='system-ui, sans-serif' font-size='12'>"]
    step = 10 if top_db <= 60 else 20
    for db in range(0, int(top_db) + 1, step):
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y(db):.1f}' y2='{y(db):.1f}' "
                     f"stroke='currentColor' stroke-opacity='0.12'/><text x='{left - 6}' y='{y(db) + 4:.1f}' "
                     f"text-anchor='end' fill='currentColor' fill-opacity='0.7'>{db}</text>")
    for k, run in enumerate(runs):
        color = _TECHNIQUE_COLORS[k % len(_TECHNIQUE_COLORS)]
        points = " ".join(f"{x(i):.1f},{y(run.layers[t]):.1f}" for i, t in enumerate(order) if t in run.layers)
        dash = " stroke-dasharray='4 3'" if run is report.plain else ""
        parts.append(f"<polyline points='{points}' fill='none' stroke='{color}' stroke-width='1.6'{dash} "
                     f"stroke-opacity='0.85'><title>{_e(run.name)}</title></polyline>")
    parts.append(f"<text x='{left + plot_w / 2:.0f}' y='{height - 8}' text-anchor='middle' fill='currentColor' "
                 f"fill-opacity='0.7'>{len(order)} int8 tensors, input to output</text>"
                 f"<text x='12' y='{top + plot_h / 2:.0f}' transform='rotate(-90 12 {top + plot_h / 2:.0f})' "
                 f"text-anchor='middle' fill='currentColor' fill-opacity='0.7'>SQNR (dB)</text></svg>")
    return "".join(parts)


def _technique_legend(report):
    items = []
    for k, run in enumerate(_measured(report)):
        color = _TECHNIQUE_COLORS[k % len(_TECHNIQUE_COLORS)]
        items.append(f"<span class='metric'><span style='display:inline-block;width:14px;height:4px;"
                     f"vertical-align:middle;background:{color};margin-right:6px'></span>{_e(run.name)}</span>")
    return "<p class='note'>" + " ".join(items) + "</p>"


def _technique_layers(report, worst=20):
    runs = _measured(report)[1:]
    plain = report.plain.layers
    position = {t: i for i, (t, _) in enumerate(report.tensors)}
    op = dict(report.tensors)

    def rows(tensors):
        out = []
        for t in tensors:
            cells = [str(position[t]), f"<span class='mono'>{_e(t)}</span>", _e(op[t]),
                     f"<span class='{_sqnr_level(plain[t])}'>{_e(_db(plain[t]))}</span>"]
            for run in runs:
                gain = report.gain(run, t)
                cells.append(f"<span class='{_gain_level(gain)}'>{_e(_gain(gain))}</span>")
            out.append(cells)
        return out

    header = ["#", "tensor", "op", "plain int8"] + [run.name for run in runs]
    classes = ["num", "name", "", "num"] + ["num"] * len(runs)
    ranked = [t for t, _ in sorted(plain.items(), key=lambda item: item[1]) if t in position]
    every = [t for t, _ in report.tensors if t in plain]
    return (f"<h3>The {min(worst, len(ranked))} int8 tensors plain int8 gets worst, and what each technique "
            f"adds</h3>" + _table(header, rows(ranked[:worst]), classes)
            + f"<details><summary>All {len(every)} int8 tensors in graph order</summary>"
            + _table(header, rows(every), classes) + "</details>")


def _technique_body(report, narrow_chart):
    chart = _technique_chart(report, 900, 260)
    narrow = _technique_chart(report, 400, 260) if narrow_chart else ""
    figure = (f"<figure class='chart'>{chart}{narrow}<figcaption>SQNR of each int8 tensor against float, per "
              f"technique (plain int8 dashed).</figcaption></figure>{_technique_legend(report)}") if chart else ""
    note = ("Each technique is applied alone on top of plain int8 (onnxruntime's defaults), except qrt default "
            "(qrt's own rules) and mixed precision (a tune result). Layers are compared with the float model the "
            "technique quantized: equalization and SmoothQuant rescale channels without changing the function. "
            "qrt default cuts HardSwish, SiLU and Sigmoid inputs where those saturate: such an input alone can read "
            "lower while what its readers write does not.")
    layers = _technique_layers(report) if report.plain.layers and len(_measured(report)) > 1 else ""
    return (f"<h1>What each technique buys</h1><p class='sub'><span class='mono'>{_e(report.model)}</span>, "
            f"{report.samples} sample(s); SQNR of the worst output against float</p>"
            + _technique_summary(report) + f"<p class='note'>{_e(note)}</p><h2>Layer by layer</h2>" + figure + layers)


def technique_fragment(report):
    return f"<div class='qrt-report'><style>{_CSS}</style>{_technique_body(report, narrow_chart=False)}</div>"


def technique_page(report):
    title = f"qrt techniques: {report.model}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}{_PAGE_CSS}</style></head><body><main class='qrt-report'>"
            + _technique_body(report, narrow_chart=True) + "</main></body></html>\n")
