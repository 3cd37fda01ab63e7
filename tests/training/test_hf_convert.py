"""Hugging Face Mixtral checkpoints to and from ours, proven on transformers itself: a random
MixtralForCausalLM built and saved by transformers converts to a model with the same logits,
greedy tokens and expert choices; ours -> HF -> ours is bit for bit; what does not map is refused."""

import json
import pathlib

import pytest
import torch
from conftest import shrunk
from safetensors.torch import load_file, save_file

from moe.__main__ import main
from moe.data import tokenizer as tokenizers
from moe.model import MoETransformer
from moe.serving import generate
from moe.training import checkpoint, load_model
from moe.training.hf_convert import ConversionError, from_hf, to_hf

transformers = pytest.importorskip("transformers")
QUIET = dict(log=lambda *_: None)
HF_SHAPE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_local_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=128,
    rope_theta=10000.0,
)


CHAT_TEMPLATE = (  # Mixtral's, in short
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('only user and assistant roles') }}{% endif %}{% endfor %}"
)


def _hf_model(**overrides):
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(**{**HF_SHAPE, **overrides})
    return transformers.MixtralForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random Mixtral saved by transformers in shards, with a byte-level BPE tokenizer.json."""
    d = tmp_path_factory.mktemp("hf")
    _hf_model().save_pretrained(d, max_shard_size="100KB")
    assert (d / "model.safetensors.index.json").exists()  # sharded
    tok = tokenizers.train_bpe(iter(["the quick brown fox jumps over the lazy dog. " * 40]), 300)
    (d / "tokenizer.json").write_text(tok.to_hf_json())
    return d


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ours")
    from_hf(hf_dir, out, **QUIET)
    return out


def test_logits_and_expert_choices_match_transformers(hf_dir, converted):
    hf = transformers.MixtralForCausalLM.from_pretrained(hf_dir).eval()
    ours = load_model(converted).eval()
    x = torch.randint(0, 300, (3, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = hf(x, output_router_logits=True), ours(x)
    rel = ((theirs.logits - mine.logits).abs().max() / theirs.logits.abs().max()).item()
    assert rel < 1e-5, rel
    for layer, (logits, routing) in enumerate(zip(theirs.router_logits, mine.routing)):
        chosen = logits.topk(2, dim=-1).indices.sort(dim=-1).values
        assert torch.equal(chosen, routing.experts.sort(dim=-1).values), f"layer {layer}"


def test_the_chat_template_travels_and_renders_as_transformers_does(hf_dir, tmp_path):
    """A tokenizer_config.json's chat_template survives conversion, and the server's chat prompt
    (moe/serving/openai_api.py through moe/data/chat.py) is the token ids transformers'
    apply_chat_template gives; a template's raise_exception is a 400 naming messages."""
    import shutil

    from moe.serving.openai_api import APIError, Protocol

    template = CHAT_TEMPLATE
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    special = {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": True}}
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, **special}))
    step = from_hf(src, tmp_path / "ours", **QUIET)
    tok = tokenizers.load(step)
    assert tok.chat_template["template"] == template
    messages = [
        {"role": "user", "content": "the quick fox"},
        {"role": "assistant", "content": "jumps"},
        {"role": "user", "content": "over the dog?"},
    ]
    theirs = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(src / "tokenizer.json"),
        chat_template=template,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    want = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    protocol = Protocol(["m"], tok, load_model(step).cfg)
    assert protocol.chat_prompt(messages) == theirs(want, add_special_tokens=False)["input_ids"]
    assert protocol.chat_prompt(messages)[0] == tok.eot  # the template's bos_token, as one special id
    with pytest.raises(APIError, match="only user and assistant roles") as e:
        protocol.chat_prompt([{"role": "system", "content": "x"}])
    assert e.value.status == 400 and e.value.param == "messages"


