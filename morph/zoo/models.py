"""Torch definitions of the five zoo variants, heaviest first, and how to count their cost.

Every model maps a float32 batch of frames ``[N, H, W]`` to logits
``[N, 5]`` and exposes ``features(x)``, the pooled representation its head
reads, which distillation matches to the teacher's. Sizes are chosen so that
cost falls down the morph ladder with clear gaps at every rung, in
parameters, FLOPs and ONNX Runtime time alike: transformer > lstm > cnn >
mobilenet > snn. At batch 1 ONNX Runtime's cost is mostly per operator, and
each precision adds its own per-operator overhead (fp16: casts around every
operator without a float16 kernel on an x86 CPU; int8: quantise/dequantise
where float layers meet int8 ones), so the lower rungs have fewer operators,
not only fewer FLOPs: the lstm has five residual blocks and its recurrence, the
cnn four and a 1x1 widening, the mobilenet nine convolutions and the snn two.

>>> import torch
>>> x = torch.rand(3, 32, 32)
>>> [tuple(make_model(v).eval()(x).shape) for v in VARIANTS]
[(3, 5), (3, 5), (3, 5), (3, 5), (3, 5)]
>>> costs = [count_flops(make_model(v)) for v in VARIANTS]
>>> costs == sorted(costs, reverse=True)
True
>>> sizes = [count_params(make_model(v)) for v in VARIANTS]
>>> sizes == sorted(sizes, reverse=True)
True
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from morph.ladder import VARIANTS
from morph.zoo.data import N_CLASSES, input_shape


@contextlib.contextmanager
def no_fastpath():
    """Run attention through its plain modules: the fused fast path of
    nn.TransformerEncoderLayer neither exports to ONNX nor calls the
    sub-modules the FLOP hooks watch."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, then relu."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(channels, channels), nn.ReLU(), *_conv_bn(channels, channels))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def conv_front(c1: int, c2: int, blocks: int) -> nn.Sequential:
    """Two strided convs (to a quarter of the frame's side) and ``blocks`` residual blocks:
    the local feature extractor the transformer, the lstm and the cnn each start with
    (in decreasing width), so that what sits on top decides how far each gets."""
    return nn.Sequential(*_conv_bn(1, c1, stride=2), nn.ReLU(), *_conv_bn(c1, c2, stride=2), nn.ReLU(),
                         *(Residual(c2) for _ in range(blocks)))


class Classifier(nn.Module):
    """``forward`` = ``head(features(x))``; subclasses define ``features`` and ``feature_dim``."""

    feature_dim: int

    def forward(self, x):
        return self.head(self.features(x))


