"""Feature visualization by optimization (Olah, Mordvintsev & Schubert, "Feature Visualization",
Distill 2017; the Lucid / Lucent recipe), beside the paper's dataset examples.

An image is optimized to excite one unit: a Fourier-space parameterization with 1/f scaling,
decorrelated colour and a sigmoid (:mod:`.param`), random pad/jitter/scale/rotate transforms drawn
per image (:mod:`.transforms`), the model's own normalization, Adam; objective: the unit's channel
mean, or its centre position (``neuron``); ``diverse=K`` adds Lucid's diversity term
(:mod:`.render`). All requested units of a layer are optimized in one batch, and the model only
runs up to the layer (:mod:`.truncated`); results are saved per unit, resumably, with a sanity
ratio against the unit's strongest mined image (:mod:`.store`, :mod:`.sheet`).

Why the top 9 (Zeiler & Fergus's Fig. 2, ``convlens mine``) stay the primary view: people predict
a unit's response better from its natural top images than from synthetic ones (Borowski et al.,
"Exemplary Natural Images Explain CNN Activations Better than State-of-the-Art Feature
Visualization", ICLR 2021: 92% vs 82%), and feature visualizations can be made to show anything
while the unit's behaviour on natural images is unchanged (Geirhos et al., "Don't trust your eyes:
on the (un)reliability of feature visualizations", ICML 2024). So the images here come with the
ratio of their activation to the top-1 natural image's, and go beside the top 9, not instead.
"""
from __future__ import annotations

from convlens.featvis.param import decorrelate_color, fourier_image, to_rgb
from convlens.featvis.render import FeatureVisualization, FeatvisConfig, render, unit_generator
from convlens.featvis.sheet import contact_sheet, write_featvis
from convlens.featvis.store import CACHE_DIR, mined_top1, read_back, render_to_dir, unit_featvis
from convlens.featvis.transforms import TransformSpec, apply_transforms, draw_transforms
from convlens.featvis.truncated import truncated_forward

__all__ = ["CACHE_DIR", "FeatureVisualization", "FeatvisConfig", "TransformSpec", "apply_transforms",
           "contact_sheet", "decorrelate_color", "draw_transforms", "fourier_image", "mined_top1", "read_back",
           "render", "render_to_dir", "to_rgb", "truncated_forward", "unit_featvis", "unit_generator",
           "write_featvis"]
