"""Tests for srgan_jax.metrics: PSNR/SSIM wrappers, the SR literature's image_psnr_ssim (against
values computed by hand and scikit-image) and the Fréchet (digit-FID) pieces."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import color as sk_color
from skimage import metrics as sk_metrics

from srgan_jax import metrics


def _images(n=3, h=28, w=28, c=1, seed=0):
  return np.random.default_rng(seed).uniform(0.2, 0.8, (n, h, w, c)).astype(np.float32)


def test_psnr_identical_is_inf_or_large():
  a = _images()
  v = np.asarray(metrics.psnr(a, a))
  assert v.shape == (3,)
  assert np.all(np.isinf(v) | (v > 100))


def test_psnr_constant_offset_is_20db():
  a = _images()
  v = np.asarray(metrics.psnr(a, a + 0.1))
  np.testing.assert_allclose(v, 20.0, atol=1e-3)


def test_psnr_crop_border_and_jit():
  a = _images()
  b = a.copy()
  b[:, :2] += 0.5  # error only in the top border rows.
  assert np.all(np.isinf(np.asarray(metrics.psnr(a, b, crop_border=2))))
  f = jax.jit(metrics.psnr, static_argnames='crop_border')
  np.testing.assert_allclose(np.asarray(f(a, a + 0.1, crop_border=4)), 20.0, atol=1e-3)


def test_ssim_identical_noisy_and_crop():
  a = _images(c=3)
  np.testing.assert_allclose(np.asarray(metrics.ssim(a, a)), 1.0, atol=1e-5)
  noisy = np.clip(a + np.random.default_rng(1).normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
  v = np.asarray(metrics.ssim(a, noisy))
  assert v.shape == (3,) and np.all(v < 0.99) and np.all(v > -1)
  vc = np.asarray(metrics.ssim(a, noisy, crop_border=4))  # 20x20 after cropping.
  assert vc.shape == (3,) and np.all(vc < 0.99)
  f = jax.jit(metrics.ssim, static_argnames='crop_border')
  np.testing.assert_allclose(np.asarray(f(a, noisy, crop_border=4)), vc, atol=1e-5)
  with pytest.raises(ValueError):
    metrics.ssim(a, a, crop_border=9)  # 10x10 < 11x11 window.


# --------------------------------------------------------------------------------------
# image_psnr_ssim: uint8 pairs, Y channel (BT.601, [16, 235]) or RGB, crop_border.


def _photo_pair(h=37, w=52, c=3, noise=12, seed=0):
  """A smooth uint8 'photograph' (gradients plus a blob) and a noisy copy of it."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([120 + 90 * np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(c)], -1)
  hr = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
  sr = np.clip(hr + rng.normal(0, noise, hr.shape), 0, 255).astype(np.uint8)
  return (sr, hr) if c > 1 else (sr[..., 0], hr[..., 0])


def _skimage_valid_ssim(a, b):
  """scikit-image's SSIM map (Gaussian 11x11, sigma 1.5, population covariance) averaged over
  the positions whose window lies inside the image: its own mean also averages the 5-pixel
  border, where it reflects the image at the edge, and the SR convention ('valid') does not."""
  _, full = sk_metrics.structural_similarity(
      a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
      full=True)
  return float(full[5:-5, 5:-5].mean())


def test_rgb_to_y_of_pure_colours_by_hand():
  pixels = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0],
                     [128, 128, 128]], np.uint8)
  # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, the weights summing to 219.
  expected = [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0, 16 + 219 * 128 / 255]
  np.testing.assert_allclose(metrics.rgb_to_y(pixels), expected, rtol=0, atol=1e-9)
  # The same as scikit-image's rgb2ycbcr (MATLAB's convention), channel Y.
  np.testing.assert_allclose(metrics.rgb_to_y(pixels),
                             sk_color.rgb2ycbcr(pixels[None])[0, :, 0], atol=1e-9)


