"""Non-finite numbers in a PPO step: where they are, and the batch statistics around them.

A step whose experience holds a non-finite number (log-probs, values, KL, advantages, returns on
a response token) is skipped before training; the learner skips an optimizer step whose loss or
gradients are not finite. `ppo.max_skipped_steps` skipped steps in a row stop the run with a
checkpoint and these statistics (`diagnostics/step-N.json` in the run folder).
"""

from __future__ import annotations

from typing import Any

import torch

ROWS_SHOWN = 8  # rows named per field in a message


class NonFiniteError(RuntimeError):
    """Too many PPO steps in a row skipped for non-finite numbers; a checkpoint was written."""


def batch_statistics(tensors: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, Any]:
    """Per field: non-finite count, the rows holding them, and min/max/mean/std of the finite
    values. (B, R) fields count response tokens only (mask (B, R)); (B,) fields every row."""
    valid = mask.bool()
    out = {}
    for name, x in tensors.items():
        x = x.detach().float()
        bad = ~torch.isfinite(x)
        if x.dim() == 2:
            bad = bad & valid
            values = x[valid & ~bad]
            rows = bad.any(-1)
        else:
            values, rows = x[~bad], bad
        finite = values.double()
        out[name] = {
            "nonfinite": int(bad.sum()),
            "rows": rows.nonzero().flatten().tolist(),
            "min": finite.min().item() if finite.numel() else None,
            "max": finite.max().item() if finite.numel() else None,
            "mean": finite.mean().item() if finite.numel() else None,
            "std": finite.std().item() if finite.numel() > 1 else None,
        }
    return out


def nonfinite_fields(stats: dict[str, Any]) -> str:
    """'ref_logprobs: 3 in rows [0, 5]; ...' for the fields with non-finite values, else ''."""
    parts = []
    for name, s in stats.items():
        if s["nonfinite"]:
            rows = s["rows"][:ROWS_SHOWN]
            more = ", ..." if len(s["rows"]) > ROWS_SHOWN else ""
            parts.append(f"{name}: {s['nonfinite']} in rows {str(rows)[:-1]}{more}]")
    return "; ".join(parts)
