"""Weight-normalised convolutions with RVC's parameter names (``weight_g`` / ``weight_v``).

RVC wraps its convolutions in the legacy ``torch.nn.utils.weight_norm``, which is deprecated
and whose successor (the parametrization) stores ``parametrizations.weight.original0/1``
instead.  These subclasses keep the legacy layout, so RVC checkpoints load with
``strict=True``, and compute the weight inside ``forward`` rather than caching it on the
module, so models stay deep-copyable after a forward pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["WNConv1d", "WNConv2d", "WNConvTranspose1d", "remove_all_weight_norm"]


class _WeightNormMixin:
    """Replace ``weight`` by ``weight_g * weight_v / ||weight_v||`` (norm over all dims but 0).

    Like the legacy implementation, ``weight_g`` and ``weight_v`` are appended after ``bias``
    so the parameter order (and hence optimizer state indexing) matches RVC.
    """

    _parameters: dict[str, nn.Parameter | None]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the convolution's own constructor, then its weight split
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv1d's and Conv2d's forward with the effective weight (the transposed conv has its own)."""
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def _init_weight_norm(self) -> None:
        weight = self._parameters.pop("weight")
        self.register_parameter("weight_g", nn.Parameter(torch.norm_except_dim(weight, 2, 0).detach()))
        self.register_parameter("weight_v", nn.Parameter(weight.detach()))

    @property
    def weight_normed(self) -> bool:
        return "weight_v" in self._parameters

    def effective_weight(self) -> torch.Tensor:
        """The convolution kernel actually applied."""
        if self.weight_normed:
            return torch._weight_norm(self.weight_v, self.weight_g, 0)
        return self._parameters["weight"]

    def remove_weight_norm(self) -> None:
        """Fold g and v into a plain ``weight`` (for inference/export); idempotent."""
        if not self.weight_normed:
            return
        with torch.no_grad():
            weight = self.effective_weight().detach().clone()
        del self._parameters["weight_g"], self._parameters["weight_v"]
        self.register_parameter("weight", nn.Parameter(weight))


class WNConv1d(_WeightNormMixin, nn.Conv1d):
    """``nn.Conv1d`` with legacy-layout weight normalisation."""


class WNConv2d(_WeightNormMixin, nn.Conv2d):
    """``nn.Conv2d`` with legacy-layout weight normalisation."""


class WNConvTranspose1d(_WeightNormMixin, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with legacy-layout weight normalisation (g has shape [in, 1, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(
            x,
            self.effective_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


def remove_all_weight_norm(module: nn.Module) -> None:
    """Fold weight norm in every weight-normalised convolution below ``module``."""
    for sub in module.modules():
        if isinstance(sub, _WeightNormMixin):
            sub.remove_weight_norm()
