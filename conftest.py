"""Doctest set-up: the examples in ``clas_lens`` run on a tiny random model.

Every doctest sees these names (built once per session, only when a doctest runs):

- ``cl``, ``torch``: the package and torch;
- ``model``: a tiny random Llama (3 layers, ``d_model`` 32) as a ``TransformerBridge``;
- ``dirs``: random unit directions for every layer of ``model``;
- ``contrast``: a paired :class:`~clas_lens.data.ContrastSet` of 8 prompts;
- ``pairs``: a :class:`~clas_lens.data.SteerSet` (4 train, 2 valid, 2 test pairs);
- ``ids``: ``[1, pos]`` token ids of one chat-formatted prompt;
- ``tmp``: a fresh temporary folder (a ``pathlib.Path``) for examples that save files.
"""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(scope="session")
def doctest_objects(tmp_path_factory) -> dict:
    """The tiny model, directions and data shared by every doctest."""
    import torch

    import clas_lens as cl
    from clas_lens.testing import make_tiny_model, random_directions, tiny_contrast, tiny_pairs

    model = make_tiny_model(tmp_path_factory.mktemp("doctest-tokenizer"))
    return {
        "cl": cl, "torch": torch, "model": model, "dirs": random_directions(model, seed=0),
        "contrast": tiny_contrast(), "pairs": tiny_pairs(),
        "ids": torch.tensor([cl.chat_ids(model, "Describe a cat.")]),
    }


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    """Fill the doctest namespace, for doctests only (ordinary tests do not build the model)."""
    if isinstance(request.node, pytest.DoctestItem):
        doctest_namespace.update(request.getfixturevalue("doctest_objects"))
        doctest_namespace["tmp"] = request.getfixturevalue("tmp_path")
