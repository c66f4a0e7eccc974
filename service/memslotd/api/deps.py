"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..core import MemoryCore
from ..settings import Settings

__all__ = ["CoreDep", "SettingsDep"]


# async: FastAPI runs plain-def dependencies in a thread pool, a thread hop per request.
async def _core(request: Request) -> MemoryCore:
    core: MemoryCore = request.app.state.core
    return core


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


CoreDep = Annotated[MemoryCore, Depends(_core)]
SettingsDep = Annotated[Settings, Depends(_settings)]