def test_instruction_data_is_what_the_chat_template_writes(hf_dir, tmp_path):
    """prepare --format chat with a converted checkpoint's tokenizer: each conversation is the text
    transformers' apply_chat_template writes for it, as the ids its tokenizer gives that text, and
    the loss mask counts exactly what the assistant wrote (its content and the template's end of turn)."""
    import shutil

    from moe.data.instruct import InstructDataset
    from moe.data.prepare import prepare

    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE, **special}))
    step = from_hf(src, tmp_path / "ours", **QUIET)
    rows = [
        [{"role": "user", "content": "the quick fox"}, {"role": "assistant", "content": "jumps over"}],
        [
            {"role": "user", "content": "the lazy dog?"},
            {"role": "assistant", "content": "the dog"},
            {"role": "user", "content": "and the fox"},
            {"role": "assistant", "content": "quick brown fox"},
        ],
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    prepare([str(jsonl)], str(step), tmp_path / "data", format="chat", val_data=[str(jsonl)], **QUIET)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), **special)
    split = InstructDataset.open(tmp_path / "data").splits["train"]
    for messages, start, n in zip(rows, split.starts, split.lengths):
        ids, mask = split.tokens.window(int(start), int(n)).tolist(), split.mask.window(int(start), int(n)).tolist()
        text = theirs.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=False)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        written = "".join(m["content"] + "<|endoftext|>" for m in messages if m["role"] == "assistant")
        assert theirs.decode([t for t, m in zip(ids, mask) if m]) == written


def test_a_bf16_checkpoint_stays_bf16(tmp_path):
    """A bf16 Mixtral converts to bf16 tensors on disk (no doubling), which load into float32 parameters
    with the values unchanged: the same logits as transformers' model loaded in float32."""
    d = tmp_path / "hf"
    _hf_model().to(torch.bfloat16).save_pretrained(d)
    (d / "tokenizer.json").write_text(tokenizers.ByteTokenizer().to_hf_json())  # 256 tokens <= vocab 300
    from_hf(d, tmp_path / "ours", **QUIET)
    saved = load_file(tmp_path / "ours" / "step-0000000" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    hf = transformers.MixtralForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ours = load_model(tmp_path / "ours").eval()
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, rtol=1e-5, atol=1e-5)


def test_greedy_generation_matches_transformers(hf_dir, converted):
    hf = transformers.MixtralForCausalLM.from_pretrained(hf_dir).eval()
    ours = load_model(converted).eval()
    prompt = [5, 17, 42, 99, 7]
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, min_new_tokens=24, pad_token_id=0
        )[0, len(prompt) :].tolist()
    assert generate(ours, prompt, 24, greedy=True) == theirs


