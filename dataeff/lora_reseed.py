"""A fresh LoRA initialisation without re-attaching: the adapter's weights re-drawn in place.

CoS-Low is averaged over ``draws`` seeded LoRA initialisations. Attaching an adapter with peft
(``get_peft_model``: one new ``lora_A``/``lora_B`` pair per target module) and unloading it costs
0.2-0.4 s per draw on SmolLM2 on 2 CPU cores (210 modules), while the next draw only needs other
random values in the same tensors. :func:`reseed_lora` draws them in place in 0.07 s, consuming
the RNG exactly as :func:`dataeff.models.attach_lora` ``(model, settings, seed)`` does with peft's
default initialisation: for each LoRA module in creation order, ``nn.Linear`` initialises A and B
(Kaiming uniform, ``a = sqrt(5)``), then peft re-draws A the same way and zeroes B. The values are
drawn on the CPU in fp32, as peft creates the layers, then copied to the adapter's device and
dtype. tests/test_coslow.py checks that the weights equal a fresh attach bit for bit.
"""

from __future__ import annotations

import math

import torch

ADAPTER = "default"
"""The adapter name :func:`dataeff.models.attach_lora` creates (peft's default)."""


def _lora_layers(peft_model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for _, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


def can_reseed(peft_model) -> bool:
    """Whether :func:`reseed_lora` reproduces a fresh attach of this adapter: peft's default
    initialisation (``init_lora_weights=True``), no DoRA, one ``lora_A``/``lora_B`` linear pair per layer."""
    config = getattr(peft_model, "peft_config", {}).get(ADAPTER)
    if config is None or config.init_lora_weights is not True or getattr(config, "use_dora", False):
        return False
    layers = _lora_layers(peft_model)
    return bool(layers) and all(
        ADAPTER in layer.lora_A
        and ADAPTER in layer.lora_B
        and isinstance(layer.lora_A[ADAPTER], torch.nn.Linear)
        and isinstance(layer.lora_B[ADAPTER], torch.nn.Linear)
        and layer.lora_A[ADAPTER].bias is None
        and layer.lora_B[ADAPTER].bias is None
        for layer in layers
    )


def _kaiming(shape: torch.Size) -> torch.Tensor:
    """What ``nn.Linear(..., bias=False)`` and peft draw for a weight of ``shape`` (CPU, fp32)."""
    out = torch.empty(shape, dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(out, a=math.sqrt(5))
    return out


@torch.no_grad()
def reseed_lora(peft_model, seed: int) -> bool:
    """Re-draw the attached adapter's weights in place as a fresh ``attach_lora(..., seed)`` would.

    Args:
        peft_model: a model returned by :func:`dataeff.models.attach_lora`.
        seed: the seed a fresh attach would use.

    Returns:
        ``True`` when done; ``False`` (nothing changed) when :func:`can_reseed` is false: re-attach instead.
    """
    if not can_reseed(peft_model):
        return False
    torch.manual_seed(seed)
    for layer in _lora_layers(peft_model):
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        _kaiming(a.shape)  # nn.Linear's own initialisation of A, then of B: drawn, then replaced by peft
        _kaiming(b.shape)
        a.copy_(_kaiming(a.shape))
        b.zero_()
    return True
