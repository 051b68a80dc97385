"""MMoE input composer and the multi-gate mixture of experts.

Notation: B batch, E experts, T tasks, I MMoE input width, H expert output width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import MLP, AlignedLinear, make_activation

# ------------------------------------------------------------------------------------- composer


class PartProjector(nn.Sequential):
    """One composer part: ``[Linear(in -> proj)] -> [LayerNorm] -> [Dropout]``.

    ``proj_dim=None`` keeps the part's width (no Linear).
    """

    def __init__(self, in_dim: int, proj_dim: int | None, *, norm: str, dropout: float) -> None:
        layers: list[nn.Module] = []
        width = int(in_dim)
        if proj_dim is not None:
            layers.append(AlignedLinear(width, int(proj_dim)))
            width = int(proj_dim)
        if norm == "layernorm":
            layers.append(nn.LayerNorm(width))
        elif norm != "none":
            raise ValueError(f"part norm must be 'none' or 'layernorm' (got {norm!r})")
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.out_dim = width


class MMoEInputComposer(nn.Module):
    """Builds the MMoE input from the backbone's parts.

    Each named part ``[B, d_p]`` goes through its :class:`PartProjector`; the results are fused by
    ``concat`` (``[B, sum_p d'_p]``) or ``sum`` (``[B, d']``, all projected widths equal); the
    adapter MLP then maps the fused vector to ``out_dim``: hidden layers ``adapter_dims``
    (Linear -> ReLU -> Dropout(adapter_dropout)) and an output ``Linear(-> out_dim)``.

    Args:
        part_dims: part name -> width, in fusion order.
        proj_dim, norm, dropout: the projector settings (``mmoe.part_proj_dim``, ``mmoe.norm``,
            ``mmoe.dropout``).
        fusion: ``"concat"`` or ``"sum"``.
        adapter_dims: hidden widths of the adapter (``mmoe.adapter_mlp_dims``).
        adapter_dropout: dropout after each adapter hidden layer.
        out_dim: width of the MMoE input (``backbone.out_dim``).

    ``forward(parts: dict[name, [B, d_p]]) -> [B, out_dim]``.
    """

    def __init__(
        self,
        part_dims: dict[str, int],
        *,
        proj_dim: int | None,
        norm: str,
        dropout: float,
        fusion: str,
        adapter_dims: Sequence[int],
        adapter_dropout: float,
        out_dim: int,
    ) -> None:
        super().__init__()
        if not part_dims:
            raise ValueError("the MMoE input composer needs at least one part")
        self.part_names = list(part_dims)
        self.parts = nn.ModuleDict(
            {
                name: PartProjector(d, proj_dim, norm=norm, dropout=dropout)
                for name, d in part_dims.items()
            }
        )
        widths = {name: p.out_dim for name, p in self.parts.items()}
        if fusion == "concat":
            fused = sum(widths.values())
        elif fusion == "sum":
            if len(set(widths.values())) != 1:
                raise ValueError(
                    "model.mmoe.fusion 'sum' needs all parts of equal width after projection "
                    f"(got {widths}); set model.mmoe.part_proj_dim or use fusion 'concat'"
                )
            fused = next(iter(widths.values()))
        else:
            raise ValueError(f"model.mmoe.fusion must be 'concat' or 'sum' (got {fusion!r})")
        self.fusion = fusion
        self.fused_dim = fused
        self.adapter = MLP(
            fused, adapter_dims, activation="relu", dropout=adapter_dropout, out_dim=out_dim
        )
        self.out_dim = int(out_dim)

    def forward(self, parts: dict[str, Tensor]) -> Tensor:
        projected = [self.parts[name](parts[name]) for name in self.part_names]
        if len(projected) == 1:
            fused = projected[0]
        elif self.fusion == "concat":
            fused = torch.cat(projected, dim=-1)
        else:
            fused = torch.stack(projected, dim=0).sum(dim=0)
        return self.adapter(fused)


# --------------------------------------------------------------------------------------- experts


class GroupedExperts(nn.Module):
    """E expert MLPs (Linear -> act -> Dropout per layer) evaluated as one grouped computation.

    Expert e, layer l is ``y = act(x W[l][e] + b[l][e])`` with ``W[l]: [E, in, out]``; the first
    layer of all experts is one ``[B, in] x [in, E*out]`` matmul (every expert sees the same
    input), deeper layers one batched ``baddbmm`` over experts. Parameter count and init equal
    those of E separate ``nn.Linear`` stacks (uniform(-1/sqrt(in), 1/sqrt(in))).

    ``forward(x [B, in]) -> [B, E, H]`` with H = ``dims[-1]``.
    """

    def __init__(
        self,
        in_dim: int,
        num_experts: int,
        dims: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not dims:
            raise ValueError("experts need at least one layer")
        self.num_experts = int(num_experts)
        self.in_dim = int(in_dim)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        width = self.in_dim
        for d in dims:
            self.weights.append(nn.Parameter(torch.empty(num_experts, width, int(d))))
            self.biases.append(nn.Parameter(torch.empty(num_experts, int(d))))
            width = int(d)
        self.out_dim = width
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            w.uniform_(-bound, bound)
            b.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        n, e = x.shape[0], self.num_experts
        w0, b0 = self.weights[0], self.biases[0]
        out0 = w0.shape[2]
        # [B, in] @ [in, E*out0] -> [B, E, out0] -> [E, B, out0]
        h = torch.addmm(b0.reshape(e * out0), x, w0.permute(1, 0, 2).reshape(self.in_dim, e * out0))
        h = self.dropout(self.act(h.view(n, e, out0).transpose(0, 1)))
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            h = self.dropout(self.act(torch.baddbmm(b.unsqueeze(1), h, w)))  # [E, B, out]
        return h.transpose(0, 1)  # [B, E, H]


# ------------------------------------------------------------------------------------------ MMoE


class MMoE(nn.Module):
    """LayerNorm -> E shared experts -> one softmax gate per task -> per-task mixture.

    Gate of task t: ``logits = gate_t(x)`` (Linear(I -> E), or an MLP with ReLU hidden layers
    ``gate_hidden_dims`` and a Linear(-> E) output). With gate stabilisation the weights are
    ``softmax((logits + eps) / temperature)``, ``eps ~ N(0, noise_std^2)`` drawn in training mode
    only; without it, ``softmax(logits)``. Gate logits and weights are float32.

    The mixture of all tasks is one op: ``mix[t, b] = sum_e g[t, b, e] * expert[b, e]``
    (``einsum('tbe,beh->tbh')``).

    ``forward(x [B, I]) -> (mixed: {task: [B, H]}, gates: {task: [B, E]})``.
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[str],
        *,
        num_experts: int,
        expert_dims: Sequence[int],
        dropout: float,
        gate_type: str = "linear",
        gate_hidden_dims: Sequence[int] = (),
        stabilize: bool = True,
        temperature: float = 1.0,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.num_experts = int(num_experts)
        self.norm = nn.LayerNorm(in_dim)
        self.experts = GroupedExperts(
            in_dim, num_experts, expert_dims, activation="relu", dropout=dropout
        )
        if gate_type == "linear":
            hidden: Sequence[int] = ()
        elif gate_type == "mlp":
            if not gate_hidden_dims:
                raise ValueError("model.mmoe.gate_type 'mlp' needs non-empty gate_hidden_dims")
            hidden = gate_hidden_dims
        else:
            raise ValueError(f"model.mmoe.gate_type must be 'linear' or 'mlp' (got {gate_type!r})")
        self.gates = nn.ModuleDict(
            {t: MLP(in_dim, hidden, activation="relu", out_dim=num_experts) for t in self.tasks}
        )
        self.stabilize = bool(stabilize)
        self.temperature = float(temperature)
        self.noise_std = float(noise_std)
        self.out_dim = self.experts.out_dim

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Gate weights ``{task: [B, E]}`` (float32) for a normalised input ``x``."""
        out = {}
        for t in self.tasks:
            logits = self.gates[t](x).float()
            if self.stabilize:
                if self.training and self.noise_std > 0:
                    logits = logits + torch.randn_like(logits) * self.noise_std
                logits = logits / self.temperature
            out[t] = torch.softmax(logits, dim=-1)
        return out

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        x = self.norm(x)
        experts = self.experts(x)  # [B, E, H]
        gates = self.gate_weights(x)
        g = torch.stack([gates[t] for t in self.tasks], dim=0)  # [T, B, E]
        mixed = torch.einsum("tbe,beh->tbh", g.to(experts.dtype), experts)  # [T, B, H]
        return {t: mixed[i] for i, t in enumerate(self.tasks)}, gates
