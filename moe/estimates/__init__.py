"""The torch-free wing: what a config and a layout imply, computed anywhere (no torch imported).

    arithmetic     parameters, FLOPs and K/V-cache bytes of a ModelConfig
    leak           the leaked GPT-4 figures and the `figures` table that holds a config against them
    layout_memory  what one GPU of a parallel Layout holds: weights, optimizer state, activations
    cluster        per-layer roofline and the leaked clusters' decode latency, cost, MFU and days
    units          number formats and text tables
"""
