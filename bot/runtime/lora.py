"""Several LoRA adapters on one base model, chosen per row of each forward pass.

peft's ``PeftModel.add_adapter`` + ``set_adapter`` cost ~300 ms and ~20 ms of Python on a
3 M-parameter model (module-tree walks), far more than a decode step, and would have to run on
the generation thread. Here an adapter's matrices are matched to the layers directly (``prepare``, a
third of a millisecond on the default model, run by the worker between two steps); adding one is a
dict insert. Before each forward pass ``route`` says which adapter each row runs under,
so rows of the active adapter, the canary and the base model share one pass: a hook adds each
adapter's update to its own rows (all rows at once when they share one). The math is peft's eval-mode LoRA,
``y = W x + (alpha / r) · B A x`` (``alpha / √r`` with rsLoRA), read from peft's own files. A target
layer is an ``nn.Linear`` or GPT-2's ``Conv1D`` (weight stored transposed, which peft's
``fan_in_fan_out`` flag records; its A and B are stored as for a linear layer, so the update is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from bot.runtime.adapters import VerifiedAdapter
from loopdesk.adapter_format import InvalidAdapterError

PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraDelta:
    """One target layer's update: ``x @ down @ up`` (``up`` already carries the scaling)."""

    down: torch.Tensor
    up: torch.Tensor


def prepare(model: nn.Module, adapter: VerifiedAdapter) -> dict[str, LoraDelta]:
    """Match an adapter's weights to ``model``'s linear layers (read-only on the model).

    Raises:
        InvalidAdapterError: an adapter feature this runtime does not serve, or weights that do not
            fit the model's layers.
    """
    config, version = adapter.config, adapter.version
    unsupported = [name for name, on in (("DoRA", config.use_dora), ("bias", config.bias != "none"),
                                         ("lora_bias", config.lora_bias),
                                         ("alpha_pattern", bool(config.alpha_pattern)),
                                         ("modules_to_save", bool(config.modules_to_save))) if on]
    if unsupported:
        raise InvalidAdapterError(f"{version}: LoRA features not served: {', '.join(unsupported)}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.weights.items():
        if not key.startswith(PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise InvalidAdapterError(f"{version}: unexpected tensor {key}")
        module, kind = key[len(PREFIX):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        pairs.setdefault(module, {})[kind] = tensor
    deltas = {}
    for name, pair in pairs.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise InvalidAdapterError(f"{version}: the base model has no layer {name}") from None
        features = _features(layer)
        if features is None or set(pair) != {"lora_A", "lora_B"}:
            raise InvalidAdapterError(f"{version}: {name} is not a linear layer with lora_A and lora_B")
        (n_in, n_out), (a, b) = features, (pair["lora_A"], pair["lora_B"])
        rank = a.shape[0]
        if a.shape != (rank, n_in) or b.shape != (n_out, rank):
            raise InvalidAdapterError(f"{version}: {name} shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit "
                                      f"{n_in}->{n_out}")
        scale = config.lora_alpha / (math.sqrt(rank) if config.use_rslora else rank)
        dtype = layer.weight.dtype
        deltas[name] = LoraDelta(a.t().contiguous().to(dtype), (b.t() * scale).contiguous().to(dtype))
    if not deltas:
        raise InvalidAdapterError(f"{version}: no LoRA weights")
    return deltas


def _features(layer: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a layer LoRA can target, None for any other layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):  # y = x @ W + b, W stored [in, out]
        return layer.weight.shape[0], layer.weight.shape[1]
    return None


class MultiLora:
    """Forward hooks that add each row's adapter update to the target layers' outputs."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._adapters: dict[str, dict[str, LoraDelta]] = {}
        self._hooked: set[str] = set()
        self._groups: list[tuple[dict[str, LoraDelta], torch.Tensor | None]] = []  # (deltas, rows; None: all)

    def add(self, version: str, deltas: dict[str, LoraDelta]) -> None:
        """Serve ``version`` from now on (call between forward passes)."""
        for name in deltas.keys() - self._hooked:
            self.model.get_submodule(name).register_forward_hook(self._hook(name))
            self._hooked.add(name)
        self._adapters[version] = deltas

    def remove(self, version: str) -> None:
        self._adapters.pop(version, None)

    def __contains__(self, version: str) -> bool:
        return version in self._adapters

    def route(self, versions: Sequence[str | None]) -> None:
        """Run row ``i`` of the next forward passes under adapter ``versions[i]`` (None: the base model).

        Raises:
            KeyError: a version that was never added or was removed.
        """
        rows: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            if version is not None:
                rows.setdefault(version, []).append(i)
        self._groups = [(self._adapters[v], None if len(index) == len(versions) else torch.tensor(index))
                        for v, index in rows.items()]

    def _hook(self, name: str):
        def add_delta(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            for deltas, rows in self._groups:
                delta = deltas.get(name)
                if delta is None:
                    continue
                if rows is None:
                    output = output + (x @ delta.down) @ delta.up
                else:
                    output = output.index_add_(0, rows, (x[rows] @ delta.down) @ delta.up)  # a fresh tensor
            return output

        return add_delta
