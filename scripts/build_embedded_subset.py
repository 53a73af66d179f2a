"""Build data/imagenette-mini/: a small, balanced, real Imagenette subset with its official noisy labels.

    python scripts/build_embedded_subset.py [SOURCE] [--out data/imagenette-mini] [--train-per-class 160]
        [--val-per-class 70] [--size 96] [--quality 85] [--seed 0]

SOURCE is any imagenette2 archive (.tgz; default: the shared 224 px copy
../shared/data/imagenette/imagenette2-224.tgz beside the repository) or an extracted folder with train/,
val/ and noisy_imagenette.csv. The selection is deterministic (sorted paths, random.Random(seed)):

- val: `val-per-class` images per class, drawn uniformly;
- train: `train-per-class` images per class, stratified on the flip pattern of the four official noise
  columns (which of noisy_labels_1/5/25/50 differ from noisy_labels_0), so each column's flip rate in the
  subset stays close to the official 1 / 5 / 25 / 50 %; then single swaps inside a class and pattern
  neighbourhood bring each column's flip count to round(rate * n) where possible.

Images are re-encoded as JPEG (shorter side `size` px, `quality`), under the official relative paths;
noisy_imagenette.csv keeps the official rows for the chosen files, byte for byte and in the official order.
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "imagenette" / "imagenette2-224.tgz"
CSV_NAME = "noisy_imagenette.csv"
NOISE_COLUMNS = ("noisy_labels_1", "noisy_labels_5", "noisy_labels_25", "noisy_labels_50")


class Source:
    """Read the CSV and chosen images from an archive (streamed, no extraction) or a folder."""

    def __init__(self, path: Path):
        self.path = path

    def csv_text(self) -> str:
        if self.path.is_dir():
            return (self.path / CSV_NAME).read_text()
        with tarfile.open(self.path) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).name == CSV_NAME:
                    self.prefix = str(Path(member.name).parent)  # the archive's top folder
                    return tar.extractfile(member).read().decode()
        sys.exit(f"{self.path}: no {CSV_NAME} inside; is it an imagenette2 archive?")

    def images(self, wanted: set[str]):
        """Yield (relative path, bytes) for every wanted file."""
        if self.path.is_dir():
            for rel in sorted(wanted):
                yield rel, (self.path / rel).read_bytes()
            return
        with tarfile.open(self.path) as tar:
            for member in tar:
                rel = str(Path(member.name).relative_to(self.prefix)) if self.prefix != "." else member.name
                if member.isfile() and rel in wanted:
                    yield rel, tar.extractfile(member).read()


def parse_rows(text: str) -> tuple[str, list[str], list[dict]]:
    lines = text.splitlines()
    header = lines[0].split(",")
    return lines[0], lines[1:], [dict(zip(header, line.split(","))) for line in lines[1:]]


def pattern(row: dict) -> tuple[bool, ...]:
    return tuple(row[c] != row["noisy_labels_0"] for c in NOISE_COLUMNS)


def flip(key: tuple[bool, ...], col: int) -> tuple[bool, ...]:
    return key[:col] + (not key[col],) + key[col + 1:]


def allocate(groups: dict, total: int) -> dict:
    """Largest-remainder split of `total` over groups, proportional to their sizes."""
    size = sum(len(g) for g in groups.values())
    quota = {k: total * len(g) / size for k, g in groups.items()}
    counts = {k: int(q) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: (counts[k] - quota[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def select_train(rows: list[dict], per_class: int, rng: random.Random) -> list[dict]:
    """Per class: stratified on the flip pattern, then swaps to match each column's official flip count."""
    by_class = defaultdict(lambda: defaultdict(list))
    for row in sorted(rows, key=lambda r: r["path"]):
        by_class[row["noisy_labels_0"]][pattern(row)].append(row)
    chosen, spare = {}, {}
    for wnid in sorted(by_class):
        groups = by_class[wnid]
        if sum(map(len, groups.values())) < per_class:
            sys.exit(f"class {wnid} has fewer than {per_class} train images")
        for key, count in allocate(groups, per_class).items():
            picked = rng.sample(groups[key], count)
            chosen[wnid, key] = picked
            spare[wnid, key] = [r for r in groups[key] if r not in picked]

    # Each column's target: its official rate times the subset size. Swap one chosen row for a spare of
    # the same class whose pattern differs in that column only, in the class furthest from its own
    # share, until the count matches (the other columns' counts stay as they are).
    n = per_class * len(by_class)
    for col, column in enumerate(NOISE_COLUMNS):
        official = sum(pattern(r)[col] for r in rows) / len(rows)
        target, swaps = round(official * n), 0

        def excess(wnid):
            return sum(key[col] * len(v) for (w, key), v in chosen.items() if w == wnid) - official * per_class  # noqa: B023,E501

        while (have := sum(key[col] * len(v) for (_, key), v in chosen.items())) != target:
            want = have < target  # True: turn an unflipped row into a flipped one
            options = [(w, key) for (w, key), picked in chosen.items()
                       if key[col] != want and picked and spare.get((w, flip(key, col)))]
            if not options:
                break  # no swap left: keep the closest count
            wnid, key = min(options, key=lambda o: (excess(o[0]) if want else -excess(o[0]), o))
            swap = flip(key, col)
            spare[wnid, key].append(chosen[wnid, key].pop())
            chosen.setdefault((wnid, swap), []).append(spare[wnid, swap].pop(0))
            swaps += 1
        print(f"  {column}: {swaps} swaps after stratification")
    return [r for picked in chosen.values() for r in picked]


