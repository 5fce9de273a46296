"""A register stage in a process of its own, for test_promotion's race (a `multiprocessing` target must be
importable; this module stays light so a spawned child starts in seconds: no torch, no test helpers)."""

from __future__ import annotations

from typing import Any

from galmorph.config import Params


def racing_register_stage(params: Params, barrier: Any, results: Any) -> None:
    """Run the register stage, waiting on `barrier` between registering its version and promoting, so two
    of them interleave as two `dvc exp run`s sharing mlruns/ can; `results` gets (report path, the version
    this process registered)."""
    from galmorph.serving import promotion
    from galmorph.stages import register as register_stage

    original = promotion.register_version

    def register_then_wait(*args: Any, **kwargs: Any) -> Any:
        version = original(*args, **kwargs)  # a promotion.Registered
        barrier.wait(timeout=120)
        results.put((params.register.report, version.version.version))
        return version

    promotion.register_version = register_then_wait  # type: ignore[assignment]
    register_stage.main(params, None)
