"""Attention rollout (Abnar & Zuidema, 2020): where in the image a ViT's prediction draws its information from."""

from __future__ import annotations

import torch


def attention_rollout(attentions: list[torch.Tensor], pool: str = "cls") -> torch.Tensor:
    """Per-image relevance of each patch, shape (B, grid, grid), scaled so each map's maximum is 1.

    `attentions` are the per-block (B, heads, N, N) weights of `VisionTransformer(x, return_attention=True)`,
    token 0 being the CLS token. Heads are averaged, the residual connection is modelled by adding the
    identity, and the blocks' matrices are multiplied from the first to the last. The row read out is the
    one the classifier reads: the CLS token, or the mean of the patch tokens for `pool="mean"`.
    """
    if not attentions or any(a is None for a in attentions):
        raise ValueError("attention_rollout needs the weights of every block: call the model with return_attention=True")
    batch, _, tokens, _ = attentions[0].shape
    eye = torch.eye(tokens, device=attentions[0].device)
    rollout = eye.expand(batch, tokens, tokens)
    for weights in attentions:
        a = weights.float().mean(dim=1) + eye  # residual stream: half the information skips the attention
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    relevance = rollout[:, 0, 1:] if pool == "cls" else rollout[:, 1:, 1:].mean(dim=1)
    grid = int(round((tokens - 1) ** 0.5))
    maps = relevance.reshape(batch, grid, grid)
    return maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
