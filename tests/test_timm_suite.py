"""timm's own model tests (``tests/test_models.py`` of the installed timm) on the report's ten models.

The test file is fetched at test time from the sdist of the timm version installed (``pip download``), kept in a
cache folder outside the repository ($LAMBDALIB_TIMM_TESTS, default ~/.cache/lambdalib/timm-tests), never copied
here; where it cannot be fetched (offline, no pip) the test skips and says why. It runs in a subprocess with
lambdalib imported before collection and a small plugin (``OurModelsOnly`` below) that

  * keeps every test timm parametrises over ``model_name`` for our ten names, and deselects the rest;
  * re-points timm's module filter at our names: the intermediate-feature tests select models by the timm module
    that defines them (``list_models(module=FEAT_INTER_FILTERS)``, which names timm's ``resnet``); ours are
    timm's ``ResNet`` too but live in ``lambdalib.models``, so the filter would never select them.

Every selected test must pass: no failure, no error and no skip.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
FETCH_TIMEOUT_S = 600
SUITE_TIMEOUT_S = 1800
# timm's tests that take model_name from list_models() (so they run on every registered model) and that we
# expect to select each of our ten; the three intermediate-feature ones only through the re-pointed module filter
PER_MODEL_TESTS = {
    "test_model_forward", "test_model_backward", "test_model_default_cfgs", "test_model_forward_torchscript",
    "test_model_forward_features", "test_model_forward_fx", "test_model_backward_fx",
    "test_model_forward_fx_torchscript",
    "test_model_forward_intermediates_features", "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract",
}


class OurModelsOnly:
    """pytest plugin for the subprocess: timm's tests for our ten names only (see the module docstring)."""

    def __init__(self, names: list[str]):
        self.names = set(names)
        self._list_models = None

    def pytest_configure(self, config):
        import timm

        import lambdalib  # noqa: F401  (registers the ten before timm's test module lists models)

        original = self._list_models = timm.list_models
        ours = self.names

        def list_models(filter="", module="", *args, **kwargs):  # noqa: A002  (timm's own argument name)
            # the module filter selects by defining module; ours are timm ResNets defined in lambdalib.models
            names = original(filter, "", *args, **kwargs) if module else original(filter, module, *args, **kwargs)
            return [name for name in names if name.split(".")[0] in ours]

        timm.list_models = list_models

    def pytest_unconfigure(self, config):
        if self._list_models is not None:
            import timm

            timm.list_models = self._list_models

    def pytest_collection_modifyitems(self, config, items):
        keep, drop = [], []
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            (keep if str(params.get("model_name", "")).split(".")[0] in self.names else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep


def run_suite(test_file: str, junit: str, names: list[str]) -> int:
    """Entry point of the subprocess: timm's test file with the plugin, results to a JUnit XML file."""
    ini = Path(junit).with_name("pytest.ini")
    # timm's markers (its pyproject.toml is not beside the file) and pytest-timeout's, which may be absent
    ini.write_text("[pytest]\nmarkers =\n" + "".join(
        f"    {m}: timm's marker\n" for m in ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript",
                                            "features", "fxforward", "fxbackward", "timeout")))
    args = [test_file, "-c", str(ini), "--rootdir", str(Path(test_file).parent), "-p", "no:cacheprovider",
            "-q", "-rfEs", "--junitxml", junit, "-W", "ignore::DeprecationWarning",
            "-W", "ignore::FutureWarning"]
    return int(pytest.main(args, plugins=[OurModelsOnly(names)]))


# ------------------------------------------------------------------------------------------ fetching
def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lambdalib" / "timm-tests"
    return Path(os.environ.get("LAMBDALIB_TIMM_TESTS") or default)


def timm_test_file(version: str) -> Path:
    """tests/test_models.py of timm==version, from the cache or fetched from its sdist; pytest.skip if it cannot be."""
    target = cache_dir() / f"timm-{version}" / "test_models.py"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"timm=={version}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"cannot fetch timm {version}'s sdist for its tests/test_models.py: {err}")
        sdists = sorted(Path(tmp).glob("timm-*.tar.gz"))
        if done.returncode or not sdists:
            lines = [ln for ln in (done.stderr or done.stdout).splitlines()
                     if ln.strip() and not ln.startswith("WARNING: Location")]
            pytest.skip(f"cannot fetch timm {version}'s sdist for its tests/test_models.py "
                        f"(pip download exit {done.returncode}): {lines[-1] if lines else 'no sdist downloaded'}")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/tests/test_models.py")), None)
            if member is None:
                pytest.skip(f"timm {version}'s sdist has no tests/test_models.py")
            text = tar.extractfile(member).read()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable home: a cache of this session only
        target = Path(tempfile.gettempdir()) / "lambdalib-timm-tests" / f"timm-{version}" / "test_models.py"
        target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(text)
    partial.replace(target)  # atomic: a concurrent or interrupted fetch never leaves half a file
    return target


