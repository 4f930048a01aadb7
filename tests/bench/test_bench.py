"""`hopelm bench`: the quick run emits valid JSON with every field, the table and the plots; budgets
and out-of-memory become recorded skips; bad input is one sentence."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import time

import pytest
import torch

from hopelm.bench.harness import DECODE_FIELDS, PREFILL_FIELDS, TRAIN_FIELDS
from hopelm.bench.measure import Sweep, state_nbytes
from hopelm.cli import main
from hopelm.config import load_config

MODELS = ("transformer", "gated_deltanet", "hope_attention")   # attention, recurrent, online CMS


def _strict(text: str) -> dict:
    """json.loads that rejects NaN and Infinity, which Python's json accepts by default."""
    def bad(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["bench", "--quick", "--models", ",".join(MODELS), "--out", str(out)])
    return out, _strict((out / "bench.json").read_text()), stdout.getvalue()


def test_quick_json_has_every_field(quick):
    out, result, _ = quick
    meta = result["meta"]
    for key in ("device", "device_type", "torch", "threads", "date", "git_commit", "preset", "quick",
                "precision", "memory", "args", "overrides"):
        assert key in meta, key
    assert meta["device_type"] == "cpu" and meta["preset"] == "tiny" and meta["quick"] is True
    assert meta["args"]["lengths"] == [64, 128] and meta["overrides"]["model.d_model"] == 64
    peak = result["matmul_peak"]
    assert peak["gflops"] > 0 and math.isclose(peak["gflops"], 2 * peak["n"] ** 3 / peak["seconds"] / 1e9)
    assert [r["model"] for r in result["models"]] == list(MODELS)
    for r in result["models"]:
        assert r["params_non_embedding"] > 0 and r["params_total"] > r["params_non_embedding"]
        assert [m["T"] for m in r["train"]] == [64, 128] and [m["batch"] for m in r["train"]] == [4, 2]
        assert [m["L"] for m in r["prefill"]] == [128, 256, 512] and [m["L"] for m in r["decode"]] == [64, 256]
        for section, fields in (("train", TRAIN_FIELDS), ("prefill", PREFILL_FIELDS), ("decode", DECODE_FIELDS)):
            for m in r[section]:
                assert m["skipped"] is None, (r["model"], section, m)   # a quick run measures everything
                for f in (*fields, "vs_transformer"):
                    if f == "capture_s":   # only with --cuda-graph
                        assert m[f] is None
                        continue
                    assert isinstance(m[f], (int, float)) and math.isfinite(m[f]) and m[f] > 0, (r["model"], f, m)
        for m in r["train"]:
            assert math.isclose(m["tokens_per_s"], m["batch"] * m["T"] / m["step_s"])
            assert math.isclose(m["mfu"], m["achieved_gflops"] / peak["gflops"])
    # The parameter counts are at parity, so FLOPs per step are within a factor of a few.
    flops = [r["train"][0]["flops_per_step"] for r in result["models"]]
    assert max(flops) < 5 * min(flops)


def test_ratios_are_against_the_transformer_of_the_same_run(quick):
    _, result, _ = quick
    rows = {r["model"]: r for r in result["models"]}
    ref = rows["transformer"]
    for r in rows.values():
        for m, b in zip(r["train"], ref["train"]):
            assert math.isclose(m["vs_transformer"], m["tokens_per_s"] / b["tokens_per_s"])
        for m, b in zip(r["prefill"], ref["prefill"]):
            assert math.isclose(m["vs_transformer"], b["seconds"] / m["seconds"])
        for m, b in zip(r["decode"], ref["decode"]):
            assert math.isclose(m["vs_transformer"], b["ms_per_token"] / m["ms_per_token"])
    assert all(m["vs_transformer"] == 1.0 for s in ("train", "prefill", "decode") for m in ref[s])


def test_decode_state_grows_for_attention_and_is_flat_for_recurrence(quick):
    _, result, _ = quick
    rows = {r["model"]: r for r in result["models"]}
    kv = [m["state_bytes"] for m in rows["transformer"]["decode"]]
    assert kv[0] == 2 * 2 * 64 * 64 * 4 and kv[1] == 4 * kv[0]    # layers x (k, v) x L x d_model x fp32
    flat = [m["state_bytes"] for m in rows["gated_deltanet"]["decode"]]
    assert flat[0] == flat[1] < kv[0]
    # Online CMS levels: every decode repeat covers one whole CMS block (the smallest online period).
    cfg = load_config("tiny", None, {"model.name": "hope_attention"}).model
    block = min(p for p, lr in zip(cfg.cms_periods, cfg.cms_lrs) if p > 0 and lr > 0)
    assert block > 8 and [m["steps"] for m in rows["hope_attention"]["decode"]] == [block, block]
    assert [m["steps"] for m in rows["transformer"]["decode"]] == [8, 8]


