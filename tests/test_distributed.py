"""mamba_clip.distributed without launching anything: ranks from the environment, the item split, the
folder barrier (threads as ranks) and the fault-injection hook."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from mamba_clip.distributed import FAULT_EXIT, Dist, WorldInfo, device_for, run_id, split, world_info


def test_world_info_from_each_launcher():
    assert world_info({}) == WorldInfo(0, 1, 0, "single")
    assert world_info({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == WorldInfo(3, 8, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5"}
    assert world_info(slurm) == WorldInfo(5, 16, 5, "slurm")
    # torchrun inside a SLURM allocation: torchrun's variables win
    assert world_info({**slurm, "RANK": "0", "WORLD_SIZE": "2"}).launcher == "torchrun"
    # a one-task SLURM job is one process
    assert world_info({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == WorldInfo()
    array = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
             "SLURM_ARRAY_TASK_COUNT": "4"}
    assert world_info(array) == WorldInfo(1, 4, 0, "slurm-array")


def test_split_covers_every_item_once():
    items = list(range(23))
    for world in (1, 2, 3, 8):
        for kw in ({}, {"contiguous": True}, {"cost": lambda i: (i * 7) % 5 + 1}):
            shares = [split(items, r, world, **kw) for r in range(world)]
            assert sorted(x for s in shares for x in s) == items
            assert all(s == sorted(s) for s in shares)  # the share keeps the list order
            assert shares == [split(items, r, world, **kw) for r in range(world)]  # deterministic
    assert split(list("abcde"), 1, 2) == ["b", "d"]
    assert split(list("abcde"), 0, 2, contiguous=True) == ["a", "b"]
    # cost: one big item alone on a rank, the small ones on the other
    assert split([10, 1, 1, 1], 0, 2, cost=float) == [10]
    assert split([10, 1, 1, 1], 1, 2, cost=float) == [1, 1, 1]
    with pytest.raises(ValueError):
        split(items, 2, 2)


def test_device_and_run_id():
    two = WorldInfo(1, 2, 1, "torchrun")
    assert device_for("cuda", two) == "cuda:1"
    assert device_for("cuda:0", two) == "cuda:0" and device_for("cpu", two) == "cpu"
    assert device_for("cuda", WorldInfo()) == "cuda"
    assert run_id({"SLURM_JOB_ID": "123", "TORCHELASTIC_RUN_ID": "x"}) == "123"
    assert run_id({"MAMBA_CLIP_RUN_ID": "a/b"}) == "a_b" and run_id({}) == "default"


def test_share_without_a_process_group_ignores_what_is_done_when_splitting(tmp_path):
    items = list(range(6))
    d = Dist(WorldInfo(1, 2, 1, "slurm"), tmp_path)
    assert d.share(items, done=lambda i: False) == [1, 3, 5]
    # whatever another rank already finished, this rank's share stays the same items
    assert d.share(items, done=lambda i: i in (0, 1)) == [3, 5]
    one = Dist(WorldInfo(), tmp_path)
    assert one.share(items, done=lambda i: i % 2 == 0) == [1, 3, 5] and one.barrier("x")


def test_folder_barrier_waits_for_every_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_CLIP_RUN_ID", "t1")
    ranks = [Dist(WorldInfo(r, 3, r, "slurm"), tmp_path) for r in range(3)]
    for d in ranks:
        d.poll_s = 0.01
    passed = []

    def go(d):
        assert d.barrier("step")
        passed.append(d.rank)

    threads = [threading.Thread(target=go, args=(d,)) for d in ranks[:2]]
    for t in threads:
        t.start()
    threads[0].join(0.3)
    assert passed == []  # rank 2 has not arrived
    go(ranks[2])
    for t in threads:
        t.join(5)
    assert sorted(passed) == [0, 1, 2]
    # an earlier run's markers (another run id or another world size) do not count
    monkeypatch.setenv("MAMBA_CLIP_RUN_ID", "t2")
    assert ranks[0].barrier("step", timeout=0.1) is False
    assert Dist(WorldInfo(0, 2, 0, "slurm"), tmp_path).barrier("step", timeout=0.1) is False
    # SLURM array tasks never wait for each other
    assert Dist(WorldInfo(0, 4, 0, "slurm-array"), tmp_path).barrier("step") is False


def test_fault_hook_exits_the_chosen_rank():
    code = ("from mamba_clip.distributed import Dist, WorldInfo\n"
            "d = Dist(WorldInfo(1, 2, 1, 'slurm'), '.')\n"
            "d.item_done(); print('one', flush=True); d.item_done(); print('two')\n")  # fmt: skip
    env = {"MAMBA_CLIP_FAULT_AFTER_ITEMS": "2", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == FAULT_EXIT and r.stdout.split() == ["one"]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**env, "MAMBA_CLIP_FAULT_RANK": "0"})  # fmt: skip
    assert r.returncode == 0 and r.stdout.split() == ["one", "two"]
