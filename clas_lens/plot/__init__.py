"""Figures of steering traces, drawn with plotly (interactive) or matplotlib (static).

Every function takes result objects or tensors and returns a figure (or HTML);
none of them runs the model or computes an analysis. One function per view, with
``backend="plotly"`` (default: a ``plotly.graph_objects.Figure`` for notebooks) or
``backend="matplotlib"`` (a ``matplotlib.figure.Figure`` for PNG files; ``ax=``
draws into an existing axes). Signed values (strengths, similarities,
contributions) use a diverging colour scale centred at zero.

Names say what is drawn: ``*_heatmap``, ``*_curve(s)``, ``*_bars``, or ``*_plot`` for a
function that plots an :mod:`clas_lens.analysis` result object. The old ``*_mpl``
twins and ``dose_response`` still work and warn (:mod:`~clas_lens.plot.deprecated`).

Token-level colour scales leave position 0 and the chat template's system turn out
of their limits (drawn grey; ``include_special=True`` puts them back) and take the
99th percentile of ``|value|`` of the other cells (:func:`colour_limit`).

One module per kind of figure, all re-exported here:

* :mod:`~clas_lens.plot.tokens`       token labels, special positions, colour limits,
  coloured token HTML
* :mod:`~clas_lens.plot.strengths`    strength heatmaps (tokens x layers, prompts x tokens),
  per-layer profile
* :mod:`~clas_lens.plot.similarity`   cosine per layer with a null band, matrices
* :mod:`~clas_lens.plot.sweeps`       layer sweeps and dose-response
* :mod:`~clas_lens.plot.attribution`  signed contributions to a token's alpha
* :mod:`~clas_lens.plot.training`     training curves, probe accuracy
* :mod:`~clas_lens.plot.common`       backends, colour scales, figure factories, ``save_png``

Example:
    >>> res = generate(model, steerer, prompts)                                  # doctest: +SKIP
    >>> strength_heatmap(res, 0).show()                                          # doctest: +SKIP
    >>> save_png(strength_heatmap(res, 0, backend="matplotlib"), "s.png")        # doctest: +SKIP
"""

from clas_lens.plot.attribution import attribution_bars, attribution_layers_plot, attribution_plot
from clas_lens.plot.common import BACKENDS, DIVERGING, save_png
from clas_lens.plot.deprecated import (
    attribution_bars_mpl,
    attribution_layers_plot_mpl,
    attribution_plot_mpl,
    cosine_plot_mpl,
    dose_response,
    dose_response_mpl,
    dose_response_plot_mpl,
    layer_profile_plot_mpl,
    matrix_heatmap_mpl,
    method_similarity_plot_mpl,
    probe_accuracy_mpl,
    prompts_heatmap_mpl,
    similarity_matrix_plot_mpl,
    similarity_plot_mpl,
    strength_heatmap_mpl,
    sweep_curves_mpl,
    sweep_heatmap_mpl,
    sweep_plot_mpl,
    training_curves_mpl,
)
from clas_lens.plot.similarity import (
    cosine_plot,
    matrix_heatmap,
    method_similarity_plot,
    similarity_matrix_plot,
    similarity_plot,
)
from clas_lens.plot.strengths import (
    layer_profile_plot,
    prompts_heatmap,
    prompts_matrix,
    strength_heatmap,
)
from clas_lens.plot.sweeps import (
    dose_response_curve,
    dose_response_plot,
    sweep_curves,
    sweep_heatmap,
    sweep_plot,
)
from clas_lens.plot.tokens import (
    ROBUST_QUANTILE,
    clean_token,
    colour_limit,
    example_matrix,
    show_tokens,
    special_positions,
    token_colours,
    token_html,
    token_label,
    token_range,
)
from clas_lens.plot.training import probe_accuracy, training_curves

#: the figure functions, one per view (each takes ``backend=``).
VIEWS = (
    "attribution_bars", "attribution_layers_plot", "attribution_plot", "cosine_plot",
    "dose_response_curve", "dose_response_plot", "layer_profile_plot", "matrix_heatmap",
    "method_similarity_plot", "probe_accuracy", "prompts_heatmap", "similarity_matrix_plot",
    "similarity_plot", "strength_heatmap", "sweep_curves", "sweep_heatmap", "sweep_plot",
    "training_curves",
)
#: old names, kept working with a DeprecationWarning.
DEPRECATED = (
    "attribution_bars_mpl", "attribution_layers_plot_mpl", "attribution_plot_mpl", "clean_token",
    "cosine_plot_mpl", "dose_response", "dose_response_mpl", "dose_response_plot_mpl",
    "layer_profile_plot_mpl", "matrix_heatmap_mpl", "method_similarity_plot_mpl", "probe_accuracy_mpl",
    "prompts_heatmap_mpl", "similarity_matrix_plot_mpl", "similarity_plot_mpl", "strength_heatmap_mpl",
    "sweep_curves_mpl", "sweep_heatmap_mpl", "sweep_plot_mpl", "training_curves_mpl",
)

__all__ = [
    "attribution_bars", "attribution_bars_mpl", "attribution_layers_plot", "attribution_layers_plot_mpl",
    "attribution_plot", "attribution_plot_mpl", "BACKENDS", "clean_token", "colour_limit", "cosine_plot",
    "cosine_plot_mpl", "DEPRECATED", "DIVERGING", "dose_response", "dose_response_curve",
    "dose_response_mpl", "dose_response_plot", "dose_response_plot_mpl", "example_matrix",
    "layer_profile_plot", "layer_profile_plot_mpl", "matrix_heatmap", "matrix_heatmap_mpl",
    "method_similarity_plot", "method_similarity_plot_mpl", "probe_accuracy", "probe_accuracy_mpl",
    "prompts_heatmap", "prompts_heatmap_mpl", "prompts_matrix", "ROBUST_QUANTILE", "save_png",
    "show_tokens", "similarity_matrix_plot", "similarity_matrix_plot_mpl", "similarity_plot",
    "similarity_plot_mpl", "special_positions", "strength_heatmap", "strength_heatmap_mpl",
    "sweep_curves", "sweep_curves_mpl", "sweep_heatmap", "sweep_heatmap_mpl", "sweep_plot",
    "sweep_plot_mpl", "token_colours", "token_html", "token_label", "token_range", "training_curves",
    "training_curves_mpl", "VIEWS",
]
