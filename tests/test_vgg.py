"""Tests of srgan_jax.vgg: the VGG19 module, preprocessing, the feature loss and the loaders."""

import hashlib
import importlib.util
import io
import os
import urllib.error
import urllib.request

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srgan_jax import errors
from srgan_jax import losses
from srgan_jax import vgg

HAS_TORCH = importlib.util.find_spec('torch') is not None
EARLY = ('conv1_2', 'conv2_2')  # Features compared in the tests: cheap at 16x16.


def random_weights(seed=0, layers=vgg.LAYER_NAMES):
  """HWIO numpy weights with the real VGG19 shapes, He-scaled so activations stay O(1)."""
  rng = np.random.default_rng(seed)
  weights = {}
  for name in layers:
    kernel_shape, bias_shape = vgg.LAYER_SHAPES[name]
    scale = np.sqrt(2.0 / np.prod(kernel_shape[:3]))
    weights[name] = {
        'kernel': (rng.standard_normal(kernel_shape, np.float32) * scale).astype(np.float32),
        'bias': rng.standard_normal(bias_shape, np.float32) * 0.1}
  return weights


def write_npz(path, weights, **extra):
  np.savez(path, **{f'{name}/{part}': array for name, arrays in weights.items()
                    for part, array in arrays.items()}, **extra)


def write_keras_h5(path, weights, layout='keras1'):
  """A Keras legacy weights file: root attr layer_names (convs and pools), one group a layer.

  'keras1': datasets 'block1_conv1_W_1:0'/'block1_conv1_b_1:0' in the layer group, listed by
  the group's weight_names attr (the applications file). 'keras2': 'block1_conv1/kernel:0' in a
  subgroup. 'bare': 'keras2' without any weight_names or layer_names attrs.
  """
  with h5py.File(path, 'w') as f:
    layer_names = [b'input_1']
    f.create_group('input_1').attrs['weight_names'] = np.array([], dtype='S1')
    for name, arrays in weights.items():
      keras_name = vgg._KERAS_KEYS[name]
      stage = int(name[4])
      if name.endswith('_1') and stage > 1:
        pool = f'block{stage - 1}_pool'
        f.create_group(pool).attrs['weight_names'] = np.array([], dtype='S1')
        layer_names.append(pool.encode())
      layer_names.append(keras_name.encode())
      group = f.create_group(keras_name)
      if layout == 'keras1':
        names = [f'{keras_name}_W_1:0', f'{keras_name}_b_1:0']
      else:
        names = [f'{keras_name}/kernel:0', f'{keras_name}/bias:0']
      group[names[0]] = arrays['kernel']
      group[names[1]] = arrays['bias']
      if layout != 'bare':
        group.attrs['weight_names'] = [n.encode() for n in names]
    if layout != 'bare':
      f.attrs['layer_names'] = layer_names
      f.attrs['backend'] = b'tensorflow'


def bgr_first_layer(weights):
  """The same network for BGR input: conv1_1's input-channel axis reversed."""
  out = dict(weights)
  out['conv1_1'] = {'kernel': weights['conv1_1']['kernel'][:, :, ::-1, :],
                    'bias': weights['conv1_1']['bias']}
  return out


def torchvision_state_dict(weights):
  state = {}
  for name, arrays in weights.items():
    index = vgg.TORCHVISION_INDEX[name]
    state[f'features.{index}.weight'] = np.ascontiguousarray(arrays['kernel'].transpose(3, 2, 0, 1))
    state[f'features.{index}.bias'] = arrays['bias']
  return state


@pytest.fixture(scope='module')
def full_files(tmp_path_factory):
  """The same random full VGG19 weights as npz, Keras h5 (BGR conv1_1) and torchvision npz."""
  directory = tmp_path_factory.mktemp('vgg_full')
  weights = random_weights()
  paths = {'npz': directory / 'vgg19.npz', 'h5': directory / vgg.KERAS_FILENAME,
           'torchvision_npz': directory / 'vgg19_torchvision.npz'}
  write_npz(paths['npz'], weights)
  write_keras_h5(paths['h5'], bgr_first_layer(weights))
  np.savez(paths['torchvision_npz'], **torchvision_state_dict(weights))
  return weights, paths


