"""Rendered text and image files (moe/vision/render.py, images.py, captions.py) and the reading metric
(moe/vision/transcribe.py): determinism, sizes, refusals, and CER against known edit distances."""

import numpy as np
import pytest
import torch
from PIL import Image

from moe.__main__ import main
from moe.config import load_config
from moe.vision.captions import CaptionDataset, collate
from moe.vision.images import load_image
from moe.vision.render import corpus_lines, render_line
from moe.vision.transcribe import cer, levenshtein

V = load_config("tiny-vision").vision


def test_the_renderer_is_deterministic_and_its_augmentation_varies():
    line = "To be, or not to be: that is"
    a, b = render_line(line, seed=7), render_line(line, seed=7)
    assert a.shape == (V.image_height, V.image_width) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_line(line, seed=8))
    clean = render_line(line)
    assert set(np.unique(clean)) == {0, 255}  # no seed: black on white, nothing else
    ink_columns = np.flatnonzero((clean < 128).any(axis=0))
    assert ink_columns.min() >= 4 and ink_columns.max() < 4 + 6 * len(line)  # 6 pixels a character, from x = 4


def test_the_renderer_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="printable ASCII"):
        render_line("caf\u00e9 au lait, s'il vous plait")
    with pytest.raises(ValueError, match="40 characters need 246 x 14 pixels; the image is 208 x 16"):
        render_line("x" * 40)


def test_corpus_lines_are_16_to_32_characters_cut_at_spaces():
    text = (
        "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings\n"
        "short\n\n   Enter   HAMLET,  reading  a   book \n"
    )
    pieces = corpus_lines(text)
    assert all(16 <= len(p) <= 32 for p in pieces), pieces
    words = " ".join(text.split()).split(" ")
    joined = " ".join(pieces).split(" ")
    assert joined[: len(joined) - 5] == words[: len(joined) - 5]  # the words in order, none cut
    assert "Enter HAMLET, reading a book" in pieces  # runs of spaces collapsed; "short" dropped
    assert "short" not in " ".join(pieces).split(" ")


def test_examples_read_image_then_transcription_then_the_next_line():
    data = CaptionDataset.bundled(V)
    g = torch.Generator().manual_seed(0)
    (x, images), y = data.batch("val", 4, 80, g)
    assert x.shape == y.shape == (4, 80) and images.shape == (4, 1, V.image_height, V.image_width)
    assert (x[:, 0] == V.image_token).all()
    for b in range(4):
        text = bytes(t for t in y[b].tolist() if t != -100).decode()
        line, following, rest = text.split("\n")
        lines = data.val_lines
        assert rest == "" and any(
            lines[i] == line and lines[(i + 1) % len(lines)] == following for i in range(len(lines))
        )
    (xs, _), ys = collate([([0, 65, 66], torch.ones(1, 16, 8))], 5)
    assert xs.tolist() == [[0, 65, 66, 32, 32]] and ys.tolist() == [[65, 66, -100, -100, -100]]


def test_image_files_are_sized_converted_or_refused(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        load_image(not_image, V)
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "absent.png", V)
    tall = tmp_path / "tall.png"  # 32 high, 100 wide, RGB: resized to 16 x 50, converted, padded to 52
    Image.new("RGB", (100, 32), (255, 0, 0)).save(tall)
    t = load_image(tall, V)
    assert t.shape == (1, 16, 52) and 0 <= t.min() and t.max() <= 1
    assert torch.allclose(t[:, :, 50:], torch.ones(1, 16, 2))  # the padding is white
    wide = tmp_path / "wide.png"
    Image.new("L", (400, 16), 255).save(wide)
    with pytest.raises(ValueError, match="400 pixels wide at height 16, wider than vision.image_width \\(208\\)"):
        load_image(wide, V)


def test_edit_distance_and_cer():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0
    assert cer(["kitten", "abc"], ["sitting", "abc"]) == pytest.approx(3 / 10)


def test_render_command_writes_what_the_model_sees(tmp_path):
    out = tmp_path / "sub" / "line.png"
    assert main(["render", "Now is the winter of our", "--out", str(out), "--seed", "3"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), render_line("Now is the winter of our", 3))
    assert main(["render", "short", "--out", str(out), "--config", "tiny"]) == 2  # no [vision] table
