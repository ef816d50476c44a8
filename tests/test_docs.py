"""The documents match the software: the README is short and its commands and options exist, and
no text in the repository narrates how the project was made."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Words that tell the story of the work instead of describing the software.
NARRATION = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|this|last|next) session\b"
                       r"|\buntil now\b|\bthe issue'?s\b|\bwe used to\b", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    if not names:
        pytest.skip("not a git checkout")
    suffixes = {".md", ".py", ".txt", ".h", ".c", ".cc", ".sh", ".toml"}
    return [ROOT / n for n in names if Path(n).suffix in suffixes and (ROOT / n).is_file()]


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_no_text_narrates_the_development():
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in tracked_text_files()
             for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if NARRATION.search(line) and path.name != "test_docs.py"]
    assert not found, "\n".join(found)


def test_the_check_finds_narration():
    assert NARRATION.search("measured in the fifth session") and NARRATION.search("the issue's targets")
    assert not NARRATION.search("the whole loop inside one backend session")


def readme_modules() -> list[str]:
    return sorted(set(re.findall(r"python -m ([a-z_][\w.]*)", README)))


@pytest.mark.parametrize("module", readme_modules())
def test_every_command_in_the_readme_runs(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


def test_every_option_in_the_readme_exists():
    helps = "".join(subprocess.run([sys.executable, "-m", m, *(["convert"] if m == "weights_tools" else []), "--help"],
                                   capture_output=True, text=True, cwd=ROOT).stdout for m in readme_modules())
    missing = sorted({flag for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", README)} - set(re.findall(
        r"--[a-z][a-z0-9-]+", helps)))
    assert not missing, f"options the README names that no command has: {missing}"


def test_options_that_take_a_value_are_shown_with_one():
    """--verbose takes True or False (as openai-whisper's): a bare --verbose is an error, and the
    README shows it with its value."""
    r = subprocess.run([sys.executable, "-m", "encoder.transcribe", "x.wav", "--verbose"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "expected one argument" in r.stderr
    assert "--verbose True|False" in README and not re.search(r"--verbose(?! True\|False)", README)
