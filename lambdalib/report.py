"""The report's tables and figures, rebuilt from run records only: `report.build()` turns results/runs/*/ into
results/{README.md, tables/, figures/}.

Only finished runs (complete, diverged: marked) make tables and figures: an unfinished run's best values cover part
of its schedule. A cell is one experiment (mean ± sample std over seeds); each set-up (lambdalib.runs) gets its own
section and figures, so runs that differ in anything but model, lambda layer, noise and seed are never compared.
One table per model family (registry.FAMILIES), the published numbers (lambdalib/published.csv) beside ours.
Everything is computed first, then swapped in (`_publish`): a failed build leaves the old report whole, and one
killed within the swap's six renames is replaced whole by the next. Written files hold no absolute paths, so a
rebuild anywhere writes the same bytes.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from . import claims, figures, files, fmt, paths, registry
from .record import FINISHED
from .runs import SETUP_COLUMNS, SMOKE_EPOCHS, aggregate, diverged_epoch, finished_runs, load_runs

log = logging.getLogger(__name__)

CLASSES = figures.CLASSES  # Imagenette's 10: chance accuracy is 1/10
NO_RUNS = figures.NO_RUNS  # "No runs yet.": the words of an empty table or figures section


def tables() -> dict[int, registry.Family]:
    """The report's tables, by number: one per model family (registry.FAMILIES)."""
    return {f.table: f for f in sorted(registry.FAMILIES.values(), key=lambda f: f.table)}


TABLE_COLUMNS = SETUP_COLUMNS + [
    "table", "experiment_id", "architecture", "label", "model", "noise", "n_runs", "seeds", "status",
    "best_train_loss", "best_train_loss_std", "best_val_loss", "best_val_loss_std", "train_time_s", "train_time_s_std",
    "training_time", "best_val_acc", "best_val_acc_std", "best_val_loss_epoch", "diverged_at", "n_diverged", "params",
    "gflops", "mean_train_images_per_s", "mean_train_images_per_s_std", "run_ids"]


def results_table(cells: pd.DataFrame, number: int) -> pd.DataFrame:
    """Table `number` as data, one row per cell, every set-up (the CSV)."""
    rows = cells if cells.empty else cells[cells["family"] == tables()[number].key].copy()
    if rows.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    rows["table"] = number
    rows["training_time"] = rows["train_time_s"].map(fmt.duration)
    return rows[TABLE_COLUMNS]


def results_table_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """A results_table (one set-up) in the report's layout plus the columns the report lacked; a value a
    run does not have (a run that diverged in its first epoch has no best) reads '—'."""
    def mean_std(metric: str, show) -> list[str]:
        return [fmt.with_std(m, s, show) for m, s in zip(table[metric], table[f"{metric}_std"])]

    return pd.DataFrame({
        "Architecture": table["architecture"],
        "Best train loss": mean_std("best_train_loss", fmt.number),
        "Best val loss": mean_std("best_val_loss", fmt.number),
        "Training time": mean_std("train_time_s", fmt.duration),
        "Best val top-1": mean_std("best_val_acc", fmt.percent),
        "Epoch of best val loss": table["best_val_loss_epoch"].map(lambda e: e.replace(";", ", ") or "—"),
        "Diverged at": [("—" if not d else f"epoch {d.replace(';', ', ')}" + (f" ({k}/{n} runs)" if n > 1 else ""))
                        for d, k, n in zip(table["diverged_at"], table["n_diverged"], table["n_runs"])],
        "Params": table["params"].map(lambda p: "—" if pd.isna(p) else f"{p / 1e6:.2f}M"),
        "GFLOPs": table["gflops"].map(lambda g: "—" if pd.isna(g) else f"{g:.3g}"),
        "img/s": mean_std("mean_train_images_per_s", lambda v: fmt.number(v, 1)),
        "Runs (seeds)": [f"{n} ({s.replace(';', ', ')})" for n, s in zip(table["n_runs"], table["seeds"])],
    })


PUBLISHED = ("best_train_loss", "best_val_loss", "training_time", "training_time_s")  # published_<column>
OURS = ("best_train_loss", "best_val_loss", "train_time_s", "n_runs", "diverged_at")  # ours_<column>
COMPARISON_COLUMNS = SETUP_COLUMNS + [
    "table", "architecture", "label", "noise", "published_best_train_loss", "ours_best_train_loss",
    "published_best_val_loss", "ours_best_val_loss", "published_training_time", "published_training_time_s",
    "ours_train_time_s", "ours_n_runs", "ours_diverged_at", "note"]


