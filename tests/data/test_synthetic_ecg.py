"""Tests for the synthetic ECG generator: labels are checked against the generator's own R peaks."""

from __future__ import annotations

import pytest
import torch

from mtl_train.data.synthetic_ecg import (
    AF,
    BRADY,
    NORMAL,
    TACHY,
    ECGSegments,
    SyntheticECG,
    generate_ecg,
)
from mtl_train.errors import ConfigError

FS = 250
N = 400


@pytest.fixture(scope="module")
def seg() -> ECGSegments:
    return generate_ecg(N, seed=123, sample_rate=FS)


def _rr_intervals(r_peaks: torch.Tensor) -> list[torch.Tensor]:
    """Per segment, RR intervals in seconds from the padded R-peak indices."""
    return [torch.diff(row[row >= 0]).double() / FS for row in r_peaks]


def test_shapes_and_dtypes(seg: ECGSegments) -> None:
    length = 10 * FS
    assert seg.noisy.shape == seg.clean.shape == seg.waves.shape == (N, length)
    assert seg.noisy.dtype == seg.clean.dtype == torch.float32
    assert seg.rhythm.shape == seg.heart_rate.shape == (N,)
    assert seg.rhythm.dtype == seg.waves.dtype == seg.r_peaks.dtype == torch.int64
    assert seg.heart_rate.dtype == torch.float32
    assert seg.r_peaks.shape[0] == N
    valid = seg.r_peaks >= 0
    assert ((seg.r_peaks == -1) | valid).all()
    assert (seg.r_peaks[valid] < length).all()
    # Padding only at the end of each row; indices strictly increasing.
    assert (valid.long().diff(dim=1) <= 0).all()
    assert all((torch.diff(row[row >= 0]) > 0).all() for row in seg.r_peaks)


def test_heart_rate_matches_r_peaks(seg: ECGSegments) -> None:
    for rr, hr in zip(_rr_intervals(seg.r_peaks), seg.heart_rate):
        assert len(rr) >= 1
        assert abs(60.0 / rr.mean().item() - hr.item()) < 2.0


def test_sinus_rate_close_to_target_and_label_follows_thresholds(seg: ECGSegments) -> None:
    sinus = seg.rhythm != AF
    hr, target, rhythm = seg.heart_rate[sinus], seg.target_heart_rate[sinus], seg.rhythm[sinus]
    expected = torch.full_like(rhythm, NORMAL)
    expected[hr < 60] = BRADY
    expected[hr > 100] = TACHY
    assert torch.equal(rhythm, expected)
    intended = torch.full_like(rhythm, NORMAL)
    intended[target < 60] = BRADY
    intended[target > 100] = TACHY
    same_class = rhythm == intended
    assert same_class.float().mean() > 0.95
    assert ((hr - target)[same_class].abs() < 2.0).all()
    # Rates lie in physiological class ranges.
    assert (hr[rhythm == BRADY] >= 35).all() and (hr[rhythm == TACHY] <= 165).all()


def test_every_r_peak_is_qrs_and_p_waves_follow_rhythm(seg: ECGSegments) -> None:
    valid = seg.r_peaks >= 0
    labels_at_r = seg.waves.gather(1, seg.r_peaks.clamp(min=0))
    assert (labels_at_r[valid] == 2).all()
    has_p = (seg.waves == 1).any(dim=1)
    af = seg.rhythm == AF
    assert not has_p[af].any()
    assert has_p[~af & valid.any(dim=1)].all()
    assert (seg.waves == 3).any(dim=1).all()
    # R peaks are around 1 mV in the clean signal.
    r_amp = seg.clean.gather(1, seg.r_peaks.clamp(min=0))[valid]
    assert r_amp.min() > 0.5 and r_amp.max() < 1.6
    assert 0.8 < r_amp.mean() < 1.2


def test_af_rr_more_irregular_than_sinus(seg: ECGSegments) -> None:
    cv = torch.tensor([(rr.std() / rr.mean()).item() for rr in _rr_intervals(seg.r_peaks)])
    af = seg.rhythm == AF
    assert cv[af].median() > 0.12
    assert cv[~af].median() < 0.04
    assert cv[af].median() > 4 * cv[~af].median()


def test_classes_balanced(seg: ECGSegments) -> None:
    counts = torch.bincount(seg.rhythm, minlength=4)
    assert counts.numel() == 4
    assert (counts > 0.15 * N).all(), counts


def test_segments_start_at_random_phase(seg: ECGSegments) -> None:
    first = seg.r_peaks[:, 0].double() / FS
    assert first.min() < 0.1 and first.max() > 0.6


def test_deterministic_per_seed() -> None:
    a = generate_ecg(20, seed=7)
    b = generate_ecg(20, seed=7)
    c = generate_ecg(20, seed=8)
    for name in ("noisy", "clean", "rhythm", "heart_rate", "waves", "r_peaks"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.clean, c.clean)
    assert not torch.equal(a.noisy, c.noisy)


def test_noise_level() -> None:
    quiet = generate_ecg(10, seed=1, noise_level=0.0)
    assert torch.equal(quiet.noisy, quiet.clean)
    loud = generate_ecg(10, seed=1, noise_level=1.0)
    assert torch.equal(loud.clean, quiet.clean)
    residual = loud.noisy - loud.clean
    assert residual.std() > 0.01
    louder = generate_ecg(10, seed=1, noise_level=2.0)
    assert torch.allclose(louder.noisy - louder.clean, 2 * residual, atol=1e-5)


def test_custom_sample_rate_and_duration() -> None:
    s = generate_ecg(5, seed=0, sample_rate=500, duration_s=6.0)
    assert s.noisy.shape == (5, 3000)
    assert (s.r_peaks < 3000).all()


def test_build_splits() -> None:
    data = SyntheticECG(num_train=12, num_val=5, num_test=6, duration_s=5.0, seed=2).build()
    length = 5 * 250
    for split, n in ((data.train, 12), (data.val, 5), (data.test, 6)):
        assert split.inputs.shape == (n, 1, length) and split.inputs.dtype == torch.float32
        assert split.targets["rhythm"].shape == (n,) and split.targets["rhythm"].dtype == torch.int64
        assert split.targets["heart_rate"].shape == (n,)
        assert split.targets["heart_rate"].dtype == torch.float32
        assert split.targets["waves"].shape == (n, length)
        assert split.targets["waves"].dtype == torch.int64
        assert split.targets["clean"].shape == (n, 1, length)
        assert split.targets["clean"].dtype == torch.float32
    assert data.in_channels == 1 and data.spatial_size == (length,)
    assert not torch.equal(data.train.inputs[:5], data.val.inputs)
    assert SyntheticECG.num_classes == 4 and SyntheticECG.num_wave_classes == 4
    assert data.sources == {"dataset": "SyntheticECG", "generator": "mtl_train.data.synthetic_ecg.generate_ecg",
                            "seed": 2, "split_seeds": {"train": 6, "val": 7, "test": 8}}


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_train": 0}, "dataset.num_train"),
        ({"num_val": -1}, "dataset.num_val"),
        ({"num_test": 0}, "dataset.num_test"),
        ({"sample_rate": 50}, "dataset.sample_rate"),
        ({"duration_s": 1.0}, "dataset.duration_s"),
        ({"noise_level": -0.5}, "dataset.noise_level"),
    ],
)
def test_config_errors(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SyntheticECG(**kwargs)
