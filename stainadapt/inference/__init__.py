"""Sliding-window prediction: images of any size, folders, and slides larger than memory.

* :mod:`.windows`: where the windows go, their Gaussian weight, the glass test;
* :mod:`.predictor`: :class:`SlidingWindowPredictor`, band by band;
* :mod:`.streaming`: large images read band by band, masks written as pyramidal TIFFs;
* :mod:`.slides`: whole slides at the model's resolution, tissue found on a thumbnail;
* :mod:`.sharding`: one slide shared by the ranks of a torchrun job;
* :mod:`.paths`: files and folders (``stainadapt predict``), :class:`PredictOptions`;
* :mod:`.evaluate`: whole-image probabilities and Dice for validation;
* :mod:`.adapt`, :mod:`.adapt_sample`, :mod:`.adapt_files`: test-time adaptation of
  BatchNorm (AdaBN, TENT).
"""

from __future__ import annotations

from .adapt import ADAPT_MODES, ADAPT_SCOPES, AdaptSettings
from .adapt_files import describe_manifest, read_predict_manifest
from .evaluate import adapted_copy, evaluate_model, load_domain_images, predict_probs
from .paths import (
    STREAM_MIN_PIXELS,
    PredictOptions,
    PredictReport,
    collect_inputs,
    mask_suffix,
    predict_paths,
)
from .predictor import SlidingWindowPredictor, sliding_window_predict
from .sharding import BandShards
from .slides import SlidePrediction, plan_slide, predict_slide
from .streaming import OUTPUT_TILE, predict_rows_to_tiff, predict_tiff_streamed
from .windows import gaussian_weight, window_starts, window_tissue_fraction

__all__ = [
    "ADAPT_MODES",
    "ADAPT_SCOPES",
    "AdaptSettings",
    "adapted_copy",
    "describe_manifest",
    "read_predict_manifest",
    "OUTPUT_TILE",
    "STREAM_MIN_PIXELS",
    "BandShards",
    "PredictOptions",
    "PredictReport",
    "SlidePrediction",
    "SlidingWindowPredictor",
    "collect_inputs",
    "evaluate_model",
    "gaussian_weight",
    "load_domain_images",
    "mask_suffix",
    "plan_slide",
    "predict_paths",
    "predict_probs",
    "predict_rows_to_tiff",
    "predict_slide",
    "predict_tiff_streamed",
    "sliding_window_predict",
    "window_starts",
    "window_tissue_fraction",
]
