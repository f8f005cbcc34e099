"""From a CTC sequence folder to result masks: ``efficientcellseg predict`` and segment_sequence.

The model folders come from the ``tiny_model_folder`` fixture: tiny networks that threshold the
current slice, so the masks are a real (if modest) segmentation of the synthetic nuclei, scored
here with the CTC SEG measure against the synthetic gold truth.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from efficientcellseg import ctc
from efficientcellseg.cli import main
from efficientcellseg.inference import choose_backend, cpu_has_bf16, predict_slices
from efficientcellseg.metrics import seg_frame
from efficientcellseg.postprocess import postprocess_frame
from efficientcellseg.pseudocolor import pseudocolor_frame
from efficientcellseg.segment import (
    RECORD_KEY,
    Segmenter,
    read_pipeline_settings,
    segment_sequence,
    write_pipeline_settings,
)
from efficientcellseg.settings import SyntheticSpec
from efficientcellseg.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """One synthetic sequence of 3 frames (8 x 128 x 128) as uint8, for the resuming logic: uint8
    pseudocolors fast (CLAHE of uint16 builds a 65536-bin table per tile and slice)."""
    path = tmp_path_factory.mktemp("small") / "Small-3D"
    write_synthetic_dataset(
        path, SyntheticSpec(seed=1, n_sequences=1, n_frames=3, depth=8, n_objects=6)
    )
    for frame in (path / "01").glob("t*.tif"):
        image = tifffile.imread(frame)
        ctc.write_tiff(frame, (image // (image.max() // 255 + 1)).astype(np.uint8))
    return path


def sequence_seg(dataset: Path, sequence: str, result_dir: Path, frames=None) -> float:
    """CTC SEG over the gold-truth annotations (full frames and single slices) of a sequence,
    or of some of its frames."""
    seq = ctc.open_sequence(dataset, sequence)
    jaccards = []
    for ann in seq.annotations("GT"):
        if frames is not None and ann.frame not in frames:
            continue
        result = ctc.read_labels(result_dir / ctc.mask_name(ann.frame, seq.digits))
        if ann.is_slice:
            result = result[ann.slice]
        reference = ctc.read_annotation(ann, seq.frame_shape)
        jaccards += [row.jaccard for row in seg_frame(reference, result)]
    return math.fsum(jaccards) / len(jaccards)


def assert_ctc_masks(seq_dir: Path, result_dir: Path) -> list[np.ndarray]:
    """One uint16 mask per frame, named with the frames' digit count, of the frame's shape,
    labels 1..N."""
    seq = ctc.open_sequence(seq_dir.parent, seq_dir.name)
    names = sorted(p.name for p in result_dir.iterdir())
    assert names == [ctc.mask_name(f, seq.digits) for f in seq.frame_ids]
    masks = []
    for frame in seq.frame_ids:
        mask = tifffile.imread(result_dir / ctc.mask_name(frame, seq.digits))
        assert mask.dtype == np.uint16 and mask.shape == seq.frame_shape
        np.testing.assert_array_equal(np.unique(mask)[1:], np.arange(1, mask.max() + 1))
        assert mask.max() > 0
        masks.append(mask)
    return masks


def test_predict_command_segments_every_frame(
    synthetic_dataset, tiny_model_folder, tmp_path, capsys
) -> None:
    result_dir = tmp_path / "01_RES"
    code = main(
        ["predict", "--models", str(tiny_model_folder("distance")),
         str(synthetic_dataset / "01"), str(result_dir)]
    )  # fmt: skip
    assert code == 0
    assert f"wrote 4 masks to {result_dir}" in capsys.readouterr().out
    assert_ctc_masks(synthetic_dataset / "01", result_dir)
    assert sequence_seg(synthetic_dataset, "01", result_dir) >= 0.65


def test_predict_command_takes_threads_and_bf16(small_dataset, tiny_model_folder, tmp_path):
    models = str(tiny_model_folder("distance"))
    has_bf16 = cpu_has_bf16()
    precisions = ("f32", "bf16") if has_bf16 else ("f32",)
    for precision in precisions:
        assert main(
            ["predict", "--models", models, "--threads", "1", "--precision", precision,
             str(small_dataset / "01"), str(tmp_path / precision)]
        ) == 0  # fmt: skip
    masks = {p: assert_ctc_masks(small_dataset / "01", tmp_path / p) for p in precisions}
    if not has_bf16:
        pytest.skip("this CPU has no bfloat16 instructions: only f32 with --threads ran")
    for f32, bf16 in zip(masks["f32"], masks["bf16"], strict=True):
        # the tiny networks' probabilities move by ~4e-3: a few pixels cross the threshold
        assert ((f32 > 0) != (bf16 > 0)).mean() < 0.01


def test_centres_kind_uses_both_networks(synthetic_dataset, tiny_model_folder, tmp_path) -> None:
    folder = tiny_model_folder("centres")
    gold = ctc.open_sequence(synthetic_dataset, "02").gt_seg
    annotated = sorted({ann.frame for ann in gold if not ann.is_slice})  # full 3D gold truth
    assert 0 < len(annotated) < 4
    summary = segment_sequence(
        synthetic_dataset / "02", tmp_path / "02_RES", folder, frames=annotated
    )
    auto = {"backend": choose_backend(folder / "segmentation.keras"), "precision": "f32"}
    assert summary["inference"] == {"segmentation": auto, "centres": auto}
    assert summary["written"] == annotated
    assert set(summary["seconds"]) == {
        "read", "pseudocolor", "segmentation", "centres", "postprocess", "write"
    }  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "02_RES").iterdir()) == [
        f"mask{frame:03d}.tif" for frame in annotated
    ]
    assert sequence_seg(synthetic_dataset, "02", tmp_path / "02_RES", annotated) >= 0.45


def test_centre_network_runs_only_where_there_is_foreground(small_dataset, tiny_model_folder):
    """Skipping the centre network on slices without foreground leaves the masks unchanged."""
    frame = ctc.read_image(small_dataset / "01" / "t001.tif")
    blank = np.zeros((3, *frame.shape[1:]), frame.dtype)
    middle = len(frame) // 2
    frame = np.concatenate([blank, frame[:middle], blank, frame[middle:], blank])
    segmenter = Segmenter(tiny_model_folder("centres"), backend="onnx")
    network = segmenter.predictors["centres"]
    calls = []
    segmenter.predictors["centres"] = lambda batch: calls.append(len(batch)) or network(batch)
    maps = segmenter.probabilities(frame)
    occupied = (maps["segmentation"] > segmenter.settings.postprocess.threshold).any((1, 2))
    assert 0 < occupied.sum() <= len(frame) - 9
    assert not occupied[middle + 3 : middle + 6].any()  # two separate runs of cell slices
    assert sum(calls) == occupied.sum()
    assert not maps["centres"][~occupied].any()
    every_slice = predict_slices(network, pseudocolor_frame(frame))
    np.testing.assert_allclose(maps["centres"][occupied], every_slice[occupied], atol=1e-6)
    expected = postprocess_frame(maps["segmentation"], every_slice, segmenter.settings.postprocess)
    assert expected.max() > 0
    np.testing.assert_array_equal(segmenter.segment(frame), expected)


def test_backends_give_the_same_masks(small_dataset, tiny_model_folder) -> None:
    frame = ctc.read_image(small_dataset / "01" / "t001.tif")
    folder = tiny_model_folder("centres")
    masks = {b: Segmenter(folder, backend=b).segment(frame) for b in ("keras", "onnx", "openvino")}
    for backend in ("onnx", "openvino"):
        # maps agree to ~1e-5, so at most a pixel flips at a threshold
        assert (masks[backend] != masks["keras"]).sum() <= 5
        assert masks[backend].max() == masks["keras"].max()


def test_an_interrupted_run_finishes_only_the_missing_frames(
    small_dataset, tiny_model_folder, tmp_path
) -> None:
    folder = tiny_model_folder("distance")
    seq_dir = small_dataset / "01"
    result_dir = tmp_path / "01_RES"
    first = segment_sequence(seq_dir, result_dir, folder, frames=[0, 2])
    assert first["written"] == [0, 2] and first["skipped"] == []
    finished = {f: (result_dir / f"mask00{f}.tif").stat().st_mtime_ns for f in (0, 2)}
    (result_dir / ".mask001.tif.abc.part").write_bytes(b"half a mask")  # killed while writing
    resumed = segment_sequence(seq_dir, result_dir, folder)
    assert resumed["written"] == [1] and resumed["skipped"] == [0, 2]
    for frame, mtime in finished.items():
        assert (result_dir / f"mask00{frame}.tif").stat().st_mtime_ns == mtime  # not redone
    assert_ctc_masks(seq_dir, result_dir)  # also: the temporary file is gone
    nothing = segment_sequence(seq_dir, result_dir, folder)
    assert nothing["written"] == [] and "inference" not in nothing  # no model was even loaded
    again = segment_sequence(seq_dir, result_dir, folder, frames=[2], overwrite=True)
    assert again["written"] == [2]


def test_masks_made_from_other_models_settings_or_of_the_wrong_shape_are_redone(
    small_dataset, tiny_model_folder, tmp_path
) -> None:
    folder = tmp_path / "models"
    shutil.copytree(tiny_model_folder("distance"), folder)
    seq_dir = small_dataset / "01"
    result_dir = tmp_path / "01_RES"
    segment_sequence(seq_dir, result_dir, folder)
    ctc.write_labels(result_dir / "mask001.tif", np.ones((4, 4), np.uint16))  # a foreign mask
    assert segment_sequence(seq_dir, result_dir, folder)["written"] == [1]
    os.utime(folder / "segmentation.onnx", (1, 1))  # touched, same bytes: nothing to redo
    assert segment_sequence(seq_dir, result_dir, folder)["written"] == []
    settings = read_pipeline_settings(folder)  # other post-processing: redo everything
    postprocess = replace(settings.postprocess, min_area=16)
    write_pipeline_settings(folder, replace(settings, postprocess=postprocess))
    assert segment_sequence(seq_dir, result_dir, folder)["written"] == [0, 1, 2]
    # other inference settings change the probabilities: redo everything
    assert segment_sequence(seq_dir, result_dir, folder, backend="onnx")["written"] == [0, 1, 2]
    assert segment_sequence(seq_dir, result_dir, folder, backend="onnx")["written"] == []
    record = ctc.tiff_metadata(result_dir / "mask000.tif")[RECORD_KEY]
    assert record["inference"] == {"segmentation": {"backend": "onnx", "precision": "f32"}}
    assert record["frame"]["name"] == "t000.tif"


def test_masks_of_another_sequence_are_redone(small_dataset, tiny_model_folder, tmp_path) -> None:
    """Predicting sequence 02 into a folder, then 01 into the same folder, must not keep 02's
    masks: a mask is finished only if it was made from the very frame file it stands for."""
    dataset = tmp_path / "Two"
    shutil.copytree(small_dataset / "01", dataset / "01")
    shutil.copytree(small_dataset / "01", dataset / "02")
    frame = ctc.read_image(dataset / "02" / "t001.tif")
    ctc.write_tiff(dataset / "02" / "t001.tif", frame[::-1].copy())  # 02 differs in frame 1
    folder = tiny_model_folder("distance")
    result_dir = tmp_path / "RES"
    assert segment_sequence(dataset / "02", result_dir, folder)["written"] == [0, 1, 2]
    assert segment_sequence(dataset / "01", result_dir, folder)["written"] == [1]
    reference = tmp_path / "REF"
    segment_sequence(dataset / "01", reference, folder)
    for name in ("mask000.tif", "mask001.tif", "mask002.tif"):
        np.testing.assert_array_equal(
            ctc.read_labels(result_dir / name), ctc.read_labels(reference / name)
        )


def test_a_damaged_mask_is_redone(small_dataset, tiny_model_folder, tmp_path) -> None:
    folder = tiny_model_folder("distance")
    seq_dir = small_dataset / "01"
    result_dir = tmp_path / "01_RES"
    segment_sequence(seq_dir, result_dir, folder)
    whole = (result_dir / "mask001.tif").read_bytes()
    (result_dir / "mask001.tif").write_bytes(whole[: len(whole) // 2])  # cut in half
    flipped = bytearray((result_dir / "mask002.tif").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # one byte of the pixels changed, header intact
    (result_dir / "mask002.tif").write_bytes(bytes(flipped))
    assert segment_sequence(seq_dir, result_dir, folder)["written"] == [1, 2]
    assert segment_sequence(seq_dir, result_dir, folder)["written"] == []


def test_four_digit_frames_give_four_digit_masks(
    small_dataset, tiny_model_folder, tmp_path
) -> None:
    seq_dir = tmp_path / "Long" / "01"
    seq_dir.mkdir(parents=True)
    for frame in (0, 1):
        shutil.copy(small_dataset / "01" / f"t00{frame}.tif", seq_dir / f"t000{frame}.tif")
    result_dir = tmp_path / "Long" / "01_RES"
    assert main(["predict", "--models", str(tiny_model_folder("distance")),
                 str(seq_dir), str(result_dir), "--backend", "onnx"]) == 0  # fmt: skip
    assert sorted(p.name for p in result_dir.iterdir()) == ["mask0000.tif", "mask0001.tif"]


def test_2d_sequences_give_2d_masks(synthetic_dataset_2d, tiny_model_folder, tmp_path) -> None:
    result_dir = tmp_path / "01_RES"
    segment_sequence(synthetic_dataset_2d / "01", result_dir, tiny_model_folder("distance"))
    masks = assert_ctc_masks(synthetic_dataset_2d / "01", result_dir)
    assert masks[0].ndim == 2
    assert sequence_seg(synthetic_dataset_2d, "01", result_dir) >= 0.6


def test_predict_reports_what_is_missing(synthetic_dataset, tiny_model_folder, tmp_path, caplog):
    incomplete = tmp_path / "models"
    incomplete.mkdir()
    shutil.copy(tiny_model_folder("centres") / "pipeline.json", incomplete)
    args = ["predict", "--models", str(incomplete), str(synthetic_dataset / "01"), str(tmp_path)]
    assert main(args) == 1  # the command line is right, the model folder is not
    assert "segmentation.keras missing" in caplog.text
    assert main([*args[:2], str(tmp_path / "nowhere"), *args[3:]]) == 2  # a usage error
    assert f"{tmp_path / 'nowhere'}: no such folder (give the model folder)" in caplog.text
    shutil.copy(tiny_model_folder("distance") / "pipeline.json", incomplete)  # one network
    (incomplete / "segmentation.keras").write_bytes(b"PK\x03\x04 cut short")
    (incomplete / "segmentation.onnx").write_bytes(b"\x08\x07 cut short")
    for backend in ("keras", "onnx", "openvino"):
        caplog.clear()
        assert main([*args, "--backend", backend]) == 1
        (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
        damaged = "segmentation.keras" if backend == "keras" else "segmentation.onnx"
        assert record.getMessage().startswith(f"{incomplete / damaged}: ")
        assert "the file is damaged or not a network" in record.getMessage()
    models = str(tiny_model_folder("distance"))
    frames = ["--frames", "9"]  # after the positional arguments, which it would swallow
    where = [str(synthetic_dataset / "01"), str(tmp_path / "res")]
    code = main(["predict", "--models", models, *where, *frames])
    assert code == 2 and "has no frames [9]" in caplog.text


def test_tiles_from_pipeline_json_give_the_whole_frame_maps(
    small_dataset, tiny_model_folder, tmp_path
) -> None:
    """A model folder's tile settings reach the predictor. With tiles of the network's input
    size (no resizing) the threshold network answers per pixel, so a frame made of two copies
    side by side (3 overlapping tiles per slice) gives the map of one copy twice."""
    from efficientcellseg.settings import PipelineSettings, TileSettings

    folder = tmp_path / "tiled"
    shutil.copytree(tiny_model_folder("distance"), folder)
    postprocess = read_pipeline_settings(folder).postprocess
    write_pipeline_settings(folder, PipelineSettings(postprocess, TileSettings(128, overlap=32)))
    small = ctc.read_image(small_dataset / "01" / "t000.tif")  # 8 x 128 x 128
    whole = Segmenter(tiny_model_folder("distance"), backend="keras").probabilities(small)
    tiled = Segmenter(folder, backend="keras").probabilities(np.concatenate([small, small], 2))
    assert tiled["segmentation"].shape == (8, 128, 256)
    for half in (slice(0, 128), slice(128, 256)):
        np.testing.assert_allclose(
            tiled["segmentation"][..., half], whole["segmentation"], rtol=0, atol=2e-4
        )


def test_pipeline_settings_round_trip_and_bad_files_are_named(tmp_path) -> None:
    from efficientcellseg.settings import PipelineSettings, PostprocessSettings, TileSettings

    settings = PipelineSettings(
        PostprocessSettings("distance", min_area=10, min_volume=20), TileSettings(1024, 128)
    )
    write_pipeline_settings(tmp_path, settings)
    assert read_pipeline_settings(tmp_path) == settings
    (tmp_path / "pipeline.json").write_text('{"postprocess": {"kind": "distance", "size": 3}}')
    with pytest.raises(ValueError, match=r"pipeline\.json is not valid pipeline settings"):
        read_pipeline_settings(tmp_path)
    (tmp_path / "pipeline.json").write_text('{"postprocess": {"kind": "watershed"}}')
    with pytest.raises(ValueError, match="postprocess.kind: 'watershed' is not one of"):
        read_pipeline_settings(tmp_path)
