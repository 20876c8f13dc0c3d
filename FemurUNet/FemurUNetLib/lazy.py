"""Light package imports: a package's public names load their submodule on first use (PEP 562)."""
import importlib


def lazy_exports(package: str, table: dict) -> tuple:
    """(__getattr__, __dir__) for a package whose public name N lives in submodule ``table[N]``."""
    def __getattr__(name):
        submodule = table.get(name)
        if submodule is None:   # AttributeError, so that `from package import submodule` imports the submodule
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(package)
        value = getattr(importlib.import_module(f".{submodule}", package), name)
        setattr(module, name, value)
        return value

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(table))

    return __getattr__, __dir__
