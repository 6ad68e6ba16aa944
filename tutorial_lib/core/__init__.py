"""Layer 1, ``core``: what every experiment stands on. Profiles and devices, the four corpora and
their checks, tokenizers, GPT-2 models and loading a local pretrained one, the seeded training loop,
loss and perplexity, the train-or-load cache and cached results, canaries and their insertion, and
the plotting helpers.

Imports nothing of the package; every other layer may import from it.
"""
