"""DDP (2 gloo processes on CPU) takes the same steps as one process with the same global batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch.utils.data import TensorDataset
    from convlens.training.recipe import RunData, TrainConfig, fit

    def main(out):
        g = torch.Generator().manual_seed(0)
        y = torch.arange(16) % 4
        x = torch.randn(4, 3, 32, 32, generator=g)[y] + torch.randn(16, 3, 32, 32, generator=g)
        data = RunData(TensorDataset(x, y), None, ("a", "b", "c", "d"))
        # dropout off: its masks come from each process's own RNG stream, so they cannot match one process
        cfg = TrainConfig(arch="zfnet-tiny", dataset="synthetic", out=out, epochs=1, batch_size=8,
                          init="kaiming", dropout=0.0, lr=0.02)
        fit(cfg, datasets=data)

    if __name__ == "__main__":
        torch.set_num_threads(1)
        main(sys.argv[1])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.mark.slow  # three Python processes, each importing torch and training: 18 s
def test_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    src = str(Path(__file__).resolve().parents[2] / "src")
    base = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        base.pop(key, None)
    port = str(_free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "ddp")],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": port, "GLOO_SOCKET_IFNAME": "lo"},
        )
        for r in range(2)
    ]
    try:
        namespace: dict = {"__name__": "tiny"}
        exec(compile(SCRIPT, str(script), "exec"), namespace)  # the single-process run, meanwhile, in here
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            namespace["main"](str(tmp_path / "single"))
        finally:
            torch.set_num_threads(old)
        codes = [p.wait(timeout=120) for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    one, two = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    start = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    assert start["epoch"] == 1
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    # the two processes really trained (weights moved away from the seeded init)
    from convlens.training.recipe import TrainConfig, build_train_model

    init = build_train_model(TrainConfig(arch="zfnet-tiny", dataset="x", init="kaiming"), 4).state_dict()
    assert not torch.allclose(init["conv1.weight"], two["conv1.weight"])

