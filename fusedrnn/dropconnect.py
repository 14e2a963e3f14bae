"""DropConnect on the recurrent weights (Wan et al. 2013; Merity et al.'s weight-dropped LSTM), as haste does it.

haste's layers take ``dropout=p`` for it (``F.dropout(recurrent_kernel, p, training)`` in each call); the
stacked modules here take ``dropconnect=p`` (``dropout`` keeps torch.nn's meaning: between layers):

* in training, each call draws one mask per layer-direction for its whole sequence and runs the layer with
  ``F.dropout(weight_hh, p)``: each element of ``weight_hh`` zeroed with probability ``p``, the others
  scaled by ``1 / (1 - p)``, so the expected weight is ``weight_hh``;
* in evaluation, ``weight_hh`` as it is (bitwise the call without DropConnect).

The masked weight is an ordinary tensor the layer's kernels read in place of the parameter, so every
backend runs it with its fused kernels unchanged, and autograd carries the gradient through the mask to
the parameter (``mask / (1 - p)`` times the masked weight's gradient).  Only ``weight_hh``: the input
weights, the biases, the peepholes and a cell's extra weights are not dropped (haste drops its
``recurrent_kernel`` alone).  The masks come from the default generator of the weight's device
(``torch.manual_seed`` reproduces them): for each layer-direction, forward first, when the call reads its
weights, before that layer-direction's zoneout mask.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F


def check_dropconnect(rate) -> float:
    """``rate`` as a float, or ValueError naming ``dropconnect`` unless it is a number in [0, 1) (a rate of
    1 would zero the recurrent weight and divide by zero; bools are refused as torch.nn's ``dropout``
    check refuses them)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise ValueError("dropconnect should be a number in range [0, 1) representing the probability of an "
                         f"element of the recurrent weight being zeroed, got {rate!r}")
    return float(rate)


def drop_recurrent_weight(weight_hh: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """The recurrent weight a call runs with: ``weight_hh`` itself outside training or at rate 0, else one
    ``F.dropout`` draw (a fresh mask, the kept elements scaled by ``1 / (1 - rate)``)."""
    if not training or rate == 0:
        return weight_hh
    return F.dropout(weight_hh, rate, training=True)
