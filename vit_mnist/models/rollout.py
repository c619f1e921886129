"""Attention rollout (Abnar & Zuidema, 2020): where in the image a ViT's prediction draws its information from."""

from __future__ import annotations

import torch


def attention_rollout(attentions: list[torch.Tensor], pool: str = "cls", prefix_tokens: int = 1,
                      readout: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image relevance of each patch, shape (B, grid, grid), scaled so each map's maximum is 1.

    `attentions` are the per-block (B, heads, T, T) weights of `VisionTransformer(x, return_attention=True)`,
    whose first `prefix_tokens` tokens are the CLS (and distillation) tokens. Heads are averaged, the residual
    connection is modelled by adding the identity, and the blocks' matrices are multiplied from the first to the
    last. The row read out is the one the classifier reads: the CLS token (pool="cls"), the mean of the patch
    tokens ("mean"), or the patch tokens weighted by sequence pooling's `readout` weights (B, N) ("seq").
    """
    if not attentions or any(a is None for a in attentions):
        raise ValueError("attention_rollout needs the weights of every block: call the model with return_attention=True")
    batch, _, tokens, _ = attentions[0].shape
    eye = torch.eye(tokens, device=attentions[0].device, dtype=torch.float32)  # in fp32 whatever the default dtype
    rollout = eye.expand(batch, tokens, tokens)
    for weights in attentions:
        a = weights.float().mean(dim=1) + eye  # residual stream: half the information skips the attention
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    patches = rollout[:, :, prefix_tokens:]  # (B, T, N): how much each token draws from each patch
    if pool == "cls":
        relevance = patches[:, 0]
    elif pool == "seq" and readout is not None:
        relevance = (readout.float().unsqueeze(1) @ patches[:, prefix_tokens:]).squeeze(1)
    else:
        relevance = patches[:, prefix_tokens:].mean(dim=1)
    grid = int(round((tokens - prefix_tokens) ** 0.5))
    maps = relevance.reshape(batch, grid, grid)
    return maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
