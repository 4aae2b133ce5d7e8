"""Reports: JSON documents (written atomically) and text tables for the terminal.

Nothing here imports TensorFlow; inputs are the plain dicts other modules return.
"""
from __future__ import annotations

import datetime
from typing import Dict, List, Optional, Sequence




def convert_report(*, model_path: str, output_path: str, quantization: Dict, data_source: Dict,
                   synthesis: Optional[Dict], input_space: Optional[Dict], output_size: int,
                   seconds: Dict[str, float], inspection: Dict, version: str) -> Dict:
    """The JSON document `retroq convert --report` writes."""
    return {
        "tool": "retroq", "version": version, "command": "convert",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model_path, "output": output_path,
        "config": {"quantization": quantization, "data": data_source},
        "input_space": input_space,
        "synthesis": synthesis,
        "output_size_bytes": int(output_size),
        "seconds": {k: round(float(v), 3) for k, v in seconds.items()},
        "op_counts": inspection.get("op_counts", {}),
        "inputs": inspection.get("inputs", []),
        "outputs": inspection.get("outputs", []),
        "layers": inspection.get("layers", []),
        "float_ops": inspection.get("float_ops", []),  # kept in float with --allow-float-ops; else none
    }


# ----------------------------------------------------------------------------- text tables

def _short(s: Optional[str], width: int) -> str:
    s = "-" if s is None or s == "" else str(s)
    return s if len(s) <= width else "..." + s[-(width - 3):]


def _shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _num(v) -> str:
    return "-" if v is None else str(v)


def _table(headers: List[str], rows: List[List[str]]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _io_line(kind: str, t: Dict) -> str:
    q = "" if t.get("scale") is None else f" scale {t['scale']:.6g} zero_point {t['zero_point']}"
    return f"{kind}: {t['name']} {t['dtype']} {_shape(t['shape'])}{q}"


def format_inspect(info: Dict, name_width: int = 36) -> str:
    """The `retroq inspect` table: tensors with quantization or constant data, then a per-layer summary."""
    ops = ", ".join(f"{k} x{v}" for k, v in info["op_counts"].items()) or "none"
    out = [f"model size: {info['size_bytes']} bytes, {info['subgraphs']} subgraph(s), {info['num_ops']} ops ({ops})"]
    out += [_io_line("input", t) for t in info["inputs"]] + [_io_line("output", t) for t in info["outputs"]]
    if info.get("float_ops"):
        out.append(f"float ops: {', '.join(info['float_ops'])}; {info['float_ops_note']}")
    out.append("")
    out.append("tensors (quantized or constant):")
    rows = [[str(t["index"]), _short(t["name"], name_width), t["role"], _short(t["op"], 28), t["dtype"],
             _shape(t["shape"]), str(t["num_scales"]), _num(t["distinct_values"]),
             _num(t["quantized_dimension"]) if t["num_scales"] > 1 else "-"]
            for t in info["tensors"]]
    out += _table(["#", "name", "role", "op", "dtype", "shape", "scales", "distinct", "quant_dim"], rows)
    if info["layers"]:
        out.append("")
        out.append("weight layers:")
        rows = [[f"{l['op']}#{l['op_index']}", _short(l["output"], name_width), l["weight_dtype"],
                 _shape(l["weight_shape"]), l["scheme"], str(l["num_scales"]), _num(l["distinct_values"]),
                 _num(l["weight_bits"]), _num(l.get("weight_bytes"))] for l in info["layers"]]
        out += _table(["op", "output", "dtype", "shape", "scheme", "scales", "distinct", "bits", "bytes"], rows)
    out += _format_tables(info, name_width)
    return "\n".join(out)


def format_targets(estimates: Dict[str, Dict]) -> str:
    """`retroq inspect --target`: one block per target (Vela estimates, the TFLM arena, Hexagon placement, or the
    target's error)."""
    out = ["target estimates:"]
    for name, e in estimates.items():
        if "error" in e:
            out.append(f"  {name}: FAILED: {e['error']}")
            continue
        if "partitions" in e:
            out += _format_hexagon(name, e)
            continue
        if "arena_bytes" in e:
            out.append(f"  {name}: runs on the TFLite Micro runtime (tflite-micro {e['tflm_version']}), "
                       f"tensor arena {e['arena_bytes']:,} bytes, model {e['model_bytes']:,} bytes")
            continue
        cpu = f" ({', '.join(e['cpu_op_types'])})" if e["cpu_op_types"] else ""
        out.append(f"  {name}: Vela {e['vela_version']}, {e['system_config']} / {e['memory_mode']}")
        if e["npu_ops"]:
            out.append(f"    inference {e['inference_time_s'] * 1e6:,.0f} us ({e['inferences_per_second']:,.0f} "
                       f"inferences/s), {e['macs']:,} MACs")
        else:
            out.append("    nothing runs on the NPU (Ethos-U runs int8/int16 operators only): no estimate")
        out.append(f"    operators: {e['npu_ops']} on the NPU, {e['cpu_ops']} on the CPU{cpu} "
                   f"({100.0 * e['npu_fraction']:.1f} % NPU)")
        out.append(f"    weights {e['original_weight_bytes']:,} bytes, encoded {e['encoded_weight_bytes']:,} bytes; "
                   f"SRAM {e['sram_bytes']:,} bytes, flash {e['flash_bytes']:,} bytes"
                   + (f", DRAM {e['dram_bytes']:,} bytes" if e["dram_bytes"] else ""))
    return "\n".join(out)


def _format_hexagon(name: str, e: Dict) -> List[str]:
    """A Qualcomm HTP compilation: placement, partitions, each operator left on the CPU and why, sizes."""
    cpu = f" ({', '.join(e['cpu_op_types'])})" if e["cpu_op_types"] else ""
    out = [f"  {name}: Qualcomm HTP {e['soc']}, LiteRT AOT plugin (ai-edge-litert {e['litert_version']}, "
           f"QNN SDK {e['qnn_sdk_version']}); placement only, no timing offline",
           f"    operators: {e['npu_ops']} on the NPU in {e['partitions']} partition"
           f"{'s' if e['partitions'] != 1 else ''}, {e['cpu_ops']} on the CPU{cpu} ({100.0 * e['npu_fraction']:.1f} % NPU)"]
    out += [f"    CPU: op #{r['index']} {r['op']}: {r['reason']}" for r in e["rejected"]]
    out.append(f"    compiled {e['compiled_bytes']:,} bytes (HTP context binaries {e['context_bytes']:,} bytes)")
    return out


def _format_tables(info: Dict, name_width: int) -> List[str]:
    """Weight tables (LUT): as packed, or as `--pack lut` would pack them; and which runtime runs the file."""
    if "tables" not in info:
        return []
    out = ["", f"runtime: {info['runtime']}", "weight tables (LUT" + (", packed):" if info["lut_packed"]
                                                                      else ", if packed with --pack lut):")]
    rows = [[t["op"], _short(t["output"], name_width), _num(t["distinct_values"]),
             _num(t["index_bits"]), "-" if t["index_bits"] is None else
             ("tensor" if t["axis"] is None else f"axis {t['axis']}"),
             _num(t["tables"]), _num(t["table_len"]), str(t["plain_bytes"]), _num(t["packed_bytes"])]
            for t in info["tables"]]
    return out + _table(["op", "output", "distinct", "index bits", "tables per", "tables", "table len",
                         "plain B", "packed B"], rows)
