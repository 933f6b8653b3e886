"""VGG19 feature maps for the perceptual (content) loss, with loaders for real weight files.

The SRGAN paper (Ledig et al. 2017, Sec. 2.2.1) replaces the pixel MSE by an MSE between
feature maps of an ImageNet-pretrained VGG19: "VGG54" is the map of conv5_4 after its ReLU,
"VGG22" that of conv2_2. ESRGAN/BasicSR take the maps before the ReLU instead, where they are
less sparse; `before_activation` picks either.

Spatial size matters. The paper computed VGG54 on 96x96 HR crops, so conv5_4 (after four
2x2 max-pools) saw 6x6 positions. MNIST digits are 28x28: 28 -> 14 -> 7 -> 3 -> 1, so conv5_4
sees a single 1x1 position per image unless the images are resized first (`resize_to=96`
gives the paper's 6x6, `resize_to=224` the ImageNet 14x14, at (resize_to/28)^2 times the cost).

The weights are never trained here. Three file formats are read, all to the same parameter
tree {'conv1_1': {'kernel': (3, 3, in, out) HWIO, 'bias': (out,)}, ...}:
  * the Keras applications file vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 (converted
    from the original Caffe model, so its input is BGR in [0, 255] minus the BGR mean:
    preprocessing 'caffe'); `resolve_weights('')` downloads it once into a cache directory;
  * .npz with keys 'conv1_1/kernel', 'conv1_1/bias', ... (optional key 'preprocessing'), or the
    keys of a torchvision state dict ('features.0.weight', ...);
  * a torchvision .pth state dict, when torch is installed (RGB in [0, 1] normalised by the
    ImageNet mean and std: preprocessing 'torch').
File I/O happens only in the loader functions; the module and the feature and loss functions
are pure.
"""

import dataclasses
import hashlib
import os
import urllib.request
from typing import Mapping, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np

from srgan_jax import convolution
from srgan_jax import files
from srgan_jax import image_ops
from srgan_jax.errors import VGGWeightsError

# (channels, convolutions) of the five stages; a 2x2 max-pool separates consecutive stages.
_STAGES = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def _layer_table():
  """name -> (kernel shape HWIO, bias shape), and name -> index of the conv in torchvision's
  vgg19().features (a ReLU follows every conv, a max-pool every stage)."""
  shapes, torch_index = {}, {}
  channels, index = 3, 0
  for stage, (out, n) in enumerate(_STAGES):
    for k in range(n):
      name = f'conv{stage + 1}_{k + 1}'
      shapes[name] = ((3, 3, channels, out), (out,))
      torch_index[name] = index
      channels, index = out, index + 2
    index += 1
  return shapes, torch_index


LAYER_SHAPES, TORCHVISION_INDEX = _layer_table()
LAYER_NAMES = tuple(LAYER_SHAPES)  # conv1_1, conv1_2, conv2_1, ..., conv5_4.

KERAS_FILENAME = 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5'
KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/vgg19/' + KERAS_FILENAME
KERAS_MD5 = '253f8cb515780f3b799900260a226db6'  # keras.applications.vgg19's file_hash.
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'srgan_jax')
CONFIG_FIELD = 'config.loss.vgg.weights'

# ImageNet statistics of RGB in [0, 1] (torchvision) and of BGR in [0, 255] (Caffe/Keras).
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
PREPROCESSINGS = ('torch', 'caffe')


def _layer_prefix(layers: Sequence[str]) -> tuple:
  """The conv layers computed to reach every one of `layers`, in order."""
  layers = list(layers)
  unknown = [name for name in layers if name not in LAYER_SHAPES]
  if unknown or not layers:
    raise ValueError(f'VGG19 layers must be a non-empty subset of {LAYER_NAMES}; got {layers}.')
  return LAYER_NAMES[:max(LAYER_NAMES.index(name) for name in layers) + 1]


