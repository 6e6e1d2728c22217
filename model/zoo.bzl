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
    # Weight-only int8 (int8 initialisers behind DequantizeLinear, activations in fp32) for every
    # model: the smallest encoding, and the only one that passes the gate everywhere. Static QDQ
    # was measured for each model (see the cards): it breaks nr_metric_v1's in-graph MSCN (drop
    # 0.37), saturates fr_patch_v1 on the gate's synthetic set (drop 0.037 > 0.01), and turns
    # learned_filter_v1's PSNR gain from +0.002 dB into -0.039 dB.
    "vmaf_tiny_v2": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "vmaf_tiny_v3": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "vmaf_tiny_v4": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "nr_metric_v1": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "fr_patch_v1": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
    "learned_filter_v1": {"mode": "dynamic", "args": ["--encoding=weight_only"]},
}
