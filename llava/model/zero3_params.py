"""Reading and writing parameters that DeepSpeed ZeRO-3 may have partitioned.

Under ZeRO-3 a parameter holds only this rank's shard (it carries `ds_id`); its full value exists
only inside `deepspeed.zero.GatheredParameters`. These helpers do the gathering when it is needed
and plain tensor work otherwise, so the same code loads a projector or a vision tower either way.
"""

from contextlib import contextmanager, nullcontext

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


@contextmanager
def gathered(params: list[torch.Tensor], modifier_rank: int | None = None):
    """Full values of `params` inside the block; with `modifier_rank`, that rank's writes persist."""
    partitioned = [p for p in params if is_partitioned(p)]
    if not partitioned:
        with nullcontext():
            yield
        return
    import deepspeed  # only reached when ZeRO-3 is active, so DeepSpeed is installed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield


def full_state(named_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of the full values of `named_params`."""
    with gathered(list(named_params.values())):
        return {name: param.detach().to("cpu").clone() for name, param in named_params.items()}


def copy_into(named_params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    """Write `values[name]` into `named_params[name]` (shapes checked by the caller)."""
    params = [named_params[name] for name in values]
    with gathered(params, modifier_rank=0), torch.no_grad():
        for name, value in values.items():
            target = named_params[name]
            if target.numel() == value.numel():  # the gathered (or plain) full tensor
                target.data.copy_(value.to(target.dtype))
