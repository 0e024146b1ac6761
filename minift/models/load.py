"""``load_pretrained``: a Hugging Face folder (or a ``.gguf`` file) → ``TaskModel``, every key accounted for.

Loading builds the model on the meta device, reads the safetensors file(s) tensor by tensor in the requested
dtype, checks the keys exhaustively and assigns them (``load_state_dict(assign=True)``), so the weights are
held once. ``.gguf`` paths go to ``minift.models.gguf.load_gguf(path, dtype, device, head, num_labels, quantize)``.

``quantize="nf4"`` (or a ``minift.quant.NF4Config``) stores the frozen base's block linears in 4 bits as their
tensors are read (``minift.quant.StateQuantizer``): each weight is quantised and dropped before the next one is
read, and those tensors are read with plain file reads instead of the memory map, so peak host memory is the
4-bit model plus one tensor (a mapped file's pages would count in the process's resident memory until it closes).
Quantisation is a storage format of the weights, like the dtype; this module knows nothing about PEFT.

How a family plugs in (the interface ``gpt2.py`` / ``gpt_neo.py`` / ``llama.py`` implement)
----------------------------------------------------------------------------------------------
1. Register it in ``registry.FAMILIES`` (``model_type`` → module path; imported lazily, no import-time
   side effects) and make ``ModelConfig.from_hf`` read its config (``config._KEYS``).
2. The module defines ``FAMILY = registry.Family(...)``:

   - ``model_type``, ``prefix`` (HF base-model attribute: ``"transformer"``, ``"model"``), ``hf_class``
     (bare backbone class name, e.g. ``"GPT2Model"``), ``is_decoder=True``, ``default_head="causal-lm"``;
   - ``build_backbone(config, head_kind) -> nn.Module`` whose submodule names are the HF keys below the
     prefix. It is called under ``torch.device("meta")``; do not keep non-persistent buffers (compute
     position ids / RoPE tables in ``forward``), or define ``reset_buffers()`` on the module that owns them:
     it is called after loading, on the loaded device. See ``task_model.py`` for what a backbone provides;
     blocks call ``task_model.run_block`` for gradient checkpointing and attention goes through
     ``attention.py``;
   - ``heads``: head kind → ``HeadSpec(key, build, pooling, hf_class, dropout, tied)``; e.g. GPT-2:
     ``{"causal-lm": HeadSpec("lm_head", heads.lm_head, "tokens", "GPT2LMHeadModel", tied=True),
     "classification": HeadSpec("score", heads.score_head, "last", "GPT2ForSequenceClassification"),
     "regression": (same, num_labels=1)}``;
   - ``skip``: regexes (``re.search`` on full prefixed keys) of checkpoint keys deliberately ignored,
     e.g. ``(r"\\.attn\\.bias$", r"\\.attn\\.masked_bias$")`` for GPT-2's causal buffers or
     ``(r"rotary_emb\\.inv_freq$",)``;
   - ``optional``: regexes of model keys that may be absent from a checkpoint (freshly initialised then) and
     are ignored in a checkpoint when the model has no such module (BERT's ``pooler``);
   - ``transforms``: ``KeyTransform(pattern, load, save)`` tensor transforms, e.g. GPT-2's Conv1D
     ``KeyTransform(r"\\.(c_attn|c_proj|c_fc)\\.weight$", load=torch.t, save=torch.t)``.
3. Checkpoint keys are matched after normalisation: a checkpoint with no key under ``prefix.`` is
   "unprefixed" (saved from the bare model) and gets ``prefix.`` prepended to every key that is not under
   a head key. Then: keys of the requested head present → loaded, absent → fresh (N(0, initializer_range),
   bias 0); a tied head's weight is skipped and tied; weights of heads not requested are skipped; anything
   else missing, unexpected or mis-shaped is a ``CheckpointError`` listing the keys.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from minift.models.config import ModelConfig
from minift.models.errors import CheckpointError, ConfigError, ModelLoadError
from minift.models.registry import HEAD_KINDS, Family, get_family
from minift.models.task_model import TaskModel

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def load_pretrained(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
                    head: str | None = None, num_labels: int | None = None, quantize=None) -> TaskModel:
    """Load a Hugging Face checkpoint folder (or ``.gguf`` file) as a minift ``TaskModel``.

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` or ``model.safetensors.index.json``;
            or a ``.gguf`` file.
        dtype: parameter dtype (``torch.float32``/``bfloat16``/``float16`` or their names); None → float32.
        device: where the weights go (``"cpu"``, ``"cuda"``...); None → cpu.
        head: None | "classification" | "regression" | "token-classification" | "causal-lm". None gives the
            bare encoder, or for decoders the family's default (causal-lm).
        num_labels: outputs of a classification / token-classification head; None → the config's labels.
        quantize: None, "nf4" or a ``minift.quant.NF4Config``: store the linear layers of the blocks as NF4
            ``minift.quant.NF4Linear`` layers (frozen; ``dtype`` is then their bias's and compute dtype),
            quantised from the checkpoint's tensors as they are read.

    Returns:
        The model, in eval mode, with ``fresh_keys`` (keys initialised rather than loaded) and
        ``skipped_keys`` (checkpoint keys deliberately not loaded) recorded on it.

    Raises:
        ModelLoadError: missing folder/files, bad head or num_labels; ``ConfigError`` for a bad config.json;
        ``CheckpointError`` for unreadable safetensors or missing / unexpected / mis-shaped keys.
    """
    path = Path(path).expanduser()
    dtype = resolve_dtype(dtype)
    device = torch.device(device if device is not None else "cpu")
    if head is not None and head not in HEAD_KINDS:
        raise ModelLoadError(f"unknown head {head!r}; use one of {', '.join(HEAD_KINDS)} or None")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        from minift.models.gguf import load_gguf  # optional dependency (the `gguf` package)

        return load_gguf(path, dtype, device, head, num_labels, quantize)
    config = read_config(path)
    family = get_family(config.model_type)
    head = head if head is not None else family.default_head
    config = configure_labels(config, head, num_labels)
    files = weight_files(path)
    with torch.device("meta"):
        model = build_model(config, family, head)
    quantizer = state_quantizer(model, quantize, dtype)
    state, skipped, fresh = read_state(files, family, model, dtype, device, quantizer)
    if quantizer is not None:
        model = quantizer.finish(model)
    return assign_state(model, state, fresh, skipped, dtype, device)


def state_quantizer(model: TaskModel, quantize, dtype: torch.dtype):
    """The ``minift.quant.StateQuantizer`` of ``quantize`` for the meta-built ``model``, or None."""
    if quantize is None:
        return None
    from minift.quant import StateQuantizer, nf4_config

    try:
        return StateQuantizer(model, nf4_config(quantize), dtype)
    except ValueError as e:  # an unknown format, or targets that match no linear layer
        raise ModelLoadError(f"quantize={quantize!r}: {e}") from None


def assign_state(model: TaskModel, state: dict[str, torch.Tensor], fresh: list[str], skipped: list[str],
                 dtype: torch.dtype, device: torch.device) -> TaskModel:
    """Put checked tensors into the meta-built ``model`` (safetensors and GGUF loading both end here).

    Initialises the ``fresh`` keys, points a tied LM head at the embedding, assigns every tensor
    (``load_state_dict(assign=True)``: no second copy), and records ``fresh_keys`` / ``skipped_keys``.

    Returns:
        The model, in eval mode.
    """
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state.update(_fresh_tensors(model, {k: shapes[k] for k in fresh}, dtype, device))
    if model.is_tied:  # the head shares the embedding tensor; tie_weights() re-links them after assign
        embedding = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        state[model.head_spec.key + ".weight"] = state[embedding + ".weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    still_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise RuntimeError(f"{model.config.model_type} family bug: tensors left uninitialised after loading: "
                           f"{still_meta}")
    model.fresh_keys, model.skipped_keys = sorted(fresh), sorted(skipped)
    return model.eval()


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """None → float32; a ``torch.dtype`` or one of its names ("bfloat16", "bf16", ...) → that dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in _DTYPES:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        return _DTYPES[dtype.removeprefix("torch.")]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype must be a floating torch.dtype or its name, got {dtype!r}")
    return dtype


def read_config(folder: Path) -> ModelConfig:
    """Read and normalise ``folder/config.json``."""
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist; pass a Hugging Face checkpoint folder "
                             "(config.json + model.safetensors) or a .gguf file")
    if not folder.is_dir():
        pickled = folder.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
        hint = " (minift never unpickles files: save the model as safetensors)" if pickled else ""
        raise ModelLoadError(f"{folder} is a file, not a model folder; pass the folder holding config.json "
                             f"and model.safetensors, or a .gguf file{hint}")
    file = folder / "config.json"
    if not file.is_file():
        raise ModelLoadError(f"{folder} has no config.json; a Hugging Face model folder needs config.json "
                             "next to model.safetensors (save the model with save_pretrained)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file} is not valid JSON ({e}); restore or re-save the config") from e
    try:
        return ModelConfig.from_hf(raw)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from e


def configure_labels(config: ModelConfig, head: str | None, num_labels: int | None) -> ModelConfig:
    """Give the config the label count the head needs (regression: 1)."""
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int)
                                   or num_labels <= 0):
        raise ModelLoadError(f"num_labels must be a positive integer, got {num_labels!r}")
    if head == "regression":
        if num_labels not in (None, 1):
            raise ModelLoadError(f"a regression head has one output; got num_labels={num_labels}")
        config = config.with_labels(1)
        config.problem_type = "regression"
        return config
    if head in ("classification", "token-classification"):
        return config.with_labels(num_labels) if num_labels is not None else config
    if num_labels is not None:
        raise ModelLoadError(f"num_labels={num_labels} needs a classification head; pass head='classification', "
                             f"'token-classification' or 'regression' (got head={head!r})")
    return config


def build_model(config: ModelConfig, family: Family, head: str | None) -> TaskModel:
    """Build the (uninitialised) model for ``config`` with ``head``; call under ``torch.device("meta")``."""
    spec = family.head_spec(head)
    backbone = family.build_backbone(config, head)
    head_module = spec.build(config, config.num_labels) if spec is not None else None
    return TaskModel(config, backbone, head_module, head)


def weight_files(folder: Path) -> dict[Path, list[str] | None]:
    """Safetensors files of a folder → the keys to read from each (None: all keys of the single file)."""
    single, index = folder / SAFETENSORS, folder / SAFETENSORS_INDEX
    if single.is_file():
        return {single: None}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from e
        files: dict[Path, list[str]] = {}
        for key, name in weight_map.items():
            files.setdefault(folder / name, []).append(key)
        absent = sorted(str(f.name) for f in files if not f.is_file())
        if absent:
            raise CheckpointError(f"{index} lists shard(s) missing from {folder}: {absent}; download them again")
        return files
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5"))
    hint = (f" It has {found}: minift reads only safetensors (it never unpickles files); convert with "
            "transformers: AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True).")
    raise ModelLoadError(f"{folder} has no {SAFETENSORS} or {SAFETENSORS_INDEX}." + (hint if found else ""))


def _open(file: Path, device: torch.device, direct: bool = False):
    try:
        return _FileReader(file, device) if direct else safe_open(str(file), framework="pt", device=str(device))
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for bad files
        raise CheckpointError(f"cannot read {file}: {e}. The file is truncated or corrupt; download or save "
                              "it again") from e


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class _FileReader:
    """A safetensors file read tensor by tensor with plain reads into fresh memory: ``safe_open``'s interface
    (``keys``, ``get_tensor``) without its memory map, whose touched pages stay resident until the file is closed.
    Format: 8 bytes little-endian header length, a JSON header (dtype, shape, data_offsets per tensor), the data."""

    def __init__(self, file: Path, device: torch.device):
        self.file, self.device = file, device
        with open(file, "rb") as handle:
            n = int.from_bytes(handle.read(8), "little")
            self.header = json.loads(handle.read(n))
        self.header.pop("__metadata__", None)
        self.start = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def get_tensor(self, key: str) -> torch.Tensor:
        info = self.header[key]
        begin, end = info["data_offsets"]
        data = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.file, "rb", buffering=0) as handle:
            handle.seek(self.start + begin)
            if handle.readinto(data.numpy()) != end - begin:
                raise ValueError(f"the file ends inside tensor {key!r}")
        return data.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"]).to(self.device)


def _normalise(keys: list[str], prefix: str, head_keys: set[str]) -> dict[str, str]:
    """Checkpoint key → model key: prepend ``prefix.`` to an unprefixed checkpoint's backbone keys."""
    prefixed = any(k.startswith(prefix + ".") for k in keys)
    return {k: k if prefixed or k.split(".", 1)[0] in head_keys else f"{prefix}.{k}" for k in keys}


def read_state(files: dict[Path, list[str] | None], family: Family, model: TaskModel, dtype: torch.dtype,
               device: torch.device, quantizer=None) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Read the tensors ``model`` needs and check every key; ``quantizer`` (a ``minift.quant.StateQuantizer``)
    converts the tensors it quantises as they are read.

    Returns:
        (the loaded tensors by model key, skipped checkpoint keys, fresh model keys — absent head keys that
        ``assign_state`` initialises).
    """
    handles = {file: _open(file, device, direct=quantizer is not None) for file in files}
    where: dict[str, tuple[Path, str]] = {}  # model key → (file, checkpoint key)
    all_keys = [(f, k) for f, h in handles.items() for k in (files[f] if files[f] is not None else h.keys())]
    head_keys = {spec.key for spec in family.heads.values()}
    names = _normalise([k for _, k in all_keys], family.prefix, head_keys)
    for file, key in all_keys:
        where[names[key]] = (file, key)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    head_key = model.head_spec.key + "." if model.head_spec else None
    if model.is_tied:
        expected.pop(model.head_spec.key + ".weight")
    head_present = head_key is not None and any(k.startswith(head_key) and k in where for k in expected)

    def deliberately_skipped(key: str) -> bool:
        if any(re.search(p, key) for p in family.skip + family.optional):
            return True  # named in the family's table (optional: a module this model does not have)
        if key.split(".", 1)[0] in head_keys and (head_key is None or not key.startswith(head_key)):
            return True  # weights of a head that was not asked for (or the tied lm_head)
        return head_key is not None and key.startswith(head_key) and not head_present  # another head's layout

    unexpected = sorted(k for k in where if k not in expected and not deliberately_skipped(k))
    fresh = [k for k in expected if k not in where and (
        (head_key is not None and k.startswith(head_key) and not head_present)
        or any(re.search(p, k) for p in family.optional))]
    missing = sorted(k for k in expected if k not in where and k not in fresh)
    state, mismatched = {}, []
    if not (missing or unexpected):
        for key, shape in expected.items():
            if key in fresh:
                continue
            file, ckpt_key = where[key]
            try:
                tensor = family.transform(key, handles[file].get_tensor(ckpt_key), "load")
            except Exception as e:  # e.g. an index naming a tensor its shard does not hold
                raise CheckpointError(f"cannot read tensor {ckpt_key!r} from {file}: {e}") from e
            if tuple(tensor.shape) != tuple(shape):
                mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(shape)}")
            elif quantizer is not None and quantizer.quantizes(key):
                state.update(quantizer.convert(key, tensor))  # the fp tensor is dropped here
            else:
                state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
            del tensor
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(files, family, model, missing, unexpected, mismatched))
    skipped = [k for k in where if k not in expected]
    return state, skipped, fresh


def _mismatch_message(files, family: Family, model: TaskModel, missing, unexpected, mismatched) -> str:
    def show(keys):
        return f"{keys[:20]}" + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")

    parts = [f"{name} keys ({len(keys)}): {show(keys)}" for name, keys in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)) if keys]
    where = ", ".join(str(f) for f in files)
    hint = f"Check that the weights belong to this config.json ({family.model_type}, {model.config.num_layers} layers)"
    if mismatched and model.head_spec and any(m.startswith(model.head_spec.key + ".") for m in mismatched):
        hint += f"; the checkpoint's head has a different number of labels than num_labels={model.config.num_labels}"
    return f"checkpoint {where} does not match the {family.model_type} model: " + "; ".join(parts) + ". " + hint


@torch.no_grad()
def _fresh_tensors(model: TaskModel, shapes: dict[str, torch.Size], dtype: torch.dtype,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Initialise absent keys as transformers does: Linear/Embedding weights N(0, initializer_range), biases
    0, LayerNorm weight 1."""
    std, out = model.config.initializer_range, {}
    for key, shape in shapes.items():
        owner_name, param = key.rsplit(".", 1)
        owner = model.get_submodule(owner_name)
        t = torch.empty(shape, dtype=torch.float32, device=device)
        if param == "bias":
            t.zero_()
        elif isinstance(owner, nn.LayerNorm):
            t.fill_(1.0)
        elif isinstance(owner, (nn.Linear, nn.Embedding)):
            t.normal_(0.0, std)
        else:
            raise RuntimeError(f"no initialisation rule for fresh key {key} ({type(owner).__name__})")
        out[key] = t.to(dtype)
    return out
