"""ResNet-50 v1 in TensorFlow 2, computing exactly what the public checkpoints define.

    model = resnet_v1_50(num_classes=5)                     # TF-slim resnet_v1_50.ckpt topology
    logits = model(uint8_images_nhwc, training=False)       # float32 [B, 5]

`variant="slim"` is the network of TF-slim's `resnet_v1_50.ckpt` (see
shared/reference/resnet_v1_50_checkpoint.md): stride 2 on the 3x3 conv of the *last* unit of
blocks 1-3 with explicit symmetric padding, identity-subsample shortcuts in those units, no conv
biases, BN epsilon 1e-5, RGB input minus the VGG means. `variant="keras"` is
`keras.applications.ResNet50`: stride 2 on the *first* unit's 1x1 conv and projection, conv biases,
ZeroPadding2D(1) + VALID max pool, BN epsilon 1.001e-5, BGR input minus the caffe means.
A Caffe-style network loads the slim checkpoint's shapes without complaint and computes
something else, hence two explicit topologies rather than one with flags.

Variables are created with the checkpoint's own names (`resnet_v1_50/block1/unit_1/
bottleneck_v1/conv1/weights`, `conv2_block1_1_conv/kernel`, ...) and kept in `model.variables_by_name`,
so loading a checkpoint is a dictionary lookup and our own checkpoints use the same names.

Knobs: data_format NHWC or NCHW (NCHW needs a GPU or XLA: TensorFlow's CPU Conv2D is NHWC only);
fused batch norm (FusedBatchNormV3) or the same arithmetic as separate ops; precision fp32, or
mixed fp16/bf16 (fp32 master variables cast to the compute type per step; BN statistics, logits
and loss in fp32; bf16 on a CPU takes the small late convolutions' weight gradients in fp32,
see BF16_FP32_WEIGHT_GRAD_BELOW); frozen BN (inference-mode BN while fine-tuning, the usual
fine-tuning trap: which mode a run used is part of its config). The model takes uint8 (or float) RGB NHWC 0-255
images exactly as the reader emits them and does the cast, mean subtraction and NCHW transpose
itself, on the device.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import tensorflow as tf

from flowers_tl import geometry
from flowers_tl.config import (DATA_FORMATS, PRECISIONS, VARIANTS, ConfigError,  # noqa: F401
                               ModelConfig, check_model)

COMPUTE_DTYPES = {"fp32": tf.float32, "fp16": tf.float16, "bf16": tf.bfloat16}
# bf16 on a CPU: convolutions whose output has fewer positions than this per image get their
# weight gradient in fp32. oneDNN's bf16 weight-gradient kernels lose to its fp32 ones on small
# feature maps (TF 2.21, Intel Xeon with AMX, batch 32, 2026-12-03: 512->2048 1x1 at 2x2 3.0x
# slower than fp32, at 4x4 1.7x, 7x7 1.07x, 8x8 0.89x), and at 64 px those layers (blocks 3-4)
# took more than the rest of a bf16 step's weight gradients. The input gradient and the forward
# pass stay in bf16; the fp32 gradient also skips the cast back to the fp32 master kernel.
BF16_FP32_WEIGHT_GRAD_BELOW = 64

# (bottleneck depth, units, stride); slim puts the stride on the last unit, keras on the first.
BLOCKS = ((64, 3, 2), (128, 4, 2), (256, 6, 2), (512, 3, 1))
KERAS_BLOCKS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


@dataclass(frozen=True)
class ModelMeta:
    """What a trainer needs to know about a network besides its weights (cf. MoXing's
    get_model_meta)."""

    name: str
    logits_pattern: str  # regular expression matching the classifier's checkpoint names
    default_image_size: int
    channel_order: str  # order the *network* sees; the model always takes RGB
    channel_means: tuple[float, float, float]  # subtracted in channel_order
    batch_norm_epsilon: float


META = {
    "slim": ModelMeta("resnet_v1_50", "resnet_v1_50/logits", 224, "RGB",
                      geometry.VGG_MEAN_RGB, 1e-5),
    "keras": ModelMeta("resnet50", "predictions", 224, "BGR",
                       geometry.CAFFE_MEAN_BGR, 1.001e-5),
}


def get_model_meta(variant: str = "slim") -> ModelMeta:
    if variant not in META:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return META[variant]


def _stateless_seed(seed: int, name: str) -> tf.Tensor:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return tf.constant([int.from_bytes(digest[:4], "little") & 0x7FFFFFFF,
                        int.from_bytes(digest[4:8], "little") & 0x7FFFFFFF], tf.int32)


class ResNet50(tf.Module):
    """ResNet-50 v1, slim or keras topology. Call as model(images, training=False)."""

    def __init__(self, config: ModelConfig, num_classes: int, seed: int = 0):
        """config: the run configuration's model section; seed: the variables' initial values."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        try:  # the same rules as the run configuration, in the same words
            check_model(config, gpus=len(tf.config.list_physical_devices("GPU")))
        except ConfigError as error:
            raise ValueError(str(error)) from None
        meta = get_model_meta(config.variant)
        super().__init__(name=meta.name)
        self.config = config
        self.num_classes = num_classes
        self.seed = seed
        self.meta = meta
        self.compute_dtype = COMPUTE_DTYPES[config.precision]
        self.fp32_small_weight_grads = (config.precision == "bf16" and not config.xla
                                        and not tf.config.list_physical_devices("GPU"))
        self.variables_by_name: dict[str, tf.Variable] = {}
        self.conv_kernel_names: list[str] = []
        with tf.init_scope():  # variables are created eagerly even if first built in a graph
            if config.variant == "slim":
                self._create_slim_variables()
            else:
                self._create_keras_variables()

    # ---------------------------------------------------------------- variables
    def _variable(self, name, shape, initial="zeros", trainable=True):
        if initial == "he":  # slim's variance_scaling_initializer(2.0, FAN_IN), truncated normal
            fan_in = 1
            for dim in shape[:-1]:
                fan_in *= dim
            # 0.8796...: std of a unit normal truncated at 2 std, so the result has std sqrt(2/fan_in)
            stddev = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
            value = tf.random.stateless_truncated_normal(
                shape, _stateless_seed(self.seed, name), stddev=stddev)
        elif initial == "ones":
            value = tf.ones(shape)
        else:
            value = tf.zeros(shape)
        if trainable:
            variable = tf.Variable(value, name=name, trainable=True)
        else:
            # Moving statistics: each replica keeps its own and reads average them (Keras BN's
            # convention), so MirroredStrategy needs no cross-replica sync inside the step.
            variable = tf.Variable(value, name=name, trainable=False,
                                   synchronization=tf.VariableSynchronization.ON_READ,
                                   aggregation=tf.VariableAggregation.MEAN)
        self.variables_by_name[name] = variable
        return variable

    def _conv_variables(self, scope, kernel, channels_in, channels_out, bias=False):
        name = f"{scope}/weights" if self.config.variant == "slim" else f"{scope}/kernel"
        self._variable(name, [kernel, kernel, channels_in, channels_out], "he")
        self.conv_kernel_names.append(name)
        if bias:
            self._variable(f"{scope}/bias", [channels_out])

    def _bn_variables(self, scope, channels, last_in_branch=False):
        zero = last_in_branch and self.config.zero_init_residual
        self._variable(f"{scope}/gamma", [channels], "zeros" if zero else "ones")
        self._variable(f"{scope}/beta", [channels])
        self._variable(f"{scope}/moving_mean", [channels], trainable=False)
        self._variable(f"{scope}/moving_variance", [channels], "ones", trainable=False)

    def _create_slim_variables(self):
        root = "resnet_v1_50"
        self._conv_variables(f"{root}/conv1", 7, 3, 64)
        self._bn_variables(f"{root}/conv1/BatchNorm", 64)
        channels = 64
        for block, (depth, units, _) in enumerate(BLOCKS, start=1):
            for unit in range(1, units + 1):
                scope = f"{root}/block{block}/unit_{unit}/bottleneck_v1"
                if unit == 1:  # depth changes: projection shortcut
                    self._conv_variables(f"{scope}/shortcut", 1, channels, 4 * depth)
                    self._bn_variables(f"{scope}/shortcut/BatchNorm", 4 * depth)
                for conv, (kernel, cin, cout) in enumerate(
                        [(1, channels, depth), (3, depth, depth), (1, depth, 4 * depth)], start=1):
                    self._conv_variables(f"{scope}/conv{conv}", kernel, cin, cout)
                    self._bn_variables(f"{scope}/conv{conv}/BatchNorm", cout, conv == 3)
                channels = 4 * depth
        self._conv_variables(f"{root}/logits", 1, 2048, self.num_classes)
        self._variable(f"{root}/logits/biases", [self.num_classes])

    def _create_keras_variables(self):
        self._conv_variables("conv1_conv", 7, 3, 64, bias=True)
        self._bn_variables("conv1_bn", 64)
        channels = 64
        for stage, (depth, units, _) in enumerate(KERAS_BLOCKS, start=2):
            for unit in range(1, units + 1):
                scope = f"conv{stage}_block{unit}"
                if unit == 1:
                    self._conv_variables(f"{scope}_0_conv", 1, channels, 4 * depth, bias=True)
                    self._bn_variables(f"{scope}_0_bn", 4 * depth)
                for conv, (kernel, cin, cout) in enumerate(
                        [(1, channels, depth), (3, depth, depth), (1, depth, 4 * depth)], start=1):
                    self._conv_variables(f"{scope}_{conv}_conv", kernel, cin, cout, bias=True)
                    self._bn_variables(f"{scope}_{conv}_bn", cout, conv == 3)
                channels = 4 * depth
        self._variable("predictions/kernel", [2048, self.num_classes], "he")
        self.conv_kernel_names.append("predictions/kernel")
        self._variable("predictions/bias", [self.num_classes])

    # ---------------------------------------------------------------- layers
    def _spatial(self, values):
        """[top, bottom] / [left, right] style pairs placed in the data format's H, W slots."""
        if self.config.data_format == "NHWC":
            return [[0, 0], values[0], values[1], [0, 0]]
        return [[0, 0], [0, 0], values[0], values[1]]

    def _conv(self, x, scope, stride=1, padding="SAME", bias=False):
        kernel_name = f"{scope}/weights" if self.config.variant == "slim" else f"{scope}/kernel"
        kernel_variable = self.variables_by_name[kernel_name]
        if isinstance(padding, int):  # explicit symmetric zero padding, then VALID
            # A separate Pad, not conv2d's explicit-padding form: TensorFlow's oneDNN rewrite
            # leaves EXPLICIT-padded Conv2DBackpropFilter/Input on the Eigen kernels, which in
            # bf16 are ~10x slower than in fp32 (these 4 convs cost more than the other 49 in a
            # bf16 step). Pad + VALID is the same arithmetic and stays on oneDNN.
            x = tf.pad(x, self._spatial([[padding, padding], [padding, padding]]))
            padding = "VALID"
        if (self.fp32_small_weight_grads and self._positions(x, kernel_variable.shape[0], stride,
                                                             padding) < BF16_FP32_WEIGHT_GRAD_BELOW):
            y = self._conv_fp32_weight_grad(x, kernel_variable, stride, padding)
        else:
            y = tf.nn.conv2d(x, tf.cast(kernel_variable, self.compute_dtype), strides=stride,
                             padding=padding, data_format=self.config.data_format)
        if bias:
            y = tf.nn.bias_add(y, tf.cast(self.variables_by_name[f"{scope}/bias"], self.compute_dtype),
                               data_format=self.config.data_format)
        return y

    def _positions(self, x, kernel_size: int, stride: int, padding: str) -> int:
        """Output positions per image of this conv (static shapes)."""
        sizes = x.shape[1:3] if self.config.data_format == "NHWC" else x.shape[2:4]
        if padding == "SAME":
            return math.prod(-(-size // stride) for size in sizes)
        return math.prod((size - kernel_size) // stride + 1 for size in sizes)

    def _conv_fp32_weight_grad(self, x, kernel_variable, stride, padding):
        """conv2d in the compute dtype whose kernel gradient is computed in fp32 (see
        BF16_FP32_WEIGHT_GRAD_BELOW): same forward values, same input gradient."""
        data_format = self.config.data_format
        strides = [1, stride, stride, 1] if data_format == "NHWC" else [1, 1, stride, stride]
        compute_dtype = self.compute_dtype

        @tf.custom_gradient
        def conv(inputs, kernel32):
            kernel = tf.cast(kernel32, compute_dtype)
            outputs = tf.nn.conv2d(inputs, kernel, strides=strides, padding=padding,
                                   data_format=data_format)

            def grad(upstream):
                input_grad = tf.compat.v1.nn.conv2d_backprop_input(
                    tf.shape(inputs), kernel, upstream, strides, padding, data_format=data_format)
                kernel_grad = tf.compat.v1.nn.conv2d_backprop_filter(
                    tf.cast(inputs, tf.float32), tf.shape(kernel32), tf.cast(upstream, tf.float32),
                    strides, padding, data_format=data_format)
                return input_grad, kernel_grad

            return outputs, grad

        return conv(x, tf.convert_to_tensor(kernel_variable))

    def _batch_norm(self, x, scope, training, relu):
        v = self.variables_by_name
        gamma, beta = v[f"{scope}/gamma"], v[f"{scope}/beta"]
        moving_mean, moving_variance = v[f"{scope}/moving_mean"], v[f"{scope}/moving_variance"]
        epsilon = self.meta.batch_norm_epsilon
        use_batch_statistics = training and not self.config.freeze_batch_norm
        channels_last = self.config.data_format == "NHWC"
        if self.config.batch_norm_fused:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta,
                mean=None if use_batch_statistics else moving_mean,
                variance=None if use_batch_statistics else moving_variance,
                epsilon=epsilon, data_format=self.config.data_format,
                is_training=use_batch_statistics)
        else:
            # The same arithmetic as separate ops, statistics in fp32.
            x32 = tf.cast(x, tf.float32)
            shape = [1, 1, 1, -1] if channels_last else [1, -1, 1, 1]
            if use_batch_statistics:
                axes = [0, 1, 2] if channels_last else [0, 2, 3]
                mean, biased_variance = tf.nn.moments(x32, axes)
                count = tf.cast(tf.size(x32) // tf.size(mean), tf.float32)
                # The fused kernel hands back the unbiased (Bessel-corrected) variance for the
                # moving average; match it so fused and unfused train identically.
                variance = biased_variance * count / tf.maximum(count - 1.0, 1.0)
                normalise_mean, normalise_variance = mean, biased_variance
            else:
                normalise_mean, normalise_variance = moving_mean, moving_variance
            y = tf.nn.batch_normalization(
                x32, tf.reshape(normalise_mean, shape), tf.reshape(normalise_variance, shape),
                tf.reshape(beta, shape), tf.reshape(gamma, shape), epsilon)
            y = tf.cast(y, x.dtype)
        if use_batch_statistics:
            decay = self.config.batch_norm_momentum
            moving_mean.assign(moving_mean * decay + tf.cast(mean, tf.float32) * (1.0 - decay))
            moving_variance.assign(
                moving_variance * decay + tf.cast(variance, tf.float32) * (1.0 - decay))
        return tf.nn.relu(y) if relu else y

    def _conv_bn(self, x, scope, training, relu=True, stride=1, padding="SAME"):
        slim = self.config.variant == "slim"
        x = self._conv(x, scope, stride, padding, bias=not slim)
        bn_scope = f"{scope}/BatchNorm" if slim else scope[: -len("conv")] + "bn"
        return self._batch_norm(x, bn_scope, training, relu)

    def _subsample(self, x, stride):
        if stride == 1:
            return x
        return x[:, ::stride, ::stride, :] if self.config.data_format == "NHWC" else x[:, :, ::stride, ::stride]

    # ---------------------------------------------------------------- forward
    def _preprocess(self, images):
        """uint8/float RGB NHWC 0-255 -> compute dtype, mean-subtracted, in data_format."""
        x = tf.cast(images, tf.float32)
        if self.meta.channel_order == "BGR":
            x = x[..., ::-1]
        x = x - tf.constant(self.meta.channel_means, tf.float32)
        x = tf.cast(x, self.compute_dtype)
        if self.config.data_format == "NCHW":
            x = tf.transpose(x, [0, 3, 1, 2])
        return x

    def _slim_body(self, x, training):
        root = "resnet_v1_50"
        # conv1 is slim's conv2d_same: pad 3 on each side, 7x7 stride 2 VALID.
        x = self._conv_bn(x, f"{root}/conv1", training, stride=2, padding=3)
        x = tf.nn.max_pool2d(x, 3, 2, "SAME", data_format=self.config.data_format)
        for block, (depth, units, stride) in enumerate(BLOCKS, start=1):
            for unit in range(1, units + 1):
                scope = f"{root}/block{block}/unit_{unit}/bottleneck_v1"
                unit_stride = stride if unit == units else 1
                if unit == 1:
                    shortcut = self._conv_bn(x, f"{scope}/shortcut", training, relu=False,
                                             stride=unit_stride)
                else:
                    shortcut = self._subsample(x, unit_stride)
                r = self._conv_bn(x, f"{scope}/conv1", training)
                # Stride 2 is conv2d_same: explicit (1, 1) padding. Plain SAME would pad (0, 1)
                # on even sizes and shift the whole feature map.
                r = self._conv_bn(r, f"{scope}/conv2", training, stride=unit_stride,
                                  padding=1 if unit_stride > 1 else "SAME")
                r = self._conv_bn(r, f"{scope}/conv3", training, relu=False)
                x = tf.nn.relu(shortcut + r)
        return x

    def _keras_body(self, x, training):
        x = self._conv_bn(x, "conv1_conv", training, stride=2, padding=3)
        x = tf.pad(x, self._spatial([[1, 1], [1, 1]]))  # ZeroPadding2D(1), then VALID pool
        x = tf.nn.max_pool2d(x, 3, 2, "VALID", data_format=self.config.data_format)
        for stage, (depth, units, stride) in enumerate(KERAS_BLOCKS, start=2):
            for unit in range(1, units + 1):
                scope = f"conv{stage}_block{unit}"
                unit_stride = stride if unit == 1 else 1
                if unit == 1:
                    shortcut = self._conv_bn(x, f"{scope}_0_conv", training, relu=False,
                                             stride=unit_stride)
                else:
                    shortcut = x
                r = self._conv_bn(x, f"{scope}_1_conv", training, stride=unit_stride)
                r = self._conv_bn(r, f"{scope}_2_conv", training)
                r = self._conv_bn(r, f"{scope}_3_conv", training, relu=False)
                x = tf.nn.relu(shortcut + r)
        return x

    def features(self, images, training=False):
        """Pooled 2048-d features, float32 [B, 2048]."""
        x = self._preprocess(images)
        x = self._slim_body(x, training) if self.config.variant == "slim" else self._keras_body(x, training)
        axes = [1, 2] if self.config.data_format == "NHWC" else [2, 3]
        return tf.cast(tf.reduce_mean(tf.cast(x, tf.float32), axes), tf.float32)

    def __call__(self, images, training=False):
        """float32 logits [B, num_classes]; the classifier runs in fp32 whatever the precision."""
        features = self.features(images, training)
        v = self.variables_by_name
        if self.config.variant == "slim":
            kernel = tf.reshape(v["resnet_v1_50/logits/weights"], [2048, self.num_classes])
            bias = v["resnet_v1_50/logits/biases"]
        else:
            kernel, bias = v["predictions/kernel"], v["predictions/bias"]
        return tf.matmul(features, kernel) + bias

    def weight_decay_loss(self):
        """L2 on conv kernels (the classifier's included) only, as slim's arg scope: wd * sum(w^2)/2."""
        if self.config.weight_decay == 0:
            return tf.constant(0.0)
        return self.config.weight_decay * tf.add_n(
            [tf.nn.l2_loss(self.variables_by_name[name]) for name in self.conv_kernel_names])


def resnet_v1_50(num_classes: int, seed: int = 0, **options) -> ResNet50:
    """ResNet-50 v1; options: any flowers_tl.config.ModelConfig field (data_format="NCHW",
    batch_norm_fused=False, precision="bf16", xla=True, variant="keras", ...). data_format
    defaults to NHWC here (the run configuration derives it from the devices)."""
    return ResNet50(ModelConfig(**{"data_format": "NHWC", **options}), num_classes, seed)
