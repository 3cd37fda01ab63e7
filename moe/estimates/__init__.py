"""The torch-free wing: what a config and a layout imply, computed anywhere (no torch imported).

arithmetic     parameters, FLOPs and K/V-cache bytes of a ModelConfig
leak           the leaked GPT-4 figures and the rows that hold a config against them
report         `python -m moe figures`: the leak table, a layout per GPU, 32k against 8k
layout_memory  what one GPU of a parallel Layout holds: weights, optimizer state, activations
cluster        per-layer roofline and the leaked clusters' decode latency, cost, MFU and days
units          number formats and text tables
"""
