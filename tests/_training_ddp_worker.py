"""Worker for the data-parallel tests: ``torchrun --nproc_per_node=2 tests/_training_ddp_worker.py OUT [cond]``.

Also imported by the tests to run the same training on one process (``run(out)``). With ``cond`` the
net is class-conditional and trains on the ring's mode labels with label dropout.
"""
import sys

import torch

import sdediff as sd
from sdediff.datasets import toy_data
from sdediff.nets import build_net
from sdediff.parameterization import ScoreModel
from sdediff.training import Trainer

STEPS, BATCH, SEED = 6, 32, 3


def run(out: str, conditional: bool = False) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)  # the same initial weights on every process (DDP also broadcasts rank 0's)
    net = build_net("mlp", dim=2, hidden=32, depth=2, num_classes=8 if conditional else None).double()
    model = ScoreModel(net, sd.VPSDE(), "eps")
    if conditional:
        mixture = sd.GaussianMixture(*sd.ring_params(), labels=torch.arange(8))
        data, labels = mixture.sample(256, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64,
                                      return_labels=True)
        extra = {"labels": labels, "p_uncond": 0.5}
    else:
        data, extra = toy_data("ring", 256, generator=SEED, dtype=torch.float64), {}
    trainer = Trainer(model, data=data, steps=STEPS, batch_size=BATCH, lr=1e-2, warmup=2, seed=SEED,
                      progress=False, log_every=1, **extra)
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
    run(sys.argv[1], conditional=sys.argv[2:] == ["cond"])