def comparison_table(cells: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Published vs ours, row by row (best train/val loss, training time), one block per set-up: every published
    row appears (missing values stay NaN), and our cells without a published counterpart (e.g. 1 % noise) are
    added to their table. Without runs, ours is empty."""
    pub = published.rename(columns={c: f"published_{c}" for c in PUBLISHED})
    order = {s.label: i for i, s in enumerate(registry.SPECS.values())}
    setups = cells[SETUP_COLUMNS].drop_duplicates("setup") if not cells.empty else pd.DataFrame([{}])
    blocks = []
    for _, setup in setups.iterrows():
        ours = pd.DataFrame(columns=["label", "noise"])
        if not cells.empty:  # a cell of a model outside the registry (a timm model) has no table
            mine = cells[(cells["setup"] == setup["setup"]) & cells["family"].isin(list(registry.FAMILIES))]
            ours = mine[["label", "noise", *OURS]].rename(columns={c: f"ours_{c}" for c in OURS})
            ours["ours_table"] = [registry.FAMILIES[f].table for f in mine["family"]]
        block = pub.merge(ours, on=["label", "noise"], how="outer")
        if "ours_table" in block:
            block["table"] = block["table"].fillna(block["ours_table"])
        block.loc[block["source"].isna(), "note"] = "the report has no such row (e.g. no 1 % noise runs)"
        block["architecture"] = [a if isinstance(a, str) else fmt.architecture(lab, n)
                                 for a, lab, n in zip(block["architecture"], block["label"], block["noise"])]
        block = block.assign(**{c: setup.get(c, "") for c in SETUP_COLUMNS}, _order=block["label"].map(order))
        blocks.append(block.sort_values(["table", "_order", "noise"]).reindex(columns=COMPARISON_COLUMNS))
    out = pd.concat(blocks, ignore_index=True)
    out["table"] = out["table"].astype(int)
    return out


def comparison_markdown(block: pd.DataFrame) -> str:
    """One set-up's comparison as markdown; a value the report lacks reads 'missing', notes are footnotes."""
    pub = lambda v: "missing" if pd.isna(v) else fmt.number(v)  # noqa: E731
    notes = list(dict.fromkeys(n for n in block["note"].fillna("") if n))  # distinct, in row order
    table = pd.DataFrame({
        "Table": block["table"],
        "Architecture": block["architecture"],
        "Train loss: published": block["published_best_train_loss"].map(pub),
        "Train loss: ours": block["ours_best_train_loss"].map(fmt.number),
        "Val loss: published": block["published_best_val_loss"].map(pub),
        "Val loss: ours": block["ours_best_val_loss"].map(fmt.number),
        "Time: published": [("missing" if pd.isna(s) else fmt.duration(s))
                            for s in block["published_training_time_s"]],
        "Time: ours": block["ours_train_time_s"].map(fmt.duration),
        "Ours diverged at": block["ours_diverged_at"].map(
            lambda d: d.replace(";", ", ") if isinstance(d, str) and d else "—"),
        "Note": block["note"].map(lambda n: f"[{notes.index(n) + 1}]" if isinstance(n, str) and n else ""),
    })
    footnotes = "".join(f"- [{i}] {note}\n" for i, note in enumerate(notes, 1))
    return fmt.markdown_table(table, NO_RUNS) + (f"\nNotes on the published numbers:\n\n{footnotes}" if notes else "")


RUNS_INDEX_COLUMNS = ["Run", "Status", "Set-up", "Architecture", "Seed", "Epochs", "Best val loss",
                      "Best val top-1", "Training time", "Device", "In tables"]


def _status_text(run: pd.Series, updated) -> str:
    status, diverged_at = run["status"], diverged_epoch(run)
    if diverged_at is not None:
        return f"diverged at epoch {diverged_at}"
    if status == "crashed":
        return (f"crashed (says running, but no process holds its lock; last update {updated}; "
                "re-run the same command to resume)")
    if status == "running":
        return f"running (last update {updated})"
    return status


def runs_index(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run record, finished or not, with its status (the unfinished ones are not in the tables)."""
    if runs.empty:
        return pd.DataFrame(columns=RUNS_INDEX_COLUMNS)
    known = runs.reindex(columns=["updated", "env_device"]).fillna({"updated": "unknown", "env_device": "?"})
    return pd.DataFrame({
        "Run": runs["run_id"],
        "Status": [_status_text(run, u) for (_, run), u in zip(runs.iterrows(), known["updated"])],
        "Set-up": runs["setup"],
        "Architecture": runs["architecture"],
        "Seed": runs["seed"],
        "Epochs": [f"{int(d) if pd.notna(d) else 0}/{e}" for d, e in zip(runs["epochs_done"], runs["epochs"])],
        "Best val loss": runs["best_val_loss"].map(fmt.number),
        "Best val top-1": runs["best_val_acc"].map(fmt.percent),
        "Training time": runs["train_time_s"].map(fmt.duration),
        "Device": known["env_device"],
        "In tables": runs["status"].map(lambda s: "yes" if s in FINISHED else f"no ({s})"),
    })


# --------------------------------------------------------------------------------------- figures
def figure_panels(runs: pd.DataFrame | None = None) -> dict[str, tuple[registry.Family, str]]:
    """figure stem -> (model family, title): one loss-curves figure per report table that has finished runs in
    `runs` (one set-up's; None: every table); a table without runs has no figure."""
    have = set() if runs is None or runs.empty else {registry.split_label(label)[0] for label in runs["label"]}
    return {f.figure_stem: (f, f"Table {n}: {f.title}" + ("" if f.position is None else " vs ResNet")
                            + " — loss per epoch")
            for n, f in tables().items() if runs is None or have & {f.label(d) for d in f.depths}}


def plot_run(run_dir: Path | str, path: Path | str | None = None) -> Path:
    """One run's train/val loss curves (the family notebooks' closing figure), saved as run_dir/curves.png; here,
    not in figures.py, so that the run is read as the tables read it (status, set-up label)."""
    run_dir = Path(run_dir)
    found, _ = load_runs(None, [run_dir], strict=True)  # an unreadable record raises, naming the file
    if found.empty:
        raise FileNotFoundError(f"{run_dir} is not a run record (no summary.json)")
    return figures.save_png(figures.run_figure(found.iloc[0]), Path(path) if path else run_dir / "curves.png")


# ----------------------------------------------------------------------------------------- build
def _distinct(runs: pd.DataFrame, column: str) -> str:
    """'A' when every run agrees, else 'A (3 runs); B (1 run)'."""
    if runs.empty or column not in runs:
        return "—"
    counts = runs[column].fillna("unknown").astype(str).value_counts().sort_index()
    if len(counts) == 1:
        return f"`{counts.index[0]}`"
    return "; ".join(f"`{v}` ({fmt.plural(n, 'run')})" for v, n in counts.items())


def _provenance(runs: pd.DataFrame, skipped: list[dict]) -> str:
    """What produced the numbers: data, preset, hardware, torch, commit (each distinct value when runs differ)."""
    if runs.empty:
        lines = ["- Run records: none readable" if skipped else f"_{NO_RUNS}_"]
    else:
        status = runs["status"].value_counts().sort_index()
        finished = finished_runs(runs)
        finished = finished if not finished.empty else runs  # only unfinished runs: describe those
        lines = [
            f"- Run records: {len(runs)} ({', '.join(f'{n} {s}' for s, n in status.items())}); "
            "the tables and figures use the complete and diverged ones",
            f"- Data: {_distinct(finished, 'data_desc')}",
            f"- Preset: {_distinct(finished, 'preset')}",
            f"- Hardware: {_distinct(finished, 'env_device')} (world size {_distinct(finished, 'env_world_size')}, "
            f"AMP {_distinct(finished, 'amp')})",
            f"- torch: {_distinct(finished, 'env_torch')}, Python {_distinct(finished, 'env_python')}",
            f"- git commit: {_distinct(finished, 'env_git_commit')}",
        ]
        if "updated" in finished and finished["updated"].notna().any():
            lines.append(f"- Latest run record update: {finished['updated'].dropna().max()}")
    if skipped:
        lines.append(f"- Unreadable run records, skipped: {len(skipped)} (listed under "
                     "[Unreadable run records](#unreadable-run-records-skipped))")
    return "\n".join(lines) + "\n"


PLACEHOLDER = dict(setup="no-runs", setup_label=NO_RUNS, scale="", smoke_test=False)  # the empty report's


def _of(frame: pd.DataFrame, setup: dict) -> pd.DataFrame:
    """The rows of one set-up (all rows for the empty report's placeholder)."""
    return frame if setup is PLACEHOLDER or frame.empty else frame[frame["setup"] == setup["setup"]]


def _banner(setup: dict) -> str:
    """The set-up's scale, as a quote above its tables: a smoke test says so in bold wherever it is read."""
    if setup is PLACEHOLDER:
        return ""
    return f"> **{setup['scale']}**\n" if setup["smoke_test"] else f"> {setup['scale']}\n"


def _sections(setups: list[dict], texts: dict[str, str]) -> str:
    """One '###' section per set-up (texts: set-up -> markdown), opening with its scale (no heading when empty)."""
    return "\n".join(texts[s["setup"]] if s is PLACEHOLDER
                     else f"### {s['setup_label']}\n\n{_banner(s)}\n{texts[s['setup']]}" for s in setups)


def _what_this_is(setups: list[dict], n_runs: int) -> tuple[str, str]:
    """(the README's title, its opening lines): what the report holds, derived from the set-ups' scale."""
    if setups == [PLACEHOLDER]:
        opening = "No finished runs yet" + (f" ({fmt.plural(n_runs, 'unfinished run record')})." if n_runs else ".")
        return "# Lambda-ResNets on small data: results", f"**{opening}**\n"
    smoke = [s for s in setups if s["smoke_test"]]
    title = ("# Lambda-ResNets on small data: a smoke test of the pipeline, not results" if len(smoke) == len(setups)
             else "# Lambda-ResNets on small data: results")
    if len(setups) == 1:
        return title, _banner(setups[0])
    which = ("all are smoke tests" if len(smoke) == len(setups) else
             f"{len(smoke)} of them {'is a smoke test' if len(smoke) == 1 else 'are smoke tests'}")
    lines = [f"**This report holds {len(setups)} set-ups"
             + (f"; {which} of the pipeline, not results" if smoke else "") + ":**\n"]
    lines += [f"- {'**' + s['scale'] + '**' if s['smoke_test'] else s['scale']}" for s in setups]
    return title, "\n".join(lines) + "\n"


def build(results_dir: Path | str | None = None, runs=None, out: Path | str | None = None, *,
          quiet: bool = False) -> Path:
    """Rebuild the report from the run records under results_dir/runs/ (default: the project's results/; `runs`:
    these run folders instead) into `out` (default: results_dir); returns the path of its README.md. A results_dir
    without runs/ is a FileNotFoundError that creates nothing (a mistyped --results); an empty runs/ gives the "No
    runs yet" report. Logs every path written unless quiet."""
    results_dir = Path(results_dir) if results_dir else paths.results_dir()
    out = Path(out) if out else results_dir
    if runs is None and not (results_dir / "runs").is_dir():
        raise FileNotFoundError(f"no run records found at {results_dir / 'runs'} (no such folder); train some first "
                                "(`lambdalib train`, `lambdalib demo`) or name the results folder that holds runs/ "
                                "(--results on the command line, -p results in a notebook)")
    all_runs, skipped = load_runs(results_dir, runs)
    finished = finished_runs(all_runs)
    cells = aggregate(all_runs)
    setups = (finished[["setup", "setup_label", "scale", "smoke_test"]].drop_duplicates("setup").to_dict("records")
              if not finished.empty else [PLACEHOLDER])
    outputs: dict[str, bytes | str] = {}  # everything first, then written: a failure leaves the old report

    # tables: one CSV with every set-up (set-up columns) and one markdown with a section per set-up
    families = tables()
    frames = {number: results_table(cells, number) for number in families}
    table_md = {n: {s["setup"]: fmt.markdown_table(results_table_markdown(_of(frames[n], s)), NO_RUNS)
                    for s in setups} for n in families}
    for number, family in families.items():
        outputs[f"tables/{family.table_stem}.csv"] = frames[number].to_csv(index=False, lineterminator="\n")
        outputs[f"tables/{family.table_stem}.md"] = (f"## Table {number}: {family.title}\n\n"
                                                     + _sections(setups, table_md[number]))
    comparison = comparison_table(cells, registry.published())
    comparison_md = {s["setup"]: comparison_markdown(_of(comparison, s)) for s in setups}
    outputs["tables/comparison.csv"] = comparison.to_csv(index=False, lineterminator="\n")
    outputs["tables/comparison.md"] = "## Published vs ours\n\n" + _sections(setups, comparison_md)
    index = runs_index(all_runs)
    skipped_md = fmt.markdown_table(pd.DataFrame(skipped, columns=["Run", "File", "Problem"]), "None.")
    internal = [c for c in all_runs.columns if c.startswith("_")]
    runs_csv = all_runs.drop(columns=["family", "model_order", "environment", *internal], errors="ignore")
    outputs["tables/runs.csv"] = runs_csv.to_csv(index=False, lineterminator="\n")  # env_* kept
    outputs["tables/runs.md"] = ("## Run records\n\n" + fmt.markdown_table(index, NO_RUNS)
                               + "\n## Unreadable run records (skipped)\n\n" + skipped_md)

    # the README: what it is, provenance, then per set-up its tables, the comparison and the figures
    title, opening = _what_this_is(setups, len(all_runs))
    readme = [
        f"{title}\n", opening,
        "Generated by `lambdalib report` (`lambdalib.report.build`) from the run records under "
        f"`{results_dir.name}/runs/` only; do not edit, rerun. Published numbers: `lambdalib/published.csv`, "
        "transcribed from the report (its Table 3 repeats Table 5, so the L3 rpe numbers are missing).\n",
        "## Provenance\n", _provenance(all_runs, skipped),
        "Tables: one row per experiment (every setting that changes what is computed is equal; only seeds "
        "are averaged, as mean ± sample std when a row has several); runs that differ in any other setting "
        "are in different set-ups. A set-up is a smoke test of the pipeline, not a result, when it trains "
        f"fewer than {SMOKE_EPOCHS} epochs or on a per-class subset (`train_per_class`, `val_per_class`); one "
        "on the whole embedded mini subset is a small-scale study. Training time is the sum of epoch times; a "
        "run diverges when a loss is non-finite, its train loss exceeds `diverge_factor` × ln(classes) or its "
        "val loss `diverge_factor` × its first epoch's, ln(classes) at the least, with BatchNorm on its running and "
        "its batch statistics alike (the reason is in its summary.json), and its best values are those of the "
        "epochs before (— when it has none). Full-precision CSVs are in `tables/`.\n",
    ]
    if not finished.empty:  # the report's claims, one by one, from these records (lambdalib.claims)
        readme.append(claims.claims_markdown(all_runs, results_dir=results_dir))
    readme += _trained_attention(out)
    for setup in setups:
        readme.append("## Results\n" if setup is PLACEHOLDER
                      else f"## Set-up: {setup['setup_label']}\n\n{_banner(setup)}")
        for number, family in families.items():
            readme.append(f"### Table {number}: {family.title} ([csv](tables/{family.table_stem}.csv))\n\n"
                          + table_md[number][setup["setup"]])
        banner = _banner(setup) + "\n" if setup is not PLACEHOLDER else ""  # the scale, right above the table
        readme.append(f"### Published vs ours ([csv](tables/comparison.csv))\n\n{banner}"
                      + comparison_md[setup["setup"]])
        readme.append("### Figures\n")
        folder = f"figures/{setup['setup']}"
        mine = _of(finished, setup)
        heading = "" if setup is PLACEHOLDER else f"\n{setup['setup_label']}"
        panels = figure_panels(mine)  # only tables with runs here have a figure
        for stem, (family, name) in panels.items():
            outputs[f"{folder}/{stem}.png"] = figures.png_bytes(figures.curves_figure(mine, family, name + heading))
            readme.append(f"![{name}]({folder}/{stem}.png)\n")
        if figures.has_accuracy(_of(cells, setup)):
            outputs[f"{folder}/accuracy_vs_noise.png"] = figures.png_bytes(figures.accuracy_figure(
                _of(cells, setup), f"Best val top-1 at each measured label noise{heading}"))
            readme.append(f"![Best val top-1 vs noise]({folder}/accuracy_vs_noise.png)\n")
        without = [str(n) for n, f in families.items() if f.figure_stem not in panels]
        if not panels:
            readme.append(f"_{NO_RUNS}_\n")
        elif without:  # a table without runs here has no figure, rather than an empty one
            readme.append(f"_No loss curves for Table{'s' * (len(without) > 1)} {', '.join(without)}: no runs in "
                          "this set-up._\n")
    readme.append("## Unfinished runs (not in the tables or figures)\n\n"
                  + fmt.markdown_table(index[index["In tables"] != "yes"], "None."))
    readme.append("## Unreadable run records (skipped)\n\n" + skipped_md)
    readme.append("## All run records ([csv](tables/runs.csv))\n\n" + fmt.markdown_table(index, NO_RUNS))
    outputs["README.md"] = "\n".join(readme)

    written = _publish(out, outputs)
    if not quiet:
        log.info(f"report: {len(all_runs)} run records"
                 + (f" ({len(skipped)} unreadable, skipped)" if skipped else "") + f" -> {len(written)} files")
        for path in written:
            log.info(f"  {path}")
    return out / "README.md"


def _trained_attention(out: Path) -> list[str]:
    """The FullGrad figure of our trained models and its table, when `lambdalib attention --trained` has
    drawn them (it needs the checkpoints, which are not committed; the report only shows what it wrote)."""
    figure, caption = out / "figures" / "attention_trained.png", out / "figures" / "attention_trained.md"
    table = out / "tables" / "attention_trained.csv"
    if not (figure.exists() and table.exists()):
        return []
    from .attention import attention_table_markdown  # late: timm and grad-cam only with figure 7

    # the caption file embeds its PNG by a path relative to figures/: the README embeds it once, above
    lines = caption.read_text().splitlines() if caption.exists() else []
    text = "\n".join(line for line in lines if not line.startswith("![")).strip()
    text = text + "\n\n" if text else ""
    return ["## FullGrad maps of our trained models (the report's figure 7)\n\n"
            "Drawn by `lambdalib attention --trained` from the best checkpoints of the runs named below "
            "([csv](tables/attention_trained.csv)).\n\n"
            f"![FullGrad maps of our trained models](figures/attention_trained.png)\n\n{text}"
            + attention_table_markdown(table)]


MANIFEST = "tables/.report-files"  # every file the last build wrote, one per line


def _publish(out: Path, outputs: dict[str, bytes | str]) -> list[Path]:
    """Write the report into a staging folder beside it, then swap it in whole (README.md last); what a killed
    build left is removed by the next one. Files the previous build wrote and this one does not are gone; files
    others put in tables/ or figures/ (figure 7's) are kept; a file no build wrote (the user's README.md in
    --out) is refused."""
    before = set((out / MANIFEST).read_text().split()) if (out / MANIFEST).is_file() else set()
    foreign = [rel for rel in outputs if (out / rel).exists() and rel not in before]
    if foreign:
        raise FileExistsError(f"{out / foreign[0]} was not written by `lambdalib report` (no report manifest "
                              f"lists it); choose a new or empty --out folder, or move that file away")
    stage, old = out / ".report-new", out / ".report-old"
    for leftover in (stage, old):
        shutil.rmtree(leftover, ignore_errors=True)
    now = sorted(outputs)
    staged = {**outputs, MANIFEST: "\n".join(now) + "\n"}
    for rel, content in staged.items():
        files.make_dir((stage / rel).parent)
        files.atomic_write_bytes(stage / rel, content.encode() if isinstance(content, str) else content)
    for sub in ("tables", "figures"):
        for path in sorted((out / sub).rglob("*")) if (out / sub).is_dir() else []:
            rel = path.relative_to(out).as_posix()
            if path.is_file() and rel not in before and rel not in staged:
                files.make_dir((stage / rel).parent)
                shutil.copy2(path, stage / rel)
    files.make_dir(old)
    for name in ("tables", "figures", "README.md"):  # README.md last: it links the rest
        if (out / name).exists():
            os.replace(out / name, old / name)
        if (stage / name).exists():
            os.replace(stage / name, out / name)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)
    return [out / rel for rel in now]