def test_table_and_plots_are_written(quick):
    out, result, stdout = quick
    table = (out / "bench.md").read_text()
    assert table in stdout
    assert "| model | non-emb. params | T | batch | tokens/s | vs transformer | GFLOP/s | MFU | peak memory |" in table
    assert table.count("| transformer |") == 4 and "L=512" in table and "KiB" in table
    assert "–" not in table.split("\n", 1)[1]   # nothing was skipped
    for name in ("train_throughput.png", "prefill.png", "decode_latency.png", "decode_state.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_prefill_and_decode_can_be_skipped(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        main(["bench", "--quick", "--models", "transformer", "--prefill", "none", "--decode", "none",
              "--out", str(tmp_path)])
    r = json.loads((tmp_path / "bench.json").read_text())["models"][0]
    assert len(r["train"]) == 2 and r["prefill"] == [] and r["decode"] == []
    assert "Prefill" not in stdout.getvalue() and (tmp_path / "train_throughput.png").exists()
    assert not (tmp_path / "prefill.png").exists()


def test_budget_skips_are_recorded_not_raised(tmp_path, capsys):
    # A budget no measurement fits: the first length of each sweep runs (nothing to estimate from),
    # every longer one is skipped with its reason, and the output is still complete.
    main(["bench", "--quick", "--models", "transformer", "--max-seconds", "1e-9", "--out", str(tmp_path)])
    result = _strict((tmp_path / "bench.json").read_text())
    (r,) = result["models"]
    for section, fields in (("train", TRAIN_FIELDS), ("prefill", PREFILL_FIELDS), ("decode", DECODE_FIELDS)):
        first, *rest = r[section]
        assert first["skipped"] is None and first["vs_transformer"] == 1.0
        assert rest and rest[0]["skipped"].startswith("estimated") and "--max-seconds" in rest[0]["skipped"]
        assert all(m["skipped"].startswith("skipped because a shorter length was") for m in rest[1:])
        assert all(m[f] is None for m in rest for f in (*fields, "vs_transformer"))
    assert f"| transformer | {r['params_non_embedding']:,} | 128 | 2 | – | – | – | – | – |" in capsys.readouterr().out


def test_sweep_estimates_from_the_previous_length():
    sweep, calls = Sweep(budget=0.1, device=torch.device("cpu")), []

    def measure():
        calls.append(1)
        time.sleep(0.05)
        return {"value": 1.0}

    blank = {"L": 0, "value": None}
    assert sweep.run(measure, 1.0, blank) == {"L": 0, "value": 1.0, "skipped": None}
    skipped = sweep.run(measure, 4.0, blank)       # estimate >= 0.05 s x 4 > 0.1 s
    assert skipped["value"] is None and skipped["skipped"].startswith("estimated") and len(calls) == 1


def test_sweep_estimate_follows_the_measured_growth_within_its_bounds():
    sweep = Sweep(budget=100.0, device=torch.device("cpu"), floor=0.5)
    assert sweep.estimate(4.0) is None
    sweep.history = [(1.0, 2.0)]
    assert sweep.estimate(4.0) == pytest.approx(8.0)              # one point: the worst-case growth
    sweep.history = [(1.0, 2.0), (4.0, 4.0)]                      # grew as cost^0.5
    assert sweep.estimate(16.0) == pytest.approx(8.0)
    sweep.history = [(1.0, 2.0), (4.0, 2.0)]                      # did not grow: clamped to the floor 0.5
    assert sweep.estimate(16.0) == pytest.approx(4.0)
    sweep.history = [(1.0, 1.0), (4.0, 64.0)]                     # grew faster than cost: clamped to 1
    assert sweep.estimate(16.0) == pytest.approx(256.0)


def test_out_of_memory_is_a_skip_and_other_errors_are_raised():
    sweep = Sweep(budget=10.0, device=torch.device("cpu"))

    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 GiB")

    row = sweep.run(oom, 1.0, {"L": 1, "value": None})
    assert row == {"L": 1, "value": None, "skipped": "out of memory"}
    assert "shorter length" in sweep.run(lambda: {"value": 1.0}, 4.0, {"L": 2, "value": None})["skipped"]
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Sweep(10.0, torch.device("cpu")).run(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")), 1.0, {})


def test_state_nbytes_walks_containers_and_counts_shared_tensors_once():
    @dataclasses.dataclass
    class S:
        a: torch.Tensor
        rest: list

    t = torch.zeros(10)                                  # 40 bytes
    u = torch.zeros(3, dtype=torch.float64)              # 24 bytes
    assert state_nbytes(S(t, [None, {"u": u, "again": t}, (t,)])) == 64
    assert state_nbytes([None, 3, "x"]) == 0
    rows = torch.zeros(2, 5)                             # two views of one buffer at different offsets
    assert state_nbytes({"k": rows[0], "v": rows[1]}) == 40


@pytest.mark.parametrize("args, message", [
    (["--models", "transformer,nope"], "Unknown model 'nope' in --models"),
    (["--lengths", "64,x"], "--lengths='64,x' must be comma-separated positive integers"),
    (["--repeats", "0"], "--repeats, --decode-steps, --batch-tokens and --max-seconds must be > 0"),
    (["--model.d_modl=64"], "Unknown config key 'model.d_modl'"),
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device; this run is on cpu."),
])
def test_bad_input_is_one_sentence(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", "--out", str(tmp_path), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bench.json").exists()
