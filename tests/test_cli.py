import subprocess
import sys

from lambdalib.cli import main


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "models" in capsys.readouterr().out


def test_models_table(capsys):
    assert main(["models", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "LR34_L3(lc)" in out and "11,181,642" in out  # R18 params do not depend on image size
    assert out.count("\n") >= 12


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "lambdalib.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "lambdalib" in done.stdout
