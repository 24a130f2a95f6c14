"""`summary.json` and `report.md` for a run (the run contract in DESIGN.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

__all__ = ["write_summary", "write_report", "jsonable"]


def jsonable(obj):
    """Recursively convert numbers/tensors to JSON-safe Python; non-finite floats become
    `None` only where JSON cannot hold them (NaN), infinities are kept as strings."""
    try:
        import numpy as np
        import torch
    except ImportError:  # pragma: no cover
        np = torch = None
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def write_summary(summary: Mapping, out_dir) -> Path:
    """Write `summary.json` (indented, JSON-safe)."""
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    return path


def _fmt(est: Mapping, digits: int = 4) -> str:
    m, s = est.get("mean"), est.get("stderr")
    if not isinstance(m, (int, float)):
        return str(m)
    if not isinstance(s, (int, float)):
        return f"{m:.{digits}g} ± {s}"
    return f"{m:.{digits}g} ± {s:.2g}"


def _flag(ev: Mapping) -> str:
    """A warning after a log Z whose proposal failed the coverage check."""
    return " **flagged: the coverage check failed**" if ev.get("flagged") else ""


def _coverage_rows(ev: Mapping, label: str) -> list[str]:
    """The coverage check's row (`boltzflow.sampling.coverage`), where it was made."""
    if "coverage" not in ev:
        return []
    return [
        f"| {label} | {ev['coverage']:.3f} (log-error {ev['coverage_stderr']:.2g}), "
        f"low-density fraction {ev['low_density_fraction']:.4f}, "
        f"{'ok' if ev['coverage_ok'] else 'FAILED'} |"
    ]


def write_report(summary: Mapping, figures: Mapping[str, str], out_dir) -> Path:
    """Write `report.md`: the headline numbers, tables of estimates and the figures."""
    s = summary
    tr, sa, rw = s["training"], s["sampling"], s["reweighting"]
    lines = [
        f"# boltzflow run: {s['system']}",
        "",
        f"budget `{s['budget']}`, seed {s['seed']}, boltzflow {s['boltzflow_version']}",
        "",
        "## Reweighting",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| ESS | {rw['ess']:.1f} of {rw.get('n', '?')} |",
        f"| ESS fraction | {rw['ess_fraction']:.3f} |",
        f"| log Z | {_fmt(rw['log_z'])}{_flag(rw)} |",
        f"| PSIS k̂ | {rw['pareto_k']:.3f} |",
        *_coverage_rows(rw, "coverage"),
        f"| non-finite energies | {rw['n_nonfinite']} |",
    ]
    if sa.get("log_q") == "path":  # a stochastic flow: the weights are path weights
        lines.append("| log-weights | path weights (stochastic flow: −u(x) − log q of the path) |")
    ev = sa.get("evidence")
    if isinstance(ev, Mapping) and "log_z" in ev:  # the sampler's own evidence draws
        lines.append(
            f"| sampler's log Z | {_fmt(ev['log_z'])}{_flag(ev)}, k̂ {ev['pareto_k']:.3f} |"
        )
        lines += _coverage_rows(ev, "sampler's coverage")
    lz = sa.get("log_z")
    if isinstance(lz, Mapping) and "mean" in lz:  # SMC's own evidence (islands)
        flag = " (FLAGGED: the islands' log Z spread too widely)" if lz.get("flagged") else ""
        spread = f", islands' sd {lz['islands_sd']:.2f}" if "islands_sd" in lz else ""
        lines.append(f"| sampler's log Z (SMC) | {_fmt(lz)}{flag}{spread} |")
    ref = s.get("reference", {})
    if "log_z" in ref:
        lines.append(
            f"| exact log Z | {ref['log_z']:.6g} (z = {ref.get('log_z_z_score', 'n/a')}) |"
        )
    for group, title in (("observables", "Observables"), ("free_energies", "Free energies")):
        if s.get(group):
            lines += [
                "",
                f"## {title}",
                "",
                "| name | estimate | unit | reference | z |",
                "|---|---|---|---|---|",
            ]
            for name, v in s[group].items():
                r = v.get("reference")
                r = "" if r is None else f"{r:.6g}"
                if v.get("reference_stderr") is not None:
                    r += f" ± {v['reference_stderr']:.2g}"
                z = v.get("z_score")
                z = "" if z is None else f"{z:+.2f}"
                lines.append(f"| {name} | {_fmt(v)} | {v.get('unit', '')} | {r} | {z} |")
            weighted = {k: v for k, v in s[group].items() if "ess_fraction" in v}
            if weighted:  # perturbation estimates carry the ESS of their own weights
                lines += ["", "| name | ESS fraction | PSIS k̂ | samples |", "|---|---|---|---|"]
                for name, v in weighted.items():
                    k = v.get("pareto_k", float("nan"))
                    lines.append(f"| {name} | {v['ess_fraction']:.4f} | {k:.3f} | {v.get('n')} |")
    lines += [
        "",
        "## Cost",
        "",
        f"- training: {tr['loss']}, {tr['steps']} steps, {tr['energy_evaluations']} energy "
        f"evaluations, {tr['wall_seconds']:.1f} s",
        f"- sampling: {sa['method']}, {sa['n_samples']} samples, {sa['energy_evaluations']} energy "
        f"evaluations, {sa['wall_seconds']:.1f} s"
        + (
            f", acceptance {sa['acceptance_rate']:.3f}"
            if isinstance(sa.get("acceptance_rate"), float)
            else ""
        ),
    ]
    if figures:
        lines += ["", "## Figures", ""]
        for title, fname in figures.items():
            lines += [f"### {title}", "", f"![{title}]({fname})", ""]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