def images(seed, shape=(2, 16, 16, 3)):
  # numpy's: jax.random.uniform would compile a sampler for each shape.
  return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32))


def raw_features(params, x, layers=EARLY, before_activation=False):
  return vgg.VGG19(layers, before_activation).apply({'params': params}, x)


def assert_features_close(a, b):
  """Equal up to float32 summation-order error, relative to each map's scale."""
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5 * np.abs(b[name]).max())


# --- Loading real layouts. ---------------------------------------------------------------------


def test_full_npz_loads_all_layers_with_torch_preprocessing(full_files):
  weights, paths = full_files
  params, preprocessing = vgg.load_vgg19_params(paths['npz'])
  assert preprocessing == 'torch'
  assert list(params) == list(vgg.LAYER_NAMES)
  for name in vgg.LAYER_NAMES:
    np.testing.assert_array_equal(params[name]['kernel'], weights[name]['kernel'])
    np.testing.assert_array_equal(params[name]['bias'], weights[name]['bias'])
    assert params[name]['kernel'].dtype == jnp.float32


def test_keras_file_is_the_npz_network_on_bgr_input(full_files):
  """The Keras file holds the npz network with conv1_1 taking BGR: raw module outputs agree
  when its input is the npz input with channels reversed, for every layer up to conv5_4."""
  _, paths = full_files
  npz_params, _ = vgg.load_vgg19_params(paths['npz'])
  keras_params, preprocessing = vgg.load_vgg19_params(paths['h5'])
  assert preprocessing == 'caffe'
  x = images(0) * 2.0
  layers = ('conv1_1', 'conv2_2', 'conv5_4')
  assert_features_close(raw_features(npz_params, x, layers),
                        raw_features(keras_params, x[..., ::-1], layers))


def test_caffe_pipeline_equals_npz_network_on_mean_subtracted_rgb(full_files):
  """End to end: caffe preprocessing + Keras weights == npz network on RGB*255 - RGB mean."""
  _, paths = full_files
  npz_params, _ = vgg.load_vgg19_params(paths['npz'])
  keras_params, preprocessing = vgg.load_vgg19_params(paths['h5'])
  x = images(1)
  rgb_mean = np.array(vgg.CAFFE_BGR_MEAN[::-1], np.float32)
  expected = raw_features(npz_params, (x + 1.0) * 127.5 - rgb_mean)
  got = vgg.make_feature_fn(EARLY, preprocessing=preprocessing)(keras_params, x)
  assert_features_close(got, expected)


def test_torchvision_npz_equals_npz(full_files):
  _, paths = full_files
  npz_params, _ = vgg.load_vgg19_params(paths['npz'])
  tv_params, preprocessing = vgg.load_vgg19_params(paths['torchvision_npz'])
  assert preprocessing == 'torch'
  jax.tree.map(np.testing.assert_array_equal, tv_params, npz_params)


def test_pth(full_files, tmp_path):
  weights, paths = full_files
  path = tmp_path / 'vgg19.pth'
  if HAS_TORCH:
    import torch  # pylint: disable=import-outside-toplevel
    torch.save({k: torch.from_numpy(v) for k, v in torchvision_state_dict(weights).items()}, path)
    params, preprocessing = vgg.load_vgg19_params(path)
    assert preprocessing == 'torch'
    jax.tree.map(np.testing.assert_array_equal, params, vgg.load_vgg19_params(paths['npz'])[0])
  else:
    path.write_bytes(b'not read')
    with pytest.raises(errors.VGGWeightsError, match='torch is not installed') as e:
      vgg.load_vgg19_params(path)
    assert 'np.savez' in str(e.value) and '.npz' in str(e.value)


