"""Optional features without their extras: the core, the classifier and the CLI import and parse, and importing a
feature says which extra to install (:mod:`spikenorm.extras`).

Each check runs in a fresh interpreter whose extras' modules are made unimportable (``sys.modules[name] = None``),
so the modules this suite already imported are not disturbed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spikenorm.extras import EXTRAS, MissingExtraError, lazy_members, needs_extra

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

#: hides every extra's modules, then runs the body; the body's last line prints a JSON result
PRELUDE = f"""
import json, sys
for name in {sorted(m for modules in EXTRAS.values() for m in modules)!r}:
    sys.modules[name] = None
"""

FEATURES = [
    ("import spikenorm.rl", "rl"),
    ("import spikenorm.rl.envs", "rl"),
    ("import spikenorm.tasks.td3", "rl"),
    ("from spikenorm.tasks import SpikingTD3", "rl"),
    ("from spikenorm.callbacks import ReplayRecalibration", "rl"),
    ("import spikenorm.datamodules.tonic_sources", "dvs"),
    ("import spikenorm.datamodules.event_frames", "dvs"),
    ("from spikenorm.datamodules import TonicDataModule", "dvs"),
    ("from spikenorm.datamodules import EventDigitsDataModule", "dvs"),
    ("import spikenorm.export", "export"),
    ("from spikenorm.callbacks import NIRExport", "export"),
    (
        "from pathlib import Path; from spikenorm.studies.executors import submitit_executor;"
        " submitit_executor('slurm', Path('.'), 'study', None)",
        "studies",
    ),
    (
        "import numpy as np; from spikenorm.neurons import LIF; LIF().nir_node(np.ones(2), np.zeros(2), 1.0, {})",
        "export",
    ),
]


def run_without_extras(body: str) -> dict:
    """Run ``body`` with every extra's modules hidden; its JSON output."""
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def feature_errors() -> dict[str, dict]:
    """What each statement of :data:`FEATURES` raises, all run in one interpreter (a failed import leaves no
    module behind, so the statements do not affect each other)."""
    return run_without_extras(f"""
        results = {{}}
        for statement in {[statement for statement, _ in FEATURES]!r}:
            try:
                exec(statement, {{}})
            except ImportError as err:
                results[statement] = {{"type": type(err).__name__, "module_error": isinstance(err, ModuleNotFoundError),
                                      "message": str(err), "name": err.name}}
            else:
                results[statement] = {{"type": None}}
        print(json.dumps(results))
    """)


@pytest.mark.parametrize(("statement", "extra"), FEATURES, ids=[s for s, _ in FEATURES])
def test_a_feature_without_its_extra_names_the_extra(feature_errors, statement, extra):
    result = feature_errors[statement]
    assert result["type"] == "MissingExtraError", result
    assert result["module_error"]
    assert f"needs the {extra!r} extra: pip install 'spikenorm[{extra}]' (missing module: " in result["message"]
    assert result["name"] in EXTRAS[extra], result


@pytest.fixture(scope="module")
def cli_without_extras() -> dict:
    """The quickstart and the RL quickstart through the CLI's ``--print_config``, and which feature modules that
    loaded."""
    return run_without_extras(f"""
        import contextlib, io
        import spikenorm, spikenorm.fold, spikenorm.models, spikenorm.neurons, spikenorm.recalibrate
        from spikenorm.callbacks import FoldNormalization, LastCheckpoint
        from spikenorm.datamodules import DigitsDataModule
        from spikenorm.tasks import SpikingClassifier
        from spikenorm.cli import main

        def run(recipe):
            errors = io.StringIO()
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(["fit", "--config", recipe, "--print_config"])
                except SystemExit as exit:
                    return {{"exit": exit.code, "stderr": errors.getvalue()}}

        quickstart = run({str(RECIPES / "quickstart.yaml")!r})
        features = ("spikenorm.rl", "spikenorm.export", "spikenorm.tasks.td3", "spikenorm.datamodules.tonic_sources",
                    "spikenorm.datamodules.event_frames")
        loaded = [name for name in features if name in sys.modules]
        rl = run({str(RECIPES / "quickstart_rl.yaml")!r})
        print(json.dumps({{"quickstart": quickstart, "loaded": loaded, "rl": rl}}))
    """)


def test_the_core_the_classifier_and_the_cli_need_no_extra(cli_without_extras):
    assert cli_without_extras["quickstart"]["exit"] == 0, cli_without_extras["quickstart"]["stderr"][-3000:]
    assert cli_without_extras["loaded"] == []


def test_an_rl_recipe_without_the_rl_extra_names_it(cli_without_extras):
    rl = cli_without_extras["rl"]
    assert rl["exit"] != 0
    assert "spikenorm.tasks.td3 needs the 'rl' extra: pip install 'spikenorm[rl]'" in rl["stderr"]


def test_needs_extra_refuses_an_unknown_extra():
    with pytest.raises(ValueError, match="unknown extra 'gpu'; spikenorm's extras are rl, dvs, export"):
        with needs_extra("gpu", "a feature"):
            pass


def test_needs_extra_leaves_other_errors_alone():
    with pytest.raises(KeyError):
        with needs_extra("rl", "a feature"):
            raise KeyError("not an import")
    with pytest.raises(MissingExtraError, match=r"a feature needs the 'dvs' extra.*missing module: not_a_module"):
        with needs_extra("dvs", "a feature"):
            import not_a_module  # noqa: F401


def test_lazy_members_load_on_access_and_refuse_other_names():
    getattr_ = lazy_members("pkg", {"dumps": "json"})
    assert getattr_("dumps") is json.dumps
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'loads'"):
        getattr_("loads")
