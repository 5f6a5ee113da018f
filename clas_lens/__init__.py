"""clas_lens: Contextual Linear Activation Steering on TransformerLens, with a lens.

Data flows one way: model -> directions -> steerer -> trace -> analysis -> figure.

    >>> import clas_lens as cl
    >>> model = cl.load_model()                                    # doctest: +SKIP
    >>> contrast, pairs = cl.load_concept("data/positive")         # doctest: +SKIP
    >>> dirs = cl.fit_directions(model, contrast, method="mean_diff", progress=False)
    >>> steerer = cl.CLASSteerer(dirs)       # W, b = 0: exactly the unsteered model
    >>> history = cl.train(model, steerer, pairs.train, pairs.valid, epochs=2, progress=False)
    >>> len(history.valid_losses)            # before training, then after each epoch
    3
    >>> result = cl.generate(model, steerer, pairs.test.prompts, max_new_tokens=4, progress=False)
    >>> result.strengths.shape[0], result.strengths.shape[2]   # [batch, pos, layer]
    (2, 3)

(The examples in this package run on a tiny random model in the doctests; the two
skipped lines load the embedded SmolLM2-135M-Instruct and a concept from ``data/``.)
"""

__version__ = "0.1.0"

# floors 1-4 (model, data, files; probe directions; steerers; training and traces), in
# import order rather than floor order
from clas_lens.configs import DirectionsConfig, SteererConfig
from clas_lens.data import ContrastSet, DataError, SteerSet, load_concept
from clas_lens.directions import (
    PROBE_METHODS,
    Directions,
    fit_directions,
    load_directions,
    resid_activations,
)
from clas_lens.io import ArtifactError
from clas_lens.losses import completion_nll
from clas_lens.model import ModelNotAvailableError, chat_ids, load_model
from clas_lens.reporting import report  # one HTML page per steerer (imports the lens on first call)
from clas_lens.steerers import (
    CLASSteerer,
    LASSteerer,
    LayerwiseLASSteerer,
    LoRASteerer,
    Recorder,
    ReFTSteerer,
    Steerer,
    load_steerer,
)
from clas_lens.tracing import GenerationResult, generate, trace
from clas_lens.training import TrainHistory, TrainingError, grid_search_las, train

# floor 5: the lens, imported on first use so that `import clas_lens` stays light
#   clas_lens.analysis  strength summaries, cosine with null bands, layer sweeps, attribution
#   clas_lens.plot      plotly figures for notebooks and matplotlib twins for figures/
#   clas_lens.bench     the steering benchmark harness behind `clas-lens bench`
_SUBMODULES = ("analysis", "plot", "bench")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"clas_lens.{name}")
    raise AttributeError(f"module 'clas_lens' has no attribute {name!r}")


__all__ = [
    "ArtifactError", "CLASSteerer", "ContrastSet", "DataError", "Directions", "DirectionsConfig",
    "GenerationResult", "LASSteerer", "LayerwiseLASSteerer", "LoRASteerer",
    "ModelNotAvailableError", "PROBE_METHODS", "ReFTSteerer", "Recorder", "SteerSet", "Steerer",
    "SteererConfig", "TrainHistory", "TrainingError", "chat_ids", "completion_nll",
    "fit_directions", "generate", "grid_search_las", "load_concept", "load_directions",
    "load_model", "load_steerer", "report", "resid_activations", "trace", "train",
]
