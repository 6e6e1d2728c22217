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
    "learned_filter_v2",
]

# How each quantised model's int8 artefact is built: the recipe //python:ptq_auto chose (the
# fastest configuration within budget on the validation set; its report and plot are in
# docs/models/reports/<id>.auto.json and docs/models/<id>.auto.png). "mode" must match the
# registry's quant_mode, "encoding" and "purpose" its quant_encoding and quant_purpose
# (//model:int8_pins_test and //model:speed_structure_test check them); "args" are the quantiser's
# flags (--rewrite: kernel-aware graph rewrites, tinyq.quant.rewrites); "conv_misses" names each condition
# of onnxruntime's fused int8 convolution path that a QLinearConv of a speed artefact misses, because
# the rewrite that fixes it was measured and not faster (//model:speed_structure_test checks it). Models absent here ship fp32. To re-decide a model: `tools/bazel run //python:ptq_auto --
# --id <id>`, put its recipe here, then `tools/bazel run //model:update_pins`.
ZOO_INT8 = {
    "vmaf_tiny_v2": {
        "mode": "dynamic",
        "args": ["--encoding=weight_only"],
        "encoding": "weight_only_s8_per_tensor",
        "purpose": "size",
    },
    "vmaf_tiny_v3": {
        "mode": "dynamic",
        "args": ["--encoding=weight_only"],
        "encoding": "weight_only_s8_per_tensor",
        "purpose": "size",
    },
    "vmaf_tiny_v4": {
        "mode": "dynamic",
        "args": ["--encoding=weight_only"],
        "encoding": "weight_only_s8_per_tensor",
        "purpose": "size",
    },
    "nr_metric_v1": {
        "mode": "static",
        "args": ["--calibrate-method=percentile", "--noper-channel", "--calibration-augment", "--fp32-nodes=/Add,/Add_1,/AveragePool,/AveragePool_1,/Concat,/Mul,/trunk/trunk.0/Conv,/trunk/trunk.1/Relu"],
        "encoding": "qdq_u8s8_per_tensor_percentile_augmented_fp32_groups",
        "purpose": "speed",
    },
    "fr_patch_v1": {
        "mode": "static",
        "args": ["--calibrate-method=percentile", "--noper-channel", "--fp32-nodes=/Mul", "--rewrite=pad_conv_inputs"],
        "encoding": "qdq_u8s8_per_tensor_percentile_fp32_groups_padin",
        "purpose": "speed",
    },
    "learned_filter_v1": {
        "mode": "static",
        "args": ["--calibrate-method=entropy", "--noper-channel", "--calibration-augment", "--fp32-nodes=/Add,/body/body.0/Conv,/body/body.1/Relu"],
        "encoding": "qdq_u8s8_per_tensor_entropy_augmented_fp32_groups",
        "purpose": "speed",
        "conv_misses": ["1 output channels, not >= 16 and a multiple of 4 (rewrite pad_conv_outputs)"],
    },
    "learned_filter_v2": {
        "mode": "static",
        "args": ["--calibrate-method=percentile", "--per-channel", "--fp32-nodes=/Add,/body/body.0/Conv,/body/body.1/Relu"],
        "encoding": "qdq_u8s8_per_channel_percentile_fp32_groups",
        "purpose": "speed",
        "conv_misses": ["4 output channels, not >= 16 and a multiple of 4 (rewrite pad_conv_outputs)"],
    },
}
