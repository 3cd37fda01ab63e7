"""The vision path (moe/vision/): gates at zero leave the language model exact, media masking against a
float64 per-token loop, the resampler's fixed output, and refusals of mismatched images."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import shrunk
from moe.vision import GatedCrossAttention, Media, VisionLanguageModel

SMALL_VISION = dict(channels=1, image_height=8, image_width=32, patch_size=4, d_model=16, n_layers=1, n_heads=2,
                    d_ff=32, n_latents=6, resampler_layers=1, cross_attn_every=1, image_token=0, query_offsets=8)


def vision_cfg(**vision):
    return shrunk("tiny-vision", vision={**SMALL_VISION, **vision})


def text_with_images(B=3, T=24, where=((0, 0), (1, 3), (1, 11), (1, 17))):
    """Random text (no placeholder) with placeholders at (row, position); row 2 has no image."""
    idx = torch.randint(1, 256, (B, T))
    for b, t in where:
        idx[b, t] = 0
    return idx


def test_gates_at_zero_give_the_text_models_logits_exactly():
    model = VisionLanguageModel(vision_cfg(cross_attn_every=1)).double()
    idx = text_with_images()
    images = torch.rand(4, 1, 8, 32, dtype=torch.float64)
    out = model(idx, images=images)
    assert torch.equal(out.logits, model.lm(idx).logits)  # bit for bit, float64
    with torch.no_grad():  # the test can fail: open one gate and the logits move
        model.xattn[0].attn_gate.fill_(0.5)
    assert not torch.equal(model(idx, images=images).logits, model.lm(idx).logits)


def reference_gated_block(block: GatedCrossAttention, x_BTD, media: Media):
    """Flamingo's gated block, token by token in float64: attend over the visual tokens of the latest
    image at or before the token (nothing before the first), then the gated MLP."""
    attn = block.attn
    H, G, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    out = torch.zeros_like(x_BTD)
    for b in range(x_BTD.shape[0]):
        for t in range(x_BTD.shape[1]):
            x = x_BTD[b, t]
            h = x / torch.sqrt((x * x).mean() + block.attn_norm.eps) * block.attn_norm.weight
            y = torch.zeros_like(x)
            m = int(media.media_BT[b, t])
            if m >= 0:
                h = h + block.offset_emb.weight[min(int(media.offset_BT[b, t]), block.offset_emb.num_embeddings - 1)]
                kv = media.visual_BMLD[b, m]  # [L, Dv]
                q = (attn.wq.weight @ h).view(H, d)
                k = (kv @ attn.wk.weight.T).view(-1, G, d)
                v = (kv @ attn.wv.weight.T).view(-1, G, d)
                heads = []
                for i in range(H):
                    g = i // (H // G)
                    p = torch.softmax(k[:, g] @ q[i] / math.sqrt(d), dim=0)
                    heads.append(p @ v[:, g])
                y = attn.wo.weight @ torch.cat(heads)
            x = x + torch.tanh(block.attn_gate.detach()) * y
            h = x / torch.sqrt((x * x).mean() + block.mlp_norm.eps) * block.mlp_norm.weight
            out[b, t] = x + torch.tanh(block.mlp_gate.detach()) * (block.mlp.down.weight @ F.gelu(block.mlp.up.weight @ h))
    return out


def test_media_masking_against_a_per_token_loop():
    cfg = vision_cfg()
    model = VisionLanguageModel(cfg).double()
    block = model.xattn[0]
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.mlp_gate.fill_(-0.3)
    idx = text_with_images()
    images = torch.rand(4, 1, 8, 32, dtype=torch.float64)
    media = model.media(idx, images)
    # row 0: image 0 from t=0; row 1: images 0, 1, 2 from t = 3, 11, 17 (-1 before 3); row 2: none
    expect = torch.full((3, 24), -1)
    expect[0, :] = 0
    expect[1, 3:11], expect[1, 11:17], expect[1, 17:] = 0, 1, 2
    assert torch.equal(media.media_BT, expect)
    offset = torch.full((3, 24), -1)
    offset[0], offset[1, 3:11], offset[1, 11:17], offset[1, 17:] = (torch.arange(24), torch.arange(8),
                                                                     torch.arange(6), torch.arange(7))
    assert torch.equal(media.offset_BT, offset)
    x = torch.randn(3, 24, cfg.d_model, dtype=torch.float64)
    torch.testing.assert_close(block(x, media), reference_gated_block(block, x, media))


def test_a_token_sees_only_its_latest_image():
    model = VisionLanguageModel(vision_cfg()).double()
    block = model.xattn[0]
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
    idx = text_with_images()
    images = torch.rand(4, 1, 8, 32, dtype=torch.float64)
    x = torch.randn(3, 24, model.cfg.d_model, dtype=torch.float64)
    base = block(x, model.media(idx, images))
    changed = images.clone()
    changed[2] = torch.rand(1, 8, 32)  # row 1's second image (placeholder at t = 11)
    moved = (block(x, model.media(idx, changed)) - base).abs().amax(-1) > 0
    expect = torch.zeros(3, 24, dtype=torch.bool)
    expect[1, 11:17] = True  # not before it (a later image), not from t = 17 on (a newer image appeared)
    assert torch.equal(moved, expect)


@pytest.mark.parametrize("size", [(4, 8), (8, 16), (8, 32)])
def test_resampler_output_does_not_depend_on_the_image_size(size):
    cfg = vision_cfg()
    model = VisionLanguageModel(cfg)
    visual = model.encode(torch.rand(2, 1, *size))
    assert visual.shape == (2, cfg.vision.n_latents, cfg.vision.d_model)


def test_images_and_placeholders_must_match():
    model = VisionLanguageModel(vision_cfg())
    idx = text_with_images()  # 4 placeholders
    with pytest.raises(ValueError, match="4 image placeholder.*but 3 image"):
        model(idx, images=torch.rand(3, 1, 8, 32))
    with pytest.raises(ValueError, match="1 image placeholder.*but 0 image"):
        model(text_with_images(where=((0, 2),)))
    with pytest.raises(ValueError, match="at most 8 x 32"):
        model(idx, images=torch.rand(4, 1, 8, 36))
    with pytest.raises(ValueError, match=r"images must be \[N, 1, H, W\]"):
        model(idx, images=torch.rand(4, 3, 8, 32))


def test_a_text_model_config_is_refused_and_bad_vision_tables_are_named():
    with pytest.raises(ValueError, match="no \\[vision\\] table"):
        VisionLanguageModel(shrunk("tiny"))
    with pytest.raises(ValueError, match="unknown VisionConfig field.*'patch'"):
        vision_cfg(patch=3)
    with pytest.raises(ValueError, match="image_width \\(30\\) must be a multiple of vision.patch_size"):
        vision_cfg(image_width=30)
    with pytest.raises(ValueError, match="image_token \\(300\\) must be a token id < vocab_size"):
        vision_cfg(image_token=300)


def test_a_preset_builds_on_its_base():
    from moe.config import load_config, load_train_config

    text, vision = load_config("tiny"), load_config("tiny-vision")
    assert vision.text_only() == dataclasses.replace(text, name="tiny-vision")
    assert load_train_config("tiny-vision").seq_len != load_train_config("tiny").seq_len  # its own [train] wins



def test_cached_decode_with_an_image_equals_the_full_forward():
    """Through the language model's KV cache, the gated blocks read the row's image for every new token."""
    from moe.model import Positions

    model = VisionLanguageModel(vision_cfg(cross_attn_every=2)).double().eval()
    with torch.no_grad():
        for block in model.xattn:
            block.attn_gate.fill_(0.8)
            block.mlp_gate.fill_(0.4)
    idx = torch.randint(1, 256, (2, 12))
    idx[:, 0] = 0
    images = torch.rand(2, 1, 8, 32, dtype=torch.float64)
    full = model(idx, images=images).logits
    visual = model.encode(images)
    model.lm.setup_caches(2, 16)
    steps = []
    for t in range(12):  # each row: its image (index 0), t tokens after it (past query_offsets too)
        at = torch.full((2, 1), t)
        media = Media(visual[:, None], torch.zeros(2, 1, dtype=torch.long), at)
        steps.append(model(idx[:, t:t + 1], positions=Positions.at(torch.tensor([t])), media=media).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-7, rtol=1e-6)  # the router rounds in fp32


@pytest.mark.parametrize("preset", ["tiny-vision", "gpt4-vision"])
def test_vision_parameter_arithmetic_counts_the_built_model(preset):
    from moe.config import load_config
    from moe.estimates.vision import count_vision_params

    cfg = load_config(preset)
    with torch.device("meta"):  # gpt4-vision: 1.8T parameters, shapes only
        model = VisionLanguageModel(cfg)
    counts = count_vision_params(cfg)
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert counts.encoder == numel(model.encoder)
    assert counts.resampler == numel(model.resampler)
    assert counts.gated == numel(model.xattn)


def test_vision_flop_arithmetic_against_torch_flop_counter():
    """FLOPs counted by torch (matmuls and attention) on the real modules, against moe/estimates/vision.py.
    The counter skips element-wise work (norms, GELU, adds), which the arithmetic leaves out too.
    Attention through SDPA's math backend, whose matmuls the counter sees (the fused CPU kernel it skips)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from moe.config import load_config
    from moe.estimates.vision import image_flops, text_token_flops

    cfg = load_config("tiny-vision", vision={**load_config("tiny-vision").vision.__dict__, "query_offsets": 0})
    model = VisionLanguageModel(cfg).eval()
    v = cfg.vision
    images = torch.rand(3, v.channels, v.image_height, v.image_width)
    expect = image_flops(cfg)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        visual = model.encode(images)
    assert counter.get_total_flops() == 3 * (expect["encoder"] + expect["resampler"])
    with FlopCounterMode(display=False) as counter:
        kv = model.visual_kv(visual[:1])
    assert counter.get_total_flops() == expect["visual K/V"]
    T = 5
    x = torch.randn(1, T, cfg.d_model)
    media = Media(visual[:1, None], torch.zeros(1, T, dtype=torch.long), torch.arange(T)[None])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        for block, block_kv in zip(model.xattn, kv):
            block(x, media, block_kv)
    assert counter.get_total_flops() == T * text_token_flops(cfg)
