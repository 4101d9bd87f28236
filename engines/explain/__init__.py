"""Evidence heat maps: where an engine's model found the edit, and how well that agrees with the edits
CIPLAB's file names record.

    explainer = load_explainer("engines_out/ghosts")           # the eager model behind an engine
    for item in explainer.explain(batch.images):                # one Evidence per image
        ...
    render(item, photo, content_box, "out/easy_001_1100.png")   # photo + heat map + colour bar
    write_evidence_json(item, ...)                              # the per-cell values, machine-readable

Two methods, by what the model reads:

- ghost_cnn ("cam"): a class activation map of its last feature map (`feature_map_layer()`, the grid
  before the global max-pool): per cell, the linear head's fake-minus-real weights dotted with the
  cell's features, i.e. the fake-minus-real logit that cell alone would give (the head's bias left
  out). Each feature cell covers stride x stride JPEG blocks (8x8 at 600 px), so the map is laid on the
  JPEG block grid of the input (S/8 cells a side); blocks the last feature map does not reach (the
  poolings floor odd sides: the bottom and right 24 px at 600 px) are NaN. Where the source run was
  trained with `--region-loss`, the region head (`recipes.RegionLoss`, kept in the run's last.pt
  under "aux_loss") adds one probability per edited region.
- pixel models ("grad-cam"): Grad-CAM (Selvaraju et al.) of the fake-minus-real logit on the last
  convolution stage, computed by pytorch-grad-cam (PyPI `grad-cam`) and upsampled by it to the input
  pixels, each map scaled to [0, 1].

Ensembles average their members' maps; an engine built with `--tta flip` averages the map of each image
with the map of its mirror image flipped back (on the block grid, so a mirrored view's cells land
where they lie in the image), as its p_fake averages the two views.

Which weights: an engine directory records its `architecture`, `image_size`, `width`, `dropout`,
`num_classes`, `members` and `tta`, which rebuild the eager module (`backends.common.model_from_meta`). An
eager or compile engine keeps that module's state dict as its artifact (`model.pt`, checked against its
sha256): the explanation uses exactly what the engine scores with, even when the run directory is gone.
An aot or tensorrt artifact is compiled code with no eager module in it: its weights are rebuilt from
`source.run_dir` (`source.ensemble` for ensembles) and `source.checkpoint`, accepted only when the
checkpoint's sha256 matches `source.checkpoint_sha256`; without the run directory such an engine
cannot be explained (EngineError saying so). The region head exists only in the run: it is used when
the run's last.pt holds one trained to the engine's weights (the same file as the engine's checkpoint,
or a best.pt of the same epoch), and left out with a warning otherwise.

Geometry: every map lies on a square grid over the model's input canvas of G pixels a side (G = S for
pixel models, 8 * (S // 8) for ghost maps); `content_box` is where the image's own pixels lie on it
(the whole canvas for pixel models, which squash the image to S x S; a ghost-map model sees a centre
crop, padded when the image is smaller). The face-region priors (`pipelines.pseudo_fakes.REGIONS`,
centre and half-size as fractions of the image) become boxes inside the content box.

The pointing game (`pointing_game`) scores maps against CIPLAB's edit codes (`{easy,mid,hard}_NNN_CCCC.jpg`:
left eye, right eye, nose, mouth): for every fake with a code, the credit of its hottest region (by the
highest and by the mean evidence inside each region's box; a tie shares the credit) for being an
edited one, next to the chance of a region drawn at random (coded / 4 per image); the mean of the
per-image min-max-normalized map inside coded against uncoded regions; for every image the spread of
its map (normalized entropy, share of the mass in the top 10% of the cells).
"""
from realfake.engines.explain.explainer import Explainer, load_explainer
from realfake.engines.explain.files import evidence_document, plain_json, render, write_evidence_json
from realfake.engines.explain.methods import Evidence, block_grid, class_activation_map, grad_cam
from realfake.engines.explain.pointing import (
           format_pointing_md,
           image_record,
           pointing_game,
           region_boxes,
           spread,
)

__all__ = ["Evidence", "Explainer", "block_grid", "class_activation_map", "evidence_document", "format_pointing_md",
           "grad_cam", "image_record", "load_explainer", "plain_json", "pointing_game", "region_boxes", "render",
           "spread", "write_evidence_json"]
