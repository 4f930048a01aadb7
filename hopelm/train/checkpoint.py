"""Checkpoints: safetensors for tensors, JSON for everything else, a manifest of checksums.

A checkpoint is a directory:

    model.safetensors      weights (tied/shared tensors stored once, aliases in the file's metadata)
    optimizer.safetensors  every tensor of optimizer.state_dict(), keys like "state.<param_id>.exp_avg"
    optimizer.json         the rest of the optimizer state (param_groups, scalar entries), with
                           {"__tensor__": key} placeholders where the tensors were
    rng.safetensors        torch / CUDA generator states (ByteTensors)
    rng.json               numpy and python RNG states
    config.json            the resolved run config
    meta.json              step, data position, tokenizer, metrics: anything JSON-able
    manifest.json          format version + size and sha256 of every file above (written last)

Why this shape (DESIGN.md, "Reliability rules"): loading never unpickles (only safetensors and
json are parsed, so a downloaded checkpoint cannot run code); the manifest turns a truncated or
altered file into one clear sentence instead of a confusing failure deep inside `load_state_dict`;
and the whole directory is written under a temporary sibling name and renamed into place, so a
crash mid-save never leaves a half-written checkpoint under the final name.

A run directory holds `step_<NNNNNN>/` checkpoints and `final/`; `latest_checkpoint` picks the one
to resume from and `prune_checkpoints` bounds the disk they use.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT_NAME = "hopelm-checkpoint"
FORMAT_VERSION = 1

MODEL_FILE = "model.safetensors"
OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_JSON = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
RNG_JSON = "rng.json"
CONFIG_JSON = "config.json"
META_JSON = "meta.json"
MANIFEST = "manifest.json"
# Files every checkpoint has; the optimizer pair is present only when an optimizer was saved.
REQUIRED_FILES = (MODEL_FILE, RNG_TENSORS, RNG_JSON, CONFIG_JSON, META_JSON)

# Keys of the safetensors header metadata (a str -> str map) where we keep what the format lacks.
_ALIASES_KEY = "hopelm.aliases"  # {name: name of the stored tensor it shares memory with}
_ORDER_KEY = "hopelm.order"      # original key order, so a loaded state_dict iterates like the saved one
_MODULE_META_KEY = "hopelm.module_metadata"  # state_dict._metadata: per-module versions for load_state_dict

_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded; the message is one sentence naming the path."""