@pytest.mark.parametrize('layout', ['keras1', 'keras2', 'bare'])
def test_keras_layouts_and_required_layers(tmp_path, layout):
  weights = random_weights(1, vgg.LAYER_NAMES[:4])
  path = tmp_path / 'w.h5'
  write_keras_h5(path, weights, layout)
  params, _ = vgg.load_vgg19_params(path, required_layers=['conv2_2'])
  jax.tree.map(np.testing.assert_array_equal, params, weights)
  with pytest.raises(errors.VGGWeightsError, match=r"conv3_1.*block3_conv1"):
    vgg.load_vgg19_params(path)


def test_keras_model_save_file_with_model_weights_group(tmp_path):
  weights = random_weights(2, ['conv1_1'])
  flat = tmp_path / 'flat.h5'
  write_keras_h5(flat, weights)
  path = tmp_path / 'model.h5'
  with h5py.File(flat, 'r') as src, h5py.File(path, 'w') as dst:
    src.copy(src['/'], dst, 'model_weights')
    for key, value in src.attrs.items():
      dst['model_weights'].attrs[key] = value
  params, _ = vgg.load_vgg19_params(path, required_layers=['conv1_1'])
  jax.tree.map(np.testing.assert_array_equal, params, weights)


def test_npz_preprocessing_entry(tmp_path):
  path = tmp_path / 'w.npz'
  write_npz(path, random_weights(3, ['conv1_1']), preprocessing=np.array('caffe'))
  assert vgg.load_vgg19_params(path, ['conv1_1'])[1] == 'caffe'


# --- Validation. -----------------------------------------------------------------------------


def test_missing_file_names_the_file_to_get(tmp_path):
  with pytest.raises(errors.VGGWeightsError) as e:
    vgg.load_vgg19_params(tmp_path / 'nope.h5')
  message = str(e.value)
  assert 'nope.h5' in message and vgg.KERAS_URL in message
  assert 'config.loss.vgg.weights' in message


def test_unknown_extension(tmp_path):
  path = tmp_path / 'vgg19.bin'
  path.write_bytes(b'')
  with pytest.raises(errors.VGGWeightsError, match=r"unknown VGG19 weights format '\.bin'"):
    vgg.load_vgg19_params(path)


def test_wrong_layer_names(tmp_path):
  npz = tmp_path / 'w.npz'
  np.savez(npz, **{'block1_conv1/kernel': np.zeros((3, 3, 3, 64), np.float32)})
  with pytest.raises(errors.VGGWeightsError, match=r"lacks VGG19 layers \['conv1_1'\]") as e:
    vgg.load_vgg19_params(npz, ['conv1_1'])
  assert 'block1_conv1/kernel' in str(e.value)  # What the file holds.
  h5 = tmp_path / 'w.h5'
  with h5py.File(h5, 'w') as f:
    f.create_group('conv1_1')['kernel:0'] = np.zeros((3, 3, 3, 64), np.float32)
  with pytest.raises(errors.VGGWeightsError, match=r"lacks VGG19 layers \['conv1_1'\].*block1_conv1"):
    vgg.load_vgg19_params(h5, ['conv1_1'])


def test_missing_layers_are_all_named(tmp_path):
  path = tmp_path / 'w.npz'
  write_npz(path, random_weights(4, vgg.LAYER_NAMES[:2]))
  with pytest.raises(errors.VGGWeightsError, match=r"\['conv2_1', 'conv2_2'\]"):
    vgg.load_vgg19_params(path, required_layers=['conv2_2'])


def test_kernel_without_bias(tmp_path):
  path = tmp_path / 'w.npz'
  np.savez(path, **{'conv1_1/kernel': np.zeros((3, 3, 3, 64), np.float32)})
  with pytest.raises(errors.VGGWeightsError, match="conv1_1 needs both 'conv1_1/kernel' and"):
    vgg.load_vgg19_params(path, ['conv1_1'])


