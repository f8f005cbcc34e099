"""Images outside the CTC layout: `efficientcellseg predict` on any TIFF files, and the API.

Masks of arbitrary names must be exactly the masks the CTC path and the array API give for the
same pixels; the model folder is the ``tiny_model_folder`` fixture (threshold networks).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from efficientcellseg import ctc
from efficientcellseg.cli import main
from efficientcellseg.segment import Segmenter, segment_images, segment_sequence


@pytest.fixture(scope="module")
def embryos(tmp_path_factory, synthetic_dataset, synthetic_dataset_2d) -> Path:
    """A folder of a user's images: two 3D stacks and one 2D image of another size."""
    folder = tmp_path_factory.mktemp("embryos")
    shutil.copy(synthetic_dataset / "01" / "t000.tif", folder / "embryo_A.tif")
    shutil.copy(synthetic_dataset / "02" / "t001.tif", folder / "embryo_B.tiff")
    image = ctc.read_image(synthetic_dataset_2d / "01" / "t000.tif")[:96, :112]
    tifffile.imwrite(folder / "plate 3.tif", image)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_any_names_give_masks_of_the_same_names_equal_to_the_ctc_path(
    embryos, synthetic_dataset, tiny_model_folder, tmp_path
) -> None:
    models = tiny_model_folder("distance")
    out = tmp_path / "masks"
    assert main(["predict", "--models", str(models), "--backend", "onnx", str(embryos),
                 str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["embryo_A.tif", "embryo_B.tiff", "plate 3.tif"]
    # The CTC path on the same frames writes the same masks, pixel for pixel.
    ctc_out = tmp_path / "01_RES"
    segment_sequence(synthetic_dataset / "01", ctc_out, models, frames=[0], backend="onnx")
    np.testing.assert_array_equal(
        ctc.read_labels(out / "embryo_A.tif"), ctc.read_labels(ctc_out / "mask000.tif")
    )
    # The array API gives the same mask, here for the 2D image.
    image = tifffile.imread(embryos / "plate 3.tif")
    mask = ctc.read_labels(out / "plate 3.tif")
    assert mask.shape == image.shape == (96, 112) and mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, Segmenter(models, backend="onnx").segment(image))
    assert mask.max() >= 3  # the threshold networks find the synthetic nuclei


def test_files_and_folders_mix_and_finished_masks_are_kept(
    embryos, tiny_model_folder, tmp_path
) -> None:
    models = tiny_model_folder("distance")
    out = tmp_path / "out"
    inputs = [embryos / "embryo_A.tif", embryos / "plate 3.tif"]
    first = segment_images(inputs, out, models, backend="onnx")
    assert first["written"] == ["embryo_A.tif", "plate 3.tif"]
    again = segment_images([embryos], out, models, backend="onnx")
    assert again["written"] == ["embryo_B.tiff"]
    assert again["skipped"] == ["embryo_A.tif", "plate 3.tif"]


def test_frames_before_the_folders_do_not_take_them(
    synthetic_dataset, tiny_model_folder, tmp_path, caplog
) -> None:
    models = str(tiny_model_folder("distance"))
    out = tmp_path / "res"
    args = ["predict", "--models", models, "--backend", "onnx"]
    assert main([*args, "--frames", "1,3", str(synthetic_dataset / "01"), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mask001.tif", "mask003.tif"]
    # The old grammar (`--frames 0 1 SEQ OUT`) now leaves "1" as an input, and says so.
    assert main([*args, "--frames", "0", "1", str(synthetic_dataset / "01"), str(out)]) == 2
    assert "frame numbers go as --frames 0,1" in caplog.text
    # --frames is for CTC sequences.
    assert main([*args, "--frames", "0", str(synthetic_dataset / "01" / "t000.tif"),
                 str(out)]) == 2  # fmt: skip
    assert "--frames needs one CTC sequence folder" in caplog.text


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("rgb.tif", np.zeros((64, 64, 3), np.uint8), "a colour image (3 samples per pixel"),
        ("movie.tif", np.zeros((2, 5, 64, 64), np.uint8), "a 4D image (shape (2, 5, 64, 64)"),
    ],
)
def test_images_the_networks_cannot_read_are_named(
    name, content, message, tiny_model_folder, tmp_path
) -> None:
    path = tmp_path / name
    tifffile.imwrite(path, content, photometric="rgb" if content.ndim == 3 else None)
    with pytest.raises(ValueError, match=re.escape(message)):
        segment_images([path], tmp_path / "out", tiny_model_folder("distance"))


def test_masks_never_overwrite_their_images(embryos, tiny_model_folder) -> None:
    with pytest.raises(ValueError, match="would overwrite it"):
        segment_images([embryos / "embryo_A.tif"], embryos, tiny_model_folder("distance"))