class VGG19(nn.Module):
  """The 16 conv3x3 layers of VGG19 (no classifier), up to the deepest requested layer.

  Input: NHWC float, already preprocessed (see `preprocess`). Output: dict layer name -> map.
  Only the layers up to the deepest requested one exist, so `init` creates only their
  parameters; `apply` ignores extra entries, so a full loaded tree can be passed as is. The
  convs are convolution.Conv (nn.Conv's parameters), so that a tuned plan can compute them: the
  content loss runs VGG19 forward on SR and HR and back to SR, most of a VGG-loss GAN step.
  """
  layers: Sequence[str]
  before_activation: bool = False  # True: map before the ReLU (ESRGAN); False: after (SRGAN).
  conv: str = 'auto'  # Conv implementation: one of convolution.CONV_IMPLEMENTATIONS.
  conv_plan: Optional[convolution.ConvPlan] = None  # What 'tuned' convs use (conv_tuning.tune).

  @nn.compact
  def __call__(self, x):
    features = {}
    for name in _layer_prefix(self.layers):
      if name != 'conv1_1' and name.endswith('_1'):
        x = image_ops.max_pool_2x2(x)  # nn.max_pool's values, a faster gradient on CPU.
      y = convolution.Conv(LAYER_SHAPES[name][1][0], 3, 1, self.conv, self.conv_plan, name=name)(x)
      x = nn.relu(y)
      if name in self.layers:
        features[name] = y if self.before_activation else x
    return features


def subset_params(params: Mapping, layers: Sequence[str]) -> dict:
  """The entries of `params` that `VGG19(layers)` uses (e.g. to keep conv4/conv5 off the device)."""
  needed = _layer_prefix(layers)
  missing = [name for name in needed if name not in params]
  if missing:
    raise VGGWeightsError(
        f'VGG19 params lack layers {missing}, needed for features {list(layers)}.')
  return {name: params[name] for name in needed}


def preprocess(images, preprocessing: str, resize_to: int = 0):
  """NHWC images in [-1, 1] with 1 or 3 (RGB) channels -> the input the VGG weights expect.

  One channel is tiled to RGB. `resize_to` > 0 resizes (bilinear) to resize_to x resize_to.
  'torch': RGB in [0, 1] standardised by the ImageNet mean and std (torchvision weights).
  'caffe': BGR in [0, 255] minus the ImageNet BGR mean, no std (Keras applications weights).
  """
  if images.shape[-1] == 1:
    images = jnp.tile(images, (1, 1, 1, 3))
  elif images.shape[-1] != 3:
    raise ValueError(f'VGG19 input needs 1 or 3 channels; got shape {images.shape}.')
  if resize_to:
    images = jax.image.resize(
        images, (images.shape[0], resize_to, resize_to, 3), method='bilinear')
  rgb01 = (images + 1.0) / 2.0
  if preprocessing == 'torch':
    return (rgb01 - jnp.asarray(TORCH_MEAN)) / jnp.asarray(TORCH_STD)
  if preprocessing == 'caffe':
    return rgb01[..., ::-1] * 255.0 - jnp.asarray(CAFFE_BGR_MEAN)
  raise ValueError(f'preprocessing must be one of {PREPROCESSINGS}; got {preprocessing!r}.')


@dataclasses.dataclass(frozen=True)
class FeatureFn:
  """`fn(params, images) -> {layer: feature map}` for images in [-1, 1]: VGG19 after the
  preprocessing its weights expect. Pure; hashable, so the steps can hold it as static."""
  model: VGG19
  preprocessing: str = 'torch'
  resize_to: int = 0

  def __call__(self, params, images):
    return self.model.apply({'params': params},
                            preprocess(images, self.preprocessing, self.resize_to))

  def input_shape(self, image_shape) -> Tuple[int, int, int, int]:
    """The shape VGG19 sees for NHWC images of `image_shape` (3 channels, resized)."""
    n, h, w, _ = image_shape
    return (n, self.resize_to or h, self.resize_to or w, 3)

  def with_convs(self, conv: str, conv_plan: Optional[convolution.ConvPlan]) -> 'FeatureFn':
    return dataclasses.replace(self, model=self.model.clone(conv=conv, conv_plan=conv_plan))