# --------------------------------------------------------------------------------------------- test
def outcomes(junit: Path) -> dict[str, str]:
    """test id -> 'passed' | 'failed' | 'error' | 'skipped' (with the first line of the message)."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                message = (node.get("message") or "").strip().splitlines()
                outcome = f"{tag}: {message[0][:200] if message else ''}"
                break
        result[case.get("name")] = outcome
    return result


@pytest.mark.slow
def test_timm_model_suite_passes_on_the_ten(tmp_path):
    import timm

    from lambdalib import models

    names = list(models.SPECS)  # the report's ten
    test_file = timm_test_file(timm.__version__)
    junit = tmp_path / "timm-suite.xml"
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_timm_suite as s; "
            f"sys.exit(s.run_suite({str(test_file)!r}, {str(junit)!r}, {names!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUITE_TIMEOUT_S,
                          cwd=tmp_path)
    assert junit.is_file(), f"timm's suite did not run (exit {done.returncode}): {done.stdout[-3000:]}" \
                            f"{done.stderr[-3000:]}"
    results = outcomes(junit)
    bad = {name: outcome for name, outcome in results.items() if outcome != "passed"}
    assert not bad, f"{len(bad)} of {len(results)} of timm's tests did not pass: {bad}\n{done.stdout[-4000:]}"
    assert done.returncode == 0, done.stdout[-4000:]
    # every expected (test, model) pair ran: none silently left out by a filter
    ran = {tuple(re.fullmatch(r"(\w+)\[(.*)\]", name).groups()) for name in results}
    ran_pairs = {(test, model) for test, params in ran for model in names if model in params.split("-")}
    missing = {(test, model) for test in PER_MODEL_TESTS for model in names} - ran_pairs
    assert not missing, f"timm's suite selected none of: {sorted(missing)}"


# ------------------------------------------------------------------------------ pretrained_cfg input sizes
def accepts(model, size: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("img_size", [None, 64, 224])
def test_pretrained_cfg_tells_the_truth_about_input_sizes(img_size):
    """fixed_input_size is True exactly when the built model refuses a larger input (rpe; lc whose map is smaller
    than its window, e.g. stage 3 at 160 px), for the registry's default cfg and for the model built at any size;
    timm's input resolution then rebuilds it for the size asked and it runs there."""
    import timm
    from timm.models import get_pretrained_cfg_value, resolve_model_input_args

    from lambdalib import models

    for name in models.SPECS:
        kwargs = {} if img_size is None else {"img_size": img_size}
        model = timm.create_model(name, device="meta", **kwargs).eval()
        built = model.pretrained_cfg["input_size"][-1]
        assert built == (img_size or 160)
        fixed = model.pretrained_cfg["fixed_input_size"]
        assert accepts(model, built) and accepts(model, built // 2) is not name.endswith("_rpe"), name
        assert accepts(model, 2 * built) is not fixed, (name, img_size, fixed)
        if img_size is None:
            assert get_pretrained_cfg_value(name, "fixed_input_size") is fixed, name
            features = timm.create_model(name, device="meta", features_only=True)
            assert features.pretrained_cfg["fixed_input_size"] is fixed, name
        asked = resolve_model_input_args(name, {"img_size": 2 * built}, device="meta")
        assert accepts(timm.create_model(**asked).eval(), 2 * built), (name, asked.get("img_size"))


def test_an_unfetchable_sdist_skips_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDALIB_TIMM_TESTS", str(tmp_path))
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for timm==0.0.0\n")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(pytest.skip.Exception, match=r"timm 0\.0\.0.*exit 1.*No matching distribution"):
        timm_test_file("0.0.0")
    (tmp_path / "timm-0.0.0").mkdir()
    (tmp_path / "timm-0.0.0" / "test_models.py").write_text("# cached\n")
    assert timm_test_file("0.0.0") == tmp_path / "timm-0.0.0" / "test_models.py"  # the cache, no download
