"""Type stub of the compiled extension (csrc/module.cpp, csrc/emu): its names are checked at run time."""

from typing import Any

def __getattr__(name: str) -> Any: ...
