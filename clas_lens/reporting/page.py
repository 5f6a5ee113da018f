"""The report page: one self-contained HTML file (plotly.js inlined once, data as embedded JSON,
a small inline script for the token view); no network request of any kind.

The token view is this page's own script rather than circuitsvis' token views: those import
their bundle from a CDN by default or inline 1.3 MB of it per view, and show no per-token list
of attributed components at a chosen layer.

Example:
    >>> html = render_page("t", {"examples": [], "layers": [0], "vmax": {"mean": 1.0}}, [], [])
    >>> html.count("<script src"), html.startswith("<!DOCTYPE html>")
    (0, True)
"""

from __future__ import annotations

import html
import json

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
  padding:0 24px 60px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin:24px 0 4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 12px} .note{color:#555;font-size:.92em;max-width:900px}
.controls{position:sticky;top:0;background:#fff;padding:8px 0;z-index:5;border-bottom:1px solid #eee;
  display:flex;gap:18px;align-items:center;flex-wrap:wrap}
.legend span{display:inline-block;padding:1px 6px;font-family:monospace;font-size:.85em}
.example{margin:14px 0 22px} .prompt{font-weight:600;margin-bottom:6px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.side{border:1px solid #ddd;border-radius:6px;padding:8px 10px;font-family:ui-monospace,monospace;
  font-size:13px;line-height:1.9;white-space:pre-wrap;word-break:break-word}
.side h3{font-family:system-ui,sans-serif;font-size:.9em;margin:0 0 4px;color:#444}
.tok{border-radius:2px;padding:1px 0;cursor:default} .tok:hover{outline:1px solid #000}
.answer-start{border-left:3px solid #000;margin:0 3px}
#tip{position:absolute;display:none;background:#fff;border:1px solid #888;border-radius:4px;
  padding:6px 8px;font-size:12px;font-family:ui-monospace,monospace;box-shadow:0 2px 6px #0003;
  z-index:10;max-width:360px;white-space:pre}
table.prov{border-collapse:collapse;font-size:.9em} table.prov td{border-top:1px solid #eee;
  padding:3px 10px;vertical-align:top} table.prov td:first-child{font-weight:600;white-space:nowrap}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
"""

# The token view: colours every token by alpha at the selected layer (or the mean over layers)
# on a zero-centred blue-white-red scale; hovering shows alpha, h.v and the largest components.
SCRIPT = r"""
(function(){
  const D = JSON.parse(document.getElementById('lens-data').textContent);
  const sel = document.getElementById('layer'), tip = document.getElementById('tip');
  const RED = [178, 24, 43], BLUE = [33, 102, 172];
  function colour(x, vmax){
    const t = Math.max(-1, Math.min(1, x / vmax)), a = Math.abs(t), c = t >= 0 ? RED : BLUE;
    const ch = c.map(v => Math.round(255 + (v - 255) * a));
    return ['rgb(' + ch.join(',') + ')', a > 0.55 ? '#fff' : '#000'];
  }
  function at(row, L){
    if (L !== 'mean') return row[+L];
    return row.reduce((s, v) => s + v, 0) / row.length;
  }
  function fmt(x){ return (x >= 0 ? '+' : '') + x.toPrecision(3); }
  function paint(){
    const L = sel.value, vmax = D.vmax[L];
    document.querySelectorAll('.tok').forEach(function(s){
      const side = D.examples[s.dataset.e].sides[s.dataset.s];
      const c = colour(at(side.alpha[s.dataset.k], L), vmax);
      s.style.background = c[0]; s.style.color = c[1];
    });
    const lo = colour(-vmax, vmax), hi = colour(vmax, vmax);
    document.getElementById('legend').innerHTML =
      'alpha (' + (L === 'mean' ? 'mean over layers' : 'layer ' + D.layers[+L]) + '): ' +
      '<span style="background:' + lo[0] + ';color:' + lo[1] + '">' + fmt(-vmax) + '</span>' +
      '<span>0</span><span style="background:' + hi[0] + ';color:' + hi[1] + '">' + fmt(vmax) +
      '</span> <span style="color:#666">(limit: 99th percentile of |alpha|, first token left out)</span>';
  }
  function hover(ev){
    const s = ev.target, ex = D.examples[s.dataset.e], side = ex.sides[s.dataset.s], k = +s.dataset.k;
    const L = sel.value, where = L === 'mean' ? 'mean over layers' : 'layer ' + D.layers[+L];
    let t = JSON.stringify(side.text[k]) + '  (position ' + (side.start + k) +
      (side.start + k >= side.plen ? ', answer' : ', prompt') + ')\n' + where + '\n' +
      'alpha  ' + fmt(at(side.alpha[k], L)) + '\nh·v    ' + fmt(at(side.proj[k], L));
    if (side.attr && side.attr[k] && L !== 'mean'){
      t += '\nlargest components of alpha:';
      side.attr[k][+L].forEach(function(c){ t += '\n  ' + c[0].padEnd(12) + fmt(c[1]); });
    } else if (side.attr && side.attr[k]){
      t += '\n(choose a layer to see its components)';
    }
    tip.textContent = t; tip.style.display = 'block';
    const r = s.getBoundingClientRect();
    tip.style.left = (window.scrollX + r.left) + 'px'; tip.style.top = (window.scrollY + r.bottom + 4) + 'px';
  }
  D.examples.forEach(function(ex, e){
    ex.sides.forEach(function(side, si){
      const box = document.getElementById('side-' + e + '-' + si);
      side.text.forEach(function(text, k){
        if (side.start + k === side.plen){
          const m = document.createElement('span'); m.className = 'answer-start';
          m.title = 'start of the answer'; box.appendChild(m);
        }
        const s = document.createElement('span');
        s.className = 'tok'; s.textContent = text;
        s.dataset.e = e; s.dataset.s = si; s.dataset.k = k;
        s.addEventListener('mouseenter', hover);
        s.addEventListener('mouseleave', function(){ tip.style.display = 'none'; });
        box.appendChild(s);
      });
    });
  });
  sel.addEventListener('change', paint);
  paint();
})();
"""


def _examples_html(data: dict) -> str:
    parts = []
    for e, ex in enumerate(data["examples"]):
        sides = "".join(f'<div class="side"><h3>{html.escape(s["name"])}</h3>'
                        f'<div id="side-{e}-{i}"></div></div>' for i, s in enumerate(ex["sides"]))
        parts.append(f'<div class="example"><div class="prompt">{e + 1}. {html.escape(ex["prompt"])}</div>'
                     f'<div class="pair">{sides}</div></div>')
    return "".join(parts)


def _controls(data: dict) -> str:
    opts = ['<option value="mean">mean over layers</option>'] + [
        f'<option value="{j}">layer {L}</option>' for j, L in enumerate(data["layers"])]
    return (f'<div class="controls"><label>colour tokens by alpha at <select id="layer">{"".join(opts)}'
            '</select></label><span class="legend" id="legend"></span></div>')


def _provenance(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="prov">{body}</table>'


def render_page(title: str, data: dict, sections: list[tuple[str, str, list[str]]],
                provenance: list[tuple[str, str]], *, subtitle: str = "", plotlyjs: str = "") -> str:
    """Assemble the page.

    Args:
        title: the page heading.
        data: the token view's data (``examples``, ``layers``, ``vmax``), embedded as JSON.
        sections: ``(heading, note, [figure html, ...])`` after the token view; figure HTML made
            with ``include_plotlyjs=False``.
        provenance: ``(key, value)`` rows of the provenance table.
        subtitle: one line under the title.
        plotlyjs: the plotly.js source, inlined once (empty when there is no figure).
    """
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # no tag inside the data
    secs = "".join(f'<h2>{html.escape(h)}</h2><p class="note">{html.escape(n)}</p>' + "".join(figs)
                   for h, n, figs in sections)
    js = f'<script type="text/javascript">{plotlyjs}</script>' if plotlyjs else ""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title>'
            f'<style>{CSS}</style>{js}</head><body><h1>{html.escape(title)}</h1>'
            f'<p class="sub">{html.escape(subtitle)}</p>'
            '<h2>Answers, unsteered and steered</h2><p class="note">Each token is coloured by the strength '
            'alpha = w·h + b that the steerer computes there (red: pushed toward the concept, blue: away; '
            'on the unsteered answer, the alpha the steerer computes when run over that answer). Hover a '
            'token for alpha, the projection h·v and, on the steered answer, the largest contributions of '
            'heads and MLPs to alpha at the chosen layer. The black bar marks the start of the answer; the '
            'system prompt is not shown.</p>'
            f'{_controls(data)}{_examples_html(data)}{secs}<h2>Provenance</h2>{_provenance(provenance)}'
            f'<div id="tip"></div><script type="application/json" id="lens-data">{payload}</script>'
            f'<script type="text/javascript">{SCRIPT}</script></body></html>\n')


__all__ = ["render_page"]
