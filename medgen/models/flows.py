"""Invertible layers of Glow (Kingma & Dhariwal 2018, arXiv:1807.03039), for 2D and 3D images.

Every layer maps in the *normalising* direction ``forward(x) -> (y, logdet)`` (data towards the
latent) and back with ``inverse(y) -> x``; ``logdet`` is ``log|det dy/dx|`` per sample, shape (N,).
Tensors are (N, C, *spatial) with ``spatial_dims`` = 2 (H, W) or 3 (D, H, W).

The layers are written here rather than taken from ``normflows.flows`` because:

* ``normflows`` layers are 2D only (``conv2d``, ``view`` with exactly two spatial axes), and the
  pipeline needs one implementation shared by 2D slices and 3D volumes;
* ``normflows.ActNorm`` initialises itself implicitly on the first call of whichever direction
  runs first; here the data-dependent initialisation is an explicit step driven by
  :meth:`GenerativeModel.initialize_from_batch`, recorded in a buffer so that a resumed
  checkpoint is never re-initialised;
* ``normflows`` uses the generative direction as ``forward``; the engine trains by likelihood,
  so the encoding direction is the one that has to be cheap and exact here.
"""

from __future__ import annotations

import math

import torch
from monai.networks.layers.factories import Conv
from torch import nn
from torch.nn import functional as F


def n_positions(x: torch.Tensor) -> int:
    """Number of spatial positions of an (N, C, *spatial) tensor."""
    return math.prod(x.shape[2:])