def make_feature_fn(layers: Sequence[str], before_activation: bool = False,
                    preprocessing: str = 'torch', resize_to: int = 0) -> FeatureFn:
  """The FeatureFn of VGG19 up to `layers`."""
  model = VGG19(tuple(layers), before_activation)
  _layer_prefix(model.layers)  # Fail at construction, not at the first call.
  if preprocessing not in PREPROCESSINGS:
    raise ValueError(f'preprocessing must be one of {PREPROCESSINGS}; got {preprocessing!r}.')
  return FeatureFn(model, preprocessing, resize_to)


def load_feature_extractor(vgg_config):
  """(params, feature fn) of the VGG19 content loss of `config.loss.vgg`, with the params only
  up to the deepest layer it reads."""
  layers = list(vgg_config.layers)
  if vgg_config.random_weights_for_benchmark:
    logging.warning('VGG19 with RANDOM weights: only for benchmarks, never for results.')
    params, preprocessing = random_vgg19_params(jax.random.PRNGKey(0), layers), 'torch'
  else:
    params, preprocessing = load_vgg19_params(resolve_weights(vgg_config.weights),
                                              required_layers=layers)
  fn = make_feature_fn(layers, vgg_config.before_activation, preprocessing,
                       vgg_config.resize_to)
  return subset_params(params, layers), fn


def random_vgg19_params(key, layers: Optional[Sequence[str]] = None) -> dict:
  """He-normal VGG19 params (He et al. 2015: zero-mean Gaussian kernels of std
  sqrt(2 / fan_in), zero biases; all layers, or up to the deepest of `layers`). Benchmarks
  only: the cost of the loss does not depend on the values, its meaning does.

  Drawn by numpy from the key's bits, the same for the same key: JAX's samplers compile once
  per kernel shape, 0.6-1.2 s each on a 2-core AMD EPYC (six shapes up to conv3_4), which was
  most of a random-VGG benchmark's start.
  """
  names = LAYER_NAMES if layers is None else _layer_prefix(layers)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  params = {}
  for name in names:
    kernel_shape, bias_shape = LAYER_SHAPES[name]
    std = np.sqrt(2.0 / np.prod(kernel_shape[:-1]))
    kernel = rng.standard_normal(kernel_shape, dtype=np.float32) * np.float32(std)
    params[name] = {'kernel': jnp.asarray(kernel),
                    'bias': jnp.asarray(np.zeros(bias_shape, np.float32))}
  return params


# ---------------------------------------------------------------------------------------------
# Loading.


def _missing_file_message(path: str) -> str:
  return (f'VGG19 weights file not found: {path!r}. Get the Keras applications file\n'
          f'  {KERAS_URL}\n'
          f'and set {CONFIG_FIELD} to its path, or put it in {DEFAULT_CACHE_DIR}/ and leave '
          f"{CONFIG_FIELD} = '' (which also downloads it there when online). A .npz "
          f"('conv1_1/kernel' HWIO, 'conv1_1/bias', ...) or a torchvision .pth works too.")


def _decode(name) -> str:
  return name.decode() if isinstance(name, bytes) else str(name)


# How each format names a layer's arrays (Keras: the layer's group).
_KERAS_KEYS = {name: 'block{}_conv{}'.format(*name[4:].split('_')) for name in LAYER_NAMES}
_NPZ_KEYS = {name: (f'{name}/kernel', f'{name}/bias') for name in LAYER_NAMES}
_TORCHVISION_KEYS = {name: (f'features.{i}.weight', f'features.{i}.bias')
                     for name, i in TORCHVISION_INDEX.items()}


