"""Synthetic single-lead ECG with exact labels for rhythm, heart rate, wave segmentation and denoising.

The signal model is inspired by McSharry et al. 2003, "A dynamical model for generating synthetic
electrocardiogram signals" (IEEE Trans. Biomed. Eng. 50(3):289-294), which builds every beat from five
Gaussian events P, Q, R, S and T.  Instead of integrating their ODE we write each beat directly as a sum
of those five Gaussians in time::

    clean(t) = sum_k sum_{w in PQRST} a_w * exp(-(t - t_k - d_w(RR_k))^2 / (2 * s_w(RR_k)^2))

where ``t_k`` is the R-peak time of beat ``k`` and ``RR_k = t_k - t_{k-1}`` its preceding RR interval.
Offsets and widths scale mildly with ``RR_k`` (``d_w = d0_w * RR^e_w``, ``s_w = s0_w * RR^f_w``): the
PR interval shortens slightly and the QT interval follows Bazett (``~sqrt(RR)``) at high rates.  Each
segment draws its own amplitude, width and offset scale per wave (+-20 %, +-10 %, +-10 %).

Rhythm classes (``rhythm``):

* 0 normal sinus (60-100 bpm), 1 bradycardia (< 60 bpm), 2 tachycardia (> 100 bpm): the intended class
  is drawn uniformly, a target rate well inside it (65-95, 40-55, 105-150 bpm), and RR intervals get
  small heart-rate variability (respiratory sinus arrhythmia up to 2 % plus 1 % white jitter).  The
  label is then *derived* from the heart rate actually produced, so it is exact.
* 3 AF-like: no P wave, RR intervals drawn independently from a log-normal with coefficient of variation
  0.15-0.25 around a mean rate of 80-140 bpm, and a fibrillatory baseline (a 4-9 Hz frequency- and
  amplitude-modulated oscillation of 0.03-0.08 mV) added to the clean signal.

``heart_rate`` is ``60 / mean(RR)`` over consecutive R peaks whose sample index lies inside the segment.

Wave segmentation rule (``waves``): a sample ``i`` (time ``i / sample_rate``) is labelled P (1) when it
lies within 2.5 sigma of a P Gaussian's centre, T (3) likewise for a T Gaussian, and QRS (2) when it lies
in ``[mu_Q - 2.5 sigma_Q, mu_S + 2.5 sigma_S]`` of one beat.  Where intervals overlap (very fast rates)
the priority is QRS > P > T; everything else is background (0).  AF beats carry no P label.

Noise (``noisy`` only, each scaled by ``noise_level``): baseline wander (two 0.1-0.5 Hz sinusoids),
powerline interference (50 or 60 Hz) and white Gaussian noise.  All randomness comes from one
``torch.Generator`` seeded with ``seed``, so output is bit-identical per seed.

Rendering is vectorised: every Gaussian is evaluated only on a window of +-5 sigma around its centre and
accumulated with ``index_add_`` (deterministic on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.data.sources import log_sources
from mtl_train.errors import ConfigError

RHYTHM_CLASSES = ("normal", "bradycardia", "tachycardia", "af")
WAVE_CLASSES = ("background", "p", "qrs", "t")
NORMAL, BRADY, TACHY, AF = 0, 1, 2, 3
BRADY_BELOW_BPM = 60.0
TACHY_ABOVE_BPM = 100.0
MIN_DURATION_S = 4.0
MIN_SAMPLE_RATE = 100

# Target heart-rate ranges (bpm) per intended class, indexed by class id; for AF it is the mean rate.
_HR_LOW = (65.0, 40.0, 105.0, 80.0)
_HR_HIGH = (95.0, 55.0, 150.0, 140.0)
_RSA_MAX = 0.02  # respiratory sinus arrhythmia amplitude (fraction of RR)
_RSA_PERIOD_S = (3.0, 6.0)
_JITTER_STD = 0.01  # white RR jitter for sinus rhythms (fraction of RR), clipped at 3 std
_AF_CV = (0.15, 0.25)
_MIN_RR_S = 0.28  # every RR interval is clamped to [_MIN_RR_S, _MAX_RR_S]
_MAX_RR_S = 1.6

# Per wave P, Q, R, S, T at RR = 1 s: offset from the R peak (s), offset RR exponent, sigma (s),
# sigma RR exponent, amplitude (mV).
_OFFSET_S = (-0.20, -0.025, 0.0, 0.025, 0.30)
_OFFSET_EXP = (0.2, 0.0, 0.0, 0.0, 0.5)
_SIGMA_S = (0.025, 0.010, 0.010, 0.010, 0.045)
_SIGMA_EXP = (0.0, 0.0, 0.0, 0.0, 0.5)
_AMPLITUDE_MV = (0.15, -0.12, 1.0, -0.25, 0.30)
_P, _Q, _S, _T = 0, 1, 3, 4  # indices into the per-wave tables (R is 2)
_AMP_VAR, _SIGMA_VAR, _OFFSET_VAR = 0.2, 0.1, 0.1  # per-segment scale factors are U(1 - v, 1 + v)
_RENDER_SIGMAS = 5.0  # Gaussians are evaluated on +-5 sigma (truncation error < 4e-6 of the peak)
_LABEL_SIGMAS = 2.5

_RR_FACTORS = tuple(max(_MIN_RR_S**e, _MAX_RR_S**e) for e in _OFFSET_EXP)
_MAX_SIGMA_S = tuple(
    s * (1 + _SIGMA_VAR) * max(_MIN_RR_S**e, _MAX_RR_S**e) for s, e in zip(_SIGMA_S, _SIGMA_EXP)
)
# How far (s) from its R peak a beat can have any non-negligible value.
_REACH_S = max(
    abs(d) * (1 + _OFFSET_VAR) * f + _RENDER_SIGMAS * s
    for d, f, s in zip(_OFFSET_S, _RR_FACTORS, _MAX_SIGMA_S)
)

# Fibrillatory wave and noise parameters (mV, Hz).
_FIB_AMP_MV = (0.03, 0.08)
_FIB_FREQ_HZ = (4.5, 8.5)
_FIB_FM_DEPTH_HZ = (0.2, 0.5)
_FIB_FM_RATE_HZ = (0.1, 0.3)
_FIB_AM_RATE_HZ = (0.2, 1.0)
_FIB_AM_DEPTH = 0.3
_WANDER_AMP_MV = (0.05, 0.15)
_WANDER_FREQ_HZ = (0.1, 0.5)
_POWERLINE_AMP_MV = (0.01, 0.04)
_WHITE_STD_MV = (0.01, 0.03)


@dataclass
class ECGSegments:
    """A batch of ``N`` synthetic ECG segments of ``L`` samples with exact labels.

    Attributes:
        noisy: ``(N, L)`` float32, clean signal plus baseline wander, powerline and white noise (mV).
        clean: ``(N, L)`` float32, noise-free signal (AF segments include the fibrillatory baseline).
        rhythm: ``(N,)`` int64, 0 normal, 1 bradycardia, 2 tachycardia, 3 AF-like.
        heart_rate: ``(N,)`` float32, produced rate in bpm: 60 / mean RR between in-segment R peaks.
        waves: ``(N, L)`` int64, 0 background, 1 P, 2 QRS, 3 T (rule in the module docstring).
        r_peaks: ``(N, max_beats)`` int64, sample index of every in-segment R peak, padded with -1.
        target_heart_rate: ``(N,)`` float32, the rate the generator aimed for (mean rate for AF).
    """

    noisy: Tensor
    clean: Tensor
    rhythm: Tensor
    heart_rate: Tensor
    waves: Tensor
    r_peaks: Tensor
    target_heart_rate: Tensor

    def __len__(self) -> int:
        return self.noisy.shape[0]


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low_high: tuple[float, float]) -> Tensor:
    low, high = low_high
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _draw_rr(gen: torch.Generator, intended: Tensor, target_hr: Tensor, num_beats: int) -> Tensor:
    """``(N, num_beats)`` RR intervals (s): mildly varying for sinus rhythms, irregular for AF."""
    n = intended.shape[0]
    base = 60.0 / target_hr[:, None]
    beat = torch.arange(num_beats, dtype=torch.float64)
    rsa_amp = _uniform(gen, (n, 1), (0.0, _RSA_MAX))
    rsa_period = _uniform(gen, (n, 1), _RSA_PERIOD_S)
    rsa_phase = _uniform(gen, (n, 1), (0.0, 2 * math.pi))
    jitter = torch.randn((n, num_beats), generator=gen, dtype=torch.float64).clamp(-3, 3) * _JITTER_STD
    sinus = base * (1 + rsa_amp * torch.sin(2 * math.pi * beat * base / rsa_period + rsa_phase) + jitter)
    cv = _uniform(gen, (n, 1), _AF_CV)
    log_std = torch.sqrt(torch.log1p(cv**2))
    z = torch.randn((n, num_beats), generator=gen, dtype=torch.float64)
    af = base * torch.exp(log_std * z - log_std**2 / 2)
    return torch.where((intended == AF)[:, None], af, sinus).clamp(_MIN_RR_S, _MAX_RR_S)


def _interval_mask(rows: Tensor, lo: Tensor, hi: Tensor, num_rows: int, length: int) -> Tensor:
    """``(num_rows, length)`` bool: True at samples ``ceil(lo)..floor(hi)`` of each interval's row."""
    start = torch.ceil(lo).clamp(0, length).long()
    stop = (torch.floor(hi) + 1).clamp(0, length).long()
    diff = torch.zeros(num_rows * (length + 1), dtype=torch.int32)
    ones = torch.ones_like(start, dtype=torch.int32)
    diff.index_add_(0, rows * (length + 1) + start, ones)
    diff.index_add_(0, rows * (length + 1) + stop, -ones)
    return diff.view(num_rows, length + 1).cumsum(1)[:, :length] > 0


