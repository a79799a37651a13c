"""The Sana-Sprint student: a guidance-embedding Sana transformer seen through the TrigFlow
wrapper, plus the logvar head of sCM's adaptive loss weighting (Lu & Song 2024 §4; NVlabs
``SanaMSCM``: ``logvar_linear(t_emb)``; dropped at export)."""

from __future__ import annotations

import torch
from torch import nn

from sanakit.flow import trigflow_output, trigflow_to_flow_time
from sanakit.models import SanaTransformer
from sanakit.sampling import velocity_model


class SprintStudent(nn.Module):
    """``student(x_in, t, text, mask, guidance) -> (F (B, C, H, W), logvar (B,))``.

    ``x_in = x_t / sigma_d``; ``t`` TrigFlow time ``(B,)`` fp32; ``guidance`` the embedded CFG
    scale ``w * guidance_embeds_scale`` ``(B,)``. ``F`` in ``t``'s precision; ``logvar`` from a
    ``Linear(C, 1)`` (xavier weight, zero bias) on the time+guidance embedding of the flow time
    (NVlabs; diffusers' script embeds the TrigFlow time instead, an equivalent choice).
    """

    def __init__(self, transformer: SanaTransformer) -> None:
        super().__init__()
        if not transformer.config.guidance_embeds:
            raise ValueError("a Sprint student needs a guidance-embedding transformer")
        self.transformer = transformer
        self.logvar_linear = nn.Linear(transformer.config.hidden_size, 1)
        nn.init.xavier_uniform_(self.logvar_linear.weight)
        nn.init.zeros_(self.logvar_linear.bias)
        self.logvar_linear.to(transformer.device)

    def forward(
        self,
        x_in: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor | None,
        guidance: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.transformer
        f = trigflow_output(velocity_model(net), x_in, t, text, mask, guidance=guidance)
        s = trigflow_to_flow_time(t)
        _, embedding = net.time_embed(s, guidance, net.dtype)  # (B, C)
        logvar = self.logvar_linear(embedding).reshape(-1).to(t.dtype)
        return f, logvar
