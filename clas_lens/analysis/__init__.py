"""Analyses of steering: token strengths, direction similarity, layer sweeps,
strength attribution and dose-response. Everything here computes; nothing plots.

One module per concept, all re-exported here:

- :mod:`~clas_lens.analysis.strengths`: per-prompt and per-layer strength summaries,
  comparison of two steerers' strengths.
- :mod:`~clas_lens.analysis.similarity`: direction cosines with a null band.
- :mod:`~clas_lens.analysis.residual_cache`: a cached unsteered pass to resume from.
- :mod:`~clas_lens.analysis.sweeps`: one-layer and cumulative layer sweeps.
- :mod:`~clas_lens.analysis.attribution`: exact decomposition of a CLAS strength.
- :mod:`~clas_lens.analysis.dose`: NLL and behaviour as the steering is scaled.

All model access goes through hook names (``blocks.{l}.hook_resid_post`` and friends)
with temporary hooks inside ``with model.hooks(...)``, so no hook outlives a call.

Example:
    >>> from clas_lens.testing import randomize
    >>> steerer = randomize(cl.CLASSteerer(dirs), seed=1, scale=0.1)   # a "trained" steerer
    >>> res = cl.generate(model, steerer, ["Tell me about cats.", "Hi"], max_new_tokens=3,
    ...                   progress=False)
    >>> layer_profile(res).shape                    # mean |alpha| per layer
    torch.Size([3])
    >>> readout_alignment(steerer).summary()["labels"]      # cos(w_l, v_l) against a null band
    ('w', 'v')
    >>> attr = attribute_strength(model, steerer, "Hi", layer=2)
    >>> abs(attr.alpha - attr.bias - sum(attr.contributions.values())) < 1e-5   # exact parts
    True
    >>> len(top_components(attr, 5))
    5
"""

from clas_lens.analysis.attribution import (
                                            Attribution,
                                            attribute_layers,
                                            attribute_strength,
                                            head_attention_sources,
                                            top_components,
)
from clas_lens.analysis.dose import dose_response
from clas_lens.analysis.residual_cache import ResidualCache
from clas_lens.analysis.similarity import (
                                            CosineResult,
                                            MethodSimilarity,
                                            NullBand,
                                            SimilarityMatrix,
                                            cosine_per_layer,
                                            layer_similarity_matrix,
                                            method_similarity,
                                            null_band,
                                            probe_profile,
                                            readout_alignment,
)
from clas_lens.analysis.strengths import (
                                            StrengthComparison,
                                            compare_strengths,
                                            layer_profile,
                                            strength_summary,
)
from clas_lens.analysis.sweeps import SweepResult, cumulative_sweep_clas, layer_sweep_clas, layer_sweep_las

__all__ = [
    "Attribution", "CosineResult", "MethodSimilarity", "NullBand", "ResidualCache",
    "SimilarityMatrix", "StrengthComparison", "SweepResult", "attribute_layers",
    "attribute_strength", "compare_strengths", "cosine_per_layer", "cumulative_sweep_clas",
    "dose_response", "head_attention_sources", "layer_profile", "layer_similarity_matrix",
    "layer_sweep_clas", "layer_sweep_las", "method_similarity", "null_band", "probe_profile",
    "readout_alignment", "strength_summary", "top_components",
]
