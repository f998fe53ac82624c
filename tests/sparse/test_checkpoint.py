"""Saving and loading sparsified models (safetensors): plain modules and, when transformers is
installed, BERT and Llama models built from tiny configs (no download). Loads are strict:
partial, mismatched or mixed-up checkpoints raise, and a dense loader fails on the shape."""
import json
import os

import pytest
import torch
from torch import nn

import sparsedistill
from sparsedistill.sparse import SparseLinear, from_pretrained, save_pretrained, sparsify
from sparsedistill.sparse.checkpoint import METADATA_FILE, WEIGHTS_FILE, read_safetensors

pytest.importorskip("safetensors")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 24)
        self.fc1, self.fc2 = nn.Linear(24, 64), nn.Linear(64, 24, bias=False)
        self.head = nn.Linear(24, 50, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, ids):
        return self.head(self.fc2(torch.relu(self.fc1(self.emb(ids)))))


def sparse_net():
    torch.manual_seed(5)
    net = Net().eval()
    with torch.no_grad():
        for m in (net.fc1, net.fc2):
            sparsedistill.magnitude_prune_(m.weight, 0.8)
    report = sparsify(net, measure=False)
    assert report.replaced == ["fc1", "fc2"]
    return net


def test_plain_module_round_trip(tmp_path):
    net = sparse_net()
    ids = torch.randint(0, 50, (3, 7))
    meta = save_pretrained(net, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [WEIGHTS_FILE, METADATA_FILE]
    assert meta["sparse_layers"]["fc1"] == {"in_features": 24, "out_features": 64, "nnz": 307,
                                            "bias": True, "dtype": "float32"}
    assert meta["checkpoint_tensor_bytes"] < meta["dense_equivalent_bytes"]
    back = from_pretrained(Net, tmp_path)
    assert isinstance(back.fc1, SparseLinear) and back.fc2.bias is None
    assert back.head.weight is back.emb.weight
    assert torch.equal(back(ids), net(ids))
    back = from_pretrained(lambda: Net(), tmp_path, dtype=torch.float64)
    assert back.fc1.values.dtype == torch.float64
    torch.testing.assert_close(back(ids), net(ids).double(), rtol=1e-5, atol=1e-5)


def test_dense_loader_fails_loudly(tmp_path):
    net = sparse_net()
    state = net.state_dict()
    assert state["fc1.weight"].shape == (net.fc1.nnz,)  # the values, 1-D
    with pytest.raises(RuntimeError, match="size mismatch for fc1.weight"):
        Net().load_state_dict(state)
    with pytest.raises(RuntimeError, match="size mismatch for fc1.weight"):
        Net().load_state_dict(state, strict=False)


def test_values_key_still_loads():
    layer = SparseLinear.from_linear(nn.Linear(12, 6), amount=0.5)
    old = {("values" if k == "weight" else k): v for k, v in layer.state_dict().items()}
    fresh = SparseLinear(12, 6)
    fresh.load_state_dict(old)
    x = torch.randn(2, 12)
    torch.testing.assert_close(fresh(x), layer(x))
    with pytest.raises(RuntimeError, match="both weight and values"):
        SparseLinear(12, 6).load_state_dict(dict(old, weight=old["values"]))


def _rewrite(tmp_path, edit):
    from safetensors.torch import save_file
    state = read_safetensors(tmp_path)
    edit(state)
    save_file(state, os.path.join(tmp_path, WEIGHTS_FILE))


@pytest.mark.parametrize("edit, exc, match", [
    (lambda s: s.pop("fc1.row_order"), ValueError, "only part of the sparse layer fc1"),
    (lambda s: s.update({"fc1.row_ptr": torch.zeros(10, dtype=torch.int64)}), ValueError, "9 output features"),
    (lambda s: s.update({"fc1.col_idx": s["fc1.col_idx"] + 100}), RuntimeError, "col_idx"),
    (lambda s: s.pop("fc2.weight"), ValueError, "missing fc2.weight"),
    (lambda s: s.pop("emb.weight"), RuntimeError, "missing from the checkpoint: emb.weight"),
    (lambda s: s.update({"extra": torch.zeros(1)}), RuntimeError, "not in the model: extra"),
    (lambda s: s.update({"emb.row_ptr": torch.zeros(51, dtype=torch.int64)}), TypeError, "Embedding"),
])
def test_bad_checkpoints_fail_loudly(tmp_path, edit, exc, match):
    save_pretrained(sparse_net(), tmp_path)
    _rewrite(tmp_path, edit)
    with open(os.path.join(tmp_path, METADATA_FILE)) as f:
        meta = json.load(f)
    if "emb.row_ptr" in read_safetensors(tmp_path):
        meta["sparse_layers"]["emb"] = {}
        with open(os.path.join(tmp_path, METADATA_FILE), "w") as f:
            json.dump(meta, f)
    with pytest.raises(exc, match=match):
        from_pretrained(Net, tmp_path)


def test_metadata_and_weights_must_agree(tmp_path):
    save_pretrained(sparse_net(), tmp_path)
    meta_path = os.path.join(tmp_path, METADATA_FILE)
    with open(meta_path) as f:
        meta = json.load(f)
    meta["sparse_layers"].pop("fc2")
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="incomplete or mixed up"):
        from_pretrained(Net, tmp_path)
    os.remove(meta_path)  # the weights alone say which layers are sparse
    ids = torch.randint(0, 50, (2, 3))
    assert torch.equal(from_pretrained(Net, tmp_path)(ids), sparse_net()(ids))


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(Net, tmp_path)
    with pytest.raises(TypeError, match="model_class_or_loader"):
        from_pretrained(3, tmp_path)
    with pytest.raises(TypeError, match="must return an nn.Module"):
        save_pretrained(sparse_net(), tmp_path)
        from_pretrained(lambda: "net", tmp_path)
    with pytest.raises(TypeError, match="path"):
        save_pretrained(sparse_net(), 3)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        save_pretrained("net", tmp_path)
    with pytest.raises(TypeError, match="not one"):
        save_pretrained(sparse_net(), tmp_path, safe_serialization=True)


