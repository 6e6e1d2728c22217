"""tinyq.search.auto's choice and rewrite stage on measured rows: the tie rule, and which candidates the
rewrites are tried on."""

from tinyq.quant import rewrites
from tinyq.search import auto
from tinyq.search.auto import Accuracy, Candidate, Row
from tinyq.search.latency import Timing


def row(name, speedup, drop, size, within=True, groups=(), misses=(), method="minmax", names=(), fixes=()):
    c = Candidate("qdq", method, name.endswith("pc"), tuple(groups), rewrites=tuple(names))
    convs = [rewrites.ConvKernel(3, 16, 1, list(misses), list(fixes))]
    return Row(c, size, Accuracy(drop, None, within, ""), [], {256: Timing(10.0 * speedup, 10.0, 0.0)}, convs=convs)


def test_within_the_margin_the_lower_drop_wins_over_the_smaller_file():
    # Per-tensor won with 83x more loss to save 8 % of the bytes before this rule.
    per_tensor = row("pt", 2.00, 5.1e-3, 1000)
    per_channel = row("pc", 1.97, 6.2e-5, 1080)
    choice = auto.choose([per_tensor, per_channel])
    assert choice.row is per_channel and choice.purpose == "speed"
    assert "lowest drop" in choice.reason


def test_equal_drops_fall_back_to_the_smaller_file():
    big, small = row("a", 2.0, 1e-4, 1200), row("b", 1.98, 1e-4, 1000)
    assert auto.choose([big, small]).row is small


def test_beyond_the_margin_speed_wins():
    fast, accurate = row("fast", 2.4, 5e-3, 1000), row("accurate", 2.0, 1e-5, 900)
    assert auto.choose([fast, accurate]).row is fast


def test_over_budget_is_never_chosen():
    assert auto.choose([row("x", 3.0, 0.5, 10, within=False), row("y", 2.0, 1e-3, 10)]).row.candidate.method == "minmax"
    assert auto.choose([row("x", 3.0, 0.5, 10, within=False)]) is None


def test_rewrite_sets_follow_the_misses():
    both = row("a", 2, 1e-4, 1, misses=["3 input channels, not a multiple of 4 (rewrite pad_conv_inputs)",
                                        "4 output channels, not >= 16 and a multiple of 4 (rewrite pad_conv_outputs)"],
               fixes=["pad_conv_inputs", "pad_conv_outputs"])
    assert auto.rewrite_sets(both) == [("pad_conv_inputs",), ("pad_conv_outputs",), ("pad_conv_inputs", "pad_conv_outputs")]
    assert auto.rewrite_sets(row("b", 2, 1e-4, 1)) == []


def test_rewrite_bases_are_the_most_accurate_within_budget_per_group_set():
    miss = ["3 input channels, not a multiple of 4 (rewrite pad_conv_inputs)"]
    rows = [row(f"r{i}", 2, drop, 1, method=m, misses=miss) for i, (drop, m) in
            enumerate([(3e-4, "minmax"), (1e-4, "entropy"), (2e-4, "percentile")])]
    rows.append(row("over", 2, 0.5, 1, within=False, method="minmax", groups=("g",), misses=miss))
    rows.append(row("fused", 2, 1e-6, 1, method="minmax", groups=("h",)))
    chosen = auto.rewrite_bases(rows)
    assert [r.accuracy.drop for r in chosen] == [1e-4, 2e-4]


def test_a_candidate_that_quantises_no_weight_is_never_within_budget(tmp_path):
    """A saliency head whose only weight is a 3-element 1x1 Conv: weight-only int8 leaves it fp32
    (fewer than 16 elements), and ptq_dynamic would refuse that recipe (exit 4)."""
    import numpy as np
    from onnx import helper

    from tinyq.judge import gate
    from tinyq.model import runner
    from tinyq.quant import quantize
    from tinyq.search.latency import LatencyMeter
    from tinyq_testing.testutil import const, floats, save_graph

    rng = np.random.default_rng(0)
    path = save_graph(tmp_path / "saliency.onnx", [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])],
                      [floats("x", ["n", 3, 8, 8])], [floats("y", ["n", 1, 8, 8])], [const("w", rng.standard_normal((1, 3, 1, 1)))])
    model, _ = quantize.load_for_quantization(path)
    data = {"x": rng.random((32, 3, 8, 8), dtype=np.float32)}
    sess32 = runner.session(model.SerializeToString())
    measure = auto.Measure(auto.CandidateBuilder(model, data, [], tmp_path), auto.Evaluator(sess32, data, gate.Budgets(0.01)),
                           LatencyMeter(sess32, data, {1: 5, 256: 3}, min_timed_s=0), lambda line: None)
    weight_only = measure(Candidate("weight_only"))
    assert weight_only.accuracy.drop is not None and weight_only.accuracy.drop < 0.01  # accurate, yet ...
    assert not weight_only.accuracy.within_budget and "quantises no weight" in weight_only.accuracy.reason
    assert weight_only.timing == {}  # it cannot win, so it is not timed
    static = measure(Candidate("qdq", "minmax"))
    assert static.accuracy.within_budget and set(static.timing) == {1, 256}  # static QDQ quantises the conv


