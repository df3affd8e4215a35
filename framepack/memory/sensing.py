"""Sensing the machine: the compute device, its free and total memory, and free system RAM and swap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DeviceMemory:
    """The compute device and what is free now. GPU figures are None without a GPU; RAM is None if unknown."""

    device: torch.device
    name: str
    vram_free: int | None
    vram_total: int | None
    ram_free: int | None
    ram_total: int | None
    swap_free: int | None = None


def _meminfo() -> dict[str, int] | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    fields = {}
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0]) * 1024  # the kernel reports kB
    return fields


def system_ram() -> tuple[int | None, int | None]:
    """(available, total) system RAM in bytes: /proc/meminfo on Linux, else psutil if installed, else unknown."""
    fields = _meminfo()
    if fields is not None:
        return fields.get("MemAvailable"), fields.get("MemTotal")
    try:
        import psutil
    except ImportError:
        return None, None
    memory = psutil.virtual_memory()
    return memory.available, memory.total


def system_swap() -> int | None:
    """Free swap (a page file on Windows) in bytes, or None if unknown."""
    fields = _meminfo()
    if fields is not None:
        return fields.get("SwapFree")
    try:
        import psutil
    except ImportError:
        return None
    return psutil.swap_memory().free


def detect_device(device: str | torch.device | None = None) -> DeviceMemory:
    """The device to run on (the best available unless given) with its free and total memory, and free RAM."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(device)
    ram_free, ram_total = system_ram()
    swap = system_swap()
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(device, torch.cuda.get_device_name(device), free, total, ram_free, ram_total, swap)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        # Apple GPUs share system memory; Metal's recommended working set is the usable share of it.
        total = torch.mps.recommended_max_memory()
        free = total - torch.mps.driver_allocated_memory()
        return DeviceMemory(device, "Apple GPU", free, total, ram_free, ram_total, swap)
    return DeviceMemory(torch.device("cpu"), "CPU", None, None, ram_free, ram_total, swap)


def held_by_process(device: torch.device) -> int:
    """GPU memory this process holds (its weights and cached blocks), which a new plan may reuse."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device)
    if device.type == "mps":
        return torch.mps.current_allocated_memory()
    return 0

