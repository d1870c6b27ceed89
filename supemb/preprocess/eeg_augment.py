"""Augmentations for EEG windows (`EEGAugment`) and their named presets.

Every function takes x: [C, W] or a batch [B, C, W] (each sample gets its own
random draw), returns the same shape and dtype, and draws its randomness
from `generator` when one is given (same generator state -> same output).
Random numbers are drawn on the generator's device and then moved to x's,
so a CPU generator works for CUDA tensors too.

In DataLoader workers pass no generator: a torch.Generator object copied
into each worker would repeat the same draws in every worker, while torch's
global RNG is seeded per worker.

`EEG_AUGMENTS` names presets of `EEGAugment` ("eeg": the defaults,
"eeg-light": milder, "none": identity, and "eeg-context" / "eeg-light-context",
whose views come from anywhere near the item's window in its recording);
`eeg_augment(value)` resolves a setting.

A training item may be a `WindowInContext` (the window and the stretch of its
recording around it); `EEGAugment` then first crops its view from that stretch
(`context_frac`), and `as_window` gives the window itself for evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from supemb.errors import UserError


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.dim() == 2:
        return x.unsqueeze(0), True
    if x.dim() == 3:
        return x, False
    raise ValueError(f"expected [C, W] or [B, C, W], got shape {tuple(x.shape)}")


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) of `shape`, drawn on the generator's device, returned float32 on x's device."""
    dev = generator.device if generator is not None else x.device
    return torch.rand(shape, generator=generator, device=dev).to(x.device)


