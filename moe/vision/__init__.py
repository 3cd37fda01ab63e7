"""The vision wing: Flamingo's structure around the MoE language model (moe/model/).

    layers           Attention (queries over another sequence, no positions) and MLP
    encoder          ViT: patches (or full-height strips from a conv stem), learned 2-D positions, pre-norm blocks
    resampler        PerceiverResampler: n_latents visual tokens per image, whatever its size
    reading          ReadingWindow: a learned reading-order prior on attention scores (reading text)
    cross_attention  GatedCrossAttention (tanh gates from 0) and Media (which image each token sees)
    model            VisionLanguageModel: the language model `lm` plus the vision path

Its data and measurements: render and images (pixels), captions (stage-2 examples), transcribe
(reading and the character error rate), and task (CaptionTask: what training reads for a vision config).
"""

from moe.vision.cross_attention import GatedCrossAttention, Media
from moe.vision.encoder import ViT
from moe.vision.model import VisionLanguageModel
from moe.vision.resampler import PerceiverResampler

__all__ = ["VisionLanguageModel", "ViT", "PerceiverResampler", "GatedCrossAttention", "Media"]
