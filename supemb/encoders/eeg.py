"""EEG window encoders: ShallowConvNet- and Deep4-style (Schirrmeister et al. 2017).

Both take windows `[B, n_chans, n_times]` and return `[B, embed_dim]`. They
are built from the signal contract (n_chans, n_times, sfreq): kernel and
pooling lengths are set in seconds and converted to samples at `sfreq`, so
the same architecture sees the same time scales at 100 Hz and at 256 Hz
(the paper's numbers are for 250 Hz). `eeg_signal_kwargs(spec)` turns an
`EEGSpec` into those three arguments.

Differences from the paper's networks, on purpose:

- Both end in flatten + Linear(embed_dim) instead of a class-score
  convolution: they are encoders, the heads come later.
- Deep4's convolutions are zero-padded to keep their length ("same"), so four
  /3 poolings fit windows down to 81 samples (2 s at 100 Hz has 200); with
  unpadded convolutions a 2 s window at 100 Hz would shrink to nothing.

Inference: both open with a temporal conv, a spatial conv over all channels
and a BatchNorm, all linear. Once BN uses its running statistics (eval mode)
the three are one Conv1d over the channels (`fold_time_space`): the same
function up to float rounding, with n_chans x fewer multiply-adds in the
spatial step (ShallowNet: ~5x less arithmetic in all). Training keeps the
factorised form, whose parameters are what is learnt and saved. The ONNX
export traces the eval path, so served models run the folded convolution.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supemb.errors import UserError

# Time constants in seconds; the paper's sample counts at 250 Hz in brackets.
SHALLOW_CONV_S = 0.1  # temporal filter (25)
SHALLOW_POOL_S = 0.3  # mean-pool window (75)
SHALLOW_STRIDE_S = 0.06  # mean-pool stride (15)
DEEP4_CONV_S = 0.04  # every temporal filter (10); odd-rounded for "same" padding
DEEP4_POOL = 3  # max-pool size and stride in samples, as in the paper
DEEP4_N_POOLS = 4
LOG_EPS = 1e-6  # floor before log: pooled power can be 0 on flat or clipped signals


def fold_time_space(conv_time: nn.Conv2d, conv_spat: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The temporal conv `(1, k)` [F, 1, 1, k], then the spatial conv
    `(n_chans, 1)` [G, F, C, 1] and an eval-mode BatchNorm over G, as one
    Conv1d over the channels: (weight [G, C, k], bias [G]).

    conv_spat(conv_time(x))[g, t] = sum_{c, j} (sum_f S[g, f, c] T[f, j]) x[c, t + j]
                                    + sum_{f, c} S[g, f, c] b_T[f]
    and BN scales by gamma / sqrt(running_var + eps) and shifts. Use with the
    temporal conv's padding along time.
    """
    t_w = conv_time.weight[:, 0, 0, :]  # [F, k]
    s_w = conv_spat.weight[..., 0]  # [G, F, C]
    weight = torch.einsum("gfc,fk->gck", s_w, t_w)
    bias = torch.zeros(s_w.shape[0], dtype=s_w.dtype, device=s_w.device)
    if conv_time.bias is not None:
        bias = bias + torch.einsum("gfc,f->g", s_w, conv_time.bias)
    if conv_spat.bias is not None:
        bias = bias + conv_spat.bias
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = (bias - bn.running_mean) * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    return weight * scale[:, None, None], bias


def _can_fold(bn: nn.BatchNorm2d) -> bool:
    """BN normalises with fixed statistics (eval mode, running stats kept)."""
    return not bn.training and bn.running_mean is not None and bn.running_var is not None


class _SignalSpec(Protocol):
    """What `eeg_signal_kwargs` reads (supemb.preprocess.eeg.EEGSpec has it)."""

    n_channels: int
    window_samples: int
    sfreq: float


def eeg_signal_kwargs(spec: _SignalSpec) -> dict[str, Any]:
    """The (n_chans, n_times, sfreq) keyword arguments for an EEG encoder."""
    return {"n_chans": int(spec.n_channels), "n_times": int(spec.window_samples), "sfreq": float(spec.sfreq)}


def _samples(seconds: float, sfreq: float, minimum: int = 1) -> int:
    return max(minimum, int(round(seconds * sfreq)))


def _odd_samples(seconds: float, sfreq: float) -> int:
    n = _samples(seconds, sfreq, minimum=3)
    return n if n % 2 else n + 1


