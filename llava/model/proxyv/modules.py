"""ProxyV's parameterised pieces: proxy creation (spatial or learned), the guided-update `VisionMLP`
and, for the `vision_mlp` study variant, its guidance-free counterpart `UnguidedVisionMLP`.

Parameter names follow the authors' release (docs/design.md §5.3): `proxyv_initializer.Wk`,
`proxyv_initializer.proxyv_tokens`, `vision_mlp_layers.{i}.{input_proj,context_proj,proj.0,proj.2,
layernorm_post}`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back (the decoders' own norm, written once for every family)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        dtype = states.dtype
        states = states.float()
        states = states * torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * states.to(dtype)


def reduced_hidden_size(hidden_size: int, reduce_factor: int | None) -> int:
    """`d_m`: d // 4 when d >= 1024, else d // 2, unless the config names the factor."""
    factor = reduce_factor or (4 if hidden_size >= 1024 else 2)
    return hidden_size // factor


class LearnedProxyInitializer(nn.Module):
    """Non-spatial proxies: `n` learned queries attend over a crop's full tokens.

    P = softmax_over_tokens(Q K^T / sqrt(d_m)) V, K = V W_k; the transposed softmax over proxies,
    A [g*g, n], maps proxies back to full tokens in the guided update.
    """

    def __init__(self, hidden_size: int, reduced_size: int, num_proxies: int):
        super().__init__()
        self.Wk = nn.Linear(hidden_size, reduced_size, bias=False)
        self.proxyv_tokens = nn.Parameter(torch.randn(num_proxies, reduced_size) / math.sqrt(reduced_size))

    def forward(self, full_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, G, D] -> proxies [N, n, D] and assignment A [N, G, n]."""
        keys = self.Wk(full_states)  # [N, G, d_m]
        queries = self.proxyv_tokens.to(keys.dtype)
        scores = torch.einsum("nd,bgd->bng", queries, keys) / math.sqrt(keys.shape[-1])  # [N, n, G]
        proxies = torch.softmax(scores, dim=-1) @ full_states  # [N, n, D]
        assignment = torch.softmax(scores.transpose(1, 2), dim=-1)  # [N, G, n]
        return proxies, assignment


def spatial_proxies(full_states: torch.Tensor, grid: int, proxy_grid: int) -> torch.Tensor:
    """Bilinear (align_corners False) downsampling of each crop's g x g grid: [N, G, D] -> [N, h*h, D]."""
    num_crops, _, dim = full_states.shape
    image = full_states.transpose(1, 2).reshape(num_crops, dim, grid, grid)  # [N, D, g, g]
    pooled = F.interpolate(image, size=(proxy_grid, proxy_grid), mode="bilinear", align_corners=False)
    return pooled.flatten(2).transpose(1, 2)  # [N, h*h, D]


def spatial_guidance(context: torch.Tensor, proxy_grid: int, reduce_factor: int) -> torch.Tensor:
    """Copy each proxy's vector to its r x r block: [N, h*h, c] -> [N, g*g, c] in raster order."""
    num_crops, _, channels = context.shape
    blocks = context.reshape(num_crops, proxy_grid, proxy_grid, channels)
    blocks = blocks.repeat_interleave(reduce_factor, dim=1).repeat_interleave(reduce_factor, dim=2)
    return blocks.reshape(num_crops, (proxy_grid * reduce_factor) ** 2, channels)  # explicit: N may be 0


def proxy_guidance(context: torch.Tensor, assignment: torch.Tensor | None, proxy_grid: int, reduce_factor: int):
    """Map per-proxy context [N, n, c] to full tokens [N, G, c]: by r x r blocks (spatial) or by A."""
    if assignment is None:
        return spatial_guidance(context, proxy_grid, reduce_factor)
    return assignment @ context  # [N, G, n] @ [N, n, c]


class VisionMLP(nn.Module):
    """Guided update of the full vision tokens of one ProxyV layer.

    V' = RMSNorm_post(W_2 SiLU(W_1 [V W_in ; G]) + V), with G the proxies' context per full token.
    """

    def __init__(self, hidden_size: int, reduced_size: int, rms_norm_eps: float):
        super().__init__()
        self.input_proj = nn.Linear(hidden_size, reduced_size, bias=False)
        self.context_proj = nn.Linear(hidden_size, reduced_size, bias=False)
        self.proj = nn.Sequential(
            nn.Linear(2 * reduced_size, reduced_size, bias=False),
            nn.SiLU(),
            nn.Linear(reduced_size, hidden_size, bias=False),
        )
        self.layernorm_post = RMSNorm(hidden_size, eps=rms_norm_eps)

    def forward(self, full_states: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """full_states [N, G, D], guidance [N, G, d_m] (already through context_proj) -> [N, G, D]."""
        mixed = torch.cat([self.input_proj(full_states), guidance], dim=-1)  # [N, G, 2 d_m]
        return self.layernorm_post(self.proj(mixed) + full_states)


class UnguidedVisionMLP(nn.Module):
    """The `vision_mlp` study variant's per-layer update of the vision tokens: `VisionMLP` without guidance.

    Dropping G from `W_1 [V W_in ; G]` leaves the single linear map `W_1 W_in`: d -> d_m, so the module
    is V' = RMSNorm_post(W_2 SiLU(W_1 V) + V) with W_1: d -> d_m, W_2: d_m -> d, no biases, the
    LLM's RMSNorm eps; d_m as for ProxyV (`reduced_hidden_size`).
    """

    def __init__(self, hidden_size: int, reduced_size: int, rms_norm_eps: float):
        super().__init__()
        self.input_proj = nn.Linear(hidden_size, reduced_size, bias=False)
        self.output_proj = nn.Linear(reduced_size, hidden_size, bias=False)
        self.layernorm_post = RMSNorm(hidden_size, eps=rms_norm_eps)

    def forward(self, full_states: torch.Tensor) -> torch.Tensor:
        """[N, G, D] -> [N, G, D]."""
        return self.layernorm_post(self.output_proj(F.silu(self.input_proj(full_states))) + full_states)
