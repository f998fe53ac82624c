"""Wanda against torchao's WandaSparsifier (issue 15's anchor), when torchao is installed.

torchao's WandaSparsifier ranks |W| * ||X_j|| over the whole layer (one group per weight);
Wanda's paper and our default compare within each output row. Both forms are compared here
on an MLP of Llama-1B-shaped Linears (2048 -> 5632 -> 2048 -> 2048, two such blocks), 50%,
calibration of 8 batches of 128 tokens:

- torchao: prepare (observers), calibration forwards, step(), squash_mask();
- ours: collect_statistics (hooks), then magnitude_prune_(scores=wanda_scores, group="tensor")
  (torchao's semantics) or wanda_prune_ (per row, the paper's).

Times are split into calibration (forwards with the statistics hooks/observers) and the
pruning step. Masks of the whole-layer form are compared with torchao's; torchao ranks by
|W| * ||X_j||^2 (its observer's sum of squares, no square root), so ours is also ranked that
way to check the two agree.

    python -m benchmarks.wanda_torchao
Writes benchmarks/results/<stamp>_wanda_torchao_cpu.{md,json}.
"""
from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn

from . import _common as C


def build():
    torch.manual_seed(0)
    layers = []
    for _ in range(2):
        layers += [nn.Linear(2048, 5632), nn.ReLU(), nn.Linear(5632, 2048), nn.ReLU(), nn.Linear(2048, 2048)]
    return nn.Sequential(*layers).eval()


def main(argv=None) -> int:
    try:
        from torchao.sparsity import WandaSparsifier
        import torchao
    except ImportError:
        print("torchao is not installed: nothing to compare")
        return 0
    import sparsedistill as sd
    model = build()
    batches = [torch.randn(128, 2048, generator=torch.Generator().manual_seed(b)) for b in range(8)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    # torchao
    theirs = copy.deepcopy(model)
    t0 = time.perf_counter()
    sparsifier = WandaSparsifier(sparsity_level=0.5)
    sparsifier.prepare(theirs, config=[{"tensor_fqn": f"{n}.weight"} for n in names])
    with torch.no_grad():
        for b in batches:
            theirs(b)
    t1 = time.perf_counter()
    sparsifier.step()
    sparsifier.squash_mask()
    t2 = time.perf_counter()
    their_masks = {n: theirs.get_submodule(n).weight != 0 for n in names}

    # ours, whole-layer groups (torchao's semantics) and per row (Wanda's)
    rows = {}
    for label, per_row in (("tensor", False), ("row", True)):
        ours = copy.deepcopy(model)
        t3 = time.perf_counter()
        stats = sd.collect_statistics(ours, batches)
        t4 = time.perf_counter()
        masks = {}
        for n in names:
            w = ours.get_submodule(n).weight
            if per_row:
                masks[n] = sd.wanda_prune_(w.data, stats[n], 0.5)
            else:
                masks[n] = sd.magnitude_prune_(w.data, 0.5, scores=sd.wanda_scores(w, stats[n]))
        t5 = time.perf_counter()
        rows[label] = dict(calibration_s=t4 - t3, prune_s=t5 - t4, masks=masks)
    same = sum(int((rows["tensor"]["masks"][n] == their_masks[n]).sum()) for n in names)
    total = sum(their_masks[n].numel() for n in names)
    # torchao's observer keeps the sum of squares and multiplies |W| by it without a square
    # root: rank by |W| * sum x^2 to reproduce it exactly.
    stats = sd.collect_statistics(copy.deepcopy(model), batches)
    same_sq = sum(int((sd.magnitude_mask(model.get_submodule(n).weight, 0.5,
                                         scores=model.get_submodule(n).weight.detach().abs() * stats[n].sq_sum)
                       == their_masks[n]).sum()) for n in names)
    info = C.script_info(torchao=torchao.__version__)
    res = dict(info=info, torchao=dict(calibration_s=t1 - t0, prune_s=t2 - t1),
               ours_tensor={k: v for k, v in rows["tensor"].items() if k != "masks"},
               ours_row={k: v for k, v in rows["row"].items() if k != "masks"},
               masks_equal_fraction=same / total, masks_equal_fraction_squared_norm=same_sq / total,
               params=total)
    ta, ot, orow = res["torchao"], res["ours_tensor"], res["ours_row"]
    lines = ["# Wanda: ours against torchao's WandaSparsifier (CPU)", "",
             f"{info['machine']}, torch {info['torch']}, torchao {info['torchao']}, {info['threads']} threads, "
             f"git {info['commit']}. {total / 1e6:.1f} M weights in {len(names)} Linears, 50%, "
             "8 x 128 calibration tokens. One run.", "",
             "| provider | groups | calibration s | pruning step s | vs torchao's step |",
             "| --- | --- | --- | --- | --- |",
             f"| torchao WandaSparsifier | whole layer | {ta['calibration_s']:.2f} | {ta['prune_s']:.2f} | 1.0x |",
             f"| ours | whole layer | {ot['calibration_s']:.2f} | {ot['prune_s']:.2f} | "
             f"**{ta['prune_s'] / ot['prune_s']:.1f}x** |",
             f"| ours (Wanda's paper) | per output row | {orow['calibration_s']:.2f} | {orow['prune_s']:.2f} | "
             f"**{ta['prune_s'] / orow['prune_s']:.1f}x** |", "",
             f"Whole-layer masks equal to torchao's: {100 * res['masks_equal_fraction']:.4f}% of the weights. "
             "torchao's observer keeps the sum of squares of each input feature and multiplies |W| by it "
             "without the square root, so it ranks by |W| * ||X_j||^2, not the paper's |W| * ||X_j||_2. "
             f"Ranking ours by |W| * sum x^2 gives {100 * res['masks_equal_fraction_squared_norm']:.4f}% equal "
             "(the rest: exact ties, which torchao's argsort orders arbitrarily, and float rounding of the sums).",
             "Calibration times include prepare (torchao: observers via torch.ao.quantization.prepare) and "
             "the 8 forwards."]
    C.write_script_results(os.path.join(os.path.dirname(__file__), "results"), "wanda_torchao_cpu", res, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
