"""CUDA checks (marker `gpu`: `python -m pytest -m gpu tests/gpu` on a machine with an NVIDIA GPU).

The CPU suite proves the math; these prove that the same code runs on a GPU: float64 on CUDA gives
what the CPU gives (other kernels, same function), streaming on CUDA equals the full forward, every
model trains under bf16 autocast (the trainer's CUDA default), a checkpoint written on the GPU
loads on the CPU, the compiled mixers (Triton) train like the eager ones, and training steps replayed
from a CUDA graph (`train.cuda_graph`) equal the eager steps.
`HOPELM_TEST_DEVICE=cpu` runs the same file on the CPU (CPU autocast), to check it without a GPU.
"""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch

import hopelm
from hopelm.train import trainer
from tests.models.test_all_models import CONFIGS, build
from tests.train.conftest import SMALL

DEVICE = os.environ.get("HOPELM_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")]
NAMES = sorted(CONFIGS)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).abs().max() / max(1.0, b.double().abs().max().item())).item()


@pytest.mark.parametrize("name", NAMES)
def test_float64_on_the_gpu_equals_the_cpu(name):
    cpu = build(name)
    gpu = copy.deepcopy(cpu).to(DEVICE)
    x = torch.randint(0, 30, (2, 19))
    a, b = cpu(x, x), gpu(x.to(DEVICE), x.to(DEVICE))
    a.loss.backward()
    b.loss.backward()
    assert rel_err(b.logits, a.logits) < 1e-9
    for (n, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert rel_err(q.grad, p.grad) < 1e-8, n


@pytest.mark.parametrize("name", NAMES)
def test_float64_stream_on_the_gpu_equals_the_full_forward(name):
    m = build(name).to(DEVICE)
    x = torch.randint(0, 30, (2, 19), device=DEVICE)
    full = m(x).logits
    out = m(x[:, :7])                                   # 7: not a chunk or CMS-period boundary
    logits, state = [out.logits], out.state
    for t in range(7, 19):
        out = m(x[:, t:t + 1], state=state)
        logits.append(out.logits)
        state = out.state
    assert rel_err(torch.cat(logits, 1), full) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_forward_backward_and_decode(name):
    """Under bf16 autocast: finite loss and gradients for every parameter, logits within bf16's
    precision of float32's, and prefix + token-by-token decoding within it of the full forward."""
    torch.manual_seed(0)
    m = build(name).float().to(DEVICE)
    x = torch.randint(0, 30, (2, 40), device=DEVICE)
    ref = m(x).logits
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = m(x, x)
        out.loss.backward()
        o = m(x[:, :13])
        logits, state = [o.logits], o.state
        for t in range(13, 40):
            o = m(x[:, t:t + 1], state=state)
            logits.append(o.logits)
            state = o.state
    assert math.isfinite(out.loss.item())
    bad = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad
    assert rel_err(out.logits, ref) < 2e-2
    assert rel_err(torch.cat(logits, 1), out.logits) < 2e-2


def run(tmp_path, *extra: str, name: str) -> dict:
    cfg, tok, ckpt = trainer.prepare_run("tiny", None, SMALL + [f"--train.out_dir={tmp_path / name}",
                                                               f"--train.device={DEVICE}", *extra], None)
    return trainer.train(cfg, tok, ckpt)


@pytest.mark.parametrize("name", ["hope", "transformer"])
def test_trainer_on_the_gpu_learns_and_its_checkpoint_loads_on_the_cpu(tmp_path, name):
    """30 steps at the trainer's CUDA default (bf16 autocast); the final weights, loaded on the CPU,
    give the logits the GPU model gives in float32."""
    out = run(tmp_path, f"--model.name={name}", "--train.max_steps=30", "--train.eval_interval=0", name=name)
    losses = [out["losses"][s] for s in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    cpu, _ = hopelm.load(tmp_path / name / "final")
    gpu = copy.deepcopy(cpu).to(DEVICE)
    x = torch.randint(0, cpu.cfg.vocab_size, (2, 64))
    with torch.no_grad():
        assert rel_err(gpu(x.to(DEVICE)).logits, cpu(x).logits) < 1e-3


def test_compiled_mixers_train_like_eager_mixers_on_the_gpu(tmp_path):
    args = ("--model.name=hope", "--train.max_steps=3", "--train.eval_interval=0", "--data.seq_len=256",
            "--train.dtype=float32")
    eager = run(tmp_path, *args, name="eager")
    compiled = run(tmp_path, *args, "--train.compile_mixers=true", name="compiled")
    for step in range(3):
        assert compiled["losses"][step] == pytest.approx(eager["losses"][step], rel=1e-3)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs exist only on a CUDA device")
@pytest.mark.parametrize("name", ["hope", "transformer"])
def test_cuda_graph_training_equals_eager_training(tmp_path, name):
    """train.cuda_graph replays the captured forward + backward: the same losses and weights as the
    eager steps (float32). hope runs two online CMS blocks per sequence, so the graph holds the
    inner gradients (autograd.grad) and the bounded memories' always-on projection."""
    args = (f"--model.name={name}", "--train.max_steps=6", "--train.eval_interval=0", "--train.dtype=float32",
            *(["--model.cms_periods=[32,64,0]", "--model.projection_chunk_size=16"] if name == "hope" else []))
    eager = run(tmp_path, *args, name="eager")
    graphed = run(tmp_path, *args, "--train.cuda_graph=true", name="graphed")
    for step in range(6):
        assert graphed["losses"][step] == pytest.approx(eager["losses"][step], rel=1e-5)
    a, _ = hopelm.load(tmp_path / "eager" / "final")
    b, _ = hopelm.load(tmp_path / "graphed" / "final")
    for (key, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert rel_err(q, p) < 1e-4, key
