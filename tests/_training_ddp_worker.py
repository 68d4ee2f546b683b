"""Worker for the data-parallel test: ``torchrun --nproc_per_node=2 tests/_training_ddp_worker.py OUT``.

Also imported by the test to run the same training on one process (``run(out, distributed=False)``).
"""
import sys

import torch

import sdediff as sd
from sdediff.datasets import toy_data
from sdediff.nets import build_net
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer

STEPS, BATCH, SEED = 6, 32, 3


def run(out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)  # the same initial weights on every process (DDP also broadcasts rank 0's)
    net = build_net("mlp", dim=2, hidden=32, depth=2).double()
    model = ScoreModel(net, sd.VPSDE(), "eps")
    data = toy_data("ring", 256, generator=SEED, dtype=torch.float64)
    trainer = Trainer(model, data=data, steps=STEPS, batch_size=BATCH, lr=1e-2, warmup=2, seed=SEED,
                      progress=False, log_every=1)
    trainer.train()
    if trainer.rank == 0:
        from safetensors.torch import save_file
        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        state["losses"] = torch.tensor(trainer.losses, dtype=torch.float64)
        state["world_size"] = torch.tensor([trainer.world_size])
        save_file(state, out)
    if trainer.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1])
