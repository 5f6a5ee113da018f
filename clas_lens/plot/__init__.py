"""Figures of steering traces: interactive (plotly) and static (matplotlib).

Every function takes result objects or tensors and returns a figure (or HTML);
none of them runs the model. Signed values (strengths, similarities,
contributions) use a diverging colour scale centred at zero.

Plotly functions return ``plotly.graph_objects.Figure`` (for notebooks);
the ``*_mpl`` twins return ``matplotlib.figure.Figure`` (for PNG files).

One module per kind of figure, all re-exported here:

* :mod:`~clas_lens.plot.tokens`       token text, token-level values, coloured token HTML
* :mod:`~clas_lens.plot.strengths`    strength heatmaps (tokens x layers, prompts x tokens),
  per-layer profile
* :mod:`~clas_lens.plot.similarity`   cosine per layer with a null band, matrices
* :mod:`~clas_lens.plot.sweeps`       layer sweeps and dose-response
* :mod:`~clas_lens.plot.attribution`  signed contributions to a token's alpha
* :mod:`~clas_lens.plot.training`     training curves, probe accuracy
* :mod:`~clas_lens.plot._common`      shared helpers (colour scales, figure factories)

Example:
    >>> res = generate(model, steerer, prompts)          # doctest: +SKIP
    >>> strength_heatmap(res, 0).show()                  # doctest: +SKIP
    >>> strength_heatmap_mpl(res, 0).savefig("s.png")    # doctest: +SKIP
"""

from clas_lens.plot._common import DIVERGING, save_png
from clas_lens.plot.attribution import (
    attribution_bars,
    attribution_bars_mpl,
    attribution_layers_plot,
    attribution_layers_plot_mpl,
    attribution_plot,
    attribution_plot_mpl,
)
from clas_lens.plot.similarity import (
    cosine_plot,
    cosine_plot_mpl,
    matrix_heatmap,
    matrix_heatmap_mpl,
    method_similarity_plot,
    method_similarity_plot_mpl,
    similarity_matrix_plot,
    similarity_matrix_plot_mpl,
    similarity_plot,
    similarity_plot_mpl,
)
from clas_lens.plot.strengths import (
    layer_profile_plot,
    layer_profile_plot_mpl,
    prompts_heatmap,
    prompts_heatmap_mpl,
    prompts_matrix,
    strength_heatmap,
    strength_heatmap_mpl,
)
from clas_lens.plot.sweeps import (
    dose_response,
    dose_response_mpl,
    dose_response_plot,
    dose_response_plot_mpl,
    sweep_curves,
    sweep_curves_mpl,
    sweep_heatmap,
    sweep_heatmap_mpl,
    sweep_plot,
    sweep_plot_mpl,
)
from clas_lens.plot.tokens import (
    ROBUST_QUANTILE,
    clean_token,
    example_matrix,
    show_tokens,
    token_colours,
    token_html,
    token_label,
    token_range,
)
from clas_lens.plot.training import (
    probe_accuracy,
    probe_accuracy_mpl,
    training_curves,
    training_curves_mpl,
)

__all__ = [
    "DIVERGING", "ROBUST_QUANTILE", "attribution_bars", "attribution_bars_mpl", "attribution_layers_plot",
    "attribution_layers_plot_mpl", "attribution_plot", "attribution_plot_mpl", "clean_token",
    "cosine_plot", "cosine_plot_mpl", "dose_response", "dose_response_mpl",
    "dose_response_plot", "dose_response_plot_mpl", "example_matrix", "layer_profile_plot",
    "layer_profile_plot_mpl", "matrix_heatmap", "matrix_heatmap_mpl", "method_similarity_plot",
    "method_similarity_plot_mpl", "probe_accuracy", "probe_accuracy_mpl", "prompts_heatmap",
    "prompts_heatmap_mpl", "prompts_matrix", "save_png", "show_tokens", "similarity_matrix_plot",
    "similarity_matrix_plot_mpl", "similarity_plot", "similarity_plot_mpl", "strength_heatmap",
    "strength_heatmap_mpl", "sweep_curves", "sweep_curves_mpl", "sweep_heatmap",
    "sweep_heatmap_mpl", "sweep_plot", "sweep_plot_mpl", "token_colours", "token_html",
    "token_label", "token_range", "training_curves", "training_curves_mpl",
]
