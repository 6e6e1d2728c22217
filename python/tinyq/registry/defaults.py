"""What a registry entry means where it leaves a field out: registry.schema.json's defaults,
shared by the registry and the sidecars it writes."""

DEFAULT_QUANT_MODE = "fp32"
DEFAULT_BUDGET_PLCC = 0.01
