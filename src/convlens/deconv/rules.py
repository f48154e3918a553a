"""Which projection rule shows something for a given layer: ``rule="auto"``.

The three rules of :mod:`convlens.deconv.project` read the image in different places:

* ``deconvnet`` (Zeiler & Fergus, the paper): on the way down the signal is rectified at every
  ReLU and unpooled with the max-pool **switches** recorded on the way up. The switches are its
  only contact with the image: above the highest max pooling below a unit, the projection is a
  fixed pattern that depends only on the unit's position. On the paper's nets (ZFNet, AlexNet,
  VGG: a max pooling every one to four convolutions) the switches carry the image; on nets without
  max pooling (MobileNet, EfficientNet, most modern CNNs) every image gives the same projection.
* ``guided`` (Springenberg et al. 2015): rectifies the signal *and* gates it with the forward
  ReLUs, so it follows the image at every layer (sharper, at times closer to an edge detector).
* ``gradient``: plain backprop, ``value * d(unit)/d(input)`` (noisy, signed).

``auto`` (:func:`resolve_rule`) picks ``deconvnet`` where a max pooling sits at most
:data:`MAX_CONVS_ABOVE_POOL` weighted layers below the unit (counting the unit's own layer), and
``guided`` everywhere else; the reason is returned so that outputs can say why.
"""
from __future__ import annotations

from torch import nn

__all__ = ["MAX_CONVS_ABOVE_POOL", "RULES", "RULE_CHOICES", "resolve_rule"]

RULES = ("deconvnet", "guided", "gradient")
RULE_CHOICES = ("auto", *RULES)
MAX_CONVS_ABOVE_POOL = 4
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d, nn.FractionalMaxPool2d)
_WEIGHTED = (nn.Conv2d, nn.Linear)


def _module_name(model: nn.Module, layer: str) -> str:
    resolve = getattr(model, "resolve", None)
    if callable(resolve) and hasattr(model, "stages"):
        return str(resolve(layer))
    return layer


def resolve_rule(model: nn.Module, layer: str, rule: str = "auto") -> tuple[str, str]:
    """The projection rule to use for ``layer`` and why: ``(rule, reason)``.

    Args:
        model: a :class:`~convlens.nets.convnet.ConvNet` or any ``nn.Module`` CNN.
        layer: the layer the units live in (``conv5``, ``features.3``, ``layer2.1`` ...).
        rule: ``deconvnet``, ``guided`` or ``gradient`` (returned as is, reason ``"requested"``), or
            ``auto``: ``deconvnet`` when a max pooling lies at most :data:`MAX_CONVS_ABOVE_POOL`
            conv/linear layers below the unit (the deconvnet's projection then depends on the image
            through the pooling switches, as on the paper's nets), else ``guided``.

    The walk follows module registration order (``named_modules``), which is the forward order of
    sequential nets and of torchvision's models; max poolings called as functions in ``forward``
    are not seen (``auto`` then picks ``guided``).

    Raises:
        ValueError: unknown rule or layer.

    Example:
        >>> resolve_rule(torchvision.models.mobilenet_v2(), "features.3")
        ('guided', 'no max pooling below features.3: ...')
    """
    if rule not in RULE_CHOICES:
        raise ValueError(f"rule must be one of {', '.join(RULE_CHOICES)}, got {rule!r}")
    if rule != "auto":
        return rule, "requested"
    name = _module_name(model, layer)
    named = list(model.named_modules())
    last = None
    for i, (n, _) in enumerate(named):
        if n == name or n.startswith(name + "."):
            last = i
    if last is None:
        from convlens.core.capture import get_module

        get_module(model, name)  # raises ValueError with the closest names
        raise ValueError(f"layer {layer!r} not found in {type(model).__name__}")
    weighted = 0
    for n, m in reversed(named[:last + 1]):
        if isinstance(m, _POOLS):
            if weighted <= MAX_CONVS_ABOVE_POOL:
                return "deconvnet", (f"max pooling {n} is {weighted} conv/linear layers below {layer}: the deconvnet "
                                     "projection follows the image through its switches, the paper's rule")
            return "guided", (f"the nearest max pooling below {layer}, {n}, is {weighted} conv/linear layers down: "
                              "the deconvnet projection would be nearly the same pattern for every image, so guided "
                              "backprop, which also gates with the forward ReLUs")
        if isinstance(m, _WEIGHTED):
            weighted += 1
    if weighted <= 1:
        return "deconvnet", (f"no pooling and one conv layer below {layer}: every rule projects its units to "
                             "their filter scaled by the activation; the paper's deconvnet")
    return "guided", (f"no max pooling below {layer}: the deconvnet projection would depend only on the unit's "
                      "position, not on the image, so guided backprop, which gates with the forward ReLUs")
