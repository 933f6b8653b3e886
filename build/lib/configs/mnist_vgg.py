"""The SRGAN paper's perceptual loss on MNIST: VGG54 content loss + adversarial loss.

Needs VGG19 weights: --config.loss.vgg.weights=/path/to/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
(Keras applications file), a .npz of {layer}/kernel, {layer}/bias, or a torchvision .pth; when
the field is empty and the machine is online (Colab), the Keras file is downloaded once to
~/.cache/srgan_jax/.

The paper's VGG54 is the 4th conv before the 5th max-pool, after ReLU, on 96x96 crops (6x6 maps
at conv5_4). MNIST digits are 28x28, so they are resized to 224 before VGG, as for ImageNet.
"""

from configs import mnist_srgan


def get_config():
  config = mnist_srgan.get_config()
  config.loss.content = 'vgg'
  config.loss.vgg.layers = {'conv5_4': 1.0}
  config.loss.vgg.before_activation = False
  config.loss.vgg.criterion = 'mse'
  config.loss.vgg.resize_to = 224
  config.loss.vgg.scale = 1.0 / 12.75   # paper: rescaled VGG loss.
  config.loss.vgg.weights = ''
  return config
