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


def test_tied_embeddings_stay_tied_in_the_half_depth_student():
    from sparsedistill.train.lm_demo import half_depth_student
    cfg = LMConfig(vocab_size=50, d_model=16, n_layers=4, n_heads=2, d_ff=32, max_len=16, tie_embeddings=True)
    teacher = TinyLM(cfg)
    assert teacher.lm_head.weight is teacher.embed.weight
    untied = sum(p.numel() for p in TinyLM(LMConfig(**{**cfg.__dict__, "tie_embeddings": False})).parameters())
    assert sum(p.numel() for p in teacher.parameters()) == untied - 50 * 16  # the head counted once
    student = half_depth_student(teacher)
    assert student.config.n_layers == 2 and student.lm_head.weight is student.embed.weight
    assert torch.equal(student.embed.weight, teacher.embed.weight)
    assert torch.equal(student.layers[1].up_proj.weight, teacher.layers[2].up_proj.weight)


def test_train_lm_under_bf16_autocast_keeps_float32_weights():
    from sparsedistill.train.lm import train_lm
    torch.manual_seed(0)
    model = TinyLM(LMConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16))
    tokens = torch.randint(0, 40, (400,))
    losses = train_lm(model, tokens, 4, seq_len=8, batch=4, bf16=True)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_stdlib_corpus_splits_are_disjoint_by_file():
    import sysconfig

    from sparsedistill.train.text import split_of, stdlib_corpus, stdlib_source_files
    root = sysconfig.get_paths()["stdlib"]
    splits = [split_of(p, root) for p in stdlib_source_files()]
    assert set(splits) == {"train", "validation", "test"}
    assert 0.05 < splits.count("test") / len(splits) < 0.15
    train, val, test = stdlib_corpus(200_000, 30_000)
    assert len(train) == 200_000 and len(val) == len(test) == 30_000
    # no file's text in two splits: the opening of each held-out split is absent from the others
    assert val[:5000] not in train and test[:5000] not in train and val[:5000] not in test
