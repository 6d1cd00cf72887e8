"""One rank of the 2-process DDP check (launched by ``torch.distributed.run``; see test_stock_tooling).

Each rank builds the same open_clip model, wraps it in DistributedDataParallel (gloo, default
``find_unused_parameters=False``, so an unused parameter would make the second step fail), takes two
AdamW steps of the CLIP loss on its own data, then rank 0 gathers every rank's flattened weights and
writes ``{"max_abs_diff": ..., "moved": ...}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os

import open_clip
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1234 + rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = open_clip.create_model(args.model, force_image_size=args.size).train()
    ddp = DDP(model)
    init = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    tok = open_clip.get_tokenizer(args.model)
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for step in range(2):
        images = torch.randn(3, 3, args.size, args.size, generator=g)
        texts = tok([f"rank {rank} step {step} item {i}" for i in range(3)])
        img, txt, scale = ddp(images, texts)[:3]
        logits = scale * img @ txt.t()
        target = torch.arange(3)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        diff = max((t - flat).abs().max().item() for t in gathered)
        moved = (flat - init).abs().max().item()
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"max_abs_diff": diff, "moved": moved, "world": world}, f)
        os.replace(tmp, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