class _EEGEncoder(nn.Module):
    """Shared signal-contract checks for the EEG encoders."""

    modality = "eeg"
    name = "eeg"

    def __init__(self, n_chans: int, n_times: int, sfreq: float, embed_dim: int) -> None:
        super().__init__()
        if n_chans < 1 or n_times < 1 or embed_dim < 1:
            raise UserError(
                f"{self.name}: n_chans, n_times and embed_dim must be >= 1, "
                f"got {n_chans}, {n_times}, {embed_dim}"
            )
        if not sfreq > 0:
            raise UserError(f"{self.name}: sfreq must be > 0 Hz, got {sfreq}")
        self.n_chans = int(n_chans)
        self.n_times = int(n_times)
        self.sfreq = float(sfreq)
        self.embed_dim: int = int(embed_dim)

    def _too_short(self, minimum: int) -> UserError:
        return UserError(
            f"{self.name}: a window of {self.n_times} samples ({self.n_times / self.sfreq:g} s "
            f"at {self.sfreq:g} Hz) is too short; it needs at least {minimum} samples "
            f"({minimum / self.sfreq:g} s): use a longer window_s"
        )

    def _check_input(self, x: Tensor) -> None:
        # Turns a deep shape-mismatch error into a clear one. Skipped while
        # tracing for ONNX: there the shape is fixed in the graph anyway.
        if torch.jit.is_tracing():
            return
        if x.dim() != 3 or x.shape[1] != self.n_chans or x.shape[2] != self.n_times:
            raise UserError(
                f"{self.name}: expected EEG windows [B, {self.n_chans} channels, "
                f"{self.n_times} samples], got {list(x.shape)}; the recording must be "
                f"picked and windowed with the model's channel list and window length"
            )

    def _init_weights(self) -> None:
        # Glorot init for conv/linear as in the paper's code; BN starts at identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class ShallowConvNet(_EEGEncoder):
    """ShallowConvNet-style encoder: band power in learned spatial filters.

    temporal conv -> spatial conv (all channels) -> BN -> square -> mean-pool
    -> log -> dropout -> flatten -> Linear. Square, mean and log make each
    feature a log band-power, the FBCSP recipe in network form.

    Args:
        n_chans, n_times, sfreq: the signal contract of the windows.
        embed_dim: output size.
        n_filters: temporal and spatial filters (40 in the paper).
        dropout: dropout before the final Linear.

    Forward: `x: [B, n_chans, n_times]` -> `[B, embed_dim]`.
    """

    name = "shallow"

    def __init__(
        self,
        *,
        n_chans: int,
        n_times: int,
        sfreq: float,
        embed_dim: int = 128,
        n_filters: int = 40,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(n_chans, n_times, sfreq, embed_dim)
        k = _samples(SHALLOW_CONV_S, sfreq, minimum=2)
        pool = _samples(SHALLOW_POOL_S, sfreq)
        stride = _samples(SHALLOW_STRIDE_S, sfreq)
        if n_times < k + pool - 1:
            raise self._too_short(k + pool - 1)
        n_pooled = (n_times - k + 1 - pool) // stride + 1
        self.conv_time = nn.Conv2d(1, n_filters, (1, k))
        # No bias: BN right after removes it anyway.
        self.conv_spat = nn.Conv2d(n_filters, n_filters, (n_chans, 1), bias=False)
        self.bn = nn.BatchNorm2d(n_filters)
        self.pool = nn.AvgPool2d((1, pool), stride=(1, stride))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(n_filters * n_pooled, embed_dim)
        self._init_weights()

    def forward(self, x: Tensor) -> Tensor:
        """`x: [B, n_chans, n_times]` -> `[B, embed_dim]`."""
        self._check_input(x)
        if _can_fold(self.bn):
            h = F.conv1d(x, *fold_time_space(self.conv_time, self.conv_spat, self.bn))  # [B, F, T - k + 1]
        else:
            h = self.conv_time(x.unsqueeze(1))  # [B, F, C, T - k + 1]
            h = self.bn(self.conv_spat(h)).squeeze(2)  # [B, F, T - k + 1]
        h = self._mean_pool(h * h)  # [B, F, P]
        # Clamp: log(0) = -inf on a flat window; Clip + Log export to ONNX.
        h = torch.log(torch.clamp(h, min=LOG_EPS))
        return self.fc(self.drop(h).flatten(1))

    def _mean_pool(self, h: Tensor) -> Tensor:
        """`self.pool` along time, `[B, F, T]` -> `[B, F, P]`. When the stride
        divides the window (30 and 6 samples at 100 Hz, 75 and 15 at 250 Hz)
        this is means of stride-long blocks, then a sliding mean of
        window / stride blocks: the same values (up to float rounding) for
        ~window / stride fewer additions."""
        pool, stride = self.pool.kernel_size[1], self.pool.stride[1]
        if pool % stride or pool == stride:
            return self.pool(h.unsqueeze(2)).squeeze(2)
        # floor(T / stride) blocks give floor(T / stride) - pool / stride + 1
        # windows, as many as the plain pool's floor((T - pool) / stride) + 1.
        blocks = F.avg_pool1d(h, stride, stride=stride)
        return F.avg_pool1d(blocks, pool // stride, stride=1)


class Deep4Net(_EEGEncoder):
    """Deep4-style encoder: four conv + max-pool blocks.

    Block 1: temporal conv -> spatial conv (all channels) -> BN -> ELU ->
    max-pool 3. Blocks 2-4: dropout -> temporal conv -> BN -> ELU -> max-pool
    3. Then flatten -> Linear. Temporal kernels span ~40 ms at `sfreq` (odd, so
    "same" padding keeps the length); each pool divides the length by 3.

    Args:
        n_chans, n_times, sfreq: the signal contract of the windows.
        embed_dim: output size.
        n_filters: filters of the four blocks (25, 50, 100, 200 in the paper).
        dropout: dropout before blocks 2-4.

    Forward: `x: [B, n_chans, n_times]` -> `[B, embed_dim]`.
    """

    name = "deep4"

    def __init__(
        self,
        *,
        n_chans: int,
        n_times: int,
        sfreq: float,
        embed_dim: int = 128,
        n_filters: tuple[int, int, int, int] = (25, 50, 100, 200),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(n_chans, n_times, sfreq, embed_dim)
        try:
            filters = tuple(int(f) for f in n_filters)  # YAML gives lists
        except (TypeError, ValueError):
            filters = ()
        if len(filters) != DEEP4_N_POOLS or min(filters) < 1:
            raise UserError(f"deep4: n_filters must be 4 positive ints, got {n_filters!r}")
        minimum = DEEP4_POOL**DEEP4_N_POOLS
        if n_times < minimum:
            raise self._too_short(minimum)
        k = _odd_samples(DEEP4_CONV_S, sfreq)
        pad = (0, k // 2)
        f0 = filters[0]
        blocks: list[nn.Module] = [
            nn.Conv2d(1, f0, (1, k), padding=pad),
            nn.Conv2d(f0, f0, (n_chans, 1), bias=False),
            nn.BatchNorm2d(f0),
            nn.ELU(),
            nn.MaxPool2d((1, DEEP4_POOL), stride=(1, DEEP4_POOL)),
        ]
        for f_in, f_out in zip(filters[:-1], filters[1:]):
            blocks += [
                nn.Dropout(dropout),
                nn.Conv2d(f_in, f_out, (1, k), padding=pad, bias=False),
                nn.BatchNorm2d(f_out),
                nn.ELU(),
                nn.MaxPool2d((1, DEEP4_POOL), stride=(1, DEEP4_POOL)),
            ]
        self.features = nn.Sequential(*blocks)
        t = n_times
        for _ in range(DEEP4_N_POOLS):
            t //= DEEP4_POOL
        self.fc = nn.Linear(filters[-1] * t, embed_dim)
        self._init_weights()

    def forward(self, x: Tensor) -> Tensor:
        """`x: [B, n_chans, n_times]` -> `[B, embed_dim]`."""
        self._check_input(x)
        conv_time, conv_spat, bn = self.features[0], self.features[1], self.features[2]
        if _can_fold(bn):
            w, b = fold_time_space(conv_time, conv_spat, bn)
            h = F.conv1d(x, w, b, padding=conv_time.padding[1]).unsqueeze(2)  # [B, F1, 1, n_times]
            for layer in list(self.features)[3:]:
                h = layer(h)
        else:
            h = self.features(x.unsqueeze(1))
        return self.fc(h.flatten(1))  # h: [B, F4, 1, n_times // 81]


def shallow(
    *,
    n_chans: int,
    n_times: int,
    sfreq: float,
    embed_dim: int = 128,
    n_filters: int = 40,
    dropout: float = 0.5,
) -> ShallowConvNet:
    """ShallowConvNet-style encoder for `[B, n_chans, n_times]` windows at `sfreq` Hz."""
    return ShallowConvNet(
        n_chans=n_chans, n_times=n_times, sfreq=sfreq, embed_dim=embed_dim,
        n_filters=n_filters, dropout=dropout,
    )


def deep4(
    *,
    n_chans: int,
    n_times: int,
    sfreq: float,
    embed_dim: int = 128,
    n_filters: tuple[int, int, int, int] = (25, 50, 100, 200),
    dropout: float = 0.5,
) -> Deep4Net:
    """Deep4-style encoder for `[B, n_chans, n_times]` windows at `sfreq` Hz."""
    return Deep4Net(
        n_chans=n_chans, n_times=n_times, sfreq=sfreq, embed_dim=embed_dim,
        n_filters=n_filters, dropout=dropout,
    )