def _per_channel(values: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ...) for broadcasting over (N, C, *spatial)."""
    return values.view(1, -1, *([1] * spatial_dims))


class ActNorm(nn.Module):
    """Per-channel affine ``y = (x + b) * exp(log_s)`` (Glow §3.1).

    Data-dependent initialisation: :meth:`initialize` sets ``b`` and ``log_s`` so that the
    post-activation of a batch has zero mean and unit variance per channel.
    log|det| = H·W(·D) · sum_c log_s_c.
    """

    def __init__(self, num_channels: int, spatial_dims: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        # set by Glow.initialize_from_batch; the next forward pass initialises from its input
        self.init_on_next_forward = False

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias/scale from ``x`` (N, C, *spatial) so the output is standardised per channel."""
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.init_on_next_forward:
            self.initialize(x)
            self.init_on_next_forward = False
        b = _per_channel(self.bias, self.spatial_dims)
        log_s = _per_channel(self.log_scale, self.spatial_dims)
        y = (x + b) * torch.exp(log_s)
        logdet = self.log_scale.sum() * n_positions(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        b = _per_channel(self.bias, self.spatial_dims)
        log_s = _per_channel(self.log_scale, self.spatial_dims)
        return y * torch.exp(-log_s) - b


class InvertibleConv1x1(nn.Module):
    """Invertible 1x1(x1) convolution with an LU-decomposed weight (Glow §3.2).

    ``W = P · (L + I) · (U + diag(sign_s · exp(log_s)))`` with the permutation ``P`` and
    ``sign_s`` fixed, ``L`` strictly lower, ``U`` strictly upper and ``log_s`` learned, so that
    log|det W| = sum(log_s) and log|det| of the layer = H·W(·D) · sum(log_s).
    Initialised from a random rotation, as in the paper.
    """

    def __init__(self, num_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), diagonal=-1))
        self.register_buffer("eye", torch.eye(num_channels))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, diagonal=1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def weight(self) -> torch.Tensor:
        """The (C, C) matrix W, in the parameters' dtype."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        kernel = w.view(*w.shape, *([1] * self.spatial_dims)).to(x.dtype)
        return F.conv2d(x, kernel) if self.spatial_dims == 2 else F.conv3d(x, kernel)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = self.log_s.sum() * n_positions(x)
        return self._conv(x, self.weight()), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        # invert in float64: W can be ill-conditioned after training and the error would
        # otherwise show up in x -> z -> x reconstructions
        w_inv = torch.linalg.inv(self.weight().double())
        return self._conv(y, w_inv)


class CouplingNet(nn.Sequential):
    """NN() of the affine coupling: conv3 -> ReLU -> conv1 -> ReLU -> zero-initialised conv3.

    The last layer starts at zero so that each coupling starts as the identity (Glow §3.3).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, spatial_dims: int) -> None:
        conv = Conv[Conv.CONV, spatial_dims]
        last = conv(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(
            conv(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            conv(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            last,
        )


class AffineCoupling(nn.Module):
    """Affine coupling (Glow §3.3, from RealNVP): ``x = [x_a, x_b]`` along channels,
    ``(t, h) = NN(x_a)``, ``y_b = (x_b + t) · s`` with ``s = sigmoid(h + 2)``, ``y_a = x_a``.

    The sigmoid scale (as in the Glow reference code) lies in (0, 1) and starts near 0.88, which
    keeps the flow stable early in training; log|det| = sum log s.
    """

    def __init__(self, num_channels: int, hidden_channels: int, spatial_dims: int) -> None:
        super().__init__()
        if num_channels < 2:
            raise ValueError("affine coupling needs at least 2 channels")
        self.n_a = num_channels // 2
        n_b = num_channels - self.n_a
        self.net = CouplingNet(self.n_a, 2 * n_b, hidden_channels, spatial_dims)

    def _shift_and_log_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x_a)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, F.logsigmoid(raw + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.n_a], x[:, self.n_a :]
        shift, log_s = self._shift_and_log_scale(x_a)
        y_b = (x_b + shift) * torch.exp(log_s)
        return torch.cat([x_a, y_b], dim=1), log_s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y_a, y_b = y[:, : self.n_a], y[:, self.n_a :]
        shift, log_s = self._shift_and_log_scale(y_a)
        return torch.cat([y_a, y_b * torch.exp(-log_s) - shift], dim=1)


class FlowStep(nn.Module):
    """One step of flow: ActNorm -> invertible 1x1 conv -> affine coupling (Glow Fig. 2a)."""

    def __init__(self, num_channels: int, hidden_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                ActNorm(num_channels, spatial_dims),
                InvertibleConv1x1(num_channels, spatial_dims),
                AffineCoupling(num_channels, hidden_channels, spatial_dims),
            ]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


class Squeeze(nn.Module):
    """Space-to-channel reshape (RealNVP §3.6): (N, C, H, W) -> (N, 4C, H/2, W/2), or
    (N, C, D, H, W) -> (N, 8C, D/2, H/2, W/2) in 3D. A permutation, so log|det| = 0."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, *size = x.shape
        if any(s % 2 for s in size):
            raise ValueError(f"squeeze needs even spatial sizes, got {tuple(size)}")
        d = self.spatial_dims
        # (N, C, s1/2, 2, s2/2, 2, ...) -> (N, C, 2, 2, ..., s1/2, s2/2, ...)
        x = x.reshape(n, c, *[v for s in size for v in (s // 2, 2)])
        x = x.permute(0, 1, *range(3, 2 + 2 * d, 2), *range(2, 2 + 2 * d, 2))
        x = x.reshape(n, c * 2**d, *[s // 2 for s in size])
        return x, x.new_zeros(n)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        n, c, *size = y.shape
        d = self.spatial_dims
        y = y.reshape(n, c // 2**d, *([2] * d), *size)
        # (N, C, 2, ..., s1, ...) -> (N, C, s1, 2, s2, 2, ...)
        order = [0, 1]
        for i in range(d):
            order += [2 + d + i, 2 + i]
        y = y.permute(*order)
        return y.reshape(n, c // 2**d, *[s * 2 for s in size])


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch axis of log N(z; mean, exp(log_std)^2); shape (N,)."""
    log_p = -0.5 * (math.log(2 * math.pi) + 2 * log_std + (z - mean) ** 2 * torch.exp(-2 * log_std))
    return log_p.flatten(1).sum(1)


class SplitPrior(nn.Module):
    """Factor out half of the channels (RealNVP §3.6) with a learned conditional Gaussian prior
    ``p(z_out | z_keep) = N(mean, exp(log_std)^2)``, ``(mean, log_std) = conv(z_keep)``
    (zero-initialised, so the prior starts as N(0, I)), as in Glow's ``split2d``.
    """

    def __init__(self, num_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.n_keep = num_channels // 2
        n_out = num_channels - self.n_keep
        self.prior = Conv[Conv.CONV, spatial_dims](self.n_keep, 2 * n_out, 3, padding=1)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    def prior_params(self, z_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.prior(z_keep)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C, ...) -> (z_keep, z_out, log p(z_out | z_keep) of shape (N,))."""
        z_keep, z_out = x[:, : self.n_keep], x[:, self.n_keep :]
        mean, log_std = self.prior_params(z_keep)
        return z_keep, z_out, gaussian_log_density(z_out, mean, log_std)

    def inverse(self, z_keep: torch.Tensor, z_out: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Concatenate ``z_keep`` with ``z_out``, sampled from the prior at ``temperature`` if None."""
        if z_out is None:
            mean, log_std = self.prior_params(z_keep)
            z_out = mean + temperature * torch.exp(log_std) * torch.randn_like(mean)
        return torch.cat([z_keep, z_out], dim=1)