def _fibrillation(gen: torch.Generator, n: int, t: Tensor) -> Tensor:
    """``(n, L)`` float32 AF-like fibrillatory baseline: a 4-9 Hz oscillation with FM and AM."""
    amp = _uniform(gen, (n, 1), _FIB_AMP_MV)
    freq = _uniform(gen, (n, 1), _FIB_FREQ_HZ)
    fm_depth = _uniform(gen, (n, 1), _FIB_FM_DEPTH_HZ)
    fm_rate = _uniform(gen, (n, 1), _FIB_FM_RATE_HZ)
    am_rate = _uniform(gen, (n, 1), _FIB_AM_RATE_HZ)
    phases = _uniform(gen, (n, 3), (0.0, 2 * math.pi))
    # Instantaneous frequency freq + fm_depth * cos(2 pi fm_rate t + phi) stays within 4-9 Hz.
    phase = (
        2 * math.pi * freq * t
        + fm_depth / fm_rate * torch.sin(2 * math.pi * fm_rate * t + phases[:, :1])
        + phases[:, 1:2]
    )
    envelope = 1 + _FIB_AM_DEPTH * torch.sin(2 * math.pi * am_rate * t + phases[:, 2:3])
    return (amp * envelope * torch.sin(phase)).float()


def _noise(gen: torch.Generator, n: int, t: Tensor) -> Tensor:
    """``(n, L)`` float32 baseline wander + powerline interference + white noise at unit noise level."""
    wander_amp = _uniform(gen, (n, 2), _WANDER_AMP_MV)
    wander_freq = _uniform(gen, (n, 2), _WANDER_FREQ_HZ)
    wander_phase = _uniform(gen, (n, 2), (0.0, 2 * math.pi))
    mains = torch.where(torch.rand((n, 1), generator=gen) < 0.5, 50.0, 60.0).double()
    mains_amp = _uniform(gen, (n, 1), _POWERLINE_AMP_MV)
    mains_phase = _uniform(gen, (n, 1), (0.0, 2 * math.pi))
    white_std = _uniform(gen, (n, 1), _WHITE_STD_MV).float()
    white = torch.randn((n, t.shape[1]), generator=gen) * white_std
    noise = mains_amp * torch.sin(2 * math.pi * mains * t + mains_phase)
    for j in range(2):
        noise += wander_amp[:, j : j + 1] * torch.sin(
            2 * math.pi * wander_freq[:, j : j + 1] * t + wander_phase[:, j : j + 1]
        )
    return noise.float() + white