@pytest.mark.parametrize('y_channel', [True, False])
def test_constant_offset_psnr_and_constant_ssim_are_analytic(y_channel):
  hr = np.full((20, 24, 3), 100, np.uint8)
  sr = hr + np.uint8(5)
  psnr, ssim = metrics.image_psnr_ssim(sr, hr, crop_border=2, y_channel=y_channel)
  # An offset of d in every channel is an offset of d * 219 / 255 in Y.
  d = 5 * 219 / 255 if y_channel else 5
  assert psnr == pytest.approx(20 * math.log10(255 / d), abs=1e-9)
  # Constant images: no variance, so SSIM is the luminance term alone.
  mu_sr, mu_hr = (16 + 219 * 105 / 255, 16 + 219 * 100 / 255) if y_channel else (105, 100)
  c1 = (0.01 * 255) ** 2
  assert ssim == pytest.approx((2 * mu_sr * mu_hr + c1) / (mu_sr ** 2 + mu_hr ** 2 + c1),
                               abs=1e-9)
  assert metrics.image_psnr_ssim(hr, hr, crop_border=0, y_channel=y_channel) == (math.inf, 1.0)


def test_rgb_psnr_pools_the_squared_error_of_all_channels():
  hr = np.full((16, 16, 3), 50, np.uint8)
  sr = hr.copy()
  sr[..., 0] += 3  # Red off by 3: MSE over R, G, B is 9 / 3 = 3; Y off by 3 * 65.481 / 255.
  psnr_rgb, _ = metrics.image_psnr_ssim(sr, hr, crop_border=0, y_channel=False)
  assert psnr_rgb == pytest.approx(10 * math.log10(255 ** 2 / 3), abs=1e-9)
  psnr_y, _ = metrics.image_psnr_ssim(sr, hr, crop_border=0)
  assert psnr_y == pytest.approx(20 * math.log10(255 / (3 * 65.481 / 255)), abs=1e-9)


def test_crop_border_removes_the_edges():
  sr, hr = _photo_pair()
  sr = hr.copy()
  sr[:3] = 0  # Wrong only in the top 3 rows and the left 3 columns.
  sr[:, :3] = 255
  assert metrics.image_psnr_ssim(sr, hr, crop_border=3) == (math.inf, 1.0)
  psnr, ssim = metrics.image_psnr_ssim(sr, hr, crop_border=2)
  assert psnr < 40 and ssim < 1.0


@pytest.mark.parametrize('shape, crop_border', [((37, 52, 3), 4), ((29, 23, 3), 0),
                                                ((33, 40, 1), 2), ((31, 26), 3)])
def test_y_channel_matches_scikit_image(shape, crop_border):
  c = shape[2] if len(shape) == 3 else 1
  sr, hr = _photo_pair(shape[0], shape[1], c, seed=shape[0])
  if len(shape) == 3 and c == 1:
    sr, hr = sr[..., None], hr[..., None]
  psnr, ssim = metrics.image_psnr_ssim(sr, hr, crop_border=crop_border)
  b = crop_border
  cut = (lambda x: x[b:-b, b:-b]) if b else (lambda x: x)
  if c == 3:  # Y by scikit-image's own MATLAB-convention conversion.
    ref_sr, ref_hr = (cut(sk_color.rgb2ycbcr(x)[..., 0]) for x in (sr, hr))
  else:  # A greyscale image is its own Y.
    ref_sr, ref_hr = (cut(x.reshape(x.shape[:2]).astype(np.float64)) for x in (sr, hr))
  # Both are float64 of the same formulas: agreement to rounding.
  assert psnr == pytest.approx(
      sk_metrics.peak_signal_noise_ratio(ref_hr, ref_sr, data_range=255), rel=1e-12)
  assert ssim == pytest.approx(_skimage_valid_ssim(ref_sr, ref_hr), abs=1e-12)
  assert 20 < psnr < 40 and 0.3 < ssim < 0.999  # A real comparison, not a degenerate one.


def test_rgb_channels_match_scikit_image():
  sr, hr = _photo_pair(41, 30)
  psnr, ssim = metrics.image_psnr_ssim(sr, hr, crop_border=4, y_channel=False)
  s, h = sr[4:-4, 4:-4], hr[4:-4, 4:-4]
  assert psnr == pytest.approx(sk_metrics.peak_signal_noise_ratio(h, s, data_range=255),
                               rel=1e-12)
  per_channel = [_skimage_valid_ssim(s[..., k].astype(np.float64), h[..., k].astype(np.float64))
                 for k in range(3)]
  assert ssim == pytest.approx(np.mean(per_channel), abs=1e-12)
  # On RGB the channels' errors count alone; on Y they partly average out.
  assert psnr != pytest.approx(metrics.image_psnr_ssim(sr, hr, crop_border=4)[0], abs=0.1)


