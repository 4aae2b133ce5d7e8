"""Rewrite the README's generated blocks from the results JSON, so no number in them is typed by hand.

A block sits between `<!-- begin generated: NAME -->` and `<!-- end generated: NAME -->`; its text is
produced here from `benchmarks/results/*.json` (the demo's own report is copied to
`benchmarks/results/demo.json` by `make demo-results`). `make docs` rewrites the README;
`python -m benchmarks.docs --check` exits 1 when the README differs (tests/test_readme.py does the same).
"""
from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Callable, Dict, List, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
_BLOCK = re.compile(r"(<!-- begin generated: (\w+) -->\n)(.*?)(<!-- end generated: \2 -->)", re.S)


def _load(name: str) -> Dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _num(v, digits: int = 2, unit: str = "") -> str:
    if v is None or v == "inf" or (isinstance(v, float) and v != v):
        return "-"
    return f"{float(v):.{digits}f}{unit}"


# ----------------------------------------------------------------------------- blocks

def demo_block(report: Optional[Dict] = None) -> str:
    """The demo paragraph and table, from the demo's report.json."""
    report = report if report is not None else _load("demo.json")
    rows = report["rows"]
    names = {"none": "none (float32 Keras)", "gaussian": "gaussian noise", "zeroq": "zeroq (BN statistics)",
             "retro": "retro (BN + class, the paper)"}
    out = [f"**The demo** (`{report['command']}`, {report['model']}, {report['held_out_images']} held-out real digits "
           f"used only for evaluation; timings are rough on a shared machine; numbers from "
           "`benchmarks/results/demo.json`):", "",
           "| calibration data | W8A8 top-1 | W8A8 logit SQNR | W4A8 top-1 | W4A8 logit SQNR | synthesis |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        key = r["calibration"].split(" ")[0]
        float_row = r.get("synthesis_s") is None
        count = re.search(r"\(\d+ images\)", r["calibration"])
        name = names.get(key, r["calibration"]) + (f" {count.group(0)}" if count and key in names else "")
        out.append(f"| {name} | {_num(r['w8_accuracy'], 2, ' %')} | "
                   f"{_num(r['w8_sqnr_db'], 1, ' dB')} | {'-' if float_row else _num(r['w4_accuracy'], 2, ' %')} | "
                   f"{_num(r['w4_sqnr_db'], 1, ' dB')} | {'-' if float_row else _num(r['synthesis_s'], 1, ' s')} |")
    return "\n".join(out) + "\n"


_SOURCES = ("real", "gaussian", "zeroq", "retro")


def cifar_block(doc: Optional[Dict] = None) -> str:
    """The CIFAR ResNet table (W8A8 and W4A8 per calibration source), from calibration_sources.json."""
    doc = doc if doc is not None else _load("calibration_sources.json")
    rows = doc["rows"]
    out = ["| model | calibration | W8A8 top-1 | W8A8 agree | W8A8 SQNR | W4A8 top-1 | W4A8 agree | W4A8 SQNR |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    models = list(dict.fromkeys((r["model"], bool(r["bn_folded"])) for r in rows))
    for model, folded in models:
        mine = [r for r in rows if r["model"] == model and bool(r["bn_folded"]) == folded]
        fp32 = [r for r in mine if r["source"] == "fp32"]
        label = model if folded or not fp32 else f"{model} (FP32 {fp32[0]['accuracy']:.2f})"
        first = True
        # folding BN changes only what the BN-driven sources synthesize: real and gaussian rows repeat the unfolded ones
        for source in (("zeroq", "retro") if folded else _SOURCES):
            cells = []
            for weights in ("W8A8", "W4A8"):
                r = next((r for r in mine if r["source"] == source and r["weights"] == weights), None)
                cells += (["-"] * 3 if r is None else
                          [_num(r["accuracy"]), _num(r["agreement"]), _num(r["sqnr_db"], 1, " dB")])
            if cells == ["-"] * 6:
                continue
            name = "real images" if source == "real" else f"**{source}**" if source == "retro" else source
            out.append(f"| {label if first else ''} | {name} | " + " | ".join(cells) + " |")
            first = False
    return "\n".join(out) + "\n"


def zoo_block(doc: Optional[Dict] = None) -> str:
    """Defaults across every model (output SQNR vs float per calibration source), from zoo_models.json's summary."""
    doc = doc if doc is not None else _load("zoo_models.json")
    summ = doc["summary"]
    within = sum(bool(r["within 1 dB"]) for r in summ)
    judged = [r for r in summ if r["retro >= gaussian"] is not None]
    above = sum(bool(r["retro >= gaussian"]) for r in judged)
    out = [f"Retro within 1 dB of 256 real images on {within} of {len(summ)} models, at least gaussian on {above} of "
           f"{len(judged)} (`{doc['command']}`; {doc['date'][:10]}):", "",
           "| model | real 256 | gaussian | retro before | **retro now** | range logits / features | plan | synthesis |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summ:
        rng = f"{_num(r['range_logits'])} / {_num(r['range_features'])}"
        out.append(f"| {r['model']} | {_num(r['real'], 1)} dB | {_num(r['gaussian'], 1)} | "
                   f"{_num(r['retro (before)'], 1)} | **{_num(r['retro'], 1)}** | {rng} | {r['plan']} | "
                   f"{_num(r['synthesis_s'], 0, ' s')} |")
    return "\n".join(out) + "\n"


BLOCKS: Dict[str, Callable[[], str]] = {"demo": demo_block, "cifar": cifar_block, "zoo": zoo_block}


def render(text: str, blocks: Optional[Dict[str, Callable[[], str]]] = None) -> str:
    """`text` with every generated block rewritten; an unknown block name is an error."""
    blocks = blocks or BLOCKS

    def sub(m: re.Match) -> str:
        if m.group(2) not in blocks:
            raise KeyError(f"README block {m.group(2)!r} has no generator in benchmarks/docs.py")
        return m.group(1) + blocks[m.group(2)]() + m.group(4)

    return _BLOCK.sub(sub, text)


def block_names(text: str) -> List[str]:
    return [m.group(2) for m in _BLOCK.finditer(text)]


def main(argv: List[str]) -> int:
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in argv:
        if new != text:
            sys.stderr.write("README.md is stale: run `make docs` (benchmarks/docs.py) and commit it.\n")
            return 1
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
        print(f"rewrote {', '.join(block_names(text))} in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
