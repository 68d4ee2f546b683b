"""Conditional generation from score functions: guidance, inpainting, plug-and-play.

Guidance turns a conditional score ``score_fn(x, t, y)`` (or an unconditional score and a
noisy classifier) into a plain ``score_fn(x, t)``, so every sampler, the likelihood and the
benchmarks take it unchanged. Inpainting and plug-and-play condition an unconditional score
on part of ``x`` or on a constraint.
"""
from .inpaint import INPAINT_METHODS, inpaint, repaint_path
from .plug_and_play import plug_and_play, pnp_times
from .posterior import pigdm_score
from .scores import CFG_BATCH_LIMIT, classifier_free_guidance, classifier_guidance

__all__ = ["classifier_free_guidance", "classifier_guidance", "inpaint", "plug_and_play",
           "INPAINT_METHODS", "CFG_BATCH_LIMIT", "repaint_path", "pnp_times", "pigdm_score"]
