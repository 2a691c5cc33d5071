"""Where an edge worker's resource readings come from: NVML, or the thermal model.

`NvmlSensor` reads a real NVIDIA GPU through ``pynvml`` (package
nvidia-ml-py). Where there is none, `ThermalSensor` runs the RC thermal model
of `edge.thermal`, driven by the variant being served and its measured cost
(the zoo's CPU time per inference), with the same scenario injections as the
fleet simulator. Both return the resource fields of a Telemetry record; the
worker adds the serving figures it measures itself. `open_sensor("auto")`
picks NVML when a GPU answers and says which it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edge.fleet import SimulatedNode
from edge.thermal import Scenario, measured_variant_power


class Sensor(Protocol):
    source: str

    def read(self, dt_s: float, variant: str, precision: str, batch_size: int) -> dict: ...


class NvmlSensor:
    """One NVIDIA GPU through NVML."""

    source = "nvml"

    def __init__(self, index: int = 0):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def read(self, dt_s: float, variant: str, precision: str, batch_size: int) -> dict:
        nv, h = self._nvml, self._handle
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        return {
            "gpu_temp_c": float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            "gpu_util": nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
            "mem_used_frac": mem.used / mem.total if mem.total else 0.0,
            "power_w": nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "power_cap_w": nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        }


@dataclass
class ThermalSensor:
    """The RC thermal model standing in for a GPU, with a scenario injected."""

    node: SimulatedNode
    source: str = "thermal-model"

    @classmethod
    def for_node(cls, node_id: str, scenario: Scenario, relative_cost: dict | None = None,
                 seed: int = 0) -> "ThermalSensor":
        node = SimulatedNode(node_id, scenario, seed=seed)
        if scenario.heat_capacity_j_per_c is not None:
            node.thermal.c_j_per_c = scenario.heat_capacity_j_per_c
        if relative_cost:
            node.thermal.variant_power = measured_variant_power(relative_cost)
        return cls(node)

    def read(self, dt_s: float, variant: str, precision: str, batch_size: int) -> dict:
        node = self.node
        node.variant, node.precision, node.batch_size = variant, precision, batch_size
        s = node.sample(0, dt_s)
        return {k: s[k] for k in ("gpu_temp_c", "gpu_util", "mem_used_frac", "power_w", "power_cap_w")}


def open_sensor(kind: str, node_id: str, scenario: Scenario, relative_cost: dict | None = None,
                seed: int = 0, gpu_index: int = 0) -> Sensor:
    """``kind``: nvml (fail if no GPU), thermal (always the model), auto (NVML if it answers)."""
    if kind not in ("auto", "nvml", "thermal"):
        raise ValueError(f"unknown sensor {kind!r}: auto, nvml or thermal")
    if kind in ("auto", "nvml"):
        try:
            return NvmlSensor(gpu_index)
        except Exception as err:  # no driver, no device, no library: all mean "no GPU here"
            if kind == "nvml":
                raise RuntimeError(f"NVML unavailable ({type(err).__name__}: {err}); use --sensor thermal") from None
    return ThermalSensor.for_node(node_id, scenario, relative_cost, seed)