def _read_keras_h5(path: str):
  """Layers from a Keras (legacy h5) weights file, and the layer names the file lists."""
  with h5py.File(path, 'r') as f:
    root = f['model_weights'] if 'model_weights' in f else f  # model.save() files.
    if 'layer_names' in root.attrs:
      file_names = [_decode(n) for n in root.attrs['layer_names']]
    else:
      file_names = list(root.keys())
    found = {}
    for name in LAYER_NAMES:
      keras_name = _KERAS_KEYS[name]
      if keras_name not in file_names or keras_name not in root:
        continue
      group = root[keras_name]
      # weight_names lists the datasets ('block1_conv1_W_1:0' in the Keras 1 file,
      # 'block1_conv1/kernel:0' in later ones); without it, take every dataset in the group.
      if 'weight_names' in group.attrs:
        arrays = {_decode(w): np.asarray(group[_decode(w)]) for w in group.attrs['weight_names']}
      else:
        arrays = {}

        def collect(key, item, arrays=arrays):
          if isinstance(item, h5py.Dataset):
            arrays[key] = np.asarray(item)

        group.visititems(collect)
      kernels = [a for a in arrays.values() if a.ndim == 4]
      biases = [a for a in arrays.values() if a.ndim == 1]
      if len(kernels) != 1 or len(biases) != 1 or len(arrays) != 2:
        shapes = {k: a.shape for k, a in arrays.items()}
        raise VGGWeightsError(f'{path}: Keras layer {keras_name} ({name}) should hold one 4-d '
                              f'kernel and one 1-d bias; it holds {shapes}.')
      found[name] = {'kernel': kernels[0], 'bias': biases[0]}
  return found, file_names


def _pairs(arrays: Mapping, keys: Mapping, path: str) -> dict:
  """{layer: {'kernel', 'bias'}} for the layers whose two keys (keys[layer]) are in `arrays`."""
  found = {}
  for name, (kernel, bias) in keys.items():
    if kernel in arrays and bias in arrays:
      found[name] = {'kernel': np.asarray(arrays[kernel]), 'bias': np.asarray(arrays[bias])}
    elif kernel in arrays or bias in arrays:
      raise VGGWeightsError(f'{path}: {name} needs both {kernel!r} and {bias!r}.')
  return found


def _from_torchvision(state_dict: Mapping, path: str) -> dict:
  """Layers from torchvision vgg19 'features.N.weight' (OIHW) / 'features.N.bias' arrays."""
  found = _pairs(state_dict, _TORCHVISION_KEYS, path)
  for arrays in found.values():
    arrays['kernel'] = arrays['kernel'].transpose(2, 3, 1, 0)  # OIHW -> HWIO.
  return found


def _read_npz(path: str):
  """Layers, key names, preprocessing, and the keys looked for, of a .npz (ours or torchvision)."""
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}
  preprocessing = _decode(np.asarray(arrays.pop('preprocessing', 'torch')).item())
  if preprocessing not in PREPROCESSINGS:
    raise VGGWeightsError(f"{path}: 'preprocessing' must be one of {PREPROCESSINGS}; "
                          f'got {preprocessing!r}.')
  if any(key.startswith('features.') for key in arrays):
    return _from_torchvision(arrays, path), list(arrays), preprocessing, _TORCHVISION_KEYS
  return _pairs(arrays, _NPZ_KEYS, path), list(arrays), preprocessing, _NPZ_KEYS