def _check_signal_args(sample_rate: int, duration_s: float, noise_level: float, prefix: str) -> None:
    if sample_rate < MIN_SAMPLE_RATE:
        raise ConfigError(f"{prefix}sample_rate must be >= {MIN_SAMPLE_RATE}, got {sample_rate}")
    if not duration_s >= MIN_DURATION_S:
        raise ConfigError(
            f"{prefix}duration_s must be >= {MIN_DURATION_S} (at least two R peaks per segment), "
            f"got {duration_s}"
        )
    if not noise_level >= 0:
        raise ConfigError(f"{prefix}noise_level must be >= 0, got {noise_level}")


def generate_ecg(
    num_segments: int,
    seed: int,
    sample_rate: int = 250,
    duration_s: float = 10.0,
    noise_level: float = 1.0,
) -> ECGSegments:
    """Generate ``num_segments`` labelled synthetic ECG segments, bit-identical for a given ``seed``.

    Segments have ``L = round(sample_rate * duration_s)`` samples.  See the module docstring for the
    signal model, the label definitions and the wave-segmentation rule.

    Raises:
        ConfigError: ``num_segments < 1``, ``sample_rate < 100``, ``duration_s < 4`` or
            ``noise_level < 0``.
    """
    if num_segments < 1:
        raise ConfigError(f"num_segments must be >= 1, got {num_segments}")
    _check_signal_args(sample_rate, duration_s, noise_level, prefix="")
    gen = torch.Generator().manual_seed(seed)
    n, fs = num_segments, float(sample_rate)
    length = round(sample_rate * duration_s)
    num_beats = math.ceil((duration_s + 2 * _REACH_S + _MAX_RR_S) / _MIN_RR_S) + 1

    # Rhythm, target rate and RR intervals; beat 0 lies before -_REACH_S so the segment starts mid-cycle.
    intended = torch.randint(0, 4, (n,), generator=gen)
    hr_low = torch.tensor(_HR_LOW, dtype=torch.float64)[intended]
    hr_high = torch.tensor(_HR_HIGH, dtype=torch.float64)[intended]
    target_hr = hr_low + (hr_high - hr_low) * torch.rand(n, generator=gen, dtype=torch.float64)
    is_af = intended == AF
    rr = _draw_rr(gen, intended, target_hr, num_beats)
    first = -_REACH_S - rr[:, 0] * torch.rand(n, generator=gen, dtype=torch.float64)
    steps = torch.cat([first[:, None], rr[:, 1:]], dim=1)
    r_time = steps.cumsum(1)  # (N, K) R-peak times in seconds

    # Labels derived from the R peaks actually inside the segment.
    r_index = torch.round(r_time * fs).long()
    inside = (r_index >= 0) & (r_index < length)
    count = inside.sum(1)
    span = (
        torch.where(inside, r_time, -math.inf).amax(1) - torch.where(inside, r_time, math.inf).amin(1)
    )
    heart_rate = 60.0 * (count - 1) / span
    rhythm = torch.full((n,), NORMAL, dtype=torch.int64)
    rhythm[heart_rate < BRADY_BELOW_BPM] = BRADY
    rhythm[heart_rate > TACHY_ABOVE_BPM] = TACHY
    rhythm[is_af] = AF
    max_beats = math.floor(duration_s / _MIN_RR_S) + 1
    column = torch.where(inside, inside.cumsum(1) - 1, max_beats)
    r_peaks = torch.full((n, max_beats + 1), -1, dtype=torch.int64)
    r_peaks.scatter_(1, column, torch.where(inside, r_index, -1))
    r_peaks = r_peaks[:, :max_beats]

    # Per-segment wave shape scales, then each wave's centre/width/amplitude on the beats that matter.
    amp_scale = _uniform(gen, (n, 5), (1 - _AMP_VAR, 1 + _AMP_VAR))
    sigma_scale = _uniform(gen, (n, 5), (1 - _SIGMA_VAR, 1 + _SIGMA_VAR))
    offset_scale = _uniform(gen, (n, 5), (1 - _OFFSET_VAR, 1 + _OFFSET_VAR))
    rows, cols = torch.nonzero((r_time > -_REACH_S) & (r_time < duration_s + _REACH_S), as_tuple=True)
    beat_time, beat_rr = r_time[rows, cols], rr[rows, cols]
    mu, sigma = [], []  # per wave, (M,) in samples
    clean_flat = torch.zeros(n * length)
    for w in range(5):
        offset = _OFFSET_S[w] * offset_scale[rows, w] * beat_rr ** _OFFSET_EXP[w]
        mu.append((beat_time + offset) * fs)
        sigma.append(_SIGMA_S[w] * sigma_scale[rows, w] * beat_rr ** _SIGMA_EXP[w] * fs)
        amp = _AMPLITUDE_MV[w] * amp_scale[rows, w]
        if w == _P:
            amp = torch.where(is_af[rows], 0.0, amp)
        half = math.ceil(_RENDER_SIGMAS * _MAX_SIGMA_S[w] * fs)
        window = torch.arange(-half, half + 1)
        centre = torch.round(mu[w])
        idx = centre.long()[:, None] + window
        dist = window.float() - (mu[w] - centre).float()[:, None]
        val = amp.float()[:, None] * torch.exp(-0.5 * (dist / sigma[w].float()[:, None]) ** 2)
        valid = (idx >= 0) & (idx < length)
        flat = rows[:, None] * length + idx.clamp(0, length - 1)
        clean_flat.index_add_(0, flat.flatten(), torch.where(valid, val, 0.0).flatten())
    clean = clean_flat.view(n, length)

    half_width = [_LABEL_SIGMAS * s for s in sigma]
    not_af = ~is_af[rows]
    t_mask = _interval_mask(rows, mu[_T] - half_width[_T], mu[_T] + half_width[_T], n, length)
    p_mask = _interval_mask(
        rows[not_af], (mu[_P] - half_width[_P])[not_af], (mu[_P] + half_width[_P])[not_af], n, length
    )
    qrs_mask = _interval_mask(rows, mu[_Q] - half_width[_Q], mu[_S] + half_width[_S], n, length)
    waves = torch.zeros((n, length), dtype=torch.int64)
    waves[t_mask] = 3
    waves[p_mask] = 1
    waves[qrs_mask] = 2

    t = torch.arange(length, dtype=torch.float64)[None, :] / fs
    clean += torch.where(is_af[:, None], _fibrillation(gen, n, t), 0.0)
    noisy = clean + noise_level * _noise(gen, n, t)
    return ECGSegments(
        noisy=noisy,
        clean=clean,
        rhythm=rhythm,
        heart_rate=heart_rate.float(),
        waves=waves,
        r_peaks=r_peaks,
        target_heart_rate=target_hr.float(),
    )


