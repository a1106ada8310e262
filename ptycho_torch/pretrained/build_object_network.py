"""Rebuild the shipped whole-object network from nothing: the shipped model's corpus, refined, then trained (resumable).

    python -m ptycho_torch.pretrained.build_object_network              # `make object-network`: ptycho_torch/pretrained/object64.pt
    python -m ptycho_torch.pretrained.build_object_network --work DIR   # scratch in DIR; rerun with it to resume
    python -m ptycho_torch.pretrained.build_object_network --more-objects 0 --output FILE    # without ptycho.corpus.MORE_TRAIN_OBJECTS

Any change to the recipe (``--steps``, ``--more-objects``, ``--illumination``, ``--n-scans``, ``--seed``) builds another network than the
shipped one and needs ``--output``: the shipped weights are replaced only by the shipped recipe.

Training pairs: every scan of the shipped model's corpus (:data:`ptycho_torch.pretrained.build.RECIPE`) and of
``RECIPE['more_objects']`` scans of :data:`ptycho.corpus.MORE_TRAIN_OBJECTS` (circuit, grains, porous) after each of
``RECIPE['sweeps']`` refinement sweeps from a unit object, on its true object's grid, against that object; random crops,
loss :func:`~ptycho_torch.model.physics.phase_invariant_error` weighted by the probe coverage, Adam with a one-cycle
learning rate. The record beside the weights holds the recipe, the command, the commit and the CPU seconds of every session.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from ptycho_torch.cli import non_negative_int, positive_int, report_interrupted
from ptycho_torch.pretrained import MODELS_DIR, OBJECT_NETWORK
from ptycho_torch.pretrained.build import require_output_for

logger = logging.getLogger("ptycho_torch.pretrained.build_object_network")

RECIPE = {"sweeps": [5, 10], "steps": 9000, "batch": 16, "crop_px": 64, "learning_rate": 1e-3, "warmup_fraction": 0.1,
          "centre_weight_min": 0.3, "seed": 0, "checkpoint_every": 250,
          # steps: 9000 since 2026-12-07 (3000 before; benchmarks/RESULTS.md "Three times the training steps")
          # scans of ptycho.corpus.MORE_TRAIN_OBJECTS added to the shipped model's corpus (0: none; 48 since 2026-12-07,
          # benchmarks/RESULTS.md "More object families in the object network's corpus")
          "more_objects": {"n_scans": 48, "seed": 2}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else __name__}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("data") / "object-network-build", help="scratch directory; rerun with it to resume")
    parser.add_argument("--corpus", type=Path, help="the shipped model's training corpus, if already written (else written to --work)")
    parser.add_argument("--output", type=Path, help="weights file (default: the shipped one, for the shipped recipe only)")
    parser.add_argument("--steps", type=positive_int, help="override the recipe's steps (a shorter rebuild, e.g. for a test)")
    parser.add_argument("--n-scans", type=positive_int, help="use only the first N scans of the corpus (a shorter rebuild)")
    parser.add_argument("--more-objects", type=non_negative_int, help="scans of ptycho.corpus.MORE_TRAIN_OBJECTS added to the corpus (default 48; 0: none)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=non_negative_int, help="the network's initial weights and the crops (default: the recipe's 0)")
    parser.add_argument("--illumination", action="store_true", help="give the network the scan's coverage as a third input (an ablation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    recipe = dict(RECIPE)
    if args.steps is not None:
        recipe["steps"] = args.steps
    if args.illumination:
        recipe["illumination"] = True
    if args.seed is not None:
        recipe["seed"] = args.seed
    if args.more_objects is not None:
        recipe["more_objects"] = {**recipe["more_objects"], "n_scans": args.more_objects}
    changed = [option for option, given in (("--steps", args.steps is not None and args.steps != RECIPE["steps"]),
                                            ("--more-objects", recipe["more_objects"] != RECIPE["more_objects"]),
                                            ("--illumination", args.illumination), ("--n-scans", args.n_scans is not None),
                                            ("--seed", args.seed is not None and args.seed != RECIPE["seed"])) if given]
    require_output_for(changed, args.output, parser, "network", MODELS_DIR / OBJECT_NETWORK[0])
    output = args.output or MODELS_DIR / OBJECT_NETWORK[0]
    command = [sys.executable, "-m", "ptycho_torch.pretrained.build_object_network", *(argv if argv is not None else sys.argv[1:])]
    try:
        build(recipe, args.work, output, corpus=args.corpus, n_scans=args.n_scans, threads=args.threads, command=command)
    except ValueError as exc:  # a state of another recipe, or unreadable: one line, before any work
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt as exc:  # Ctrl-C or a job's time limit: the last saved state and the sessions record stay
        return report_interrupted(parser.prog, exc, f"the build in {args.work} was interrupted; run the same command again to resume "
                                                    f"from its last saved step (every {recipe['checkpoint_every']})")
    return 0


def refined_pairs(corpus: Path, sweeps: list[int], work: Path, n_scans: int | None = None) -> list[Path]:
    """``work/<scan>-k<k>.npz`` (object after ``k`` sweeps from a unit object, its coverage, the truth) for every corpus scan."""
    import dataclasses

    import numpy as np

    from ptycho.scan_file import read_scan
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
    from ptycho_torch.model.refine import flat_start, refine
    from ptycho_torch.model.stitching import Canvas
    from ptycho_torch.pretrained import load_pretrained

    shipped = load_pretrained()
    files = []
    scans = sorted(corpus.glob("*.npz"))[:n_scans]
    for scan in scans:
        arrays = read_scan(scan, load_diffraction=False)
        truth = arrays.objectGuess
        wanted = {k: work / f"{scan.stem}-k{k}.npz" for k in sweeps}
        missing = [k for k, path in wanted.items() if not path.is_file()]
        if missing:
            training = dataclasses.replace(shipped.training_config, n_groups=len(arrays.xcoords))
            dataset = PtychoDataset(scan, shipped.data_config, shipped.model_config, training, data_dir=work / "memmap" / scan.stem,
                                    progress=False)
            for k in missing:
                result = refine(flat_start(dataset, Canvas(truth.shape, (0, 0))), dataset, k, progress=False)
                tmp = wanted[k].with_suffix(".tmp.npz")
                np.savez(tmp, obj=result.object, coverage=result.coverage, truth=truth)
                os.replace(tmp, wanted[k])
        files += list(wanted.values())
    return files


def build(recipe: dict, work: Path, output: Path, *, corpus: Path | None = None, n_scans: int | None = None, threads: int = 1,
          command=()) -> Path:
    if n_scans is not None and (isinstance(n_scans, bool) or not isinstance(n_scans, int) or n_scans < 1):
        raise ValueError(f"n_scans={n_scans!r}: the number of corpus scans to use, an integer >= 1 (None: all)")
    import numpy as np
    import torch

    from ptycho.corpus import write_training_corpus
    from ptycho_torch.model.object_network import ObjectNetwork, mean_covered_amplitude
    from ptycho_torch.pretrained.build import RECIPE as SHIPPED_RECIPE, _commit

    torch.set_num_threads(threads)
    commit = _commit()  # the code this session runs (the tree may change while it trains)
    state_path = work / "training-state.pt"
    record_path = work / "sessions.json"
    state = _read_state(state_path, recipe, n_scans, work)  # before the corpus is written or refined
    work.mkdir(parents=True, exist_ok=True)
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    sessions = json.loads(record_path.read_text()) if record_path.is_file() else []  # earlier sessions of this --work
    first_step = 0 if state is None else int(state["step"])
    losses = []
    try:  # an interrupted session's CPU time is counted too, also while the corpus is written or refined (most of a short rebuild)
        shipped_corpus = SHIPPED_RECIPE["corpus"]
        if corpus is None:
            corpus = work / f"corpus-{shipped_corpus['n_scans']}-seed{shipped_corpus['seed']}"
            if len(list(corpus.glob("*.npz"))) != shipped_corpus["n_scans"]:
                write_training_corpus(corpus, shipped_corpus["n_scans"], shipped_corpus["seed"], n_points=shipped_corpus["n_points"],
                                      N=shipped_corpus["N"])
        files = refined_pairs(corpus, recipe["sweeps"], work / "refined", n_scans)
        more = recipe.get("more_objects", {"n_scans": 0})
        if more["n_scans"]:
            from ptycho.corpus import MORE_TRAIN_OBJECTS

            extra = work / f"corpus-more-{more['n_scans']}-seed{more['seed']}"
            if len(list(extra.glob("*.npz"))) != more["n_scans"]:
                write_training_corpus(extra, more["n_scans"], more["seed"], n_points=shipped_corpus["n_points"], N=shipped_corpus["N"],
                                      object_families=MORE_TRAIN_OBJECTS)
            files += refined_pairs(extra, recipe["sweeps"], work / "refined-more")
        data = []
        for path in files:
            with np.load(path, allow_pickle=False) as z:
                coverage = z["coverage"]
                scale, covered = mean_covered_amplitude(z["obj"], coverage)
                illumination = (coverage / coverage.max()).astype(np.float32)
                data.append((torch.from_numpy((z["obj"] / scale).astype(np.complex64)), torch.from_numpy(z["truth"].astype(np.complex64)),
                             torch.from_numpy(illumination * covered), torch.from_numpy(illumination)))

        with torch.random.fork_rng():  # the network's initial weights from the recipe's seed, the caller's RNG untouched
            torch.manual_seed(recipe["seed"])
            network = ObjectNetwork(illumination=recipe.get("illumination", False))
        network.train()
        optimizer = torch.optim.Adam(network.unet.parameters(), lr=recipe["learning_rate"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["learning_rate"], total_steps=recipe["steps"],
                                                       pct_start=recipe["warmup_fraction"])
        crops = torch.Generator().manual_seed(recipe["seed"])
        if state is not None:
            network.unet.load_state_dict(state["network"]); optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"]); crops.set_state(state["crops"])
            logger.info("resumed at step %d of %d from %s", first_step, recipe["steps"], state_path)
        _train(network, optimizer, schedule, crops, data, recipe, first_step, state_path, losses, n_scans)
    finally:
        sessions.append({"from_step": first_step, "cpu_s": time.process_time() - started_cpu, "wall_s": time.perf_counter() - started_wall,
                         "threads": threads, "commit": commit, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())})
        record_path.write_text(json.dumps(sessions, indent=1))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    torch.save(network.unet.state_dict(), tmp)
    os.replace(tmp, output)
    record = {"name": output.stem, "recipe": recipe, "corpus": {**shipped_corpus, "n_scans_used": len(files) // len(recipe["sweeps"]) - more["n_scans"]},
              "command": " ".join(map(str, command)), "commit": commit, "cpu_s": sum(s["cpu_s"] for s in sessions),
              "sessions": sessions, "final_loss": float(np.mean(losses[-200:])) if losses else None, "torch": torch.__version__}
    output.with_suffix(".json").write_text(json.dumps(record, indent=1))
    logger.info("wrote %s (%.1f MB) and its record; %.1f CPU s", output, output.stat().st_size / 1e6, record["cpu_s"])
    return output


def _read_state(state_path: Path, recipe: dict, n_scans: int | None, work: Path) -> dict | None:
    """The training state an earlier session of ``work`` left, refused (ValueError naming it and the fix) when it is
    unreadable or was written by another recipe or another ``n_scans``; None when there is none."""
    import torch

    if not state_path.is_file():
        return None
    fix = f"remove {state_path} (or all of {work}) to start again, or pass another --work"
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load of a damaged file raises many kinds (KeyError for some)
        raise ValueError(f"{state_path} is not a readable training state ({type(exc).__name__}); {fix}") from None
    if not isinstance(state, dict) or not {"network", "optimizer", "schedule", "crops", "step", "recipe"} <= set(state):
        raise ValueError(f"{state_path} is not a training state of this build; {fix}")
    if state["recipe"] != json.dumps(recipe, sort_keys=True):
        raise ValueError(f"{state_path} was written by another recipe; {fix}")
    if state.get("n_scans") != n_scans:
        raise ValueError(f"{state_path} was written with --n-scans {state.get('n_scans')}, not {n_scans}; {fix}")
    return state


def _train(network, optimizer, schedule, crops, data, recipe: dict, first_step: int, state_path: Path, losses: list,
           n_scans: int | None = None) -> None:
    """Steps ``first_step`` to the recipe's last, saving the whole training state every ``checkpoint_every`` steps."""
    import numpy as np
    import torch

    from ptycho_torch.model import physics

    P, B = recipe["crop_px"], recipe["batch"]
    for step in range(first_step, recipe["steps"]):
        xs, ys, ws, ls = [], [], [], []
        for _ in range(B):
            obj, truth, weight, illumination = data[int(torch.randint(len(data), (1,), generator=crops))]
            H, W = obj.shape
            for _attempt in range(20):  # a crop centred on a well-covered pixel
                i = int(torch.randint(H - P + 1, (1,), generator=crops)); j = int(torch.randint(W - P + 1, (1,), generator=crops))
                if weight[i + P // 2, j + P // 2] > recipe["centre_weight_min"]:
                    break
            xs.append(obj[i:i + P, j:j + P]); ys.append(truth[i:i + P, j:j + P]); ws.append(weight[i:i + P, j:j + P])
            ls.append(illumination[i:i + P, j:j + P])
        corrected = network(torch.stack(xs), torch.stack(ls) if network.illumination else None, bf16=True)
        loss = physics.phase_invariant_error(corrected, torch.stack(ys), torch.stack(ws)).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step(); schedule.step()
        losses.append(loss.item())
        done = step + 1
        if done % recipe["checkpoint_every"] == 0 or done == recipe["steps"]:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"network": network.unet.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "crops": crops.get_state(), "step": done, "recipe": json.dumps(recipe, sort_keys=True), "n_scans": n_scans}, tmp)
            os.replace(tmp, state_path)
            logger.info("step %d of %d: loss %.4f (mean of the last %d)", done, recipe["steps"], np.mean(losses[-200:]), min(len(losses), 200))


if __name__ == "__main__":
    sys.exit(main())
