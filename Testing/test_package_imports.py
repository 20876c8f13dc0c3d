"""The engine package is light to import: Slicer's module files import its errors and paths at startup, before
PyTorch may be installed; every public name still works (loaded on first use)."""
import subprocess
import sys

import pytest


def modules_loaded_by(code, cwd):
    script = code + "\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))"
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("code", ["import FemurUNetLib",
                                  "from FemurUNetLib.errors import Cancelled, FemurUNetError",
                                  "from FemurUNetLib.paths import DEFAULT_MODEL_PATH",
                                  "import FemurUNetLib; FemurUNetLib.Cancelled; FemurUNetLib.DEFAULT_MODEL_PATH"])
def test_importing_the_engine_package_does_not_import_torch(code, tmp_path):
    assert modules_loaded_by(code, tmp_path) == []


def test_a_torch_name_loads_torch_on_first_use(tmp_path):
    assert "torch" in modules_loaded_by("import FemurUNetLib; FemurUNetLib.UNet2D", tmp_path)


def test_every_public_name_resolves_to_its_definition():
    import importlib
    import FemurUNetLib
    for name in FemurUNetLib.__all__:
        value = getattr(FemurUNetLib, name)
        home = importlib.import_module(value.__module__) if hasattr(value, "__module__") else None
        assert home is None or getattr(home, name, value) is value, name
    namespace = {}
    exec("from FemurUNetLib import *", namespace)
    assert set(FemurUNetLib.__all__) <= set(namespace)
    assert set(FemurUNetLib.__all__) <= set(dir(FemurUNetLib))
    from FemurUNetLib import errors, paths
    assert FemurUNetLib.Cancelled is errors.Cancelled and issubclass(errors.Cancelled, errors.FemurUNetError)
    assert FemurUNetLib.DEFAULT_MODEL_PATH == paths.DEFAULT_MODEL_PATH
    assert paths.DEFAULT_MODEL_PATH.is_file()
    with pytest.raises(AttributeError):
        FemurUNetLib.no_such_name
