"""A trained network as a BioImage Model Zoo package (bioimage.io model format 0.5).

Tools that read that format (bioimageio.core, deepImageJ, ilastik, QuPath, the bioimage.io site)
can then run the network. One package per network of a model folder: the ONNX weights, a test
input (a pseudocolored slice) with the output this network gives for it, a cover image and a
README. The network's input is the context-aware pseudocolor of a slice, which no preprocessing
of the format expresses: the README documents it, the package's ``config.efficientcellseg``
records the model folder's post-processing (``pipeline.json``), and
``efficientcellseg pseudocolor`` computes it. The output is the per-pixel probability of the
network's class (cell or cell centre); the watershed that turns it into instances is the
library's (:class:`.segment.Segmenter`).

Validation uses the format's own validator, ``bioimageio.core.test_model``: it checks the
description and runs the weights on the test input. It needs no network connection (all files
are local; :func:`validate_package` also points the library's cache into a temporary folder).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, ctc
from .inference import ONNX_OPSET, onnx_path, onnxruntime_session
from .pseudocolor import pseudocolor_frame
from .segment import network_path, read_pipeline_settings

log = logging.getLogger(__name__)

PAPER_DOI = "10.48550/arXiv.2204.03014"
CTC_DOI = "10.1038/s41592-023-01879-y"
CLASSES = {"segmentation": "cell", "centres": "cell centre"}
MIN_SIZE = 64  # smallest slice side the package promises (the network resizes internally)


def export_bioimageio(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sample: str | os.PathLike | None = None,
    authors: tuple[str, ...] = ("EfficientCellSeg pipeline",),
    license_id: str = "MIT",
) -> list[Path]:
    """Write ``OUT_DIR/<model folder>-<network>.bioimageio.zip`` for every network of a model
    folder and return their paths.

    Parameters
    ----------
    model_dir
        A trained model folder (``pipeline.json``, ``<network>.keras`` and ``.onnx``).
    sample
        A raw 2D image or 3D stack (TIFF) whose middle slice becomes the test input; default a
        built-in synthetic stack.
    authors, license_id
        Who made the weights, and their SPDX licence.
    """
    from bioimageio.spec import save_bioimageio_package

    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    pipeline = read_pipeline_settings(model_dir)
    test_slice = _test_slice(sample)
    packages = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in pipeline.networks:
            work = Path(tmp) / task
            work.mkdir()
            description = _description(
                model_dir, task, pipeline.to_dict(), test_slice, work, authors, license_id
            )
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{model_dir.name}-{task}.bioimageio.zip"
            save_bioimageio_package(description, output_path=path)
            log.info("wrote %s", path)
            packages.append(path)
    return packages


def validate_package(path: str | os.PathLike) -> dict[str, Any]:
    """Run ``bioimageio.core.test_model`` on a package: the format's checks plus inference on
    the test input. Returns its summary as a dict: ``status`` is ``passed`` when every check
    passed, ``valid-format`` when the description is valid but a test failed (e.g. the weights
    do not reproduce the test output), ``failed`` when the description is invalid."""
    from bioimageio.core import test_model
    from bioimageio.spec import settings

    with tempfile.TemporaryDirectory() as cache:
        previous = settings.cache_path
        settings.cache_path = Path(cache)  # nothing outside the package is fetched or kept
        try:
            summary = test_model(Path(path), weight_format="onnx", devices=["cpu"])
        finally:
            settings.cache_path = previous
    return summary.model_dump(mode="json")


def _test_slice(sample: str | os.PathLike | None) -> np.ndarray:
    """Pseudocolor (H, W, 3) float32 of the middle slice of a raw frame."""
    if sample is None:
        from .settings import SyntheticSpec
        from .synthetic import generate_sequence

        frame = generate_sequence(SyntheticSpec(seed=0, n_frames=1), 0)["images"][0]
    else:
        frame = ctc.read_image(sample)
    colour = pseudocolor_frame(frame)
    if colour.ndim == 4:
        colour = colour[len(colour) // 2]
    if min(colour.shape[:2]) < MIN_SIZE:
        raise ValueError(f"{sample}: slices must be at least {MIN_SIZE} pixels on each side")
    return np.ascontiguousarray(colour, dtype=np.float32)


def _description(
    model_dir: Path,
    task: str,
    pipeline: dict[str, Any],
    test_slice: np.ndarray,
    work: Path,
    authors: tuple[str, ...],
    license_id: str,
):
    from bioimageio.spec.model.v0_5 import (
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        ModelDescr,
        OnnxWeightsDescr,
        OutputTensorDescr,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        WeightsDescr,
    )

    keras_file = network_path(model_dir, task)
    onnx_file = onnx_path(keras_file)
    if not onnx_file.is_file():
        raise FileNotFoundError(
            f"{onnx_file} missing: export it with `efficientcellseg export {keras_file}`"
        )
    metadata = json.loads(keras_file.with_suffix(".json").read_text())
    test_input = test_slice[None]
    test_output = _run_onnx(onnx_file, test_input)
    np.save(work / "test_input.npy", test_input)
    np.save(work / "test_output.npy", test_output)
    cover = work / "cover.png"
    _write_cover(cover, test_slice, test_output[0, ..., 0], CLASSES[task])
    readme = work / "README.md"
    readme.write_text(_readme(task, metadata, pipeline))

    unit_range = IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
    space = {"min": MIN_SIZE, "step": 1}
    inputs = InputTensorDescr(
        id=TensorId("pseudocolor"),
        description="context-aware pseudocolor of one slice, values in [0, 1] (see README)",
        axes=[
            BatchAxis(),
            SpaceInputAxis(id=AxisId("y"), size=ParameterizedSize(**space)),
            SpaceInputAxis(id=AxisId("x"), size=ParameterizedSize(**space)),
            ChannelAxis(
                channel_names=[
                    Identifier("previous_context"),
                    Identifier("slice"),
                    Identifier("next_context"),
                ]
            ),
        ],
        test_tensor=FileDescr(source=work / "test_input.npy"),
        data=unit_range,
    )
    outputs = OutputTensorDescr(
        id=TensorId("probability"),
        description=f"probability of {CLASSES[task]} per pixel",
        axes=[
            BatchAxis(),
            SpaceOutputAxis(id=AxisId("y"), size=SizeReference(tensor_id=inputs.id, axis_id="y")),
            SpaceOutputAxis(id=AxisId("x"), size=SizeReference(tensor_id=inputs.id, axis_id="x")),
            ChannelAxis(channel_names=[Identifier(CLASSES[task].replace(" ", "_"))]),
        ],
        test_tensor=FileDescr(source=work / "test_output.npy"),
        data=unit_range,
    )
    dataset = metadata.get("dataset", model_dir.parent.parent.name)
    return ModelDescr(
        name=f"EfficientCellSeg {task} {dataset} {model_dir.name}",
        description=(
            f"EfficientCellSeg {task} network (Wagner & Rohr, MIDL 2022) trained on "
            f"{dataset}: per-pixel {CLASSES[task]} probability of a context-aware pseudocolor "
            "slice."
        ),
        authors=[Author(name=name) for name in authors],
        cite=[
            CiteEntry(text="Wagner & Rohr, EfficientCellSeg, MIDL 2022", doi=PAPER_DOI),
            CiteEntry(
                text="Maška et al., The Cell Tracking Challenge, Nat Methods 2023", doi=CTC_DOI
            ),
        ],
        license=license_id,
        documentation=FileDescr(source=readme),
        covers=[FileDescr(source=cover)],
        tags=[
            "segmentation",
            "nuclei",
            "fluorescence-light-microscopy",
            "onnx",
            "2d",
            "3d",
            "cell-tracking-challenge",
            "efficientcellseg",
        ],
        inputs=[inputs],
        outputs=[outputs],
        weights=WeightsDescr(onnx=OnnxWeightsDescr(source=onnx_file, opset_version=ONNX_OPSET)),
        config={
            "efficientcellseg": {"version": __version__, "network": task, "pipeline": pipeline}
        },
    )


def _run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    """The network's output (N, H, W, 1) float32 on a batch, as ONNX Runtime computes it."""
    session = onnxruntime_session(path, threads=1)
    (output,) = session.run(None, {session.get_inputs()[0].name: batch})
    return np.asarray(output, dtype=np.float32).reshape(*batch.shape[:3], 1)


