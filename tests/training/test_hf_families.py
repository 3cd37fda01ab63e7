"""The open MoE families (Qwen3-MoE, Qwen2-MoE, OLMoE, gpt-oss) to and from ours, proven on
transformers itself: for each, a random tiny model built and saved by transformers converts to a
model with the same logits over a sequence longer than any sliding window, the same experts in
every layer and the same greedy tokens; converted back out it is bit for bit the saved file; the
engine (paged cache, continuous batching, mixed lengths) equals generate on it."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moe.data import tokenizer as tokenizers
from moe.hf_families import ConversionError
from moe.serving import Engine, Request, generate
from moe.training import load_model, mxfp4
from moe.training.hf_convert import from_hf, to_hf

transformers = pytest.importorskip("transformers")
QUIET = dict(log=lambda *_: None)
V = 300
COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)
SLIDING = 8  # gpt-oss's window here: the test sequences are several windows long
FAMILIES = {  # transformers' classes and the fields that exercise each family's differences
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(head_dim=16, moe_intermediate_size=24, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True),
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            head_dim=16,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            tie_word_embeddings=True,
        ),
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        dict(intermediate_size=24, num_experts=8, num_experts_per_tok=2, clip_qkv=2.0, norm_topk_prob=False),
    ),
    "gpt_oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(
            head_dim=16,
            intermediate_size=32,
            num_local_experts=8,
            num_experts_per_tok=2,
            sliding_window=SLIDING,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "original_max_position_embeddings": 32,
                "truncate": False,
            },
        ),
    ),
}


def _hf_model(family):
    """transformers' model with its weights redrawn large enough that every part matters: biases,
    sinks and norm gains away from their init, gpt-oss's clamps reached."""
    config_cls, model_cls, fields = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**COMMON, **fields)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                scale = 1.0 if "experts" in name or "sinks" in name else 0.2
                p.copy_(scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(family, transformers' model, its saved directory, our converted run directory)."""
    name = request.param
    d = tmp_path_factory.mktemp(name)
    model = _hf_model(name)
    model.save_pretrained(d / "hf")
    (d / "hf" / "tokenizer.json").write_text(tokenizers.ByteTokenizer().to_hf_json())
    from_hf(d / "hf", d / "ours", **QUIET)
    return name, model, d / "hf", d / "ours"


def test_logits_and_experts_equal_transformers(family):
    name, hf, _, ours_dir = family
    ours = load_model(ours_dir).eval()
    x = torch.randint(0, V, (2, 5 * SLIDING), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs, mine = hf(x, output_router_logits=True), ours(x)
    rel = ((theirs.logits - mine.logits).abs().max() / theirs.logits.abs().max()).item()
    assert rel < 1e-5, (name, rel)
    k = ours.cfg.top_k
    for layer, (logits, routing) in enumerate(zip(theirs.router_logits, mine.routing)):
        chosen = logits.reshape(-1, logits.shape[-1]).topk(k, dim=-1).indices.sort(dim=-1).values
        assert torch.equal(chosen, routing.experts.sort(dim=-1).values), f"{name} layer {layer}"


def test_greedy_generation_equals_transformers(family):
    name, hf, _, ours_dir = family
    ours = load_model(ours_dir).eval()
    prompt = [5, 17, 42, 99, 7, 250, 3]
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor([prompt]), max_new_tokens=3 * SLIDING, do_sample=False, min_new_tokens=3 * SLIDING
        )[0, len(prompt) :].tolist()
    assert generate(ours, prompt, 3 * SLIDING, greedy=True) == theirs, name


def test_converted_back_out_is_bit_for_bit(family, tmp_path):
    name, hf, hf_dir, ours_dir = family
    to_hf(ours_dir, tmp_path / "back", **QUIET)
    before, after = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys(), name
    assert all(torch.equal(before[k], after[k]) for k in before), name
    cfg_back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg_back["architectures"] == hf.config.architectures
    loaded, info = type(hf).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not any(info.values()), info


def test_the_engine_equals_generate(family):
    """Paged cache in pages smaller than the window, continuous batching, mixed prompt lengths."""
    name, _, _, ours_dir = family
    model = load_model(ours_dir).eval()
    gen = torch.Generator().manual_seed(3)
    reqs = [Request(torch.randint(0, V, (n,), generator=gen).tolist(), 14, {"greedy": True}) for n in (3, 11, 20, 6)]
    results = Engine(model, n_pages=40, page_size=4, max_batch=3).run(reqs)
    for req, res in zip(reqs, results):
        assert res.tokens == generate(model, req.prompt, req.max_new_tokens, greedy=True), name


# ------------------------------------------------------------------------------------------ MXFP4


def test_mxfp4_dequantizes_as_transformers_does():
    """Our dequantization (from the E2M1 bits, not a table) equals transformers' own on random bytes
    of every code and a spread of scales; and quantize finds values dequantize returns."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    gen = torch.Generator().manual_seed(4)
    blocks = torch.randint(0, 256, (3, 10, 4, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(110, 140, (3, 10, 4), generator=gen, dtype=torch.uint8)
    want = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    got = mxfp4.dequantize(blocks, scales, torch.float32)
    assert got.shape == (3, 128, 10) and torch.equal(got, want)
    w = torch.randn(2, 64, 6, generator=gen)
    again = mxfp4.dequantize(*mxfp4.quantize(w), torch.float32)
    assert torch.equal(mxfp4.dequantize(*mxfp4.quantize(again), torch.float32), again)  # representable: kept
    assert ((again - w).abs() <= w.abs().amax() / 4).all()  # and near: within half the largest step


def test_an_mxfp4_gpt_oss_checkpoint_imports_dequantized(family, tmp_path):
    """gpt-oss as released: expert weights as MXFP4 blocks and scales. Imported, the model equals
    transformers' on the dequantized weights."""
    name, hf, hf_dir, _ = family
    if name != "gpt_oss":
        pytest.skip("MXFP4 is gpt-oss's format")
    tensors = load_file(hf_dir / "model.safetensors")
    for key in [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        blocks, scales = mxfp4.quantize(tensors.pop(key))
        tensors[key + "_blocks"], tensors[key + "_scales"] = blocks, scales
    d = tmp_path / "mxfp4"
    d.mkdir()
    save_file(tensors, d / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["router", "lm_head"]}
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer.json").write_text(tokenizers.ByteTokenizer().to_hf_json())
    from_hf(d, tmp_path / "ours", **QUIET)
    ours = load_model(tmp_path / "ours").eval()
    with torch.no_grad():
        for key in [k for k in tensors if k.endswith("_blocks")]:
            w = mxfp4.dequantize(tensors[key], tensors[key.replace("_blocks", "_scales")], torch.float32)
            hf.get_parameter(key.removesuffix("_blocks")).copy_(w)
        x = torch.randint(0, V, (1, 3 * SLIDING))
        torch.testing.assert_close(ours(x).logits, hf(x).logits, rtol=1e-5, atol=1e-4)
    config["quantization_config"] = {"quant_method": "gptq"}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="quant_method 'gptq'"):
        from_hf(d, tmp_path / "other", **QUIET)


# ------------------------------------------------------------------------ everything Mixtral runs


def test_each_family_runs_where_a_converted_mixtral_does(family, tmp_path, capsys):
    """The Triton expert backend (the interpreter here) equals PyTorch's; an int8 copy (dense layers
    too: the attention biases stay) serves through the engine as generate runs it; generate with a
    draft model of the same tokenizer, and serve-bench, run from the CLI."""
    from moe.__main__ import main
    from moe.training.checkpoint import quantize_checkpoint

    name, _, _, ours_dir = family
    x = torch.randint(0, V, (1, 2 * SLIDING), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast = load_model(ours_dir, expert_backend="triton").eval()(x).logits
        torch.testing.assert_close(fast, load_model(ours_dir, expert_backend="torch").eval()(x).logits)
    step, _ = quantize_checkpoint(
        ours_dir, tmp_path / "int8", "int8", dense=not load_model(ours_dir).cfg.tie_embeddings
    )
    quantized = load_model(step).eval()
    req = Request([9, 8, 7, 6, 5], 2 * SLIDING, {"greedy": True})
    (res,) = Engine(quantized, n_pages=20, page_size=4).run([req])
    assert res.tokens == generate(quantized, req.prompt, req.max_new_tokens, greedy=True), name
    argv = ["generate", "--checkpoint", str(ours_dir), "--prompt", "ab", "--max-new-tokens", "6", "--greedy"]
    assert main(argv + ["--draft-checkpoint", str(ours_dir), "--draft-tokens", "3"]) == 0
    assert "= 1.000" in capsys.readouterr().err  # the draft is the model itself: greedy accepts all
    bench = ["serve-bench", "--checkpoint", str(ours_dir), "--requests", "2", "--prompt-len", "8"]
    assert main(bench + ["--max-new-tokens", "4", "--rate", "100"]) == 0


def test_the_profiler_reads_a_converted_gpt_oss(family, tmp_path):
    import bench.profile_model

    name, _, _, ours_dir = family
    if name != "gpt_oss":
        pytest.skip("one family is enough for the profiler: it builds the checkpoint's layers")
    args = ["--checkpoint", str(ours_dir), "--mode", "decode", "--batches", "1", "--reps", "1"]
    report = bench.profile_model.main(args + ["--profile-steps", "1", "--context", "16", "--out", str(tmp_path)])
    assert report["meta"]["shard"]["d_model"] == 32 and report["meta"]["shard"]["experts"] == 8


def test_a_converted_gpt_oss_serves_over_http_and_drafts_with_a_smaller_one(family, tmp_path):
    """The OpenAI server on the converted model answers as generate does; a 1-layer gpt-oss of the
    same tokenizer, converted too, drafts for it in the engine without changing a greedy token."""
    import openai
    from conftest import NAME, start_server, stop

    name, _, _, ours_dir = family
    if name != "gpt_oss":
        pytest.skip("the server and the draft take any family alike: gpt-oss, the one with every feature")
    model = load_model(ours_dir).eval()
    prompt = [72, 101, 108, 108, 111]  # "Hello" in bytes
    want = generate(model, prompt, 12, greedy=True)
    proc, url = start_server(ours_dir)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        got = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
        step = sorted(ours_dir.glob("step-*"))[-1]
        assert got.choices[0].text == tokenizers.load(step).decode(want)
    finally:
        assert stop(proc) == 0
    config_cls, model_cls, fields = FAMILIES[name]
    small = getattr(transformers, model_cls)(
        getattr(transformers, config_cls)(**{**COMMON, "num_hidden_layers": 1}, **fields)
    )
    small.save_pretrained(tmp_path / "small")
    (tmp_path / "small" / "tokenizer.json").write_text(tokenizers.ByteTokenizer().to_hf_json())
    from_hf(tmp_path / "small", tmp_path / "draft", **QUIET)
    draft = load_model(tmp_path / "draft").eval()
    req = Request(prompt, 20, {"greedy": True})
    (res,) = Engine(model, n_pages=40, page_size=4, draft=draft, draft_tokens=3).run([req])
    assert res.tokens == generate(model, prompt, 20, greedy=True)
