"""A perceptual loss that knows digits and needs no download: the pretrained MNIST CNN's
feature maps as the content loss, plus its cross-entropy as the auxiliary loss."""

from configs import mnist_cnn


def get_config():
  config = mnist_cnn.get_config()
  config.loss.content = 'classifier'
  # conv2: 28x28x64 maps, before the first pool; conv3: 14x14x128 after it.
  config.loss.classifier_layers = {'conv2': 1.0, 'conv3': 1.0}
  return config
