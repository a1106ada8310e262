"""``DatagenConfig`` to the generalisation corpus of :mod:`ptycho.corpus` (torch-free).

Each field is honoured or refused with a ``ValueError`` naming it and what to do:

* ``object_class``: one object family of :data:`ptycho.corpus.OBJECT_FAMILIES`, several separated by commas,
  or ``"mixed"`` (the training families).
* ``diff_per_object``: scan points per scan (at least 4).
* ``objects_per_probe``: scans per probe; the probes are the training probe families
  (:data:`ptycho.corpus.TRAIN_PROBES`), or the files of ``probe_paths`` when given.
* ``probe_paths``: ``.npy`` / ``.npz`` probes (complex ``(N, N)``; an NPZ's ``probeGuess`` or only member;
  a mode stack gives mode 0), read with ``allow_pickle=False``; each becomes a probe family ``file:<path>``.
* ``image_size``: the side of each (square) object in pixels; every scan must fit in it.
* ``beamstop_diameter``: diameter in pupil pixels of the zone-plate probes' central stop (0: none). With
  ``probe_paths`` there are no zone-plate probes, so it must be 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from ptycho import corpus
from ptycho_torch.config_params import DatagenConfig

__all__ = ["datagen_recipes", "write_datagen_corpus"]


def _object_families(object_class: str) -> tuple[str, ...]:
    if not isinstance(object_class, str) or not object_class.strip():
        raise ValueError(f"DatagenConfig.object_class must be a family name, got {object_class!r}; "
                         f"choose from {corpus.OBJECT_FAMILIES} or 'mixed'")
    if object_class.strip() == "mixed":
        return corpus.TRAIN_OBJECTS
    families = tuple(name.strip() for name in object_class.split(","))
    if set(families) & set(corpus.EVALUATION_OBJECT_FAMILIES):
        raise ValueError(f"DatagenConfig.object_class {object_class!r}: {corpus.EVALUATION_OBJECT_FAMILIES} are for evaluation "
                         "only (pictures shipped with packages); choose training families")
    unknown = [name for name in families if name not in corpus.OBJECT_FAMILIES]
    if unknown:
        raise ValueError(f"DatagenConfig.object_class names unknown object families {unknown}; "
                         f"choose from {corpus.OBJECT_FAMILIES}, several separated by commas, or 'mixed'")
    return families


def _probe_families(config: DatagenConfig, N: int) -> tuple[str, ...]:
    if not config.probe_paths:
        return corpus.TRAIN_PROBES
    families = []
    for path in config.probe_paths:
        if Path(path).suffix.lower() not in (".npy", ".npz"):
            raise ValueError(f"DatagenConfig.probe_paths: {path} is not a .npy or .npz file; save the probe with numpy.save")
        try:
            corpus.load_probe(path, N)
        except (OSError, ValueError) as error:
            raise ValueError(f"DatagenConfig.probe_paths: {path} cannot be used as a probe ({error}); "
                             f"give complex ({N}, {N}) probes saved without pickle") from error
        families.append(corpus.FILE_PROBE_PREFIX + os.fspath(Path(path).resolve()))
    return tuple(families)


def _require_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DatagenConfig.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def datagen_recipes(config: DatagenConfig, seed: int, *, N: int = 64) -> list[corpus.ScanRecipe]:
    """The training recipes ``config`` asks for: ``objects_per_probe`` scans per probe, seeded by ``seed``."""
    objects_per_probe = _require_count("objects_per_probe", config.objects_per_probe, 1)
    n_points = _require_count("diff_per_object", config.diff_per_object, 4)
    objects = _object_families(config.object_class)
    probes = _probe_families(config, N)
    size = tuple(config.image_size) if isinstance(config.image_size, (tuple, list)) else None
    if size is None or len(size) != 2 or size[0] != size[1] or not all(isinstance(s, int) and s > N + 2 for s in size):
        raise ValueError(f"DatagenConfig.image_size must be a square (side, side) of integers above N + 2 = {N + 2}, "
                         f"got {config.image_size!r}; the corpus simulates square objects")
    stop = config.beamstop_diameter
    if isinstance(stop, bool) or not isinstance(stop, (int, float)) or not math.isfinite(stop) or stop < 0:
        raise ValueError(f"DatagenConfig.beamstop_diameter must be a number of pupil pixels >= 0, got {stop!r}")
    if config.probe_paths and stop:
        raise ValueError(f"DatagenConfig.beamstop_diameter={stop} sets the central stop of the zone-plate probes, "
                         "which probe_paths replaces; set beamstop_diameter=0 with probe_paths")
    if len(probes) * objects_per_probe > corpus._MAX_SCANS:
        raise ValueError(f"DatagenConfig.objects_per_probe: at most {corpus._MAX_SCANS} scans in all, asked for "
                         f"{len(probes) * objects_per_probe}; lower objects_per_probe")
    recipes = []
    for p, probe in enumerate(probes):
        for i in range(objects_per_probe):
            one = corpus.recipe(corpus.training_seed(seed, p * objects_per_probe + i), probe_families=(probe,),
                                object_families=objects, trajectories=corpus.TRAIN_TRAJECTORIES, n_points=n_points, N=N,
                                object_size=size[0])
            if one.probe == "zone_plate":
                params = one.params("probe")
                if stop >= 1.6 * params["pupil_radius"]:
                    raise ValueError(f"DatagenConfig.beamstop_diameter={stop} pupil pixels blocks most of a zone plate of "
                                     f"diameter {2 * params['pupil_radius']:.1f}; use at most {N / 5:.0f}")
                params["stop_fraction"] = stop / (2 * params["pupil_radius"])
                one = dataclasses.replace(one, probe_params=tuple(sorted(params.items())))
            needed = corpus.required_size(corpus.scan_offsets(one), N)
            if needed > size[0]:
                raise ValueError(f"DatagenConfig.image_size={tuple(size)} is too small: {n_points} points "
                                 f"(diff_per_object) of scan {len(recipes)} span an object of {needed} pixels; "
                                 f"raise image_size to at least ({needed}, {needed}) or lower diff_per_object")
            recipes.append(one)
    return recipes


def write_datagen_corpus(config: DatagenConfig, directory: str | os.PathLike[str], seed: int, *, N: int = 64) -> list[Path]:
    """Write :func:`datagen_recipes` as ``train<index:03d>.npz`` plus ``recipes.json`` under ``directory``."""
    recipes = datagen_recipes(config, seed, N=N)
    return corpus.write_recipes(directory, [(f"train{i:03d}", r) for i, r in enumerate(recipes)])