def _randint(high: int, shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randint(high, shape, generator=generator, device=dev).to(x.device)


def random_crop(x: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop `length` samples at a uniform random offset: [.., C, W] -> [.., C, length].

    Use with windows longer than the model's (crop-from-longer) for a time
    shift without wrap-around.
    """
    xb, single = _batched(x)
    b, c, w = xb.shape
    if not 1 <= length <= w:
        raise ValueError(f"crop length {length} must be in [1, {w}]")
    start = _randint(w - length + 1, (b,), xb, generator)  # [B]
    idx = (start[:, None] + torch.arange(length, device=xb.device)[None, :])[:, None, :].expand(b, c, length)
    out = torch.gather(xb, 2, idx)
    return out[0] if single else out


def time_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Circular shift along time by a uniform integer in [-max_shift, max_shift].

    All channels of a sample move together. The wrap point joins the window's
    end to its start: one discontinuity, which a band-passed signal tolerates.
    """
    xb, single = _batched(x)
    b, c, w = xb.shape
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    shift = _randint(2 * max_shift + 1, (b,), xb, generator) - max_shift  # [B]
    idx = (torch.arange(w, device=xb.device)[None, :] - shift[:, None]) % w  # [B, W]
    out = torch.gather(xb, 2, idx[:, None, :].expand(b, c, w))
    return out[0] if single else out


def amplitude_scale(
    x: torch.Tensor, low: float = 0.8, high: float = 1.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Multiply each sample by one factor ~ U(low, high) (electrode impedance, skull thickness)."""
    xb, single = _batched(x)
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got {low}, {high}")
    f = low + (high - low) * _rand((xb.shape[0], 1, 1), xb, generator)
    out = xb * f.to(xb.dtype)
    return out[0] if single else out


def gaussian_noise(x: torch.Tensor, rel_std: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add N(0, (rel_std * channel std)^2) noise; the std is each channel's over the window.

    Relative, so the noise level is the same for any scaling of the signal;
    a zero (dropped, flat) channel stays zero.
    """
    xb, single = _batched(x)
    if rel_std < 0:
        raise ValueError(f"rel_std must be >= 0, got {rel_std}")
    dev = generator.device if generator is not None else xb.device
    noise = torch.randn(xb.shape, generator=generator, device=dev).to(device=xb.device, dtype=xb.dtype)
    std = xb.std(dim=-1, keepdim=True, correction=0)  # [B, C, 1]
    out = xb + rel_std * std * noise
    return out[0] if single else out


def channel_dropout(x: torch.Tensor, p: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each channel with probability p (a bad or missing electrode).

    No 1/(1-p) rescaling: a dropped electrode carries nothing, the others are
    unchanged. At least one channel of every sample is kept.
    """
    xb, single = _batched(x)
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    b, c, _ = xb.shape
    keep = _rand((b, c), xb, generator) >= p  # [B, C]
    rescue = _randint(c, (b,), xb, generator)  # drawn always: the draw count never depends on the data
    gone = ~keep.any(dim=1)
    keep[gone, rescue[gone]] = True
    out = xb * keep[:, :, None].to(xb.dtype)
    return out[0] if single else out


@dataclass(frozen=True)
class WindowInContext:
    """A window and the stretch of its recording around it: signal [C, L], the window at
    signal[:, start : start + length]. Every view cropped from it has the window's
    recording, so its subject and label."""

    signal: torch.Tensor
    start: int
    length: int

    def window(self) -> torch.Tensor:
        return self.signal[:, self.start : self.start + self.length]


def as_window(x: torch.Tensor | WindowInContext) -> torch.Tensor:
    """The item's own window (evaluation, embedding): a `WindowInContext` -> its window."""
    return x.window() if isinstance(x, WindowInContext) else x


def context_crop(x: WindowInContext, frac: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A window-length view starting up to frac x window before or after the item's window,
    uniformly, inside the stretch held (so inside the recording): [C, length]."""
    lo = max(0, x.start - int(frac * x.length))
    hi = min(x.signal.shape[1] - x.length, x.start + int(frac * x.length))
    s = lo + int(_randint(hi - lo + 1, (1,), x.signal, generator)[0])
    return x.signal[:, s : s + x.length]


@dataclass(frozen=True)
class EEGAugment:
    """The default EEG view: time shift -> amplitude scale -> noise -> channel dropout.

    max_shift_frac: largest circular shift as a fraction of the window.
    context_frac: given a `WindowInContext`, the view is first cropped from the
    recording, starting up to context_frac x window before or after the item's
    window: two views of one item are then two stretches of one recording (same
    subject, same label), not two shifts of the same signal. On a plain window
    it does nothing.
    Dropout comes last so dropped channels are exactly zero.
    Call: aug(x [C, W], [B, C, W] or a WindowInContext, generator=None) -> [C, W] / [B, C, W].
    Every step draws its numbers whatever its setting (a zero shift, unit
    scale, zero noise or dropout included), so the draw count never depends
    on the preset; with all of them off the output equals the input. The
    context crop draws one number first, for a `WindowInContext` only.
    """

    max_shift_frac: float = 0.5
    scale_low: float = 0.8
    scale_high: float = 1.2
    noise_rel_std: float = 0.1
    channel_drop_p: float = 0.1
    context_frac: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"EEG augmentation: {f.name} must be a number, not {v!r}")
            object.__setattr__(self, f.name, float(v))
        if not 0 <= self.max_shift_frac <= 1:
            raise UserError(f"EEG augmentation: max_shift_frac must be in [0, 1], not {self.max_shift_frac}")
        if not 0 <= self.scale_low <= self.scale_high:
            raise UserError("EEG augmentation: need 0 <= scale_low <= scale_high, "
                            f"not {self.scale_low}, {self.scale_high}")
        if not self.noise_rel_std >= 0:
            raise UserError(f"EEG augmentation: noise_rel_std must be >= 0, not {self.noise_rel_std}")
        if not 0 <= self.channel_drop_p <= 1:
            raise UserError(f"EEG augmentation: channel_drop_p must be in [0, 1], not {self.channel_drop_p}")
        if not 0 <= self.context_frac <= 100:
            raise UserError(f"EEG augmentation: context_frac must be in [0, 100], not {self.context_frac}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly; `from_dict(to_dict())` gives an equal augmentation. A zero
        context_frac is left out, so records of the presets without it read as before."""
        d = asdict(self)
        if not d["context_frac"]:
            del d["context_frac"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EEGAugment:
        """From `to_dict()` output; unknown keys are refused."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UserError(f"EEG augmentation: unknown keys {unknown} (known: {known})")
        return cls(**d)

    def __call__(self, x: torch.Tensor | WindowInContext, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(x, WindowInContext):
            x = context_crop(x, self.context_frac, generator)
        w = x.shape[-1]
        y = time_shift(x, int(self.max_shift_frac * w), generator)
        y = amplitude_scale(y, self.scale_low, self.scale_high, generator)
        y = gaussian_noise(y, self.noise_rel_std, generator)
        return channel_dropout(y, self.channel_drop_p, generator)


EEG_AUGMENTS: dict[str, EEGAugment] = {
    # Time shift up to half a window, amplitude 0.8-1.2, noise 0.1 of the channel std, dropout 0.1.
    "eeg": EEGAugment(),
    # Milder: amplitude 0.9-1.1, half the noise, no channel dropout.
    "eeg-light": EEGAugment(max_shift_frac=0.5, scale_low=0.9, scale_high=1.1, noise_rel_std=0.05,
                            channel_drop_p=0.0),
    # As "eeg" and "eeg-light", each view cropped from up to one window before or after the item's window in
    # its recording (training items carry that stretch: supemb.modalities.eeg).
    "eeg-context": EEGAugment(context_frac=1.0),
    "eeg-light-context": EEGAugment(max_shift_frac=0.5, scale_low=0.9, scale_high=1.1, noise_rel_std=0.05,
                                    channel_drop_p=0.0, context_frac=1.0),
    # Identity (a control).
    "none": EEGAugment(max_shift_frac=0.0, scale_low=1.0, scale_high=1.0, noise_rel_std=0.0, channel_drop_p=0.0),
}


def eeg_augment(value: str | dict[str, Any] | EEGAugment) -> tuple[str, EEGAugment]:
    """A preset name ("eeg-light"), a mapping `{"preset": NAME, **field overrides}`
    or an `EEGAugment` -> (preset name or "custom", augmentation). Bad names
    or fields: a one-line `UsageError` naming the presets."""
    from supemb.preprocess.presets import CUSTOM, resolve_preset

    if isinstance(value, EEGAugment):
        names = [n for n, p in EEG_AUGMENTS.items() if p == value]
        return (names[0] if names else CUSTOM), value
    return resolve_preset(value, EEG_AUGMENTS, EEGAugment, "EEG")
