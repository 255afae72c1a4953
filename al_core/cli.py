"""`python -m al_core`: score a pool of images, or train a detector, from the command line.

python -m al_core score --checkpoint model.pt --images pool/ --strategy entropy --out ranked.csv
python -m al_core train --images train.json --out model.pt --epochs 12 [--loss-head]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path

from .datasets import DatasetError, read_dataset
from .detectors import DETECTORS, Detector
from .scoring import AGGREGATIONS, SCORERS, ScoringContext
from .training import TrainConfig, split_held_out, train_detector


def _param(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param takes key=value, got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m al_core", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="rank unlabeled images by informativeness, write a CSV")
    score.add_argument("--checkpoint", required=True, help="a checkpoint saved by this project")
    score.add_argument("--images", required=True, help="a folder, a COCO / Label Studio JSON file, or a VOC folder")
    score.add_argument("--image-root", help="folder that paths inside a JSON file are relative to")
    score.add_argument("--strategy", default="entropy", choices=sorted(SCORERS))
    score.add_argument("--aggregation", choices=AGGREGATIONS, help="box -> image aggregation of uncertainty scorers")
    score.add_argument("--param", action="append", type=_param, default=[], help="scorer parameter key=value")
    score.add_argument("--labeled", help="the labeled images (same forms as --images), for scorers that need them")
    score.add_argument("--budget", type=int, default=100, help="images to select")
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--device", default="auto")
    score.add_argument("--out", required=True, help="CSV to write: image, score (decreasing), ...")

    train = commands.add_parser("train", help="train a detector on labeled images, save a checkpoint")
    train.add_argument("--images", required=True, help="a COCO / Label Studio JSON file or a VOC folder")
    train.add_argument("--image-root")
    train.add_argument("--detector", default="cpu_preset", choices=sorted(DETECTORS))
    train.add_argument("--pretrained", default="backbone", choices=["none", "backbone", "coco"])
    train.add_argument("--loss-head", action="store_true", help="train a learning-loss head with the detector")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--min-steps", type=int, default=0, help="fewest steps: epochs raised to reach them")
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--version", default="v1", help="version name stored in the checkpoint")
    train.add_argument("--held-out", type=float, default=0.0, help="share of images held out to measure mAP")
    train.add_argument("--state", help="training state file: saved every epoch, resumed from when it exists")
    train.add_argument("--out", required=True)
    simulate = commands.add_parser("simulate", help="replay annotation cycles with the labels as the oracle")
    simulate.add_argument("--config", required=True, help="a YAML file; see bench/simulation/")
    simulate.add_argument("--out-dir", help="overrides the config's out_dir")
    simulate.add_argument("--seeds", type=int, nargs="+", help="overrides the config's seeds")
    simulate.add_argument(
        "--report-only", action="store_true", help="rewrite the report from out_dir's results.json, running nothing"
    )
    return parser


def simulate_command(args: argparse.Namespace) -> int:
    from .simulation import SimulationConfig, simulate
    from .simulation_report import markdown, seconds_markdown, write_report

    config = SimulationConfig.load(args.config, out_dir=args.out_dir, seeds=args.seeds)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    if args.report_only:
        rows = json.loads((Path(config.out_dir) / "results.json").read_text())
        rows = [row for row in rows if row["seed"] in config.seeds]
    else:
        rows = simulate(config)
    cost = config.cost_model().describe()
    paths = write_report(rows, config.out_dir, cost)
    print(markdown(rows))
    print("\n" + seconds_markdown(rows, cost))
    print("\n" + ", ".join(f"{kind}: {path}" for kind, path in paths.items()))
    print(
        f"reproduce: python -m al_core simulate --config {args.config}"
        + (f" --out-dir {args.out_dir}" if args.out_dir else "")
    )
    return 0


def score_command(args: argparse.Namespace) -> int:
    from .pool import score_pool
    from .ranked_csv import write_selection_csv

    detector = Detector.load(args.checkpoint, device=args.device)
    pool = read_dataset(args.images, args.image_root)
    labeled = read_dataset(args.labeled, args.image_root).images if args.labeled else ()
    params = dict(args.param)
    if args.aggregation:
        params["aggregation"] = args.aggregation
    context = ScoringContext(labeled=labeled, budget=args.budget, seed=args.seed)
    scored = score_pool(detector, pool.paths, args.strategy, params, context, args.batch_size, progress=True)
    selection = scored.select()
    path = write_selection_csv(selection, args.out)
    print(f"{len(selection.images)} images ranked by {selection.rule} with {selection.model_version} -> {path}")
    return 0


def train_command(args: argparse.Namespace) -> int:
    import torch

    data = read_dataset(args.images, args.image_root)
    if not data.class_names:
        raise DatasetError(f"{args.images} has no labeled boxes to train on")
    device, chief = args.device, True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: one process per GPU (or CPU)
        import torch.distributed as dist

        cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
        dist.init_process_group("nccl" if cuda else "gloo")
        device = f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu"
        chief = dist.get_rank() == 0
    torch.manual_seed(args.seed)  # the same initial weights on every worker
    detector = Detector.create(
        args.detector, data.class_names, args.pretrained, device=device, loss_head=args.loss_head
    )
    config = TrainConfig(
        epochs=args.epochs, min_steps=args.min_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    train, held_out = split_held_out(data.images, args.held_out, seed=args.seed)
    result = train_detector(detector, train, config, held_out, show_progress=True, state_path=args.state)
    if not chief:
        return 0
    detector.save(args.out, args.version)
    print(
        f"trained {result.iterations} steps in {result.seconds:.0f} s, last loss {result.final_loss:.3f} -> {args.out}"
    )
    if result.metrics:
        stopped = " (stopped early)" if result.stopped_early else ""
        metrics = result.metrics
        print(f"held-out mAP {metrics['map']:.3f}, mAP@0.5 {metrics['map50']:.3f}, epochs {result.epochs}{stopped}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"score": score_command, "train": train_command, "simulate": simulate_command}
        return commands[args.command](args)
    except (DatasetError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