class SyntheticECG:
    """Train/val/test splits of :func:`generate_ecg` segments as a :class:`MultiTaskData`.

    Each split's ``inputs`` is the noisy signal, shape ``(N, 1, L)``; ``targets`` are ``"rhythm"``
    ``(N,)`` int64 (``num_classes`` = 4), ``"heart_rate"`` ``(N,)`` float32 bpm, ``"waves"`` ``(N, L)``
    int64 (``num_wave_classes`` = 4) and ``"clean"`` ``(N, 1, L)`` float32.  Splits use seeds
    ``3 * seed + 0 / 1 / 2`` (train / val / test), so they never share a seed, for any ``seed >= 0``.
    """

    num_classes: int = len(RHYTHM_CLASSES)
    num_wave_classes: int = len(WAVE_CLASSES)

    def __init__(
        self,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 200,
        sample_rate: int = 250,
        duration_s: float = 10.0,
        noise_level: float = 1.0,
        seed: int = 0,
    ) -> None:
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ConfigError(f"dataset.{key} must be >= 1, got {value}")
        _check_signal_args(sample_rate, duration_s, noise_level, prefix="dataset.")
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.sample_rate = sample_rate
        self.duration_s = duration_s
        self.noise_level = noise_level
        self.seed = seed

    def _split(self, num_segments: int, offset: int) -> TensorSplit:
        seg = generate_ecg(
            num_segments,
            seed=3 * self.seed + offset,
            sample_rate=self.sample_rate,
            duration_s=self.duration_s,
            noise_level=self.noise_level,
        )
        targets = {
            "rhythm": seg.rhythm,
            "heart_rate": seg.heart_rate,
            "waves": seg.waves,
            "clean": seg.clean.unsqueeze(1),
        }
        return TensorSplit(seg.noisy.unsqueeze(1), targets)

    def build(self) -> MultiTaskData:
        """Generate the train, val and test splits; ``sources`` names the generator and the seeds (also logged)."""
        sources = {
            "dataset": "SyntheticECG",
            "generator": f"{generate_ecg.__module__}.{generate_ecg.__qualname__}",
            "seed": self.seed,
            "split_seeds": {split: 3 * self.seed + offset for offset, split in enumerate(("train", "val", "test"))},
        }
        log_sources(sources)
        return MultiTaskData(
            train=self._split(self.num_train, 0),
            val=self._split(self.num_val, 1),
            test=self._split(self.num_test, 2),
            sources=sources,
        )