def test_image_psnr_ssim_rejects_what_it_cannot_score():
  sr, hr = _photo_pair()
  with pytest.raises(ValueError, match=r'uint8.*to_uint8'):
    metrics.image_psnr_ssim(sr / 255.0, hr, crop_border=0)
  with pytest.raises(ValueError, match='shapes differ'):
    metrics.image_psnr_ssim(sr[:-1], hr, crop_border=0)
  with pytest.raises(ValueError, match=r'alpha'):
    metrics.image_psnr_ssim(np.zeros((20, 20, 4), np.uint8), np.zeros((20, 20, 4), np.uint8),
                            crop_border=0)
  with pytest.raises(ValueError, match='crop_border must be an integer'):
    metrics.image_psnr_ssim(sr, hr, crop_border=-1)
  with pytest.raises(ValueError, match=r'SSIM needs at least 11x11'):
    metrics.image_psnr_ssim(sr, hr, crop_border=14)  # 37x52 -> 9x24.
  metrics.image_psnr_ssim(sr, hr, crop_border=13)  # 11x26: one window high, enough.


def test_to_uint8_rounds_as_saved_files():
  unit = np.array([0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.2, -0.1], np.float32)
  # np.round: half to even (0.5 -> 0, 1.5 -> 2, 127.5 -> 128), then clipped to [0, 255].
  np.testing.assert_array_equal(metrics.to_uint8(unit), [0, 0, 2, 128, 255, 255, 0])
  assert metrics.to_uint8(unit).dtype == np.uint8
  np.testing.assert_array_equal(metrics.to_uint8(np.array([-1.0, 0.0, 1.0]), (-1, 1)),
                                [0, 128, 255])
  jitted = jax.jit(lambda x: metrics.to_uint8(x, (-1, 1)))(jnp.array([-1.0, 0.0, 1.0]))
  np.testing.assert_array_equal(np.asarray(jitted), [0, 128, 255])
  already = np.array([3, 7], np.uint8)
  assert metrics.to_uint8(already) is already
  with pytest.raises(ValueError, match='low < high'):
    metrics.to_uint8(unit, (1, 0))


def _fid(a, b):
  """digit-FID as evaluate computes it: streamed moments of each feature set."""
  stats = [metrics.FeatureMoments().update(x).statistics() for x in (a, b)]
  return metrics.frechet_distance(*stats[0], *stats[1])


def test_frechet_self_is_zero():
  f = np.random.default_rng(0).normal(size=(500, 16))
  assert _fid(f, f) < 1e-6


def test_frechet_grows_with_noise():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(2000, 8))
  noise = rng.normal(size=f.shape)
  values = [_fid(f, f + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
  assert values[0] < 1e-6
  assert all(x < y for x, y in zip(values, values[1:])), values


def test_frechet_diagonal_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_general_matches_eig_reference():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  s1, s2 = a @ a.T, b @ b.T
  # Reference: eigenvalues of S1 S2 are real and >= 0.
  ref_tr = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
  assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(ref_tr, rel=1e-8)


def test_frechet_singular_covariances():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(5, 32))  # n < d: rank-deficient covariance.
  assert _fid(f, f) < 1e-6


def test_feature_moments_match_numpy():
  rng = np.random.default_rng(0)
  batches = [rng.normal(3.0, 2.0, size=(n, 10)) for n in (7, 32, 1, 20)]
  acc = metrics.FeatureMoments()
  for b in batches:
    acc.update(b.astype(np.float32))
  allf = np.concatenate([b.astype(np.float32) for b in batches]).astype(np.float64)
  mu, sigma = acc.statistics()
  assert acc.count == len(allf)
  np.testing.assert_allclose(mu, allf.mean(0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(allf, rowvar=False), rtol=1e-9, atol=1e-10)


def test_feature_moments_mask():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(16, 4))
  mask = np.arange(16) < 11
  acc = metrics.FeatureMoments(dim=4).update(f, mask=mask)
  mu, sigma = acc.statistics()
  np.testing.assert_allclose(mu, f[:11].mean(0))
  np.testing.assert_allclose(sigma, np.cov(f[:11], rowvar=False), atol=1e-12)
