"""``report.md`` and figures for a grid of runs (:mod:`aevb.experiments.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from aevb.plots import METRIC_CURVES, metric_curves  # noqa: E402

#: summary columns, in the order the table shows them, where the grid has them
METRICS = (
    "test_elbo",
    "test_ll_is",
    "test_ll_is_se",
    "is_khat_share",
    "test_ll_ais",
    "test_ll_ais_se",
    "test_log_evidence_exact",
    "true_model_log_evidence",
    "test_elbo_minus_exact",
    "test_ll_is_minus_exact",
    "test_ll_ais_minus_exact",
    "cluster_accuracy",
    "test_error",
    "active_units",
    "train_seconds",
    "seconds_per_epoch",
    "samples_per_second",
    "accept_prob",
    "rhat_max",
    "ess_bulk",
    "refine_gain",
)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every metric, one row per cell."""
    ok = results[results["status"] == "ok"]
    cols = [c for c in METRICS if c in ok and ok[c].notna().any()]
    if ok.empty or not cols:
        return pd.DataFrame()
    grouped = ok.groupby("cell", sort=False)[cols]
    table = grouped.mean().round(4).astype(str)
    if ok["seed"].nunique() > 1:
        std = grouped.std().round(4).astype(str)
        table = table + " ± " + std
    table = table.map(lambda v: "" if str(v).startswith("nan") else v)  # metric not measured
    for estimator in ESTIMATED:  # an estimate flagged by k-hat in any seed is marked
        column, flag = f"test_ll_{estimator}", f"{estimator}_flagged"
        if column in table and flag in ok:
            flagged = ok.groupby("cell", sort=False)[flag].apply(
                lambda f: bool(f.fillna(False).any())
            )
            table[column] = [
                v + (f" {FLAG}" if flagged.get(c, False) else "") for c, v in table[column].items()
            ]
    table.insert(0, "seeds", ok.groupby("cell", sort=False)["seed"].nunique())
    return table


#: the estimators whose columns a flag can mark, and the mark
ESTIMATED = ("is", "ais")
FLAG = "(k-hat!)"


def trust_section(results: pd.DataFrame) -> list[str]:
    """``report.md``'s "How far to trust these numbers": each flagged estimate with its k-hat
    share and what to do, and each cell where IS and AIS disagree by more than two of their
    combined Monte Carlo standard errors (the lower one is then the one to doubt: both are
    stochastic lower bounds of log p(x) in expectation)."""
    ok = results[results["status"] == "ok"]
    lines = []
    for _, r in ok.iterrows():
        if str(r.get("is_flagged")) == "True":  # a bool, numpy's or read back from CSV
            lines.append(
                f"- {FLAG} {r['cell']} seed {r['seed']}: IS's Pareto k-hat exceeds its "
                f"threshold on {r['is_khat_share']:.0%} of the test points (max "
                f"{r['is_khat_max']:.2f}); the IS estimate is unreliable: take AIS or a "
                "better proposal"
            )
        if pd.notna(r.get("test_ll_is")) and pd.notna(r.get("test_ll_ais")):
            gap = r["test_ll_ais"] - r["test_ll_is"]
            errors = [r.get(f"test_ll_{e}_mcse") for e in ESTIMATED]
            se = sum(float(v) ** 2 for v in errors if v is not None and pd.notna(v)) ** 0.5
            if abs(gap) > 2 * se:
                lower = "IS" if gap > 0 else "AIS"
                lines.append(
                    f"- {r['cell']} seed {r['seed']}: IS ({r['test_ll_is']:.2f}) and AIS "
                    f"({r['test_ll_ais']:.2f}) disagree by {abs(gap):.2f} nats, more than "
                    f"twice their Monte Carlo standard error ({se:.3f}); {lower} is the lower"
                )
    if not lines:
        return []
    head = [
        "## How far to trust these numbers",
        "",
        f"{FLAG} marks an estimate whose Pareto k-hat flags it in at least one seed.",
        "",
    ]
    return head + lines + [""]


