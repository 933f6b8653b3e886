"""The seed's MNIST CNN trained on its own: `python main.py --config=configs/classifier.py`."""

from configs import default


def get_config():
  config = default.get_config()
  config.task = 'classifier'
  config.data.channels = 1
  config.classifier.architecture = 'seed_cnn'
  return config
