"""Image requests in the serving engine (moe/serving/engine.py) and in `generate`, its reference: the
engine's greedy output for image requests in mixed batches equals each request alone, a
full forward equals the cached decode, and bad image requests fail alone. float64, as tests/serving/test_engine.py."""

import random

import pytest
import torch
from conftest import READING, SMALL_VISION, shrunk

from moe.model import MoETransformer
from moe.serving import Engine, Request, RequestError
from moe.serving.generate import generate
from moe.vision import VisionLanguageModel

VISION = {**SMALL_VISION, "query_offsets": 16}


def vision_model(path=None, **overrides):
    model = VisionLanguageModel(shrunk("tiny-vision", vision={**VISION, **(path or {})}, **overrides)).double().eval()
    with torch.no_grad():  # open the gates, so the images matter
        for block in model.xattn:
            block.attn_gate.fill_(1.0)
            block.mlp_gate.fill_(0.5)
    return model


def image_requests(n, seed):
    """Text-only requests and requests with one or two images (placeholders anywhere in the prompt)."""
    rng = random.Random(seed)
    reqs = []
    for i in range(n):
        prompt = [rng.randrange(1, 256) for _ in range(rng.randint(1, 10))]
        n_images = i % 3
        for _ in range(n_images):
            prompt.insert(rng.randrange(len(prompt) + 1), 0)
        images = [torch.rand(1, 8, 4 * rng.randint(2, 8), dtype=torch.float64) for _ in range(n_images)]
        reqs.append(Request(prompt, rng.randint(1, 10), sampling={"greedy": True}, seed=i, images=images))
    return reqs


def alone(model, req):
    return generate(model, req.prompt, req.max_new_tokens, greedy=True, images=req.images)


both_paths = pytest.mark.parametrize("path", [{}, READING], ids=["flamingo", "reading"])


@both_paths
def test_generate_through_the_cache_equals_greedy_full_forwards(path):
    model = vision_model(path)
    for req in image_requests(6, seed=1):
        tokens = list(req.prompt)
        from moe.vision.images import batch_images

        images = batch_images(req.images) if req.images else None
        for _ in range(req.max_new_tokens):  # the slow way: a whole forward per token
            tokens.append(int(model(torch.tensor([tokens]), images=images).logits[0, -1].argmax()))
        assert alone(model, req) == tokens[len(req.prompt) :]


@both_paths
def test_engine_serves_image_and_text_requests_in_shared_batches_exactly(path):
    model = vision_model(path)
    reqs = image_requests(9, seed=2)
    engine = Engine(model, n_pages=24, page_size=4, max_batch=5)
    results = engine.run(reqs)
    for req, res in zip(reqs, results):
        assert res.tokens == alone(model, req)
    assert max(s.batch_size for s in engine.steps) > 2
    assert len(engine.free_pages) == engine.n_pages  # the visual K/V's pages came back too


@both_paths
def test_images_change_the_output_and_a_text_draft_still_speculates(path):
    model = vision_model(path)
    reqs = image_requests(6, seed=3)
    swapped = [
        Request(r.prompt, r.max_new_tokens, r.sampling, seed=r.seed, images=[1 - im for im in r.images]) for r in reqs
    ]
    plain = Engine(model, n_pages=40, page_size=4).run(reqs)
    assert any(a.tokens != b.tokens for a, b in zip(plain, Engine(model, n_pages=40, page_size=4).run(swapped)))
    draft = MoETransformer(shrunk("tiny", n_layers=1)).double().eval()
    speculative = Engine(model, n_pages=40, page_size=4, draft=draft, draft_tokens=3).run(reqs)
    assert [r.tokens for r in speculative] == [r.tokens for r in plain]
    assert sum(r.draft_proposed for r in speculative) > 0


def test_bad_image_requests_fail_alone():
    model = vision_model()
    engine = Engine(model, n_pages=30, page_size=4)
    good = Request([0, 5, 6], 4, {"greedy": True}, images=[torch.rand(1, 8, 16, dtype=torch.float64)])
    bad = {
        "holds 1 image placeholder.*but 0 image": Request([0, 5], 3),
        "holds 0 image placeholder.*but 1 image": Request([5], 3, images=[torch.rand(1, 8, 16)]),
        "image 0 is 3 x 8 x 16": Request([0], 3, images=[torch.rand(3, 8, 16)]),
        "image 0 is 1 x 8 x 40": Request([0], 3, images=[torch.rand(1, 8, 40)]),
        "expected a float tensor": Request([0], 3, images=["line.png"]),
        "inf or NaN": Request([0], 3, images=[torch.full((1, 8, 16), float("nan"))]),
    }
    results = engine.run([good, *bad.values(), good])
    for (pattern, req), res in zip(bad.items(), results[1:-1]):
        assert isinstance(res, RequestError)
        assert pytest.raises(RequestError, engine.submit, req).match(pattern)
    assert results[0].tokens == results[-1].tokens == alone(model, good)
    text_engine = Engine(MoETransformer(shrunk("tiny")).eval(), n_pages=8, page_size=4)
    with pytest.raises(RequestError, match="reads no images"):
        text_engine.submit(Request([1, 2], 2, images=[torch.rand(1, 8, 16)]))


def test_compiled_engine_serves_images_as_eager():
    """Engine(compile=True) with a vision model (the reading path, windows and all): greedy tokens equal
    the eager engine's for a text request and requests with one and two images in shared batches, every
    step through compiled graphs (a frame past torch._dynamo's recompile limit would fall back to eager
    and fail here instead). Unlike a text model, new image counts and widths can still add graphs: the
    shapes of the visual tokens get specialised. One language layer: tracing time grows with depth."""
    from torch._dynamo.utils import counters

    model = vision_model(READING, n_layers=1)
    reqs = image_requests(3, seed=4)
    eager = Engine(model, n_pages=40, page_size=4, max_batch=4)
    compiled = Engine(model, n_pages=40, page_size=4, max_batch=4, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        assert [r.tokens for r in compiled.run(reqs)] == [r.tokens for r in eager.run(reqs)]
    assert counters["stats"]["unique_graphs"] > graphs and compiled.compile_s > 0
    assert sorted(len(r.images) for r in reqs) == [0, 1, 2]
    assert {s.batch_size for s in compiled.steps} >= {1, 3}
