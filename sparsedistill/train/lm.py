"""A small decoder-only transformer language model (pre-norm GPT) for compression experiments
on real text, laid out as the models that prune_model walks: blocks in ``model.layers``, each
with q/k/v/o projections and an MLP of two Linears; the LM head outside the blocks.

    model = TinyLM(LMConfig(vocab_size=4096))
    train_lm(model, train_ids, steps=300)
    perplexity(model, val_ids)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._common import cpu_flags
from .loops import progress_bar
from .text import random_windows

__all__ = ["LMConfig", "TinyLM", "train_lm", "perplexity", "native_bf16", "autocast"]


@dataclass
class LMConfig:
    vocab_size: int = 4096
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 6
    d_ff: int = 768
    max_len: int = 256
    tie_embeddings: bool = False  # the LM head shares the token embedding's weight (GPT-2)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 or AMX), so that bf16 autocast
    is faster than float32 there; elsewhere oneDNN emulates it and float32 is the faster choice."""
    return torch.backends.mkldnn.is_available() and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def autocast(enabled: bool):
    """bfloat16 autocast on the CPU when enabled (the matmuls in bf16, reductions in float32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


class Attention(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.q_proj, self.k_proj = nn.Linear(c.d_model, c.d_model), nn.Linear(c.d_model, c.d_model)
        self.v_proj, self.o_proj = nn.Linear(c.d_model, c.d_model), nn.Linear(c.d_model, c.d_model)

    def forward(self, x, past=None):
        """past: None (all positions, causal), or (k, v) of the earlier positions (a KV cache);
        then the new positions attend to all of those and causally among themselves.
        Returns the output, and with past given also the extended (k, v)."""
        b, s, d = x.shape
        heads = lambda t: t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if past is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(y.transpose(1, 2).reshape(b, s, d))
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        t = k.shape[2]
        mask = None
        if s > 1:  # new position i sees the cache and the new positions up to i
            mask = torch.ones(s, t, dtype=torch.bool, device=x.device).tril(t - s)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, d)), (k, v)


class Block(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = Attention(c)
        self.up_proj, self.down_proj = nn.Linear(c.d_model, c.d_ff), nn.Linear(c.d_ff, c.d_model)

    def forward(self, x, past=None):
        if past is None:
            x = x + self.attn(self.attn_norm(x))
            return x + self.down_proj(F.gelu(self.up_proj(self.mlp_norm(x))))
        a, present = self.attn(self.attn_norm(x), past)
        x = x + a
        return x + self.down_proj(F.gelu(self.up_proj(self.mlp_norm(x)))), present


class TinyLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, S, d_model), before the LM head."""
        if ids.shape[-1] > self.config.max_len:
            raise ValueError(f"ids must have at most max_len = {self.config.max_len} positions, got {ids.shape[-1]}")
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[-1], device=ids.device))
        for block in self.layers:
            x = block(x)
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(ids))

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy decoding with a KV cache: ids (B, S) -> (B, S + new_tokens). The prompt is one
        forward (prefill); each new token is one position through every block."""
        if ids.shape[-1] + new_tokens > self.config.max_len:
            raise ValueError(f"prompt + new_tokens must fit max_len = {self.config.max_len}, got "
                             f"{ids.shape[-1]} + {new_tokens}")
        b, s = ids.shape
        head_dim = self.config.d_model // self.config.n_heads
        cache = [(self.embed.weight.new_zeros(b, self.config.n_heads, 0, head_dim),) * 2 for _ in self.layers]
        out, step_ids, pos = [ids], ids, 0
        for _ in range(new_tokens):
            n = step_ids.shape[-1]
            x = self.embed(step_ids) + self.pos(torch.arange(pos, pos + n, device=ids.device))
            for i, block in enumerate(self.layers):
                x, cache[i] = block(x, cache[i])
            step_ids = self.lm_head(self.norm(x[:, -1:])).argmax(-1)
            out.append(step_ids)
            pos += n
        return torch.cat(out, 1)


def train_lm(model: nn.Module, tokens: torch.Tensor, steps: int, *, seq_len: int = 128, batch: int = 16,
             lr: float = 3e-3, warmup: int = 30, seed: int = 0, log_every: int = 0,
             bf16: bool = False, desc: str = "") -> list[float]:
    """Next-token training with AdamW and a cosine schedule; returns the loss of every step.
    bf16: the forward under bfloat16 autocast (weights, optimiser and loss stay float32).
    desc: show a progress bar with that title; log_every: print the loss every that many steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    bar = progress_bar(steps, desc, enabled=bool(desc))
    model.train()
    for step in range(steps):
        w = random_windows(tokens, seq_len, batch, g)
        with autocast(bf16):
            logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if log_every and (step + 1) % log_every == 0:
            bar.set_postfix_str(f"loss {loss:.3f}")
            if not desc:
                print(f"step {step + 1}/{steps} loss {loss:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, seq_len: int = 128, batch: int = 32,
               max_windows: int | None = None) -> float:
    """exp(mean next-token cross-entropy) over consecutive non-overlapping windows of tokens."""
    n = (tokens.numel() - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"tokens must hold more than seq_len + 1 = {seq_len + 1} ids")
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, n, batch):
        idx = torch.arange(i, min(n, i + batch)).unsqueeze(1) * seq_len + torch.arange(seq_len + 1)
        w = tokens[idx]
        logits = model(w[:, :-1])
        total += float(F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum"))
        count += w[:, 1:].numel()
    model.train(was)
    return math.exp(total / count)
