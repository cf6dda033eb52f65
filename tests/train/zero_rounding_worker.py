"""Steps a bf16 AnyPrecisionAdamW (stochastically rounded bf16 moments) a few times, as a run builds it.

    python -m torch.distributed.run --standalone --nproc-per-node 2 zero_rounding_worker.py OUT.pt

Under torchrun the optimizer is ZeRO-sharded (`build_for_role(..., ranks)`); alone it is one optimizer.
Rank 0 saves the consolidated optimizer state and the parameters to OUT.pt.
"""

import sys

import torch

from arvc.optim import get_spec
from arvc.train.distributed import process_group
from arvc.train.optimizers import Hyperparameters, build_for_role

HP = Hyperparameters(
    optimizer="AnyPrecisionAdamW",
    lr=1e-2,
    betas=(0.8, 0.99),
    eps=1e-9,
    weight_decay=0.0,
    use_8bit=False,
    kwargs=dict(get_spec("AnyPrecisionAdamW").bf16_weights_kwargs),
)
SIZES = [(64, 33), (17,), (40, 40), (5, 7), (300,), (9, 9, 3)]  # uneven: ZeRO splits them over ranks


def main(out: str) -> None:
    with process_group() as ranks:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(size).to(torch.bfloat16)) for size in SIZES]
        optimizer = build_for_role(params, HP, "generator", 1234, ranks if ranks.distributed else None)
        for step in range(3):
            gen = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(torch.bfloat16)
            optimizer.step()
        ranks.consolidate(optimizer)
        if ranks.is_main:
            torch.save({"state": optimizer.state_dict(), "params": [p.detach() for p in params]}, out)


if __name__ == "__main__":
    main(sys.argv[1])
