"""One self-contained HTML page per steerer: what it does, where, and why.

``report`` runs the analyses on a few prompts and writes the page; ``report_run`` does the
same for a folder saved by ``clas-lens train`` (the command ``clas-lens report RUN --out FILE``).

Example:
    >>> import clas_lens as cl                                                  # doctest: +SKIP
    >>> cl.report(model, steerer, prompts, out="report.html", directions=dirs)  # doctest: +SKIP
"""

from clas_lens.reporting.build import (
    COLOUR_QUANTILE,
    colour_limits,
    load_prompts,
    report,
    report_run,
    shown_start,
)
from clas_lens.reporting.page import render_page

__all__ = ["COLOUR_QUANTILE", "colour_limits", "load_prompts", "render_page", "report", "report_run",
           "shown_start"]
