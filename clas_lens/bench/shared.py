"""Work one benchmark's methods share, computed once and kept on disk.

* the probe directions of ``las``, ``las_layerwise`` and ``clas`` (template or response
  contrast, :func:`clas_lens.contrast.choose_contrast`);
* the unsteered model's results on the test rows (per-row completion NLL, greedy
  generations and their metrics): they are the ``base_prompt`` cell, and any method whose
  fitted steerer is the identity (LAS at ``c = 0``, a trained steerer whose best
  checkpoint is its zero initialisation) reuses them instead of recomputing them;
* the unsteered model's valid loss: LAS's loss before its search, and the step-0 valid
  loss of every trained steerer that starts as the identity.

Both are saved under ``<out>/cache/<benchmark>/`` in files named by a hash of the settings
they depend on (the fields of the resume keys), so resumed runs and Ray workers sharing
the folder load them instead of refitting them. Writes are atomic.

Example:
    >>> work = BenchmarkWork(pairs, {"max_new_tokens": 4}, data_sha256="0", folder=tmp,
    ...                      direction_method="mean_diff", seed=0)
    >>> dirs, seconds = work.directions(model, progress=False)
    >>> work.contrast, len(list(tmp.glob("directions-*")))   # no templates: answers contrasted
    ('response', 1)
    >>> work.directions(model, progress=False)[0] is dirs      # fitted once
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from clas_lens.io import atomic_write_text

#: settings the directions depend on (besides the data, the model and the contrast kind)
DIRECTION_KEYS = ("direction_method", "seed", "max_new_tokens")
#: settings the unsteered test results depend on
UNSTEERED_KEYS = ("n_test", "gen_rows", "max_new_tokens", "max_completion_tokens", "protocol",
                  "repetition_penalty")
#: settings the unsteered valid loss depends on
VALID_KEYS = ("max_completion_tokens", "protocol")


def settings_hash(fields: dict) -> str:
    """A short stable hash of a dict of settings."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _contrast_kind(steer) -> str:
    """``template`` where the base and steer templates differ, else ``response`` (also for
    pairs without templates)."""
    from clas_lens.data import DataError

    try:
        return "template" if steer.templates_differ() else "response"
    except DataError:
        return "response"


class BenchmarkWork:
    """The shared work of one benchmark (see the module doc).

    Args:
        steer: the benchmark's :class:`~clas_lens.data.SteerSet`.
        settings: the run's settings (``max_new_tokens`` etc., as in the resume keys).
        data_sha256: hash of the benchmark CSV.
        folder: where to keep the work on disk (``None``: in memory only).
        direction_method: probe method of the directions.
        seed: seed of the directions.
    """

    def __init__(self, steer, settings: dict, *, data_sha256: str, folder: str | os.PathLike | None,
                 direction_method: str, seed: int):
        self.steer, self.settings = steer, dict(settings)
        self.folder = None if folder is None else Path(folder)
        self.contrast = _contrast_kind(steer)
        base = {"data_sha256": data_sha256, "contrast": self.contrast,
                "direction_method": direction_method, "seed": seed, **self.settings}
        self.direction_method, self.seed = direction_method, seed
        self._dir_key = {k: base.get(k) for k in ("data_sha256", "contrast", *DIRECTION_KEYS)}
        self._uns_key = {k: base.get(k) for k in ("data_sha256", *UNSTEERED_KEYS)}
        self._valid_key = {k: base.get(k) for k in ("data_sha256", *VALID_KEYS)}
        self._dirs = None
        self._json: dict[str, dict] = {}

    def _path(self, model, stem: str, key: dict) -> Path | None:
        if self.folder is None:
            return None
        h = settings_hash({**key, "model": str(model.cfg.model_name)})
        return self.folder / f"{stem}-{h}"

    def directions(self, model, *, progress: bool = True):
        """The probe directions and the seconds they took (0 when loaded from disk)."""
        import clas_lens as cl
        from clas_lens.contrast import response_contrast

        if self._dirs is not None:
            return self._dirs, 0.0
        path = self._path(model, "directions", self._dir_key)
        if path is not None and (path / "cfg.json").is_file():
            try:
                self._dirs = cl.load_directions(path, model)
                return self._dirs, 0.0
            except (cl.ArtifactError, ValueError):
                pass  # a stale or damaged file: fit again and overwrite it
        t = time.perf_counter()
        contrast = (self.steer.contrast_set() if self.contrast == "template" else
                    response_contrast(model, self.steer,
                                      max_new_tokens=max(1, int(self.settings["max_new_tokens"])),
                                      progress=progress))
        self._dirs = cl.fit_directions(model, contrast, method=self.direction_method,
                                       seed=self.seed, progress=progress)
        if path is not None:
            self._dirs.save(path)
        return self._dirs, time.perf_counter() - t

    def _once(self, model, stem: str, key: dict, compute: Callable[[], dict]) -> dict:
        """``compute()`` once (a JSON-able dict), kept in memory and in ``<stem>-<hash>.json``."""
        if stem in self._json:
            return self._json[stem]
        path = self._path(model, stem, key)
        file = None if path is None else path.with_suffix(".json")
        if file is not None and file.is_file():
            try:
                self._json[stem] = json.loads(file.read_text(encoding="utf-8"))
                return self._json[stem]
            except json.JSONDecodeError:
                pass  # a damaged file: compute again and overwrite it
        self._json[stem] = compute()
        if file is not None:
            atomic_write_text(file, json.dumps(self._json[stem], ensure_ascii=False))
        return self._json[stem]

    def unsteered(self, model, compute: Callable[[], dict]) -> dict:
        """The unsteered test results: ``compute()`` once (a JSON-able dict), then reused."""
        return self._once(model, "unsteered", self._uns_key, compute)

    def unsteered_valid(self, model, compute: Callable[[], dict]) -> dict:
        """The unsteered valid loss (``compute()``'s dict, e.g. ``{"valid_loss": x}``), once."""
        return self._once(model, "unsteered-valid", self._valid_key, compute)


__all__ = ["BenchmarkWork", "DIRECTION_KEYS", "UNSTEERED_KEYS", "VALID_KEYS", "settings_hash"]
