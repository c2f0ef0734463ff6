"""Optional parts and the packages they need: a missing one is one clear error with the install line, never
an ImportError traceback. The core (data, training, evaluation, explanations, reports, predict with the torch
engine) needs none of them."""

from __future__ import annotations

import importlib

from covidxr.errors import CovidxrError

EXTRAS = {
    "search": ("optuna", "psycopg"),
    "serve": ("fastapi", "uvicorn", "python_multipart"),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "xrv": ("torchxrayvision",),
}


def missing_extra(extra: str, module: str | None) -> CovidxrError:
    return CovidxrError(
        f"this needs the optional [{extra}] packages ({module or ', '.join(EXTRAS[extra])} is not installed): "
        f"pip install 'covidxr[{extra}]'"
    )


def require(extra: str, *modules: str) -> None:
    """Import `modules` (default: all of the extra's) or raise the clear error naming the extra."""
    for module in modules or EXTRAS[extra]:
        if module == "psycopg":
            continue  # only PostgreSQL storage needs it; SQLAlchemy names it when asked for
        try:
            importlib.import_module(module)
        except ImportError:
            raise missing_extra(extra, module) from None
