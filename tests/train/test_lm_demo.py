"""The language-model demo end to end at --quick sizes (a smoke test of every stage), and the
KV-cache decoding it measures."""
import pytest
import torch

from sparsedistill.train.lm import LMConfig, TinyLM


def test_generate_with_kv_cache_equals_recomputing():
    torch.manual_seed(0)
    model = TinyLM(LMConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=40)).eval()
    ids = torch.randint(0, 97, (3, 7))
    got = model.generate(ids, 12)
    want = ids
    with torch.no_grad():
        for _ in range(12):
            want = torch.cat([want, model(want)[:, -1:].argmax(-1)], 1)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="max_len"):
        model.generate(ids, 40)


def test_quick_demo_runs_every_stage(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    monkeypatch.setenv("SPARSEDISTILL_CACHE", str(tmp_path / "cache"))
    from sparsedistill.demo import main
    out = tmp_path / "lm.md"
    assert main(["lm", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    for piece in ("| teacher |", "student (distilled)", "student (hard labels)", "wanda 90% + distill",
                  "sparsegpt 50% + distill", "gradual magnitude", "## Targets"):
        assert piece in text
    assert (tmp_path / "lm.csv").exists()
    assert list((tmp_path / "cache" / "lm").glob("*/teacher-*.pt"))  # the teacher is cached
    assert main(["lm", "--quick", "--out", str(out)]) == 0  # and reused
