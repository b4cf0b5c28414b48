"""Why a detection fine-tune without gradient clipping barely learns: log the gradient norm per step.

A Lightning callback (``+callbacks.probe._target_=grad_norm_probe.GradNormProbe``) that records, for
each optimizer step, the total gradient norm before clipping, the norm of the RetinaNet heads' part,
and the ratio of AdamW's mean update size to the LR (how far Adam's second-moment estimate, inflated
by an early spike, shrinks the steps). Written to ``grad_norms.csv`` in the working directory.

    PYTHONPATH=scripts python run.py task=detection data=coco data.root=DIR ... \
        +callbacks.probe._target_=grad_norm_probe.GradNormProbe +trainer.max_steps=60
"""

from __future__ import annotations

import csv

import lightning as L
import torch


class GradNormProbe(L.Callback):
    def __init__(self, path: str = "grad_norms.csv") -> None:
        self.path, self.rows = path, []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
        total = torch.norm(torch.stack([g.norm() for g in grads.values()])).item()
        body = torch.norm(
            torch.stack([g.norm() for n, g in grads.items() if n.startswith("backbone.")])
        ).item()
        self._before = {n: p.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
        self.rows.append(
            {
                "step": trainer.global_step,
                "grad_norm": total,
                "backbone_grad_norm": body,
                "loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
            }
        )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.rows or "update_over_lr" in self.rows[-1]:
            return
        opt = trainer.optimizers[0]
        head_lr = max(g["lr"] for g in opt.param_groups)
        moved = [
            (p.detach() - self._before[n]).abs().mean().item()
            for n, p in module.named_parameters()
            if n in self._before and n.startswith("head.")
        ]
        self.rows[-1]["update_over_lr"] = sum(moved) / max(1, len(moved)) / head_lr
        self.rows[-1]["head_lr"] = head_lr

    def on_train_end(self, trainer, module) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in self.rows for k in r}))
            writer.writeheader()
            writer.writerows(self.rows)
