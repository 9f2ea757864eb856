"""One shard's optimizer step cut into tasks that threads run at once, each element computed as the optimizer's own
step computes it.

AdamW and Lion are elementwise: a tensor is cut into flat pieces, and each piece scales its gradient (clipping, guard
replay) and steps with the kernel a whole-tensor step uses, while the piece is still in cache. Cuts fall on multiples
of PIECE elements, a multiple of the widest step of torch's CPU kernels (fused AdamW works in 64-byte cache lines,
the elementwise loops in 16 or 32 floats), so a piece has the same vector/scalar split as the whole tensor and every
element sees the same instructions. Adafactor's row and column statistics span a tensor: it is stepped tensor by
tensor, by torch's own code. The shard-mode clipping norm is per tensor too, as clip_grad_norm_ computes it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from perkunas_ray.stream.optimizers import Lion, lion_update

Task = Callable[[], None]
# Elements per piece: a piece's parameter, gradient and two moments (8 MiB a thread) stay in the L3 cache between
# its gradient scaling and its step, and a 100M-parameter step is ~200 tasks (each holds the GIL for ~20 us).
PIECE = 1 << 19


def shard_clip_coefficient(norms: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_'s coefficient from the per-tensor norms: the norm of the norms, clamped to 1."""
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


def step_tasks(optimizer: torch.optim.Optimizer, grads: dict[torch.nn.Parameter, torch.Tensor],
               coef: torch.Tensor | None, grad_scale: float) -> list[Task]:
    """Tasks that together make one step of `optimizer` with `grads`, each gradient first multiplied by `coef`
    (clipping) and then by `grad_scale` (guard replay), in the order the whole-tensor update did."""
    def scale(grad: torch.Tensor) -> None:
        if coef is not None:
            grad.mul_(coef)
        if grad_scale != 1.0:
            grad.mul_(grad_scale)

    if isinstance(optimizer, torch.optim.AdamW):
        return _adamw_tasks(optimizer, grads, scale)
    if isinstance(optimizer, Lion):
        return _lion_tasks(optimizer, grads, scale)
    if isinstance(optimizer, torch.optim.Adafactor):
        return _adafactor_tasks(optimizer, grads, scale)
    raise TypeError(f"the shard store cannot step {type(optimizer).__name__} in pieces")


def _piece_tasks(step_piece: Callable[..., None], *tensors: torch.Tensor) -> list[Task]:
    """Tasks that each call `step_piece` on the same flat slice of every one of `tensors` (all of one shape), PIECE
    elements at a time, sliced on the task's thread; a device tensor is one piece (its kernels spread it over the
    device already: more of them would only cost launches)."""
    flats = [t.view(-1) for t in tensors]
    numel = flats[0].numel()
    size = PIECE if flats[0].device.type == "cpu" else max(numel, 1)

    def task(start: int) -> Task:
        return lambda: step_piece(*(f[start:start + size] for f in flats))

    return [task(start) for start in range(0, numel, size)]


def _adamw_tasks(optimizer: torch.optim.AdamW, grads: dict, scale: Callable[[torch.Tensor], None]) -> list[Task]:
    tasks = []
    for group in optimizer.param_groups:
        if group["amsgrad"] or not group["fused"]:
            raise ValueError("the shard store steps fused AdamW without amsgrad (stream/optimizers.py builds it)")
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:  # what AdamW(fused=True) creates on a parameter's first step
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = state["step"]
            step.add_(1)  # before the kernel, as AdamW does; every piece reads the one count

            def adamw_piece(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                            step: torch.Tensor = step, group: dict = group) -> None:
                scale(grad)
                torch._fused_adamw_([param], [grad], [exp_avg], [exp_avg_sq], [], [step], amsgrad=False,
                                    lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                                    weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                                    grad_scale=None, found_inf=None)

            tasks += _piece_tasks(adamw_piece, p.detach(), grads[p], state["exp_avg"], state["exp_avg_sq"])
    return tasks


def _lion_tasks(optimizer: Lion, grads: dict, scale: Callable[[torch.Tensor], None]) -> list[Task]:
    tasks = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p)

            def lion_piece(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, group: dict = group) -> None:
                scale(grad)
                lion_update(param, grad, exp_avg, group["lr"], *group["betas"], group["weight_decay"])

            tasks += _piece_tasks(lion_piece, p.detach(), grads[p], state["exp_avg"])
    return tasks


def _adafactor_tasks(optimizer: torch.optim.Adafactor, grads: dict,
                     scale: Callable[[torch.Tensor], None]) -> list[Task]:
    """One task per tensor, largest first: torch's own step, through a one-tensor Adafactor that shares the
    shard optimizer's state (its hyperparameters are the group's)."""
    tasks = []
    for group in optimizer.param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            def run(p: torch.nn.Parameter = p, hyper: dict = hyper) -> None:
                one = torch.optim.Adafactor([{"params": [p], **hyper}])
                one.state = optimizer.state
                scale(grads[p])
                p.grad = grads[p]
                one.step()
                p.grad = None
            tasks.append((p.numel(), run))
    return [run for _, run in sorted(tasks, key=lambda t: -t[0])]
