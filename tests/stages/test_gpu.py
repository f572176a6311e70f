"""The CUDA path where a GPU is present (skipped elsewhere): a run trained on the GPU (bf16
autocast where the GPU has it, channels_last) decodes on the GPU's batched bf16 decoder as on
the CPU's float32 one."""

import numpy as np
import pytest
import torch

from nervi_hpc.stages.compress import compress
from nervi_hpc.stages.decode.decoder import Decoder
from tests.stages.test_compress import make_run

pytestmark = pytest.mark.gpu


def test_a_run_trained_on_the_gpu_decodes_alike_on_gpu_and_cpu(tmp_path):
    torch.cuda.reset_peak_memory_stats()
    run = make_run(tmp_path, epochs=20)
    assert torch.cuda.max_memory_allocated() > 0  # training ran on the GPU
    archive = compress(run, evaluate=False).archive
    on_cpu = Decoder.open(archive, device="cpu")
    on_gpu = Decoder.open(archive, device="cuda")
    grid = on_cpu.grid()
    difference = np.abs(on_gpu.decode(grid).astype(int) - on_cpu.decode(grid))
    assert np.median(difference) <= 1 and np.percentile(difference, 99) <= 8
