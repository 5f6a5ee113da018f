"""Old names of the figure functions, kept working with a ``DeprecationWarning``.

Each view used to have a plotly function and a ``*_mpl`` twin; now one function
takes ``backend="plotly"|"matplotlib"``. ``plot.dose_response`` (a figure) is now
``plot.dose_response_curve``, so that ``analysis.dose_response`` alone computes.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     fig = layer_profile_plot_mpl([1, 2], [0.5, 0.1])
    >>> str(caught[0].message)
    "plot.layer_profile_plot_mpl is deprecated; use plot.layer_profile_plot(..., backend='matplotlib')"
"""

from __future__ import annotations

from clas_lens.plot.attribution import attribution_bars, attribution_layers_plot, attribution_plot
from clas_lens.plot.common import deprecated_alias
from clas_lens.plot.similarity import (
    cosine_plot,
    matrix_heatmap,
    method_similarity_plot,
    similarity_matrix_plot,
    similarity_plot,
)
from clas_lens.plot.strengths import layer_profile_plot, prompts_heatmap, strength_heatmap
from clas_lens.plot.sweeps import (
    dose_response_curve,
    dose_response_plot,
    sweep_curves,
    sweep_heatmap,
    sweep_plot,
)
from clas_lens.plot.training import probe_accuracy, training_curves


def _mpl(func):
    """The old matplotlib twin of ``func``."""
    return deprecated_alias(f"{func.__name__}_mpl", func, backend="matplotlib")


attribution_bars_mpl = _mpl(attribution_bars)
attribution_layers_plot_mpl = _mpl(attribution_layers_plot)
attribution_plot_mpl = _mpl(attribution_plot)
cosine_plot_mpl = _mpl(cosine_plot)
dose_response_plot_mpl = _mpl(dose_response_plot)
layer_profile_plot_mpl = _mpl(layer_profile_plot)
matrix_heatmap_mpl = _mpl(matrix_heatmap)
method_similarity_plot_mpl = _mpl(method_similarity_plot)
probe_accuracy_mpl = _mpl(probe_accuracy)
prompts_heatmap_mpl = _mpl(prompts_heatmap)
similarity_matrix_plot_mpl = _mpl(similarity_matrix_plot)
similarity_plot_mpl = _mpl(similarity_plot)
strength_heatmap_mpl = _mpl(strength_heatmap)
sweep_curves_mpl = _mpl(sweep_curves)
sweep_heatmap_mpl = _mpl(sweep_heatmap)
sweep_plot_mpl = _mpl(sweep_plot)
training_curves_mpl = _mpl(training_curves)
dose_response = deprecated_alias("dose_response", dose_response_curve)
dose_response_mpl = deprecated_alias("dose_response_mpl", dose_response_curve, backend="matplotlib")

__all__ = [
    "attribution_bars_mpl", "attribution_layers_plot_mpl", "attribution_plot_mpl", "cosine_plot_mpl",
    "dose_response", "dose_response_mpl", "dose_response_plot_mpl", "layer_profile_plot_mpl",
    "matrix_heatmap_mpl", "method_similarity_plot_mpl", "probe_accuracy_mpl", "prompts_heatmap_mpl",
    "similarity_matrix_plot_mpl", "similarity_plot_mpl", "strength_heatmap_mpl", "sweep_curves_mpl",
    "sweep_heatmap_mpl", "sweep_plot_mpl", "training_curves_mpl",
]
