"""The seed's exact settings: x2 (14x14 -> 28x28), 3 channels, batch 128, 20000 images.

The seed's notebook used VGG19 features up to relu3_4 with L1 as its content loss; that needs
VGG19 weights (see configs/mnist_vgg.py). This config keeps the pixel loss so that it runs
offline; pass --config.loss.content=vgg --config.loss.vgg.weights=<file> for the seed's loss.
"""

from configs import mnist_srgan


def get_config():
  config = mnist_srgan.get_config()
  config.data.scale = 2
  config.data.channels = 3
  config.data.train_examples = 20000
  config.batch_size = 128
  # The seed's VGG content loss, when selected: relu3_4, L1, no resize.
  config.loss.vgg.layers = {'conv3_4': 1.0}
  config.loss.vgg.before_activation = False
  config.loss.vgg.criterion = 'l1'
  config.loss.vgg.scale = 1.0
  config.pretrain_steps = 300
  config.num_train_steps = 500
  return config