@dataclass
class Checkpoint:
    """Everything `load_checkpoint` returns; tensors are on `map_location` (RNG states on CPU)."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None
    config: dict
    meta: dict
    rng: dict


# --------------------------------------------------------------------------------------------
# RNG states


def capture_rng() -> dict:
    """The current torch / CUDA / numpy / python global RNG states.

    CUDA states are captured only when CUDA is already initialised: asking for them would otherwise
    create a context on every GPU just to record generators nobody has used.
    """
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
        "numpy": np.random.get_state(legacy=False),
        "python": random.getstate(),
    }


def restore_rng(rng: dict) -> None:
    """Restore states from `capture_rng()` (or a loaded checkpoint); absent entries are left alone."""
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"].cpu())
    cuda = rng.get("cuda") or []
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn("The checkpoint holds CUDA RNG states but CUDA is not available; they are ignored.",
                          stacklevel=2)
        else:
            n = torch.cuda.device_count()
            if n != len(cuda):
                warnings.warn(f"The checkpoint holds {len(cuda)} CUDA RNG states but {n} devices are visible; "
                              f"restoring the first {min(n, len(cuda))}.", stacklevel=2)
            for i, state in enumerate(cuda[:n]):
                torch.cuda.set_rng_state(state.cpu(), i)
    if rng.get("numpy") is not None:
        state = rng["numpy"]
        if isinstance(state, dict):  # the legacy=False form; JSON gave us the key as a list
            state = {**state, "state": {**state["state"], "key": np.asarray(state["state"]["key"], dtype=np.uint32)}}
        np.random.set_state(state)
    if rng.get("python") is not None:
        random.setstate(rng["python"])


# --------------------------------------------------------------------------------------------
# Encoding nested state (optimizer state_dict, RNG dict) as JSON + a flat dict of tensors


class _Unencodable(TypeError):
    """A value `_encode` cannot store; save_checkpoint turns it into a CheckpointError naming the path."""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `obj`; tensors go to `tensors[path]` and leave a placeholder behind.

    Exact round trip is the point (an optimizer must be rebuilt bit for bit), so the types JSON
    would blur are tagged: tuples (AdamW's betas), dicts with non-string keys (the int param ids
    of an optimizer's state), numpy arrays (numpy's MT19937 key).
    """
    if isinstance(obj, torch.Tensor):
        if path in tensors:  # e.g. keys 1 and "1" in one dict
            raise _Unencodable(f"two entries of the state map to the same tensor name {path!r}")
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, _join(path, f"key{i}"), tensors), _encode(v, _join(path, k), tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    raise _Unencodable(f"{path!r} is a {type(obj).__name__}, neither a tensor nor JSON-able")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_encode`; raises KeyError when a placeholder names a tensor that is not there."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# Files


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk, so the rename that publishes it cannot outrun its bytes."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any, final: Path, what: str) -> None:
    """Write `obj` as JSON at `path` (inside the temp dir of checkpoint `final`, named in errors)."""
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Cannot save checkpoint {final}: {what} is not JSON-serialisable ({e}).") from None
    path.write_text(text + "\n", encoding="utf-8")
    _fsync(path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], extra: dict[str, str] | None = None) -> None:
    """Write `tensors` with safetensors, storing each shared tensor once.

    safetensors refuses tensors that share memory (a tied embedding/head is one Parameter under two
    names). A name that is exactly the same view as an earlier one becomes an alias, recorded in the
    header metadata and re-linked on load; a partial overlap (different views of one storage) is
    copied, which loses the sharing but not the values.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in tensors.items():
        t = t.detach()
        if t.numel() == 0:
            unique[name] = t.cpu().contiguous()
            continue
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        shared = storage in storages
        storages.add(storage)
        t = t.cpu()
        unique[name] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    metadata = {"format": "pt", _ALIASES_KEY: json.dumps(aliases), _ORDER_KEY: json.dumps(list(tensors)),
                **(extra or {})}
    save_file(unique, str(path), metadata=metadata)
    _fsync(path)


def _load_tensors(path: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by `_save_tensors`, re-linking aliases and restoring the key order;
    returns (tensors, header metadata)."""
    stored = load_file(str(path), device=device)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    order = json.loads(metadata.get(_ORDER_KEY, "null")) or list(stored) + list(aliases)
    return {name: stored[aliases.get(name, name)] for name in order}, metadata


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model behind torch.compile / DDP, so saved keys carry no '_orig_mod.' / 'module.'."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        else:
            return model


# --------------------------------------------------------------------------------------------
# Save


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    config: dict, meta: dict, rng: dict | None = None) -> Path:
    """Write a checkpoint directory at `path` atomically and return it.

    `rng=None` captures the current RNG states. Everything is written into the sibling temporary
    directory `.<name>.tmp-<pid>`, checksummed into the manifest, and renamed onto `path`; an
    existing checkpoint of that name is moved aside first and deleted only after the swap, so at
    every instant either the old or the new checkpoint is complete under some name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier failed save in this process
    tmp.mkdir()
    try:
        state = _unwrap(model).state_dict()
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"Cannot save checkpoint {final}: model state entry {name!r} is a "
                                      f"{type(value).__name__}, not a tensor.")
        # state_dict()._metadata holds per-module format versions that load_state_dict consults
        # (legacy-format conversions); keep it so the loaded state_dict is the saved one.
        module_meta = json.dumps(getattr(state, "_metadata", None) or {})
        _save_tensors(tmp / MODEL_FILE, state, {_MODULE_META_KEY: module_meta})

        if optimizer is not None:
            tensors: dict[str, torch.Tensor] = {}  # "state.<param_id>.<name>" -> tensor
            encoded = _encode_for(final, "optimizer state", optimizer.state_dict(), tensors)
            _save_tensors(tmp / OPTIM_TENSORS, tensors)
            _write_json(tmp / OPTIM_JSON, encoded, final, "the optimizer state")

        tensors = {}
        encoded = _encode_for(final, "RNG states", capture_rng() if rng is None else rng, tensors)
        _save_tensors(tmp / RNG_TENSORS, tensors)
        _write_json(tmp / RNG_JSON, encoded, final, "the RNG states")
        _write_json(tmp / CONFIG_JSON, config, final, "the config")
        _write_json(tmp / META_JSON, meta, final, "the metadata")

        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        _write_json(tmp / MANIFEST, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "files": files},
                    final, "the manifest")
        _fsync(tmp)

        # The swap. os.replace cannot rename a directory onto a non-empty one, hence the detour.
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old.exists() and not final.exists():
                os.replace(old, final)  # put the previous checkpoint back under its name
            raise
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def _encode_for(final: Path, what: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    try:
        return _encode(obj, "", tensors)
    except _Unencodable as e:
        raise CheckpointError(f"Cannot save checkpoint {final}: in the {what}, {e}.") from None


# --------------------------------------------------------------------------------------------
# Load


def _read_manifest(ckpt: Path) -> dict:
    """Parse and sanity-check manifest.json; every failure is one CheckpointError sentence."""
    if not ckpt.exists():
        raise CheckpointError(f"Checkpoint {ckpt} does not exist.")
    if not ckpt.is_dir():
        raise CheckpointError(f"Checkpoint {ckpt} is not a directory.")
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"Checkpoint {ckpt} has no {MANIFEST} (it is not a hopelm checkpoint, "
                              f"or its save was interrupted).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {MANIFEST} is not valid JSON ({e}).") from None
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME
            and isinstance(manifest.get("files"), dict) and isinstance(manifest.get("version"), int)):
        raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {MANIFEST} is not a hopelm checkpoint manifest.")
    if manifest["version"] > FORMAT_VERSION:
        raise CheckpointError(f"Checkpoint {ckpt} has format version {manifest['version']}, but this hopelm "
                              f"reads up to version {FORMAT_VERSION}; upgrade hopelm to load it.")
    files = manifest["files"]
    required = REQUIRED_FILES + ((OPTIM_TENSORS,) if OPTIM_JSON in files else ())
    for name in required:
        if name not in files:
            raise CheckpointError(f"Checkpoint {ckpt} is corrupted: its manifest does not list {name}.")
    return manifest


def _check_file(ckpt: Path, name: str, entry: dict, *, checksum: bool) -> None:
    """Existence and size (cheap, catches truncation), then optionally the sha256 (catches edits)."""
    p = ckpt / name
    if not p.is_file():
        raise CheckpointError(f"Checkpoint {ckpt} is incomplete: {name} is listed in the manifest but missing.")
    size = p.stat().st_size
    if size != entry.get("size"):
        raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {name} has {size} bytes but the manifest says "
                              f"{entry.get('size')} (the file was truncated or altered).")
    if checksum:
        digest = _sha256(p)
        if digest != entry.get("sha256"):
            raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {name} has sha256 {digest[:16]}… but the "
                                  f"manifest says {str(entry.get('sha256'))[:16]}… (the file was altered).")


def _read_json(ckpt: Path, name: str) -> Any:
    try:
        return json.loads((ckpt / name).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {name} is not valid JSON ({e}).") from None


def _read_tensors(ckpt: Path, name: str, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        return _load_tensors(ckpt / name, device)
    except Exception as e:  # safetensors raises its own error types for a malformed header
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {name} cannot be read as safetensors ({reason}).") from None


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Verify the manifest (presence, sizes, sha256 of every file), then read the checkpoint.

    Only safetensors and JSON are parsed: nothing is unpickled. Model and optimizer tensors land on
    `map_location`; RNG states stay on the CPU, where torch's set_rng_state wants them.
    """
    ckpt = Path(path)
    manifest = _read_manifest(ckpt)
    for name, entry in manifest["files"].items():
        if not isinstance(entry, dict) or "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"Checkpoint {ckpt} is corrupted: its manifest has a malformed entry {name!r}.")
        _check_file(ckpt, name, entry, checksum=True)

    device = str(torch.device(map_location))
    tensors, header = _read_tensors(ckpt, MODEL_FILE, device)
    model_state = OrderedDict(tensors)  # what Module.state_dict() returns, _metadata included
    try:
        model_state._metadata = json.loads(header.get(_MODULE_META_KEY, "{}"))
    except ValueError:
        raise CheckpointError(f"Checkpoint {ckpt} is corrupted: the header of {MODEL_FILE} is not valid.") from None
    optimizer_state = None
    if OPTIM_JSON in manifest["files"]:
        tensors, _ = _read_tensors(ckpt, OPTIM_TENSORS, device)
        try:
            optimizer_state = _decode(_read_json(ckpt, OPTIM_JSON), tensors)
        except KeyError as e:
            raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {OPTIM_JSON} refers to tensor {e} that "
                                  f"{OPTIM_TENSORS} does not hold.") from None
    try:
        rng = _decode(_read_json(ckpt, RNG_JSON), _read_tensors(ckpt, RNG_TENSORS, "cpu")[0])
    except KeyError as e:
        raise CheckpointError(f"Checkpoint {ckpt} is corrupted: {RNG_JSON} refers to tensor {e} that "
                              f"{RNG_TENSORS} does not hold.") from None
    return Checkpoint(model_state=model_state, optimizer_state=optimizer_state,
                      config=_read_json(ckpt, CONFIG_JSON), meta=_read_json(ckpt, META_JSON), rng=rng)


# --------------------------------------------------------------------------------------------
# Run-directory layout


def _quick_step(ckpt: Path) -> int | None:
    """The meta step of a checkpoint that looks intact, else None.

    "Looks intact" is the cheap part of load's verification: a valid manifest, every listed file
    present at its listed size, and meta.json matching its checksum. That catches the usual damage
    (a save cut short, a truncated copy) without hashing gigabytes of weights for every candidate;
    load_checkpoint still verifies everything.
    """
    try:
        manifest = _read_manifest(ckpt)
        for name, entry in manifest["files"].items():
            _check_file(ckpt, name, entry, checksum=name == META_JSON)
        meta = _read_json(ckpt, META_JSON)
    except (CheckpointError, OSError):
        return None
    step = meta.get("step") if isinstance(meta, dict) else None
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    m = _STEP_DIR.match(ckpt.name)  # older or hand-made metadata: fall back to the directory name
    if m:
        return int(m.group(1))
    return math.inf if ckpt.name == "final" else -1  # a final checkpoint closes its run


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: `run_dir` itself if it is one, else the intact `step_*` or
    `final` child with the highest meta step (`final` wins a tie); None when there is none."""
    run = Path(run_dir)
    if (run / MANIFEST).is_file():
        return run
    if not run.is_dir():
        return None
    best: tuple | None = None
    for child in run.iterdir():
        if not (child.is_dir() and (child.name == "final" or _STEP_DIR.match(child.name))):
            continue
        step = _quick_step(child)
        if step is None:
            continue
        key = (step, child.name == "final", child.name)
        if best is None or key > best[0]:
            best = (key, child)
    return None if best is None else best[1]


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest `step_<N>` checkpoints (by N); `final/` and anything
    else in `run_dir` are never touched. Returns the deleted directories."""
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}.")
    run = Path(run_dir)
    if not run.is_dir():
        return []
    steps = sorted((int(m.group(1)), child) for child in run.iterdir()
                   if child.is_dir() and (m := _STEP_DIR.match(child.name)))
    doomed = [child for _, child in steps[:max(len(steps) - keep_last, 0)]]
    for child in doomed:
        shutil.rmtree(child)
    return doomed
