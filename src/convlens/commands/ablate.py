"""``convlens ablate``: train Table 3's architecture variants with one recipe and tabulate their errors.

Writes into ``--out``: one run directory per variant (``base/``, ``no34/`` ...; resumable),
``ablate.md`` (Table 3 layout), ``errors.png`` (val top-1/top-5 per variant) and ``result.json``
(kind ``ablate``).
"""
from __future__ import annotations

import argparse

from convlens.commands._common import add_device_arg, add_out_arg
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="train architecture variants (Table 3) with the same recipe and tabulate their errors",
        description="Train each variant (base, no34, no7, no67, no3467, fc-x0.5, fc-x2, wide345, combined with +) "
        "of --arch with the same recipe, seed and data into OUT/<variant>/ and tabulate train top-1, val top-1 "
        "and val top-5 error. Finished variants are skipped and partial ones resumed when run again.",
        epilog="example: convlens ablate --arch zfnet-small --variants base,no34,no67,fc-x2 --dataset cifar10 "
        "--data-dir ../shared/data/cifar10 --epochs 2 --limit-train 10000 --out runs/ablate",
    )
    p.add_argument("--arch", default="zfnet-small", help="base architecture (default zfnet-small)")
    p.add_argument("--variants", default="base,no34,no7,no67,no3467,fc-x0.5,fc-x2,wide345",
                   help="comma-separated variants; 'base' = the unmodified arch (default: Table 3's rows)")
    p.add_argument("--dataset", required=True, help="fashion-mnist, cifar10 or an ImageFolder directory")
    p.add_argument("--data-dir", default=None, help="where a named dataset lives")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--init", choices=("paper", "kaiming"), default="kaiming",
                   help="weight init (default kaiming: short runs; the paper's is 'paper')")
    p.add_argument("--no-clip", action="store_true", help="turn off feature-scale clipping")
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N",
                   help="train on a random subset of N images (seeded, the same for every variant)")
    p.add_argument("--limit-val", type=positive_int, default=None, metavar="N",
                   help="validate on a random subset of N images (seeded)")
    p.add_argument("--ensemble", action="store_true", help="add a row: all variants' softmax averaged (Table 2)")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    p.add_argument("--workers", type=int, default=0)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.io.artifacts import markdown_table, write_result, write_text
    from convlens.training.ablate import ablate, random_subsets, variant_arch
    from convlens.training.ablate_figures import plot_errors
    from convlens.training.recipe import TrainConfig

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise ValueError("--variants is empty; e.g. --variants base,no34,no67")
    for v in variants:
        variant_arch(args.arch, v)  # validates names before any training
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, data_dir=args.data_dir, out=str(args.out),
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, init=args.init,
                      clip_radius=None if args.no_clip else 0.1, seed=args.seed, device=args.device,
                      workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    data = random_subsets(cfg, args.out, args.limit_train, args.limit_val, args.seed)
    res = ablate(cfg, variants, out=args.out, datasets=data, ensemble=args.ensemble, progress=True)
    cols, rows = res.table()
    table = {"title": f"Ablations of {args.arch} (Table 3 layout), error %", "columns": cols, "rows": rows}
    write_text(args.out / "ablate.md", f"### {table['title']}\n\n" + markdown_table(cols, rows))
    best = min(res.rows, key=lambda r: r.val_top1_err)
    summary = (f"{len(res.rows)} variants of {args.arch}, {args.epochs} epochs on {args.dataset}: best val top-1 "
               f"error {100 * best.val_top1_err:.1f}% ({best.variant})")
    write_result(args.out, "ablate", title="Ablations (Tables 2-3)", summary=summary,
                 params={**res.params, "dataset": args.dataset, "lr": args.lr, "init": args.init,
                         "clip": not args.no_clip, "limit_train": args.limit_train, "limit_val": args.limit_val,
                         "seed": args.seed},
                 figures=[plot_errors(res, args.out)], tables=[table], data=res.to_dict())
    print(markdown_table(cols, rows))
    print(f"wrote {args.out / 'result.json'}")
    return 0