def _weight_only(speedup):
    return Row(Candidate("weight_only"), 100, Accuracy(1e-5, None, True, ""), [], {256: Timing(10.0 * speedup, 10.0, 0.0)})


def test_a_size_only_artefact_slower_than_fp32_is_never_the_default():
    slow_static = row("pt", 0.9, 1e-4, 120)  # within budget, not faster: no speed choice
    slow = auto.choose([_weight_only(0.49), slow_static])
    assert slow.row is None and slow.purpose == "fp32" and "--no-speedup size-only" in slow.reason
    asked = auto.choose([_weight_only(0.49), slow_static], no_speedup="size-only")
    assert asked.row.candidate.encoding == "weight_only" and asked.purpose == "size"
    as_fast = auto.choose([_weight_only(0.97), slow_static])
    assert as_fast.row.candidate.encoding == "weight_only" and as_fast.purpose == "size"
    assert auto.choose([_weight_only(0.97)], no_speedup="fp32").row is None


def test_the_search_covers_per_channel_weight_only_and_dynamic_where_a_matmul_can_pay():
    from tinyq_testing import testutil
    import onnx

    mlp = onnx.load_from_string(testutil.tiny_mlp(0))
    names = [c.name for c in auto.base_candidates(mlp)]
    assert names[:4] == ["weight_only", "weight_only_pc", "dynamic_pt", "dynamic_pc"]
    assert len(names) == 4 + 12 and len(set(names)) == len(names)
    cnn = testutil.small_cnn()  # a 16-weight Gemm head on 1 224 conv weights: dynamic would run ConvInteger
    assert [c.name for c in auto.base_candidates(cnn)][:3] == ["weight_only", "weight_only_pc", "qdq_minmax_pt"]


def test_a_dynamic_choice_rebuilds_with_ptq_dynamic():
    from tinyq.search import auto_report

    for pc, args, encoding in ((False, ["--encoding=dynamic"], "dynamic_s8_per_tensor"),
                               (True, ["--encoding=dynamic", "--per-channel"], "dynamic_s8_per_channel")):
        r = Row(Candidate("dynamic", per_channel=pc), 100, Accuracy(1e-4, None, True, ""), [], {256: Timing(12.5, 10.0, 0.0)})
        choice = auto.choose([r])
        assert choice.row is r and choice.purpose == "speed"
        rec = auto_report.recipe(choice, None)
        assert (rec["mode"], rec["args"], rec["encoding"]) == ("dynamic", args, encoding)
    wo = Row(Candidate("weight_only", per_channel=True), 100, Accuracy(1e-4, None, True, ""), [], {256: Timing(10.0, 10.0, 0.0)})
    rec = auto_report.recipe(auto.choose([wo]), None)
    assert (rec["args"], rec["encoding"], rec["purpose"]) == (["--encoding=weight_only", "--per-channel"],
                                                              "weight_only_s8_per_channel", "size")


def test_a_candidate_that_fails_inside_onnxruntime_is_dropped_with_its_reason(tmp_path):
    """Calibration data onnxruntime refuses (float64 for a float input) fails every static candidate
    inside onnxruntime; the data-free candidates still run, and the search goes on."""
    import numpy as np
    import onnx

    from tinyq.judge import gate
    from tinyq.model import runner
    from tinyq.search import auto_report
    from tinyq.search.latency import LatencyMeter
    from tinyq_testing import testutil

    model = onnx.load_from_string(testutil.tiny_mlp(0, n_in=6, hidden=64))
    good = {"features": np.random.default_rng(0).random((32, 6), dtype=np.float32)}
    sess32 = runner.session(model.SerializeToString())
    measure = auto.Measure(auto.CandidateBuilder(model, {"features": good["features"].astype(np.float64)}, [], tmp_path),
                           auto.Evaluator(sess32, good, gate.Budgets(0.01)),
                           LatencyMeter(sess32, good, {1: 3, 256: 2}, min_timed_s=0), lambda line: None)
    failed = measure(Candidate("qdq", "minmax"))
    assert auto.verdict(failed) == "failed" and not failed.accuracy.within_budget
    assert failed.accuracy.reason.startswith("failed: QuantizeError: onnxruntime's quantize_static failed")
    assert auto.verdict(measure(Candidate("weight_only"))) == "within budget"
    assert "| failed |" in auto_report.table(list(measure.rows.values()), None)
    assert auto_report.plot_png("m", list(measure.rows.values()), None, 0.01)[:4] == b"\x89PNG"


