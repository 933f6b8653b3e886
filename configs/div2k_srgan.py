"""The paper's SRGAN at x4 (Ledig et al. 2017) on DIV2K, for a GPU or Colab (not run on CPU).

SRResNet generator with B = 16 residual blocks of 64 features, the Fig. 4 discriminator (64 ->
512, dense 1024 head sized from the 96x96 HR crops: 6x6x512), batch 16, Adam 1e-4, vanilla GAN
loss at 1e-3, random 96x96 crops of the 800 DIV2K training images with flips and rotations,
evaluated on the 100 validation images whole (Y channel, crop_border = 4). The images are read
record by record from the prepared tfds dataset (`tfds build div2k/bicubic_x4` once, where
there is internet), so the 800 2K photographs are never all in memory.

Content loss: the paper's VGG54 when VGG19 weights are given as the config's argument,
  python main.py --config=configs/div2k_srgan.py:/path/to/vgg19.h5 --workdir=runs/div2k
(a Keras .h5, .npz or torchvision .pth file; see srgan_jax/vgg.py), else MSE (the paper's
SRGAN-MSE), with a note in the log saying so.
"""

from absl import logging

from configs import default


def get_config(vgg_weights: str = ''):
  config = default.get_config()
  config.data.source = 'tfds'
  # The HR images of div2k (every config of it holds them; its test split is 'validation').
  config.data.name = 'div2k/bicubic_x4'
  config.data.scale = 4
  config.data.channels = 3
  config.data.hr_crop = 96              # paper: 96x96 HR sub-images.
  config.data.use_hflip = True
  config.data.use_rot = True
  config.data.in_memory = False         # read the images of each batch from the records.
  config.data.train_examples = 0
  config.data.eval_examples = 0
  config.generator.num_res_blocks = 16  # paper.
  config.generator.features = 64        # paper.
  config.discriminator.features = (64, 128, 256, 512)  # paper.
  config.discriminator.head = 'dense'   # paper: dense 1024 -> LeakyReLU -> dense 1.
  config.discriminator.dense_features = 1024
  config.loss.adversarial = 'vanilla'   # paper.
  config.loss.adversarial_weight = 1e-3  # paper.
  config.loss.auxiliary = 'none'
  if vgg_weights:
    config.loss.content = 'vgg'
    config.loss.vgg.weights = vgg_weights
    config.loss.vgg.layers = {'conv5_4': 1.0}  # paper: VGG54, after ReLU, rescaled 1/12.75.
  else:
    config.loss.content = 'mse'
    logging.warning(
        'configs/div2k_srgan.py: no VGG19 weights given, so the content loss is MSE (the '
        "paper's SRGAN-MSE), not VGG54. For VGG54: --config=configs/div2k_srgan.py:"
        '/path/to/vgg19.h5 (or --config.loss.content=vgg --config.loss.vgg.weights=<file>).')
  config.optimizer.learning_rate = 1e-4            # paper.
  config.optimizer.pretrain_learning_rate = 1e-4   # paper: SRResNet at 1e-4.
  config.batch_size = 16                           # paper.
  # A GPU-day budget (the paper: 10^6 SRResNet + 10^5 + 10^5 SRGAN iterations).
  config.pretrain_steps = 100_000
  config.num_train_steps = 100_000
  config.ema_decay = 0.999
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 5_000
  config.eval.crop_border = -1                     # the scale.
  config.eval.y_channel = True
  config.eval.curve_examples = 10                  # the evaluations during training.
  config.eval.num_sample_images = 8
  config.eval.judge_workdir = ''
  return config
