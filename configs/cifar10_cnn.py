"""The auxiliary classifier loss on photographs: SRGAN at x4 on cifar10 (8x8 -> 32x32 RGB),
guided by a classifier trained on cifar10 and judged by another.

The counterpart of configs/mnist_cnn.py (hence the name: 'cnn' is the guide-classifier loss
here, 'acgan' the discriminator head): a guide CNN (the seed's architecture, initialised at
32x32x3, 10 classes) is trained first into `classifier/` under the workdir, then scores every
SR image against its true label (loss.auxiliary='classifier', weight 0.1 as the seed's), and
a LeNet judge of another seed, trained into `judge/`, reports how recognisable SR, bicubic and
HR test images are, with the FID in its features ("judge-FID"). cifar10's images are whole and
of one size, so they train whole (hr_crop = 0), as MNIST's digits do, and are scored as MNIST's
are (float PSNR/SSIM on RGB over the whole 32x32 image).

For a GPU or Colab: prepare cifar10 once where there is internet (`tfds build cifar10`, or
`tfds.load('cifar10')`) and copy the tfds data dir to where this runs. Untrained here (no
internet); the budget and the classifiers' recipe are a starting point, not tuned results.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.num_classes = 10            # also read from the tfds label feature when 0.
  config.data.scale = 4                   # 8x8 -> 32x32.
  config.data.channels = 3
  config.data.hr_crop = 0                 # whole 32x32 images, one size: a labelled set.
  config.data.train_examples = 0          # all 50000.
  config.data.eval_examples = 10000
  config.generator.num_res_blocks = 16    # paper.
  config.generator.features = 64
  config.discriminator.features = (64, 128, 256, 512)  # paper; 32 -> 2x2x512.
  config.discriminator.head = 'dense'
  config.discriminator.dense_features = 1024
  config.loss.content = 'mse'
  config.loss.adversarial = 'vanilla'     # paper: BCE.
  config.loss.adversarial_weight = 1e-3   # paper.
  config.loss.auxiliary = 'classifier'
  config.loss.auxiliary_weight = 0.1      # the seed's MNIST weight; untuned on cifar10.
  config.loss.auxiliary_labels = 'true'
  config.loss.auxiliary_during_pretrain = False  # SRResNet pretraining on the content loss.
  config.loss.classifier_workdir = 'classifier'
  config.optimizer.pretrain_learning_rate = 1e-4  # paper.
  config.optimizer.learning_rate = 1e-4
  config.batch_size = 64                  # 32x32 images: 4x the paper's 16 fits easily.
  config.pretrain_steps = 20000
  config.num_train_steps = 20000
  config.ema_decay = 0.999
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 5000
  config.eval.crop_border = 0             # whole 32x32 images, as MNIST.
  config.eval.curve_examples = 2000       # the evals during training; the last uses all.
  config.eval.batch_size = 500
  config.eval.judge_workdir = 'judge'
  config.eval.judge_epochs = 15
  # The guide and the judge: the MNIST recipe with cifar10's augmentation (random crops of
  # the image padded by 4 black pixels, horizontal flips) and more epochs.
  config.classifier.architecture = 'seed_cnn'
  config.classifier.num_epochs = 15
  config.classifier.batch_size = 128
  config.classifier.max_shift = 4
  config.classifier.hflip = True
  config.classifier.validation_examples = 5000
  return config
