"""The vision path (moe/vision/): gates at zero leave the language model exact, media masking against a
float64 per-token loop, the resampler's fixed output, and refusals of mismatched images. Each runs on
Flamingo's plain path (4 x 4 patches, content-only attention) and on the reading path (a strip stem
and reading-order windows, moe/vision/reading.py), whose pieces have float64 loops of their own."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import READING, SMALL_VISION, shrunk

from moe.vision import GatedCrossAttention, Media, VisionLanguageModel


def vision_cfg(**vision):
    return shrunk("tiny-vision", vision={**SMALL_VISION, **vision})


both_paths = pytest.mark.parametrize("path", [{}, READING], ids=["flamingo", "reading"])


def text_with_images(B=3, T=24, where=((0, 0), (1, 3), (1, 11), (1, 17))):
    """Random text (no placeholder) with placeholders at (row, position); row 2 has no image."""
    idx = torch.randint(1, 256, (B, T))
    for b, t in where:
        idx[b, t] = 0
    return idx


@both_paths
def test_gates_at_zero_give_the_text_models_logits_exactly(path):
    model = VisionLanguageModel(vision_cfg(cross_attn_every=1, **path)).double()
    idx = text_with_images()
    images = torch.rand(4, 1, 8, 32, dtype=torch.float64)
    out = model(idx, images=images)
    assert torch.equal(out.logits, model.lm(idx).logits)  # bit for bit, float64
    with torch.no_grad():  # the test can fail: open one gate and the logits move
        model.xattn[0].attn_gate.fill_(0.5)
    assert not torch.equal(model(idx, images=images).logits, model.lm(idx).logits)


def reference_gated_block(block: GatedCrossAttention, x_BTD, media: Media):
    """Flamingo's gated block, token by token in float64: attend over the visual tokens of the latest
    image at or before the token (nothing before the first), then the gated MLP. With a reading window,
    head i's score of visual token l, for a token d after its image, adds -((l - (a_i d + b_i)) / w_i)^2."""
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
                    scores = k[:, g] @ q[i] / math.sqrt(d)
                    if block.window is not None:
                        a, b_, w = (float(x[i].detach()) for x in block.window.line())
                        at = a * int(media.offset_BT[b, t]) + b_
                        scores = scores - torch.tensor(
                            [((l - at) / w) ** 2 for l in range(len(kv))], dtype=scores.dtype
                        )
                    p = torch.softmax(scores, dim=0)
                    heads.append(p @ v[:, g])
                y = attn.wo.weight @ torch.cat(heads)
            x = x + torch.tanh(block.attn_gate.detach()) * y
            h = x / torch.sqrt((x * x).mean() + block.mlp_norm.eps) * block.mlp_norm.weight
            out[b, t] = x + torch.tanh(block.mlp_gate.detach()) * (
                block.mlp.down.weight @ F.gelu(block.mlp.up.weight @ h)
            )
    return out


@both_paths
def test_media_masking_against_a_per_token_loop(path):
    cfg = vision_cfg(**path)
    model = VisionLanguageModel(cfg).double()
    block = model.xattn[0]
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.mlp_gate.fill_(-0.3)
        if block.window is not None:  # a window that has learned something: per head, its own line
            block.window.shift.copy_(torch.randn(block.window.shift.shape, dtype=torch.float64) * 0.3)
    idx = text_with_images()
    images = torch.rand(4, 1, 8, 32, dtype=torch.float64)
    media = model.media(idx, images)
    # row 0: image 0 from t=0; row 1: images 0, 1, 2 from t = 3, 11, 17 (-1 before 3); row 2: none
    expect = torch.full((3, 24), -1)
    expect[0, :] = 0
    expect[1, 3:11], expect[1, 11:17], expect[1, 17:] = 0, 1, 2
    assert torch.equal(media.media_BT, expect)
    offset = torch.full((3, 24), -1)
    offset[0], offset[1, 3:11], offset[1, 11:17], offset[1, 17:] = (
        torch.arange(24),
        torch.arange(8),
        torch.arange(6),
        torch.arange(7),
    )
    assert torch.equal(media.offset_BT, offset)
    x = torch.randn(3, 24, cfg.d_model, dtype=torch.float64)
    torch.testing.assert_close(block(x, media), reference_gated_block(block, x, media))


