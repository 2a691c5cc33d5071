"""Torch definitions of the five zoo variants, heaviest first, and how to count their cost.

Every model maps a float32 batch ``[N, 8, 8]`` to logits ``[N, 10]``. Sizes are
chosen so the analytical cost falls down the morph ladder: transformer > lstm >
cnn > mobilenet > snn.

>>> import torch
>>> x = torch.rand(3, 8, 8)
>>> [tuple(make_model(v).eval()(x).shape) for v in VARIANTS]
[(3, 10), (3, 10), (3, 10), (3, 10), (3, 10)]
>>> costs = [count_flops(make_model(v)) for v in VARIANTS]
>>> costs == sorted(costs, reverse=True)
True
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from morph.ladder import VARIANTS

N_CLASSES = 10


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


class DigitTransformer(nn.Module):
    """Pre-norm TransformerEncoder over the 8 pixel rows, mean-pooled: the teacher."""

    def __init__(self, d_model: int = 48, heads: int = 4, layers: int = 2, ff: int = 96, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.pos = nn.Parameter(torch.randn(1, 8, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        # TransformerEncoder deep-copies `layer`, so every clone starts with the
        # same weights; give each its own (and ONNX export would otherwise store
        # identical initialisers once if a layer never moved).
        for clone in self.encoder.layers:
            for module in clone.modules():
                if isinstance(module, nn.MultiheadAttention):
                    module._reset_parameters()
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, N_CLASSES)

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(self.norm(h.mean(dim=1)))


class DigitLSTM(nn.Module):
    """One LSTM layer reading the rows top to bottom; classifies from the last state."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, N_CLASSES)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, then relu."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(channels, channels), nn.ReLU(), *_conv_bn(channels, channels))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class DigitResNet(nn.Module):
    """A small residual CNN on the 8x8 image: stem, residual block, strided conv to 4x4, pool."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, width), nn.ReLU(),
            Residual(width),
            *_conv_bn(width, 2 * width, stride=2), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, N_CLASSES)

    def forward(self, x):
        return self.head(self.features(x.unsqueeze(1)).mean(dim=(2, 3)))


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """MobileNet's depthwise 3x3 then pointwise 1x1, each with batch norm and ReLU6."""
    return [*_conv_bn(cin, cin, stride, groups=cin), nn.ReLU6(), *_conv_bn(cin, cout, kernel=1), nn.ReLU6()]


class DigitMobileNet(nn.Module):
    """MobileNet-style: a plain stem then depthwise-separable blocks."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, width), nn.ReLU6(),
            *_separable(width, 2 * width, 1),
            *_separable(2 * width, 4 * width, 2),
            *_separable(4 * width, 4 * width, 1),
        )
        self.head = nn.Linear(4 * width, N_CLASSES)

    def forward(self, x):
        return self.head(self.features(x.unsqueeze(1)).mean(dim=(2, 3)))


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


class DigitSNN(nn.Module):
    """Leaky integrate-and-fire hidden layer and a leaky-integrator readout, unrolled over time.

    The image is direct-encoded: its 64 pixels drive the hidden neurons with a
    constant current at every step (a static image has no time axis worth
    spiking over). A hidden neuron fires when its membrane crosses the
    threshold and resets by subtraction. The readout neurons integrate the
    spike trains with the same leak; their membrane averaged over the steps
    gives the logits. The readout is linear, so the spikes are integrated
    first and the readout weights applied once (the same function as applying
    them at every step, up to the bias scale, and one Gemm for ONNX instead of
    one per step sharing a weight, which dynamic quantisation mishandles).
    The loop is plain Python over a fixed number of steps, so tracing unrolls
    it into the ONNX graph.
    """

    def __init__(self, hidden: int = 96, steps: int = 6, beta: float = 0.8, threshold: float = 1.0):
        super().__init__()
        self.fc_in = nn.Linear(64, hidden)
        self.fc_out = nn.Linear(hidden, N_CLASSES)
        self.steps, self.beta, self.threshold = steps, beta, threshold

    def spike(self, u):
        # The custom autograd Function only matters for the gradient; export
        # traces the plain comparison, which ONNX has (Greater + Cast).
        return _Spike.apply(u) if self.training else (u > 0).to(u.dtype)

    def forward(self, x):
        current = self.fc_in(x.flatten(1))
        mem = trace = total = None
        for _ in range(self.steps):
            mem = current if mem is None else self.beta * mem + current
            spk = self.spike(mem - self.threshold)
            mem = mem - spk.detach() * self.threshold
            trace = spk if trace is None else self.beta * trace + spk
            total = trace if total is None else total + trace
        return self.fc_out(total / self.steps)


ARCHITECTURES = {
    "transformer": DigitTransformer,
    "lstm": DigitLSTM,
    "cnn": DigitResNet,
    "mobilenet": DigitMobileNet,
    "snn": DigitSNN,
}
assert tuple(ARCHITECTURES) == VARIANTS


def make_model(variant: str) -> nn.Module:
    """A freshly initialised model of ``variant`` (seed torch first for reproducibility)."""
    try:
        return ARCHITECTURES[variant]()
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
            model(torch.zeros(1, 8, 8))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return 2 * macs
