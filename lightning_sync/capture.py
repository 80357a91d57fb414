"""Layer lookup by name and forward hooks that keep the current step's activations.

Every callback and metric of lightning-sync names layers as ``pl_module.named_modules()`` does.
The prefixes that wrappers add (``module.`` from DistributedDataParallel, ``_orig_mod.`` from
``torch.compile``) are ignored, so one name works on the bare module and on the wrapped one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module", "_orig_mod")
"""Name components that DDP (``module``) and ``torch.compile`` (``_orig_mod``) insert."""


def canonical_name(name: str) -> str:
    """Return ``name`` without the components that DDP and ``torch.compile`` insert.

    Example::

        >>> canonical_name("module.net._orig_mod.conv2")
        'net.conv2'
    """
    parts = [part for part in name.split(".") if part not in WRAPPER_PREFIXES]
    return ".".join(parts)


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Map the canonical name of every submodule of ``model`` to the submodule.

    The root module itself (empty name) is left out. When a wrapper and the module it wraps share
    a canonical name (``conv`` and ``conv._orig_mod`` after ``torch.compile(conv)``), the wrapped
    module wins, because it owns the weights.
    """
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        key = canonical_name(name)
        if key:
            # named_modules lists a wrapper before the module it wraps, so the last one is the inner module.
            layers[key] = module
    return layers


def default_layer_name(model: nn.Module, layer_type: type[nn.Module] = nn.Conv2d) -> str:
    """Return the canonical name of the last ``layer_type`` module of ``model``.

    Raises:
        ValueError: if ``model`` contains no module of that type.
    """
    matches = [name for name, module in named_layers(model).items() if isinstance(module, layer_type)]
    if not matches:
        raise ValueError(
            f"{type(model).__name__} contains no {layer_type.__name__} layer, so no default layer can be"
            " chosen. Pass `layers=[...]` with names from `named_modules()`."
        )
    return matches[-1]


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Look up each name of ``names`` in ``model`` and return ``{canonical name: module}``.

    Raises:
        ValueError: if a name is unknown; the message lists the valid names.
    """
    layers = named_layers(model)
    resolved: dict[str, nn.Module] = {}
    for name in names:
        key = canonical_name(name)
        if key not in layers:
            valid = ", ".join(repr(valid_name) for valid_name in layers) or "(none)"
            raise ValueError(
                f"Layer {name!r} was not found in {type(model).__name__}. Valid layer names are: {valid}."
            )
        resolved[key] = layers[key]
    return resolved


def normalize_layer_names(layers: str | Iterable[str] | None, argument: str = "layers") -> list[str] | None:
    """Turn the ``layers`` argument of a callback into a list of names, or ``None`` for the default.

    Raises:
        ValueError: if the list is empty, a name is not a non-empty string, or a name repeats.
    """
    if layers is None:
        return None
    if not isinstance(layers, (str, Iterable)):
        raise ValueError(f"Expected `{argument}` to be a layer name or a list of layer names, but got {layers!r}.")
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError(f"Expected `{argument}` to name at least one layer, but got an empty list. Pass None for the default layer.")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Expected every entry of `{argument}` to be a non-empty layer name, but got {name!r}.")
    canonical = [canonical_name(name) for name in names]
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"Expected distinct layer names in `{argument}`, but got {names!r}.")
    return canonical


def _inactive_hook(module: nn.Module, inputs: Any, output: Any) -> None:
    """Stand in for a capture hook in a copied or unpickled module, where nothing should be captured."""
    return None


def _make_inactive_hook() -> Callable[[nn.Module, Any, Any], None]:
    return _inactive_hook


class _CaptureHook:
    """Forward hook that appends a layer's output to a shared store while its owner allows it.

    A copy of the module (``copy.deepcopy``, ``torch.save``) receives an inactive hook instead,
    because the stored tensors belong to the original's autograd graph and cannot be copied.
    """

    def __init__(self, capture: ActivationCapture, name: str) -> None:
        self.capture = capture
        self.name = name

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.capture.should_capture():
            self.capture._store(self.name, output)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_make_inactive_hook, ())


class ActivationCapture:
    """Forward hooks on named layers that keep only the activations of the current step.

    Activations are captured only while :attr:`enabled` is true and, unless ``capture_no_grad`` is
    set, only while autograd records (so evaluation under ``torch.no_grad()`` captures nothing).
    A layer called several times in one step keeps every output, in call order. :meth:`clear`
    drops them; the owning callback calls it at the end of each batch.

    Args:
        capture_no_grad: also capture when autograd is disabled (used by metrics on validation data).
        detach: store detached tensors (metrics never need gradients).

    Example::

        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> capture = ActivationCapture()
        >>> layers = capture.attach(net, ["0"])
        >>> capture.enabled = True
        >>> _ = net(torch.ones(1, 1, 5, 5))
        >>> capture.outputs("0")[0].shape
        torch.Size([1, 2, 3, 3])
        >>> capture.detach_hooks()
    """

    def __init__(self, capture_no_grad: bool = False, detach: bool = False) -> None:
        self.capture_no_grad = capture_no_grad
        self.detach = detach
        self.enabled = False
        self.layers: dict[str, nn.Module] = {}
        self._handles: list[RemovableHandle] = []
        self._activations: dict[str, list[Tensor]] = {}

    def attach(self, model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
        """Resolve ``names`` in ``model`` and register one forward hook per layer."""
        self.detach_hooks()
        self.layers = resolve_layers(model, names)
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(_CaptureHook(self, name)))
        return self.layers

    def detach_hooks(self) -> None:
        """Remove every hook and drop the stored activations."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    @property
    def attached(self) -> bool:
        """Whether hooks are currently registered."""
        return bool(self._handles)

    def should_capture(self) -> bool:
        """Return whether a forward pass right now would be captured."""
        return self.enabled and (self.capture_no_grad or torch.is_grad_enabled())

    def _store(self, name: str, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"Layer {name!r} returned {type(output).__name__}, but lightning-sync needs a tensor output."
                " Hook a layer that returns a single tensor."
            )
        self._activations.setdefault(name, []).append(output.detach() if self.detach else output)

    def outputs(self, name: str) -> list[Tensor]:
        """Return the outputs of layer ``name`` captured since the last :meth:`clear`, in call order."""
        return self._activations.get(name, [])

    def clear(self) -> None:
        """Drop every stored activation, freeing the autograd graph they keep alive."""
        self._activations = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_activations"] = {}
        state["_handles"] = []
        return state


def require_activation_maps(name: str, activation: Tensor) -> None:
    """Check that ``activation`` is a batch of activation maps ``(N, C, H, W)``.

    Raises:
        ValueError: naming the layer and the shape it produced.
    """
    if activation.dim() != 4:
        raise ValueError(
            f"Layer {name!r} produced an output of shape {tuple(activation.shape)}, but focus regularization"
            " needs 4-D activation maps (N, C, H, W). Hook a convolutional layer instead."
        )