def test_ours_to_hf_and_back_is_bit_for_bit(tmp_path):
    cfg = shrunk(
        "tiny",
        activation="swiglu",
        n_kv_heads=2,
        vocab_size=256,
        max_seq_len=128,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64},
    )
    model = MoETransformer(cfg).eval()
    checkpoint.save_checkpoint(
        tmp_path / "ours", model, cfg, files={tokenizers.FILE: tokenizers.ByteTokenizer().to_bytes()}
    )
    to_hf(tmp_path / "ours", tmp_path / "hf", **QUIET)
    hf, info = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    x = torch.randint(0, 256, (2, 100))
    with torch.no_grad():  # YaRN scaling included: the same function in transformers
        torch.testing.assert_close(hf.eval()(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    assert hf_tok.encode("héllo ✓", add_special_tokens=False) == list("héllo ✓".encode())  # byte ids kept
    from_hf(tmp_path / "hf", tmp_path / "back", **QUIET)
    before = load_file(tmp_path / "ours" / "step-0000000" / "model.safetensors")
    after = load_file(tmp_path / "back" / "step-0000000" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    back_cfg, _ = checkpoint.read_config(tmp_path / "back")
    assert back_cfg.rope_scaling == cfg.rope_scaling and back_cfg.n_kv_heads == 2


def test_converted_model_runs_everywhere(converted, tmp_path, capsys):
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(converted),
                "--prompt",
                "the quick",
                "--max-new-tokens",
                "6",
                "--greedy",
                "--draft-checkpoint",
                str(converted),
                "--draft-tokens",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert out.out.startswith("the quick")
    assert "= 1.000" in out.err, out.err  # the draft is the model itself: greedy accepts every proposal
    assert (
        main(
            [
                "serve-bench",
                "--checkpoint",
                str(converted),
                "--requests",
                "2",
                "--prompt-len",
                "8",
                "--max-new-tokens",
                "4",
                "--rate",
                "100",
            ]
        )
        == 0
    )
    ours = load_model(converted, expert_backend="triton").eval()  # the Triton kernels (interpreter on a CPU)
    ref = load_model(converted, expert_backend="torch").eval()
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x).logits, rtol=1e-4, atol=1e-4)
    import bench.profile_model

    report = bench.profile_model.main(
        [
            "--checkpoint",
            str(converted),
            "--mode",
            "decode",
            "--batches",
            "1",
            "--reps",
            "1",
            "--profile-steps",
            "1",
            "--context",
            "16",
            "--out",
            str(tmp_path / "prof"),
        ]
    )
    assert report["meta"]["shard"]["d_model"] == 64 and report["meta"]["shard"]["experts"] == 4  # its real shape


# ------------------------------------------------------------------------------------- bad input


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            dict(model_type="llama", architectures=["LlamaForCausalLM"]),
            r"\['LlamaForCausalLM'\] \(model_type 'llama'\) is not one we convert",
        ),
        (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
        (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}), "rope_type 'llama3'"),
        (dict(vision_config={"hidden_size": 8}), "multimodal towers"),
        (dict(quantization_config={"quant_method": "awq"}), "quant_method 'awq'"),
        (
            dict(intermediate_size=80),
            r"experts\.\*\.w1\.weight \(stacked\): shape \(4, 64, 96\), the config implies \(4, 64, 80\)",
        ),
        (dict(vocab_size=200), r"holds \d+ tokens, more than the config's vocab_size 200"),
    ],
)
def test_from_hf_refuses_what_does_not_map(hf_dir, tmp_path, changes, message):
    d = _copy(hf_dir, tmp_path / "hf")
    _edit_config(d, **changes)
    with pytest.raises(ConversionError, match=message):
        from_hf(d, tmp_path / "out", **QUIET)
    assert not (tmp_path / "out" / "latest").exists()


def test_from_hf_names_missing_pieces(hf_dir, tmp_path, capsys):
    assert main(["convert", "--from-hf", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    d = _copy(hf_dir, tmp_path / "hf")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="no tokenizer.json"):
        from_hf(d, tmp_path / "out", **QUIET)
    d = _copy(hf_dir, tmp_path / "hf2")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = d / sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][:-1]
    save_file(tensors, shard)
    with pytest.raises(ConversionError, match=f"{name}: shape"):
        from_hf(d, tmp_path / "out2", **QUIET)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(activation="gelu"), "activation 'gelu'"),
        (dict(activation="swiglu", capacity_factor=1.25), "capacity_factor 1.25"),
        (dict(activation="swiglu", router_rule="sigmoid_topk"), "router_rule 'sigmoid_topk'"),
        (dict(activation="swiglu", router_bias=True), "router_bias"),
        (dict(activation="swiglu", shared_d_ff=64), r"shared_gate False \(Qwen2MoeForCausalLM holds True\)"),
        (dict(activation="swiglu", router_renormalize=False), "router_renormalize False"),
    ],
)
def test_to_hf_refuses_what_does_not_map(tmp_path, overrides, message):
    cfg = shrunk("tiny", **overrides)
    checkpoint.save_checkpoint(tmp_path / "ours", MoETransformer(cfg), cfg)
    with pytest.raises(ConversionError, match=message):
        to_hf(tmp_path / "ours", tmp_path / "hf", **QUIET)
    assert not (tmp_path / "hf").exists()