@both_paths
def test_a_token_sees_only_its_latest_image(path):
    model = VisionLanguageModel(vision_cfg(**path)).double()
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


def layer_norm(x, norm):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, unbiased=False, keepdim=True) + norm.eps
    ) * norm.weight + norm.bias


def test_strip_stem_against_a_float64_loop():
    """A 3 x 3 convolution (zero padding), GELU, then one token per full-height strip of 4 columns."""
    model = VisionLanguageModel(vision_cfg(**READING)).double()
    enc = model.encoder
    images = torch.rand(2, 1, 8, 32, dtype=torch.float64)
    padded = F.pad(images, (1, 1, 1, 1))
    conv = enc.conv.bias[None, :, None, None].expand(2, -1, 8, 32).clone()
    for dy in range(3):
        for dx in range(3):  # each tap: weight [S, C] times the shifted image [N, C, H, W]
            conv = conv + torch.einsum(
                "sc,nchw->nshw", enc.conv.weight[:, :, dy, dx], padded[:, :, dy : dy + 8, dx : dx + 32]
            )
    g = F.gelu(conv)
    strips = (
        torch.stack(
            [torch.einsum("dshx,nshx->nd", enc.strip.weight, g[:, :, :, 4 * c : 4 * c + 4]) for c in range(8)], dim=1
        )
        + enc.strip.bias
    )
    expect = layer_norm(strips + enc.pos_row[0] + enc.pos_col[:8], enc.norm)
    torch.testing.assert_close(enc(images), expect)
    assert torch.equal(enc.columns(8, 32), torch.arange(8.0))


def test_resampler_reading_window_against_a_float64_loop():
    """Latent l attends to the patches only, with -((column - l * columns / L) / 0.5)^2 on its scores."""
    cfg = vision_cfg(**{**READING, "n_latents": 5})  # 5 latents over 8 columns: a = 1.6
    model = VisionLanguageModel(cfg).double()
    res = model.resampler
    layer, attn = res.layers[0], res.layers[0].attn
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    H, d = attn.n_heads, attn.head_dim
    out = torch.zeros(2, 5, 16, dtype=torch.float64)
    for n in range(2):
        media = layer_norm(x[n], layer.media_norm)
        for l in range(5):
            z = res.latents[l]
            q = (attn.wq.weight @ layer_norm(z, layer.latent_norm)).view(H, d)
            k, v = (media @ attn.wk.weight.T).view(8, H, d), (media @ attn.wv.weight.T).view(8, H, d)
            window = torch.tensor([-(((c - 1.6 * l) / 0.5) ** 2) for c in range(8)], dtype=torch.float64)
            heads = [torch.softmax(k[:, i] @ q[i] / math.sqrt(d) + window, 0) @ v[:, i] for i in range(H)]
            z = z + attn.wo.weight @ torch.cat(heads)
            h = layer_norm(z, layer.mlp_norm)
            z = z + layer.mlp.down.weight @ F.gelu(layer.mlp.up.weight @ h)
            out[n, l] = layer_norm(z, res.norm)
    torch.testing.assert_close(res(x, torch.arange(8.0)), out)
    with pytest.raises(ValueError, match="needs each patch's column"):
        res(x)


def test_reading_windows_start_where_stated_and_the_stem_starts_at_he_scale():
    model = VisionLanguageModel(vision_cfg(**READING))
    for block in model.xattn:  # the defaults: a = 1, b = 0, w = 8, nothing about the renderer's pitch
        assert [x.tolist() for x in block.window.line()] == [[1.0, 1.0, 1.0, 1.0], [0.0] * 4, [pytest.approx(8.0)] * 4]
    bank = VisionLanguageModel(
        vision_cfg(**READING, reading_slope=[0.8, 1.1, 1.4, 1.7], reading_start=0.5, reading_width=2.0)
    )
    a, b, w = bank.xattn[1].window.line()  # one slope per head, the same start and width
    assert a.tolist() == pytest.approx([0.8, 1.1, 1.4, 1.7]) and b.tolist() == [0.5] * 4
    assert w.tolist() == pytest.approx([2.0] * 4)
    assert model.resampler.layers[0].window.shift is None  # fixed, no parameter
    w = model.encoder.strip.weight  # [16, 4, 8, 4]: 2,048 draws
    assert abs(w.std().item() / math.sqrt(2 / (4 * 8 * 4)) - 1) < 0.1
    assert abs(model.xattn[0].attn.wq.weight.std().item() / model.cfg.init_std - 1) < 0.1