def _read_pth(path: str):
  """Layers and key names of a torchvision state dict saved by torch.save."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise VGGWeightsError(
        f'{path} is a PyTorch file and torch is not installed. Install torch, or convert the '
        f'file to .npz where torch is installed and set {CONFIG_FIELD} to the .npz:\n'
        f'  python -c "import numpy as np, torch; np.savez(\'vgg19.npz\', **{{k: v.numpy() '
        f'for k, v in torch.load(\'{path}\', map_location=\'cpu\').items() '
        f'if k.startswith(\'features.\')}})"') from e
  state_dict = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state_dict, Mapping):
    raise VGGWeightsError(f'{path}: expected a state dict (torchvision vgg19().state_dict()), '
                          f'got {type(state_dict).__name__}.')
  arrays = {key: value.numpy() for key, value in state_dict.items()}
  return _from_torchvision(arrays, path), list(arrays)


def load_vgg19_params(path, required_layers: Optional[Sequence[str]] = None):
  """(params, preprocessing) from a VGG19 weights file (.h5 Keras, .npz, .pth torchvision).

  params: {'conv1_1': {'kernel': (3, 3, in, out), 'bias': (out,)}, ...}, float32, every VGG19
  layer in the file. All 16 layers are required unless `required_layers` names the feature
  layers to be used: then only the layers up to the deepest of them are (a conv2_2 loss can use
  a smaller file). The shapes of every layer present are checked. preprocessing: 'caffe' for
  the Keras file, 'torch' for torchvision files, the 'preprocessing' entry (default 'torch')
  for .npz.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VGGWeightsError(_missing_file_message(path))
  ext = os.path.splitext(path)[1].lower()
  if ext in ('.h5', '.hdf5'):
    found, file_names = _read_keras_h5(path)
    preprocessing, file_keys = 'caffe', _KERAS_KEYS
  elif ext == '.npz':
    found, file_names, preprocessing, file_keys = _read_npz(path)
  elif ext in ('.pth', '.pt'):
    found, file_names = _read_pth(path)
    preprocessing, file_keys = 'torch', _TORCHVISION_KEYS
  else:
    raise VGGWeightsError(f'{path}: unknown VGG19 weights format {ext!r}; expected .h5 (Keras '
                          f'applications, {KERAS_FILENAME}), .npz or .pth (torchvision).')

  needed = LAYER_NAMES if required_layers is None else _layer_prefix(required_layers)
  missing = [name for name in needed if name not in found]
  if missing:
    raise VGGWeightsError(
        f'{path} lacks VGG19 layers {missing} (looked for {[file_keys[n] for n in missing]}). '
        f'The file holds: {file_names[:40]}.')
  params = {}
  for name, arrays in found.items():
    for part, expected in zip(('kernel', 'bias'), LAYER_SHAPES[name]):
      if arrays[part].shape != expected:
        raise VGGWeightsError(f'{path}: {name} {part} has shape {arrays[part].shape}, '
                              f'expected {expected}' + (' (HWIO).' if part == 'kernel' else '.'))
    params[name] = {part: jnp.asarray(a, jnp.float32) for part, a in arrays.items()}
  return params, preprocessing


def _download(url: str, target: str) -> None:
  """url -> target, checked against the Keras file's MD5; never a half-written target."""
  def stream(out):
    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=10) as response:
      while chunk := response.read(1 << 20):
        md5.update(chunk)
        out.write(chunk)
    if md5.hexdigest() != KERAS_MD5:
      raise VGGWeightsError(f'Downloaded {url} has MD5 {md5.hexdigest()}, expected {KERAS_MD5}.')
  files.atomic_write(target, stream)


def resolve_weights(path: str, cache_dir: Optional[str] = None) -> str:
  """The VGG19 weights file to load: `path` itself when given, else the Keras file in the cache.

  With an empty `path`, looks for the Keras applications file in `cache_dir` (default
  ~/.cache/srgan_jax/), and when absent downloads it there once (10 s timeout).
  """
  if path:
    if not os.path.isfile(path):
      raise VGGWeightsError(_missing_file_message(path))
    return path
  cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
  target = os.path.join(cache_dir, KERAS_FILENAME)
  if os.path.isfile(target):
    return target
  try:
    _download(KERAS_URL, target)
  except OSError as e:
    raise VGGWeightsError(
        f'{CONFIG_FIELD} is empty and {KERAS_FILENAME} is neither in {cache_dir} nor '
        f'downloadable ({e}). Get it from\n  {KERAS_URL}\nand put it in {cache_dir}/, or set '
        f'{CONFIG_FIELD} to its path (a .npz or torchvision .pth works too).') from e
  return target
