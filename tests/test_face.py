"""The synthetic portrait renderer: batching, determinism, mouth/eyes/pose react to the motion vector."""

import math

import numpy as np
import pytest
import torch

import actorcast.models.data.face as face
from actorcast.models.data.face import Identity, feature_points, render, sample_identities
from actorcast.models.data.params import N_PARAMS, PARAM_INDEX, PARAM_RANGES, neutral_params
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.data.seeds import MAX_SEED, check_seed

SCLERA = torch.tensor([0.96, 0.95, 0.92])
INNER_MOUTH = torch.tensor([0.28, 0.06, 0.07])
SEEDS = [0, 1, 2, 3, 4, 5, 6, 7]


def _params(**values: float) -> torch.Tensor:
    """One neutral frame with some parameters set, (1, 16)."""
    p = neutral_params(1)
    for name, v in values.items():
        p[0, PARAM_INDEX[name]] = v
    return p


def _random_params(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([r[0] for r in PARAM_RANGES])
    hi = torch.tensor([r[1] for r in PARAM_RANGES])
    return lo + (hi - lo) * torch.rand(n, N_PARAMS, generator=g)


def _near(img: torch.Tensor, colour: torch.Tensor, tol: float) -> torch.Tensor:
    """(B, H, W) mask of pixels within tol of colour in every channel."""
    return ((img - colour.view(1, 3, 1, 1)).abs() <= tol).all(dim=1)


def _box(mask: torch.Tensor, cx: float, cy: float, hw: int, hh: int) -> torch.Tensor:
    """Pixels of a (H, W) mask in the box around (cx, cy) of half sizes (hw, hh)."""
    x, y = int(round(cx)), int(round(cy))
    return mask[y - hh:y + hh + 1, x - hw:x + hw + 1]


def test_renders_a_batch_in_one_call() -> None:
    ids = sample_identities(SEEDS)
    params = _random_params(len(SEEDS), seed=1)
    out = render(ids, params, 64)
    assert out.shape == (8, 3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # one identity broadcasts over all frames and equals rendering the frames one by one
    one = render(ids.index(2), params, 64)
    singles = torch.cat([render(ids.index(2), params[i:i + 1], 64) for i in range(len(params))])
    assert torch.allclose(one, singles, atol=1e-5)
    assert torch.allclose(one[2], out[2], atol=1e-5)
    # frames differ from each other (the motion vector does something)
    assert (one[0] - one[1]).abs().mean() > 0.01


def test_deterministic_by_seed_and_distinct_across_seeds() -> None:
    a, b = sample_identities([11, 12]), sample_identities([11, 12])
    assert torch.equal(a.as_vector(), b.as_vector())
    p = neutral_params(2)
    assert torch.equal(render(a, p, 96), render(b, p, 96))
    assert not torch.equal(a.index(0).as_vector(), a.index(1).as_vector())
    imgs = render(sample_identities(SEEDS), neutral_params(len(SEEDS)), 64)
    for i in range(len(SEEDS) - 1):
        assert (imgs[i] - imgs[i + 1]).abs().mean() > 0.03
    many = sample_identities(list(range(2000))).as_vector()
    assert torch.unique(many, dim=0).shape[0] == 2000


def test_identity_helpers() -> None:
    ids = sample_identities([3, 4, 5])
    assert len(ids) == 3 and len(ids.index(1)) == 1 and len(ids.index(slice(0, 2))) == 2
    joined = Identity.cat([ids.index(0), ids.index(slice(1, 3))])
    assert torch.equal(joined.as_vector(), ids.as_vector())
    assert torch.equal(ids.index(-1).as_vector(), ids.index(2).as_vector())
    assert ids.to("cpu").skin.shape == (3, 3)
    with pytest.raises(InputError):
        ids.index(3)
    for bad in ([], [-1], [1.5], 7):
        with pytest.raises(ConfigError):
            sample_identities(bad)


def test_one_seed_rule_with_the_callers_error() -> None:
    """Identities, performances, offers and renders share check_seed: a whole number in 0..MAX_SEED, no bool."""
    assert check_seed(MAX_SEED) == MAX_SEED and type(check_seed(np.int64(7))) is int
    for bad in (-1, MAX_SEED + 1, 1.5, True, "7", None):
        with pytest.raises(ConfigError, match="seed must be a whole number"):
            check_seed(bad)
    with pytest.raises(InputError, match=r"^identity 1\.5 must be a whole number in 0\.\."):
        check_seed(1.5, "identity 1.5", InputError)


@pytest.mark.parametrize("size,min_open", [(64, 5), (128, 40)])
def test_mouth_opens_with_jaw(size: int, min_open: int) -> None:
    ids = sample_identities(SEEDS)
    n = len(SEEDS)
    closed = render(ids, _params(jaw_open=0.0).expand(n, -1), size)
    half = render(ids, _params(jaw_open=0.5).expand(n, -1), size)
    opened = render(ids, _params(jaw_open=1.0).expand(n, -1), size)
    mouth = feature_points(ids, neutral_params(n), size)["mouth"]
    hw, hh = round(0.16 * size), round(0.12 * size)
    for i in range(n):
        cx, cy = mouth[i].tolist()
        counts = [int(_box(_near(img[i:i + 1], INNER_MOUTH, 0.05)[0], cx, cy + 0.04 * size, hw, hh).sum())
                  for img in (closed, half, opened)]
        assert counts[0] <= 3, f"seed {SEEDS[i]}: inner mouth visible with the jaw closed: {counts}"
        assert counts[2] >= min_open, f"seed {SEEDS[i]}: mouth barely opens: {counts}"
        assert counts[0] <= counts[1] < counts[2]
        change = [float(_box((img[i] - closed[i]).abs().amax(0), cx, cy + 0.04 * size, hw, hh).mean())
                  for img in (half, opened)]
        assert 0.005 < change[0] < change[1] and change[1] > 0.02


def test_blink_closes_the_eyes() -> None:
    ids = sample_identities(SEEDS)
    n = len(SEEDS)
    size = 128
    pts = feature_points(ids, neutral_params(n), size)
    frames = {name: render(ids, _params(**kw).expand(n, -1), size) for name, kw in
              (("open", {}), ("both", {"blink_l": 1.0, "blink_r": 1.0}), ("left", {"blink_l": 1.0}))}
    for i in range(n):
        def sclera(name: str, eye: str) -> int:
            mask = _near(frames[name][i:i + 1], SCLERA, 0.06)[0]
            return int(_box(mask, *pts[eye][i].tolist(), hw=12, hh=8).sum())
        assert sclera("open", "eye_l") >= 6 and sclera("open", "eye_r") >= 6
        assert sclera("both", "eye_l") == 0 and sclera("both", "eye_r") == 0
        # blink_l is the subject's left eye, on the image's right
        assert sclera("left", "eye_r") == 0 and sclera("left", "eye_l") >= 6


def _sclera_centroids(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) centroids of the sclera pixels in the left and right half of the face of one frame."""
    mask = _near(img[None], SCLERA, 0.06)[0].float()
    ys, xs = torch.nonzero(mask, as_tuple=True)
    mid = xs.float().mean()
    left, right = xs < mid, xs >= mid
    c = lambda m: torch.stack([xs[m].float().mean(), ys[m].float().mean()])  # noqa: E731
    return c(left), c(right)


def test_head_pose_moves_the_face() -> None:
    ids = sample_identities([2])
    size = 128
    poses = torch.cat([_params(), _params(head_yaw=0.5), _params(head_yaw=-0.5), _params(head_roll=0.3),
                       _params(head_scale=0.8), _params(head_scale=1.2), _params(head_pitch=0.4)])
    imgs = render(ids, poses, size)
    (l0, r0), (l1, r1), (l2, r2) = (_sclera_centroids(imgs[i]) for i in range(3))
    centre = (l0 + r0) / 2
    assert (l1 + r1)[0] / 2 > centre[0] + 5 and (l2 + r2)[0] / 2 < centre[0] - 5
    # turned heads foreshorten: the eyes come closer together
    assert (r1 - l1)[0] < 0.95 * (r0 - l0)[0]
    lr, rr = _sclera_centroids(imgs[3])
    angle = math.atan2(float(rr[1] - lr[1]), float(rr[0] - lr[0]))
    assert abs(angle - 0.3) < 0.08
    (ls, rs), (lb, rb) = _sclera_centroids(imgs[4]), _sclera_centroids(imgs[5])
    assert abs(float((rb - lb)[0] / (rs - ls)[0]) - 1.5) < 0.15
    assert _sclera_centroids(imgs[6])[0][1] > l0[1] + 3               # nodding down lowers the eyes
    # the head (everything that is not the background gradient) covers more of the image when larger
    top = slice(0, size // 2)
    t = ((torch.arange(size) + 0.5) / size).view(1, size, 1)
    grad = ids.bg_top.view(3, 1, 1) + (ids.bg_bottom - ids.bg_top).view(3, 1, 1) * t
    area = [int(((imgs[i] - grad).abs().amax(0)[top] > 0.02).sum()) for i in (4, 0, 5)]
    assert area[0] < area[1] < area[2] and area[2] > 1.35 * area[0]


def test_patches_hold_their_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-frame feature patches are large enough: growing them changes no pixel, even at extreme poses."""
    ids = sample_identities(SEEDS)
    corners = torch.tensor([[PARAM_RANGES[i][k % 2 if i >= 10 else 1] for i in range(N_PARAMS)] for k in range(2)])
    params = torch.cat([_random_params(6, seed=3), corners])
    params[:, PARAM_INDEX["head_scale"]] = 1.2
    base = render(ids, params, 96)
    monkeypatch.setattr(face, "PATCH_MARGIN", 3.0)
    monkeypatch.setattr(face, "HEAD_MARGIN", 2.0)
    assert torch.allclose(render(ids, params, 96), base, atol=1e-5)


def test_sizes_and_bad_input() -> None:
    ids = sample_identities([9])
    assert render(ids, neutral_params(1), 64).shape == (1, 3, 64, 64)
    big = render(ids, _params(jaw_open=1.0), 512)
    assert big.shape == (1, 3, 512, 512) and 0.0 <= float(big.min()) and float(big.max()) <= 1.0
    for bad in (32, 63, 513, 1000, 128.0, "128", True, None):
        with pytest.raises(ConfigError, match="between 64 and 512"):
            render(ids, neutral_params(1), bad)
    with pytest.raises(InputError, match="params"):
        render(ids, torch.zeros(2, 5), 64)
    with pytest.raises(InputError, match="NaN"):
        render(ids, torch.full((1, N_PARAMS), float("nan")), 64)
    with pytest.raises(InputError, match="identity batch"):
        render(sample_identities([1, 2]), neutral_params(3), 64)
