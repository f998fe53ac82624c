"""Saving a model with SparseLinear layers and loading it back, in safetensors (the format
Hugging Face uses), for Hugging Face models and any nn.Module.

    sparsedistill.save_pretrained(model, "out/")                 # or model.save_pretrained("out/")
    model = sparsedistill.from_pretrained(AutoModel, "out/")     # HF class: built from out/config.json
    model = sparsedistill.from_pretrained(lambda: Net(), "out/") # any module: built by the loader

The checkpoint itself says which layers are sparse: a SparseLinear stores its nonzeros under
`<name>.weight` (1-D) with `<name>.row_ptr`, `.col_idx`, `.row_order`. The loader builds the
model dense, replaces exactly those layers by SparseLinear and loads strictly: a missing, extra
or malformed tensor raises, and nothing is ever left randomly initialised. A stock loader that
builds dense layers (nn.Module.load_state_dict, transformers' from_pretrained) fails on the
shape of the 1-D `weight`. sparsedistill.json beside the weights records the sparse layers
(shapes, nonzeros, dtypes) and the bytes, for people and for a cross-check on load.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from .modules import SparseLinear
from .sparsify import _replace, _tied_names, state_dict_bytes

METADATA_FILE = "sparsedistill.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PARTS = ("row_ptr", "col_idx", "row_order")


def _is_hf_model(model) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "config") and hasattr(model.config, "to_dict")


def sparse_layers(model: nn.Module) -> dict:
    """name -> {in_features, out_features, nnz, bias, dtype} of every SparseLinear in model."""
    return {name: {"in_features": m.in_features, "out_features": m.out_features, "nnz": m.nnz,
                   "bias": m.bias is not None, "dtype": str(m.values.dtype).removeprefix("torch.")}
            for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def save_pretrained(model: nn.Module, path, **kwargs) -> dict:
    """Saves `model` into the directory `path` as safetensors plus sparsedistill.json. A
    Hugging Face model goes through its own save_pretrained(path, **kwargs) (config.json,
    sharding); any other module is written to model.safetensors (shared tensors once).
    Returns the metadata written."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory path (str or os.PathLike), got {type(path).__name__}")
    os.makedirs(path, exist_ok=True)
    if _is_hf_model(model):
        model.save_pretrained(path, **kwargs)
    else:
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} are passed to a Hugging Face "
                            f"model's save_pretrained; {type(model).__name__} is not one")
        from safetensors.torch import save_model
        save_model(model, os.path.join(path, WEIGHTS_FILE))
    tensor_bytes = state_dict_bytes(model)
    meta = {"format": 1, "library": "sparsedistill", "sparse_layers": sparse_layers(model),
            "checkpoint_tensor_bytes": tensor_bytes,
            "dense_equivalent_bytes": tensor_bytes + _bytes_saved_by_sparsity(model)}
    with open(os.path.join(path, METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _bytes_saved_by_sparsity(model: nn.Module) -> int:
    """Dense weight bytes minus compressed bytes, over every SparseLinear."""
    return sum(m.in_features * m.out_features * m.values.element_size() - m.sparse_weight.nbytes()
               for m in model.modules() if isinstance(m, SparseLinear))


# -------------------------------------------------------------------------------------- loading
def read_safetensors(path, device="cpu") -> dict:
    """The tensors of a checkpoint directory (model.safetensors, or the shards its index names)
    or of one .safetensors file."""
    from safetensors.torch import load_file
    path = os.fspath(path)
    if os.path.isfile(path):
        files = [path]
    elif os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        files = [os.path.join(path, WEIGHTS_FILE)]
    elif os.path.isfile(os.path.join(path, INDEX_FILE)):
        with open(os.path.join(path, INDEX_FILE)) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shards]
    else:
        raise FileNotFoundError(f"path {path!r} holds no {WEIGHTS_FILE} or {INDEX_FILE} "
                                "(sparsedistill loads safetensors checkpoints)")
    state = {}
    for file in files:
        state.update(load_file(file, device=str(device)))
    return state


def _build_hf(model_class, path, dtype):
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(path)
    if dtype is None:
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:  # skip the random initialisation: every tensor is loaded afterwards
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        if hasattr(model_class, "from_config"):  # AutoModel* classes
            model = model_class.from_config(config)
        else:
            model = model_class(config)
    return model if dtype is None else model.to(dtype)


def _sparse_names(state: dict) -> list:
    names = []
    for key in state:
        if key.endswith("row_ptr") and (key == "row_ptr" or key.endswith(".row_ptr")):
            names.append(key[: -len("row_ptr")].rstrip("."))
    return names


def _key(name: str, part: str) -> str:
    return f"{name}.{part}" if name else part


def make_sparse_like(model: nn.Module, state: dict) -> list:
    """Replaces by an empty SparseLinear every layer of `model` that `state` holds in sparse
    form (after checking them all: on a mismatch nothing is replaced). Returns their names."""
    modules = dict(model.named_modules())
    plan = []
    for name in _sparse_names(state):
        label = name or "the model"
        m = modules.get(name)
        if m is None:
            raise ValueError(f"the checkpoint holds a sparse layer {name!r}, which the model does not have")
        if not isinstance(m, (nn.Linear, SparseLinear)):
            raise TypeError(f"the checkpoint holds a sparse layer {name!r}, but the model's is a "
                            f"{type(m).__name__}, not an nn.Linear")
        missing = [p for p in ("weight", *_PARTS) if _key(name, p) not in state
                   and not (p == "weight" and _key(name, "values") in state)]
        if missing:
            raise ValueError(f"the checkpoint holds only part of the sparse layer {label} (missing "
                             f"{', '.join(_key(name, p) for p in missing)})")
        out = state[_key(name, "row_ptr")].numel() - 1
        if out != m.out_features:
            raise ValueError(f"the checkpoint's sparse layer {label} has {out} output features, the "
                             f"model's has {m.out_features}")
        plan.append((name, m))
    for name, m in plan:
        if isinstance(m, SparseLinear):
            continue
        w = m.weight
        sparse = SparseLinear(m.in_features, m.out_features, bias=m.bias is not None,
                              device=w.device, dtype=w.dtype)
        sparse.train(m.training)
        _replace(model, name, sparse)
    return [name for name, _ in plan]


def load_sparse_state_dict(model: nn.Module, state: dict) -> nn.Module:
    """Loads `state` into `model`, turning the layers it holds sparse into SparseLinear first,
    strictly: every tensor of the model must come from `state` (or be tied to one that does)
    and every tensor of `state` must be used, else RuntimeError. Mutates `model`; for a model
    the caller keeps, load into a copy."""
    names = make_sparse_like(model, state)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    result = model.load_state_dict(state, strict=False)
    tied = _tied_names(model)
    missing = [k for k in result.missing_keys if not any(a in state for a in tied.get(k, ()))]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {', '.join(missing[:8])}"
                        + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if result.unexpected_keys:
        u = result.unexpected_keys
        problems.append(f"not in the model: {', '.join(u[:8])}" + (f" and {len(u) - 8} more" if len(u) > 8 else ""))
    if problems:
        raise RuntimeError(f"loading into {type(model).__name__} ({len(names)} sparse layers): "
                           + "; ".join(problems) + ". Nothing was initialised at random; the model is unusable.")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def from_pretrained(model_class_or_loader, path, *, dtype=None, device="cpu") -> nn.Module:
    """Loads a model saved by save_pretrained (or by a Hugging Face model's own save_pretrained
    after sparsify). `model_class_or_loader`: a transformers model class (AutoModel... or e.g.
    LlamaForCausalLM; built from path/config.json in its saved dtype, or `dtype`), or a
    callable returning the dense (or already sparse) module to load into. The layers the
    checkpoint holds sparse become SparseLinear before the weights load; see
    load_sparse_state_dict for the strict rules. Returns the model in eval mode."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory path (str or os.PathLike), got {type(path).__name__}")
    if isinstance(model_class_or_loader, type) and hasattr(model_class_or_loader, "from_pretrained"):
        model = _build_hf(model_class_or_loader, path, dtype)
    elif callable(model_class_or_loader):
        model = model_class_or_loader()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model_class_or_loader must return an nn.Module, got {type(model).__name__}")
        if dtype is not None:
            model = model.to(dtype)
    else:
        raise TypeError("model_class_or_loader must be a transformers model class or a callable "
                        f"that builds the model, got {type(model_class_or_loader).__name__}")
    model = model.to(device)
    state = read_safetensors(path, device)
    meta_file = os.path.join(path, METADATA_FILE) if os.path.isdir(path) else None
    if meta_file and os.path.isfile(meta_file):
        with open(meta_file) as f:
            recorded = set(json.load(f).get("sparse_layers", {}))
        found = set(_sparse_names(state))
        if recorded != found:
            raise ValueError(f"{METADATA_FILE} lists sparse layers {sorted(recorded - found)[:4]} that "
                             f"the weights lack, or the weights hold {sorted(found - recorded)[:4]} it "
                             "does not list: the checkpoint is incomplete or mixed up")
    load_sparse_state_dict(model, state)
    return model.eval()

