"""Local GPU sampling where there is no usable GPU: one clear note, and the run goes on."""
import time

import pynvml
import pytest

from benchmarks.telemetry import build_telemetry
from benchmarks.telemetry.nvml import GpuUnavailable, NvmlReader, unavailable_reason
from tests.prerequisites import needs_no_gpu


@needs_no_gpu
def test_no_nvml_records_one_note_and_the_level_goes_on():
    telemetry = build_telemetry(gpus=[0])
    telemetry.start()  # must not raise
    telemetry.start()  # a second start is harmless
    levels = []
    for index in range(2):
        telemetry.begin_level(index)
        time.sleep(0.05)
        levels.append(telemetry.end_level(requests_ok=5, prompt_tokens=500))
    telemetry.close()
    telemetry.close()
    assert telemetry.notes == [
        "GPU telemetry unavailable: NVML library not found (no NVIDIA driver installed on this host)"
    ]
    for level in levels:
        assert level == {"telemetry_notes": []}  # no gpu/energy sections, no repeated note per level
    assert telemetry.latest() is None


@needs_no_gpu
def test_reader_raises_gpu_unavailable_with_reason():
    reader = NvmlReader([0, 1])
    with pytest.raises(GpuUnavailable, match="NVML library not found"):
        reader.open()
    reader.close()  # closing a reader that never opened is fine


def test_reasons_in_plain_words():
    no_permission = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    assert isinstance(no_permission, pynvml.NVMLError_NoPermission)
    assert unavailable_reason(no_permission) == (
        "no permission to read the GPU through NVML (Insufficient Permissions)"
    )
    assert unavailable_reason(pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)) == "NVIDIA driver not loaded"
    assert unavailable_reason(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)) == "NVML error: GPU is lost"


def test_no_sources_means_nothing_sampled():
    telemetry = build_telemetry()
    telemetry.start()
    telemetry.begin_level(0)
    assert telemetry.end_level(requests_ok=1, prompt_tokens=1) == {"telemetry_notes": []}
    telemetry.close()
    assert telemetry.notes == []