@pytest.mark.parametrize(
    "path,size", [({}, (4, 8)), ({}, (8, 16)), ({}, (8, 32)), (READING, (8, 8)), (READING, (8, 20))]
)
def test_resampler_output_does_not_depend_on_the_image_size(path, size):
    cfg = vision_cfg(**path)
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
    with pytest.raises(ValueError, match="vision.stem must be 'patches' or 'strips', got 'conv'"):
        vision_cfg(stem="conv")
    with pytest.raises(ValueError, match="vision.reading_window must be true or false"):
        vision_cfg(reading_window=1)
    with pytest.raises(ValueError, match="vision.reading_slope lists 3 slopes: give one per head \\(n_heads = 4\\)"):
        vision_cfg(reading_slope=[1.0, 1.2, 1.4])
    with pytest.raises(ValueError, match="vision.reading_slope must be a number or a list of numbers"):
        vision_cfg(reading_slope="fast")
    with pytest.raises(ValueError, match="vision.reading_width must be > 0"):
        vision_cfg(reading_width=0.0)
    with pytest.raises(ValueError, match="n_layers must be a finite number >= 0, got -1"):
        vision_cfg(n_layers=-1)
    with pytest.raises(
        ValueError, match="a strip stem reads images exactly vision.image_height = 8 pixels high, got 4"
    ):
        VisionLanguageModel(vision_cfg(**READING)).encode(torch.rand(1, 1, 4, 32))


def test_a_preset_builds_on_its_base():
    from moe.config import load_config, load_train_config

    text, vision = load_config("tiny"), load_config("tiny-vision")
    assert vision.text_only() == dataclasses.replace(text, name="tiny-vision")
    assert load_train_config("tiny-vision").seq_len != load_train_config("tiny").seq_len  # its own [train] wins


@both_paths
def test_cached_decode_with_an_image_equals_the_full_forward(path):
    """Through the language model's KV cache, the gated blocks read the row's image for every new token."""
    from moe.model import Positions

    model = VisionLanguageModel(vision_cfg(cross_attn_every=2, **path)).double().eval()
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
        steps.append(model(idx[:, t : t + 1], positions=Positions.at(torch.tensor([t])), media=media).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-7, rtol=1e-6)  # the router rounds in fp32


FLAMINGO_TINY = dict(stem="patches", n_layers=2, n_latents=48, resampler_layers=2, reading_window=False)


def preset_cfg(preset: str, **vision):
    from moe.config import load_config

    return load_config(preset, vision={**load_config(preset).vision.__dict__, **vision})


@pytest.mark.parametrize("preset,path", [("tiny-vision", {}), ("tiny-vision", FLAMINGO_TINY), ("gpt4-vision", {})])
def test_vision_parameter_arithmetic_counts_the_built_model(preset, path):
    from moe.estimates.vision import count_vision_params

    cfg = preset_cfg(preset, **path)
    with torch.device("meta"):  # gpt4-vision: 1.8T parameters, shapes only
        model = VisionLanguageModel(cfg)
    counts = count_vision_params(cfg)
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert counts.encoder == numel(model.encoder)
    assert counts.resampler == numel(model.resampler)
    assert counts.gated == numel(model.xattn)


@pytest.mark.parametrize("path", [{}, FLAMINGO_TINY], ids=["reading", "flamingo"])
def test_vision_flop_arithmetic_against_torch_flop_counter(path):
    """FLOPs counted by torch (matmuls and attention) on the real modules, against moe/estimates/vision.py.
    The counter skips element-wise work (norms, GELU, adds), which the arithmetic leaves out too.
    Attention through SDPA's math backend, whose matmuls the counter sees (the fused CPU kernel it skips)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from moe.estimates.vision import image_flops, text_token_flops

    cfg = preset_cfg("tiny-vision", query_offsets=0, **path)
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
