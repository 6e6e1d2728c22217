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
ZOO_INT8 = {}
