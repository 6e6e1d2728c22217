"""The zoo's model ids, for macros that declare one target per model.

//model:zoo_io_test checks this list against model/tiny/registry.json.
"""

ZOO_MODEL_IDS = [
    "vmaf_tiny_v2",
    "vmaf_tiny_v3",
    "vmaf_tiny_v4",
    "nr_metric_v1",
    "fr_patch_v1",
    "learned_filter_v1",
]

# How each quantised model's int8 artefact is built: the mode (which must match the registry's
# quant_mode; //model:int8_pins_test checks it) and the quantiser's flags. Models absent here
# ship fp32. Each decision and its measurements are in the model's card, docs/models/<id>.md.
ZOO_INT8 = {
    # Weight-only int8 (int8 initialisers behind DequantizeLinear) is the smallest data-free
    # encoding for the MLPs, and the only faithful one for nr_metric_v1, whose in-graph MSCN
    # normalisation does not survive activation quantisation (static QDQ drop 0.37).
    "vmaf_tiny_v2": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "vmaf_tiny_v3": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "vmaf_tiny_v4": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "nr_metric_v1": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    # Static QDQ on the patch CNNs: slightly larger than weight-only, but the only encodings
    # that run faster than fp32 on VNNI CPUs, and still far inside the 0.01 budget.
    "fr_patch_v1": {"mode": "static", "args": ["--calibrate-method=percentile", "--per-channel"]},
    "learned_filter_v1": {"mode": "static", "args": ["--calibrate-method=minmax", "--per-channel"]},
}
