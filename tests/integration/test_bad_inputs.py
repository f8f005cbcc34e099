"""Bad input to every command, as a careless or unlucky user gives it: a table of cases.

Each case runs one ``efficientcellseg`` command (in this process, for speed) in a fresh copy of
a small workspace: a 2-frame synthetic 3D dataset with gold truth, silver truth, TRA markers and
valid result masks, a trained model folder, a workflow config. For every case the table says
the exit code (2: the command line is wrong; 1: the command failed while it ran) and a text the
one error line must contain (the path or key at fault). Whatever the case, every file that was
there before is unchanged (SHA-256 before and after), and nothing new is left behind: no
temporary file, no half-written output (a few cases may keep complete masks, which a run that
is resumed keeps too).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from http_server import FileServer

from efficientcellseg import ctc
from efficientcellseg.cli import main
from efficientcellseg.settings import SettingsError, SyntheticSpec, workflow_settings
from efficientcellseg.synthetic import write_synthetic_dataset

DATASET = "Fluo-N3DH-BAD"
SERVED = "Fluo-N3DH-SRV"  # the dataset name the download cases ask the test server for


@pytest.fixture(scope="module")
def workspace_template(tmp_path_factory, tiny_model_folder) -> Path:
    """ws/ds (2 frames of 8x64x64 uint8, 01_RES with valid masks), ws/models, ws/config.yaml,
    ws/file.txt; copied afresh for every case."""
    ws = tmp_path_factory.mktemp("bad_inputs") / "ws"
    ds = ws / "ds"
    write_synthetic_dataset(
        ds, SyntheticSpec(seed=2, n_sequences=1, n_frames=2, depth=8, height=64, width=64,
                          n_objects=3)
    )  # fmt: skip
    for frame in sorted((ds / "01").glob("t*.tif")):  # uint8 pseudocolors 50x faster
        image = tifffile.imread(frame)
        ctc.write_tiff(frame, (image // (image.max() // 255 + 1)).astype(np.uint8))
    (ds / "01_RES").mkdir()
    for t in (0, 1):
        shutil.copy(ds / "01_ST" / "SEG" / f"man_seg00{t}.tif", ds / "01_RES" / f"mask00{t}.tif")
    shutil.copytree(tiny_model_folder("distance"), ws / "models")
    config = {
        "datasets": {
            "bad": {
                "ctc_name": DATASET,
                "source": "ctc",
                "model": "tiny",
                "postprocess": {"kind": "distance"},
            }
        }
    }
    (ws / "config.yaml").write_text(yaml.safe_dump(config))
    (ws / "file.txt").write_text("a plain file\n")
    return ws


# -- how the cases break the workspace --


def write(relative: str, data: bytes) -> Callable[[Path], None]:
    return lambda ws: (ws / relative).write_bytes(data)


def remove(relative: str) -> Callable[[Path], None]:
    return lambda ws: (ws / relative).unlink()


def truncate(relative: str) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        data = (ws / relative).read_bytes()
        (ws / relative).write_bytes(data[: len(data) * 2 // 3])

    return apply


def tiff(relative: str, array: np.ndarray, **kwargs) -> Callable[[Path], None]:
    return lambda ws: tifffile.imwrite(ws / relative, array, **kwargs)


def edit_config(**entry) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        config = yaml.safe_load((ws / "config.yaml").read_text())
        config["datasets"]["bad"].update(entry)
        (ws / "config.yaml").write_text(yaml.safe_dump(config))

    return apply


def serve_zip(members: dict[str, bytes] | None) -> Callable[[Path], None]:
    """Put a zip on the test server (None: nothing, a 404)."""

    def apply(ws: Path) -> None:
        if members is not None:
            path = ws.parent / "served.zip"
            with zipfile.ZipFile(path, "w") as archive:
                for name, data in members.items():
                    archive.writestr(zipfile.ZipInfo(name), data)
            SERVER.serve(f"/training-datasets/{SERVED}.zip", path.read_bytes())
            path.unlink()

    return apply


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda ws: [step(ws) for step in steps]


SERVER: FileServer  # set by the download cases' fixture

FRAME = "ds/01/t000.tif"
SHAPE = (8, 64, 64)
PREDICT = ["predict", "--models", "{ws}/models", "{ws}/ds/01", "{ws}/res"]
EVALUATE = ["evaluate", "{ws}/ds", "01"]
TRAIN = ["train", "{ws}/ds", "{ws}/trained", "--config", "{ws}/config.yaml", "--dataset", "bad"]
DOWNLOAD = ["download", SERVED, "{ws}/resources", "--base-url", "{server}"]


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    code: int  # expected exit code
    names: str  # the error line contains this ({ws}: the workspace)
    setup: Callable[[Path], None] | None = None
    leaves: tuple[str, ...] = ()  # globs of complete outputs a failed run may keep
    argparse: bool = False  # the error comes from argparse (on stderr, before logging)
    options: list[str] = field(default_factory=list)


CASES = [
    # --- the command line is wrong: exit code 2 ---
    Case("pseudocolor-out-is-in", ["pseudocolor", f"{{ws}}/{FRAME}", f"{{ws}}/{FRAME}"], 2,
         f"{{ws}}/{FRAME} is the input"),
    Case("pseudocolor-out-in-raw-folder", ["pseudocolor", f"{{ws}}/{FRAME}", "{ws}/ds/01/pc.tif"],
         2, "{ws}/ds/01, a folder of a CTC dataset's frames"),
    Case("pseudocolor-out-is-a-folder", ["pseudocolor", f"{{ws}}/{FRAME}", "{ws}/ds"], 2,
         "{ws}/ds is a folder"),
    Case("pseudocolor-in-missing", ["pseudocolor", "{ws}/ds/01/t009.tif", "{ws}/pc.tif"], 2,
         "{ws}/ds/01/t009.tif: no such file"),
    Case("pseudocolor-in-is-a-folder", ["pseudocolor", "{ws}/ds/01", "{ws}/pc.tif"], 2,
         "{ws}/ds/01 is a folder"),
    Case("predict-res-is-a-file", [*PREDICT[:-1], "{ws}/file.txt"], 2,
         "{ws}/file.txt is a file, not a folder"),
    Case("predict-res-is-the-sequence", [*PREDICT[:-1], "{ws}/ds/01"], 2,
         "{ws}/ds/01 is the input"),
    Case("predict-res-in-raw-folder", [*PREDICT[:-1], "{ws}/ds/01/res"], 2,
         "{ws}/ds/01, a folder of a CTC dataset's frames"),
    Case("predict-sequence-missing", [*PREDICT[:3], "{ws}/ds/07", "{ws}/res"], 2,
         "{ws}/ds/07: no such file or folder"),
    Case("predict-models-missing", ["predict", "--models", "{ws}/none", *PREDICT[3:]], 2,
         "{ws}/none: no such folder"),
    Case("predict-models-is-a-file", ["predict", "--models", "{ws}/file.txt", *PREDICT[3:]], 2,
         "{ws}/file.txt is a file"),
    Case("predict-unknown-frames", [*PREDICT, "--frames", "0,9"], 2, "has no frames [9]"),
    Case("predict-batch-size-0", [*PREDICT, "--batch-size", "0"], 2, "batch_size"),
    Case("predict-unknown-backend", [*PREDICT, "--backend", "cuda"], 2, "--backend",
         argparse=True),
    Case("predict-without-models", ["predict", "{ws}/ds/01", "{ws}/res"], 2, "--models",
         argparse=True),
    Case("evaluate-out-is-a-file", [*EVALUATE, "--out", "{ws}/file.txt"], 2,
         "{ws}/file.txt is a file"),
    Case("evaluate-out-is-a-raw-folder", [*EVALUATE, "--out", "{ws}/ds/01"], 2,
         "{ws}/ds/01 is the input"),
    Case("evaluate-results-is-a-file", [*EVALUATE, "--results", "{ws}/file.txt"], 2,
         "{ws}/file.txt is a file"),
    Case("evaluate-results-missing", [*EVALUATE, "--results", "{ws}/ds/02_RES"], 2,
         "{ws}/ds/02_RES: no such folder"),
    Case("evaluate-dataset-missing", ["evaluate", "{ws}/nowhere", "01"], 2,
         "{ws}/nowhere: no such folder"),
    Case("evaluate-sequence-missing", ["evaluate", "{ws}/ds", "03"], 2,
         "{ws}/ds/03: no such folder"),
    Case("download-dest-is-a-file", [*DOWNLOAD[:2], "{ws}/file.txt", *DOWNLOAD[3:]], 2,
         "{ws}/file.txt is a file"),
    Case("download-bad-name", ["download", "../etc", "{ws}/resources"], 2,
         "'../etc' is not a CTC dataset name"),
    Case("synthetic-over-a-dataset", ["synthetic", "{ws}/ds"], 2,
         "{ws}/ds exists and is not empty"),
    Case("synthetic-into-raw-folder", ["synthetic", "{ws}/ds/01/syn"], 2,
         "{ws}/ds/01, a folder of a CTC dataset's frames"),
    Case("pseudocolor-out-in-gt-folder", ["pseudocolor", f"{{ws}}/{FRAME}",
         "{ws}/ds/01_GT/SEG/man_seg000.tif"], 2, "{ws}/ds/01_GT, a folder of a CTC dataset's"),
    Case("synthetic-too-thin", ["synthetic", "{ws}/syn", "--depth", "3"], 2,
         "depth 3 is too small"),
    Case("sample-over-a-dataset", ["sample", "cho", "{ws}/ds"], 2,
         "{ws}/ds exists and is not empty"),
    Case("train-config-missing", [*TRAIN[:4], "{ws}/none.yaml", *TRAIN[5:]], 2,
         "{ws}/none.yaml: no such file"),
    Case("train-config-not-yaml", TRAIN, 2, "{ws}/config.yaml: not valid YAML",
         setup=write("config.yaml", b"datasets: [unclosed\n")),
    Case("train-config-not-a-config", TRAIN, 2, "{ws}/config.yaml: not a workflow config",
         setup=write("config.yaml", b"- just\n- a list\n")),
    Case("train-config-without-dataset", TRAIN[:5], 2, "--config and --dataset go together"),
    Case("train-unknown-dataset", [*TRAIN[:6], "NOPE"], 2, "no dataset 'NOPE'"),
    Case("train-config-bad-value", TRAIN, 2, "datasets.bad.inference.precision: 'f16'",
         setup=edit_config(inference={"precision": "f16"})),
    Case("train-config-unknown-key", TRAIN, 2, "epoch",
         setup=edit_config(training={"epoch": 3})),
    Case("train-config-duplicate-sequences", TRAIN, 2, "sequences",
         setup=edit_config(sequences=["01", "01"])),
    Case("train-into-raw-folder", [*TRAIN[:2], "{ws}/ds/01", *TRAIN[3:]], 2,
         "{ws}/ds/01, a folder of a CTC dataset's frames"),
    Case("train-unknown-model", [*TRAIN, "--model", "huge"], 2, "'huge'"),
    Case("export-not-keras", ["export", "{ws}/models/segmentation.onnx"], 2,
         "{ws}/models/segmentation.onnx: give the .keras file"),
    Case("params-config-missing", ["params", "--config", "{ws}/none.yaml"], 2, "none.yaml"),
    Case("params-config-not-yaml", ["params", "--config", "{ws}/config.yaml"], 2,
         "{ws}/config.yaml: not valid YAML", setup=write("config.yaml", b"a: [1,\n")),
    # --- the files are wrong, or something fails while running: exit code 1 ---
    Case("evaluate-mask-missing", EVALUATE, 1, "mask001.tif: missing",
         setup=remove("ds/01_RES/mask001.tif")),
    Case("evaluate-masks-four-digits", EVALUATE, 1, "found mask0001.tif instead",
         setup=lambda ws: (ws / "ds/01_RES/mask001.tif").rename(ws / "ds/01_RES/mask0001.tif")),
    Case("evaluate-mask-float", EVALUATE, 1, "mask000.tif: stored as float32",
         setup=tiff("ds/01_RES/mask000.tif", np.zeros(SHAPE, np.float32))),
    Case("evaluate-mask-wrong-shape", EVALUATE, 1, "mask001.tif: shape (8, 64, 32)",
         setup=tiff("ds/01_RES/mask001.tif", np.zeros((8, 64, 32), np.uint16))),
    Case("evaluate-mask-truncated", EVALUATE, 1, "mask001.tif",
         setup=truncate("ds/01_RES/mask001.tif")),
    Case("evaluate-mask-not-a-tiff", EVALUATE, 1, "mask000.tif: not a readable TIFF",
         setup=write("ds/01_RES/mask000.tif", b"GIF89a not a TIFF")),
    Case("evaluate-mask-rgb", EVALUATE, 1, "mask000.tif: a colour image",
         setup=tiff("ds/01_RES/mask000.tif", np.zeros((64, 64, 3), np.uint16))),
    Case("evaluate-marker-file-missing", EVALUATE, 1,
         "{ws}/ds/01_GT/TRA/man_track001.tif: missing",
         setup=remove("ds/01_GT/TRA/man_track001.tif")),
    Case("evaluate-track-beyond-frames", EVALUATE, 1, "{ws}/ds/01_GT/TRA: markers of frames 2",
         setup=write("ds/01_GT/TRA/man_track.txt", b"1 0 2 0\n")),
    Case("evaluate-track-file-malformed", EVALUATE, 1, "{ws}/ds/01_GT/TRA/man_track.txt:2",
         setup=write("ds/01_GT/TRA/man_track.txt", b"1 0 1 0\n2 zero 1 0\n")),
    Case("evaluate-gt-of-a-missing-frame", EVALUATE, 1, "{ws}/ds/01_GT/SEG/man_seg005.tif",
         setup=tiff("ds/01_GT/SEG/man_seg005.tif", np.zeros(SHAPE, np.uint16))),
    Case("evaluate-gt-wrong-shape", EVALUATE, 1, "{ws}/ds/01_GT/SEG/man_seg000.tif: shape",
         setup=tiff("ds/01_GT/SEG/man_seg000.tif", np.zeros((4, 64, 64), np.uint16))),
    Case("evaluate-no-silver-truth", [*EVALUATE, "--reference", "ST"], 1, "{ws}/ds/01_ST/SEG",
         setup=lambda ws: shutil.rmtree(ws / "ds/01_ST")),
    Case("predict-frame-truncated", PREDICT, 1, "{ws}/ds/01/t001.tif: damaged TIFF",
         setup=truncate("ds/01/t001.tif"), leaves=("res", "res/mask000.tif")),
    Case("predict-frame-not-a-tiff", PREDICT, 1, f"{{ws}}/{FRAME}: not a readable TIFF",
         setup=write(FRAME, b"\x89PNG not a TIFF")),
    Case("predict-frame-rgb", PREDICT, 1, f"{{ws}}/{FRAME}: a colour image",
         setup=tiff(FRAME, np.zeros((64, 64, 3), np.uint8))),
    Case("predict-frame-rgb-as-pixels", PREDICT, 1, f"{{ws}}/{FRAME}: an image 3 pixels wide",
         setup=tiff(FRAME, np.zeros((64, 64, 3), np.uint8), photometric="minisblack")),
    Case("predict-frame-4d", PREDICT, 1, f"{{ws}}/{FRAME}: a 4D image",
         setup=tiff(FRAME, np.zeros((2, *SHAPE), np.uint8))),
    Case("predict-frame-other-shape", PREDICT, 1, "{ws}/ds/01/t001.tif: shape (8, 64, 32)",
         setup=tiff("ds/01/t001.tif", np.zeros((8, 64, 32), np.uint8)),
         leaves=("res", "res/mask000.tif")),
    Case("predict-onnx-damaged", PREDICT, 1, "{ws}/models/segmentation.onnx: OpenVINO cannot",
         setup=truncate("models/segmentation.onnx")),
    Case("predict-keras-damaged", [*PREDICT, "--backend", "keras"], 1,
         "{ws}/models/segmentation.keras: Keras cannot",
         setup=truncate("models/segmentation.keras")),
    Case("predict-pipeline-damaged", PREDICT, 1, "{ws}/models/pipeline.json is not valid",
         setup=write("models/pipeline.json", b'{"postprocess": {"kind": "dist')),
    Case("predict-pipeline-bad-kind", PREDICT, 1, "postprocess.kind: 'watershed'",
         setup=write("models/pipeline.json", b'{"postprocess": {"kind": "watershed"}}')),
    Case("predict-network-missing", PREDICT, 1, "{ws}/models/segmentation.keras missing",
         setup=remove("models/segmentation.keras")),
    Case("pseudocolor-float-frame", ["pseudocolor", f"{{ws}}/{FRAME}", "{ws}/pc.tif"], 1,
         f"{{ws}}/{FRAME}: ", setup=tiff(FRAME, np.zeros(SHAPE, np.float32))),
    Case("pseudocolor-not-a-tiff", ["pseudocolor", f"{{ws}}/{FRAME}", "{ws}/pc.tif"], 1,
         f"{{ws}}/{FRAME}: not a readable TIFF", setup=write(FRAME, b"II*\x00 truncated")),
    Case("train-frames-mixed-digits", TRAIN, 1, "{ws}/ds/01: frame names mix [3, 4] digits",
         setup=lambda ws: shutil.copy(ws / FRAME, ws / "ds/01/t0005.tif")),
    Case("export-damaged-keras", ["export", "{ws}/models/segmentation.keras"], 1,
         "{ws}/models/segmentation.keras: Keras cannot",
         setup=truncate("models/segmentation.keras")),
    Case("download-not-found", DOWNLOAD, 1, f"training-datasets/{SERVED}.zip (HTTP 404)",
         setup=serve_zip(None)),
    Case("download-zip-escapes", DOWNLOAD, 1, "member '../../evil' has a '..' component",
         setup=serve_zip({f"{SERVED}/01/t000.tif": b"x", "../../evil": b"x"}),
         leaves=("resources", f"resources/{SERVED}.zip.refused")),
    Case("download-zip-file-and-folder", DOWNLOAD, 1, f"'{SERVED}/01' is both a file and a folder",
         setup=serve_zip({f"{SERVED}/01": b"x", f"{SERVED}/01/t000.tif": b"x"}),
         leaves=("resources", f"resources/{SERVED}.zip.refused")),
    Case("download-zip-without-dataset", DOWNLOAD, 1, "does not hold a CTC dataset",
         setup=serve_zip({f"{SERVED}/readme.txt": b"no frames"}),
         leaves=("resources", f"resources/{SERVED}.zip.refused")),
    Case("download-zip-damaged", DOWNLOAD, 1, "is damaged and has been deleted",
         setup=lambda ws: SERVER.serve(f"/training-datasets/{SERVED}.zip", b"PK\x03\x04junk"),
         leaves=("resources",)),
]  # fmt: skip


def test_the_table_is_large_and_unique() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def entries(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def file_server() -> FileServer:
    global SERVER
    with FileServer() as server:
        SERVER = server
        yield server


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    case: Case, workspace_template, file_server, tmp_path, caplog, capsys, monkeypatch
):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    ws = tmp_path / "ws"
    shutil.copytree(workspace_template, ws)
    if case.setup:
        case.setup(ws)
    before, names_before = digests(ws), entries(ws)
    args = [a.format(ws=ws, server=file_server.url) for a in case.args]
    caplog.clear()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == case.code
    expected = case.names.format(ws=ws)
    if case.argparse:
        assert expected in capsys.readouterr().err
    else:
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1, errors
        assert expected in errors[0].splitlines()[0]
    after = digests(ws)
    assert {k: v for k, v in after.items() if k in before} == before  # no input changed
    assert set(before) <= set(after)  # none deleted
    new = entries(ws) - names_before
    assert new == set(case.leaves)  # nothing half-written, no temporary file
    for name in new:
        if name.endswith(".tif"):  # a kept mask reads back whole, as a resumed run checks
            ctc.read_labels(ws / name, SHAPE)


def test_console_errors_are_one_line_without_traceback(workspace_template, tmp_path) -> None:
    """Through the installed command: stderr holds the one error line (after INFO lines)."""
    ws = tmp_path / "ws"
    shutil.copytree(workspace_template, ws)
    truncate("models/segmentation.onnx")(ws)
    command = Path(sys.executable).parent / "efficientcellseg"
    runs = {
        "usage": ([*PREDICT[:-1], str(ws / "file.txt")], 2),
        "run time": (PREDICT, 1),
        "argparse": (["predict", "--backend", "cuda"], 2),
    }
    for what, (args, code) in runs.items():
        args = [a.format(ws=ws) for a in args]
        result = subprocess.run([command, *args], capture_output=True, text=True, check=False)
        assert result.returncode == code, what
        assert "Traceback" not in result.stderr, what
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1, (what, result.stderr)


def test_submission_naming_an_unknown_dataset_is_a_settings_error() -> None:
    dataset = {"ctc_name": "X", "source": "ctc", "postprocess": {"kind": "single"}}
    config = {"submission": ["NOPE"], "datasets": {"x": dataset}}
    with pytest.raises(SettingsError, match=r"submission: \['NOPE'\] not among"):
        workflow_settings(config)