# ------------------------------------------------------------------------- Hugging Face models
def _tiny(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=32)
        model_class = transformers.BertModel
    else:
        cfg = transformers.LlamaConfig(vocab_size=90, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        model_class = transformers.LlamaForCausalLM
    model = model_class(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                sparsedistill.magnitude_prune_(m.weight, 0.75)
    return transformers, model_class, model


def _out(model, ids):
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("saver", ["hf", "ours"])
def test_hf_round_trip(tmp_path, kind, saver):
    transformers, model_class, model = _tiny(kind)
    ids = torch.randint(0, 90, (2, 9))
    report = sparsify(model, measure=False)
    n_linear = sum(isinstance(m, (nn.Linear, SparseLinear)) for m in model.modules())
    assert len(report.replaced) == n_linear - 1  # the pooler / the tied LM head stay dense
    want = _out(model, ids)
    if saver == "hf":
        model.save_pretrained(tmp_path)
    else:
        save_pretrained(model, tmp_path)
        assert METADATA_FILE in os.listdir(tmp_path)
    back = from_pretrained(model_class, tmp_path)
    assert [n for n, m in back.named_modules() if isinstance(m, SparseLinear)] == report.replaced
    assert torch.equal(_out(back, ids), want)
    auto = transformers.AutoModelForCausalLM if kind == "llama" else transformers.AutoModel
    assert torch.equal(_out(from_pretrained(auto, tmp_path), ids), want)
    if kind == "llama":
        assert back.lm_head.weight is back.model.embed_tokens.weight
    # the stock loader builds dense layers: it must refuse, not re-initialise them
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        model_class.from_pretrained(tmp_path)


def test_hf_bfloat16_and_partial_checkpoint(tmp_path):
    transformers, model_class, model = _tiny("bert")
    model = model.to(torch.bfloat16)
    sparsify(model, measure=False)
    model.save_pretrained(tmp_path)
    back = from_pretrained(model_class, tmp_path)
    assert back.encoder.layer[0].attention.self.query.values.dtype == torch.bfloat16
    ids = torch.randint(0, 90, (1, 5))
    assert torch.equal(_out(back, ids), _out(model, ids))
    _rewrite(tmp_path, lambda s: s.pop("encoder.layer.1.output.dense.col_idx"))
    with pytest.raises(ValueError, match="only part of the sparse layer encoder.layer.1.output.dense"):
        from_pretrained(model_class, tmp_path)
