"""Why Wanda beats magnitude pruning on some models and not on others: the spread of the
activation norms a Linear sees. Wanda ranks |W_ij| * ||X_j||_2; where every input feature has
about the same norm, that is magnitude's ranking and the two prune the same weights. LLMs carry
a few "outlier features" far above the median (Dettmers et al. 2022, LLM.int8()), which is where
the papers' gap comes from. Used by benchmarks.prune_quality:

- activation_spread(model, batches): per projection kind, max / median ||X_j|| and how much of
  Wanda's pruned set magnitude pruning prunes too;
- with_outlier_features(model): the same function (exactly) with a few LayerNorm channels
  scaled up and the next Linears' columns scaled down by a power of two: outlier features put
  into a model that has none, to show the mechanism on the model the table measures.
"""
from __future__ import annotations

import copy
import math
import statistics

import torch


def activation_spread(model, batches, sparsity: float = 0.5) -> dict:
    """{projection kind: summary over the blocks} for the Linears prune_model prunes, from the
    dense model's inputs (one pass, not the sequential pipeline's): spread = max / median of
    ||X_j||_2 per layer; overlap_* = the fraction of Wanda's pruned weights (per row, at
    `sparsity`) that magnitude pruning per layer (prune_model's "magnitude") / per row also prunes."""
    from sparsedistill.prune import collect_statistics, magnitude_mask, wanda_scores
    from sparsedistill.prune.oneshot import _default_targets

    layers = _default_targets(model, None, None)
    stats = collect_statistics(model, batches, list(layers))
    kinds: dict[str, list] = {}
    for name, linear in layers.items():
        w, norms = linear.weight.detach(), stats[name].input_norms()
        wanda = ~magnitude_mask(w, sparsity, scores=wanda_scores(w, stats[name]), group="row")
        pruned = max(int(wanda.sum()), 1)
        same = lambda keep: int((wanda & ~keep).sum()) / pruned  # noqa: E731
        kinds.setdefault(name.rsplit(".", 1)[-1], []).append(
            ((norms.max() / norms.median().clamp_min(1e-30)).item(),
             same(magnitude_mask(w, sparsity)), same(magnitude_mask(w, sparsity, group="row"))))
    return {k: dict(layers=len(v), spread_median=statistics.median(x[0] for x in v),
                    spread_max=max(x[0] for x in v), overlap_layer=statistics.fmean(x[1] for x in v),
                    overlap_row=statistics.fmean(x[2] for x in v)) for k, v in kinds.items()}


def spread_table(spread: dict) -> list[str]:
    rows = ["| projection | layers | max / median ||X_j|| (median over layers) | (largest) | "
            "Wanda's pruned also pruned by magnitude per layer | per row |", "| --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {k} | {s['layers']} | {s['spread_median']:.1f} | {s['spread_max']:.1f} | "
             f"{s['overlap_layer']:.1%} | {s['overlap_row']:.1%} |" for k, s in spread.items()]
    return rows


@torch.no_grad()
def with_outlier_features(model, features: int = 4, scale: float = 16.0, seed: int = 0):
    """A copy of a TinyLM (sparsedistill.train.lm) that computes the same function bit for bit:
    in every block, `features` channels (the same ones throughout, as LLMs' outlier dimensions
    are) of both LayerNorms are multiplied by `scale` (a power of two, so every product is
    exact) and the matching input columns of the Linears they feed (q, k, v; up) divided by it.
    Returns (model, channels)."""
    if not scale > 0 or math.frexp(scale)[0] != 0.5:
        raise ValueError(f"scale must be a power of two (exact rescaling), got {scale}")
    out = copy.deepcopy(model)
    d = out.config.d_model
    channels = torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:features].sort().values
    for block in out.layers:
        for norm, linears in ((block.attn_norm, (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)),
                              (block.mlp_norm, (block.up_proj,))):
            norm.weight[channels] *= scale
            norm.bias[channels] *= scale
            for linear in linears:
                linear.weight[:, channels] /= scale
    return out, channels.tolist()