def test_wrong_shapes(tmp_path):
  weights = random_weights(5, vgg.LAYER_NAMES[:3])
  weights['conv2_1']['kernel'] = np.zeros((3, 3, 64, 64), np.float32)  # Present, not required.
  path = tmp_path / 'w.npz'
  write_npz(path, weights)
  expected = r'conv2_1 kernel has shape \(3, 3, 64, 64\), expected \(3, 3, 64, 128\)'
  with pytest.raises(errors.VGGWeightsError, match=expected):
    vgg.load_vgg19_params(path, required_layers=['conv1_2'])
  h5 = tmp_path / 'w.h5'
  weights = random_weights(5, ['conv1_1'])
  weights['conv1_1']['bias'] = np.zeros((32,), np.float32)
  write_keras_h5(h5, weights)
  expected = r'conv1_1 bias has shape \(32,\), expected \(64,\)'
  with pytest.raises(errors.VGGWeightsError, match=expected):
    vgg.load_vgg19_params(h5, ['conv1_1'])


def test_unknown_npz_preprocessing(tmp_path):
  path = tmp_path / 'w.npz'
  write_npz(path, random_weights(6, ['conv1_1']), preprocessing=np.array('tf'))
  with pytest.raises(errors.VGGWeightsError, match="'preprocessing' must be one of"):
    vgg.load_vgg19_params(path, ['conv1_1'])


# --- resolve_weights. --------------------------------------------------------------------------


def offline(*args, **kwargs):
  raise urllib.error.URLError('no network')


def test_resolve_explicit_path(tmp_path):
  path = tmp_path / 'w.npz'
  path.write_bytes(b'')
  assert vgg.resolve_weights(str(path)) == str(path)
  with pytest.raises(errors.VGGWeightsError, match='config.loss.vgg.weights'):
    vgg.resolve_weights(str(tmp_path / 'missing.npz'))