def ranked_estimators(results: pd.DataFrame) -> list[str]:
    """The estimators a grid's cells are ranked by: AIS and IS where they ran, else the
    test ELBO."""
    ok = results[results["status"] == "ok"]
    found = [e for e in ("ais", "is") if f"test_ll_{e}" in ok and ok[f"test_ll_{e}"].notna().any()]
    return found or (["elbo"] if "test_elbo" in ok and ok["test_elbo"].notna().any() else [])


def rankings(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per estimator, the cells ranked best first, each against the next with a paired
    standard error (:func:`aevb.experiments.paired.ranking`); a cell whose estimate k-hat
    flags in any seed carries the flag mark."""
    from aevb.experiments.paired import ranking

    ok = results[results["status"] == "ok"]
    tables = {}
    for estimator in ranked_estimators(results):
        table = ranking(results, estimator)
        flag = f"{estimator}_flagged"
        if flag in ok and not table.empty:
            flagged = set(ok.loc[ok[flag].astype(str) == "True", "cell"])
            table["cell"] = [c + (f" {FLAG}" if c in flagged else "") for c in table["cell"]]
        tables[estimator] = table
    return tables


def ranking_section(results: pd.DataFrame) -> list[str]:
    """``report.md``'s "Which differences are resolved": the rankings, and how to read them."""
    tables = {e: t for e, t in rankings(results).items() if len(t) > 1}
    if not tables:
        return []
    lines = [
        "## Which differences are resolved",
        "",
        "Each cell against the next one down, on the same test points: the difference of "
        "their means, its standard error (paired over test points where both runs kept their "
        "per-point estimates, with the spread between seeds where there are several seeds) "
        "and the verdict: *not resolved* where the difference is under two standard errors.",
        "",
    ]
    for estimator, table in tables.items():
        title = "test ELBO" if estimator == "elbo" else f"{estimator.upper()} estimate"
        lines += [f"### Ranked by the {title}", "", markdown_table(blank_missing(table)), ""]
    return lines


def blank_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its missing values shown blank (a ranking's last row has no next)."""
    return frame.astype(object).where(frame.notna(), "")


def markdown_table(frame: pd.DataFrame) -> str:
    """A pandas frame as a GitHub-flavoured markdown table."""
    header = "| " + " | ".join([frame.index.name or ""] + list(frame.columns)) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    lines = [header, rule]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def _histories(results: pd.DataFrame) -> pd.DataFrame:
    from aevb.inference import rundir

    frames = []
    for _, row in results[results["status"] == "ok"].iterrows():
        if (Path(row["run_dir"]) / rundir.HISTORY).exists():
            history = rundir.read_history(row["run_dir"])
            frames.append(history.assign(cell=row["cell"], seed=row["seed"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figures(results: pd.DataFrame, out: Path, reference: dict | None = None) -> list[Path]:
    """Learning curves, time to quality, final log-likelihood per cell and bound gaps, and
    each model metric's curve (``<metric>_curves.png``: M2's test error, the GMVAE's cluster
    accuracy) beside the published figures of ``reference`` ({cell: {metric: value}})."""
    sns.set_theme(style="whitegrid")
    made = []
    hist = _histories(results)
    for column in METRIC_CURVES:
        if column in hist and hist[column].notna().any():
            path = out / f"{column}_curves.png"
            made.append(cast(Path, metric_curves(hist, column, reference, path)))
    curve = "test_elbo" if "test_elbo" in hist else "train_loss"
    for x, name, title in (
        ("epoch", "learning_curves.png", "test ELBO per epoch"),
        ("train_seconds", "time_to_quality.png", "test ELBO against training seconds"),
    ):
        if hist.empty:
            break
        fig, ax = plt.subplots(figsize=(7, 4))
        y = hist[curve] if curve == "test_elbo" else -hist[curve]
        sns.lineplot(data=hist.assign(value=y), x=x, y="value", hue="cell", marker="o", ax=ax)
        ax.set_ylabel("nats per datapoint")
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        made.append(_save(fig, out / name))

    ok = results[results["status"] == "ok"]
    gaps = [c for c in ok.columns if c.endswith("_minus_exact") and ok[c].notna().any()]
    bounds = [c for c in ("test_elbo", "test_ll_is", "test_ll_ais") if c in ok]
    bounds = [c for c in bounds if ok[c].notna().any()]
    if not ok.empty and (gaps or bounds):
        # with an exact evidence (FA), each estimate's distance from it; else the estimates
        cols = gaps or bounds
        long = ok.melt(id_vars=["cell", "seed"], value_vars=cols, var_name="estimate")
        long["estimate"] = long["estimate"].str.replace("_minus_exact", "")
        fig, ax = plt.subplots(figsize=(7, 0.5 * ok["cell"].nunique() + 2))
        sns.stripplot(data=long, y="cell", x="value", hue="estimate", dodge=True, ax=ax, size=6)
        if gaps:
            ax.set_xscale("symlog", linthresh=0.01)
            ax.axvline(0.0, color="k", ls="--", lw=1)
            ax.set_xlabel("estimate - exact log p(x), nats per datapoint (symlog)")
        else:
            ax.set_xlabel("nats per datapoint")
        ax.set_title("bounds and estimates per cell (one point per seed)")
        made.append(_save(fig, out / "bound_gaps.png"))
    ll = next((c for c in ("test_ll_ais", "test_ll_is") if c in ok and ok[c].notna().any()), None)
    if ll is not None and "k" in ok and ok["k"].notna().any() and "objective" in ok:
        svi = ok[ok["inference"] == "svi"]
        if not svi.empty:
            fig, ax = plt.subplots(figsize=(6, 4))
            sns.pointplot(data=svi, x="k", y=ll, hue="objective", ax=ax)
            ax.set_title("final test log-likelihood by objective and k")
            ax.set_ylabel(f"{ll} (nats)")
            made.append(_save(fig, out / "loglik_by_k.png"))
    return made


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reference_section(reference: dict, results: pd.DataFrame) -> list[str]:
    """Published figures beside ours (means over seeds), from the config's [reference]."""
    cells = reference.get("cells") or {}
    ok = results[results["status"] == "ok"]
    if not cells or ok.empty:
        return []
    lines = [f"## Against {reference.get('source', 'published figures')}", ""]
    if reference.get("note"):
        lines += [str(reference["note"]), ""]
    lines += ["| cell | metric | ours | published | ours - published |", "|---|---|---|---|---|"]
    means = ok.groupby("cell").mean(numeric_only=True)
    for cell, published in cells.items():
        for metric, value in published.items():
            ours = means[metric].get(cell) if metric in means and cell in means.index else None
            if ours is None or pd.isna(ours):
                lines.append(f"| {cell} | {metric} | (not run) | {value} | |")
            else:
                lines.append(f"| {cell} | {metric} | {ours:.4g} | {value} | {ours - value:+.3g} |")
    return lines + [""]


def write_report(config: dict, results: pd.DataFrame, out: Path) -> Path:
    """Write ``report.md`` (setup, summary table, failures, figures) into ``out``."""
    made = figures(results, out, (config.get("reference") or {}).get("cells"))
    table = summary(results)
    lines = [
        f"# aevb compare: {config['name']}",
        "",
        f"{len(results)} runs: {len(config['cells'])} cells x seeds {config['seeds']}. "
        "All numbers are nats per datapoint on the test set (mean ± std over seeds); "
        "`test_ll_is` is importance sampling with the run's guide, `test_ll_ais` annealed "
        "importance sampling from the prior; seconds are training time only.",
        "",
        "## Summary",
        "",
        markdown_table(table) if not table.empty else "(no finished runs)",
        "",
    ]
    lines += ranking_section(results)
    lines += trust_section(results)
    lines += reference_section(config.get("reference") or {}, results)
    failed = results[results["status"] != "ok"]
    if not failed.empty:
        lines += ["## Failed runs", ""]
        lines += [f"- {r['cell']} seed {r['seed']}: {r['error']}" for _, r in failed.iterrows()]
        lines.append("")
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in made] + [""]
    lines += ["## Setup", "", "```toml", config["source"].strip(), "```", ""]
    lines += ["Full results: `results.csv` (one row per run); each run's folder holds its"]
    lines += ["`config.json`, `history.csv`, `evaluation.json` and checkpoint.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
