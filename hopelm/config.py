"""Typed run configuration: dataclasses, TOML presets, dotted overrides, validation.

A run is described by one `Config` with five sections (model / data / train / optim / checkpoint).
It is built from a preset (`configs/<name>.toml`) or a TOML file, then dotted overrides
(`--train.max_steps=200`). Every key is type-checked; unknown keys and impossible values raise
`ConfigError` with one sentence naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


@dataclass
class ModelConfig:
    name: str = "transformer"      # registry name, see hopelm.list_models()
    vocab_size: int = 0            # 0: taken from the tokenizer
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 0                  # 0: SwiGLU width round_up(8/3 * d_model, 32)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02
    # Continuum Memory System (SPEC §5), the feed-forward of hope / hope_attention.
    cms_periods: list[int] = field(default_factory=lambda: [0])   # tokens per update; 0 = static level
    cms_lrs: list[float] = field(default_factory=lambda: [0.0])   # inner learning rate η^(ℓ) per level
    cms_hidden: int = 0            # width of each level; 0: the SwiGLU width / number of levels
    cms_variant: str = "sequential"  # sequential | independent | headwise | nested
    cms_momentum: float = 0.0      # inner SGD momentum of the online levels
    cms_meta_grad: str = "first_order"  # first_order | exact (second order, small models only)

    # Associative-memory mixer (SPEC §2–4): hope, and with fixed architecture choices titans and
    # gated_deltanet (the registry pins what defines those baselines).
    self_modifying: bool = True    # False: static k / v / η / α projections (NL Table 6 ablation)
    memory_arch: str = "mlp"       # mlp | linear
    memory_expansion: int = 1      # d_m / d_h of the mlp memories
    objective: str = "l2"          # l2 | dot
    precondition: bool = True      # DGD preconditioner (False: NL Table 6 "w/o DGD")
    momentum: float = 0.0          # inner momentum β (Titans Eq. 13–14)
    retention: bool = True         # False fixes α = 1 (NL Table 6 "w/o weight decay")
    adaptive_q: bool = False       # q from a memory too
    read_after_write: bool = False  # o_t = M_t(q_t) instead of Eq. 94's M_{t-1}(q_t)
    chunk_size: int = 16           # chunk of M_memory (SPEC §4)
    projection_chunk_size: int = 16  # chunk of the projection memories (a multiple of chunk_size)
    detach_inner: bool = False     # first-order: no outer gradient through the inner updates
    eta_max: float = 1.0
    eta_init: float = 0.1          # η at initialisation (at most η_max / 2), via b_η (SPEC §3)
    alpha_init: list[float] = field(default_factory=lambda: [0.999])  # α at init: one value, or [first head, last head]
    normalize_v: bool = True       # L2-normalise hope's self-generated values (docs/paper_map.md)
    self_target: bool = True       # hope's M_memory learns v̂ = M_memory(v) (SPEC §3.3); False: v̂ = v (Titans)
    projection_writes: bool = True  # False: hope's projection memories are read, never written (ablation)
    projection_rate: float = 1.0   # clock of hope's projection-memory writes: η and 1 − α times this (1 = SPEC §3)
    proj_init_std: float = 0.02    # std of the random part of hope's projection memories' initial states
    memory_max_norm: float = 0.0   # bound on every memory weight's Frobenius norm at chunk starts; 0 = off

    def validate(self) -> None:
        _positive(self, "model", "d_model", "n_layers", "n_heads", "memory_expansion", "chunk_size",
                  "projection_chunk_size", "eta_max")
        self._validate_cms()
        self._validate_memory()
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}.")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"model.d_model / model.n_heads = {self.d_model // self.n_heads} must be even for RoPE.")
        if self.vocab_size < 0 or self.d_ff < 0:
            raise ConfigError("model.vocab_size and model.d_ff must be >= 0 (0 means automatic).")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError("model.rope_theta, model.norm_eps and model.init_std must be > 0.")
        if self.proj_init_std < 0:
            raise ConfigError(f"model.proj_init_std={self.proj_init_std} must be >= 0.")
        if not 0.0 < self.projection_rate <= 1.0:
            raise ConfigError(f"model.projection_rate={self.projection_rate} must be in (0, 1] "
                              "(1: SPEC §3; model.projection_writes=false freezes the projection memories).")
        if self.memory_max_norm < 0:
            raise ConfigError(f"model.memory_max_norm={self.memory_max_norm} must be >= 0 (0 turns the bound off).")
        if self.eta_init <= 0:
            raise ConfigError(f"model.eta_init={self.eta_init} must be > 0.")
        if len(self.alpha_init) not in (1, 2) or not all(0.0 < a < 1.0 for a in self.alpha_init):
            raise ConfigError(f"model.alpha_init={self.alpha_init} must be one retention in (0, 1) for every head, "
                              "or two: [first head, last head].")

    def _validate_memory(self) -> None:
        if self.memory_arch not in ("mlp", "linear"):
            raise ConfigError(f"model.memory_arch={self.memory_arch!r} must be mlp or linear.")
        if self.objective not in ("l2", "dot"):
            raise ConfigError(f"model.objective={self.objective!r} must be l2 or dot.")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"model.momentum={self.momentum} must be in [0, 1).")
        if self.projection_chunk_size % self.chunk_size:
            raise ConfigError(f"model.projection_chunk_size={self.projection_chunk_size} must be a multiple of "
                              f"model.chunk_size={self.chunk_size}.")

    def _validate_cms(self) -> None:
        periods, lrs = self.cms_periods, self.cms_lrs
        if not periods or len(lrs) != len(periods):
            raise ConfigError(f"model.cms_lrs needs one rate per level of model.cms_periods={periods} (got {lrs}).")
        if any(p < 0 for p in periods) or any(lr < 0 for lr in lrs):
            raise ConfigError("model.cms_periods and model.cms_lrs must be >= 0 (period 0 = static level).")
        if self.cms_variant not in ("sequential", "independent", "headwise", "nested"):
            raise ConfigError(f"model.cms_variant={self.cms_variant!r} must be sequential, independent, headwise "
                              "or nested.")
        timed = [p for p in periods if p > 0]
        if self.cms_variant == "nested" and (periods[:len(timed)] != timed or
                                             any(b <= a or b % a for a, b in zip(timed, timed[1:]))):
            # Level ℓ+1 restarts level ℓ at its boundaries, which must fall on level ℓ's (Eq. 72).
            raise ConfigError(f"model.cms_periods={periods}: the nested CMS needs the periods fastest first, each a "
                              "larger multiple of the one before, and static levels (period 0) last.")
        if self.cms_variant == "headwise" and self.d_model % len(periods):
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by the {len(periods)} CMS levels "
                              "for model.cms_variant='headwise'.")
        if self.cms_meta_grad not in ("first_order", "exact"):
            raise ConfigError(f"model.cms_meta_grad={self.cms_meta_grad!r} must be first_order or exact.")
        if not 0.0 <= self.cms_momentum < 1.0 or self.cms_hidden < 0:
            raise ConfigError("model.cms_momentum must be in [0, 1) and model.cms_hidden >= 0.")
        online = [p for p, lr in zip(periods, lrs) if p > 0 and lr > 0]
        if online and any(p % min(online) for p in online):
            raise ConfigError(f"model.cms_periods={periods}: every online period must be a multiple of the "
                              f"smallest one ({min(online)}), which sets the block size of the CMS loop.")


@dataclass
class DataConfig:
    path: str = ""                 # text file, folder of .txt/.txt.gz, "hf:<dataset>"; "" = vendored TinyShakespeare
    tokenizer: str = "bytes"       # "bytes", "gpt2", or a path to a trained tokenizer.json
    seq_len: int = 256
    val_fraction: float = 0.1      # held-out tail when the corpus has no validation split
    hf_config: str = ""            # Hugging Face dataset config name (online users)
    hf_text_field: str = "text"
    cache_dir: str = ""            # "" = ~/.cache/hopelm/tokens

    def validate(self) -> None:
        _positive(self, "data", "seq_len")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1).")


@dataclass
class TrainConfig:
    batch_size: int = 16           # global micro-batch (rows per step across all ranks)
    grad_accum: int = 1
    max_steps: int = 500
    eval_interval: int = 100       # 0: only at the end
    eval_batches: int = 10
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    dtype: str = "auto"            # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | float64 | bfloat16
    grad_clip: float = 1.0         # 0 disables clipping
    out_dir: str = "runs/{model}"  # "{model}" is replaced by model.name
    compile: bool = False          # torch.compile the whole model
    compile_mixers: bool = False   # torch.compile only each block's sequence mixer (hope on CPU: docs/results.md)
    cuda_graph: bool = False       # capture forward + backward once as a CUDA graph, replay it every step (GPU)
    trace_nonfinite: bool = False  # re-run the first non-finite step under anomaly detection, say which op made it
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        _positive(self, "train", "batch_size", "grad_accum", "max_steps", "eval_batches", "log_interval")
        if self.eval_interval < 0 or self.grad_clip < 0:
            raise ConfigError("train.eval_interval and train.grad_clip must be >= 0.")
        if self.dtype not in ("auto", "float32", "float64", "bfloat16"):
            raise ConfigError(f"train.dtype={self.dtype!r} must be one of auto, float32, float64, bfloat16.")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device={self.device!r} must be auto, cpu, cuda or cuda:N.")


@dataclass
class OptimConfig:
    name: str = "adamw"            # adamw | adam_memory | muon | m3 | dmgd | precond_momentum | delta_momentum
    lr: float = 3e-3
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9             # AdamW β1; M3 fast momentum β1
    beta2: float = 0.95            # AdamW β2; M3 second moment β2; preconditioner of *_momentum
    eps: float = 1e-8
    # hidden-matrix optimizers (SPEC §7); AdamW keeps embeddings, head, norms and gains
    hidden_lr_scale: float = 1.0   # lr multiplier for the hidden-matrix optimizer
    momentum: float = 0.95         # Muon μ; retention α of precond/delta momentum and DMGD
    nesterov: bool = True          # Muon
    ns_steps: int = 5              # Newton–Schulz steps T (Muon, M3)
    muon_impl: str = "auto"        # auto (torch.optim.Muon when present) | torch | own
    update_rms: float = 0.2        # M3/DMGD per-matrix update RMS (0: literal scale)
    m3_f: int = 8                  # slow momentum period f (steps)
    m3_alpha: float = 0.5          # weight α of the slow momentum
    m3_beta3: float = 0.9          # slow momentum β3
    m3_accumulate: str = "ema"     # ema (default) | sum (Algorithm 1's literal running sums)
    precond: str = "rms"           # precond/delta momentum preconditioner P: rms | none
    delta: float = 1.0             # delta momentum forgetting strength γ in m(αI − γ ĝĝᵀ)
    dmgd_hidden: int = 16          # hidden width of DMGD's MLP memory
    dmgd_lr: float = 0.1           # inner learning rate of DMGD's memory

    def validate(self) -> None:
        names = ("adamw", "adam_memory", "muon", "m3", "dmgd", "precond_momentum", "delta_momentum")
        if self.name not in names:
            raise ConfigError(f"optim.name={self.name!r} is not a known optimizer (known: {', '.join(names)}).")
        for key in ("lr", "eps", "hidden_lr_scale", "dmgd_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"optim.{key}={getattr(self, key)} must be > 0.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1].")
        for key in ("beta1", "beta2", "momentum", "m3_beta3"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"optim.{key}={getattr(self, key)} must be in [0, 1).")
        for key in ("warmup_steps", "weight_decay", "update_rms", "m3_alpha", "dmgd_hidden"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optim.{key}={getattr(self, key)} must be >= 0.")
        for key in ("m3_f", "ns_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"optim.{key}={getattr(self, key)} must be >= 1.")
        if not 0.0 <= self.delta <= 1.0:
            raise ConfigError(f"optim.delta={self.delta} must be in [0, 1].")
        for key, allowed in (("muon_impl", ("auto", "torch", "own")), ("m3_accumulate", ("ema", "sum")),
                             ("precond", ("rms", "none"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"optim.{key}={getattr(self, key)!r} must be one of {', '.join(allowed)}.")


@dataclass
class CheckpointConfig:
    interval: int = 0              # save every N steps (0: only the final checkpoint)
    keep_last: int = 2             # periodic checkpoints kept besides the final one

    def validate(self) -> None:
        if self.interval < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint.interval must be >= 0 and checkpoint.keep_last >= 1.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        if self.train.compile and self.train.compile_mixers:
            raise ConfigError("train.compile already compiles the whole model, mixers included: set train.compile "
                              "or train.compile_mixers, not both.")
        if self.train.cuda_graph and (self.train.compile or self.train.compile_mixers or self.train.grad_accum > 1):
            raise ConfigError("train.cuda_graph=true captures one eager micro-batch: it cannot be combined with "
                              "train.compile, train.compile_mixers or train.grad_accum > 1.")
        if self.train.compile_mixers and self.model.cms_meta_grad == "exact":
            raise ConfigError("train.compile_mixers cannot be used with model.cms_meta_grad='exact': compiled "
                              "mixers have no double backward.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _positive(obj: Any, section: str, *keys: str) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ConfigError(f"{section}.{key}={getattr(obj, key)} must be > 0.")


# --------------------------------------------------------------------------------------------
# Building a config from dicts, presets, files and overrides.

def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return `value` coerced to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            if arg is not type(None):
                try:
                    return _check_type(value, arg, key)
                except ConfigError:
                    pass
        raise ConfigError(f"{key}={value!r} has the wrong type (expected {tp}).")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (arg, *_) = typing.get_args(tp) or (Any,)
            items = [v if arg is Any else _check_type(v, arg, key) for v in value]
            return list(items) if origin is list else tuple(items)
    else:  # pragma: no cover - every field uses one of the types above
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{key}={value!r} has the wrong type (expected {name}).")


def _apply(section_obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(section_obj))
    known = {f.name for f in dataclasses.fields(section_obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"Unknown config key '{prefix}{key}' (known in [{prefix[:-1]}]: {', '.join(sorted(known))}).")
        setattr(section_obj, key, _check_type(value, hints[key], prefix + key))


def apply_dict(cfg: Config, data: dict[str, Any]) -> Config:
    """Merge a nested dict (as read from TOML) into `cfg`. `[models.<name>]` tables are
    per-model size adjustments applied when `model.name` equals <name>."""
    for section, values in data.items():
        if section == "models":
            continue
        if section not in {f.name for f in dataclasses.fields(cfg)}:
            raise ConfigError(f"Unknown config section '{section}' (known: model, data, train, optim, checkpoint).")
        if not isinstance(values, dict):
            raise ConfigError(f"Config section '{section}' must be a table.")
        _apply(getattr(cfg, section), values, section + ".")
    per_model = data.get("models", {})
    for name, table in per_model.items():   # check every table, not only the one in use
        _apply(ModelConfig(), table, f"models.{name}.")
    if cfg.model.name in per_model:
        _apply(cfg.model, per_model[cfg.model.name], "model.")
    return cfg


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {str(p)!r} does not exist.")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file {str(p)!r} is not valid TOML: {e}.") from None


def preset_dict(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"Unknown preset {name!r} (known: {', '.join(list_presets())}).")
    return read_toml(path)


def parse_override(text: str) -> tuple[str, Any]:
    """'--train.max_steps=200' -> ('train.max_steps', 200). Values are TOML literals;
    anything that is not a TOML literal is taken as a bare string."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise ConfigError(f"Override {text!r} must look like --section.key=value.")
    key, raw = body.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _dotted(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(overrides, dict):
        return dict(overrides)
    return dict(parse_override(o) for o in overrides or [])


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any] | None) -> Config:
    """Apply dotted overrides (['--train.max_steps=200'] or {'train.max_steps': 200}) and validate."""
    over = _nest(_dotted(overrides))
    over.pop("models", None)
    return apply_dict(cfg, over).validate()


def load_config(preset: str | None = "tiny", file: str | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Resolve preset (or file) + dotted overrides into a validated Config."""
    base = read_toml(file) if file else (preset_dict(preset) if preset else {})
    dotted = _dotted(overrides)
    # model.name may come from an override: apply it first so [models.<name>] tables follow it.
    if "model.name" in dotted:
        base = {**base, "model": {**base.get("model", {}), "name": dotted["model.name"]}}
    return apply_overrides(apply_dict(Config(), base), dotted)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved (resolved) config, e.g. from a checkpoint's JSON."""
    return apply_dict(Config(), data).validate()