def test_resolve_empty_offline_names_url_and_config_field(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(errors.VGGWeightsError) as e:
    vgg.resolve_weights('', cache_dir=str(tmp_path))
  message = str(e.value)
  assert vgg.KERAS_URL in message and 'config.loss.vgg.weights' in message
  assert str(tmp_path) in message
  assert os.listdir(tmp_path) == []


def test_resolve_empty_uses_cache_without_downloading(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  cached = tmp_path / vgg.KERAS_FILENAME
  cached.write_bytes(b'cached')
  assert vgg.resolve_weights('', cache_dir=str(tmp_path)) == str(cached)


def test_resolve_empty_downloads_once_atomically(tmp_path, monkeypatch):
  payload = b'pretend weights'
  calls = []

  def urlopen(url, timeout):
    calls.append((url, timeout))
    return io.BytesIO(payload)

  monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
  cache = tmp_path / 'cache'
  with pytest.raises(errors.VGGWeightsError, match='MD5'):  # Corrupt download: nothing kept.
    vgg.resolve_weights('', cache_dir=str(cache))
  assert os.listdir(cache) == []
  monkeypatch.setattr(vgg, 'KERAS_MD5', hashlib.md5(payload).hexdigest())
  path = vgg.resolve_weights('', cache_dir=str(cache))
  assert path == str(cache / vgg.KERAS_FILENAME)
  assert os.listdir(cache) == [vgg.KERAS_FILENAME]
  assert (cache / vgg.KERAS_FILENAME).read_bytes() == payload
  assert vgg.resolve_weights('', cache_dir=str(cache)) == path
  assert calls == [(vgg.KERAS_URL, 10)] * 2


# --- The module and preprocessing. -------------------------------------------------------------


def hand_params():
  """conv1_1: 3x3 box sum of input channel 0 into output 0, bias -30; conv1_2: identity on
  channel 0; conv2_1: identity on channel 0, bias -20. Every other weight is 0."""
  params = {name: {'kernel': np.zeros(vgg.LAYER_SHAPES[name][0], np.float32),
                   'bias': np.zeros(vgg.LAYER_SHAPES[name][1], np.float32)}
            for name in vgg.LAYER_NAMES[:3]}
  params['conv1_1']['kernel'][:, :, 0, 0] = 1.0
  params['conv1_1']['bias'][0] = -30.0
  params['conv1_2']['kernel'][1, 1, 0, 0] = 1.0
  params['conv2_1']['kernel'][1, 1, 0, 0] = 1.0
  params['conv2_1']['bias'][0] = -20.0
  return params


def test_known_feature_maps():
  x = np.zeros((1, 4, 4, 3), np.float32)
  x[0, :, :, 0] = np.arange(16).reshape(4, 4)
  # 3x3 box sums of arange(16) with zero (SAME) padding, minus 30.
  conv1_1 = np.array([[10, 18, 24, 18], [27, 45, 54, 39], [51, 81, 90, 63], [42, 66, 72, 50]],
                     np.float32) - 30.0
  relu1_1 = np.maximum(conv1_1, 0.0)
  conv2_1 = np.array([[15, 24], [51, 60]], np.float32) - 20.0  # 2x2 max-pool of relu1_2.
  layers = ('conv1_1', 'conv2_1')
  before = raw_features(hand_params(), x, layers, before_activation=True)
  after = raw_features(hand_params(), x, layers, before_activation=False)
  np.testing.assert_array_equal(before['conv1_1'][0, :, :, 0], conv1_1)
  np.testing.assert_array_equal(after['conv1_1'][0, :, :, 0], relu1_1)
  np.testing.assert_array_equal(before['conv2_1'][0, :, :, 0], conv2_1)
  np.testing.assert_array_equal(after['conv2_1'][0, :, :, 0], np.maximum(conv2_1, 0.0))
  for features in (before, after):
    assert features['conv1_1'].shape == (1, 4, 4, 64)
    assert features['conv2_1'].shape == (1, 2, 2, 128)
    assert not np.any(features['conv1_1'][..., 1:]) and not np.any(features['conv2_1'][..., 1:])


def test_only_layers_up_to_the_deepest_exist():
  variables = jax.eval_shape(vgg.VGG19(('conv2_2', 'conv1_1')).init, jax.random.key(0),
                             jnp.zeros((1, 16, 16, 3)))
  assert list(variables['params']) == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2']
  assert variables['params']['conv2_2']['kernel'].shape == (3, 3, 128, 128)
  with pytest.raises(ValueError, match='relu3_4'):
    vgg.make_feature_fn(['relu3_4'])


def test_random_params_shapes_he_scale_and_key():
  params = vgg.random_vgg19_params(jax.random.key(0))
  assert jax.tree.map(lambda a: a.shape, params) == {
      name: {'kernel': kernel, 'bias': bias} for name, (kernel, bias) in vgg.LAYER_SHAPES.items()}
  for name, (kernel_shape, _) in vgg.LAYER_SHAPES.items():
    kernel = np.asarray(params[name]['kernel'])
    assert kernel.dtype == np.float32 and not np.any(params[name]['bias'])
    he_std = np.sqrt(2.0 / np.prod(kernel_shape[:-1]))  # He et al. 2015, fan in.
    assert abs(kernel.std() / he_std - 1) < 0.05, (name, kernel.std(), he_std)
    assert abs(kernel.mean()) < 0.05 * he_std, name
  # The same key draws the same weights, another key others.
  again = vgg.random_vgg19_params(jax.random.key(0), ['conv1_2'])
  other = vgg.random_vgg19_params(jax.random.PRNGKey(1), ['conv1_2'])
  assert list(again) == ['conv1_1', 'conv1_2']
  np.testing.assert_array_equal(again['conv1_2']['kernel'], params['conv1_2']['kernel'])
  assert not np.allclose(other['conv1_2']['kernel'], params['conv1_2']['kernel'])


def test_full_params_tree_and_subset_give_the_same_features(full_files):
  params, _ = vgg.load_vgg19_params(full_files[1]['npz'])
  subset = vgg.subset_params(params, EARLY)
  assert list(subset) == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2']
  x = images(2)
  assert_features_close(raw_features(params, x), raw_features(subset, x))
  with pytest.raises(errors.VGGWeightsError, match='conv3_1'):
    vgg.subset_params(subset, ['conv3_1'])


def test_preprocess():
  x = images(3, (2, 4, 4, 3))
  rgb01 = (x + 1.0) / 2.0
  torch = vgg.preprocess(x, 'torch')
  np.testing.assert_allclose(torch[..., 1], (rgb01[..., 1] - 0.456) / 0.224, rtol=1e-6, atol=1e-6)
  caffe = vgg.preprocess(x, 'caffe')
  np.testing.assert_allclose(caffe[..., 0], rgb01[..., 2] * 255.0 - 103.939, rtol=1e-6, atol=1e-4)
  np.testing.assert_allclose(caffe[..., 2], rgb01[..., 0] * 255.0 - 123.68, rtol=1e-6, atol=1e-4)
  grey = vgg.preprocess(x[..., :1], 'torch', resize_to=8)
  assert grey.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(grey[..., 0] * 0.229 + 0.485, grey[..., 2] * 0.225 + 0.406,
                             atol=1e-6)
  with pytest.raises(ValueError, match='preprocessing'):
    vgg.preprocess(x, 'tf')


def test_feature_fn_on_mnist_sized_grey_images():
  params = vgg.random_vgg19_params(jax.random.key(1), ['conv2_2'])
  grey = images(4, (2, 28, 28, 1))
  assert vgg.make_feature_fn(['conv2_2'])(params, grey)['conv2_2'].shape == (2, 14, 14, 128)
  resized = vgg.make_feature_fn(['conv2_2'], resize_to=32)(params, grey)
  assert resized['conv2_2'].shape == (2, 16, 16, 128)


# --- The loss. ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def loss_params():
  return vgg.random_vgg19_params(jax.random.key(2), EARLY)


def _vgg_loss(params, sr, hr, weights, criterion='mse', **feature_kwargs):
  """The VGG content loss as the training step computes it (losses.content_loss)."""
  fn = vgg.make_feature_fn(tuple(weights), **feature_kwargs)
  return losses.content_loss('vgg', sr, hr, lambda x: fn(params, x), weights, criterion)


@pytest.mark.parametrize('criterion', ['mse', 'l1'])
def test_loss_zero_for_identical_positive_for_different(loss_params, criterion):
  weights = {'conv1_2': 0.5, 'conv2_2': 2.0}
  hr, sr = images(5), images(6)
  assert float(_vgg_loss(loss_params, hr, hr, weights, criterion)) == 0.0
  loss = _vgg_loss(loss_params, sr, hr, weights, criterion)
  assert float(loss) > 0.0
  features = vgg.make_feature_fn(EARLY)
  f_sr, f_hr = features(loss_params, sr), features(loss_params, hr)
  distance = np.square if criterion == 'mse' else np.abs
  expected = sum(w * np.mean(distance(f_sr[k] - f_hr[k])) for k, w in weights.items())
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_loss_gradients_reach_sr_only(loss_params):
  hr, sr = images(7), images(8)
  kwargs = dict(before_activation=True, preprocessing='caffe')
  sr_grad, hr_grad = jax.grad(
      lambda s, h: _vgg_loss(loss_params, s, h, {'conv2_2': 1.0}, **kwargs),
      argnums=(0, 1))(sr, hr)
  assert np.all(np.isfinite(sr_grad)) and np.any(sr_grad != 0.0)
  assert not np.any(hr_grad)
