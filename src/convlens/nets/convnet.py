"""The convnets of the paper: ZFNet (Fig. 3), the AlexNet replication, small presets and the
Table 3 variants.

Every model is a :class:`ConvNet`: a flat, ordered chain of named stages
(``conv1, relu1, pool1, norm1, conv2, ..., fc8``) so that analyses (the deconvnet, incremental
occlusion, receptive fields) can walk it stage by stage. ReLUs are separate, non-inplace
``nn.ReLU`` modules.

Layer names. The public layer names are :data:`LAYERS` = ``conv1 .. conv5, fc6, fc7`` (plus
``fc8``, the logits). A layer name means the *rectified* output of that layer (the output of its
``reluN`` stage), which is what the paper visualizes; any stage name (``pool1``, ``norm2``,
``pool5`` ...) is accepted too and means that stage's output.

ZFNet paddings (Fig. 3, 3x224x224 input), chosen to reach the paper's sizes:

======  ==========================  =========
stage   op                          output
======  ==========================  =========
conv1   96 7x7, stride 2, pad 1     96x110x110
pool1   3x3 max, stride 2, ceil     96x55x55
norm1   LRN across maps (size 5)    96x55x55
conv2   256 5x5, stride 2, pad 0    256x26x26
pool2   3x3 max, stride 2, ceil     256x13x13
conv3   384 3x3, pad 1              384x13x13
conv4   384 3x3, pad 1              384x13x13
conv5   256 3x3, pad 1              256x13x13
pool5   3x3 max, stride 2           256x6x6 (9216)
fc6/7   4096, 4096 (dropout 0.5)
fc8     C-way (softmax in the loss)
======  ==========================  =========

Pooling uses ``ceil_mode=True`` (the Caffe / cuda-convnet convention) where needed, so that
110 -> 55 and 26 -> 13. AlexNet (Krizhevsky et al. 2012, dense connections in layers 3-5 as in
the paper's replication): conv1 96 11x11 stride 4 pad 2 -> 55, norm, pool -> 27; conv2 256 5x5
pad 2 -> 27, norm, pool -> 13; conv3-5 as ZFNet; pool5 -> 6. AlexNet keeps its original order
(relu, norm, pool); ZFNet uses the paper's (relu, pool, norm).

Variants (Table 3) are named ``base:mod[+mod...]``, e.g. ``zfnet:no34`` or
``zfnet-small:wide345+fc-x2``. See :data:`VARIANTS`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ARCHS",
    "LAYERS",
    "TABLE3_VARIANTS",
    "VARIANTS",
    "ConvNet",
    "ConvNetConfig",
    "ConvSpec",
    "PoolSpec",
    "available_archs",
    "build_model",
    "get_config",
    "init_weights",
    "layer_stage",
    "summary",
]

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


@dataclass(frozen=True)
class PoolSpec:
    kernel: int = 3
    stride: int = 2
    ceil_mode: bool = False


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer and what follows it (relu always; optional pool and LRN)."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: PoolSpec | None = None
    norm: bool = False
    norm_first: bool = False  # AlexNet order: relu -> norm -> pool


@dataclass(frozen=True)
class ConvNetConfig:
    """Everything that defines a ConvNet. ``convs`` are keyed by their layer number."""

    name: str
    input_size: int
    convs: tuple[tuple[int, ConvSpec], ...]
    fc: tuple[tuple[int, int], ...]  # ((6, 4096), (7, 4096)); empty when removed
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.5
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0

    def replace(self, **kw: object) -> ConvNetConfig:
        return dataclasses.replace(self, **kw)  # type: ignore[arg-type]


def _zfnet() -> ConvNetConfig:
    ceil = PoolSpec(3, 2, ceil_mode=True)
    return ConvNetConfig(
        name="zfnet",
        input_size=224,
        convs=(
            (1, ConvSpec(96, 7, 2, 1, pool=ceil, norm=True)),
            (2, ConvSpec(256, 5, 2, 0, pool=ceil, norm=True)),
            (3, ConvSpec(384, 3, 1, 1)),
            (4, ConvSpec(384, 3, 1, 1)),
            (5, ConvSpec(256, 3, 1, 1, pool=PoolSpec(3, 2))),
        ),
        fc=((6, 4096), (7, 4096)),
    )


def _alexnet() -> ConvNetConfig:
    p = PoolSpec(3, 2)
    return ConvNetConfig(
        name="alexnet",
        input_size=224,
        convs=(
            (1, ConvSpec(96, 11, 4, 2, pool=p, norm=True, norm_first=True)),
            (2, ConvSpec(256, 5, 1, 2, pool=p, norm=True, norm_first=True)),
            (3, ConvSpec(384, 3, 1, 1)),
            (4, ConvSpec(384, 3, 1, 1)),
            (5, ConvSpec(256, 3, 1, 1, pool=p)),
        ),
        fc=((6, 4096), (7, 4096)),
    )


def _zfnet_small() -> ConvNetConfig:
    # 28x28 crops (of 32x32 images): stride-1 5x5 conv1 keeps detail, as ZFNet's small stride does.
    # 28 -conv1-> 28 -pool-> 14 -conv2-> 14 -pool-> 7 -conv3,4,5-> 7 -pool5-> 3  (64*3*3 = 576 to fc6)
    ceil = PoolSpec(3, 2, ceil_mode=True)
    return ConvNetConfig(
        name="zfnet-small",
        input_size=28,
        convs=(
            (1, ConvSpec(32, 5, 1, 2, pool=ceil, norm=True)),
            (2, ConvSpec(64, 5, 1, 2, pool=ceil, norm=True)),
            (3, ConvSpec(96, 3, 1, 1)),
            (4, ConvSpec(96, 3, 1, 1)),
            (5, ConvSpec(64, 3, 1, 1, pool=PoolSpec(3, 2))),
        ),
        fc=((6, 256), (7, 256)),
        num_classes=10,
    )


def _alexnet_small() -> ConvNetConfig:
    # AlexNet's large-stride first layer, scaled: 7x7 stride 2 on 28x28 crops.
    # 28 -conv1-> 13 -norm,pool-> 6 -conv2-> 6 -norm,pool-> 3 -conv3,4,5-> 3 -pool5-> 1 (64 to fc6)
    p = PoolSpec(3, 2, ceil_mode=True)
    return ConvNetConfig(
        name="alexnet-small",
        input_size=28,
        convs=(
            (1, ConvSpec(32, 7, 2, 2, pool=p, norm=True, norm_first=True)),
            (2, ConvSpec(64, 5, 1, 2, pool=p, norm=True, norm_first=True)),
            (3, ConvSpec(96, 3, 1, 1)),
            (4, ConvSpec(96, 3, 1, 1)),
            (5, ConvSpec(64, 3, 1, 1, pool=PoolSpec(3, 2))),
        ),
        fc=((6, 256), (7, 256)),
        num_classes=10,
    )


def _zfnet_tiny() -> ConvNetConfig:
    # For tests: same stage structure, a few channels, 32x32 input.
    ceil = PoolSpec(3, 2, ceil_mode=True)
    return ConvNetConfig(
        name="zfnet-tiny",
        input_size=32,
        convs=(
            (1, ConvSpec(8, 5, 2, 1, pool=ceil, norm=True)),
            (2, ConvSpec(12, 3, 1, 1, pool=ceil, norm=True)),
            (3, ConvSpec(16, 3, 1, 1)),
            (4, ConvSpec(16, 3, 1, 1)),
            (5, ConvSpec(12, 3, 1, 1, pool=PoolSpec(3, 2))),
        ),
        fc=((6, 32), (7, 32)),
        num_classes=5,
    )


ARCHS = {
    "zfnet": _zfnet,
    "alexnet": _alexnet,
    "zfnet-small": _zfnet_small,
    "alexnet-small": _alexnet_small,
    "zfnet-tiny": _zfnet_tiny,
}


def _drop_convs(cfg: ConvNetConfig, drop: set[int]) -> ConvNetConfig:
    return cfg.replace(convs=tuple((i, c) for i, c in cfg.convs if i not in drop))


def _drop_fcs(cfg: ConvNetConfig, drop: set[int]) -> ConvNetConfig:
    return cfg.replace(fc=tuple((i, w) for i, w in cfg.fc if i not in drop))


def _scale_fc(cfg: ConvNetConfig, factor: float) -> ConvNetConfig:
    return cfg.replace(fc=tuple((i, int(w * factor)) for i, w in cfg.fc))


def _wide345(cfg: ConvNetConfig) -> ConvNetConfig:
    # Table 3: conv3,4,5 384,384,256 -> 512,1024,512, i.e. x4/3, x8/3, x2 (same factors for presets).
    factors = {3: 4 / 3, 4: 8 / 3, 5: 2.0}
    convs = tuple(
        (i, dataclasses.replace(c, out_channels=round(c.out_channels * factors[i]))) if i in factors
        else (i, c)
        for i, c in cfg.convs
    )
    return cfg.replace(convs=convs)


VARIANTS = {
    "no34": ("Removed layers 3,4", lambda c: _drop_convs(c, {3, 4})),
    "no7": ("Removed layer 7", lambda c: _drop_fcs(c, {7})),
    "no67": ("Removed layers 6,7", lambda c: _drop_fcs(c, {6, 7})),
    "no3467": ("Removed layers 3,4,6,7", lambda c: _drop_fcs(_drop_convs(c, {3, 4}), {6, 7})),
    "fc-x0.5": ("Adjust layers 6,7: half the units (2048 for the full nets)", lambda c: _scale_fc(c, 0.5)),
    "fc-x2": ("Adjust layers 6,7: twice the units (8192 for the full nets)", lambda c: _scale_fc(c, 2.0)),
    "wide345": ("Adjust layers 3,4,5: 512,1024,512 maps (scaled for presets)", _wide345),
}

# The rows of Table 3, as variant suffixes ("" = the unmodified base model).
TABLE3_VARIANTS = ("", "no34", "no7", "no67", "no3467", "fc-x0.5", "fc-x2", "wide345", "wide345+fc-x2")


def available_archs() -> list[str]:
    """All base architecture names (variants are ``base:mod``)."""
    return sorted(ARCHS)


def get_config(name: str, *, num_classes: int | None = None, in_channels: int | None = None) -> ConvNetConfig:
    """Config for ``name`` (a base from :data:`ARCHS`, optionally ``:mod+mod`` from :data:`VARIANTS`).

    Raises:
        ValueError: unknown base architecture or variant.
    """
    base, _, mods = name.partition(":")
    if base not in ARCHS:
        raise ValueError(
            f"unknown architecture {base!r}; expected one of {', '.join(sorted(ARCHS))} "
            f"(optionally with ':variant', variants: {', '.join(VARIANTS)})"
        )
    cfg = ARCHS[base]()
    for mod in filter(None, mods.split("+")):
        if mod not in VARIANTS:
            raise ValueError(f"unknown variant {mod!r} in {name!r}; expected one of {', '.join(VARIANTS)}")
        cfg = VARIANTS[mod][1](cfg)
    cfg = cfg.replace(name=name)
    if num_classes is not None:
        cfg = cfg.replace(num_classes=num_classes)
    if in_channels is not None:
        cfg = cfg.replace(in_channels=in_channels)
    return cfg


def _out_size(size: int, k: int, s: int, p: int, ceil: bool = False) -> int:
    num = size + 2 * p - k
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:  # PyTorch: last window must start inside the input
        out -= 1
    return out


class ConvNet(nn.Module):
    """A ZFNet/AlexNet-style convnet built from a :class:`ConvNetConfig`.

    Stages are registered in forward order; ``self.stage_names`` lists them. ``forward`` returns
    logits (the softmax is in the loss).

    Example:
        >>> model = build_model("zfnet-tiny")
        >>> acts = model.features(torch.randn(2, 3, 32, 32), ["conv1", "fc7"])
        >>> acts["conv1"].shape
        torch.Size([2, 8, 15, 15])
    """

    def __init__(self, cfg: ConvNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        names: list[str] = []
        ch, size = cfg.in_channels, cfg.input_size

        def add(name: str, module: nn.Module) -> None:
            self.add_module(name, module)
            names.append(name)

        for i, c in cfg.convs:
            add(f"conv{i}", nn.Conv2d(ch, c.out_channels, c.kernel, c.stride, c.padding))
            add(f"relu{i}", nn.ReLU())
            ch, size = c.out_channels, _out_size(size, c.kernel, c.stride, c.padding)
            post: list[tuple[str, nn.Module]] = []
            if c.norm:
                post.append((f"norm{i}", nn.LocalResponseNorm(cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k)))
            if c.pool is not None:
                pool = nn.MaxPool2d(c.pool.kernel, c.pool.stride, ceil_mode=c.pool.ceil_mode)
                post.insert(len(post) if c.norm_first else 0, (f"pool{i}", pool))
                size = _out_size(size, c.pool.kernel, c.pool.stride, 0, c.pool.ceil_mode)
            for n, m in post:
                add(n, m)
        add("flatten", nn.Flatten(1))
        width = ch * size * size
        self.feature_shape = (ch, size, size)
        for i, w in cfg.fc:
            add(f"fc{i}", nn.Linear(width, w))
            add(f"relu{i}", nn.ReLU())
            add(f"drop{i}", nn.Dropout(cfg.dropout))
            width = w
        add("fc8", nn.Linear(width, cfg.num_classes))
        self.stage_names: tuple[str, ...] = tuple(names)
        self.layer_names: tuple[str, ...] = tuple(n for n in names if n.startswith(("conv", "fc")))

    def stages(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs in forward order."""
        return [(n, getattr(self, n)) for n in self.stage_names]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> flattened last conv-stage output, (B, C*H*W)."""
        for name, m in self.stages():
            x = m(x)
            if name == "flatten":
                return x
        raise AssertionError("no flatten stage")

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features -> logits (B, num_classes)."""
        start = self.stage_names.index("flatten") + 1
        for name in self.stage_names[start:]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def resolve(self, layer: str) -> str:
        """Stage whose output a layer name means (``conv3`` -> ``relu3``, ``pool1`` -> ``pool1``)."""
        return layer_stage(self, layer)

    def features(self, x: torch.Tensor, layers: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Named activations, running the net only as far as the deepest requested layer.

        Args:
            x: (B, C, H, W) normalized images.
            layers: layer names (:data:`LAYERS`, ``fc8``) or stage names.

        Returns:
            dict layer name -> activation tensor, (B, C, H, W) for conv stages, (B, F) for fc.
        """
        wanted = {self.resolve(name): name for name in layers}
        out: dict[str, torch.Tensor] = {}
        for name, m in self.stages():
            x = m(x)
            if name in wanted:
                out[wanted[name]] = x
                if len(out) == len(wanted):
                    break
        return {name: out[name] for name in layers}


def layer_stage(model: ConvNet, layer: str) -> str:
    """Map a public layer name to the stage whose output it is; validate it."""
    if layer in model.layer_names and layer != "fc8":
        num = layer[4:] if layer.startswith("conv") else layer[2:]
        return f"relu{num}"
    if layer in model.stage_names:
        return layer
    known = [n for n in model.layer_names] + [n for n in model.stage_names if n not in model.layer_names]
    raise ValueError(f"unknown layer {layer!r} for {model.cfg.name}; expected one of {', '.join(known)}")


def init_weights(model: nn.Module, scheme: str = "paper", *, generator: torch.Generator | None = None) -> None:
    """Initialize conv/linear weights in place.

    ``paper``: every weight drawn from N(0, 0.01^2) ("all weights are initialized to 1e-2"),
    biases 0. ``kaiming``: He-normal (fan_in, relu gain) weights, biases 0 - the modern choice,
    which trains deep variants from scratch without the long initial plateau.
    """
    if scheme not in ("paper", "kaiming"):
        raise ValueError(f"init must be 'paper' or 'kaiming', got {scheme!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                if scheme == "paper":
                    m.weight.normal_(0.0, 0.01, generator=generator)
                else:
                    fan_in = m.weight[0].numel()
                    m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    init: str = "paper",
    seed: int | None = None,
) -> ConvNet:
    """Build a named architecture (``zfnet``, ``alexnet``, ``zfnet-small``, ``zfnet:no34`` ...).

    Args:
        name: base architecture, optionally with Table 3 variants (``base:mod+mod``).
        num_classes: size of fc8 (default: the preset's).
        in_channels: image channels (default 3).
        init: ``paper`` (N(0, 1e-4) weights, zero biases) or ``kaiming``.
        seed: makes the initialization reproducible.

    Example:
        >>> model = build_model("zfnet", num_classes=1000)
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """
    cfg = get_config(name, num_classes=num_classes, in_channels=in_channels)
    model = ConvNet(cfg)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    init_weights(model, init, generator=gen)
    return model


def summary(model: ConvNet, input_size: int | None = None) -> list[dict[str, object]]:
    """Per stage: name, output shape (without batch) and parameter count."""
    size = input_size or model.cfg.input_size
    x = torch.zeros(1, model.cfg.in_channels, size, size)
    rows: list[dict[str, object]] = []
    with torch.no_grad():
        for name, m in model.stages():
            x = m(x)
            params = sum(p.numel() for p in m.parameters())
            rows.append({"stage": name, "shape": tuple(x.shape[1:]), "params": params})
    return rows