def _write_cover(path: Path, colour: np.ndarray, probability: np.ndarray, what: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(np.clip(colour, 0, 1))
    axes[0].set_title("input: pseudocolor")
    axes[1].imshow(probability, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title(f"output: {what} probability")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=64)
    plt.close(fig)


def _readme(task: str, metadata: dict[str, Any], pipeline: dict[str, Any]) -> str:
    training = metadata.get("training", {})
    parameters = metadata.get("parameters", {}).get("total")
    size = f"{parameters:,} parameters" if parameters else "parameters unknown"
    iou = metadata.get("best_val_iou")
    score = f"best validation IoU {iou:.4f}" if iou is not None else "no validation IoU recorded"
    return f"""# EfficientCellSeg {task} network

Per-pixel probability of {CLASSES[task]} for one slice of a fluorescence image, by the
EfficientCellSeg method (Wagner & Rohr, MIDL 2022): an EfficientNet encoder cut after a few
blocks with a light decoder ({size}).
Trained on {metadata.get("dataset", "?")} (sequences {", ".join(metadata.get("trained_on", []))},
training set {training.get("training_set", "?")}); {score}.

## Input: context-aware pseudocolor (preprocessing)

The network reads three channels per slice z of a 2D image or 3D stack (Y, X), not the raw
intensities. Compute them with the `efficientcellseg` package (`efficientcellseg pseudocolor
STACK.tif OUT.tif`, or `efficientcellseg.pseudocolor.pseudocolor_frame(stack)`), or as follows:

1. previous = slice z-1, next = slice z+1 (all zeros beyond the stack; a 2D image has neither).
2. CLAHE (OpenCV, clip limit 10, 16x16 tiles) of previous and next, on their raw integer values.
3. Normalise each to [0, 1] by its minimum and maximum: red = CLAHE(previous), green = the raw
   slice z, blue = CLAHE(next); box-blur red and blue 8x8.
4. Threshold red and blue: t starts at 0.2 and rises by 0.01 (at most 30 times) while more than
   3% (or none) of the pixels exceed it; red = (red > t) * green + green, likewise blue.
5. Normalise red and blue to [0, 1] again. Channels: (red, green, blue) = (previous context,
   slice, next context).

Any slice size of at least {MIN_SIZE} pixels works: the network resizes to its input size and
back inside.

## Output and post-processing

`probability`: the {CLASSES[task]} probability per pixel. Instances come from the library's
post-processing (threshold, watershed, linking slices in z), settings in this package's
`config.efficientcellseg.pipeline`:

```json
{json.dumps(pipeline, indent=2)}
```

`efficientcellseg.segment.Segmenter(model_folder).segment(stack)` runs all of it.

## Validation

Held-out scores of the pipeline are the CTC SEG measure of masks of sequences the networks never
saw (`results/<dataset>/SEG.txt` of the workflow that trained them). The test input and output
of this package come from a synthetic stack (or the sample given at export) and check only that
the weights run as exported.
"""