def test_a_memory_budget_caps_the_histogram_calibrations_and_the_recipe_rebuilds_it(tmp_path):
    """Entropy and Percentile keep every activation of every sample: under --max-memory they calibrate
    on a seeded subset, MinMax on everything, and the recipe asks ptq_static for the same subset."""
    import numpy as np
    import onnx

    from tinyq.search import auto_report, budget
    from tinyq_testing import testutil

    model = onnx.load_from_string(testutil.tiny_mlp(0, n_in=6, hidden=64))
    data = {"features": np.random.default_rng(0).random((200, 6), dtype=np.float32)}
    hist = budget.histogram_samples(model, data, max_gib=hist_gib(model, data, samples=50))
    assert hist.used == 50 and hist.given == 200
    builder = auto.CandidateBuilder(model, data, [], tmp_path, histogram_samples=hist.used)
    builder.build(Candidate("qdq", "minmax"))
    builder.build(Candidate("qdq", "entropy"))
    assert builder.capped == {("entropy", False)}
    within = Accuracy(1e-4, None, True, "")
    for method, flag in (("entropy", "--calibration-samples=50"), ("minmax", None)):
        row = Row(Candidate("qdq", method), 100, within, [], {256: Timing(20.0, 10.0, 0.0)})
        args = auto_report.recipe(auto.choose([row]), builder)["args"]
        assert (flag in args) if flag else not any(a.startswith("--calibration-samples") for a in args)


def hist_gib(model, data, samples):
    """The budget under which exactly `samples` samples fit."""
    from tinyq.search import budget

    per = budget.activation_bytes_per_sample(model, data)
    return (samples + 0.5) * per * budget._OVERHEAD / 2**30


def test_layers_kept_fp32_are_the_profiled_slow_ones(tmp_path):
    """keep_slow_layers_fp32 on Conv-Relu, Conv-HardSwish, Conv-Relu: a layer kept fp32 runs as an fp32
    Conv between int8 ones, the recipe rebuilds it with --fp32-nodes, and each candidate the search
    adds keeps exactly the layers its base's cost table marks slow."""
    import json
    from dataclasses import replace

    import jsonschema
    import numpy as np
    from onnx import helper

    from tinyq.judge import gate
    from tinyq.model import runner
    from tinyq.quant import quantize
    from tinyq.registry import registry
    from tinyq.search import auto_report, layer_costs
    from tinyq.search.latency import LatencyMeter
    from tinyq_testing.testutil import const, floats, save_graph

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k, (cin, act) in enumerate(((4, "Relu"), (16, "HardSwish"), (16, "Relu"))):
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node(act, [f"c{k}"], [f"r{k}"], name=f"act{k}")]
        inits.append(const(f"w{k}", rng.standard_normal((16, cin, 3, 3)) * 0.2))
        x = f"r{k}"
    nodes.append(helper.make_node("ReduceMean", [x], ["y"], name="mean", axes=[2, 3], keepdims=0))
    model, _ = quantize.load_for_quantization(save_graph(tmp_path / "m.onnx", nodes, [floats("x", ["n", 4, 8, 8])],
                                                         [floats("y", ["n", 16])], inits))
    data = {"x": rng.random((32, 4, 8, 8), dtype=np.float32)}
    sess32 = runner.session(model.SerializeToString())
    measure = auto.Measure(auto.CandidateBuilder(model, data, [], tmp_path), auto.Evaluator(sess32, data, gate.Budgets(0.05)),
                           LatencyMeter(sess32, data, {1: 3, 256: 2}, min_timed_s=0), lambda line: None)
    base = measure(Candidate("qdq", "minmax"))
    middle = replace(base.candidate, fp32_layers=("conv1",))
    assert measure.builder.exclude(middle) == ["act1", "conv1"]
    optimised = rewrites.optimised(measure.builder.build(middle, compact=False))
    assert [n.op_type for n in optimised.graph.node if n.name.startswith("conv")] == ["QLinearConv", "Conv", "QLinearConv"]
    row = measure(middle)
    assert row.unfused == [] and row.accuracy.within_budget
    rec = auto_report.recipe(auto.Choice(row, "speed", 0.05, ""), measure.builder)
    assert "--fp32-nodes=act1,conv1" in rec["args"] and rec["fp32_layers"] == ["conv1"]
    schema = json.loads(registry.SCHEMA_PATH.read_text())
    jsonschema.validate(rec["encoding"], schema["$defs"]["model"]["properties"]["quant_encoding"])

    auto.keep_slow_layers_fp32(measure)
    profiled = {c: {t.head for t in layer_costs.slow_layers(measure.layer_tables[c.name])}
                for c in measure.rows if c.name in measure.layer_tables}
    assert base.candidate in profiled
    for r in measure.rows.values():
        if r.candidate.fp32_layers and r.candidate != middle:  # made from a profiled candidate and its slow layers
            assert any(replace(p, fp32_layers=()) == replace(r.candidate, fp32_layers=())
                       and set(r.candidate.fp32_layers) == set(p.fp32_layers) | slow for p, slow in profiled.items())
