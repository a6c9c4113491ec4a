"""(Re)train the toy world's text-to-image model, or with --scorer the shape classifier that scores its pictures.

    .venv/bin/python -m scripts.train_toyworld [--steps N] [--seed S] [--threads T] [--out FILE]
    .venv/bin/python -m scripts.train_toyworld --scorer

The code lives in nodes/toyworld/ (train.py, scorers.py); this is its command line.
"""
import sys

from scripts.pack_bootstrap import import_pack, toyworld_on_cpu


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    import_pack(cpu=toyworld_on_cpu())
    if "--scorer" in argv:
        from cad_pack.nodes.toyworld.scorers import main as train_scorer
        train_scorer()
    else:
        from cad_pack.nodes.toyworld.train import main as train_model
        train_model(argv)


if __name__ == "__main__":
    main()