def select_val(rows: list[dict], per_class: int, rng: random.Random) -> list[dict]:
    by_class = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["path"]):
        by_class[row["noisy_labels_0"]].append(row)
    return [r for wnid in sorted(by_class) for r in rng.sample(by_class[wnid], per_class)]


def reencode(data: bytes, size: int, quality: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = size / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE,
                        help="imagenette2 archive (.tgz) or extracted folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "imagenette-mini")
    parser.add_argument("--train-per-class", type=int, default=160)
    parser.add_argument("--val-per-class", type=int, default=70)
    parser.add_argument("--size", type=int, default=96, help="shorter side in px")
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.source.exists():
        sys.exit(f"{args.source} not found: pass an imagenette2 archive (e.g. imagenette2-160.tgz) or folder.")

    source = Source(args.source)
    header, lines, rows = parse_rows(source.csv_text())
    rng = random.Random(args.seed)
    train = select_train([r for r in rows if r["is_valid"] == "False"], args.train_per_class, rng)
    val = select_val([r for r in rows if r["is_valid"] == "True"], args.val_per_class, rng)
    wanted = {r["path"] for r in train + val}

    # Replace only what this script writes, never anything else in --out.
    for name in ("train", "val"):
        shutil.rmtree(args.out / name, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for rel, data in source.images(wanted):
        target = args.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(reencode(data, args.size, args.quality))
        sizes[rel] = target.stat().st_size
    if set(sizes) != wanted:
        sys.exit(f"{len(wanted - set(sizes))} chosen images were not found in {args.source}")
    kept = [line for line, row in zip(lines, rows) if row["path"] in wanted]  # official order, exact bytes
    (args.out / CSV_NAME).write_text("\n".join([header, *kept]) + "\n")

    total = sum(sizes.values()) + (args.out / CSV_NAME).stat().st_size
    print(f"{args.out}: {len(train)} train + {len(val)} val images "
          f"({args.train_per_class}/{args.val_per_class} per class), {total / 1e6:.2f} MB in all, "
          f"largest file {max(sizes.values()) / 1e3:.1f} kB")
    official_train = [r for r in rows if r["is_valid"] == "False"]
    for col, column in enumerate(NOISE_COLUMNS):
        sub = sum(pattern(r)[col] for r in train)
        off = sum(pattern(r)[col] for r in official_train)
        print(f"  {column}: {sub}/{len(train)} flipped = {sub / len(train):.2%} "
              f"(official {off}/{len(official_train)} = {off / len(official_train):.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