class InspectionTransformer(Classifier):
    """The teacher: a convolutional tokenizer (`conv_front`, 8x8 tokens), a
    pre-norm transformer encoder over the tokens, and sequence pooling (a
    softmax-weighted sum of the tokens, so a defect a few tokens wide is not
    averaged away): a compact convolutional transformer. The head also sees the
    tokenizer's features max-pooled over the frame.

    References: Hassani et al., "Escaping the Big Data Paradigm with Compact
    Transformers", 2021; Vaswani et al., "Attention Is All You Need", 2017.
    """

    def __init__(self, d_model: int = 64, heads: int = 4, layers: int = 2, ff: int = 256, dropout: float = 0.0):
        super().__init__()
        h, w = input_shape()
        self.front = conv_front(12, 24, 3)
        self.embed = nn.Conv2d(24, d_model, 1)
        self.pos = nn.Parameter(torch.randn(1, (h // 4) * (w // 4), d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        # TransformerEncoder deep-copies `layer`, so every clone starts with the
        # same weights; give each its own.
        for clone in self.encoder.layers:
            for module in clone.modules():
                if isinstance(module, nn.MultiheadAttention):
                    module._reset_parameters()
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.norm = nn.LayerNorm(d_model)
        self.attend = nn.Linear(d_model, 1)    # sequence pooling: a learnt weight per token
        self.feature_dim = d_model + 24
        self.head = nn.Linear(self.feature_dim, N_CLASSES)

    def features(self, x):
        local = self.front(x.unsqueeze(1))
        tokens = self.embed(local).flatten(2).transpose(1, 2)
        h = self.norm(self.encoder(tokens + self.pos))
        weights = torch.softmax(self.attend(h), dim=1)
        # The tokenizer's own features, max-pooled, sit beside the attention's: the
        # encoder adds context to what the convolutions find rather than replacing it.
        return torch.cat([(weights * h).sum(dim=1), local.amax(dim=(2, 3))], dim=1)


class InspectionLSTM(Classifier):
    """A `conv_front` of the cnn's width and a block deeper, then an LSTM reading the
    feature map's 8 rows top to bottom;
    its outputs are max-pooled over the rows (a defect may lie on any of them) and the
    head also sees the conv features max-pooled over the frame.

    Reference: Hochreiter and Schmidhuber, "Long Short-Term Memory", 1997.
    """

    def __init__(self, width: int = 24, hidden: int = 64, blocks: int = 5):
        super().__init__()
        h, w = input_shape()
        self.front = conv_front(width // 2, width, blocks)
        self.lstm = nn.LSTM(width * (w // 4), hidden, batch_first=True)
        self.feature_dim = hidden + width
        self.head = nn.Linear(self.feature_dim, N_CLASSES)

    def features(self, x):
        f = self.front(x.unsqueeze(1))                     # [N, C, H/4, W/4]
        rows = f.permute(0, 2, 1, 3).flatten(2)            # [N, H/4, C * W/4]
        out, _ = self.lstm(rows)
        # As in the transformer, the conv features max-pooled sit beside the recurrence's.
        return torch.cat([out.amax(dim=1), f.amax(dim=(2, 3))], dim=1)


class InspectionResNet(Classifier):
    """A small residual CNN: two strided convs to 8x8, residual blocks, then a 1x1
    convolution widening to ``head_width`` channels before global max pooling (as
    ResNet's and MobileNet's last stages are their widest: at 24 pooled channels the
    cnn fell below the mobilenet's accuracy).

    Reference: He et al., "Deep Residual Learning for Image Recognition", 2016.
    """

    def __init__(self, width: int = 24, blocks: int = 4, head_width: int = 64):
        super().__init__()
        self.body = nn.Sequential(*conv_front(width // 2, width, blocks),
                                  *_conv_bn(width, head_width, kernel=1), nn.ReLU())
        self.head = nn.Linear(head_width, N_CLASSES)
        self.feature_dim = head_width

    def features(self, x):
        return self.body(x.unsqueeze(1)).amax(dim=(2, 3))


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """MobileNet's depthwise 3x3 then pointwise 1x1, each with batch norm and ReLU6."""
    return [*_conv_bn(cin, cin, stride, groups=cin), nn.ReLU6(), *_conv_bn(cin, cout, kernel=1), nn.ReLU6()]


class InspectionMobileNet(Classifier):
    """MobileNet-style: a strided stem then depthwise-separable blocks (one at 16x16,
    three at 8x8), global max pooling. Channel counts are multiples of 16: ONNX
    Runtime's int8 depthwise kernel vectorises over 16 channels, and at 12 or 24 it
    ran slower than the residual cnn's int8 convolutions (measured: 0.058 vs 0.047 ms
    at batch 1 for the same blocks at width 12 and 16).

    Reference: Howard et al., "MobileNets: Efficient Convolutional Neural Networks
    for Mobile Vision Applications", 2017.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(1, width, stride=2), nn.ReLU6(),
                                  *_separable(width, 2 * width, 1),
                                  *_separable(2 * width, 4 * width, 2),
                                  *_separable(4 * width, 4 * width, 1),
                                  *_separable(4 * width, 4 * width, 1))
        self.head = nn.Linear(4 * width, N_CLASSES)
        self.feature_dim = 4 * width

    def features(self, x):
        return self.body(x.unsqueeze(1)).amax(dim=(2, 3))


class _Spike(torch.autograd.Function):
    """Heaviside step forward; fast-sigmoid surrogate gradient backward."""

    slope = 10.0

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad / (_Spike.slope * u.abs() + 1.0) ** 2


class InspectionSNN(Classifier):
    """A convolutional layer of leaky integrate-and-fire neurons read out by leaky integrators.

    The frame is direct-encoded: a strided convolution turns it into a constant
    input current (a static frame has no time axis worth spiking over). A LIF
    neuron fires when its membrane crosses 1 and resets by subtraction, over a
    few unrolled time steps (two: on a CPU each step's element-wise updates cost
    more than their arithmetic, and the snn must stay the cheapest rung at every
    precision). The readout layer is convolutional too, of
    non-spiking leaky integrators: their membrane after the last step is the
    convolution of the leak-weighted sum of the spike trains (the synapses are
    linear, so it is computed once on that sum instead of once per step).
    Its largest and mean value over the frame, per channel, feed the linear
    classifier. The loop is plain Python over a fixed number of steps, so
    tracing unrolls it into the ONNX graph; training uses a fast-sigmoid
    surrogate gradient.

    References: Neftci, Mostafa and Zenke, "Surrogate Gradient Learning in Spiking
    Neural Networks", 2019; Zenke and Vogels, "The Remarkable Robustness of
    Surrogate Gradient Learning for Instilling Complex Function in Spiking
    Neural Networks", 2021.
    """

    def __init__(self, c1: int = 16, c2: int = 48, steps: int = 2, beta: float = 0.8):
        super().__init__()
        self.encode = nn.Sequential(*_conv_bn(1, c1, stride=2))
        self.synapse = nn.Sequential(*_conv_bn(c1, c2, stride=2))
        self.feature_dim = 2 * c2
        self.head = nn.Linear(self.feature_dim, N_CLASSES)
        self.steps, self.beta = steps, beta

    def spike(self, mem):
        # The custom autograd Function only matters for the gradient; export
        # traces the plain comparison, which ONNX has (Greater + Cast).
        return _Spike.apply(mem - 1.0) if self.training else (mem > 1.0).to(mem.dtype)

    def features(self, x):
        current = self.encode(x.unsqueeze(1))
        mem, trace = current, None
        for step in range(self.steps):
            if step:
                mem = self.beta * mem + current
            spk = self.spike(mem)
            trace = spk if trace is None else self.beta * trace + spk
            if step + 1 < self.steps:  # the last reset would never be read
                mem = mem - spk
        membrane = self.synapse(trace)      # the readout integrators after the last step
        return torch.cat([membrane.amax(dim=(2, 3)), membrane.mean(dim=(2, 3))], dim=1)


ARCHITECTURES = {
    "transformer": InspectionTransformer,
    "lstm": InspectionLSTM,
    "cnn": InspectionResNet,
    "mobilenet": InspectionMobileNet,
    "snn": InspectionSNN,
}
assert tuple(ARCHITECTURES) == VARIANTS


def make_model(variant: str, **sizes) -> Classifier:
    """A freshly initialised model of ``variant`` (seed torch first for reproducibility);
    ``sizes`` override its constructor's defaults."""
    try:
        return ARCHITECTURES[variant](**sizes)
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module) -> int:
    """FLOPs of one inference (batch 1): 2 x the multiply-accumulates of every
    Linear, Conv2d, LSTM and attention call, counted by forward hooks on a real
    forward pass. Element-wise work (norms, activations, LIF updates) is left
    out: it is small next to the matrix products and the same for all precisions."""
    macs = 0

    def linear(m, inp, out):
        nonlocal macs
        macs += out.numel() * m.in_features

    def conv(m, inp, out):
        nonlocal macs
        macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lstm(m, inp, out):
        nonlocal macs
        x = inp[0]
        steps = x.shape[1] if m.batch_first else x.shape[0]
        macs += steps * 4 * m.hidden_size * (m.input_size + m.hidden_size)

    def attention(m, inp, out):
        nonlocal macs
        length, dim = inp[0].shape[-2], m.embed_dim
        # q/k/v projections, scores and weighted sum, output projection
        macs += length * dim * 3 * dim + 2 * length * length * dim + length * dim * dim

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            hooks.append(module.register_forward_hook(attention))
        elif isinstance(module, nn.Linear) and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
            hooks.append(module.register_forward_hook(linear))
        elif isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv))
        elif isinstance(module, nn.LSTM):
            hooks.append(module.register_forward_hook(lstm))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), no_fastpath():
            model(torch.zeros(1, *input_shape()))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return 2 * macs
